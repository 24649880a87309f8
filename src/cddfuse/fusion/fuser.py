"""High-level fusion: files, arrays or PIL images in, a fused numpy image out."""
from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import cv2
import numpy as np
import torch

from ..engine.cpu import bf16_feature
from ..errors import CDDFuseError, CDDFuseWarning, UsageError
from ..io.color import YCbCrImage, merge_luminance, split_luminance
from ..io.image import DEFAULT_MAX_PIXELS, is_gray_content, probe_image, read_image
from ..models.cddfuse import CDDFuse
from ..models.lite import CDDFuseLite
from ..models.pretrained import pretrained_path
from ..models.weights import WeightsInfo, load_lite_weights, load_weights
from ..options import (
    ALIGN_CHOICES,
    BACKENDS,
    CHROMA_MODES,
    COLOR_MODES,
    METHODS,
    NETWORK_METHODS,
    NORMALIZE_MODES,
    PRECISIONS,
    TASKS,
    AlignChoice,
    Backend,
    ChromaMode,
    ColorMode,
    Method,
    Normalize,
    Precision,
    ResidualChoice,
    ResidualMode,
    Task,
    check_choice,
)
from .policy import fuse_rule, is_flat, minmax_normalize, resolve_chroma, resolve_residual, stretch

if TYPE_CHECKING:  # typing.TypeGuard is Python 3.10+; only the type checker needs it
    from typing_extensions import TypeGuard

__all__ = ["Fuser", "FusionResult", "fuse", "resolve_device", "resolve_residual", "minmax_normalize", "METHODS"]

