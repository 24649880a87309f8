"""Pixel-domain visual information fidelity (VIF / VIFF column of the CDDFuse tables)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ._validate import as_triplet

__all__ = ["vif", "vif_window", "VIF_MIN_SIZE"]

SIGMA_NSQ = 2.0
EPS = 1e-10
SCALES = 4
#: Smallest image side for which every scale still has at least one 'valid' output pixel.
VIF_MIN_SIZE = 41


def _taps(scale: int) -> np.ndarray:
    """Normalised 1-D Gaussian of size ``2**(5 - scale) + 1``, sd = size / 5."""
    n = 2 ** (SCALES - scale + 1) + 1
    sd = n / 5.0
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sd * sd))
    return g / g.sum()


def vif_window(scale: int) -> np.ndarray:
    """The 2-D window of ``scale`` (1..4) as the authors build it (MATLAB ``fspecial('gaussian')``).

    ``exp(-(x^2 + y^2) / (2 sd^2))`` on an ``N x N`` grid, ``N = 2**(5-scale) + 1``, ``sd = N/5``,
    values below ``eps * max`` set to 0, normalised to sum 1. For these sizes no value falls below
    the threshold, so the window is exactly the outer product of the 1-D Gaussian used internally
    (separable filtering).
    """
    n = 2 ** (SCALES - scale + 1) + 1
    sd = n / 5.0
    m = (n - 1) / 2.0
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sd * sd))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


def _valid(x: np.ndarray, taps: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """2-D 'valid' convolution with the separable window ``outer(taps, taps)`` (symmetric).

    ``out`` (float64, the shape of ``x``) receives the full-size result; the valid part is returned
    as a view of it.
    """
    r = (taps.size - 1) // 2
    full = cv2.sepFilter2D(x, cv2.CV_64F, taps, taps, dst=out, borderType=cv2.BORDER_REFLECT_101)
    return full[r:full.shape[0] - r, r:full.shape[1] - r]


def _vif_sums(refs: Sequence[np.ndarray], dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numerators and denominators of the VIF of each reference image against ``dist``."""
    refs = [np.ascontiguousarray(r, dtype=np.float64) for r in refs]
    dist = np.ascontiguousarray(dist, dtype=np.float64)
    num = np.zeros(len(refs))
    den = np.zeros(len(refs))
    for scale in range(1, SCALES + 1):
        taps = _taps(scale)
        if scale > 1:  # smooth with this scale's window, then keep every second pixel
            refs = [np.ascontiguousarray(_valid(r, taps)[::2, ::2]) for r in refs]
            dist = np.ascontiguousarray(_valid(dist, taps)[::2, ::2])
        # work buffers, reused for both references (fewer fresh pages to fault in)
        prod, buf_mu1, buf_s1, buf_s12 = (np.empty_like(dist) for _ in range(4))
        mu2 = _valid(dist, taps)
        np.multiply(dist, dist, out=prod)
        sigma2_sq = _valid(prod, taps)
        tmp = np.multiply(mu2, mu2)
        sigma2_sq -= tmp
        np.maximum(sigma2_sq, 0.0, out=sigma2_sq)
        dist_ok = sigma2_sq >= EPS
        for k, ref in enumerate(refs):
            mu1 = _valid(ref, taps, buf_mu1)
            np.multiply(ref, ref, out=prod)
            sigma1_sq = _valid(prod, taps, buf_s1)
            np.multiply(mu1, mu1, out=tmp)
            sigma1_sq -= tmp
            np.maximum(sigma1_sq, 0.0, out=sigma1_sq)
            np.multiply(ref, dist, out=prod)
            sigma12 = _valid(prod, taps, buf_s12)
            np.multiply(mu1, mu2, out=tmp)
            sigma12 -= tmp
            g = np.add(sigma1_sq, EPS, out=tmp)
            np.divide(sigma12, g, out=g)  # gain
            sv_sq = np.multiply(g, sigma12, out=mu1)
            np.subtract(sigma2_sq, sv_sq, out=sv_sq)
            # the gain is 0 (the pixel adds nothing to the numerator) where the reference or the
            # distorted image is flat (variance < eps) or the gain is negative
            ref_ok = sigma1_sq >= EPS
            keep = ref_ok & dist_ok
            keep &= g > 0
            np.multiply(g, keep, out=g)
            np.maximum(sv_sq, EPS, out=sv_sq)
            sv_sq += SIGMA_NSQ
            # numerator: log10(1 + g^2 sigma1^2 / (sv^2 + sigma_n^2))
            np.multiply(g, g, out=g)
            g *= sigma1_sq
            g /= sv_sq
            g += 1.0
            num[k] += np.sum(np.log10(g, out=g))
            # denominator: log10(1 + sigma1^2 / sigma_n^2), sigma1^2 < eps counted as 0
            np.multiply(sigma1_sq, ref_ok, out=sigma1_sq)
            sigma1_sq /= SIGMA_NSQ
            sigma1_sq += 1.0
            den[k] += np.sum(np.log10(sigma1_sq, out=sigma1_sq))
    return num, den


def _vif(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    num, den = _vif_sums((a, b), f)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / den
    ratio[np.isnan(ratio)] = 1.0  # 0/0: both images flat everywhere
    return float(ratio.sum())


def vif(a: Any, b: Any, f: Any) -> float:
    """VIF - pixel-domain visual information fidelity of the fused image to each source, summed.

    Definition: ``VIF = VIF(A, F) + VIF(B, F)``. For a reference ``R`` and the fused image ``F``,
    over 4 scales ``s = 1..4`` with the Gaussian window of size ``N = 2**(5-s) + 1`` and
    ``sd = N/5`` (see :func:`vif_window`), 'valid' 2-D convolution, and from scale 2 on the images
    first smoothed with that scale's window and downsampled by 2:

        ``VIF(R, F) = sum_s sum_px log10(1 + g^2 s_R^2 / (s_v^2 + s_n^2)) / sum_s sum_px log10(1 + s_R^2 / s_n^2)``

    with local variances ``s_R^2``, ``s_F^2`` (clamped at 0), covariance ``s_RF``, gain
    ``g = s_RF / (s_R^2 + eps)``, ``s_v^2 = s_F^2 - g s_RF``; ``s_n^2 = 2``, ``eps = 1e-10``; where
    ``s_R^2 < eps``: ``g = 0`` and ``s_R^2 = 0``; where ``s_F^2 < eps``: ``g = 0``; where
    ``g < 0``: ``g = 0``; ``s_v^2`` at least ``eps``. A 0/0 ratio (flat images) counts as 1.
    Computed in float64 with separable filtering.

    Range and direction: ``>= 0``, typically 0-2 (each term is about 1 for a perfect copy and may
    exceed 1 when the fused image has more contrast); higher is better.

    Reference: H. R. Sheikh, A. C. Bovik, "Image information and visual quality", IEEE Trans.
    Image Processing 15(2):430-444, 2006; for fusion: Y. Han, Y. Cai, Y. Cao, X. Xu, "A new image
    fusion performance metric based on visual information fidelity", Information Fusion
    14(2):127-135, 2013.

    Images must be at least 41x41 pixels (:data:`VIF_MIN_SIZE`), so that the coarsest scale is not empty.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import vif
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.uniform(0, 255, (2, 64, 64))
        >>> round(vif(a, b, a), 6) > 1.0       # F = A: VIF(A, F) = 1, plus what B shares
        True
    """
    return _vif(*as_triplet(a, b, f, min_size=VIF_MIN_SIZE))
