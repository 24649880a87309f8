"""File safety shared by image output, weights and training checkpoints: atomic writes, stale temporary
files, and never writing over a source."""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Union

from .errors import CDDFuseError, UsageError

__all__ = ["atomic_path", "atomic_write_bytes", "remove_stale_temporaries", "same_file", "is_inside",
           "check_writable_folder", "check_output", "cache_dir", "TMP_MARK"]

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


def _target_kind(dest: Path) -> str:
    """What ``dest`` is now: ``"missing"``, ``"file"`` (a regular file, or a link to one) or ``"stream"`` (a
    character device such as /dev/null, or a pipe: written through, never replaced).

    Raises:
        OSError: ``dest`` is a folder, a block device, a socket, a symbolic link loop, or cannot be looked at.
    """
    try:
        mode = os.stat(dest).st_mode
    except FileNotFoundError:
        return "missing"  # (also a dangling symbolic link: the link itself is replaced)
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream"
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(dest))
    what = "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
    raise OSError(errno.EINVAL, f"is {what}; outputs go to regular files, character devices or pipes", str(dest))


@contextlib.contextmanager
def atomic_path(dest: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it is renamed onto ``dest``.

    The destination therefore either keeps its old content or gets the complete new one, even
    after Ctrl-C, a crash or a full disk. The temporary file is hidden (leading dot), carries
    :data:`TMP_MARK` and the writer's process id (so that :func:`remove_stale_temporaries` removes
    only files whose writer is gone, never those of a run writing beside this one), and is
    removed on failure. Permissions follow the umask like a plain open(), also when the writer
    recreated the file with its own mode (safetensors writes 0600).

    A destination that exists and is not a regular file is never renamed over: a character device
    (``/dev/null``, a terminal) or a pipe with a reader gets the complete content written through once
    it is ready (a pipe without a reader is an error, not a wait); a folder, block device or socket is
    an :class:`OSError` before anything is written.
    """
    dest = Path(dest)
    if _target_kind(dest) == "stream":
        fd, tmp = tempfile.mkstemp(prefix=".cddfuse-out.", suffix=TMP_MARK)  # /dev is not writable
        os.close(fd)
        try:
            yield Path(tmp)
            _write_through(tmp, dest)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return
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
        if _target_kind(dest) == "stream":  # became a device or a pipe while we wrote
            _write_through(tmp, dest)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_through(tmp: str, dest: Path) -> None:
    """Copy the finished file ``tmp`` into the character device or pipe ``dest`` (opened without waiting:
    a pipe nobody reads is ``ENXIO``)."""
    flags = os.O_WRONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(dest, flags)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "is a pipe that nobody reads", str(dest)) from None
        raise
    try:
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with open(fd, "wb", closefd=False) as out, open(tmp, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
    finally:
        os.close(fd)


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
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
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
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist (or loops)
        return False


def _real(path: PathLike) -> str:
    """``path`` with links resolved as far as they resolve: never raises (a link loop stays as it is)."""
    try:
        return os.path.realpath(os.path.abspath(path))
    except (OSError, ValueError, RuntimeError):  # pragma: no cover - realpath is not strict
        return os.path.abspath(path)


def is_inside(path: PathLike, folders: Iterable[PathLike]) -> bool:
    """True when ``path`` is one of ``folders`` or lies inside one (after resolving links)."""
    p = Path(_real(path))
    return any(p == Path(_real(f)) or Path(_real(f)) in p.parents for f in folders)


def check_writable_folder(folder: PathLike) -> None:
    """Create ``folder`` if needed and check that a file can be created in it, before any work is done.

    Raises:
        OSError: with the reason (permission denied, read-only file system, not a folder...).
    """
    p = Path(folder)
    try:
        os.stat(p)  # a symbolic link loop: say so (mkdir would only say "File exists")
    except FileNotFoundError:
        pass
    p.mkdir(parents=True, exist_ok=True)  # FileExistsError when it is a file
    with tempfile.TemporaryFile(dir=str(p), prefix=".cddfuse-write-test"):
        pass


def check_output(dest: PathLike, *, sources: Sequence[tuple[str, PathLike]] = (),
                 source_folders: Sequence[PathLike] = (), flag: str = "-o") -> Path:
    """Check an output file name before any work is done; every command that writes a file calls it.

    Refused (:class:`~cddfuse.errors.UsageError`, exit 2): ``dest`` is one of ``sources`` (``(label, path)``:
    the same path, a symbolic or a hard link), an existing file of one of ``source_folders`` (or a link
    to one), a folder, a block device or a socket. Not writable (:class:`~cddfuse.errors.CDDFuseError`,
    exit 1): a symbolic link loop, a parent that is a file... A character device (``/dev/null``) or a
    pipe is accepted: :func:`atomic_path` writes through to it.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.
    """
    p = Path(dest)
    for label, source in sources:
        if same_file(p, source):
            raise UsageError(f"{flag} {p} is the {label} source ({source}); a source is never overwritten -- "
                             "choose another output name")
    try:
        kind = _target_kind(p)
    except OSError as e:
        if e.errno in (errno.EISDIR, errno.EINVAL):
            raise UsageError(f"{flag} {p}: {e.strerror}") from None
        raise CDDFuseError(f"cannot write {p}: {e.strerror or e}") from None
    if kind == "missing":
        try:  # a parent that loops, or that is a file: say so now, not after the work
            os.stat(p.parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CDDFuseError(f"cannot write {p}: {e.strerror or e}") from None
        return p
    if kind == "file":
        real = Path(_real(p))
        st = os.stat(p)
        for folder in source_folders:
            inside = real.parent == Path(_real(folder))  # pairs are the folders' top-level files
            linked = not inside and st.st_nlink > 1 and _hard_link_in(st, folder)
            if inside or linked:
                raise UsageError(f"{flag} {p} is a file of the source folder {folder}; a source is never "
                                 "overwritten -- choose another output name")
    return p


def _hard_link_in(st: os.stat_result, folder: PathLike) -> bool:
    """True when a file of ``folder`` (top level) is the inode of ``st``."""
    try:
        with os.scandir(folder) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    s = entry.stat()
                    if (s.st_ino, s.st_dev) == (st.st_ino, st.st_dev):
                        return True
    except OSError:
        return False
    return False
