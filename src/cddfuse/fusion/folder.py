"""Folder fusion: every pair of two folders (matched by file stem) into an output folder.

What it guarantees, whoever calls it (the ``cddfuse fuse`` command, a server, a sharded job):

* **resumable**: outputs that exist are skipped (``overwrite=True`` redoes them), so rerunning an
  interrupted run finishes the job; temporary files left by a killed run are removed first;
* **atomic**: every output is written to a temporary file and renamed, so an interruption never
  leaves a half-written image (:func:`cddfuse.io.image.write_image`);
* **one bad pair is not the end**: a pair that cannot be read or fused is recorded in the report
  and the others go on;
* **shardable**: ``select`` picks the pairs this process handles (:mod:`cddfuse.fusion.shard` splits a
  folder over ``torchrun`` ranks or ``--shard K/N`` jobs with it), so every guarantee above holds per shard;
* **overlapped**: two threads decode the next pairs and one thread encodes and writes while the
  calling thread fuses (torch, OpenCV and file I/O release the GIL); consecutive pairs of one size
  are fused as one batch of up to ``batch_size`` (on CUDA, where one pair does not fill the GPU).

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from cddfuse.io.image import write_image
    >>> from cddfuse.fusion import Fuser, fuse_folders
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("01", "02"):
    ...     _ = write_image(root / "ir" / f"{name}.png", np.random.default_rng(0).random((8, 8)))
    ...     _ = write_image(root / "vi" / f"{name}.png", np.random.default_rng(1).random((8, 8)))
    >>> report = fuse_folders(Fuser(method="max"), root / "ir", root / "vi", root / "out")
    >>> report.summary().split(" -> ")[0]
    '2 fused, 0 already done (skipped), 0 failed, 0 unmatched'
    >>> fuse_folders(Fuser(method="max"), root / "ir", root / "vi", root / "out").skipped
    ['01', '02']
"""
from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .._fileutil import check_writable_folder, is_inside, remove_stale_temporaries, same_file
from ..errors import CDDFuseError, UsageError, first_line
from ..io.image import ImageWriteError, check_extension, read_image, write_image
from ..io.pairs import PairListing, match_pairs

if TYPE_CHECKING:
    from .fuser import Fuser

__all__ = ["FolderReport", "fuse_folders", "READ_AHEAD", "CUDA_BATCH_SIZE"]

#: Pairs decoded ahead of the ones being fused.
READ_AHEAD = 2
#: Default batch size on CUDA (on CPU the tiled engine is already efficient with one pair).
CUDA_BATCH_SIZE = 8

#: Errors that fail one pair, not the run: user-facing errors, e.g. out of memory on one huge pair, or
#: a full temporary folder for the engine's disk-backed feature maps.
_PAIR_ERRORS = (CDDFuseError, RuntimeError, MemoryError, OSError)


@dataclass
class FolderReport:
    """What :func:`fuse_folders` did, by file stem."""

    out_dir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # stem -> one-line reason
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped before the end (e.g. the disk is full)

    @property
    def ok(self) -> bool:
        """True when no pair failed and the run was not stopped (unmatched names are not failures)."""
        return not self.failed and self.stopped is None

    def summary(self) -> str:
        """One line for the user, e.g. ``3 fused, 1 already done (skipped), 0 failed, 2 unmatched -> out``."""
        text = (f"{len(self.done)} fused, {len(self.skipped)} already done (skipped), {len(self.failed)} failed, "
                f"{len(self.only_a) + len(self.only_b)} unmatched -> {self.out_dir}")
        return text + (f"; stopped early: {self.stopped}" if self.stopped else "")


def _one_line(e: BaseException) -> str:
    if isinstance(e, CDDFuseError):
        return e.cli_message()
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return first_line(e)


def _list_pairs(dir_a: Path, dir_b: Path) -> PairListing:
    """The pairs of two folders, with the errors a user can act on (two files of one stem, no pairs)."""
    try:
        listing = match_pairs(dir_a, dir_b)
    except ValueError as e:  # two files with one stem
        raise UsageError(str(e)) from None
    if not listing.pairs:
        raise CDDFuseError(f"no pairs: no file stem appears in both {dir_a} and {dir_b}")
    return listing


