"""The ``delfx`` command: one subcommand per stage.

Each subcommand module exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a handler ``(args) -> int``. Handlers only translate flags into a stage's ``main``
call. Errors from the library (:class:`~delfx.errors.DelfxError`) and operating-system errors
(:class:`OSError`: a full disk, a folder where a file should go...) are printed as one line on
stderr with exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from delfx import __version__
from delfx.errors import DelfxError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand registered."""
    from delfx.cli import (
        collection,
        data,
        demo,
        evaluate,
        extract,
        index,
        pipeline,
        run,
        serve,
        train,
    )

    parser = argparse.ArgumentParser(
        prog="delfx",
        description="Landmark image retrieval: datasets, features, indexes and evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"delfx {__version__}")
    _add_common(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    data.register(sub)
    evaluate.register(sub)
    demo.register(sub)
    extract.register(sub)
    index.register(sub)
    pipeline.register(sub)
    collection.register_query(sub)
    serve.register(sub)
    run.register(sub)
    train.register(sub)
    return parser


def _add_common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    kw = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs", **kw)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors", **kw)


def add_subcommand(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    """Add a subcommand parser that also accepts ``--debug`` and ``--quiet`` after its name."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    _add_common(parser, defaults=False)
    return parser


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    root = logging.getLogger("delfx")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DelfxError as exc:
        if args.debug:
            raise
        # one line always: a wrapped library message may span several (--debug shows it all)
        first, *rest = str(exc).splitlines() or [""]
        print(
            f"delfx: error: {first}{' [...] (--debug for more)' if rest else ''}", file=sys.stderr
        )
        return 2
    except ModuleNotFoundError as exc:
        if args.debug or exc.name not in ("torch", "torchvision"):
            raise
        print(
            f"delfx: error: this command needs {exc.name}: pip install 'delfx[torch]'",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        if args.debug:
            raise
        print(f"delfx: error: {_os_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("delfx: interrupted", file=sys.stderr)
        return 130


def _os_error_line(exc: OSError) -> str:
    """One line for an operating-system error: the path at fault (the destination of a rename
    or copy) and the reason, e.g. ``/x/out.h5: No space left on device``."""
    reason = (exc.strerror or "").strip().splitlines()
    text = reason[0] if reason else os.strerror(exc.errno) if exc.errno else ""
    text = text or (str(exc).splitlines() or [type(exc).__name__])[0]
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    if not isinstance(name, str | os.PathLike):  # no file name, or a file descriptor
        return text
    if isinstance(exc, FileExistsError) and os.path.exists(name) and not os.path.isdir(name):
        text = f"{text} and is not a folder"  # mkdir where a file stands
    return f"{os.fspath(name)}: {text}"


def add_output_flags(parser: argparse.ArgumentParser, *, gnd: bool = True) -> None:
    """Flags of the commands that write a dataset: ``--out``, ``--name``, ``--overwrite``, and
    ``--export-pkl`` for those that write ground truth (``gnd``)."""
    parser.add_argument("--out", required=True, metavar="ROOT", help="datasets root to write into")
    parser.add_argument("--name", required=True, help="dataset name (folder and gnd file name)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing dataset of that name"
    )
    if not gnd:
        return
    parser.add_argument(
        "--export-pkl",
        action="store_true",
        help="also write gnd_NAME.pkl for the field's own scripts (delfx reads the JSON)",
    )
