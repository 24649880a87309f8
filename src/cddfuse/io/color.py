"""Colour handling: luminance for fusion, and putting colour back afterwards.

CDDFuse fuses single-channel luminance. A colour source (the visible image; a pseudo-colour
PET/SPECT image) is split into BT.601 full-range YCbCr (kornia's ``rgb_to_ycbcr``, the JPEG
convention)::

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cb = 0.5 + 0.564 (B - Y),   Cr = 0.5 + 0.713 (R - Y)          (all in [0, 1])

Its Y is fused with the other source and its colour is put back (:func:`merge_luminance`), in
one of two ways:

* ``"ycbcr"`` (the authors' scripts): Cb/Cr put back unchanged. The hue angle
  ``atan2(Cr - 0.5, Cb - 0.5)`` survives wherever the result is not clipped, but the colour's
  strength does not follow the luminance: where fusion brightens a dark pixel a lot (night scenes
  lit by the infrared image), the same Cb/Cr on a much larger Y look washed out, and channels
  clipped at 1 turn hues yellowish.
* ``"saturation"`` (default): the chroma offsets ``(Cb - 0.5, Cr - 0.5)`` are scaled by
  ``Y_fused / Y_source`` (at most :data:`MAX_CHROMA_GAIN`), which is exactly what scaling the
  source's RGB by that factor does -- hue and saturation are kept -- and a pixel that would leave
  the RGB cube is desaturated toward gray at its luminance instead of being clipped channel by
  channel (its fused luminance stays exact and its hue unchanged).

For integer images the luminance is rounded to the source's own grid exactly like the gray
conversion of the authors' scripts (``round(cv2.cvtColor(BGR2GRAY))`` on the 0-255 scale), so
inputs match the paper's protocol bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .image import to_float01

__all__ = ["YCbCrImage", "split_luminance", "rgb_to_ycbcr", "ycbcr_to_rgb", "merge_luminance", "luminance",
           "MAX_CHROMA_GAIN"]

_Y_WEIGHTS = (0.299, 0.587, 0.114)

#: Colour images are split and merged in bands of about this many pixels, so that the temporaries of the
#: per-pixel arithmetic (float64 and float32 copies of every channel) stay small for large images; the
#: result is the same (every operation is per pixel).
BAND_PIXELS = 1 << 20

#: ``"saturation"`` chroma: the largest factor by which a pixel's chroma is amplified. The chroma of a
#: nearly black pixel is mostly sensor and JPEG noise; amplified without bound it would become
#: coloured speckle where the infrared image lights up a dark area.
MAX_CHROMA_GAIN = 4.0


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB float in [0, 1] -> ``(H, W, 3)`` Y, Cb, Cr float32 in [0, 1] (BT.601 full range).

    kornia's ``rgb_to_ycbcr``, operation for operation in float32 numpy (the same values; numpy, unlike a
    multi-threaded torch op, does not stall when the machine's cores are busy with other work).
    """
    f = np.asarray(rgb, dtype=np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    out = np.empty(f.shape[:-1] + (3,), np.float32)
    y = out[..., 0]
    np.add(np.float32(_Y_WEIGHTS[0]) * r + np.float32(_Y_WEIGHTS[1]) * g, np.float32(_Y_WEIGHTS[2]) * b, out=y)
    out[..., 1] = (b - y) * np.float32(0.564) + np.float32(0.5)
    out[..., 2] = (r - y) * np.float32(0.713) + np.float32(0.5)
    return out


def ycbcr_to_rgb(ycbcr: np.ndarray, clip: bool = True) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`; the result is clipped to [0, 1] unless ``clip=False``.

    kornia's inverse always clamps, so the unclipped one (needed to move out-of-gamut colours toward
    gray instead of clipping them) is its linear part, written out: the exact inverse of kornia's
    forward coefficients.
    """
    if clip:  # kornia's ycbcr_to_rgb, operation for operation in float32 numpy
        f = np.asarray(ycbcr, dtype=np.float32)
        y, cb_shifted, cr_shifted = f[..., 0], f[..., 1] - np.float32(0.5), f[..., 2] - np.float32(0.5)
        out = np.empty(f.shape, np.float32)
        out[..., 0] = y + np.float32(1.4025245442) * cr_shifted
        out[..., 1] = y - np.float32(0.7144034731) * cr_shifted - np.float32(0.3443401356) * cb_shifted
        out[..., 2] = y + np.float32(1.7730496454) * cb_shifted
        return np.clip(out, 0.0, 1.0, out=out)
    return _unclipped_rgb(ycbcr[..., 0], ycbcr[..., 1], ycbcr[..., 2])


def _unclipped_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """The linear inverse of :func:`rgb_to_ycbcr` on three ``(H, W)`` planes -> ``(H, W, 3)`` float32 RGB,
    unclipped (written into one array: no stacked copy)."""
    y = y.astype(np.float32, copy=False) - np.float32(0.0)  # the same float32 arithmetic as plane by plane
    cb = cb.astype(np.float32, copy=False) - np.float32(0.5)
    cr = cr.astype(np.float32, copy=False) - np.float32(0.5)
    r_off, b_off = cr / np.float32(0.713), cb / np.float32(0.564)  # R - Y, B - Y
    g_off = -(np.float32(_Y_WEIGHTS[0]) * r_off + np.float32(_Y_WEIGHTS[2]) * b_off) / np.float32(_Y_WEIGHTS[1])
    rgb = np.empty((*y.shape, 3), np.float32)
    np.add(y, r_off, out=rgb[..., 0])
    np.add(y, g_off, out=rgb[..., 1])
    np.add(y, b_off, out=rgb[..., 2])
    return rgb


def luminance(img: np.ndarray) -> np.ndarray:
    """Luminance ``0.299 R + 0.587 G + 0.114 B`` as float32 ``(H, W)`` in [0, 1].

    Args:
        img: ``(H, W)`` or ``(H, W, 3)`` RGB. Integer images (uint8, uint16) are converted exactly
            like the authors' ``cv2`` gray read, ``round(cvtColor(BGR2GRAY))`` on the integer scale,
            then divided by the dtype's maximum; float images (in [0, 1]) are not rounded.
    """
    if np.issubdtype(img.dtype, np.integer):
        top = float(np.iinfo(img.dtype).max)
        if img.ndim == 2:
            return (img.astype(np.float64) / top).astype(np.float32)
        bgr = np.ascontiguousarray(img[..., ::-1], dtype=np.float32)
        y = np.round(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        return (y.astype(np.float64) / top).astype(np.float32)
    if img.ndim == 2:
        return np.clip(img, 0.0, 1.0).astype(np.float32)
    f = img.astype(np.float64)
    y = f[..., 0] * _Y_WEIGHTS[0] + f[..., 1] * _Y_WEIGHTS[1] + f[..., 2] * _Y_WEIGHTS[2]
    return np.clip(y, 0.0, 1.0).astype(np.float32)


@dataclass
class YCbCrImage:
    """A source split for fusion: luminance ``y`` ``(H, W)`` and, for colour sources, ``cb``/``cr``."""

    y: np.ndarray
    cb: np.ndarray | None = None
    cr: np.ndarray | None = None

    @property
    def is_color(self) -> bool:
        return self.cb is not None


def _bands(h: int, w: int) -> range:
    """Start rows of the bands of :data:`BAND_PIXELS` pixels an ``h x w`` image is processed in."""
    return range(0, h, max(1, BAND_PIXELS // max(w, 1)))


def split_luminance(img: np.ndarray) -> YCbCrImage:
    """Split an image (integer, or float in [0, 1]) into luminance (see :func:`luminance`) and,
    for ``(H, W, 3)`` colour images, Cb/Cr (in bands of rows: the same values, less memory)."""
    if img.ndim == 2:
        return YCbCrImage(luminance(img))
    h, w = img.shape[:2]
    y, cb, cr = (np.empty((h, w), np.float32) for _ in range(3))
    rows = max(1, BAND_PIXELS // max(w, 1))
    for r in _bands(h, w):
        band = img[r:r + rows]
        y[r:r + rows] = luminance(band)
        ycc = rgb_to_ycbcr(to_float01(band))
        cb[r:r + rows], cr[r:r + rows] = ycc[..., 1], ycc[..., 2]
    return YCbCrImage(y, cb, cr)


def merge_luminance(y: np.ndarray, chroma: YCbCrImage, mode: str = "saturation") -> np.ndarray:
    """Put the colour of a source back onto a fused luminance ``y``; returns RGB float32 in [0, 1].

    Args:
        y: fused luminance ``(H, W)`` in [0, 1].
        chroma: the colour source, split by :func:`split_luminance`.
        mode: ``"saturation"`` (keep hue and saturation; see the module docstring) or ``"ycbcr"``
            (the authors': Cb/Cr unchanged, then clipped).

    Example:
        >>> src = split_luminance(np.array([[[0.2, 0.1, 0.05]]], dtype=np.float32))  # a dark orange
        >>> out = merge_luminance(np.array([[0.4]], np.float32), src)                 # fused twice as bright
        >>> np.round(out / out.max(), 3)                                              # same colour, brighter
        array([[[1.  , 0.5 , 0.25]]], dtype=float32)
    """
    if not chroma.is_color:
        raise ValueError("the chroma source is gray")
    assert chroma.cb is not None and chroma.cr is not None
    if mode not in ("ycbcr", "saturation"):
        raise ValueError(f"unknown chroma mode {mode!r}; choose saturation or ycbcr")
    h, w = y.shape
    if h * w > BAND_PIXELS:  # in bands of rows: the same values, less memory
        out = np.empty((h, w, 3), np.float32)
        rows = max(1, BAND_PIXELS // max(w, 1))
        for r in _bands(h, w):
            part = YCbCrImage(chroma.y[r:r + rows], chroma.cb[r:r + rows], chroma.cr[r:r + rows])
            out[r:r + rows] = _merge(y[r:r + rows], part, mode)
        return out
    return _merge(y, chroma, mode)


def _merge(y: np.ndarray, chroma: YCbCrImage, mode: str) -> np.ndarray:
    """:func:`merge_luminance` on one band."""
    assert chroma.cb is not None and chroma.cr is not None
    y = y.astype(np.float32)
    if mode == "ycbcr":
        return ycbcr_to_rgb(np.stack([y, chroma.cb, chroma.cr], axis=-1))
    if mode != "saturation":
        raise ValueError(f"unknown chroma mode {mode!r}; choose saturation or ycbcr")
    gain = np.minimum(y / np.maximum(chroma.y, np.float32(1e-6)), np.float32(MAX_CHROMA_GAIN))
    cb = (chroma.cb - np.float32(0.5)) * gain + np.float32(0.5)
    cr = (chroma.cr - np.float32(0.5)) * gain + np.float32(0.5)
    return _desaturate_into_gamut(_unclipped_rgb(y, cb, cr), y)


def _desaturate_into_gamut(rgb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Move out-of-range pixels toward gray ``y`` (same luminance, same hue) until they fit in [0, 1].

    A pixel inside the cube keeps ``y + (rgb - y)``; only the pixels outside it (usually few) get the factor
    ``t`` of the largest step toward their colour that stays inside, ``y + (rgb - y) * t``.
    """
    offset = rgb - y[..., None]
    out = y[..., None] + offset  # t = 1: what every pixel inside the cube gets (offset * 1 is exact)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    outside = np.flatnonzero((np.minimum(np.minimum(r, g), b) < 0) | (np.maximum(np.maximum(r, g), b) > 1))
    if outside.size:
        flat_off, flat_y = offset.reshape(-1, 3)[outside], y.reshape(-1)[outside][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(flat_off > 0, (1.0 - flat_y) / flat_off,
                            np.where(flat_off < 0, flat_y / -flat_off, np.inf))
        t = np.clip(room.min(axis=-1), 0.0, 1.0)
        out.reshape(-1, 3)[outside] = flat_y + flat_off * t[:, None]
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)
