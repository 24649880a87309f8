"""VIFB's Qabf (Xydeas-Petrovic edge preservation) and Ssim (sum over the two sources), per channel."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ._common import Triplet, channel_mean

__all__: list[str] = []  # the public functions are in cddfuse.metrics.vifb

TG, KG, DG = 0.9994, -15.0, 0.5
TA, KA, DA = 0.9879, -22.0, 0.8
# conv2 with h3 = [-1 0 1; -2 0 2; -1 0 1] and h1 = [1 2 1; 0 0 0; -1 -2 -1]: correlation with them rotated
_H3 = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[::-1, ::-1].copy()
_H1 = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])[::-1, ::-1].copy()


def _edges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel strength and orientation of a 2-D image: ``conv2(.., 'same')`` (zero padding), on 255 x the values.

    VIFB scales the already-double image by 255 again (``255 * im2double(double(x))``); it only
    matters where a source and the fused strength are equal (see :func:`_preservation`).
    """
    p = 255.0 * x
    sx = cv2.filter2D(p, cv2.CV_64F, _H3, borderType=cv2.BORDER_CONSTANT)
    sy = cv2.filter2D(p, cv2.CV_64F, _H1, borderType=cv2.BORDER_CONSTANT)
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.where(sx == 0, math.pi / 2, np.arctan(sy / sx))
    return np.sqrt(sx * sx + sy * sy), angle


def _preservation(g_s: np.ndarray, a_s: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """``Q^SF`` per pixel. The relative strength is the smaller over the larger, and where the two are
    equal VIFB takes the fused strength itself (not 1)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q_g = np.minimum(g_s, g_f)
        q_g /= np.maximum(g_s, g_f)  # g_f / g_s where g_s > g_f, g_s / g_f where g_s < g_f
        np.copyto(q_g, g_f, where=g_s == g_f)
        q_g -= DG
        q_g *= KG
        np.exp(q_g, out=q_g)
        q_g += 1
        np.divide(TG, q_g, out=q_g)
        # orientation: A = 1 - |a_s - a_f| / (pi / 2); Qa = Ta / (1 + exp(ka (A - Da)))
        q_a = np.subtract(a_s, a_f)
        np.abs(q_a, out=q_a)
        q_a /= math.pi / 2
        np.subtract(1, q_a, out=q_a)
        q_a -= DA
        q_a *= KA
        np.exp(q_a, out=q_a)
        q_a += 1
        np.divide(TA, q_a, out=q_a)
    q_g *= q_a
    return q_g


def _qabf(t: Triplet) -> float:
    a, b = t.sources("exact")
    edges_a = [_edges(ch) for ch in a]
    edges_b = [_edges(ch) for ch in b]
    values = []
    for k, ch in enumerate(t.f):
        g_f, a_f = _edges(ch)
        g_a, a_a = edges_a[min(k, len(edges_a) - 1)]
        g_b, a_b = edges_b[min(k, len(edges_b) - 1)]
        q = _preservation(g_a, a_a, g_f, a_f)
        q *= g_a
        q_b = _preservation(g_b, a_b, g_f, a_f)
        q_b *= g_b
        q += q_b
        num = np.sum(q)
        np.add(g_a, g_b, out=q_b)
        den = np.sum(q_b)
        with np.errstate(divide="ignore", invalid="ignore"):
            values.append(num / den)
    return channel_mean(values)


def _gauss_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """``fspecial('gaussian', size, sigma)`` as a 1-D factor: the 2-D window is ``outer(g, g)``."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


_WIN = _gauss_window()
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """``filter2(w, x, 'valid')`` with the 11x11 Gaussian window (separable)."""
    full = cv2.sepFilter2D(x, cv2.CV_64F, _WIN, _WIN, borderType=cv2.BORDER_CONSTANT)
    r = _WIN.size // 2
    return full[r:-r, r:-r]


def _ssim_pair(x: np.ndarray, f: np.ndarray, mu_f: np.ndarray, ff: np.ndarray) -> float:
    """Mean SSIM of two 2-D images, Wang et al.'s Gaussian version on the 'valid' part, L = 255."""
    mu_x = _filter_valid(x)
    xx = _filter_valid(x * x) - mu_x * mu_x
    xf = _filter_valid(x * f) - mu_x * mu_f
    yy = ff - mu_f * mu_f
    m = ((2 * mu_x * mu_f + _C1) * (2 * xf + _C2)) / ((mu_x * mu_x + mu_f * mu_f + _C1) * (xx + yy + _C2))
    return float(m.mean())


def _ssim(t: Triplet) -> float:
    a, b = t.sources("round")
    values = []
    for k, ch in enumerate(t.f):
        mu_f, ff = _filter_valid(ch), _filter_valid(ch * ch)
        values.append(_ssim_pair(b[min(k, b.shape[0] - 1)], ch, mu_f, ff)
                      + _ssim_pair(a[min(k, a.shape[0] - 1)], ch, mu_f, ff))
    return channel_mean(values)
