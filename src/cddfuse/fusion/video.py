"""Video fusion: two frame sequences (video files or folders of numbered frames) to a video or to frames.

Frames are read, fused and written one batch at a time (``batch_size`` frame pairs, default 8 on CUDA
and 1 on CPU), so memory does not grow with the length of the video. A thread decodes the next frames
and splits their luminance while the network runs, and another puts the colour back and encodes the
frames behind it, in order (a few frames in flight at most). Each frame goes through the same
pipeline as an image pair (:class:`~cddfuse.fusion.Fuser`: luminance, network, normalisation, colour),
except the min-max normalisation, which for video uses a **temporally smoothed range** by default.
With the fuser's ``align`` option every frame pair is aligned on its own, as an image pair is (the first
frame warped into the second's frame; pixels it does not cover take the second frame alone), and a frame
pair whose alignment confidence is below the threshold stops the video with
:class:`~cddfuse.align.AlignmentError`.

Per-frame min-max stretches every frame's own minimum and maximum to 0 and 1, so a hot object that
enters the view, or sensor noise in the extremes, changes the brightness of the whole frame from one
frame to the next (flicker). :class:`TemporalNormalizer` instead follows the range with an exponential
moving average, ``lo_t = lo_{t-1} + (min_t - lo_{t-1}) / smoothing`` (and the same for the maximum;
``lo_0 = min_0``), and maps ``[lo_t, hi_t]`` to ``[0, 1]`` with clipping. ``smoothing=1`` is per-frame
min-max.

Example (two gray 3-frame sequences, the ``max`` rule, frames kept in memory):
    >>> import numpy as np
    >>> a = [np.full((4, 6), v, np.uint8) for v in (10, 20, 30)]
    >>> b = [np.arange(24, dtype=np.uint8).reshape(4, 6) for _ in range(3)]
    >>> frames = []
    >>> stats = fuse_sequences(Fuser(method="max"), iter(a), iter(b), frames.append, normalize="frame")
    >>> stats.frames, [f.shape for f in frames], float(frames[0].min()), float(frames[0].max())
    (3, [(4, 6), (4, 6), (4, 6)], 0.0, 1.0)
    >>> TemporalNormalizer(smoothing=2).update(np.array([0.0, 1.0])), TemporalNormalizer(2).range
    ((0.0, 1.0), None)
"""
from __future__ import annotations

import contextlib
import itertools
import math
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Literal, get_args

import numpy as np

from ..errors import CDDFuseError, UsageError
from .fuser import Fuser
from .policy import FLAT_RANGE
from .stages import PreparedPair, colour, cover

__all__ = ["TemporalNormalizer", "fuse_sequences", "SequenceStats", "TemporalMode", "TEMPORAL_MODES",
           "SyncMode", "SYNC_MODES", "DEFAULT_SMOOTHING", "flicker"]

#: ``ema``: min-max over a temporally smoothed range (default for video); ``frame``: each frame's own min-max.
TemporalMode = Literal["ema", "frame"]
TEMPORAL_MODES: tuple[TemporalMode, ...] = get_args(TemporalMode)
#: ``exact``: sources must have the same frame count and rate; ``shortest``: stop at the shorter one.
SyncMode = Literal["exact", "shortest"]
SYNC_MODES: tuple[SyncMode, ...] = get_args(SyncMode)
#: Time constant of the smoothed range, in frames (about 0.4 s at 25 frames/s).
DEFAULT_SMOOTHING = 10.0


