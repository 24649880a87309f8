"""User-facing errors. The command line prints their message as one line, without a traceback.

Library code names parameters the Python way (``device='cuda'``); the command line maps a
parameter to its flag (``--device cuda``) with :meth:`CDDFuseError.cli_message`.
"""
from __future__ import annotations

__all__ = ["CDDFuseError", "UsageError", "CheckpointError", "ImageReadError", "InputTooLarge", "SizeMismatch",
           "CDDFuseWarning", "first_line"]


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


class InputTooLarge(ImageReadError):
    """An image (or a video's frames) has more pixels than the limit (``max_pixels``), found from its header
    before anything is decoded. ``width`` x ``height`` is its size, ``limit`` the limit, ``path`` the file."""

    def __init__(self, message: str, *, width: int, height: int, limit: int, path: str | None = None,
                 cli: str | None = None) -> None:
        super().__init__(message, cli=cli)
        self.width, self.height, self.limit, self.path = width, height, limit, path

    @property
    def size(self) -> str:
        """``"WIDTHxHEIGHT"``."""
        return f"{self.width}x{self.height}"


class SizeMismatch(CDDFuseError):
    """The two sources of a pair differ in size (and were neither resized nor aligned); ``size_a`` and
    ``size_b`` are ``"WIDTHxHEIGHT"``."""

    def __init__(self, message: str, *, size_a: str, size_b: str, cli: str | None = None) -> None:
        super().__init__(message, cli=cli)
        self.size_a, self.size_b = size_a, size_b


def first_line(e: BaseException) -> str:
    r"""The first line of an error's message, or its type's name when it has none (for one-line reports).

    >>> first_line(ValueError("bad value\nmore detail")), first_line(KeyError())
    ('bad value', 'KeyError')
    """
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class CDDFuseWarning(UserWarning):
    """Something works but is probably not what the user wants (e.g. a very small tile). The command line
    prints it as one line, ``cddfuse fuse: warning: ...``."""

    def __init__(self, message: str, *, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = cli if cli is not None else message
