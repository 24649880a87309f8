"""Reading and writing image files.

Reading accepts what people have: PNG, JPEG, BMP and TIFF; gray, gray+alpha, RGB, RGBA and
palette images; 8- and 16-bit integers (scaled by the dtype's range to [0, 1]) and float TIFF
(taken as [0, 1]). The alpha channel is ignored. Arrays come back as float32 ``(H, W)`` for gray
content or ``(H, W, 3)`` **RGB** for colour content.

Reading is defensive: only regular files are opened (a FIFO would block forever), the header is
read first (:func:`probe_image`) and images above a pixel limit are refused before anything is
decoded (a 900-megapixel PNG can be an 854 KB file), float pixels must be finite and in [0, 1],
and an EXIF orientation (JPEG, PNG, TIFF, WebP) is applied -- everywhere, as OpenCV's ``imread`` (the
authors' reader, used by the metrics) does.

Writing is atomic (a temporary file renamed into place), so an interrupted run never leaves a
half-written image behind, and refuses a non-finite image.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .._fileutil import PathLike, atomic_write_bytes
from ..errors import CDDFuseError, ImageReadError, InputTooLarge, UsageError
from ..options import DEFAULT_MAX_PIXELS

__all__ = ["read_image", "write_image", "probe_image", "decode_file", "ImageHeader", "check_output_path",
           "check_extension", "to_float01", "OUTPUT_EXTENSIONS", "DEFAULT_MAX_PIXELS", "ImageWriteError",
           "is_gray_content", "check_array"]



# OpenCV prints warnings of its own ("[ WARN:0@...] PNG input buffer is incomplete") before our
# error; our messages say the same in words.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR  # keeps 8/16-bit/float and colour; applies EXIF rotation


class ImageWriteError(CDDFuseError):
    """An image could not be written (permissions, full disk...). ``errno`` tells which."""

    def __init__(self, message: str, errno_value: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_value

    @property
    def disk_full(self) -> bool:
        """True for errors that will hit every further write too (full disk, quota, read-only file system)."""
        return self.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, before anything is decoded (width and height as displayed,
    i.e. after the EXIF orientation)."""

    width: int
    height: int
    format: str

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def _regular_file(path: PathLike) -> Path:
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise ImageReadError(f"{p}: no such file") from None
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file: {e.strerror or e}") from None
    if stat.S_ISDIR(mode):
        raise ImageReadError(f"{p}: is a folder, expected an image file")
    if not stat.S_ISREG(mode):
        raise ImageReadError(f"{p}: not a regular file (a pipe, socket or device); give an image file")
    return p