class TemporalNormalizer:
    """Min-max normalisation with an exponentially smoothed range (see the module docstring).

    Args:
        smoothing: time constant in frames, at least 1 (1: every frame's own range).
    """

    def __init__(self, smoothing: float = DEFAULT_SMOOTHING) -> None:
        if not (smoothing >= 1 and math.isfinite(smoothing)):
            raise UsageError.invalid("smoothing", smoothing, "must be at least 1 (frames); 1 is per-frame min-max")
        self.alpha = 1.0 / float(smoothing)
        self.range: tuple[float, float] | None = None

    def update(self, raw: np.ndarray) -> tuple[float, float]:
        """Take the next frame's raw output into the running range; returns the range for that frame."""
        lo, hi = float(raw.min()), float(raw.max())
        if self.range is not None:
            plo, phi = self.range
            lo, hi = plo + self.alpha * (lo - plo), phi + self.alpha * (hi - phi)
        self.range = (lo, hi)
        return lo, hi

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """The next frame's raw output ``(H, W)`` -> float32 in [0, 1]."""
        lo, hi = self.update(raw)
        if hi - lo < FLAT_RANGE:  # a flat range: kept as computed, not its noise stretched (see policy.stretch)
            return np.clip(raw.astype(np.float32), 0.0, 1.0)
        return np.clip((raw.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


@dataclass
class SequenceStats:
    """What :func:`fuse_sequences` did: frames fused, and whether one source had frames left over
    (``sync="shortest"``)."""

    frames: int = 0
    trimmed: bool = False


def fuse_sequences(
    fuser: Fuser,
    frames_a: Iterator[np.ndarray],
    frames_b: Iterator[np.ndarray],
    write: Callable[[np.ndarray], None],
    *,
    normalize: TemporalMode = "ema",
    smoothing: float = DEFAULT_SMOOTHING,
    sync: SyncMode = "exact",
    resize: bool = False,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> SequenceStats:
    """Fuse two frame sequences pair by pair, in order, and hand each fused frame to ``write``.

    Args:
        fuser: the fuser (network or rule, colour and chroma options). Its ``normalize="none"`` keeps the raw
            output (clipped to [0, 1]) and ignores ``normalize`` here.
        frames_a, frames_b: infrared/functional and visible/MRI frames (what
            :func:`~cddfuse.io.image.read_image` returns with ``keep_integer=True``).
        write: called with each fused frame, float32 in [0, 1], ``(H, W)`` or ``(H, W, 3)``.
        normalize: ``"ema"`` (smoothed range, :class:`TemporalNormalizer`) or ``"frame"`` (each frame's own).
        smoothing: the time constant of ``"ema"`` in frames.
        sync: ``"exact"``: a source with frames left over is an error; ``"shortest"``: stop at the shorter.
        resize: resample ``b``'s frames to ``a``'s size when they differ.
        batch_size: frame pairs fused as one batch (faster on a GPU).
        progress: called with the number of frames just written.

    Raises:
        CDDFuseError: frame counts differ (``sync="exact"``), a frame cannot be fused, or the network's
            output is not finite.
    """
    if normalize not in TEMPORAL_MODES:
        raise UsageError.invalid("normalize", normalize, f"choose one of {', '.join(TEMPORAL_MODES)}")
    if sync not in SYNC_MODES:
        raise UsageError.invalid("sync", sync, f"choose one of {', '.join(SYNC_MODES)}")
    norm = TemporalNormalizer(smoothing if normalize == "ema" else 1.0)
    stats = SequenceStats()
    with _Prepared(fuser, frames_a, frames_b, resize, ahead=READ_AHEAD_FRAMES + batch_size) as source, \
            _Writer(fuser, write) as writer:
        while True:
            batch: list[PreparedPair] = []
            while len(batch) < batch_size:
                item = source.next()
                if item is None:
                    break
                if isinstance(item, str):  # "a" or "b": the source that ended first
                    if sync == "exact":
                        longer, shorter = ("first", "second") if item == "b" else ("second", "first")
                        raise CDDFuseError(f"the {longer} source has more frames than the {shorter} "
                                           f"({stats.frames + len(batch)}); give sources of equal length, or "
                                           "sync='shortest' to stop at the shorter one",
                                           cli=f"the {'IR' if longer == 'first' else 'VIS'} source has more frames "
                                               f"than the {'VIS' if longer == 'first' else 'IR'} source "
                                               f"({stats.frames + len(batch)}); --sync shortest stops at the "
                                               "shorter one")
                    stats.trimmed = True
                    break
                batch.append(item)
            if not batch:
                return stats
            sizes = {pair.a.y.shape for pair in batch}
            if len(sizes) > 1:
                raise CDDFuseError(f"frame {stats.frames}: the frames change size within the video ({sorted(sizes)})")
            raws = fuser.fuse_luminance(np.stack([pair.a.y for pair in batch]), np.stack([pair.b.y for pair in batch]))
            for raw, pair in zip(raws, batch):
                if not np.all(np.isfinite(raw)):
                    raise CDDFuseError(f"frame {stats.frames}: the fusion produced NaN or infinite values; no video "
                                       "is made from it")
                y = norm(raw) if fuser.normalize == "minmax" else np.clip(raw, 0.0, 1.0).astype(np.float32)
                writer.put(cover(y, pair), pair)
                stats.frames += 1
            if progress is not None:
                progress(len(batch))
            if stats.trimmed:
                return stats


#: Frame pairs decoded and split into luminance ahead of the ones being fused (in a thread).
READ_AHEAD_FRAMES = 2
#: Fused frames waiting for the writer thread (colour, then ``write``: encoding) at most.
WRITE_BEHIND_FRAMES = 2


class _Prepared:
    """Decode both sources and split each pair's luminance in a thread, ``ahead`` pairs ahead of the fusion
    (decoding, colour conversion and encoding release the GIL, so they overlap the network).

    ``next()`` returns the next prepared pair, ``"a"`` / ``"b"`` when that source ended before the other
    (one was longer), or ``None`` when both ended together; an error of the thread is raised there, in order.
    The thread is always stopped and joined on exit, before the sources can be closed.
    """

    def __init__(self, fuser: Fuser, frames_a: Iterator[np.ndarray], frames_b: Iterator[np.ndarray],
                 resize: bool, ahead: int) -> None:
        self.fuser, self.frames_a, self.frames_b, self.resize = fuser, frames_a, frames_b, resize
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, ahead))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cddfuse-video-read", daemon=True)

    def __enter__(self) -> _Prepared:
        self.thread.start()
        return self

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        sentinel = object()
        try:
            for a, b in itertools.zip_longest(self.frames_a, self.frames_b, fillvalue=sentinel):
                if self.stop.is_set():
                    return
                if a is sentinel or b is sentinel:
                    self._put(("ended", "a" if a is sentinel else "b"))
                    return
                if not self._put(("pair", self.fuser.prepare(a, b, resize=self.resize))):  # the image stages
                    return
            self._put(("ended", None))
        except BaseException as e:  # handed to the fusing thread, raised there
            self._put(("error", e))

    def next(self) -> PreparedPair | str | None:
        kind, value = self.queue.get()
        if kind == "error":
            raise value
        if kind == "ended":
            self.queue.put(("ended", value))  # asked again (the next batch): the same answer
        return value

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.05)  # unblock a put
        self.thread.join()


