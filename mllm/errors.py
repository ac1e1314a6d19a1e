"""User-facing error type: anything raised as MllmError is shown to people as one line, no traceback."""

from __future__ import annotations


class MllmError(Exception):
    """A problem the user can fix (bad file, bad field, bad argument). The message names where and what."""