def probe_image(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Read only the header of an image file: its size (as displayed, after the EXIF orientation) and format.

    Every file the readers decode has its size read here first: by Pillow for the formats of
    :data:`HEADER_FORMATS`, by :mod:`cddfuse.io.headers` for those Pillow cannot parse (Radiance HDR,
    colour PFM, PAM, float RGB(A) TIFF). A file whose size cannot be read this way is refused, never
    decoded to find out.

    Args:
        path: an image file.
        max_pixels: refuse images with more pixels (``None``: no limit).

    Returns:
        the header.

    Raises:
        ImageReadError: not a regular file, not an image whose size can be read, an image format the
            readers do not decode safely (GIF, AVIF...) or an empty image.
        InputTooLarge: more pixels than ``max_pixels`` (an :class:`ImageReadError` too).

    Example:
        >>> import tempfile, numpy as np
        >>> path = write_image(tempfile.mkdtemp() + "/x.png", np.zeros((3, 5)))
        >>> probe_image(path)
        ImageHeader(width=5, height=3, format='PNG')
        >>> probe_image(path, max_pixels=10)
        Traceback (most recent call last):
        ...
        cddfuse.errors.InputTooLarge: ...x.png: 5x3 pixels is more than the limit of 10; ...
    """
    p = _regular_file(path)
    header = _pillow_header(p, max_pixels)
    if header is None:
        header = _own_header(p)
    elif header.format not in HEADER_FORMATS:
        raise ImageReadError(f"{p}: {header.format} images are not read (supported: {_SUPPORTED}); convert it to "
                             "PNG or TIFF")
    _check_pixels(p, header.width, header.height, max_pixels)
    return header


#: Formats whose size Pillow reads from the header exactly as OpenCV's decoder then allocates it.
HEADER_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "WEBP", "PPM", "SUN", "JPEG2000")
_SUPPORTED = "PNG, JPEG, BMP, TIFF, WebP, PNM/PFM/PAM, Sun raster, JPEG 2000, Radiance HDR"


def _own_header(p: Path) -> ImageHeader:
    """The size of a file whose header Pillow does not parse (:mod:`cddfuse.io.headers`), or an error."""
    from .headers import MAX_HEADER, header_size

    try:
        with open(p, "rb") as f:
            head = f.read(MAX_HEADER)

            def read_at(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(min(n, MAX_HEADER))

            found = header_size(head, read_at)
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file: {e.strerror or e}") from None
    if found is None:
        raise ImageReadError(_NOT_AN_IMAGE.format(p))
    fmt, (width, height) = found
    return ImageHeader(width, height, fmt)


def _pillow_header(p: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageHeader | None:
    from PIL import Image, UnidentifiedImageError

    try:
        # Pillow refuses (or warns about) large images by a process-wide limit; ours is max_pixels. The
        # limit and the warning filters are set and restored under a lock: folder mode probes from
        # two reader threads, and interleaved restores would leave them changed for the whole process.
        with _PILLOW_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow on damaged metadata, and its bomb warning: we decide
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(p) as im:
                    width, height, fmt = im.size[0], im.size[1], str(im.format)
                    # before the orientation: Pillow reads a PNG's EXIF by loading the whole image (a
                    # 100000x100000 header allocated 10 GB there); the pixel count does not depend on it
                    _check_pixels(p, width, height, max_pixels)
                    orientation = _orientation(im)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        return None
    except OSError as e:
        if e.errno is not None:
            raise ImageReadError(f"{p}: cannot read file: {e.strerror or e}") from None
        return None  # a header Pillow cannot parse: OpenCV decides
    except (ValueError, SyntaxError, TypeError, IndexError, KeyError):
        return None
    if orientation in (5, 6, 7, 8):  # displayed rotated by 90 degrees
        width, height = height, width
    return ImageHeader(width, height, fmt)


def decode_file(path: PathLike, flags: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file with OpenCV (``cv2.imdecode`` flags), defensively: header first
    (:func:`probe_image`), and the pixel limit checked again after decoding for formats whose header
    only OpenCV reads. Shared by :func:`read_image` and the metrics' authors'-protocol reader.

    Raises:
        ImageReadError: see :func:`read_image`.
    """
    p = Path(path)
    header = probe_image(p, max_pixels)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)  # also works for non-ASCII paths on Windows
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read file: {e.strerror or e}") from None
    img = _decode(data, flags)
    if img is None and header.format == "TIFF" and flags == _DECODE_FLAGS:
        img = _decode(data, cv2.IMREAD_UNCHANGED)  # float RGBA TIFF: OpenCV decodes it only unchanged
    if img is None:
        raise ImageReadError(_NOT_AN_IMAGE.format(p))
    _check_pixels(p, img.shape[1], img.shape[0], max_pixels)
    return img


def _decode(data: np.ndarray, flags: int) -> np.ndarray | None:
    """``cv2.imdecode``, with what the codec libraries print on the process's stderr (libpng's "IDAT: CRC
    error", libjpeg's "Corrupt JPEG data") held back: our own message says it in one line."""
    if not data.size:
        return None
    with quiet_native_stderr():
        try:
            return cv2.imdecode(data, flags)
        except cv2.error:
            return None


#: Lines the image codec libraries write to file descriptor 2 themselves.
_CODEC_LINE = re.compile(r"^(libpng (error|warning)|Corrupt JPEG data|Premature end of JPEG file|Invalid SOS|"
                         r"Unsupported marker|JPEG datastream|TIFF|\[ ?(ERROR|WARN|INFO):|"
                         r"[A-Za-z][A-Z][A-Z][A-Za-z]: )")  # the last: a PNG chunk's name (IDAT, tEXt)
_STDERR_LOCK = threading.Lock()
_capture: dict[str, Any] = {"depth": 0, "saved": -1, "file": None}


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Capture file descriptor 2 (where C libraries print) while any thread decodes; when the last one is
    done, pass on what others wrote meanwhile (a progress bar) and drop the codec libraries' own lines.
    Threads decode at the same time: the redirection is counted, not serialised."""
    with _STDERR_LOCK:
        if _capture["depth"] == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no file descriptor 2 (embedded interpreters)
                saved = -1
            if saved >= 0:
                f = tempfile.TemporaryFile()
                os.dup2(f.fileno(), 2)
                _capture.update(saved=saved, file=f)
        _capture["depth"] += 1
    try:
        yield
    finally:
        with _STDERR_LOCK:
            _capture["depth"] -= 1
            if _capture["depth"] == 0 and _capture["file"] is not None:
                _release_capture()


def _release_capture() -> None:
    f, saved = _capture["file"], _capture["saved"]
    _capture.update(saved=-1, file=None)
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    with f:
        f.seek(0)
        text = f.read(1 << 16).decode("utf-8", "replace")
    kept = "".join(line for line in text.splitlines(keepends=True) if not _CODEC_LINE.match(line.lstrip("\r")))
    if kept:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(kept)
            sys.stderr.flush()


def _orientation(im: Any) -> int:
    """The EXIF orientation (1-8) that OpenCV applies, for every format that carries one; 1 when the file
    has none or a damaged one (the decoder then has the last word)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on damaged metadata
        return 1


