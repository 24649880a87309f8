"""Reading images and saving fused images exactly as the CDDFuse authors' scripts do."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .._fileutil import PathLike
from ..io.image import decode_file
from ..options import DEFAULT_MAX_PIXELS
from ._validate import MetricInputError

__all__ = ["read_gray", "rgb_to_gray", "quantize_like_authors", "PathLike"]


def rgb_to_gray(rgb: Any, order: str = "RGB") -> np.ndarray:
    """Gray values of a colour image with the authors' conversion: ``round(0.299 R + 0.587 G + 0.114 B)``.

    The weighted sum is OpenCV's ``COLOR_BGR2GRAY`` on float32 (as in their ``image_read_cv2``),
    rounded half to even. Input is 0-255 ``(H, W, 3)`` (``order="RGB"`` or ``"BGR"``) or already
    2-D (only rounded). Returns float32 ``(H, W)``.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import rgb_to_gray
        >>> rgb_to_gray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8))
        array([[ 76., 150.,  29.]], dtype=float32)
    """
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        return np.round(arr.astype(np.float32))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise MetricInputError(f"expected an (H, W, 3) colour or (H, W) gray image, got shape {arr.shape}")
    if order not in ("RGB", "BGR"):
        raise MetricInputError(f"order must be 'RGB' or 'BGR', got {order!r}")
    img = np.ascontiguousarray(arr[..., :3], dtype=np.float32)
    code = cv2.COLOR_RGB2GRAY if order == "RGB" else cv2.COLOR_BGR2GRAY
    return np.round(cv2.cvtColor(img, code))


def read_gray(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file the way the CDDFuse evaluation does: float32 ``(H, W)`` on 0-255.

    ``cv2.imread`` in colour mode (gray files become three equal channels, an alpha channel is
    dropped, 16-bit files are reduced to 8 bits), converted to float32, ``COLOR_BGR2GRAY``
    (``0.299 R + 0.587 G + 0.114 B``) and rounded: their ``image_read_cv2(path, 'GRAY')``.

    The header is read first (:func:`cddfuse.io.image.probe_image`): only regular files, and no image
    above ``max_pixels`` is decoded.

    Raises:
        ImageReadError: the file is missing, not a regular file, too large, or not an image OpenCV can decode.
    """
    bgr = decode_file(path, cv2.IMREAD_COLOR, max_pixels)
    return np.round(cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2GRAY))


def quantize_like_authors(fused01: Any) -> np.ndarray:
    """8-bit fused image as the authors' test scripts write it (min-max normalised input expected).

    They save ``fused * 255`` (float32) with scikit-image's ``imsave``, whose imageio backend maps a
    float image to ``uint8`` by ``floor((x - min) / (max - min) * 255 + 0.499999999)``: rounding to
    nearest with exact halves rounded down. A constant image gives zeros.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import quantize_like_authors
        >>> quantize_like_authors(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
        array([[  0, 127, 255]], dtype=uint8)
    """
    x = np.asarray(fused01, dtype=np.float32) * np.float32(255)
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise MetricInputError("the fused image contains NaN or infinite values")
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    y = (x - lo) / (hi - lo) * 255.0 + 0.499999999
    return np.floor(y).astype(np.uint8)
