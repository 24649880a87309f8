"""VIFB's human-perception metrics: Qcb (Chen-Blum) and Qcv (Chen-Varshney), after Z. Liu's MATLAB code.

Both filter the images in the frequency domain on MATLAB's ``freqspace`` grid. The filters are
even in both frequencies, so the filtered images of real inputs are real: MATLAB's ``ifft2`` sees
an exactly conjugate-symmetric spectrum and returns a real array, which ``irfft2`` reproduces.
"""
from __future__ import annotations

import functools
import math
import threading

import cv2
import numpy as np
import scipy.fft as sfft

from ._common import Triplet, channel_mean, freq_radius, normalize255

__all__: list[str] = []  # the public functions are in cddfuse.metrics.vifb

# Qcb (Chen-Blum) constants
_F0, _F1, _A = 15.3870, 1.3456, 0.7622
_P, _Q, _Z = 3, 2, 0.0001
_G_HALF = 15  # the Gaussians of the local contrast are 31 x 31

# Qcv (Chen-Varshney) constants
_WINDOW = 16
_ALPHA = 5  # saliency exponent (written out as g2 * g2 * sqrt(g2) below)


def _filter_freq(stack: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``real(ifft2(fft2(x) .* response))`` for each ``(H, W)`` image of ``stack`` (``response`` even, FFT order)."""
    h, w = stack.shape[1:]
    spec = sfft.rfft2(stack, workers=_fft_workers())
    spec *= response[:, : w // 2 + 1]
    return sfft.irfft2(spec, s=(h, w), workers=_fft_workers())


def _fft_workers() -> int:
    """Threads of one FFT call: 1 inside the metric thread pool (see ``compute_vifb_metrics``), else all."""
    return getattr(_LOCAL, "fft_workers", -1)


_LOCAL = threading.local()


def _gaussian_1d(sigma: float) -> np.ndarray:
    """One factor of Liu's ``gaussian2d``: ``G = exp(-(x^2+y^2) / (2 s^2)) / (2 pi s^2)``, 31 x 31, not normalised."""
    x = np.arange(-_G_HALF, _G_HALF + 1, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / math.sqrt(2 * math.pi * sigma * sigma)


@functools.lru_cache(maxsize=8)
def _contrast_transfer(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Spectra of the two 31 x 31 Gaussians (sigma 2 and 4) on the zero-padded grid ``shape``."""
    out = []
    for sigma in (2.0, 4.0):
        g = _gaussian_1d(sigma)
        kern = np.zeros(shape)
        kern[: g.size, : g.size] = np.outer(g, g)
        out.append(sfft.rfft2(kern))
    return out[0], out[1]


@functools.lru_cache(maxsize=8)
def _qcb_response(shape: tuple[int, int]) -> np.ndarray:
    """Chen-Blum's contrast sensitivity (difference of Gaussians) on the ``freqspace`` grid scaled by size / 30."""
    h, w = shape
    r = freq_radius((h, w), h / 30, w / 30)
    return np.exp(-((r / _F0) ** 2)) - _A * np.exp(-((r / _F1) ** 2))


@functools.lru_cache(maxsize=8)
def _qcv_response(shape: tuple[int, int]) -> np.ndarray:
    """Mannos-Sakrison's contrast sensitivity on the ``freqspace`` grid scaled by size / 8."""
    h, w = shape
    r = freq_radius((h, w), h / 8, w / 8)
    return 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))


def _contrast_power(y: np.ndarray) -> np.ndarray:
    """``C^p / (h C^q + Z)`` with ``C = |filter2(G1, y) / filter2(G2, y) - 1|`` (zero padding, 'same')."""
    h, w = y.shape[1:]
    shape = (sfft.next_fast_len(h + 2 * _G_HALF, real=True), sfft.next_fast_len(w + 2 * _G_HALF, real=True))
    g1, g2 = _contrast_transfer(shape)
    spec = sfft.rfft2(y, s=shape, workers=_fft_workers())  # zero padding to the linear convolution's size
    sl = (slice(None), slice(_G_HALF, _G_HALF + h), slice(_G_HALF, _G_HALF + w))
    buff = sfft.irfft2(spec * g1, s=shape, workers=_fft_workers())[sl]
    spec *= g2
    buff1 = sfft.irfft2(spec, s=shape, workers=_fft_workers())[sl]
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.divide(buff, buff1)
        c -= 1
        np.abs(c, out=c)
        c2 = np.multiply(c, c, out=buff1)  # the filtered images are not needed any more
        c *= c2
        c2 += _Z
        c /= c2
        return c  # C^p / (h C^q + Z) with p = 3, q = 2, h = k = 1


def _normalized(stack: np.ndarray) -> np.ndarray:
    return np.stack([normalize255(ch) for ch in stack])


def _normalized_spectra(t: Triplet) -> tuple[np.ndarray, np.ndarray]:
    """The min-max normalised channels of b, a and f, stacked in that order, and their ``rfft2``.

    With a colour fused image Qcb and Qcv normalise the same channels: computed once per triplet.
    """
    with t.lock:
        if "normalized" not in t.cache:
            stack = _normalized(np.concatenate([t.b, t.a, t.f]))
            t.cache["normalized"] = (stack, sfft.rfft2(stack, workers=_fft_workers()))
        cached: tuple[np.ndarray, np.ndarray] = t.cache["normalized"]
        return cached


def _qcb(t: Triplet) -> float:
    a, b = t.sources("exact")
    ka, kb = a.shape[0], b.shape[0]
    h, w = t.f.shape[1:]
    response = _qcb_response((h, w))
    # every image through the same two filtering steps at once: b's channels, a's, then the fused ones
    if t.color:
        spec = _normalized_spectra(t)[1] * response[:, : w // 2 + 1]
        filtered = sfft.irfft2(spec, s=(h, w), workers=_fft_workers())
    else:  # colour sources reduced to gray without rounding (VIFB has no value here; see the docs)
        filtered = _filter_freq(_normalized(np.concatenate([b, a, t.f])), response)
    power = _contrast_power(filtered)
    cb, ca, cf = power[:kb], power[kb:kb + ka], power[kb + ka:]
    values = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(t.f.shape[0]):
            c1, c2, c_f = cb[min(k, kb - 1)], ca[min(k, ka - 1)], cf[k]
            if not (c1.all() and c2.all() and c_f.all()):
                # MATLAB's masked sum (C1P./CfP).*mask + (CfP./C1P).*(1-mask) is 0 * Inf = NaN where a
                # contrast is exactly 0, and the mean with it
                values.append(math.nan)
                continue
            q1 = np.minimum(c1, c_f) / np.maximum(c1, c_f)  # preservation: the smaller over the larger
            q2 = np.minimum(c2, c_f) / np.maximum(c2, c_f)
            s1, s2 = c1 * c1, c2 * c2  # saliency weights s1 / (s1 + s2), s2 / (s1 + s2)
            q1 *= s1
            q2 *= s2
            q1 += q2
            s1 += s2
            q1 /= s1
            values.append(float(q1.mean()))
    return channel_mean(values)


_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = _SOBEL_X.T.copy()


def _block_sums(x: np.ndarray) -> np.ndarray:
    """Sums over ``16 x 16`` blocks of each ``(H, W)`` image; partial edge blocks zero-padded (``blkproc``)."""
    k, h, w = x.shape
    hb, wb = -(-h // _WINDOW), -(-w // _WINDOW)
    padded = np.zeros((k, hb * _WINDOW, wb * _WINDOW))
    padded[:, :h, :w] = x
    return padded.reshape(k, hb, _WINDOW, wb, _WINDOW).sum(axis=(2, 4))


def _saliency(stack: np.ndarray) -> np.ndarray:
    """Per block, the sum of the Sobel gradient magnitude to the power 5 (``filter2``, zero padding)."""
    out = np.empty_like(stack)
    for i, ch in enumerate(stack):
        gx = cv2.filter2D(ch, cv2.CV_64F, _SOBEL_X, borderType=cv2.BORDER_CONSTANT)
        gy = cv2.filter2D(ch, cv2.CV_64F, _SOBEL_Y, borderType=cv2.BORDER_CONSTANT)
        g2 = gx * gx + gy * gy
        out[i] = g2 * g2 * np.sqrt(g2)  # |grad| ** 5
    return _block_sums(out)


def _qcv(t: Triplet) -> float:
    a, b = t.sources("round")
    h, w = t.f.shape[1:]
    theta = _qcv_response((h, w))
    if t.color:  # the differences' spectra from the normalised channels' (the transform is linear)
        stack, spec = _normalized_spectra(t)
        kb, ka = b.shape[0], a.shape[0]
        nb, na = stack[:kb], stack[kb:kb + ka]
        sb, sa, sf = spec[:kb], spec[kb:kb + ka], spec[kb + ka:]
        diff = np.concatenate([sb - sf, sa - sf])
        diff *= theta[:, : w // 2 + 1]
        filtered = sfft.irfft2(diff, s=(h, w), workers=_fft_workers())
    else:
        na, nb, nf = _normalized(a), _normalized(b), _normalized(t.f)
        filtered = _filter_freq(np.concatenate([nb - nf, na - nf]), theta)
    lam_b, lam_a = _saliency(nb), _saliency(na)
    dist = _block_sums(filtered * filtered) / (_WINDOW * _WINDOW)
    db, da = dist[: t.f.shape[0]], dist[t.f.shape[0]:]
    values = []
    for k in range(t.f.shape[0]):
        l1, l2 = lam_b[min(k, len(lam_b) - 1)], lam_a[min(k, len(lam_a) - 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            values.append(float(np.sum(l1 * db[k] + l2 * da[k]) / np.sum(l1 + l2)))
    return channel_mean(values)