def fuse_folders(
    fuser: Fuser | Callable[[], Fuser],
    dir_a: Path,
    dir_b: Path,
    out_dir: Path,
    *,
    ext: str = ".png",
    bit_depth: int = 8,
    resize: bool = False,
    overwrite: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    select: Callable[[Sequence[tuple[str, Path, Path]]], Collection[str]] | None = None,
) -> FolderReport:
    """Fuse every pair of ``dir_a`` (infrared / functional) and ``dir_b`` (visible / MRI) into ``out_dir``.

    Args:
        fuser: the :class:`~cddfuse.fusion.Fuser` to use (network or rule, with its options), or a
            function that makes one, called only when there is a pair to fuse (so that bad folders,
            or a run with every output done, fail or finish without loading a model).
        dir_a, dir_b: folders paired by file stem (``01.png`` with ``01.jpg``).
        out_dir: output folder (created); outputs are ``<stem><ext>``.
        ext: output format, ``.png`` (default), ``.jpg``, ``.bmp``, ``.tif`` or ``.npy``.
        bit_depth: 8 or 16 (PNG/TIFF).
        resize: resample the second source of a pair to the first's size when they differ.
        overwrite: redo outputs that exist (default: skip them).
        batch_size: consecutive same-size pairs fused as one batch (default 8 on CUDA, 1 on CPU).
        progress: show a progress bar on stderr.
        log: called with one line per event worth telling (unmatched names, a failed pair).
        select: given every matched ``(stem, path_a, path_b)`` (sorted by stem), returns the stems this call
            handles; the other pairs are left alone and appear nowhere in the report (another process
            fuses them). ``None``: all pairs. See :func:`cddfuse.fusion.shard.shard_selector`.

    Returns:
        the :class:`FolderReport`; ``report.ok`` is False when a pair failed.

    A source is never written: an output folder that is, or contains, one of the input folders is
    refused. When the disk fills up (or the file system turns read-only) the run stops after the
    pair being written, with the report (``report.stopped``); a single output that cannot be written
    fails that pair only.

    Raises:
        UsageError: ``out_dir`` is a file or would hold the sources, a bad ``ext``/``bit_depth``, two
            files with one stem.
        CDDFuseError: the folders have no pair in common; ``out_dir`` cannot be written to.
    """
    dir_a, dir_b, out_dir = Path(dir_a), Path(dir_b), Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file; the output of folder fusion must be a folder")
    for source in (dir_a, dir_b):
        if is_inside(source, [out_dir]):
            raise UsageError(f"the output folder {out_dir} is or contains the source folder {source}; the sources "
                             "would be overwritten or mixed with the results -- choose another output folder")
    ext = check_extension(ext if ext.startswith(".") else "." + ext, bit_depth, f"extension {ext}")
    listing = _list_pairs(dir_a, dir_b)
    report = FolderReport(out_dir, only_a=listing.only_a, only_b=listing.only_b)
    unmatched = listing.unmatched_message(dir_a, dir_b)
    if unmatched and log is not None:
        log(f"warning: {unmatched}")
    try:
        check_writable_folder(out_dir)
    except OSError as e:
        raise CDDFuseError(f"cannot write to the output folder {out_dir}: {e.strerror or e}") from None
    remove_stale_temporaries(out_dir)  # left by a run that was killed (SIGKILL, power loss)
    pairs = listing.pairs
    if select is not None:
        chosen = set(select(pairs))
        pairs = [pair for pair in pairs if pair[0] in chosen]
    todo: list[tuple[str, Path, Path, Path]] = []
    for stem, path_a, path_b in pairs:
        dest = out_dir / (stem + ext)
        if same_file(dest, path_a) or same_file(dest, path_b):  # a source linked into the output folder
            report.failed[stem] = f"{dest} is one of its sources; a source is never overwritten"
            if log is not None:
                log(f"error: {stem}: {report.failed[stem]}")
        elif dest.exists() and not overwrite:
            report.skipped.append(stem)
        else:
            todo.append((stem, path_a, path_b, dest))
    if todo:
        from .fuser import Fuser

        model = fuser if isinstance(fuser, Fuser) else fuser()
        if batch_size is None:
            batch_size = CUDA_BATCH_SIZE if model.device.type == "cuda" else 1
        _Pipeline(model, report, batch_size=batch_size, resize=resize, bit_depth=bit_depth, log=log).run(
            todo, progress)
    return report


