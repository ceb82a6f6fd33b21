"""Bad numeric flags are refused at parse time (or by the config, before any file is opened).

Every path below does not exist: a case passes only if the value is refused before the command
would have looked for its files. Flags that set a config field are checked by that config's own
rules; the others by the shared argparse types of :mod:`delfx.cli.types`.
"""

from __future__ import annotations

import argparse

import pytest

from delfx.cli import main as cli_main
from delfx.cli import types

N = "/nonexistent/delfx-values"

SEARCH = ["search", "--index", f"{N}/idx", "--features", f"{N}/f.h5", "--output", f"{N}/r.npz"]
BUILD = ["index", "build", "--features", f"{N}/f.h5", "--codebook-from", f"{N}/c.h5"]
BUILD += ["--out", f"{N}/idx"]
RERANK = ["rerank", "--index", f"{N}/idx", "--features", f"{N}/f.h5", "--ranks", f"{N}/r.npz"]
RERANK += ["--output", f"{N}/r2.npz"]
SIFT = ["extract", "sift", "--images", N, "--out", f"{N}/o.h5"]
DELF = ["extract", "delf", "--images", N, "--out", f"{N}/o.h5", "--model", f"{N}/m.pth"]
GLOBAL = ["extract", "global", "--root", N, "--dataset", "x", "--model", f"{N}/m.pth"]
GLOBAL += ["--out", f"{N}/o.h5"]
RUN_TAIL = ["--root", N, "--dataset", "x", "--work", f"{N}/w", "--output", f"{N}/o.json"]
RUN = ["run", "delf-asmk", *RUN_TAIL]
RUN_SIFT = ["run", "sift-asmk", *RUN_TAIL]
RUN_GLOBAL = ["run", "global-gem", *RUN_TAIL]
TRAIN = ["train", "global", f"{N}/export", "--root", N]
ATTENTION = ["train", "attention", f"{N}/export", "--root", N, "--param-directory", f"{N}/m"]
SYNTH = ["data", "synth", f"{N}/photos", "--out", N, "--name", "x"]
TRAINING = ["data", "build-training", f"{N}/groups", "--out", N, "--name", "x"]

CASES = [
    (SEARCH, "--top-k", "0"),
    (SEARCH, "--top-k", "-1"),
    (SEARCH, "--top-k", "ten"),
    (BUILD, "--codebook-size", "-5"),
    (BUILD, "--codebook-size", "0"),
    (BUILD, "--codebook-size", "1"),
    (BUILD, "--tree-branch", "1"),
    (BUILD, "--tree-height", "0"),
    (BUILD, "--multiple-assignment", "0"),
    (RERANK, "--rerank-num", "0"),
    (RERANK, "--rerank-num", "-1"),
    (RERANK, "--threshold", "-1"),
    (RERANK, "--threshold", "0"),
    (RERANK, "--threshold", "nan"),
    (SIFT, "--workers", "0"),
    (SIFT, "--workers", "-2"),
    (DELF, "--feature-num", "0"),
    (DELF, "--image-size", "0"),
    (DELF, "--scales", "1,-1"),
    (DELF, "--scales", "1,big"),
    (DELF, "--alpha-thresh", "nan"),
    (DELF, "--pca-dim", "0"),
    (GLOBAL, "--batch-size", "0"),
    (GLOBAL, "--image-size", "0"),
    (GLOBAL, "--multiscale", "1,0"),
    (RUN, "--rerank-num", "-3"),
    (RUN, "--workers", "0"),
    (RUN, "--tree-branch", "1"),
    (RUN, "--tree-height", "0"),
    (RUN, "--codebook-size", "1"),
    (RUN, "--feature-num", "0"),
    (RUN, "--alpha-thresh", "inf"),
    (RUN, "--delf-image-size", "0"),
    (RUN, "--scales", "0"),
    (RUN, "--pca-dim", "-1"),
    (RUN, "--image-size", "0"),
    (RUN_SIFT, "--codebook-size", "-5"),
    (RUN_SIFT, "--rerank-num", "-1"),
    (RUN_GLOBAL, "--qe", "-1"),
    (RUN_GLOBAL, "--dba", "-2"),
    (RUN_GLOBAL, "--image-size", "0"),
    (RUN_GLOBAL, "--multiscale", "1,x"),
    (RUN_GLOBAL, "--multiscale", "-1"),
    (TRAIN, "--lr", "-1"),
    (TRAIN, "--lr", "0"),
    (TRAIN, "--epochs", "0"),
    (TRAIN, "--batch-size", "0"),
    (TRAIN, "--neg-num", "0"),
    (TRAIN, "--query-size", "0"),
    (TRAIN, "--pool-size", "-1"),
    (TRAIN, "--update-every", "0"),
    (TRAIN, "--image-size", "0"),
    (TRAIN, "--test-image-size", "0"),
    (TRAIN, "--test-freq", "0"),
    (TRAIN, "--lr-decay", "2"),
    (TRAIN, "--momentum", "-0.5"),
    (TRAIN, "--weight-decay", "-1"),
    (TRAIN, "--loss-margin", "0"),
    (TRAIN, "--whitening", "0"),
    (TRAIN, "--seed", "-1"),
    (TRAIN, "--workers", "-1"),
    (TRAIN, "--bn-calibration", "-1"),
    (ATTENTION, "--epochs", "0"),
    (ATTENTION, "--lr", "nan"),
    (SYNTH, "--views", "0"),
    (SYNTH, "--size", "0"),
    (SYNTH, "--seed", "-1"),
    (TRAINING, "--val-fraction", "1"),
    (TRAINING, "--val-fraction", "-0.1"),
    (TRAINING, "--seed", "-1"),
    (["demo", "--work", f"{N}/demo"], "--seed", "-1"),
]


