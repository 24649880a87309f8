"""Atomic file writing shared by image output, weights and training checkpoints."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "atomic_write_bytes", "TMP_MARK"]

#: Marker in the names of temporary files; a crash can leave such files behind, nothing else.
TMP_MARK = ".cddfuse-tmp"


@contextlib.contextmanager
def atomic_path(dest: Union[str, "os.PathLike[str]"]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is renamed onto ``dest``.

    The destination therefore either keeps its old content or gets the complete new one, even
    after Ctrl-C, a crash or a full disk. The temporary file is hidden (leading dot), carries
    :data:`TMP_MARK` and is removed on failure. Permissions follow the umask like a plain open().
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TMP_MARK, dir=str(dest.parent))
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # the writer may have recreated the file
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(dest: Union[str, "os.PathLike[str]"], data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically (see :func:`atomic_path`)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(dest)