@dataclass
class _Pending:
    """A pair being decoded."""

    stem: str
    dest: Path
    a: Future[np.ndarray]
    b: Future[np.ndarray]

    def readable(self) -> bool:
        return self.a.exception() is None and self.b.exception() is None

    def sizes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.a.result().shape[:2], self.b.result().shape[:2]


class _Pipeline:
    """Decode ahead (two threads), fuse in the calling thread, encode and write behind (one thread)."""

    def __init__(self, fuser: Fuser, report: FolderReport, *, batch_size: int, resize: bool, bit_depth: int,
                 log: Callable[[str], None] | None) -> None:
        self.fuser, self.report, self.batch_size = fuser, report, batch_size
        self.resize, self.bit_depth, self.log = resize, bit_depth, log
        self.ahead: deque[_Pending] = deque()
        self.writes: deque[tuple[str, Future[Path]]] = deque()

    def run(self, todo: list[tuple[str, Path, Path, Path]], progress: bool) -> None:
        from tqdm import tqdm

        queue = iter(todo)
        self.bar = tqdm(total=len(todo), desc="fusing", unit="pair", disable=not progress)
        self.readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cddfuse-read")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cddfuse-write")
        try:
            self._read_ahead(queue)
            while self.ahead and self.report.stopped is None:
                batch = self._next_batch()
                self._read_ahead(queue)
                label = batch[0].stem if len(batch) == 1 else f"{batch[0].stem} (+{len(batch) - 1})"
                self.bar.set_postfix_str(label)
                self._fuse(batch)
                self._collect_writes(block=len(self.writes) > self.batch_size)  # one finished batch may wait
            self._collect_writes(block=True)
        finally:
            for pending in self.ahead:
                pending.a.cancel()
                pending.b.cancel()
            self.readers.shutdown(wait=True)
            self.writer.shutdown(wait=True)  # a write in progress completes (atomically) even on Ctrl-C
            self.bar.close()

    def _read_ahead(self, queue: Iterator[tuple[str, Path, Path, Path]]) -> None:
        while len(self.ahead) < READ_AHEAD + self.batch_size - 1:
            item = next(queue, None)
            if item is None:
                return
            stem, path_a, path_b, dest = item
            self.ahead.append(_Pending(stem, dest, self.readers.submit(read_image, path_a, keep_integer=True),
                                       self.readers.submit(read_image, path_b, keep_integer=True)))

    def _next_batch(self) -> list[_Pending]:
        """The next pair, and the readable pairs after it of the same sizes (up to ``batch_size``)."""
        batch = [self.ahead.popleft()]
        while len(batch) < self.batch_size and self.ahead:
            first, candidate = batch[0], self.ahead[0]
            if not (first.readable() and candidate.readable()) or first.sizes() != candidate.sizes():
                break  # an unreadable pair is reported in its own turn
            batch.append(self.ahead.popleft())
        return batch

    def _fuse(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            try:
                images = self.fuser.fuse_batch([(p.a.result(), p.b.result()) for p in batch], resize=self.resize)
            except _PAIR_ERRORS:
                pass  # e.g. out of memory: one pair at a time below
            else:
                for pending, image in zip(batch, images):
                    self._write(pending, image)
                return
        for pending in batch:
            try:
                image = self.fuser.fuse(pending.a.result(), pending.b.result(), resize=self.resize)
            except _PAIR_ERRORS as e:
                self._fail(pending.stem, e)
                self.bar.update(1)
            else:
                self._write(pending, image)

    def _write(self, pending: _Pending, image: np.ndarray) -> None:
        future = self.writer.submit(write_image, pending.dest, image, bit_depth=self.bit_depth)
        self.writes.append((pending.stem, future))

    def _collect_writes(self, block: bool) -> None:
        while self.writes and (block or self.writes[0][1].done()):
            stem, future = self.writes.popleft()
            try:
                future.result()
                self.report.done.append(stem)
            except _PAIR_ERRORS as e:
                self._fail(stem, e)
                if isinstance(e, ImageWriteError) and e.disk_full:
                    self.report.stopped = str(e)  # every further write would fail too
            self.bar.update(1)

    def _fail(self, stem: str, e: BaseException) -> None:
        self.report.failed[stem] = _one_line(e)
        if self.log is not None:
            self.log(f"error: {stem}: {self.report.failed[stem]}")
