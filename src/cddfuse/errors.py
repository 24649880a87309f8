"""User-facing errors. The command line prints their message as one line, without a traceback.

Library code names parameters the Python way (``device='cuda'``); the command line maps a
parameter to its flag (``--device cuda``) with :meth:`CDDFuseError.cli_message`.
"""
from __future__ import annotations

__all__ = ["CDDFuseError", "UsageError", "CheckpointError", "ImageReadError", "CDDFuseWarning"]


class CDDFuseError(Exception):
    """A failure the user can act on (bad file, missing weights...). CLI exit code 1."""

    exit_code = 1

    def __init__(self, message: str = "", *, cli: str | None = None) -> None:
        super().__init__(message)
        self._cli = cli

    def cli_message(self) -> str:
        """The message as the command line shows it (``cli=`` when the library wording names Python
        arguments that the command line spells as flags)."""
        return self._cli if self._cli is not None else str(self)


class UsageError(CDDFuseError, ValueError):
    """The call was wrong (bad option value, wrong argument combination). CLI exit code 2.

    Also a :class:`ValueError`, so ``except ValueError`` catches e.g. ``Fuser(method="x")``.
    Made with :meth:`invalid`, it knows the parameter and value it is about.
    """

    exit_code = 2

    def __init__(self, message: str, *, parameter: str | None = None, value: object = None,
                 reason: str | None = None, cli: str | None = None) -> None:
        super().__init__(message, cli=cli)
        self.parameter, self.value, self.reason = parameter, value, reason

    @classmethod
    def invalid(cls, parameter: str, value: object, reason: str) -> UsageError:
        """``parameter=value: reason`` -- and ``--parameter value: reason`` on the command line."""
        return cls(f"{parameter}={value!r}: {reason}", parameter=parameter, value=value, reason=reason)

    def cli_message(self) -> str:
        if self.parameter is None:
            return super().cli_message()
        return f"--{self.parameter.replace('_', '-')} {self.value}: {self.reason}"


class CheckpointError(CDDFuseError):
    """A weights file could not be read or does not fit the network."""


class ImageReadError(CDDFuseError):
    """An image file is missing, unreadable or not an image."""


class CDDFuseWarning(UserWarning):
    """Something works but is probably not what the user wants (e.g. a very small tile). The command line
    prints it as one line, ``cddfuse fuse: warning: ...``."""

    def __init__(self, message: str, *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli if cli is not None else message
