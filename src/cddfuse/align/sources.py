"""Alignment of two loaded sources before fusion (what ``Fuser(align=...)`` and ``fuse --align`` do)."""
from __future__ import annotations

import cv2
import numpy as np

from ..options import AlignModel
from . import Alignment, _as_luminance, coverage, estimate, warp
from .registration import border_mask

__all__ = ["align_sources"]


def align_sources(arr_a: np.ndarray, arr_b: np.ndarray, model: AlignModel,
                  min_confidence: float) -> tuple[np.ndarray, Alignment, np.ndarray]:
    """Warp source ``arr_a`` into ``arr_b``'s frame, or raise :class:`~cddfuse.align.AlignmentError`; returns
    the warped source, the alignment and the boolean ``(Hb, Wb)`` mask of the pixels it does not cover.

    Both are loaded sources (uint8/uint16 or float32 in [0, 1], ``(H, W)`` or ``(H, W, 3)``). Pixels of
    the second image that the warped first does not cover get the second image's own values in the
    returned first source (converted to its channels) -- and so do pixels of the first image's own black
    frame (:func:`~cddfuse.align.registration.border_mask`) -- so that the fusion there sees the second image
    alone and no artificial black border.

    >>> rng = np.random.default_rng(0)
    >>> b = (rng.random((40, 48)) * 200 + 30).astype(np.uint8)
    >>> a, al, outside = align_sources(b[:, 4:], b, "translation", 0.0)
    >>> a.shape, al.size_a, al.size_b, bool(outside[:, :4].all()), bool(outside[:, 6:].any())
    ((40, 48), (44, 40), (48, 40), True, False)
    """
    alignment = estimate(arr_a, arr_b, model, min_confidence=min_confidence).check()
    warped = warp(arr_a, alignment)
    own_frame = border_mask(_as_luminance(arr_a, "first image"), erode=1)  # a black frame of its own is no content
    covered = coverage(alignment.matrix, alignment.size_a, alignment.size_b, own_frame).astype(np.uint8)
    # and not the pixels next to an edge of the warp, which linear interpolation mixes with the black outside
    outside = cv2.erode(covered, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE) == 0
    if outside.any():
        fill = _like(arr_b, arr_a)
        warped[outside] = fill[outside]
    return warped, alignment, outside


def _like(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``b`` in ``a``'s dtype and channel layout (gray <-> RGB by luminance / replication)."""
    from ..io.color import luminance

    if a.ndim == 2 and b.ndim == 3:
        y = luminance(b)
        b = (np.round(y * np.iinfo(b.dtype).max).astype(b.dtype) if np.issubdtype(b.dtype, np.integer) else y)
    elif a.ndim == 3 and b.ndim == 2:
        b = np.repeat(b[..., None], 3, axis=2)
    if b.dtype == a.dtype:
        return b
    bf = b.astype(np.float32) / (np.iinfo(b.dtype).max if np.issubdtype(b.dtype, np.integer) else 1.0)
    if np.issubdtype(a.dtype, np.integer):
        return np.round(bf * np.iinfo(a.dtype).max).astype(a.dtype)
    return bf.astype(a.dtype)
