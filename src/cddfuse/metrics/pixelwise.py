"""Source-referenced metrics on pixel statistics: MI, SCD, CC, MSE, PSNR.

Each function takes the two sources ``a`` (infrared / functional) and ``b`` (visible / MRI) and
the fused image ``f``, gray on the 0-255 scale, and returns a Python float (computed in float64).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import as_triplet, as_uint8_if_exact, histogram_u8

__all__ = ["mutual_information", "scd", "correlation_coefficient", "mse", "psnr"]

_DENSE_JOINT_LIMIT = 1 << 22  # joint histograms up to this many cells are counted densely


def _labels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer labels of the exact pixel values (values themselves for small non-negative integers)."""
    flat = x.ravel()
    lo, hi = flat.min(), flat.max()
    if lo >= 0 and hi <= 65535:
        ints = flat.astype(np.int64)
        if np.array_equal(ints, flat):
            return ints, int(hi) + 1
    _, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.ravel().astype(np.int64, copy=False)
    return inverse, int(inverse.max()) + 1


def _mi_terms(n_ij: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, n: int) -> float:
    """Plug-in MI (nats) from the counts of the non-empty cells and their row/column totals.

    The formula of scikit-learn's ``mutual_info_score`` (used by the authors), including its
    zeroing of terms below machine epsilon and the clipping at 0.
    """
    p = n_ij / n
    log_n = np.log(n)
    terms = p * (np.log(n_ij) - log_n) + p * (2.0 * log_n - np.log(n_i.astype(np.float64) * n_j))
    terms[np.abs(terms) < np.finfo(np.float64).eps] = 0.0
    return float(max(np.sum(terms), 0.0))


def _mi_joint(joint: np.ndarray) -> float:
    """MI (nats) from a dense joint count table."""
    rows, cols = np.nonzero(joint)
    n_ij = joint[rows, cols]
    return _mi_terms(n_ij, joint.sum(axis=1)[rows], joint.sum(axis=0)[cols], int(n_ij.sum()))


