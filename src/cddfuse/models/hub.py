r"""The authors' published weights by name: ``authors-ivf`` and ``authors-mif``.

Wherever weights are accepted (``--weights`` of every command, ``model.init`` in training,
``Fuser(weights=...)``, :func:`cddfuse.models.weights.load_weights`), these two names stand for
``CDDFuse_IVF.pth`` and ``CDDFuse_MIF.pth`` of the authors' repository
(Zhaozixiang1228/MMIF-CDDFuse at commit ``fd8da1f``, folder ``models/``). The first use downloads
the file (Python's ``urllib``; a progress bar on a terminal, one line otherwise) into
``<cache>/weights/`` (the cache folder is ``$CDDFUSE_CACHE``, else ``~/.cache/cddfuse``); later uses
read it from there, without network.

Verification: a file is used only if its git blob id (SHA-1 of ``b"blob <size>\0" + content``, the
id under which the repository stores it) is the published one. A download is checked before it
is kept (it is written to a temporary file and renamed into the cache only when it is complete
and right), and the cached file is checked again at every use: hashing the ~5 MB file takes a
few milliseconds, less than loading it, and a cache file that was damaged since is then removed
and downloaded again instead of being trusted.

``$CDDFUSE_WEIGHTS_URL`` replaces the base address (a mirror, or an air-gapped site): an
``http(s)://`` or ``file://`` URL, or a local folder, that holds the two files under their own names.

Every failure (HTTP error, server down, a cut-short download, a file that is not the expected one,
a full disk) raises :class:`~cddfuse.errors.CDDFuseError` with one line naming the address or the
folder, the cause and what to do, and leaves no file in the cache.

Example:
    >>> names()
    ('authors-ivf', 'authors-mif')
    >>> git_blob_id(b"")  # git hash-object of an empty file
    'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .._fileutil import atomic_path, cache_dir
from ..errors import CDDFuseError

__all__ = ["HubWeights", "HUB", "BASE_URL", "URL_ENV", "names", "is_hub_name", "url_for", "cached_path",
           "git_blob_id", "fetch"]

#: Where the authors' two checkpoints are published (a fixed commit: the content cannot change).
BASE_URL = "https://raw.githubusercontent.com/Zhaozixiang1228/MMIF-CDDFuse/fd8da1f39d8d403b7343e577bd5a30cba38c7b7b/models/"
#: Environment variable that replaces :data:`BASE_URL` (a URL or a local folder).
URL_ENV = "CDDFUSE_WEIGHTS_URL"
_CHUNK = 1 << 16
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class HubWeights:
    """A published weights file: its name here, its file name and its git blob id."""

    name: str
    filename: str
    blob_id: str
    description: str


HUB: dict[str, HubWeights] = {
    "authors-ivf": HubWeights("authors-ivf", "CDDFuse_IVF.pth", "d2794226bd48961132111bceff89ce3c955b3985",
                              "the authors' infrared-visible weights (trained on MSRS)"),
    "authors-mif": HubWeights("authors-mif", "CDDFuse_MIF.pth", "072e39abce5979c0568ee510713c123c28160f12",
                              "the authors' medical weights (the MSRS model, fine-tuned on Harvard pairs)"),
}


def names() -> tuple[str, ...]:
    """The names that stand for published weights."""
    return tuple(HUB)


def is_hub_name(weights: object) -> bool:
    """Whether ``weights`` (a path or a name) is one of :func:`names`."""
    return isinstance(weights, (str, os.PathLike)) and os.fspath(weights) in HUB


def url_for(entry: HubWeights) -> str:
    """The address of ``entry``'s file: under ``$CDDFUSE_WEIGHTS_URL`` when set, else :data:`BASE_URL`."""
    base = os.environ.get(URL_ENV) or BASE_URL
    if "://" not in base:  # a local folder
        return (Path(base).expanduser().resolve() / entry.filename).as_uri()
    return base.rstrip("/") + "/" + entry.filename


def cached_path(entry: HubWeights) -> Path:
    """Where ``entry``'s file is kept: ``<cache>/weights/<file name>`` (the file name tells the task)."""
    return cache_dir() / "weights" / entry.filename


