"""Video frames in and out: video files through PyAV (the ``video`` extra: its wheels bundle FFmpeg, with the
x264 H.264 encoder), and folders of numbered frames.

Sources yield frames one at a time (constant memory) as the image reader gives them: ``uint8``/``uint16``
arrays, ``(H, W)`` gray or ``(H, W, 3)`` RGB. A video stream counts as gray when its pixel format is gray,
or when its first frame has three equal channels to within the codec's rounding (an infrared camera's
video carries neutral chroma; lossy coding moves it by a level or two), and is then read as luminance.

:class:`VideoWriter` writes H.264 (``.mp4``, ``.m4v``, ``.mov``, ``.mkv``; High profile, yuv420p, CRF 18,
``+faststart`` for MP4 so that a browser can start playing before the download ends) or VP9 (``.webm``)
to a temporary file that is renamed onto the destination only when the last frame is written: an
interruption leaves no partial video. yuv420p needs even sides, so an odd last row or column is
repeated.

``av`` is imported only by the functions that need it (``cddfuse`` works without the extra).

Example (skipped without the extra):
    >>> import pytest; _ = pytest.importorskip("av")
    >>> import tempfile, numpy as np
    >>> from fractions import Fraction
    >>> path = tempfile.mkdtemp() + "/ramp.mp4"
    >>> with VideoWriter(path, Fraction(25)) as out:
    ...     for level in (0.2, 0.4, 0.6):
    ...         out.write(np.full((48, 64), level, np.float32))
    >>> source = open_video_source(path)
    >>> source.fps, source.frames, (source.width, source.height), source.is_color
    (Fraction(25, 1), 3, (64, 48), False)
    >>> [round(float(frame.mean()) / 255, 2) for frame in source]
    [0.2, 0.4, 0.6]
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .._fileutil import PathLike, atomic_path
from ..errors import CDDFuseError, InputTooLarge, UsageError, first_line
from .image import DEFAULT_MAX_PIXELS, read_image
from .pairs import IMAGE_EXTENSIONS

__all__ = ["VIDEO_EXTENSIONS", "WRITE_FORMATS", "is_video_path", "VideoSource", "VideoFileSource",
           "FrameFolderSource", "open_video_source", "VideoWriter", "video_available", "natural_key"]


#: Extensions read as video files (anything PyAV's FFmpeg decodes, recognised by name).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
#: Output extension -> (container format, encoder, pixel format, encoder options).
WRITE_FORMATS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".m4v": ("mp4", "libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".mov": ("mov", "libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".mkv": ("matroska", "libx264", "yuv420p", {"crf": "18", "preset": "medium"}),
    ".webm": ("webm", "libvpx-vp9", "yuv420p", {"crf": "30", "b": "0"}),
}
#: Largest channel difference of a decoded frame still taken as gray (lossy chroma of a gray video).
GRAY_TOLERANCE = 3


def is_video_path(path: PathLike) -> bool:
    """Whether ``path`` names a video file by its extension (it need not exist)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def video_available() -> bool:
    """Whether PyAV is installed (``pip install "cddfuse[video]"``)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise CDDFuseError('video files need the video extra: pip install "cddfuse[video]" (PyAV, whose wheels '
                           "bundle FFmpeg); folders of frames work without it") from None
    return av


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``frame_2`` before ``frame_10`` (digit runs compare as numbers)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part)


class VideoSource:
    """Frames of one source, in order. ``fps`` (None for folders), ``frames`` (None when the container
    does not say), ``width``/``height`` (of the first frame) and ``is_color``; iterate for the frames."""

    name: str
    fps: Fraction | None
    frames: int | None
    width: int
    height: int
    is_color: bool

    def __iter__(self) -> Iterator[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VideoFileSource(VideoSource):
    """A video file's first video stream, decoded by PyAV.

    ``max_pixels`` bounds the frame size: the stream's declared size is checked before anything is
    decoded, and every decoded frame's size before it is converted (a stream can change size midway).
    """

    def __init__(self, path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        av = _av()
        self.path = Path(path)
        self.name = str(path)
        self.max_pixels = max_pixels
        if not self.path.is_file():
            raise CDDFuseError(f"{path}: no such video file")
        try:
            self._container = av.open(str(path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
            raise CDDFuseError(f"{path}: not a readable video ({_reason(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise CDDFuseError(f"{path}: has no video stream")
        self._stream = self._container.streams.video[0]
        try:
            declared = (int(self._stream.codec_context.width or 0), int(self._stream.codec_context.height or 0))
        except (AttributeError, ValueError, av.FFmpegError):  # pragma: no cover - no codec context
            declared = (0, 0)
        if declared[0] and declared[1]:
            self._check_size(*declared)
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = Fraction(rate) if rate else None
        self.frames = int(self._stream.frames) or None
        self._frames = self._decode()
        try:
            first = next(self._frames)
        except StopIteration:
            self.close()
            raise CDDFuseError(f"{path}: the video has no frames") from None
        except av.FFmpegError as e:
            self.close()
            raise CDDFuseError(f"{path}: cannot decode the video ({_reason(e)})") from None
        self._check_size(first.width, first.height)
        rgb = first.to_ndarray(format="rgb24")
        self.height, self.width = rgb.shape[:2]
        gray_format = first.format.name.startswith("gray")
        spread = int(np.abs(np.diff(rgb.astype(np.int16), axis=2)).max()) if not gray_format else 0
        self.is_color = spread > GRAY_TOLERANCE
        self._first = first

    def _decode(self) -> Iterator[Any]:
        yield from self._container.decode(self._stream)

    def __iter__(self) -> Iterator[np.ndarray]:
        av = _av()
        form = "rgb24" if self.is_color else "gray"
        frame = self._first
        try:
            while frame is not None:
                self._check_size(frame.width, frame.height)
                yield np.ascontiguousarray(frame.to_ndarray(format=form))
                frame = next(self._frames, None)
        except av.FFmpegError as e:
            raise CDDFuseError(f"{self.name}: cannot decode the video ({_reason(e)})") from None

    def _check_size(self, width: int, height: int) -> None:
        if self.max_pixels is not None and width * height > self.max_pixels:
            self.close()
            text = (f"{self.name}: frames of {width}x{height} pixels are more than the limit of {self.max_pixels}; "
                    "if the video is genuine, raise ")
            raise InputTooLarge(text + "max_pixels", width=width, height=height, limit=self.max_pixels,
                                path=self.name, cli=text + "it with --max-pixels")

    def close(self) -> None:
        self._container.close()


class FrameFolderSource(VideoSource):
    """The images of a folder (PNG, JPEG, BMP, TIFF), in natural order of their names (``2`` before ``10``)."""

    def __init__(self, folder: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.folder = Path(folder)
        self.name = str(folder)
        self.paths = sorted((p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS
                             and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
        if not self.paths:
            raise CDDFuseError(f"{folder}: no frames (no PNG, JPEG, BMP or TIFF files)")
        self.max_pixels = max_pixels
        self.fps = None
        self.frames = len(self.paths)
        first = read_image(self.paths[0], keep_integer=True, max_pixels=max_pixels)
        self.height, self.width = first.shape[:2]
        self.is_color = first.ndim == 3

    @property
    def stems(self) -> list[str]:
        return [p.stem for p in self.paths]

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            yield read_image(path, keep_integer=True, max_pixels=self.max_pixels)


def open_video_source(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> VideoSource:
    """A video file (by extension) or a folder of frames."""
    p = Path(path)
    if p.is_dir():
        return FrameFolderSource(p, max_pixels)
    if not p.exists():
        raise CDDFuseError(f"{p}: no such file or folder")
    if not is_video_path(p):
        raise UsageError(f"{p}: not a video file ({', '.join(VIDEO_EXTENSIONS)}) nor a folder of frames")
    return VideoFileSource(p, max_pixels)


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or first_line(e)


class VideoWriter(AbstractContextManager["VideoWriter"]):
    """Write frames (float in [0, 1], ``(H, W)`` gray or ``(H, W, 3)`` RGB, all of one size) to a video file,
    atomically: the file appears, complete, when the ``with`` block ends without an exception.

    Args:
        path: destination; its extension picks the format (:data:`WRITE_FORMATS`).
        fps: frame rate.
    """

    def __init__(self, path: PathLike, fps: Fraction) -> None:
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in WRITE_FORMATS:
            raise UsageError.invalid("output", str(path), "unsupported video format; use "
                                     + ", ".join(WRITE_FORMATS) + " (H.264; .webm: VP9)")
        if not fps or fps <= 0:
            raise UsageError.invalid("fps", fps, "must be a positive frame rate")
        self.format, self.codec, self.pix_fmt, self.options = WRITE_FORMATS[ext]
        self.fps = Fraction(fps).limit_denominator(1001000)
        self.frames = 0
        self._stream: Any = None

    def __enter__(self) -> VideoWriter:
        av = _av()
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            options = {"movflags": "+faststart"} if self.format in ("mp4", "mov") else {}
            self._container = av.open(str(tmp), "w", format=self.format, options=options)
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def write(self, image: np.ndarray) -> None:
        av = _av()
        frame = np.asarray(image)
        if frame.dtype != np.uint8:
            frame = np.round(np.clip(frame, 0.0, 1.0) * 255.0).astype(np.uint8)
        h, w = frame.shape[:2]
        pad = ((0, h % 2), (0, w % 2)) + (((0, 0),) if frame.ndim == 3 else ())
        if h % 2 or w % 2:
            frame = np.pad(frame, pad, mode="edge")
        if self._stream is None:
            self._stream = self._container.add_stream(self.codec, rate=self.fps, options=dict(self.options))
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = self.pix_fmt
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise CDDFuseError(f"frame {self.frames} is {w}x{h}, the video's frames are "
                               f"{self._size[1]}x{self._size[0]}")
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24" if frame.ndim == 3 else "gray")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:  # interrupted or failed: drop the temporary file
            with contextlib.suppress(Exception):
                self._container.close()
            self._atomic.__exit__(exc_type, exc, tb)
            return
        try:
            if self._stream is None:
                raise CDDFuseError(f"no frames to write to {self.path}")
            for packet in self._stream.encode():  # flush the encoder's delayed frames
                self._container.mux(packet)
            self._container.close()
        except BaseException as e:
            with contextlib.suppress(Exception):
                self._container.close()
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        self._atomic.__exit__(None, None, None)  # rename onto the destination
