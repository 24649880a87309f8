"""Reading and writing image files.

Reading accepts what people have: PNG, JPEG, BMP and TIFF; gray, gray+alpha, RGB, RGBA and
palette images; 8- and 16-bit integers (scaled by the dtype's range to [0, 1]) and float TIFF
(taken as [0, 1]). The alpha channel is ignored. Arrays come back as float32 ``(H, W)`` for gray
content or ``(H, W, 3)`` **RGB** for colour content.

Writing is atomic (a temporary file renamed into place), so an interrupted run never leaves a
half-written image behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from .._fileutil import atomic_write_bytes
from ..errors import ImageReadError, UsageError

__all__ = ["read_image", "write_image", "check_output_path", "to_float01", "OUTPUT_EXTENSIONS", "is_gray_content"]

PathLike = Union[str, "os.PathLike[str]"]

#: Extensions :func:`write_image` can write.
OUTPUT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
_SIXTEEN_BIT_OK = (".png", ".tif", ".tiff")


def to_float01(arr: np.ndarray) -> np.ndarray:
    """Scale an integer image by its dtype's maximum (uint8 /255, uint16 /65535) to float32 [0, 1].

    Float input is taken as already in [0, 1] and clipped; bool becomes {0, 1}.
    """
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min < 0:
            arr = np.clip(arr, 0, None)
        return (arr.astype(np.float64) / info.max).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError("image contains NaN or infinite values")
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unsupported image dtype {arr.dtype}")


def is_gray_content(rgb: np.ndarray) -> bool:
    """True when an ``(H, W, 3)`` image has three equal channels (gray content stored as RGB)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def read_image(path: PathLike, *, keep_integer: bool = False) -> np.ndarray:
    """Read an image file as float32 in [0, 1]: ``(H, W)`` gray or ``(H, W, 3)`` RGB.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF; 8/16-bit; gray, RGB, RGBA, palette).
        keep_integer: return the decoded integer array (uint8/uint16) instead of float32.

    RGB files whose three channels are equal are returned as gray ``(H, W)``.

    Raises:
        ImageReadError: the file is missing, a folder, or not a readable image (the message
            says which and names the file).
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: no such file")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder, expected an image file")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file: {e.strerror or e}") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageReadError(
            f"{p}: not a readable image (supported: PNG, JPEG, BMP, TIFF); check the file is complete and an image"
        )
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[..., 0]
        elif img.shape[2] == 2:  # gray + alpha
            img = img[..., 0]
        elif img.shape[2] >= 3:
            img = img[..., 2::-1] if img.shape[2] == 3 else img[..., [2, 1, 0]]  # BGR(A) -> RGB
            img = np.ascontiguousarray(img)
            if is_gray_content(img):
                img = np.ascontiguousarray(img[..., 0])
    elif img.ndim != 2:
        raise ImageReadError(f"{p}: unsupported image layout {img.shape}")
    if keep_integer:
        return img
    try:
        return to_float01(img)
    except ValueError as e:
        raise ImageReadError(f"{p}: {e}") from None


def _quantize(img: np.ndarray, bit_depth: int) -> np.ndarray:
    top = (1 << bit_depth) - 1
    q = np.rint(np.clip(img, 0.0, 1.0) * top)
    return q.astype(np.uint8 if bit_depth == 8 else np.uint16)


def check_output_path(path: PathLike, bit_depth: int = 8) -> Path:
    """``path`` as a :class:`~pathlib.Path` if :func:`write_image` can write that format at ``bit_depth``.

    Checked before any work is done, so a wrong ``-o`` fails at once, not after the fusion.

    Raises:
        UsageError: unsupported extension, or a bit depth the format cannot hold.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise UsageError(f"{p}: cannot write {ext or 'files without extension'}; use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if bit_depth not in (8, 16):
        raise UsageError.invalid("bit_depth", bit_depth, "must be 8 or 16")
    if bit_depth == 16 and ext not in _SIXTEEN_BIT_OK and ext != ".npy":  # .npy keeps float32
        raise UsageError(f"{p}: {ext} cannot hold 16-bit images; use .png or .tif, or an 8-bit depth")
    return p


def write_image(path: PathLike, img: np.ndarray, *, bit_depth: int = 8) -> Path:
    """Write a float image in [0, 1] atomically; the format follows the extension.

    Args:
        path: destination; ``.png .jpg .jpeg .bmp .tif .tiff`` (quantised with rounding to
            ``bit_depth`` bits) or ``.npy`` (float32 as given, no quantisation).
        img: ``(H, W)`` gray or ``(H, W, 3)`` RGB, float in [0, 1] (values outside are clipped).
        bit_depth: 8 or 16 (16 only for PNG and TIFF).

    Raises:
        UsageError: unsupported extension or bit depth for the format.
    """
    p = check_output_path(path, bit_depth)
    ext = p.suffix.lower()
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")
    if ext == ".npy":
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(img, dtype=np.float32))
        return atomic_write_bytes(p, buf.getvalue())
    q = _quantize(img, bit_depth)
    if q.ndim == 3:
        q = np.ascontiguousarray(q[..., ::-1])  # RGB -> BGR for OpenCV
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, enc = cv2.imencode(ext, q, params)
    if not ok:  # pragma: no cover - OpenCV refuses only exotic combinations
        raise UsageError(f"{p}: OpenCV could not encode this image as {ext}")
    return atomic_write_bytes(p, enc.tobytes())
