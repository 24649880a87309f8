"""High-level fusion: files, arrays or PIL images in, a fused numpy image out."""
from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..engine.cpu import bf16_feature
from ..errors import CDDFuseWarning, UsageError
from ..models.cddfuse import CDDFuse
from ..models.lite import CDDFuseLite
from ..models.pretrained import pretrained_path
from ..models.weights import WeightsInfo, load_lite_weights, load_weights
from ..options import (
    BACKENDS,
    DEFAULT_MAX_PIXELS,
    METHODS,
    NETWORK_METHODS,
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
from . import stages
from .policy import fuse_rule, minmax_normalize, resolve_residual
from .stages import SMALL_TILE, FusionOptions, ImageLike, PreparedPair

if TYPE_CHECKING:
    from ..align import Alignment

__all__ = ["Fuser", "FusionResult", "FusionOptions", "fuse", "resolve_device", "resolve_residual",
           "minmax_normalize", "METHODS"]


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


def cpu_bf16_feature() -> str | None:
    """The CPU feature that makes bfloat16 fast here (``"amx_bf16"`` or ``"avx512_bf16"``), or None
    (:func:`cddfuse.engine.cpu.bf16_feature`)."""
    return bf16_feature()


@dataclass
class FusionResult:
    """Output of :meth:`Fuser.fuse_detailed`.

    Attributes:
        image: float32 in [0, 1]; ``(H, W)`` gray or ``(H, W, 3)`` RGB.
        luminance: the fused luminance ``(H, W)`` after normalisation.
        raw: the network's (or rule's) output ``(H, W)`` before normalisation.
        residual: residual mode used (``None`` for the simple rules).
        chroma_from: ``"a"``, ``"b"`` or ``None`` (gray output).
        alignment: the pair's :class:`~cddfuse.align.Alignment` (``align`` option), else ``None``.
    """

    image: np.ndarray
    luminance: np.ndarray
    raw: np.ndarray
    residual: str | None
    chroma_from: str | None
    alignment: Alignment | None = None


@dataclass(frozen=True)
class _Network:
    """What a Fuser loads once and every Fuser made from it by :meth:`Fuser.with_options` shares."""

    method: Method
    task: Task
    device: torch.device
    model: CDDFuse | CDDFuseLite | None
    info: WeightsInfo | None
    residual: ResidualMode | None
    backend: Backend
    onnx: Any


#: The option keywords of :class:`Fuser` and their defaults (those of :class:`FusionOptions`).
_OPTION_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(FusionOptions)}


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
        options: the fusion options as one :class:`~cddfuse.fusion.stages.FusionOptions` (keyword): it
            replaces the option keywords (``normalize``, ``color``, ``chroma``, ``tile``, ``max_memory``,
            ``precision``, ``max_pixels``, ``align``, ``align_min_confidence``), which must then be left
            at their defaults. They are in ``fuser.options`` either way; :meth:`with_options` makes a
            Fuser with other options that shares this one's network.

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
        options: FusionOptions | None = None,
    ) -> None:
        """Load the network once; see the class docstring for the first arguments.

        Performance options (same results):

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
                pair's :class:`~cddfuse.align.Alignment` is in ``last_alignment`` (and each pair's in
                :attr:`FusionResult.alignment`).
            options: all of these (and ``normalize``, ``color``, ``chroma``) as one
                :class:`~cddfuse.fusion.stages.FusionOptions`.
        """
        given: dict[str, object] = {
            "normalize": normalize, "color": color, "chroma": chroma, "align": align,
            "align_min_confidence": align_min_confidence, "max_pixels": max_pixels, "tile": tile,
            "max_memory": max_memory, "precision": precision}
        if options is None:
            options = FusionOptions(normalize=normalize, color=color, chroma=chroma, align=align,
                                    align_min_confidence=align_min_confidence, max_pixels=max_pixels, tile=tile,
                                    max_memory=max_memory, precision=precision)
        else:
            if not isinstance(options, FusionOptions):
                raise UsageError.invalid("options", options, "must be a cddfuse.fusion.FusionOptions")
            both = [name for name, value in given.items() if value != _OPTION_DEFAULTS[name]]
            if both:
                raise UsageError(f"give the fusion options either as options= or as keywords, not both "
                                 f"({', '.join(both)} given beside options=)")
            tile, max_memory = options.tile, options.max_memory
        check_choice("method", method, METHODS)
        if method == "lite":  # named as given (e.g. max_memory='1G'), before any weights are read
            _check_lite_options(residual, tile, max_memory)
        if task is not None:
            check_choice("task", task, TASKS)
        check_choice("backend", backend, BACKENDS)
        self._net = _load_network(weights, task, method, residual, resolve_device(device), backend, options)
        self.options = self._checked(options, stacklevel=3)
        #: an event that stops the network between tiles when set (:class:`cddfuse.engine.FusionCancelled`),
        #: for calls that pass no ``cancel=`` of their own
        self.cancel: threading.Event | None = None
        self.last_alignment: Alignment | None = None
        self._warned_flat = False

    # ------------------------------------------------------------------ options
    def with_options(self, options: FusionOptions | None = None, **changes: Any) -> Fuser:
        """A Fuser with other fusion options that shares this one's network (nothing is loaded again):
        ``options``, or this one's options with ``changes`` (:func:`dataclasses.replace`; checked).

        Example:
            >>> gray = Fuser(method="max").with_options(color="gray", normalize="none")
            >>> gray.options.color, gray.options.normalize, gray.method
            ('gray', 'none', 'max')
        """
        new = dataclasses.replace(options if options is not None else self.options, **changes)
        fuser = type(self).__new__(type(self))  # a subclass stays itself
        fuser._net = self._net
        fuser.options = fuser._checked(new, stacklevel=3, previous=self.options)
        fuser.cancel, fuser.last_alignment, fuser._warned_flat = self.cancel, None, False
        return fuser

    def _checked(self, options: FusionOptions, *, stacklevel: int, previous: FusionOptions | None = None
                 ) -> FusionOptions:
        """``options`` if this network can run them (device, method and backend decide), else a UsageError."""
        net = self._net
        if net.method == "lite":
            _check_lite_options("auto", options.tile, options.max_memory)
        tile = options.tile
        if tile is not None and tile < SMALL_TILE and (previous is None or previous.tile != tile):
            text = ("{} is very small: every tile recomputes a border around itself, so small tiles multiply "
                    "the work (128 is fastest on CPU)")
            warnings.warn(CDDFuseWarning(text.format(f"tile={tile}"), cli=text.format(f"--tile {tile}")),
                          stacklevel=stacklevel)
        precision = options.precision
        if precision == "tf32" and net.device.type != "cuda":
            raise UsageError.invalid("precision", precision,
                                     "needs a CUDA GPU (TF32 is a tensor-core format); use fp32 or bf16")
        if precision == "bf16" and net.device.type == "cpu" and net.model is not None \
                and cpu_bf16_feature() is None:
            raise UsageError.invalid("precision", precision, "on CPU needs AMX or AVX512-BF16, which this processor "
                                     "lacks (bfloat16 would be slower than fp32 here); use fp32, or a CUDA GPU")
        if net.onnx is not None and (tile is not None or precision != "fp32"):
            raise UsageError.invalid("backend", net.backend, "runs whole images in fp32; drop tile/precision, "
                                     "or use backend='torch'")
        return options

    # the network's facts, shared with every Fuser made by with_options
    @property
    def method(self) -> Method:
        return self._net.method

    @property
    def task(self) -> Task:
        """The task: the one asked for, else the weights', else ``"ivf"``."""
        return self._net.task

    @property
    def device(self) -> torch.device:
        return self._net.device

    @property
    def model(self) -> CDDFuse | CDDFuseLite | None:
        """The network (``None`` for the rules)."""
        return self._net.model

    @property
    def info(self) -> WeightsInfo | None:
        """What the weights file says about itself (``None`` for the rules)."""
        return self._net.info

    @property
    def residual(self) -> ResidualMode | None:
        """The residual mode the exact network runs with; ``None`` for the rules and CDDFuse-lite (built in)."""
        return self._net.residual

    @property
    def backend(self) -> Backend:
        return self._net.backend

    # the options, read-only (change them with with_options)
    @property
    def normalize(self) -> Normalize:
        return self.options.normalize

    @property
    def color(self) -> ColorMode:
        return self.options.color

    @property
    def chroma(self) -> ChromaMode:
        """The colour mode, ``"auto"`` decided for :attr:`task` (``"saturation"`` or ``"ycbcr"``)."""
        return self.options.resolved_chroma(self.task)

    @property
    def align(self) -> AlignChoice:
        return self.options.align

    @property
    def align_min_confidence(self) -> float:
        return self.options.align_min_confidence

    @property
    def max_pixels(self) -> int | None:
        return self.options.max_pixels

    @property
    def tile(self) -> int | None:
        return self.options.tile

    @property
    def max_memory(self) -> int | None:
        """The memory budget in bytes (``None``: automatic)."""
        return self.options.max_memory

    @property
    def precision(self) -> Precision:
        return self.options.precision

    # ------------------------------------------------------------------ core
    @torch.inference_mode()
    def fuse_luminance(self, ya: np.ndarray, yb: np.ndarray, *, cancel: threading.Event | None = None
                       ) -> np.ndarray:
        """The network stage: fuse two luminance images ``(H, W)`` float in [0, 1]; returns the raw
        ``(H, W)`` output (float32, before normalisation).

        ``(N, H, W)`` stacks of same-size pairs are fused as one batch (``(N, H, W)`` out).
        CDDFuse runs through :func:`cddfuse.engine.fuse_tensors`: on CPU (and whenever tiles
        are asked for or needed) the optimised, exactly tiled engine; on CUDA the whole image
        through the module, and through the tiled engine when it runs out of memory. CDDFuse-lite
        runs through :func:`cddfuse.engine.lite.run_lite` (the module on the whole image). ``cancel``
        (default :attr:`cancel`) stops the exact engine between tiles when set.
        """
        net, options = self._net, self.options
        if net.model is None:
            return fuse_rule(net.method, ya, yb)
        if ya.shape != yb.shape or ya.ndim not in (2, 3):
            raise UsageError(f"expected two (H, W) or (N, H, W) luminance arrays of one shape, got {ya.shape} "
                             f"and {yb.shape}")
        if net.onnx is not None:
            return net.onnx.fuse_luminance(np.asarray(ya, np.float32), np.asarray(yb, np.float32))
        from ..engine import fuse_tensors

        batched = ya.ndim == 3
        ta = torch.from_numpy(np.ascontiguousarray(ya, dtype=np.float32))
        tb = torch.from_numpy(np.ascontiguousarray(yb, dtype=np.float32))
        ta, tb = (ta[:, None], tb[:, None]) if batched else (ta[None, None], tb[None, None])
        if isinstance(net.model, CDDFuseLite):
            from ..engine.lite import run_lite

            out = run_lite(net.model, ta, tb, precision=options.precision)
        else:
            assert net.residual is not None  # set whenever the exact model is
            from ..engine.tuning import settings

            workers = settings().workers if net.device.type == "cpu" else None  # speed only, never the result
            out = fuse_tensors(net.model, ta, tb, net.residual, device=net.device, tile=options.tile,
                               max_memory=options.max_memory, precision=options.precision, workers=workers,
                               cancel=cancel if cancel is not None else self.cancel)
        out = out[:, 0] if batched else out[0, 0]
        return out.float().cpu().numpy()

    def prepare(self, a: ImageLike, b: ImageLike, *, resize: bool = False) -> PreparedPair:
        """The first stages with this Fuser's options: :func:`~cddfuse.fusion.stages.prepare`, then
        :func:`~cddfuse.fusion.stages.align` (which splits off the luminance)."""
        return stages.align(stages.prepare(a, b, self.options, resize=resize), self.options)

    def finish(self, raw: np.ndarray, pair: PreparedPair) -> FusionResult:
        """The last stages for one pair: :func:`~cddfuse.fusion.stages.normalise` (over its whole image;
        a flat result is kept as computed, with one warning per Fuser), then
        :func:`~cddfuse.fusion.stages.colour`."""
        done = stages.normalise(raw, pair, self.options)
        if done.flat is not None and not self._warned_flat:
            self._warned_flat = True
            text = (f"{done.flat}: the result is kept as computed, not stretched to the full range by min-max "
                    "normalisation (which would show only noise); {} does the same without this warning")
            warnings.warn(CDDFuseWarning(text.format("normalize='none'"), cli=text.format("--normalize none")),
                          stacklevel=3)
        coloured = stages.colour(done.luminance, pair, self.options, self.task)
        return FusionResult(image=coloured.image, luminance=done.luminance, raw=raw, residual=self.residual,
                            chroma_from=coloured.chroma_from, alignment=pair.alignment)

    def fuse_detailed(self, a: ImageLike, b: ImageLike, *, resize: bool = False,
                      cancel: threading.Event | None = None) -> FusionResult:
        """Like :meth:`fuse`, returning the intermediate products too."""
        pair = self.prepare(a, b, resize=resize)
        self.last_alignment = pair.alignment
        return self.finish(self.fuse_luminance(pair.a.y, pair.b.y, cancel=cancel), pair)

    def fuse_batch(self, pairs: Sequence[tuple[ImageLike, ImageLike]], *, resize: bool = False,
                   cancel: threading.Event | None = None) -> list[np.ndarray]:
        """Fuse several pairs; pairs of the same size go through the network as one batch.

        Same results as :meth:`fuse` on each pair (normalisation and colour stay per pair); faster
        on a GPU, where one pair does not fill the device. On CPU the tiled engine is already
        cache- and thread-efficient with one pair, so batching mainly costs memory.

        Raises:
            CDDFuseError: an unreadable pair (nothing of the batch is returned; fuse pairs one by
                one to isolate it).
        """
        prepared = [self.prepare(a, b, resize=resize) for a, b in pairs]
        if prepared:
            self.last_alignment = prepared[-1].alignment
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, pair in enumerate(prepared):
            groups.setdefault(pair.a.y.shape, []).append(i)
        results: dict[int, np.ndarray] = {}
        for idx in groups.values():  # (N, H, W) stacks, N = 1 included
            raws = self.fuse_luminance(np.stack([prepared[i].a.y for i in idx]),
                                       np.stack([prepared[i].b.y for i in idx]), cancel=cancel)
            for i, raw in zip(idx, raws):
                results[i] = self.finish(raw, prepared[i]).image
        return [results[i] for i in range(len(prepared))]

    def fuse(self, a: ImageLike, b: ImageLike, *, resize: bool = False,
             cancel: threading.Event | None = None) -> np.ndarray:
        """Fuse ``a`` (infrared/functional) with ``b`` (visible/MRI).

        Returns:
            float32 in [0, 1]: ``(H, W)`` gray, or ``(H, W, 3)`` RGB when a source is colour and
            ``color="auto"`` (the colour source's colour on the fused luminance, see ``chroma``; the
            visible image's if both are colour).

        Raises:
            CDDFuseError: unreadable inputs, or sources of different sizes without ``resize=True``
                (:class:`~cddfuse.errors.SizeMismatch`).
        """
        return self.fuse_detailed(a, b, resize=resize, cancel=cancel).image


