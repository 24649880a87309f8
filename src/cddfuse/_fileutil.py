"""File safety shared by image output, weights and training checkpoints: atomic writes, stale temporary
files, and never writing over a source."""
from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import socket
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Union

__all__ = ["atomic_path", "atomic_write_bytes", "remove_stale_temporaries", "same_file", "is_inside",
           "check_writable_folder", "cache_dir", "TMP_MARK"]

PathLike = Union[str, "os.PathLike[str]"]

#: Marker in the names of temporary files; a crash can leave such files behind, nothing else.
TMP_MARK = ".cddfuse-tmp"
# .NAME.h<host>p<pid>.<random>.cddfuse-tmp: the writer's machine (a short hash of the host name) and process
_OWNER = re.compile(r"\.h([0-9a-f]{8})p(\d+)\.[0-9a-f]+" + re.escape(TMP_MARK) + "$")
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
#: A temporary file of another machine (a shared file system) or of an untagged writer is taken as
#: abandoned only when it has not been touched for this long: no image, cache or checkpoint takes
#: anywhere near that to write.
STALE_AFTER_S = 3600.0


def cache_dir() -> Path:
    """The package's cache folder (the engine's tuning, downloaded weights): ``$CDDFUSE_CACHE``, else
    ``$XDG_CACHE_HOME/cddfuse``, else ``~/.cache/cddfuse``. Not created here."""
    base = os.environ.get("CDDFUSE_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = os.path.join(xdg, "cddfuse") if xdg else os.path.join(os.path.expanduser("~"), ".cache", "cddfuse")
    return Path(base)


@contextlib.contextmanager
def atomic_path(dest: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is renamed onto ``dest``.

    The destination therefore either keeps its old content or gets the complete new one, even
    after Ctrl-C, a crash or a full disk. The temporary file is hidden (leading dot), carries
    :data:`TMP_MARK` and the writer's process id (so that :func:`remove_stale_temporaries` removes
    only files whose writer is gone, never those of a run writing beside this one), and is
    removed on failure. Permissions follow the umask like a plain open(), also when the writer
    recreated the file with its own mode (safetensors writes 0600).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(dest.parent / f".{dest.name}.h{_HOST}p{os.getpid()}.{secrets.token_hex(4)}{TMP_MARK}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 2**32 names
            continue
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it (setting it to read it back would
    change it for every thread for a moment)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    except (ProcessLookupError, OverflowError, ValueError):  # gone, or no process id at all
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: PathLike, name: str = "*") -> int:
    """Remove the temporary files that killed writers (SIGKILL, power loss) left in ``folder``.

    ``name``: only those of this destination file name (default: all). A file whose writer is still
    running on this machine (another run writing to the same folder) is kept; a file of another
    machine, or without a writer tag, only once it is older than :data:`STALE_AFTER_S`. Returns how
    many were removed; files that cannot be removed are left.
    """
    removed = 0
    pattern = f".{glob.escape(name) if name != '*' else '*'}.*{TMP_MARK}"
    for tmp in Path(folder).glob(pattern):
        owner = _OWNER.search(tmp.name)
        if owner is not None and owner.group(1) == _HOST:
            if _process_alive(int(owner.group(2))):
                continue  # a writer at work (this process, or a run beside it)
        else:
            try:
                if time.time() - tmp.stat().st_mtime < STALE_AFTER_S:
                    continue
            except OSError:
                continue
        with contextlib.suppress(OSError):
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
    p.mkdir(parents=True, exist_ok=True)  # FileExistsError when it is a file
    with tempfile.TemporaryFile(dir=str(p), prefix=".cddfuse-write-test"):
        pass
