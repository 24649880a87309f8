"""Q^AB/F: gradient-based fusion quality of Xydeas and Petrovic, as the CDDFuse authors compute it."""
from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ._validate import as_triplet

__all__ = ["qabf"]

TG, KG, DG = 0.9994, -15.0, 0.5
TA, KA, DA = 0.9879, -22.0, 0.8

_F32 = np.float32
# Sobel kernels as the authors write them; convolution = correlation with the kernel rotated 180 degrees
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=_F32)[::-1, ::-1].copy()
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=_F32)[::-1, ::-1].copy()
_HALF_PI = _F32(math.pi / 2)


def _edges(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel edge strength and orientation (float32, 'same' size, zero padding)."""
    sx = cv2.filter2D(img, -1, _SOBEL_X, borderType=cv2.BORDER_CONSTANT)
    sy = cv2.filter2D(img, -1, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
    flat = sx == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        angle = np.divide(sy, sx)
    np.arctan(angle, out=angle)
    np.copyto(angle, _HALF_PI, where=flat)
    np.multiply(sx, sx, out=sx)
    np.multiply(sy, sy, out=sy)
    np.add(sx, sy, out=sx)
    strength = np.sqrt(sx, out=sx)
    return strength, angle


def _preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    """Edge preservation ``Q^XF`` per pixel (float32, the authors' conventions)."""
    # relative strength: the smaller over the larger; where both are equal the authors' code takes
    # the fused strength itself (0 on flat pixels, where the weight is 0 anyway)
    g_rel = np.minimum(g_src, g_f)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_rel /= np.maximum(g_src, g_f)
    np.copyto(g_rel, g_f, where=g_src == g_f)
    # q_g = Tg / (1 + exp(kg (G - Dg)))
    g_rel -= _F32(DG)
    g_rel *= _F32(KG)
    q_g = np.exp(g_rel, out=g_rel)
    q_g += _F32(1)
    np.divide(_F32(TG), q_g, out=q_g)
    # relative orientation A = 1 - |a_src - a_f| / (pi/2); q_a = Ta / (1 + exp(ka (A - Da)))
    a_rel = np.subtract(a_src, a_f)
    np.abs(a_rel, out=a_rel)
    a_rel /= _HALF_PI
    np.subtract(_F32(1), a_rel, out=a_rel)
    a_rel -= _F32(DA)
    a_rel *= _F32(KA)
    q_a = np.exp(a_rel, out=a_rel)
    q_a += _F32(1)
    np.divide(_F32(TA), q_a, out=q_a)
    q_g *= q_a
    return q_g


def _qabf(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    g_a, a_a = _edges(a.astype(_F32))
    g_b, a_b = _edges(b.astype(_F32))
    g_f, a_f = _edges(f.astype(_F32))
    q_af = _preservation(g_a, a_a, g_f, a_f)
    q_bf = _preservation(g_b, a_b, g_f, a_f)
    q_af *= g_a
    q_bf *= g_b
    q_af += q_bf
    num = np.sum(q_af)
    den = np.sum(np.add(g_a, g_b, out=q_bf))
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(num / den)


def qabf(a: Any, b: Any, f: Any) -> float:
    """Qabf - edge information transferred from the sources to the fused image (Q^AB/F).

    Definition: Sobel responses ``Sx``, ``Sy`` of each image ('same' size, zero padding), edge
    strength ``g = sqrt(Sx^2 + Sy^2)`` and orientation ``alpha = arctan(Sy / Sx)`` (``pi/2`` where
    ``Sx = 0``). For source ``X`` and fused ``F``: relative strength ``G = min(gX, gF) / max(gX, gF)``
    (the authors' code takes ``gF`` itself where ``gX == gF``), relative orientation
    ``A = 1 - |alphaX - alphaF| / (pi/2)``, preservation
    ``Q^XF = Tg / (1 + exp(kg (G - Dg))) * Ta / (1 + exp(ka (A - Da)))`` with ``Tg = 0.9994``,
    ``kg = -15``, ``Dg = 0.5``, ``Ta = 0.9879``, ``ka = -22``, ``Da = 0.8``, and

        ``Qabf = sum(Q^AF gA + Q^BF gB) / sum(gA + gB)``.

    Computed in float32 like the authors' code (it reproduces their values to about 1e-7).
    NaN when both sources are flat (no edges at all).

    Range and direction: ``[0, 1)`` (at most ``Tg * Ta ~ 0.987``); higher is better.

    Reference: C. S. Xydeas, V. Petrovic, "Objective image fusion performance measure",
    Electronics Letters 36(4):308-309, 2000.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import qabf
        >>> a = np.zeros((16, 16)); a[:, 8:] = 200.0      # one vertical edge
        >>> b = np.zeros((16, 16)); b[8:, :] = 100.0      # one horizontal edge
        >>> qabf(a, b, a) > qabf(a, b, np.zeros((16, 16)))
        True
    """
    return _qabf(*as_triplet(a, b, f))
