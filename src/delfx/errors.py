"""The error type that the command line reports as one line, without a traceback."""

from __future__ import annotations


class DelfxError(Exception):
    """A problem with the user's input or environment.

    The message is one line and names the file or field at fault. The command line prints it to
    stderr and exits non-zero; library callers catch it like any exception.
    """


class InputError(DelfxError, ValueError):
    """Malformed or inconsistent input data (a file, a field, an index)."""