def _check_pixels(p: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        text = f"{p}: {width}x{height} pixels is more than the limit of {max_pixels}; if the image is genuine, raise "
        raise InputTooLarge(text + "max_pixels", width=width, height=height, limit=max_pixels, path=str(p),
                            cli=text + "it with --max-pixels")
    if width * height == 0:
        raise ImageReadError(f"{p}: the image is empty ({width}x{height})")


_PILLOW_LOCK = threading.Lock()
_NOT_AN_IMAGE = ("{}: not a readable image (supported: PNG, JPEG, BMP, TIFF, WebP, PNM/PFM/PAM, Sun raster, JPEG 2000, "
                 "Radiance HDR); check the file is complete and an image")

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


def check_array(arr: np.ndarray, name: str) -> np.ndarray:
    """The one rule for image arrays given from Python (fusion, alignment): ``(H, W)``, ``(H, W, 1)``,
    ``(H, W, 3)`` or ``(H, W, 4)`` (alpha dropped); uint8, uint16, or float holding values in [0, 1]
    (float32 out). Floats outside [0, 1], NaN or infinity are refused, never clipped: an image scaled
    0..255 as float is a mistake to report, not to saturate.

    Returns ``(H, W)`` or ``(H, W, 3)``. Raises :class:`~cddfuse.errors.UsageError` naming ``name``.

    Example:
        >>> check_array(np.zeros((2, 3, 4), np.uint8), "a").shape
        (2, 3, 3)
        >>> check_array(np.full((2, 2), 255.0), "a")
        Traceback (most recent call last):
        ...
        cddfuse.errors.UsageError: a: float images must be in [0, 1] (got 255..255); divide by 255
    """
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise UsageError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UsageError(f"{name}: empty image (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"{name}: the array contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise UsageError(f"{name}: float images must be in [0, 1] (got {arr.min():.3g}..{arr.max():.3g}); "
                             "divide by 255")
        return arr.astype(np.float32)
    if arr.dtype not in (np.uint8, np.uint16):
        raise UsageError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    return arr


def is_gray_content(rgb: np.ndarray) -> bool:
    """True when an ``(H, W, 3)`` image has three equal channels (gray content stored as RGB)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def read_image(path: PathLike, *, keep_integer: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as float32 in [0, 1]: ``(H, W)`` gray or ``(H, W, 3)`` RGB.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF; 8/16-bit; gray, RGB, RGBA, palette).
        keep_integer: return the decoded integer array (uint8/uint16) instead of float32 (float
            files come back as float32 either way).
        max_pixels: refuse larger images, from the header, before decoding (``None``: no limit).

    RGB files whose three channels are equal are returned as gray ``(H, W)``.

    Raises:
        ImageReadError: the file is missing, a folder, not a regular file, not a readable image,
            larger than ``max_pixels``, or holds float pixels that are not finite or not in [0, 1]
            (the message says which and names the file).
    """
    p = Path(path)
    img = decode_file(p, _DECODE_FLAGS, max_pixels)
    if img.ndim == 3:
        if img.shape[2] in (1, 2):  # gray, or gray + alpha
            img = img[..., 0]
        elif img.shape[2] >= 3:
            img = img[..., 2::-1] if img.shape[2] == 3 else img[..., [2, 1, 0]]  # BGR(A) -> RGB
            img = np.ascontiguousarray(img)
            if is_gray_content(img):
                img = np.ascontiguousarray(img[..., 0])
    elif img.ndim != 2:
        raise ImageReadError(f"{p}: unsupported image layout {img.shape}")
    if np.issubdtype(img.dtype, np.floating):
        if not np.all(np.isfinite(img)):
            raise ImageReadError(f"{p}: the image contains NaN or infinite pixel values")
        if img.min() < 0 or img.max() > 1:
            raise ImageReadError(f"{p}: float images must hold values in [0, 1], this one has "
                                 f"{float(img.min()):.4g}..{float(img.max()):.4g}; rescale it or save it as 8/16-bit")
        img = img.astype(np.float32)
    if keep_integer:
        return img
    try:
        return to_float01(img)
    except ValueError as e:
        raise ImageReadError(f"{p}: {e}") from None


def _quantize(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """``rint(clip(img, 0, 1) * (2**bit_depth - 1))`` as uint8/uint16, in bands of rows (the same values;
    the float temporaries of a large image stay small)."""
    top = (1 << bit_depth) - 1
    out = np.empty(img.shape, np.uint8 if bit_depth == 8 else np.uint16)
    rows = max(1, (1 << 20) // max(1, int(np.prod(img.shape[1:]))))
    for r in range(0, img.shape[0], rows):
        out[r:r + rows] = np.rint(np.clip(img[r:r + rows], 0.0, 1.0) * top)
    return out


def check_extension(ext: str, bit_depth: int = 8, what: str = "output") -> str:
    """The lower-case extension if :func:`write_image` can write that format at ``bit_depth``.

    Raises:
        UsageError: unsupported extension, or a bit depth the format cannot hold.
    """
    ext = ext.lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise UsageError(f"{what}: cannot write {ext or 'files without extension'}; "
                         f"use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if bit_depth not in (8, 16):
        raise UsageError.invalid("bit_depth", bit_depth, "must be 8 or 16")
    if bit_depth == 16 and ext not in _SIXTEEN_BIT_OK and ext != ".npy":  # .npy keeps float32
        raise UsageError(f"{what}: {ext} cannot hold 16-bit images; use .png or .tif, or an 8-bit depth")
    return ext


def check_output_path(path: PathLike, bit_depth: int = 8) -> Path:
    """``path`` as a :class:`~pathlib.Path` if :func:`write_image` can write that format at ``bit_depth``.

    Checked before any work is done, so a wrong ``-o`` fails at once, not after the fusion. A character
    device or a pipe without an image extension (``/dev/null``, ``/dev/stdout``) gets PNG.

    Raises:
        UsageError: unsupported extension, or a bit depth the format cannot hold.
    """
    p = Path(path)
    check_extension(_output_extension(p), bit_depth, str(p))
    return p


def _output_extension(p: Path) -> str:
    """The extension that picks the format: ``p``'s own, or ``.png`` for a device or pipe without one."""
    ext = p.suffix.lower()
    if ext not in OUTPUT_EXTENSIONS:
        try:
            mode = os.stat(p).st_mode
        except (OSError, ValueError):
            return ext
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            return ".png"
    return ext


def write_image(path: PathLike, img: np.ndarray, *, bit_depth: int = 8) -> Path:
    """Write a float image in [0, 1] atomically; the format follows the extension.

    Args:
        path: destination; ``.png .jpg .jpeg .bmp .tif .tiff`` (quantised with rounding to
            ``bit_depth`` bits) or ``.npy`` (float32 as given, no quantisation).
        img: ``(H, W)`` gray or ``(H, W, 3)`` RGB, float in [0, 1] (values outside are clipped).
        bit_depth: 8 or 16 (16 only for PNG and TIFF).

    Raises:
        UsageError: unsupported extension or bit depth for the format.
        CDDFuseError: the image holds NaN or infinite values (it is never written).
        ImageWriteError: the file system refused (permissions, full disk); no partial file is left.
    """
    p = check_output_path(path, bit_depth)
    ext = _output_extension(p)
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise CDDFuseError(f"{p}: not written: the image contains NaN or infinite values")
    if ext == ".npy":
        import io

        buf = io.BytesIO()
        np.save(buf, np.asarray(img, dtype=np.float32))
        return _write_bytes(p, buf.getvalue())
    q = _quantize(img, bit_depth)
    if q.ndim == 3:
        q = np.ascontiguousarray(q[..., ::-1])  # RGB -> BGR for OpenCV
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
    ok, enc = cv2.imencode(ext, q, params)
    if not ok:  # pragma: no cover - OpenCV refuses only exotic combinations
        raise UsageError(f"{p}: OpenCV could not encode this image as {ext}")
    return _write_bytes(p, enc.tobytes())


def _write_bytes(path: Path, data: bytes) -> Path:
    try:
        return atomic_write_bytes(path, data)
    except OSError as e:
        raise ImageWriteError(f"cannot write {path}: {e.strerror or e}", e.errno) from None