ImageLike = Union[str, "os.PathLike[str]", np.ndarray, Any]  # Any: PIL.Image.Image


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError.invalid("device", device, "not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError.invalid("device", device, "unsupported device type; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError.invalid("device", device, "no CUDA GPU is available; use cpu or auto")
    return dev


#: Smallest memory budget that can be met: PyTorch and the model alone take about half a gigabyte.
MIN_MEMORY_BUDGET = 512 * 2**20
#: Tiles below this size are refused; below ``SMALL_TILE`` they are allowed with a warning (each tile
#: recomputes a border around itself, so tiny tiles multiply the work: ``--tile 1`` took 230 s for a
#: 96x72 pair that takes 0.1 s whole).
MIN_TILE, SMALL_TILE = 4, 32


def cpu_bf16_feature() -> str | None:
    """The CPU feature that makes bfloat16 fast here (``"amx_bf16"`` or ``"avx512_bf16"``), or None
    (:func:`cddfuse.engine.cpu.bf16_feature`)."""
    return bf16_feature()


def _is_path(x: ImageLike) -> TypeGuard[str | os.PathLike[str]]:
    return isinstance(x, (str, os.PathLike))


def _load_source(x: ImageLike, name: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any supported input -> integer (uint8/uint16) or float [0,1] array, ``(H,W)`` or ``(H,W,3)`` RGB."""
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
        arr = arr.astype(np.float32)
    elif arr.dtype not in (np.uint8, np.uint16):
        raise UsageError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
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
    text = f"the two sources differ in size ({size_a} vs {size_b}); register them first, or pass "
    return CDDFuseError(text + "resize=True to resample the second to the first",
                        cli=text + "--resize to resample VIS to the size of IR")


@dataclass
class FusionResult:
    """Output of :meth:`Fuser.fuse_detailed`.

    Attributes:
        image: float32 in [0, 1]; ``(H, W)`` gray or ``(H, W, 3)`` RGB.
        luminance: the fused luminance ``(H, W)`` after normalisation.
        raw: the network's (or rule's) output ``(H, W)`` before normalisation.
        residual: residual mode used (``None`` for the simple rules).
        chroma_from: ``"a"``, ``"b"`` or ``None`` (gray output).
    """

    image: np.ndarray
    luminance: np.ndarray
    raw: np.ndarray
    residual: str | None
    chroma_from: str | None


class Fuser:
    """Fuse image pairs with CDDFuse (or a simple rule), from Python.

    Args:
        weights: a ``.safetensors`` from this project or an authors' ``.pth`` (``method="cddfuse"``);
            ``"authors-ivf"`` / ``"authors-mif"``: the authors' published files, downloaded once and
            verified (:mod:`cddfuse.models.hub`); or CDDFuse-lite weights (``method="lite"``). ``None``
            uses the bundled weights of ``task`` for the method (an error if this installation has
            none). Weights of the other network than ``method`` names are refused in one line naming
            the mismatch.
        task: ``"ivf"`` (infrared-visible) or ``"mif"`` (medical); ``None`` takes the task the
            weights were made for, else ``"ivf"``.
        method: ``"cddfuse"`` (the exact network), ``"lite"`` (CDDFuse-lite, the distilled real-time
            student: the same pipeline around a network with a thousandth of the operations), or the
            baselines ``"mean"`` ((A+B)/2) and ``"max"`` (max(A, B)).
        residual: ``"auto"`` (see :func:`resolve_residual`), ``"vis"``, ``"sum"`` or ``"none"``
            (``method="cddfuse"``; CDDFuse-lite has its teacher's residual built in: ``"auto"`` only).
        normalize: ``"minmax"`` (the authors' protocol: stretch the fused luminance to [0, 1]) or
            ``"none"``.
        color: ``"auto"`` (colour output when a source is colour) or ``"gray"``.
        chroma: how the colour goes back (keyword): ``"saturation"`` (each pixel keeps the hue and
            saturation of the colour source), ``"ycbcr"`` (the authors': Cb/Cr unchanged) or
            ``"auto"`` (default: saturation for ``task="ivf"``, ycbcr for ``task="mif"``).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...

    Sources: ``a`` is the infrared / functional image (IR, CT, PET, SPECT), ``b`` the visible / MRI
    image. Each may be a path, a numpy array (uint8, uint16 or float in [0, 1]; ``(H, W)``,
    ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA) or a PIL image.

    Example:
        With the bundled infrared-visible weights, on arrays (gray float in [0, 1]):

        >>> import numpy as np
        >>> fuser = Fuser(task="ivf", device="cpu")
        >>> ir, vis = np.random.default_rng(0).random((2, 24, 32))
        >>> out = fuser.fuse(ir, vis)
        >>> out.shape, out.dtype, float(out.min()), float(out.max())   # min-max normalised
        ((24, 32), dtype('float32'), 0.0, 1.0)

        With the authors' checkpoint, on files:

        >>> fuser = Fuser(weights="CDDFuse_IVF.pth")                  # doctest: +SKIP
        >>> out = fuser.fuse("ir/01.png", "vi/01.png")                 # doctest: +SKIP
        >>> out.shape, out.dtype                                       # doctest: +SKIP
        ((576, 768), dtype('float32'))
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | None = None,
        task: Task | None = None,
        method: Method = "cddfuse",
        residual: ResidualChoice = "auto",
        normalize: Normalize = "minmax",
        color: ColorMode = "auto",
        device: str | torch.device = "auto",
        *,
        tile: int | None = None,
        max_memory: str | int | None = None,
        precision: Precision = "fp32",
        backend: Backend = "torch",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        chroma: ChromaMode = "auto",
        align: AlignChoice = "none",
        align_min_confidence: float = 0.5,
    ) -> None:
        """See the class docstring for the first arguments. Performance options (same results):

        Args:
            tile: run the network tile by tile with tiles of at most ``tile x tile`` pixels (exact to
                float32 rounding: results differ by ~1e-7 at most; see :mod:`cddfuse.engine`).
                ``None``: chosen automatically -- on CPU cache-sized tiles (faster), and smaller
                ones or disk-backed feature maps when the image would not fit ``max_memory``.
                ``method="cddfuse"`` only: CDDFuse-lite runs whole images (its context block sees the
                whole image) and bounds its own memory (:mod:`cddfuse.engine.lite`).
            max_memory: memory budget for one pair, bytes or ``"3G"``/``"512M"`` (at least 512M);
                ``None``: on CPU 3 GiB, or 80% of the memory free when the pair is fused if less
                (:func:`cddfuse.engine.default_budget`); on CUDA the GPU's free memory.
                ``method="cddfuse"`` only, like ``tile``.
            precision: ``"fp32"`` (default), ``"tf32"`` (CUDA only: TF32 tensor cores for
                convolutions and matrix products) or ``"bf16"`` (bfloat16 autocast; outputs differ
                from fp32 by up to ~1e-2; on CPU only with AMX or AVX512-BF16).
            max_pixels: images read from files with more pixels are refused from their header, before
                decoding (default 100 megapixels; ``None``: no limit).
            backend: ``"torch"`` (default) or ``"onnx"`` (ONNX Runtime on the exported network,
                whole image at once; needs ``pip install cddfuse[onnx]``).
            align: ``"none"`` (default: the sources are registered), or a model of
                :func:`cddfuse.align.estimate` (``translation``, ``similarity``, ``affine``, ``homography``):
                the first source is warped into the second's frame (the sources may then differ in size),
                pixels it does not cover take the second source alone, and a pair whose alignment confidence
                is below ``align_min_confidence`` raises :class:`cddfuse.align.AlignmentError`. The last
                pair's :class:`~cddfuse.align.Alignment` is in ``last_alignment``.
        """
        check_choice("method", method, METHODS)
        if task is not None:
            check_choice("task", task, TASKS)
        check_choice("normalize", normalize, NORMALIZE_MODES)
        check_choice("color", color, COLOR_MODES)
        check_choice("chroma", chroma, CHROMA_MODES)
        check_choice("precision", precision, PRECISIONS)
        check_choice("backend", backend, BACKENDS)
        check_choice("align", align, ALIGN_CHOICES)
        from ..align import Alignment, check_min_confidence

        self.align: AlignChoice = align
        self.align_min_confidence = check_min_confidence(align_min_confidence)
        self.last_alignment: Alignment | None = None
        self._uncovered: dict[int, np.ndarray] = {}  # id(second source) -> pixels the aligned first does not cover
        self.method = method
        self.normalize = normalize
        self.color = color
        self.device = resolve_device(device)
        self.model: CDDFuse | CDDFuseLite | None = None
        self.info: WeightsInfo | None = None
        if method == "lite":
            _check_lite_options(residual, tile, max_memory)
        if method in NETWORK_METHODS:
            path = Path(weights) if weights is not None else pretrained_path(task or "ivf", method)
            if method == "lite":
                from ..engine.lite import prepare_lite

                lite, self.info = load_lite_weights(path, device=self.device)
                self.model = prepare_lite(lite)
            else:
                self.model, self.info = load_weights(path, device=self.device)
        elif weights is not None:
            raise UsageError(f"weights are only used with method='cddfuse' or 'lite', not {method!r}",
                             cli=f"--weights is only used with --method cddfuse or lite, not with --method {method}")
        self.task: Task = task or (self.info.task if self.info and self.info.task else "ivf")  # type: ignore[assignment]
        self.chroma = resolve_chroma(chroma, self.task)
        # the residual mode the exact network is run with; None for the rules and for CDDFuse-lite (built in)
        self.residual: ResidualMode | None = (
            resolve_residual(residual, self.task, self.info) if isinstance(self.model, CDDFuse) else None)
        from ..engine.memory import parse_memory

        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE):
            raise UsageError.invalid("tile", tile, f"must be a number of pixels, at least {MIN_TILE}")
        if tile is not None and tile < SMALL_TILE:
            warnings.warn(CDDFuseWarning(f"tile={tile} is very small: every tile recomputes a border around "
                                         "itself, so small tiles multiply the work (128 is fastest on CPU)",
                                         cli=f"--tile {tile} is very small: every tile recomputes a border around "
                                             "itself, so small tiles multiply the work (128 is fastest on CPU)"),
                          stacklevel=2)
        try:
            self.max_memory = parse_memory(max_memory)
        except ValueError as e:
            raise UsageError.invalid("max_memory", max_memory, str(e)) from None
        if self.max_memory is not None and self.max_memory < MIN_MEMORY_BUDGET:
            raise UsageError.invalid("max_memory", max_memory, "cannot be met: PyTorch and the model alone take "
                                     "about half a gigabyte; give at least 512M")
        if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                       or max_pixels < 1):
            raise UsageError.invalid("max_pixels", max_pixels, "must be a positive number of pixels, or None")
        self.max_pixels = max_pixels
        if precision == "tf32" and self.device.type != "cuda":
            raise UsageError.invalid("precision", precision,
                                     "needs a CUDA GPU (TF32 is a tensor-core format); use fp32 or bf16")
        if precision == "bf16" and self.device.type == "cpu" and method in NETWORK_METHODS \
                and cpu_bf16_feature() is None:
            raise UsageError.invalid("precision", precision, "on CPU needs AMX or AVX512-BF16, which this processor "
                                     "lacks (bfloat16 would be slower than fp32 here); use fp32, or a CUDA GPU")
        self.tile, self.precision, self.backend = tile, precision, backend
        #: an event that stops the network between tiles when set (:class:`cddfuse.engine.FusionCancelled`);
        #: the web server gives each request's copy of the Fuser its own
        self.cancel: threading.Event | None = None
        self._onnx: Any = None
        if backend == "onnx" and self.model is not None:
            if tile is not None or precision != "fp32":
                raise UsageError.invalid("backend", backend, "runs whole images in fp32; drop tile/precision, "
                                         "or use backend='torch'")
            try:
                from ..engine.onnx import OnnxFuser

                self._onnx = OnnxFuser(self.model, residual=self.residual)  # None: lite, residual built in
            except ImportError as e:
                raise UsageError.invalid("backend", backend, str(e)) from None

    # ------------------------------------------------------------------ core
    @torch.inference_mode()
    def fuse_luminance(self, ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
        """Fuse two luminance images ``(H, W)`` float in [0, 1]; returns the raw ``(H, W)`` output.

        ``(N, H, W)`` stacks of same-size pairs are fused as one batch (``(N, H, W)`` out).
        CDDFuse runs through :func:`cddfuse.engine.fuse_tensors`: on CPU (and whenever tiles
        are asked for or needed) the optimised, exactly tiled engine; on CUDA the whole image
        through the module, and through the tiled engine when it runs out of memory. CDDFuse-lite
        runs through :func:`cddfuse.engine.lite.run_lite` (the module on the whole image).
        """
        if self.model is None:
            return fuse_rule(self.method, ya, yb)
        if ya.shape != yb.shape or ya.ndim not in (2, 3):
            raise UsageError(f"expected two (H, W) or (N, H, W) luminance arrays of one shape, got {ya.shape} "
                             f"and {yb.shape}")
        if self._onnx is not None:
            return self._onnx.fuse_luminance(np.asarray(ya, np.float32), np.asarray(yb, np.float32))
        from ..engine import fuse_tensors

        batched = ya.ndim == 3
        ta = torch.from_numpy(np.ascontiguousarray(ya, dtype=np.float32))
        tb = torch.from_numpy(np.ascontiguousarray(yb, dtype=np.float32))
        ta, tb = (ta[:, None], tb[:, None]) if batched else (ta[None, None], tb[None, None])
        if isinstance(self.model, CDDFuseLite):
            from ..engine.lite import run_lite

            out = run_lite(self.model, ta, tb, precision=self.precision)
        else:
            assert self.residual is not None  # set whenever the exact model is
            from ..engine.tuning import settings

            workers = settings().workers if self.device.type == "cpu" else None  # speed only, never the result
            out = fuse_tensors(self.model, ta, tb, self.residual, device=self.device, tile=self.tile,
                               max_memory=self.max_memory, precision=self.precision, workers=workers,
                               cancel=self.cancel)
        out = out[:, 0] if batched else out[0, 0]
        return out.float().cpu().numpy()

    def _prepare(self, a: ImageLike, b: ImageLike, resize: bool) -> tuple[YCbCrImage, YCbCrImage]:
        """Load both sources (same size, or ``b`` resampled with ``resize``) and split off their luminance."""
        if self.align != "none":
            return self._prepare_aligned(a, b, resize)
        if _is_path(a) and _is_path(b) and not resize:  # sizes from the headers, before decoding either
            header_a, header_b = probe_image(a, self.max_pixels), probe_image(b, self.max_pixels)
            if header_a and header_b and (header_a.width, header_a.height) != (header_b.width, header_b.height):
                raise _size_error(header_a.size, header_b.size)
        arr_a = _load_source(a, "first source (infrared/functional)", self.max_pixels)
        arr_b = _load_source(b, "second source (visible/MRI)", self.max_pixels)
        if arr_a.shape[:2] != arr_b.shape[:2]:
            if not resize:
                raise _size_error(_size(arr_a), _size(arr_b))
            arr_b = _resize_to(arr_b, arr_a.shape[:2])
        return split_luminance(arr_a), split_luminance(arr_b)

    def _prepare_aligned(self, a: ImageLike, b: ImageLike, resize: bool) -> tuple[YCbCrImage, YCbCrImage]:
        """Load both sources, warp the first into the second's frame (see ``align``), split the luminance."""
        from ..align.sources import align_sources

        if resize:
            raise UsageError("resize and align exclude each other: align resamples the first source into the "
                             "second's frame", cli="--resize and --align exclude each other: --align resamples IR "
                                                   "into the frame of VIS")
        arr_a = _load_source(a, "first source (infrared/functional)", self.max_pixels)
        arr_b = _load_source(b, "second source (visible/MRI)", self.max_pixels)
        assert self.align != "none"
        arr_a, self.last_alignment, uncovered = align_sources(arr_a, arr_b, self.align, self.align_min_confidence)
        sa, sb = split_luminance(arr_a), split_luminance(arr_b)
        if uncovered.any():
            self._uncovered[id(sb)] = uncovered
        return sa, sb

    def _finish(self, raw: np.ndarray, sa: YCbCrImage, sb: YCbCrImage) -> FusionResult:
        """Normalise one pair's raw output (over its whole image) and put the colour back."""
        if not np.all(np.isfinite(raw)):
            raise CDDFuseError("the fusion produced NaN or infinite values (broken weights, or a numeric failure "
                               f"in {self.precision}); no image is made from it")
        if self.normalize == "minmax":
            y, flat = stretch(raw)
            flat_sources = not flat and is_flat(sa.y) and is_flat(sb.y)
            if flat_sources:  # nothing to stretch: the output's contrast is only the network's border response
                y = np.clip(raw, 0.0, 1.0).astype(np.float32)
            if (flat or flat_sources) and not getattr(self, "_warned_flat", False):
                self._warned_flat = True
                what = ("both sources are flat" if flat_sources else
                        f"the fused image is flat (its values span {float(raw.max() - raw.min()):.2g})")
                text = (f"{what}: the result is kept as computed, not stretched to the full range by min-max "
                        "normalisation (which would show only noise); {} does the same without this warning")
                warnings.warn(CDDFuseWarning(text.format("normalize='none'"), cli=text.format("--normalize none")),
                              stacklevel=2)
        else:
            y = np.clip(raw, 0.0, 1.0).astype(np.float32)
        uncovered = self._uncovered.pop(id(sb), None)
        if uncovered is not None:  # align: where the warped first source is missing, the second alone
            y[uncovered] = sb.y[uncovered]
        chroma: YCbCrImage | None = None
        chroma_from: str | None = None
        if self.color == "auto":
            if sb.is_color:
                chroma, chroma_from = sb, "b"
            elif sa.is_color:
                chroma, chroma_from = sa, "a"
        image = merge_luminance(y, chroma, self.chroma) if chroma is not None else y
        return FusionResult(image=image, luminance=y, raw=raw, residual=self.residual, chroma_from=chroma_from)

    def fuse_detailed(self, a: ImageLike, b: ImageLike, *, resize: bool = False) -> FusionResult:
        """Like :meth:`fuse`, returning the intermediate products too."""
        sa, sb = self._prepare(a, b, resize)
        return self._finish(self.fuse_luminance(sa.y, sb.y), sa, sb)

    def fuse_batch(self, pairs: Sequence[tuple[ImageLike, ImageLike]], *, resize: bool = False) -> list[np.ndarray]:
        """Fuse several pairs; pairs of the same size go through the network as one batch.

        Same results as :meth:`fuse` on each pair (normalisation and colour stay per pair); faster
        on a GPU, where one pair does not fill the device. On CPU the tiled engine is already
        cache- and thread-efficient with one pair, so batching mainly costs memory.

        Raises:
            CDDFuseError: an unreadable pair (nothing of the batch is returned; fuse pairs one by
                one to isolate it).
        """
        prepared = [self._prepare(a, b, resize) for a, b in pairs]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (sa, _) in enumerate(prepared):
            groups.setdefault(sa.y.shape, []).append(i)
        results: dict[int, np.ndarray] = {}
        for idx in groups.values():  # (N, H, W) stacks, N = 1 included
            raws = self.fuse_luminance(np.stack([prepared[i][0].y for i in idx]),
                                       np.stack([prepared[i][1].y for i in idx]))
            for i, raw in zip(idx, raws):
                results[i] = self._finish(raw, *prepared[i]).image
        return [results[i] for i in range(len(prepared))]

    def fuse(self, a: ImageLike, b: ImageLike, *, resize: bool = False) -> np.ndarray:
        """Fuse ``a`` (infrared/functional) with ``b`` (visible/MRI).

        Returns:
            float32 in [0, 1]: ``(H, W)`` gray, or ``(H, W, 3)`` RGB when a source is colour and
            ``color="auto"`` (the colour source's colour on the fused luminance, see ``chroma``; the
            visible image's if both are colour).
        Raises:
            CDDFuseError: unreadable inputs, or sources of different sizes without ``resize=True``.
        """
        return self.fuse_detailed(a, b, resize=resize).image


def _check_lite_options(residual: str, tile: object, max_memory: object) -> None:
    """Options of the exact network that CDDFuse-lite has no use for: one line each."""
    if residual != "auto":
        raise UsageError.invalid("residual", residual, "CDDFuse-lite has its teacher's residual built in; leave it "
                                 "at auto, or use the cddfuse method")
    for name, value in (("tile", tile), ("max_memory", max_memory)):
        if value is not None:
            raise UsageError.invalid(name, value, "only the exact engine takes it: CDDFuse-lite runs whole images "
                                     "and bounds its own memory; drop it, or use the cddfuse method")


def fuse(a: ImageLike, b: ImageLike, **kwargs: Any) -> np.ndarray:
    """One-call fusion: ``Fuser(**kwargs).fuse(a, b)`` (builds the model each call; reuse a Fuser for many pairs)."""
    resize = kwargs.pop("resize", False)
    return Fuser(**kwargs).fuse(a, b, resize=resize)
