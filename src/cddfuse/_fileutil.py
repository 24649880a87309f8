"""File safety shared by image output, weights and training checkpoints: atomic writes, stale temporary
files, and never writing over a source."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Union

__all__ = ["atomic_path", "atomic_write_bytes", "remove_stale_temporaries", "same_file", "is_inside",
           "check_writable_folder", "TMP_MARK"]

PathLike = Union[str, "os.PathLike[str]"]

#: Marker in the names of temporary files; a crash can leave such files behind, nothing else.
TMP_MARK = ".cddfuse-tmp"
_OWNER = re.compile(r"\.pid(\d+)\.[^.]+" + re.escape(TMP_MARK) + "$")  # .NAME.pid123.x8f2k.cddfuse-tmp


@contextlib.contextmanager
def atomic_path(dest: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is renamed onto ``dest``.

    The destination therefore either keeps its old content or gets the complete new one, even
    after Ctrl-C, a crash or a full disk. The temporary file is hidden (leading dot), carries
    :data:`TMP_MARK` and the writer's process id (so that :func:`remove_stale_temporaries` removes
    only files whose writer is gone, never those of a run writing beside this one), and is
    removed on failure. Permissions follow the umask like a plain open().
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.pid{os.getpid()}.", suffix=TMP_MARK, dir=str(dest.parent))
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


def atomic_write_bytes(dest: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``dest`` atomically (see :func:`atomic_path`)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(dest)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: PathLike, name: str = "*") -> int:
    """Remove the temporary files that killed writers (SIGKILL, power loss) left in ``folder``.

    ``name``: only those of this destination file name (default: all). Files of a writer that is
    still running (another run writing to the same folder) are kept. Returns how many were removed.
    """
    removed = 0
    for tmp in Path(folder).glob(f".{name}.*{TMP_MARK}"):
        owner = _OWNER.search(tmp.name)
        if owner is not None and _process_alive(int(owner.group(1))):
            continue  # a writer that is still at work (this process, or a run beside it)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` name one file: the same path after resolving links, or the same inode
    (a hard link)."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return os.path.samefile(pa, pb)
    except OSError:  # one of them does not exist
        return False


def is_inside(path: PathLike, folders: Iterable[PathLike]) -> bool:
    """True when ``path`` is one of ``folders`` or lies inside one (after resolving links)."""
    p = Path(path).resolve()
    return any(p == Path(f).resolve() or Path(f).resolve() in p.parents for f in folders)


def check_writable_folder(folder: PathLike) -> None:
    """Create ``folder`` if needed and check that a file can be created in it, before any work is done.

    Raises:
        OSError: with the reason (permission denied, read-only file system, not a folder...).
    """
    p = Path(folder)
    p.mkdir(parents=True, exist_ok=True)
    if not p.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(p))
    with tempfile.TemporaryFile(dir=str(p), prefix=".cddfuse-write-test"):
        pass
