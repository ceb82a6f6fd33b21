"""``python -m delfx``: the same as the ``delfx`` command."""

from __future__ import annotations

import sys

from delfx.cli import main

if __name__ == "__main__":
    sys.exit(main())