def git_blob_id(data: bytes) -> str:
    r"""Git's id of a file with this content: SHA-1 of ``b"blob <size>\0" + data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _file_blob_id(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, *, quiet: bool = False) -> Path:
    """The local path of the published weights ``name``, downloaded and verified on first use.

    Args:
        name: one of :func:`names`.
        quiet: no progress bar or download line on stderr.

    Raises:
        CDDFuseError: unknown name; the download failed (HTTP error, no connection, cut short,
            not the expected content) or could not be written (full disk); nothing is left in
            the cache then.
    """
    if name not in HUB:
        raise CDDFuseError(f"no published weights named {name!r}; the names are {', '.join(names())}")
    entry = HUB[name]
    dest = cached_path(entry)
    if dest.is_file():
        if _file_blob_id(dest) == entry.blob_id:
            return dest
        dest.unlink()  # damaged since it was verified: fetch it again rather than trust it
        if not quiet:
            print(f"cddfuse: the cached {dest} is not the published file any more; removed, downloading it again",
                  file=sys.stderr)
    _download(entry, dest, quiet)
    return dest


def _fail(entry: HubWeights, url: str, what: str, first: str = "") -> CDDFuseError:
    """One line: what went wrong, then what to do (``first``, then a mirror or a file by hand)."""
    todo = (f"{first}set {URL_ENV} to a mirror (a URL or a folder holding {entry.filename}), or download {url} by "
            "hand and pass")
    return CDDFuseError(f"{what}; {todo} weights=PATH", cli=f"{what}; {todo} --weights PATH")


def _download(entry: HubWeights, dest: Path, quiet: bool) -> None:
    url = url_for(entry)
    try:
        response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310 - http(s) or file, by design
    except urllib.error.HTTPError as e:
        raise _fail(entry, url, f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        raise _fail(entry, url, f"cannot download {url}: {reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, malformed addresses
        raise _fail(entry, url, f"cannot download {url}: {e}") from None
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        try:
            _receive(response, entry, url, dest, expected, quiet)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
                what = f"cannot write {dest}: {e.strerror}"
                raise CDDFuseError(
                    f"{what}; free space or set CDDFUSE_CACHE to another folder, or download {url} by hand and "
                    "pass weights=PATH",
                    cli=f"{what}; free space or set CDDFUSE_CACHE to another folder, or download {url} by hand and "
                        "pass --weights PATH") from None
            raise _fail(entry, url, f"the download of {url} failed: {e.strerror or e}") from None


def _receive(response: http.client.HTTPResponse, entry: HubWeights, url: str, dest: Path, expected: int | None,
             quiet: bool) -> None:
    """Stream the body into a temporary file beside ``dest``; renamed onto ``dest`` only when complete and
    verified (a failure removes it)."""
    from tqdm import tqdm

    terminal = not quiet and sys.stderr.isatty()
    if not quiet and not terminal:
        size = f" ({expected / 2**20:.1f} MiB)" if expected else ""
        print(f"cddfuse: downloading {url}{size} to {dest}", file=sys.stderr, flush=True)
    with atomic_path(dest) as tmp, open(tmp, "wb") as f, \
            tqdm(total=expected, unit="B", unit_scale=True, desc=entry.filename, disable=not terminal,
                 file=sys.stderr) as bar:
        got = 0
        while True:
            try:
                chunk = response.read(_CHUNK)
            except http.client.IncompleteRead as e:  # the connection closed before Content-Length bytes
                f.write(e.partial)
                got += len(e.partial)
                chunk = b""
            except (TimeoutError, ConnectionError) as e:
                raise _fail(entry, url, f"the download of {url} broke off after {got} bytes: {e}",
                            "try again, or ") from None
            if not chunk:
                break
            f.write(chunk)
            got += len(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
        if expected is not None and got != expected:
            raise _fail(entry, url, f"the download of {url} was cut short ({got} of {expected} bytes)",
                        "try again, or ")
        found = _file_blob_id(tmp)
        if found != entry.blob_id:
            raise _fail(entry, url, f"{url} is not the published {entry.filename} (git blob {found}, expected "
                                    f"{entry.blob_id}); nothing was kept", "check the address, or ")
