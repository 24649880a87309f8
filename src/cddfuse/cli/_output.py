"""Where a command's report goes: the screen, or a file written atomically (``-o FILE``)."""
from __future__ import annotations

import sys

from ..errors import CDDFuseError

__all__ = ["write_output"]


def write_output(text: str, output: str | None) -> None:
    """Print ``text`` to stdout, or write it to ``output`` (UTF-8, atomically: a failed write leaves no
    half-written file); an unwritable file is a :class:`~cddfuse.errors.CDDFuseError` in one line."""
    if not output:
        sys.stdout.write(text)
        return
    from .._fileutil import atomic_write_bytes

    try:
        atomic_write_bytes(output, text.encode("utf-8"))
    except OSError as e:
        raise CDDFuseError(f"cannot write {output}: {e.strerror or e}") from None