def _load_network(weights: str | os.PathLike[str] | None, task: Task | None, method: Method,
                  residual: ResidualChoice, device: torch.device, backend: Backend,
                  options: FusionOptions) -> _Network:
    """Load the weights of ``method`` (none for the rules) and decide the task and residual mode."""
    model: CDDFuse | CDDFuseLite | None = None
    info: WeightsInfo | None = None
    if method in NETWORK_METHODS:
        path = Path(weights) if weights is not None else pretrained_path(task or "ivf", method)
        if method == "lite":
            from ..engine.lite import prepare_lite

            lite, info = load_lite_weights(path, device=device)
            model = prepare_lite(lite)
        else:
            model, info = load_weights(path, device=device)
    elif weights is not None:
        raise UsageError(f"weights are only used with method='cddfuse' or 'lite', not {method!r}",
                         cli=f"--weights is only used with --method cddfuse or lite, not with --method {method}")
    chosen: Task = task or (info.task if info is not None and info.task else "ivf")
    # the residual mode the exact network is run with; None for the rules and for CDDFuse-lite (built in)
    mode = resolve_residual(residual, chosen, info) if isinstance(model, CDDFuse) else None
    onnx: Any = None
    if backend == "onnx" and model is not None:
        if options.tile is not None or options.precision != "fp32":
            raise UsageError.invalid("backend", backend, "runs whole images in fp32; drop tile/precision, "
                                     "or use backend='torch'")
        try:
            from ..engine.onnx import OnnxFuser

            onnx = OnnxFuser(model, residual=mode)  # None: lite, residual built in
        except ImportError as e:
            raise UsageError.invalid("backend", backend, str(e)) from None
    return _Network(method, chosen, device, model, info, mode, backend, onnx)


