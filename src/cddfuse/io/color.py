"""Colour handling: luminance for fusion, and putting colour back afterwards.

CDDFuse fuses single-channel luminance. A colour source (the visible image; a pseudo-colour
PET/SPECT image) is split into BT.601 full-range YCbCr (kornia's ``rgb_to_ycbcr``, the JPEG
convention)::

    Y  = 0.299 R + 0.587 G + 0.114 B
    Cb = 0.5 + 0.564 (B - Y),   Cr = 0.5 + 0.713 (R - Y)          (all in [0, 1])

Its Y is fused with the other source and its Cb/Cr are put back. Because Cb/Cr are kept, the hue
angle ``atan2(Cr - 0.5, Cb - 0.5)`` of every pixel is unchanged wherever the result is not clipped:
medical colour maps survive.

For integer images the luminance is rounded to the source's own grid exactly like the gray
conversion of the authors' scripts (``round(cv2.cvtColor(BGR2GRAY))`` on the 0-255 scale), so
inputs match the paper's protocol bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import kornia
import numpy as np
import torch

from .image import to_float01

__all__ = ["YCbCrImage", "split_luminance", "rgb_to_ycbcr", "ycbcr_to_rgb", "merge_luminance", "luminance"]

_Y_WEIGHTS = (0.299, 0.587, 0.114)


def _to_chw(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` RGB float in [0, 1] -> ``(H, W, 3)`` Y, Cb, Cr float32 in [0, 1] (BT.601 full range)."""
    with torch.inference_mode():
        return kornia.color.rgb_to_ycbcr(_to_chw(rgb)).permute(1, 2, 0).numpy().copy()


def ycbcr_to_rgb(ycbcr: np.ndarray, clip: bool = True) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`; the result is clipped to [0, 1] unless ``clip=False``."""
    with torch.inference_mode():
        out = kornia.color.ycbcr_to_rgb(_to_chw(ycbcr)).permute(1, 2, 0).numpy()
    return np.clip(out, 0.0, 1.0) if clip else out.copy()


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
    cb: Optional[np.ndarray] = None
    cr: Optional[np.ndarray] = None

    @property
    def is_color(self) -> bool:
        return self.cb is not None


def split_luminance(img: np.ndarray) -> YCbCrImage:
    """Split an image (integer, or float in [0, 1]) into luminance (see :func:`luminance`) and,
    for ``(H, W, 3)`` colour images, Cb/Cr."""
    y = luminance(img)
    if img.ndim == 2:
        return YCbCrImage(y)
    ycc = rgb_to_ycbcr(to_float01(img))
    return YCbCrImage(y, ycc[..., 1].copy(), ycc[..., 2].copy())


def merge_luminance(y: np.ndarray, chroma: YCbCrImage) -> np.ndarray:
    """Put the chroma of a colour source back onto a fused luminance ``y``; returns RGB in [0, 1]."""
    if not chroma.is_color:
        raise ValueError("the chroma source is gray")
    return ycbcr_to_rgb(np.stack([y.astype(np.float32), chroma.cb, chroma.cr], axis=-1))
