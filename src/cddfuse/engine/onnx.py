"""ONNX export of CDDFuse and an ONNX Runtime fuser (optional extras: ``pip install cddfuse[onnx]``).

``onnx`` and ``onnxruntime`` are imported only when these functions are called.

The graph takes ``a`` and ``b`` of shape ``(N, 1, H, W)`` float32 (any N, H, W) and returns the
network output ``(N, 1, H, W)`` after the sigmoid, with the residual mode fixed at export time.
ONNX Runtime runs the whole image at once (no tiling): use the torch backend for large images.

Example (skipped where the extras are not installed):
    >>> import pytest
    >>> _ = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    >>> import tempfile, numpy as np, torch
    >>> from cddfuse.models import CDDFuse, CDDFuseConfig
    >>> _ = torch.manual_seed(0)
    >>> model = CDDFuse(CDDFuseConfig(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1)).eval()
    >>> ya, yb = np.random.default_rng(0).random((2, 24, 30), dtype=np.float32)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = export_onnx(model, f"{folder}/tiny.onnx", residual="vis")
    ...     fused = OnnxFuser(path, threads=1).fuse_luminance(ya, yb)
    ...     checks = check_onnx(path, model, residual="vis", threads=1)  # ONNX Runtime vs torch, two sizes
    >>> [(c.shape, c.passed()) for c in checks]
    [((1, 1, 61, 83), True), ((2, 1, 96, 72), True)]
    >>> with torch.inference_mode():
    ...     want = model(torch.from_numpy(ya)[None, None], torch.from_numpy(yb)[None, None])[0, 0].numpy()
    >>> fused.shape, bool(np.abs(fused - want).max() <= 1e-4)
    ((24, 30), True)
"""
from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .._fileutil import PathLike
from ..options import RESIDUAL_MODES, ResidualMode

__all__ = ["export_onnx", "OnnxFuser", "onnx_available", "check_onnx", "OnnxCheck", "CHECK_SIZES", "CHECK_TOLERANCE"]

OPSET = 17  # LayerNormalization is a single op from opset 17
#: Shapes ``(N, H, W)`` on which :func:`check_onnx` compares ONNX Runtime with torch by default: two
#: sizes that differ from the tracing size (64x64) and from each other, odd sides and a batch of two.
CHECK_SIZES: tuple[tuple[int, int, int], ...] = ((1, 61, 83), (2, 96, 72))
#: Largest absolute difference :func:`check_onnx` accepts between the two runtimes (outputs in (0, 1)).
CHECK_TOLERANCE = 1e-4