def _check_lite_options(residual: str, tile: object, max_memory: object) -> None:
    """Options of the exact network that CDDFuse-lite has no use for: one line each."""
    if residual != "auto":
        raise UsageError.invalid("residual", residual, "CDDFuse-lite has its teacher's residual built in; leave it "
                                 "at auto, or use the cddfuse method")
    for name, value in (("tile", tile), ("max_memory", max_memory)):
        if value is not None:
            raise UsageError.invalid(name, value, "only the exact engine takes it: CDDFuse-lite runs whole images "
                                     "and bounds its own memory; drop it, or use the cddfuse method")


def fuse(
    a: ImageLike,
    b: ImageLike,
    *,
    resize: bool = False,
    weights: str | os.PathLike[str] | None = None,
    task: Task | None = None,
    method: Method = "cddfuse",
    residual: ResidualChoice = "auto",
    normalize: Normalize = "minmax",
    color: ColorMode = "auto",
    device: str | torch.device = "auto",
    tile: int | None = None,
    max_memory: str | int | None = None,
    precision: Precision = "fp32",
    backend: Backend = "torch",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    chroma: ChromaMode = "auto",
    align: AlignChoice = "none",
    align_min_confidence: float = 0.5,
    options: FusionOptions | None = None,
) -> np.ndarray:
    """One-call fusion: ``Fuser(...).fuse(a, b, resize=resize)`` with the keywords of :class:`Fuser` (builds
    the model each call; reuse a Fuser for many pairs)."""
    fuser = Fuser(weights=weights, task=task, method=method, residual=residual, normalize=normalize, color=color,
                  device=device, tile=tile, max_memory=max_memory, precision=precision, backend=backend,
                  max_pixels=max_pixels, chroma=chroma, align=align, align_min_confidence=align_min_confidence,
                  options=options)
    return fuser.fuse(a, b, resize=resize)
