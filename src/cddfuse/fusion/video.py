"""Video fusion: two frame sequences (video files or folders of numbered frames) to a video or to frames.

Frames are read, fused and written one batch at a time (``batch_size`` frame pairs, default 8 on CUDA
and 1 on CPU), so memory does not grow with the length of the video. Each frame goes through the same
pipeline as an image pair (:class:`~cddfuse.fusion.Fuser`: luminance, network, normalisation, colour),
except the min-max normalisation, which for video uses a **temporally smoothed range** by default:

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

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Literal, get_args

import numpy as np

from ..errors import CDDFuseError, UsageError
from ..io.color import YCbCrImage, merge_luminance
from .fuser import Fuser
from .policy import FLAT_RANGE

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


def _colour(fuser: Fuser, y: np.ndarray, sa: YCbCrImage, sb: YCbCrImage) -> np.ndarray:
    """The fused luminance with the colour of the colour source, as :class:`Fuser` does for images."""
    if fuser.color == "auto":
        source = sb if sb.is_color else (sa if sa.is_color else None)
        if source is not None:
            return merge_luminance(y, source, fuser.chroma)
    return y


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
    sentinel = object()
    pairs = itertools.zip_longest(frames_a, frames_b, fillvalue=sentinel)
    while True:
        batch: list[tuple[YCbCrImage, YCbCrImage]] = []
        for a, b in pairs:
            if a is sentinel or b is sentinel:
                if sync == "exact":
                    longer, shorter = ("first", "second") if b is sentinel else ("second", "first")
                    raise CDDFuseError(f"the {longer} source has more frames than the {shorter} "
                                       f"({stats.frames + len(batch)}); give sources of equal length, or "
                                       "sync='shortest' to stop at the shorter one",
                                       cli=f"the {'IR' if longer == 'first' else 'VIS'} source has more frames than "
                                           f"the {'VIS' if longer == 'first' else 'IR'} source "
                                           f"({stats.frames + len(batch)}); --sync shortest stops at the shorter one")
                stats.trimmed = True
                break
            batch.append(fuser._prepare(a, b, resize))  # the image pipeline's own first step (sizes, luminance)
            if len(batch) == batch_size:
                break
        if not batch:
            return stats
        sizes = {pa.y.shape for pa, _ in batch}
        if len(sizes) > 1:
            raise CDDFuseError(f"frame {stats.frames}: the frames change size within the video ({sorted(sizes)})")
        raws = fuser.fuse_luminance(np.stack([pa.y for pa, _ in batch]), np.stack([pb.y for _, pb in batch]))
        for raw, (sa, sb) in zip(raws, batch):
            if not np.all(np.isfinite(raw)):
                raise CDDFuseError(f"frame {stats.frames}: the fusion produced NaN or infinite values; no video "
                                   "is made from it")
            y = norm(raw) if fuser.normalize == "minmax" else np.clip(raw, 0.0, 1.0).astype(np.float32)
            write(_colour(fuser, y, sa, sb))
            stats.frames += 1
        if progress is not None:
            progress(len(batch))
        if stats.trimmed:
            return stats


def flicker(frames: list[np.ndarray]) -> float:
    """Mean absolute change of mean brightness from one frame to the next (in the frames' units): the
    flicker measure of ``benchmarks/bench_video.py`` (0 for a constant brightness)."""
    means = np.array([float(np.mean(f)) for f in frames])
    return float(np.abs(np.diff(means)).mean()) if len(means) > 1 else 0.0
