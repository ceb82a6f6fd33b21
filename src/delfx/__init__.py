"""delfx: landmark image retrieval, from global CNN descriptors to DELF local features."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger("delfx").addHandler(logging.NullHandler())
