"""High-level fusion: files, arrays or PIL images in, a fused numpy image out."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from ..errors import CDDFuseError, UsageError
from ..io.color import YCbCrImage, merge_luminance, split_luminance
from ..io.image import read_image
from ..models.cddfuse import RESIDUAL_MODES, CDDFuse
from ..models.pretrained import pretrained_path
from ..models.weights import WeightsInfo, load_weights

__all__ = ["Fuser", "FusionResult", "fuse", "resolve_device", "resolve_residual", "minmax_normalize", "METHODS"]

ImageLike = Union[str, "os.PathLike[str]", np.ndarray, Any]  # Any: PIL.Image.Image
METHODS = ("cddfuse", "mean", "max")
TASKS = ("ivf", "mif")
NORMALIZE = ("minmax", "none")
COLORS = ("auto", "gray")


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    return dev


def resolve_residual(residual: str, task: str, info: Optional[WeightsInfo]) -> str:
    """Residual mode for ``residual="auto"``, as the authors' inference scripts choose it.

    Weights trained for infrared-visible fusion (residual ``vis``) use the visible image for IVF and
    the sum of both sources when applied to medical pairs (their ``test_MIF.py`` with IVF weights);
    weights that say otherwise (their MIF weights: ``none``) keep their own mode.
    """
    if residual != "auto":
        if residual not in RESIDUAL_MODES:
            raise UsageError(f"unknown residual mode {residual!r}; choose auto, {', '.join(RESIDUAL_MODES)}")
        return residual
    trained = (info.residual if info else None) or "vis"
    made_for_ivf = info is None or info.task in (None, "ivf")
    if trained == "vis" and task == "mif" and made_for_ivf:
        return "sum"
    return trained


def minmax_normalize(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)`` over the whole image (a constant image becomes zeros)."""
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float32)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def _load_source(x: ImageLike, name: str) -> np.ndarray:
    """Any supported input -> integer (uint8/uint16) or float [0,1] array, ``(H,W)`` or ``(H,W,3)`` RGB."""
    if isinstance(x, (str, os.PathLike)):
        return read_image(x, keep_integer=True)
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
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise UsageError(f"{name}: the array contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise UsageError(f"{name}: float images must be in [0, 1] (got {arr.min():.3g}..{arr.max():.3g}); divide by 255")
        arr = arr.astype(np.float32)
    elif arr.dtype not in (np.uint8, np.uint16):
        raise UsageError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
        arr = np.ascontiguousarray(arr[..., 0])
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UsageError(f"{name}: empty image")
    return arr


def _resize_to(arr: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    h, w = hw
    shrink = arr.shape[0] > h or arr.shape[1] > w
    return cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def _size(arr: np.ndarray) -> str:
    return f"{arr.shape[1]}x{arr.shape[0]}"


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
    residual: Optional[str]
    chroma_from: Optional[str]


class Fuser:
    """Fuse image pairs with CDDFuse (or a simple rule), from Python.

    Args:
        weights: a ``.safetensors`` from this project or an authors' ``.pth``; ``None`` uses the
            bundled weights of ``task`` (an error if this installation has none).
        task: ``"ivf"`` (infrared-visible) or ``"mif"`` (medical); ``None`` takes the task the
            weights were made for, else ``"ivf"``.
        method: ``"cddfuse"``, or the baselines ``"mean"`` ((A+B)/2) and ``"max"`` (max(A, B)).
        residual: ``"auto"`` (see :func:`resolve_residual`), ``"vis"``, ``"sum"`` or ``"none"``.
        normalize: ``"minmax"`` (the authors' protocol: stretch the fused luminance to [0, 1]) or
            ``"none"``.
        color: ``"auto"`` (colour output when a source is colour) or ``"gray"``.
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
        weights: Union[str, "os.PathLike[str]", None] = None,
        task: Optional[str] = None,
        method: str = "cddfuse",
        residual: str = "auto",
        normalize: str = "minmax",
        color: str = "auto",
        device: Union[str, torch.device] = "auto",
        *,
        tile: Optional[int] = None,
        max_memory: Union[str, int, None] = None,
        precision: str = "fp32",
        backend: str = "torch",
    ) -> None:
        """See the class docstring for the first arguments. Performance options (same results):

        Args:
            tile: run the network tile by tile with tiles of at most ``tile x tile`` pixels (exact:
                the result does not depend on the tile size; see :mod:`cddfuse.models.tiled`).
                ``None``: chosen automatically -- on CPU cache-sized tiles (faster), and smaller
                ones or disk-backed feature maps when the image would not fit ``max_memory``.
            max_memory: memory budget for one pair, bytes or ``"3G"``/``"512M"``; ``None``: the
                memory available when the pair is fused.
            precision: ``"fp32"`` (default), ``"tf32"`` (CUDA only: TF32 tensor cores for
                convolutions and matrix products) or ``"bf16"`` (bfloat16 autocast; outputs differ
                from fp32 by up to ~1e-2).
            backend: ``"torch"`` (default) or ``"onnx"`` (ONNX Runtime on the exported network,
                whole image at once; needs ``pip install cddfuse[onnx]``).
        """
        if method not in METHODS:
            raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if task is not None and task not in TASKS:
            raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if normalize not in NORMALIZE:
            raise UsageError(f"unknown normalisation {normalize!r}; choose one of {', '.join(NORMALIZE)}")
        if color not in COLORS:
            raise UsageError(f"unknown colour mode {color!r}; choose one of {', '.join(COLORS)}")
        self.method = method
        self.normalize = normalize
        self.color = color
        self.device = resolve_device(device)
        self.model: Optional[CDDFuse] = None
        self.info: Optional[WeightsInfo] = None
        if method == "cddfuse":
            path = Path(weights) if weights is not None else pretrained_path(task or "ivf")
            self.model, self.info = load_weights(path, device=self.device)
        elif weights is not None:
            raise UsageError(f"--weights is only used with --method cddfuse, not with {method!r}")
        self.task = task or (self.info.task if self.info and self.info.task else "ivf")
        self.residual = resolve_residual(residual, self.task, self.info) if self.model is not None else None
        from ..models.tiled import parse_memory

        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 1):
            raise UsageError(f"tile must be a positive number of pixels, got {tile!r}")
        try:
            self.max_memory = parse_memory(max_memory)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if precision not in ("fp32", "tf32", "bf16"):
            raise UsageError(f"unknown precision {precision!r}; choose fp32, tf32 or bf16")
        if precision == "tf32" and self.device.type != "cuda":
            raise UsageError("--precision tf32 needs a CUDA GPU (TF32 is a tensor-core format); use fp32 or bf16")
        if backend not in ("torch", "onnx"):
            raise UsageError(f"unknown backend {backend!r}; choose torch or onnx")
        self.tile, self.precision, self.backend = tile, precision, backend
        self._onnx: Any = None
        if backend == "onnx" and self.model is not None:
            if tile is not None or precision != "fp32":
                raise UsageError("the onnx backend runs whole images in fp32; drop --tile/--precision or use --backend torch")
            try:
                from ..models.onnx import OnnxFuser

                self._onnx = OnnxFuser(self.model, residual=self.residual)
            except ImportError as e:
                raise UsageError(f"--backend onnx: {e}") from None

    # ------------------------------------------------------------------ core
    @torch.inference_mode()
    def fuse_luminance(self, ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
        """Fuse two luminance images ``(H, W)`` float in [0, 1]; returns the raw ``(H, W)`` output.

        ``(N, H, W)`` stacks of same-size pairs are fused as one batch (``(N, H, W)`` out).
        On CPU (and whenever tiles are asked for or needed) the optimised, exactly tiled engine
        of :mod:`cddfuse.models.tiled` runs; on CUDA the whole image goes through the module, and
        through the tiled engine when it runs out of memory.
        """
        if self.method == "mean":
            return ((ya.astype(np.float32) + yb.astype(np.float32)) / 2).astype(np.float32)
        if self.method == "max":
            return np.maximum(ya, yb).astype(np.float32)
        assert self.model is not None and self.residual is not None
        if ya.shape != yb.shape or ya.ndim not in (2, 3):
            raise UsageError(f"expected two (H, W) or (N, H, W) luminance arrays of one shape, got {ya.shape} and {yb.shape}")
        if self._onnx is not None:
            return self._onnx.fuse_luminance(np.asarray(ya, np.float32), np.asarray(yb, np.float32))
        from ..models import tiled

        batched = ya.ndim == 3
        ta = torch.from_numpy(np.ascontiguousarray(ya, dtype=np.float32))
        tb = torch.from_numpy(np.ascontiguousarray(yb, dtype=np.float32))
        ta, tb = (ta[:, None], tb[:, None]) if batched else (ta[None, None], tb[None, None])
        pairs, h, w = ta.shape[0], ta.shape[2], ta.shape[3]
        cfg = self.model.config
        cuda = self.device.type == "cuda"
        with tiled.precision_context(self.precision, self.device):
            out = None
            if cuda and self.tile is None and self.max_memory is None:
                try:
                    out = self.model(ta.to(self.device), tb.to(self.device), residual=self.residual)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()  # retry below, tile by tile
            if out is None:
                budget = self.max_memory
                if budget is None and cuda:
                    budget = torch.cuda.mem_get_info(self.device)[0]
                tile, on_disk = tiled.choose_tile(h, w, device=self.device, tile=self.tile, memory_budget=budget,
                                                  config=cfg, pairs=pairs)
                dtype = torch.bfloat16 if self.precision == "bf16" else None
                out = tiled.tiled_fuse(self.model, ta, tb, self.residual, tile=tile, store="disk" if on_disk else "memory",
                                       dtype=dtype, ops="plain" if dtype is not None else "auto",
                                       memory_budget=self.max_memory)
        out = out[:, 0] if batched else out[0, 0]
        return out.float().cpu().numpy()

    def _prepare(self, a: ImageLike, b: ImageLike, resize: bool) -> Tuple[YCbCrImage, YCbCrImage]:
        """Load both sources (same size, or ``b`` resampled with ``resize``) and split off their luminance."""
        arr_a = _load_source(a, "first source (infrared/functional)")
        arr_b = _load_source(b, "second source (visible/MRI)")
        if arr_a.shape[:2] != arr_b.shape[:2]:
            if not resize:
                raise CDDFuseError(
                    f"the two sources differ in size ({_size(arr_a)} vs {_size(arr_b)}); register them first, "
                    "or pass --resize (resize=True) to resample the second to the first"
                )
            arr_b = _resize_to(arr_b, arr_a.shape[:2])
        return split_luminance(arr_a), split_luminance(arr_b)

    def _finish(self, raw: np.ndarray, sa: YCbCrImage, sb: YCbCrImage) -> FusionResult:
        """Normalise one pair's raw output (over its whole image) and put the colour back."""
        y = minmax_normalize(raw) if self.normalize == "minmax" else np.clip(raw, 0.0, 1.0).astype(np.float32)
        chroma: Optional[YCbCrImage] = None
        chroma_from: Optional[str] = None
        if self.color == "auto":
            if sb.is_color:
                chroma, chroma_from = sb, "b"
            elif sa.is_color:
                chroma, chroma_from = sa, "a"
        image = merge_luminance(y, chroma) if chroma is not None else y
        return FusionResult(image=image, luminance=y, raw=raw, residual=self.residual, chroma_from=chroma_from)

    def fuse_detailed(self, a: ImageLike, b: ImageLike, *, resize: bool = False) -> FusionResult:
        """Like :meth:`fuse`, returning the intermediate products too."""
        sa, sb = self._prepare(a, b, resize)
        return self._finish(self.fuse_luminance(sa.y, sb.y), sa, sb)

    def fuse_batch(self, pairs: Sequence[Tuple[ImageLike, ImageLike]], *, resize: bool = False) -> List[np.ndarray]:
        """Fuse several pairs; pairs of the same size go through the network as one batch.

        Same results as :meth:`fuse` on each pair (normalisation and colour stay per pair); faster
        on a GPU, where one pair does not fill the device. On CPU the tiled engine is already
        cache- and thread-efficient with one pair, so batching mainly costs memory.

        Raises:
            CDDFuseError: an unreadable pair (nothing of the batch is returned; fuse pairs one by
                one to isolate it).
        """
        prepared = [self._prepare(a, b, resize) for a, b in pairs]
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, (sa, _) in enumerate(prepared):
            groups.setdefault(sa.y.shape, []).append(i)
        results: Dict[int, np.ndarray] = {}
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
            ``color="auto"`` (the colour source's Cb/Cr on the fused luminance; the visible image's
            if both are colour).
        Raises:
            CDDFuseError: unreadable inputs, or sources of different sizes without ``resize=True``.
        """
        return self.fuse_detailed(a, b, resize=resize).image


def fuse(a: ImageLike, b: ImageLike, **kwargs: Any) -> np.ndarray:
    """One-call fusion: ``Fuser(**kwargs).fuse(a, b)`` (builds the model each call; reuse a Fuser for many pairs)."""
    resize = kwargs.pop("resize", False)
    return Fuser(**kwargs).fuse(a, b, resize=resize)
