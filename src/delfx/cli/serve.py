"""``delfx serve DIR``: the search API (and page) over a collection, under uvicorn."""

from __future__ import annotations

import argparse
import os

from delfx.cli import add_subcommand
from delfx.cli.types import positive_int
from delfx.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``delfx serve``."""
    s = add_subcommand(subparsers, "serve", "serve a collection over HTTP (API and web page)")
    s.add_argument("dir", metavar="DIR", help="a collection (delfx index create)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--token", help="adds and removals need 'Authorization: Bearer TOKEN'")
    s.add_argument("--workers", type=positive_int, default=1, help="server processes")
    s.add_argument(
        "--max-upload-mb", type=positive_int, default=20, help="largest upload (megabytes)"
    )
    s.add_argument("--device", default="cpu", help="torch device of the global network")
    s.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise InputError("delfx serve needs the serve extra: pip install 'delfx[serve]'") from None
    from delfx.engine import manifest as mf

    mf.read(args.dir)  # one clear line for a folder that is not a collection
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    env = {
        "DELFX_SERVE_DIR": str(args.dir),
        "DELFX_SERVE_TOKEN": args.token or "",
        "DELFX_SERVE_MAX_UPLOAD": str(args.max_upload_mb * 1024 * 1024),
        "DELFX_SERVE_DEVICE": args.device,
    }
    os.environ.update(env)
    uvicorn.run(
        "delfx.serve.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
    )
    return 0
