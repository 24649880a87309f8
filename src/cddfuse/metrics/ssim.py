"""SSIM as the CDDFuse authors computed it (scikit-image ``structural_similarity`` on float32 input)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from ._validate import MetricInputError, as_triplet

__all__ = ["ssim"]

WIN_SIZE = 7
K1, K2 = 0.01, 0.03
DATA_RANGE = 2.0  # scikit-image's dtype range of float images, [-1, 1]


def _box(x: np.ndarray, size: int, out: np.ndarray | None = None,
         work: np.ndarray | None = None) -> np.ndarray:
    """Mean over a ``size x size`` window, one axis after the other, rounding to ``x.dtype`` in between.

    Bit for bit what ``scipy.ndimage.uniform_filter`` (the filter scikit-image uses) gives: a
    running sum in double along axis 0, rounded to the array's dtype, then along axis 1.
    The border (reflected) is cropped away by the caller, so its convention does not matter.
    ``out`` and ``work`` (like ``x``) are optional buffers for the result and the first pass.
    """
    vertical = cv2.blur(x, (1, size), dst=work, borderType=cv2.BORDER_REFLECT)
    return cv2.blur(vertical, (size, 1), dst=out, borderType=cv2.BORDER_REFLECT)


def _ssim_sum(f: np.ndarray, sources: Iterable[np.ndarray], dtype: Any = np.float32,
              data_range: float = DATA_RANGE, win_size: int = WIN_SIZE) -> float:
    """Sum over ``sources`` of the mean SSIM of ``(f, source)``, computed in ``dtype``."""
    dtype = np.dtype(dtype)
    np_ = win_size * win_size
    cov_norm = dtype.type(np_ / (np_ - 1))  # sample covariance
    c1 = dtype.type((K1 * data_range) ** 2)
    c2 = dtype.type((K2 * data_range) ** 2)
    two = dtype.type(2)
    x = f.astype(dtype)
    # buffers reused for both sources (fewer fresh pages to fault in)
    work, y, prod, uy, vy, vxy, uy_sq = (np.empty_like(x) for _ in range(7))
    ux = _box(x, win_size, work=work)
    ux_sq = ux * ux
    np.multiply(x, x, out=prod)
    vx = _box(prod, win_size, work=work)
    vx -= ux_sq
    vx *= cov_norm
    pad = (win_size - 1) // 2
    total = 0.0
    for src in sources:
        # scikit-image's expressions, in place; products by 2 and sums are exact or commutative,
        # so the float32 rounding is the same as theirs
        np.copyto(y, src, casting="unsafe")
        _box(y, win_size, uy, work)
        np.multiply(y, y, out=prod)
        _box(prod, win_size, vy, work)
        np.multiply(uy, uy, out=uy_sq)
        vy -= uy_sq
        vy *= cov_norm                      # vy = cov_norm * (uyy - uy * uy)
        np.multiply(x, y, out=prod)
        _box(prod, win_size, vxy, work)
        a1 = np.multiply(ux, uy, out=uy)
        vxy -= a1
        vxy *= cov_norm                     # vxy = cov_norm * (uxy - ux * uy)
        a1 *= two
        a1 += c1                            # A1 = 2 * ux * uy + C1
        a2 = vxy
        a2 *= two
        a2 += c2                            # A2 = 2 * vxy + C2
        b1 = uy_sq
        b1 += ux_sq
        b1 += c1                            # B1 = ux**2 + uy**2 + C1
        b2 = vy
        b2 += vx
        b2 += c2                            # B2 = vx + vy + C2
        a1 *= a2
        b1 *= b2
        a1 /= b1                            # S = (A1 * A2) / (B1 * B2)
        total += float(a1[pad:-pad, pad:-pad].mean(dtype=np.float64))
    return total


def _ssim(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    return _ssim_sum(f, (a, b))


def ssim(a: Any, b: Any, f: Any, *, data_range: float = DATA_RANGE, dtype: Any = np.float32) -> float:
    """SSIM - structural similarity of the fused image with each source, **summed** (authors' protocol).

    Definition: ``SSIM = SSIM(F, A) + SSIM(F, B)``; each term is the mean over the image (minus a
    3-pixel border) of ``((2 ux uy + C1)(2 sxy + C2)) / ((ux^2 + uy^2 + C1)(sx^2 + sy^2 + C2))``
    with local means, variances and covariance over a 7x7 **uniform** window, sample covariance
    (``49/48`` normalisation), ``C1 = (0.01 R)^2``, ``C2 = (0.03 R)^2``.

    The CDDFuse authors call scikit-image's ``structural_similarity(F, A)`` on float32 arrays with
    values 0-255 and no ``data_range``: their scikit-image version then took the range of the float
    dtype, ``R = 2`` (for [-1, 1]), instead of 255. ``C1 = 0.0004`` and ``C2 = 0.0036`` are thus
    about 16000 times smaller than intended and barely stabilise the ratio in flat regions. That
    default is kept here (``data_range=2``) so the paper's numbers are reproduced; pass
    ``data_range=255`` for the textbook convention. Because it is a sum of two SSIMs, this
    column exceeds 1 in the paper's tables.

    Precision: computed in float32 by default, with the same operation order as scikit-image, which
    reproduces the authors' values to the last bits. With such small constants the result depends on
    float32 rounding at the 1e-6 level; ``dtype=np.float64`` gives the exact-arithmetic value.

    Range and direction: ``[-2, 2]`` (each term in ``[-1, 1]``); higher is better.

    Reference: Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment:
    from error visibility to structural similarity", IEEE Trans. Image Processing 13(4):600-612, 2004.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import ssim
        >>> rng = np.random.default_rng(0)
        >>> a = rng.integers(0, 256, (32, 32)).astype(np.float64)
        >>> ssim(a, a, a)                     # identical images: 1 + 1
        2.0
        >>> ssim(a, 255 - a, a) < 1.0         # the inverted source has negative structure
        True
    """
    arrays = as_triplet(a, b, f, min_size=WIN_SIZE)
    if not data_range > 0:
        raise MetricInputError(f"data_range must be positive, got {data_range}")
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise MetricInputError(f"dtype must be float32 or float64, got {dt}")
    fa, fb, ff = arrays
    return _ssim_sum(ff, (fa, fb), dt, float(data_range))