class _Writer:
    """Put the colour back and hand fused frames to ``write`` in one thread, in order, at most
    :data:`WRITE_BEHIND_FRAMES` behind; an error of ``write`` is raised on the next ``put`` or on exit. On
    an error or interrupt of the caller, frames not yet written are dropped; one being written completes."""

    def __init__(self, fuser: Fuser, write: Callable[[np.ndarray], None]) -> None:
        self.fuser, self.write = fuser, write
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cddfuse-video-write")
        self.pending: deque[Future[None]] = deque()

    def __enter__(self) -> _Writer:
        return self

    def _one(self, y: np.ndarray, pair: PreparedPair) -> None:
        self.write(colour(y, pair, self.fuser.options, self.fuser.task).image)

    def put(self, y: np.ndarray, pair: PreparedPair) -> None:
        self.pending.append(self.pool.submit(self._one, y, pair))
        while len(self.pending) > WRITE_BEHIND_FRAMES or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                while self.pending:
                    self.pending.popleft().result()
        finally:
            for future in self.pending:
                future.cancel()
            self.pool.shutdown(wait=True)


def flicker(frames: list[np.ndarray]) -> float:
    """Mean absolute change of mean brightness from one frame to the next (in the frames' units): the
    flicker measure of ``benchmarks/bench_video.py`` (0 for a constant brightness)."""
    means = np.array([float(np.mean(f)) for f in frames])
    return float(np.abs(np.diff(means)).mean()) if len(means) > 1 else 0.0