def onnx_available() -> bool:
    """Whether ONNX Runtime is installed (``pip install cddfuse[onnx]``)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _Wrapped(nn.Module):
    def __init__(self, model: nn.Module, residual: ResidualMode | None) -> None:
        super().__init__()
        self.model = model
        self.residual = residual

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return _forward(self.model, a, b, self.residual)


def _forward(model: nn.Module, a: Tensor, b: Tensor, residual: ResidualMode | None) -> Tensor:
    """CDDFuse takes the residual mode; CDDFuse-lite (``residual=None``) has its residual built in."""
    return model(a, b) if residual is None else model(a, b, residual=residual)


def export_onnx(model: nn.Module, path: PathLike, *, residual: ResidualMode | None = "vis", opset: int = OPSET,
                sample_size: tuple[int, int] = (64, 64), metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` (a :class:`~cddfuse.models.cddfuse.CDDFuse`, or a CDDFuse-lite
    :class:`~cddfuse.models.lite.CDDFuseLite`) as ONNX with dynamic N, H, W.

    Args:
        model: the network (exported in float32 on CPU; the module itself is not modified).
        path: destination ``.onnx`` file.
        residual: residual mode baked into the graph (``"vis"``, ``"sum"`` or ``"none"``); ``None`` for
            CDDFuse-lite, whose ``forward(a, b)`` has its residual built in.
        opset: ONNX opset (>= 17).
        sample_size: ``(H, W)`` of the example inputs used for tracing.
        metadata: strings stored in the file's ``metadata_props`` (read back with
            ``onnxruntime.InferenceSession(path).get_modelmeta().custom_metadata_map``).
    """
    import copy

    if residual is not None and residual not in RESIDUAL_MODES:
        raise ValueError(f"unknown residual mode {residual!r}")
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    wrapped = _Wrapped(net, residual).eval()
    h, w = sample_size
    a = torch.rand(1, 1, h, w)
    b = torch.rand(1, 1, h, w)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "n", 2: "h", 3: "w"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(wrapped, (a, b), str(dest), input_names=["a", "b"], output_names=["fused"],
                          dynamic_axes={"a": axes, "b": axes, "fused": axes}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    if metadata:
        import onnx

        proto = onnx.load(str(dest))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.save(proto, str(dest))
    return dest


@dataclass(frozen=True)
class OnnxCheck:
    """One comparison of :func:`check_onnx`: input shape ``(N, 1, H, W)`` and the largest absolute difference."""

    shape: tuple[int, int, int, int]
    max_abs_diff: float

    def passed(self, tolerance: float = CHECK_TOLERANCE) -> bool:
        return self.max_abs_diff <= tolerance


def check_onnx(path: PathLike, model: nn.Module, *, residual: ResidualMode | None,
               sizes: Sequence[tuple[int, int, int]] = CHECK_SIZES, seed: int = 0,
               threads: int | None = None) -> list[OnnxCheck]:
    """Run the exported file with ONNX Runtime (CPU) and ``model`` with torch on the same random inputs.

    Args:
        path: the ``.onnx`` file.
        model: the network it was exported from (run in float32 on CPU, through the module itself, not the
            tiled engine: the reference is the plain forward pass).
        residual: the residual mode the file was exported with (``None``: CDDFuse-lite).
        sizes: ``(N, H, W)`` shapes to try (default :data:`CHECK_SIZES`: two sizes other than the tracing
            size, so that the dynamic axes are exercised).
        seed: seed of the uniform [0, 1) inputs.
        threads: ONNX Runtime intra-op threads (default ``torch.get_num_threads()``).

    Returns:
        one :class:`OnnxCheck` per size; a non-finite output counts as an infinite difference.
    """
    import copy

    runner = OnnxFuser(path, threads=threads, providers=["CPUExecutionProvider"])
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    rng = np.random.default_rng(seed)
    checks = []
    for n, h, w in sizes:
        a, b = rng.random((2, n, 1, h, w), dtype=np.float32)
        got = runner.run(a, b)
        with torch.inference_mode():
            want = _forward(net, torch.from_numpy(a), torch.from_numpy(b), residual).numpy()
        diff = float(np.abs(got - want).max()) if got.shape == want.shape and np.isfinite(got).all() else float("inf")
        checks.append(OnnxCheck((n, 1, h, w), diff))
    return checks


class OnnxFuser:
    """Run an exported CDDFuse (or CDDFuse-lite) with ONNX Runtime.

    Args:
        model_or_path: an ``.onnx`` file from :func:`export_onnx`, or a CDDFuse or CDDFuse-lite module
            (exported to a temporary file with ``residual``).
        residual: residual mode when a module is given (``None`` for CDDFuse-lite).
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
    """

    def __init__(self, model_or_path: PathLike | nn.Module, *, residual: ResidualMode | None = "vis",
                 threads: int | None = None, providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise ImportError("the ONNX backend needs onnxruntime: pip install 'cddfuse[onnx]'") from e
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if isinstance(model_or_path, nn.Module):
            self._tmp = tempfile.TemporaryDirectory(prefix="cddfuse-onnx-")
            path = export_onnx(model_or_path, Path(self._tmp.name) / "cddfuse.onnx", residual=residual)
        else:
            path = Path(model_or_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        avail = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.path = path

    def run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(N, 1, H, W)`` float32 arrays -> ``(N, 1, H, W)`` output."""
        out = self.session.run(["fused"], {"a": np.ascontiguousarray(a, dtype=np.float32),
                                           "b": np.ascontiguousarray(b, dtype=np.float32)})
        return out[0]

    def fuse_luminance(self, ya: np.ndarray, yb: np.ndarray) -> np.ndarray:
        """``(H, W)`` (or ``(N, H, W)``) luminance images in [0, 1] -> raw output of the same shape."""
        batched = ya.ndim == 3
        a = ya[:, None] if batched else ya[None, None]
        b = yb[:, None] if batched else yb[None, None]
        out = self.run(a, b)
        return out[:, 0] if batched else out[0, 0]

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
