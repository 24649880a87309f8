"""Input checks shared by the metric functions (internal)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CDDFuseError

__all__ = ["MetricInputError", "as_image", "as_triplet", "as_uint8_if_exact", "histogram_u8"]


class MetricInputError(CDDFuseError, ValueError):
    """An image given to a metric is not a finite 2-D array, or the three images differ in size."""


def as_image(x: Any, name: str = "image", min_size: int = 1) -> np.ndarray:
    """Return ``x`` as a C-contiguous float64 ``(H, W)`` array of finite values (0-255 scale expected).

    PIL images and array-likes are accepted; colour ``(H, W, 3)`` arrays are refused, because the
    gray conversion is part of the protocol: use :func:`cddfuse.metrics.rgb_to_gray` or
    :func:`cddfuse.metrics.read_gray`.
    """
    arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        hint = " (colour image: convert it with cddfuse.metrics.rgb_to_gray first)" if arr.ndim == 3 else ""
        raise MetricInputError(f"{name}: expected a 2-D gray image, got shape {arr.shape}{hint}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MetricInputError(f"{name}: expected a numeric image, got dtype {arr.dtype}")
    integer = np.issubdtype(arr.dtype, np.integer)
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if min(arr.shape) < min_size:
        raise MetricInputError(f"{name}: image of {arr.shape[1]}x{arr.shape[0]} pixels is too small "
                               f"(at least {min_size}x{min_size} needed)")
    if not integer and not np.isfinite(arr).all():
        raise MetricInputError(f"{name}: the image contains NaN or infinite values")
    return arr


def as_triplet(a: Any, b: Any, f: Any, min_size: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the two sources and the fused image together (same 2-D shape)."""
    fa = as_image(a, "source A", min_size)
    fb = as_image(b, "source B", min_size)
    ff = as_image(f, "fused image", min_size)
    if not (fa.shape == fb.shape == ff.shape):
        raise MetricInputError(
            f"the images differ in size: A {fa.shape[1]}x{fa.shape[0]}, B {fb.shape[1]}x{fb.shape[0]}, "
            f"fused {ff.shape[1]}x{ff.shape[0]}"
        )
    return fa, fb, ff


def as_uint8_if_exact(x: np.ndarray) -> np.ndarray | None:
    """``x`` as uint8 when all its values are integers in 0..255 (8-bit images), else None.

    A cheap test: the cast is compared with the original (out-of-range values and fractions
    do not survive the round trip).
    """
    u8 = x.astype(np.uint8)
    return u8 if np.array_equal(u8, x) else None


def histogram_u8(*images: np.ndarray) -> np.ndarray | None:
    """Counts of one uint8 image (256 bins) or the joint table of two (256x256), int64.

    None for images of 2**24 pixels or more, where OpenCV's float32 counts could be inexact.
    """
    import cv2

    n = len(images)
    if images[0].size >= 1 << 24:
        return None
    counts = cv2.calcHist(list(images), list(range(n)), None, [256] * n, [0, 256] * n)
    return counts.astype(np.int64).reshape((256,) * n)