def _exit_status(argv: list[str]) -> int:
    try:
        return cli_main(argv)
    except SystemExit as exc:  # argparse refusals
        return int(exc.code or 0)


def _case_id(argv: list[str], flag: str, value: str) -> str:
    sub = "" if argv[1].startswith(("-", "/")) else f"-{argv[1]}"
    return f"{argv[0]}{sub}{flag}={value}"


@pytest.mark.parametrize(("argv", "flag", "value"), CASES, ids=[_case_id(*c) for c in CASES])
def test_bad_value_is_one_line_naming_the_flag(
    argv: list[str], flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit_status([*argv, flag, value]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1, captured.err
    assert flag.lstrip("-") in errors[0], errors[0]
    assert N not in errors[0], errors[0]  # refused before any file was looked for
    assert "Traceback" not in captured.err + captured.out


def test_argparse_message_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status([*SEARCH, "--top-k", "0"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "delfx search: error: argument --top-k: must be >= 1, got 0"


def test_config_message_reads_well(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_status([*BUILD, "--codebook-size", "-5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "delfx: error: codebook-size must be at least 2, got -5"


def test_good_values_still_parse() -> None:
    from delfx.cli import build_parser

    parser = build_parser()
    args = parser.parse_args([*SEARCH, "--top-k", "5"])
    assert args.top_k == 5
    args = parser.parse_args([*RUN, "--scales", "2,1.414,1", "--workers", "3"])
    assert args.scales == (2.0, 1.414, 1.0) and args.workers == 3
    args = parser.parse_args(GLOBAL)
    assert args.multiscale == (1.0,)
    args = parser.parse_args([*TRAINING, "--val-fraction", "0"])
    assert args.val_fraction == 0.0


@pytest.mark.parametrize(
    ("fn", "good", "bad"),
    [
        (types.positive_int, {"1": 1, "42": 42}, ["0", "-1", "1.5", "x"]),
        (types.nonnegative_int, {"0": 0, "7": 7}, ["-1", "x"]),
        (types.positive_float, {"0.5": 0.5, "3": 3.0}, ["0", "-1", "nan", "inf", "x"]),
        (types.probability, {"0": 0.0, "1": 1.0, "0.3": 0.3}, ["-0.1", "1.1", "nan"]),
        (types.fraction, {"0": 0.0, "0.99": 0.99}, ["1", "-0.1", "nan"]),
        (types.float_list, {"1,0.5": (1.0, 0.5), "2": (2.0,), "": ()}, ["1,a"]),
    ],
)
def test_types(fn, good: dict, bad: list[str]) -> None:
    for text, value in good.items():
        assert fn(text) == value
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)
