"""User-facing errors. The command line prints their message as one line, without a traceback."""
from __future__ import annotations

__all__ = ["CDDFuseError", "UsageError", "CheckpointError", "ImageReadError"]


class CDDFuseError(Exception):
    """A failure the user can act on (bad file, missing weights...). CLI exit code 1."""

    exit_code = 1


class UsageError(CDDFuseError):
    """The command was called wrongly (bad option value, wrong argument combination). CLI exit code 2."""

    exit_code = 2


class CheckpointError(CDDFuseError):
    """A weights file could not be read or does not fit the network."""


class ImageReadError(CDDFuseError):
    """An image file is missing, unreadable or not an image."""
