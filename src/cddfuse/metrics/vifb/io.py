"""Reading images as VIFB's MATLAB code sees them (``imread``)."""
from __future__ import annotations

import cv2
import numpy as np

from ...errors import ImageReadError
from ...io.image import decode_file
from ...options import DEFAULT_MAX_PIXELS
from ..io import PathLike

__all__ = ["read_vifb_image"]


def read_vifb_image(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An 8-bit image file as MATLAB's ``imread`` returns it: ``uint8`` ``(H, W)`` or ``(H, W, 3)`` RGB.

    Channels are kept as stored (a gray image saved as RGB stays three channels; an alpha channel is
    dropped) and no EXIF rotation is applied, as ``imread``. JPEG is decoded by libjpeg-turbo
    (OpenCV, default IDCT and chroma upsampling); read this way, VIFB's JPEG files give every
    published metric value of 23 methods to its last digit (``tests/test_vifb.py``).

    Raises:
        ImageReadError: unreadable, too large, or not 8-bit (VIFB's metrics expect 0-255 images).
    """
    img = decode_file(path, cv2.IMREAD_UNCHANGED, max_pixels)
    if img.dtype != np.uint8:
        raise ImageReadError(f"{path}: a {img.dtype} image; the VIFB metrics take 8-bit images (0-255), "
                             "convert it to 8 bits first")
    if img.ndim == 3:
        if img.shape[2] in (1, 2):  # gray, or gray + alpha
            img = img[..., 0]
        else:
            img = img[..., 2::-1]  # BGR(A) -> RGB
    return np.ascontiguousarray(img)