def _mi_labels(lx: np.ndarray, nx: int, ly: np.ndarray, ny: int) -> float:
    """MI (nats) of two label images (labels ``0..nx-1`` and ``0..ny-1``)."""
    codes = lx * ny
    codes += ly
    if nx * ny <= _DENSE_JOINT_LIMIT:
        return _mi_joint(np.bincount(codes, minlength=nx * ny).reshape(nx, ny))
    cells, n_ij = np.unique(codes, return_counts=True)
    n_i = np.bincount(lx, minlength=nx)[cells // ny]
    n_j = np.bincount(ly, minlength=ny)[cells % ny]
    return _mi_terms(n_ij, n_i, n_j, lx.size)


def _mutual_information(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    u8 = [as_uint8_if_exact(x) for x in (f, a, b)]
    if u8[0] is not None and u8[1] is not None and u8[2] is not None:  # 8-bit images
        joint_a, joint_b = histogram_u8(u8[0], u8[1]), histogram_u8(u8[0], u8[2])
        if joint_a is not None and joint_b is not None:
            return _mi_joint(joint_a) + _mi_joint(joint_b)
    lf, nf = _labels(f)
    la, na = _labels(a)
    lb, nb = _labels(b)
    return _mi_labels(lf, nf, la, na) + _mi_labels(lf, nf, lb, nb)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """``sum(x * y)`` over all pixels without a temporary (einsum: no BLAS threads to wake)."""
    return float(np.einsum("ij,ij->", x, y))


def _corr_centered(xc: np.ndarray, yc: np.ndarray) -> float:
    """Pearson correlation of two already centred images."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(_dot(xc, yc)) / np.sqrt(np.float64(_dot(xc, xc)) * _dot(yc, yc)))


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean()


def _scd(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    ac, bc, fc = _centred(a), _centred(b), _centred(f)
    diff = np.subtract(fc, bc)  # F - B, centred
    r_a = _corr_centered(ac, diff)
    np.subtract(fc, ac, out=diff)  # F - A, centred
    return r_a + _corr_centered(bc, diff)


def _correlation_coefficient(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    ac, bc, fc = _centred(a), _centred(b), _centred(f)
    return (_corr_centered(ac, fc) + _corr_centered(bc, fc)) / 2.0


def _mse(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    d = np.subtract(a, f)
    err_a = _dot(d, d) / d.size
    np.subtract(b, f, out=d)
    return (err_a + _dot(d, d) / d.size) / 2.0


def _psnr(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    err = _mse(a, b, f)
    peak = float(np.max(f))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(10.0 * np.log10(np.float64(peak * peak) / np.float64(err)))


def mutual_information(a: Any, b: Any, f: Any) -> float:
    """MI - mutual information between the fused image and each source, summed, in nats.

    Definition: ``MI = I(F; A) + I(F; B)`` with the plug-in estimate
    ``I(X; Y) = sum_xy p(x, y) * ln(p(x, y) / (p(x) p(y)))`` over the joint histogram of the
    exact pixel values (each distinct value is its own bin; no binning or smoothing). Natural
    logarithm, as scikit-learn's ``mutual_info_score`` used by the CDDFuse authors.

    Range and direction: ``[0, 2 ln 256 ~ 11.09]`` for 8-bit images; higher is better (more
    information carried over from the sources).

    Reference: G. Qu, D. Zhang, P. Yan, "Information measure for performance of image fusion",
    Electronics Letters 38(7):313-315, 2002.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import mutual_information
        >>> a = np.array([[0.0, 0.0], [255.0, 255.0]])
        >>> b = np.full((2, 2), 9.0)          # constant: shares no information
        >>> round(mutual_information(a, b, a), 6)   # F = A: I(F;A) = H(A) = ln 2
        0.693147
    """
    return _mutual_information(*as_triplet(a, b, f))


def scd(a: Any, b: Any, f: Any) -> float:
    """SCD - sum of the correlations of differences.

    Definition: ``SCD = r(A, F - B) + r(B, F - A)``, ``r`` the Pearson correlation coefficient:
    how much of each source's content the fused image adds on top of the other source.

    Range and direction: ``[-2, 2]``; higher is better. NaN when a correlation is undefined
    (a constant source or constant difference image).

    Reference: V. Aslantas, E. Bendes, "A new image quality metric for image fusion: The sum of
    the correlations of differences", AEU Int. J. Electron. Commun. 69(12):1890-1896, 2015.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import scd
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.uniform(0, 255, (2, 16, 16))
        >>> round(scd(a, b, a + b), 6)        # F - B = A and F - A = B exactly
        2.0
    """
    return _scd(*as_triplet(a, b, f))


def correlation_coefficient(a: Any, b: Any, f: Any) -> float:
    """CC - mean Pearson correlation of the fused image with the two sources.

    Definition: ``CC = (r(A, F) + r(B, F)) / 2``.

    Range and direction: ``[-1, 1]``; higher is better. NaN when an image is constant.

    Reference: J. Ma, Y. Ma, C. Li, "Infrared and visible image fusion methods and applications:
    A survey", Information Fusion 45:153-178, 2019.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import correlation_coefficient
        >>> a = np.arange(16.0).reshape(4, 4)
        >>> correlation_coefficient(a, 255 - a, a)   # r = 1 with A, -1 with B
        0.0
    """
    return _correlation_coefficient(*as_triplet(a, b, f))


def mse(a: Any, b: Any, f: Any) -> float:
    """MSE - mean squared error of the fused image against the sources, averaged.

    Definition: ``MSE = (mean((A - F)**2) + mean((B - F)**2)) / 2`` on the 0-255 scale.

    Range and direction: ``[0, 65025]``; **lower** is better.

    Reference: P. Jagalingam, A. V. Hegde, "A review of quality metrics for fused image",
    Aquatic Procedia 4:133-142, 2015.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import mse
        >>> z = np.zeros((4, 4))
        >>> mse(z, z + 4, z + 2)               # (2**2 + 2**2) / 2
        4.0
    """
    return _mse(*as_triplet(a, b, f))


def psnr(a: Any, b: Any, f: Any) -> float:
    """PSNR - peak signal-to-noise ratio of the fused image, in dB.

    Definition: ``PSNR = 10 * log10(max(F)**2 / MSE)`` with :func:`mse` above; the peak is the
    fused image's maximum (the authors' convention), not 255. ``inf`` when ``MSE = 0``.

    Range and direction: unbounded; higher is better.

    Reference: P. Jagalingam, A. V. Hegde, "A review of quality metrics for fused image",
    Aquatic Procedia 4:133-142, 2015.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import psnr
        >>> f = np.full((4, 4), 100.0)
        >>> psnr(f - 1, f + 1, f)              # 10 * log10(100**2 / 1)
        40.0
    """
    return _psnr(*as_triplet(a, b, f))
