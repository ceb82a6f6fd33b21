"""``make demo`` installs delfx without PyTorch: the CLI, the demo and SIFT pipelines must load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCK_TORCH = textwrap.dedent(
    """
    import builtins, sys
    _real = builtins.__import__
    def _blocked(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name.split(".")[0])
        return _real(name, *args, **kwargs)
    builtins.__import__ = _blocked
    """
)


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


def test_cli_demo_and_local_pipelines_import_without_torch(tmp_path: Path) -> None:
    res = _run(
        """
        import delfx.cli, delfx.demo, delfx.run, delfx.pipeline_config
        delfx.cli.build_parser()
        print("ok")
        """,
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_a_torch_command_without_torch_says_what_to_install(tmp_path: Path) -> None:
    res = _run(
        """
        from delfx.cli import main
        args = ["extract", "global", "--root", ".", "--dataset", "x", "--model", "resnet18"]
        sys.exit(main(args + ["--out", "g.h5"]))
        """,
        tmp_path,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs torch" in lines[0] and "delfx[torch]" in lines[0]
