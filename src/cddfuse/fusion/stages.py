"""The fusion pipeline as public stages with typed inputs and outputs, and the options that steer them.

One pair goes through five stages; :class:`~cddfuse.fusion.Fuser`, folder fusion, video and the web
server all compose these (the network stage is :meth:`~cddfuse.fusion.Fuser.fuse_luminance`)::

    prepare(a, b, options)             -> SourcePair      the sources as arrays, sizes checked
    align(pair, options)               -> PreparedPair    first warped into the second's frame
                                                          (options.align), luminance split off
    fuser.fuse_luminance(p.a.y, p.b.y) -> raw (H, W)      the network (or rule), before normalisation
    normalise(raw, p, options)         -> Normalised      min-max or clip; uncovered pixels from b
    colour(luminance, p, options, task)-> Coloured        the colour source's colour put back

Every stage returns a new value and keeps nothing: what one stage finds out for a later one (the
alignment, and the mask of pixels the warped first source does not cover) travels in its result.

Example (the ``max`` rule, gray sources, stage by stage and all at once):
    >>> import numpy as np
    >>> from cddfuse.fusion import Fuser
    >>> a = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    >>> b = a[::-1].copy()
    >>> fuser = Fuser(method="max")
    >>> pair = align(prepare(a, b, fuser.options), fuser.options)
    >>> done = normalise(fuser.fuse_luminance(pair.a.y, pair.b.y), pair, fuser.options)
    >>> image = colour(done.luminance, pair, fuser.options, fuser.task).image
    >>> bool(np.array_equal(image, fuser.fuse(a, b)))
    True
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import cv2
import numpy as np

from ..errors import CDDFuseError, UsageError
from ..io.color import YCbCrImage, merge_luminance, split_luminance
from ..io.image import DEFAULT_MAX_PIXELS, check_array, is_gray_content, probe_image, read_image
from ..options import (
    ALIGN_CHOICES,
    CHROMA_MODES,
    COLOR_MODES,
    NORMALIZE_MODES,
    PRECISIONS,
    AlignChoice,
    ChromaMode,
    ColorMode,
    Normalize,
    Precision,
    Task,
    check_choice,
    parse_size,
)
from .policy import is_flat, resolve_chroma, stretch

if TYPE_CHECKING:  # typing.TypeGuard is Python 3.10+; only the type checker needs it
    from typing_extensions import TypeGuard

    from ..align import Alignment

__all__ = ["FusionOptions", "SourcePair", "PreparedPair", "Normalised", "Coloured", "ImageLike",
           "prepare", "align", "normalise", "colour", "load_source", "MIN_TILE", "SMALL_TILE", "MIN_MEMORY_BUDGET"]

#: A source: a path, a numpy array (uint8, uint16 or float in [0, 1]) or a PIL image (``Any``).
ImageLike = Union[str, "os.PathLike[str]", np.ndarray, Any]

#: Smallest memory budget that can be met: PyTorch and the model alone take about half a gigabyte.
MIN_MEMORY_BUDGET = 512 * 2**20
#: Tiles below this size are refused; below ``SMALL_TILE`` they are allowed with a warning (each tile
#: recomputes a border around itself, so tiny tiles multiply the work: ``--tile 1`` took 230 s for a
#: 96x72 pair that takes 0.1 s whole).
MIN_TILE, SMALL_TILE = 4, 32


@dataclass(frozen=True)
class FusionOptions:
    """How pairs are fused, apart from the choice of network (weights, task, method, residual, device,
    backend: :class:`~cddfuse.fusion.Fuser`'s own arguments). Frozen: change it per call with
    :func:`dataclasses.replace`, which checks the new values again.

    Attributes:
        normalize: ``"minmax"`` (stretch the fused luminance to [0, 1]; the authors' protocol) or ``"none"``.
        color: ``"auto"`` (colour output when a source is colour) or ``"gray"``.
        chroma: ``"saturation"``, ``"ycbcr"`` or ``"auto"`` (saturation for ``ivf``, ycbcr for ``mif``).
        align: ``"none"`` (the sources are registered) or the model the first source is aligned to the
            second with (``translation``, ``similarity``, ``affine``, ``homography``).
        align_min_confidence: with ``align``: pairs aligned with a lower confidence (in [0, 1]) are refused.
        max_pixels: images read from files with more pixels are refused from their header (``None``: no limit).
        tile: largest tile of the exact engine in pixels (at least 4; ``None``: chosen automatically).
        max_memory: memory budget of one pair: bytes, or a size such as ``"3G"`` (see
            :func:`cddfuse.options.parse_size`); stored as bytes; at least 512M. ``None``: automatic.
        precision: ``"fp32"``, ``"tf32"`` (CUDA) or ``"bf16"``.

    Example:
        >>> import dataclasses
        >>> options = FusionOptions(color="gray", max_memory="1G")
        >>> options.max_memory, dataclasses.replace(options, normalize="none").normalize
        (1073741824, 'none')
        >>> dataclasses.replace(options, normalize="stretch")
        Traceback (most recent call last):
        ...
        cddfuse.errors.UsageError: normalize='stretch': unknown normalize; choose one of minmax, none
    """

    normalize: Normalize = "minmax"
    color: ColorMode = "auto"
    chroma: ChromaMode = "auto"
    align: AlignChoice = "none"
    align_min_confidence: float = 0.5
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    tile: int | None = None
    max_memory: int | None = None
    precision: Precision = "fp32"

    def __init__(self, normalize: Normalize = "minmax", color: ColorMode = "auto", chroma: ChromaMode = "auto",
                 align: AlignChoice = "none", align_min_confidence: float = 0.5,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, tile: int | None = None,
                 max_memory: int | str | None = None, precision: Precision = "fp32") -> None:
        from ..align import check_min_confidence

        check_choice("normalize", normalize, NORMALIZE_MODES)
        check_choice("color", color, COLOR_MODES)
        check_choice("chroma", chroma, CHROMA_MODES)
        check_choice("align", align, ALIGN_CHOICES)
        check_choice("precision", precision, PRECISIONS)
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE):
            raise UsageError.invalid("tile", tile, f"must be a number of pixels, at least {MIN_TILE}")
        try:
            budget = None if max_memory is None else parse_size(max_memory)
        except ValueError as e:
            raise UsageError.invalid("max_memory", max_memory, str(e)) from None
        if budget is not None and budget < MIN_MEMORY_BUDGET:
            raise UsageError.invalid("max_memory", max_memory, "cannot be met: PyTorch and the model alone take "
                                     "about half a gigabyte; give at least 512M")
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                       or max_pixels < 1):
            raise UsageError.invalid("max_pixels", max_pixels, "must be a positive number of pixels, or None")
        values = {"normalize": normalize, "color": color, "chroma": chroma, "align": align,
                  "align_min_confidence": check_min_confidence(align_min_confidence), "max_pixels": max_pixels,
                  "tile": tile, "max_memory": budget, "precision": precision}
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def resolved_chroma(self, task: Task) -> ChromaMode:
        """``chroma``, with ``"auto"`` decided for ``task`` (:func:`~cddfuse.fusion.policy.resolve_chroma`)."""
        return resolve_chroma(self.chroma, task)

    def replace(self, **changes: Any) -> FusionOptions:
        """:func:`dataclasses.replace` (checked like the constructor)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SourcePair:
    """Output of :func:`prepare`: the two sources as arrays -- uint8/uint16, or float32 in [0, 1];
    ``(H, W)`` gray or ``(H, W, 3)`` RGB. The same size, unless they are still to be aligned."""

    a: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class PreparedPair:
    """Output of :func:`align`: what the network and the later stages need of one pair.

    Attributes:
        a, b: the sources split into luminance ``y`` ``(H, W)`` float32 in [0, 1] (and Cb/Cr when colour);
            ``a`` is in ``b``'s frame.
        uncovered: boolean ``(H, W)``: pixels the aligned first source does not cover (there the output is
            the second source alone), or ``None`` (not aligned, or fully covered).
        alignment: the :class:`~cddfuse.align.Alignment` found, or ``None`` without ``align``.
    """

    a: YCbCrImage
    b: YCbCrImage
    uncovered: np.ndarray | None = None
    alignment: Alignment | None = None


@dataclass(frozen=True)
class Normalised:
    """Output of :func:`normalise`.

    Attributes:
        luminance: float32 ``(H, W)`` in [0, 1].
        flat: why the min-max stretch was skipped (``"both sources are flat"``, or the fused image's
            small range), or ``None`` when it was not.
    """

    luminance: np.ndarray
    flat: str | None = None


@dataclass(frozen=True)
class Coloured:
    """Output of :func:`colour`: ``image`` float32 in [0, 1], ``(H, W)`` gray or ``(H, W, 3)`` RGB, and the
    source whose colour it carries (``"a"``, ``"b"``, or ``None``: gray)."""

    image: np.ndarray
    chroma_from: str | None


def _is_path(x: ImageLike) -> TypeGuard[str | os.PathLike[str]]:
    return isinstance(x, (str, os.PathLike))


def load_source(x: ImageLike, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported source -> integer (uint8/uint16) or float32 [0, 1] array, ``(H, W)`` or ``(H, W, 3)`` RGB.

    Arrays are checked by :func:`cddfuse.io.image.check_array` (floats outside [0, 1] are refused); RGBA
    drops alpha; an RGB image whose channels are equal becomes gray.
    """
    if _is_path(x):
        return read_image(x, keep_integer=True, max_pixels=max_pixels)
    if isinstance(x, np.ndarray):
        arr = x
    elif hasattr(x, "mode") and hasattr(x, "convert"):  # PIL image
        img = x
        if img.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "HSV", "1"):
            img = img.convert("RGB" if img.mode not in ("LA", "1") else "L")
        arr = np.asarray(img)
        if arr.dtype == np.int32:  # PIL 'I' mode (16-bit PNG)
            arr = np.clip(arr, 0, 65535).astype(np.uint16)
    else:
        raise UsageError(f"{name}: expected a file path, a numpy array or a PIL image, got {type(x).__name__}")
    arr = check_array(arr, name)
    if arr.ndim == 3 and is_gray_content(arr):
        arr = np.ascontiguousarray(arr[..., 0])
    return arr


def _resize_to(arr: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    shrink = arr.shape[0] > h or arr.shape[1] > w
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _size(arr: np.ndarray) -> str:
    return f"{arr.shape[1]}x{arr.shape[0]}"


def _size_error(size_a: str, size_b: str) -> CDDFuseError:
    from ..errors import SizeMismatch

    text = f"the two sources differ in size ({size_a} vs {size_b}); register them first, or pass "
    return SizeMismatch(text + "resize=True to resample the second to the first", size_a=size_a, size_b=size_b,
                        cli=text + "--resize to resample VIS to the size of IR")


_NAME_A, _NAME_B = "first source (infrared/functional)", "second source (visible/MRI)"


def prepare(a: ImageLike, b: ImageLike, options: FusionOptions, *, resize: bool = False) -> SourcePair:
    """Stage 1: load both sources (paths: sizes compared from the headers before either is decoded).

    Without ``options.align`` the sources must have one size, or ``resize=True`` resamples the second to
    the first's; with it they may differ (the next stage warps the first into the second's frame) and
    ``resize`` is refused.

    Raises:
        SizeMismatch: different sizes without ``resize`` or ``align``.
        UsageError: ``resize`` with ``align``; an unsupported array.
        ImageReadError, InputTooLarge: an unreadable file; one with more than ``options.max_pixels`` pixels.
    """
    if options.align != "none":
        if resize:
            raise UsageError("resize and align exclude each other: align resamples the first source into the "
                             "second's frame", cli="--resize and --align exclude each other: --align resamples IR "
                                                   "into the frame of VIS")
        return SourcePair(load_source(a, _NAME_A, options.max_pixels), load_source(b, _NAME_B, options.max_pixels))
    if _is_path(a) and _is_path(b) and not resize:  # sizes from the headers, before decoding either
        header_a, header_b = probe_image(a, options.max_pixels), probe_image(b, options.max_pixels)
        if header_a and header_b and (header_a.width, header_a.height) != (header_b.width, header_b.height):
            raise _size_error(header_a.size, header_b.size)
    arr_a = load_source(a, _NAME_A, options.max_pixels)
    arr_b = load_source(b, _NAME_B, options.max_pixels)
    if arr_a.shape[:2] != arr_b.shape[:2]:
        if not resize:
            raise _size_error(_size(arr_a), _size(arr_b))
        arr_b = _resize_to(arr_b, arr_a.shape[:2])
    return SourcePair(arr_a, arr_b)


def align(pair: SourcePair, options: FusionOptions) -> PreparedPair:
    """Stage 2: with ``options.align``, warp the first source into the second's frame
    (:func:`cddfuse.align.sources.align_sources`); then split both into luminance and colour.

    Raises:
        AlignmentError: the alignment's confidence is below ``options.align_min_confidence``.
        SizeMismatch: without ``align``, sources of different sizes (a :class:`SourcePair` made by hand).
    """
    if options.align == "none":
        if pair.a.shape[:2] != pair.b.shape[:2]:
            raise _size_error(_size(pair.a), _size(pair.b))
        return PreparedPair(split_luminance(pair.a), split_luminance(pair.b))
    from ..align.sources import align_sources

    warped, alignment, uncovered = align_sources(pair.a, pair.b, options.align, options.align_min_confidence)
    return PreparedPair(split_luminance(warped), split_luminance(pair.b),
                        uncovered if uncovered.any() else None, alignment)


def _check_finite(raw: np.ndarray, precision: str) -> None:
    if not np.all(np.isfinite(raw)):
        raise CDDFuseError("the fusion produced NaN or infinite values (broken weights, or a numeric failure "
                           f"in {precision}); no image is made from it")


def normalise(raw: np.ndarray, pair: PreparedPair, options: FusionOptions) -> Normalised:
    """Stage 4: the network's raw ``(H, W)`` output -> the fused luminance in [0, 1].

    ``options.normalize="minmax"`` stretches it over the whole image, except a (nearly) flat output, or
    one of two flat sources, which is kept as computed (``flat`` says why); ``"none"`` clips to [0, 1].
    Pixels in ``pair.uncovered`` then take the second source's luminance.

    Raises:
        CDDFuseError: ``raw`` is not finite.
    """
    _check_finite(raw, options.precision)
    flat_reason: str | None = None
    if options.normalize == "minmax":
        y, flat = stretch(raw)
        flat_sources = not flat and is_flat(pair.a.y) and is_flat(pair.b.y)
        if flat_sources:  # nothing to stretch: the output's contrast is only the network's border response
            y = np.clip(raw, 0.0, 1.0).astype(np.float32)
        if flat or flat_sources:
            flat_reason = ("both sources are flat" if flat_sources else
                           f"the fused image is flat (its values span {float(raw.max() - raw.min()):.2g})")
    else:
        y = np.clip(raw, 0.0, 1.0).astype(np.float32)
    return Normalised(cover(y, pair), flat_reason)


def cover(luminance: np.ndarray, pair: PreparedPair) -> np.ndarray:
    """``luminance`` with the pixels the aligned first source does not cover taken from the second
    (``luminance`` itself, changed in place, when there are any)."""
    if pair.uncovered is not None:
        luminance[pair.uncovered] = pair.b.y[pair.uncovered]
    return luminance


def colour(luminance: np.ndarray, pair: PreparedPair, options: FusionOptions, task: Task) -> Coloured:
    """Stage 5: with ``options.color="auto"``, the colour of the colour source (the second's when both are
    colour) on the fused luminance, as ``options.chroma`` says for ``task``; otherwise the luminance."""
    if options.color == "auto":
        for source, name in ((pair.b, "b"), (pair.a, "a")):
            if source.is_color:
                return Coloured(merge_luminance(luminance, source, options.resolved_chroma(task)), name)
    return Coloured(luminance, None)
