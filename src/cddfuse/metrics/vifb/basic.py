"""VIFB's statistical metrics: Avg_gradient, Edge_intensity, Entropy, Spatial_frequency, Variance (fused
image only) and Cross_entropy, Mutinf, Psnr, Rmse (fused image against both sources).

Each private ``_name(t)`` takes a prepared :class:`~._common.Triplet`; the per-channel values are
averaged with :func:`~._common.channel_mean`, as VIFB's ``mean(g)``.
"""
from __future__ import annotations

import cv2
import numpy as np

from ._common import Triplet, channel_mean, round_half_away

__all__: list[str] = []  # the public functions are in cddfuse.metrics.vifb

# fspecial('sobel') (horizontal edges) as imfilter applies it: correlation
_SOBEL = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def _hist(channel: np.ndarray) -> np.ndarray:
    """Counts of the 256 gray levels of a 2-D image of integers 0-255 (float64)."""
    return np.bincount(channel.astype(np.uint8).ravel(), minlength=256).astype(np.float64)


def _avg_gradient(t: Triplet) -> float:
    # MATLAB gradient: central differences inside, one-sided on the border; sum / ((r-1)(c-1))
    _, r, c = t.f.shape
    gy, gx = np.gradient(t.f, axis=(1, 2))
    s = np.sqrt((gx * gx + gy * gy) / 2)
    return channel_mean(s.sum(axis=(1, 2)) / ((r - 1) * (c - 1)))


def _edge_intensity(t: Triplet) -> float:
    # imfilter(fused, fspecial('sobel'), 'replicate') and its transpose, magnitude, mean over all values
    total = 0.0
    for ch in t.f:
        gx = cv2.filter2D(ch, cv2.CV_64F, _SOBEL, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.filter2D(ch, cv2.CV_64F, _SOBEL.T.copy(), borderType=cv2.BORDER_REPLICATE)
        total += float(np.sqrt(gx * gx + gy * gy).mean())
    return total / t.f.shape[0]


def _entropy_bits(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-np.sum(p * np.log2(p)))


def _entropy(t: Triplet) -> float:
    n = t.f.shape[1] * t.f.shape[2]
    return channel_mean([_entropy_bits(_hist(ch), n) for ch in t.f])


def _spatial_frequency(t: Triplet) -> float:
    # VIFB indexes the fused array as 2-D: a colour image is its channels side by side, R | G | B,
    # so the row differences include the two seams between channels; both sums are over m * (n * K)
    k, m, n = t.f.shape
    wide = np.concatenate(list(t.f), axis=1) if k > 1 else t.f[0]
    rf = np.sum(np.diff(wide, axis=1) ** 2) / (m * n * k)
    cf = np.sum(np.diff(wide, axis=0) ** 2) / (m * n * k)
    return float(np.sqrt(rf + cf))


def _variance(t: Triplet) -> float:
    # despite the name: the standard deviation (population), per channel
    return channel_mean([float(np.sqrt(np.sum((ch - ch.mean()) ** 2) / ch.size)) for ch in t.f])


def _kl_bits(src: np.ndarray, fused: np.ndarray, n: int) -> float:
    """``sum P1 log2(P1 / P2)`` over the levels present in both histograms."""
    both = (src > 0) & (fused > 0)
    p1, p2 = src[both] / n, fused[both] / n
    return float(np.sum(p1 * np.log2(p1 / p2)))


def _cross_entropy(t: Triplet) -> float:
    a, b = t.sources("round")
    n = t.f.shape[1] * t.f.shape[2]
    values = []
    for k, ch in enumerate(t.f):
        hf = _hist(ch)
        ce_b = _kl_bits(_hist(b[min(k, b.shape[0] - 1)]), hf, n)
        ce_a = _kl_bits(_hist(a[min(k, a.shape[0] - 1)]), hf, n)
        values.append((ce_b + ce_a) / 2.0)
    return channel_mean(values)


def _levels(x: np.ndarray) -> np.ndarray:
    """``int16((x - min) / (max - min) * 255)``: the 0-255 bin of each pixel after min-max scaling (int64)."""
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros(x.shape, dtype=np.int64)
    values = np.arange(256, dtype=np.float64)  # the inputs are 8-bit: scale the 256 levels, then look up
    lut = round_half_away((values - lo) / (hi - lo) * 255).astype(np.int64)
    return lut[x.astype(np.uint8)]


def _h_nats(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(np.sum(-p * np.log(p)))


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """MI in nats of two 2-D 8-bit images after VIFB's min-max re-quantisation to 256 levels."""
    lx, ly = _levels(x), _levels(y)
    joint = np.bincount((lx * 256 + ly).ravel(), minlength=65536).astype(np.float64)
    hx = _h_nats(np.bincount(lx.ravel(), minlength=256).astype(np.float64))
    hy = _h_nats(np.bincount(ly.ravel(), minlength=256).astype(np.float64))
    return hx + hy - _h_nats(joint)


def _mutinf(t: Triplet) -> float:
    a, b = t.sources("round")
    values = []
    for k, ch in enumerate(t.f):
        values.append(_mutual_information(b[min(k, b.shape[0] - 1)], ch)
                      + _mutual_information(a[min(k, a.shape[0] - 1)], ch))
    return channel_mean(values)


def _root_error(src: np.ndarray, f: np.ndarray) -> np.ndarray:
    """VIFB's ``mse``: ``sqrt(sum((src - f)^2)) / (m n)`` per channel (not a mean squared error)."""
    d = src - f
    return np.sqrt(np.sum(d * d, axis=(1, 2))) / (f.shape[1] * f.shape[2])


def _psnr(t: Triplet) -> float:
    a, b = t.sources("exact")
    mes = (_root_error(b, t.f) + _root_error(a, t.f)) / 2.0
    with np.errstate(divide="ignore"):
        return channel_mean(20 * np.log10(255.0 / np.sqrt(mes)))


def _rmse(t: Triplet) -> float:
    a, b = t.sources("exact")
    return channel_mean((_root_error(b, t.f) + _root_error(a, t.f)) / 2.0)

