"""The engine's primitive operations, in two backends with the same interface.

* :class:`Ops` is plain PyTorch (any device, any float dtype).
* :class:`FusedOps` calls oneDNN directly on CPU float32 (faster than the BLAS path on AMD
  processors), with ReLU6, GELU, the gate's product and the residual adds fused into the matrix
  products and convolutions as post-ops.
* :class:`BF16Ops` is mixed precision on CPUs with AMX or AVX512-BF16: activations, residual
  adds, LayerNorm, the attention's sums and the depthwise convolutions stay float32; the matrix
  products (1x1 convolutions) and the dense 3x3 convolutions run in bfloat16 through oneDNN
  (float32 accumulation inside, result rounded to bfloat16 once, then widened back).

Activations are ``(B, H, W, C)`` ("channels last"), so every 1x1 convolution is one matrix
product over pixels; 3x3 convolutions see the same memory as an NCHW tensor in ``channels_last``
format (:meth:`cddfuse.engine.geometry.TileGeometry.nchw`). :func:`make_ops` picks the backend;
:func:`precision_context` sets how CUDA computes (true float32, TF32 or bfloat16 autocast).

Example:
    >>> import torch
    >>> ops = make_ops(torch.device("cpu"), torch.float64)  # oneDNN's fused ops are float32 only
    >>> type(ops).__name__
    'Ops'
    >>> x, w = torch.ones(1, 2, 2, 3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    >>> ops.linear(x, 7 * w, relu6=True)[0, 0, 0].tolist()  # a 1x1 convolution, then ReLU6
    [6.0, 6.0, 6.0]
"""
from __future__ import annotations

import contextlib
from collections.abc import Generator

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import OPS_KINDS, PRECISIONS  # the values fuse_tensors and make_ops accept (re-exported)
from .geometry import RegionTensor, TileGeometry, intersect, to_nhwc
from .pointwise import gelu_

__all__ = ["Ops", "FusedOps", "BF16Ops", "fused_ops_available", "make_ops", "OPS_KINDS", "PRECISIONS",
           "precision_context"]




class Ops:
    """Primitive ops in plain PyTorch (any device, any float dtype)."""

    def linear(self, x: Tensor, w: Tensor, bias: Tensor | None = None, relu6: bool = False,
               add: Tensor | None = None) -> Tensor:
        """1x1 convolution over the last axis: ``x @ w.T (+ bias) (+ add)``, optionally ReLU6."""
        shape = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if add is not None:
            out = torch.addmm(add.reshape(-1, w.shape[0]), x2, w.t())
        elif bias is not None:
            out = torch.addmm(bias, x2, w.t())
        else:
            out = torch.mm(x2, w.t())
        if relu6:
            out.clamp_(0.0, 6.0)
        return out.view(*shape, w.shape[0])

    def linear_pair(self, x: Tensor, w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
        """``(linear(x, w1), linear(x, w2))``: two 1x1 convolutions of the same input."""
        return self.linear(x, w1), self.linear(x, w2)

    def conv(self, geometry: TileGeometry, x: RegionTensor, w: Tensor, groups: int = 1, pad: str = "zeros",
             post: str | None = None) -> RegionTensor:
        """Size-preserving 3x3 convolution; ``post``: None, 'relu6' or 'leaky'."""
        t, padding = geometry.nchw(x, pad)
        out = F.conv2d(t, w, padding=padding, groups=groups)
        if post == "relu6":
            out.clamp_(0.0, 6.0)
        elif post == "leaky":
            F.leaky_relu_(out, 0.01)
        return x.like(to_nhwc(out), geometry.shrink(x.valid))

    def conv_gate(self, geometry: TileGeometry, a: RegionTensor, b: RegionTensor, wa: Tensor, wb: Tensor,
                  groups: int) -> RegionTensor:
        """``gelu(conv(a)) * conv(b)`` (the gated feed-forward); ``a`` and ``b`` share their array."""
        ta, padding = geometry.nchw(a, "zeros")
        tb, _ = geometry.nchw(b, "zeros")
        out = gelu_(F.conv2d(ta, wa, padding=padding, groups=groups))
        out.mul_(F.conv2d(tb, wb, padding=padding, groups=groups))
        return a.like(to_nhwc(out), geometry.shrink(intersect(a.valid, b.valid)))

    def attend(self, x: Tensor, v: Tensor, m: Tensor) -> Tensor:
        """``x + v @ m[b]`` for each image ``b``; x, v ``(B, h, w, C)``, m ``(B, C, C)``."""
        b, h, w, c = v.shape
        if b > 1:  # image by image: a batched product's rounding depends on the thread count
            return torch.cat([self.attend(x[i:i + 1], v[i:i + 1], m[i:i + 1]) for i in range(b)])
        return torch.addmm(x.reshape(-1, c), v.reshape(-1, c), m[0]).view(b, h, w, c)


def _post_op(post: str | None) -> tuple[str, list[float]]:
    """oneDNN's name and scalars for a convolution's ``post`` activation (None, 'relu6' or 'leaky')."""
    if post == "relu6":
        return "hardtanh", [0.0, 6.0]
    if post == "leaky":
        return "leaky_relu", [0.01]
    return "none", []


class FusedOps(Ops):
    """The same ops with oneDNN primitives and fused post-ops (CPU, float32).

    oneDNN's matrix products run at ~1.2-2x the speed of the BLAS path on AMD processors, and the
    post-ops (ReLU6, GELU, the gate's product, residual adds) save a memory pass each.
    """

    def __init__(self) -> None:
        self.mkldnn = torch.ops.mkldnn

    def linear(self, x: Tensor, w: Tensor, bias: Tensor | None = None, relu6: bool = False,
               add: Tensor | None = None) -> Tensor:
        shape = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if not x2.is_contiguous():  # a channel slice: BLAS reads it in place, oneDNN would copy it
            return super().linear(x2, w, bias, relu6, add).view(*shape, w.shape[0])
        if add is not None:
            out = self.mkldnn._linear_pointwise.binary(x2, add.reshape(-1, w.shape[0]), w, bias, "add")
        elif relu6:
            out = self.mkldnn._linear_pointwise(x2, w, bias, "hardtanh", [0.0, 6.0], "")
        else:
            out = self.mkldnn._linear_pointwise(x2, w, bias, "none", [], "")
        return out.view(*shape, w.shape[0])

    def conv(self, geometry: TileGeometry, x: RegionTensor, w: Tensor, groups: int = 1, pad: str = "zeros",
             post: str | None = None) -> RegionTensor:
        t, padding = geometry.nchw(x, pad)
        attr, scalars = _post_op(post)
        out = self.mkldnn._convolution_pointwise(t, w, None, [padding, padding], [1, 1], [1, 1], groups, attr,
                                                 scalars, "")
        return x.like(to_nhwc(out), geometry.shrink(x.valid))

    def conv_gate(self, geometry: TileGeometry, a: RegionTensor, b: RegionTensor, wa: Tensor, wb: Tensor,
                  groups: int) -> RegionTensor:
        ta, padding = geometry.nchw(a, "zeros")
        tb, _ = geometry.nchw(b, "zeros")
        pd = [padding, padding]
        conv = self.mkldnn._convolution_pointwise
        if wa.shape[1] == 1:  # depthwise: GELU and the product fused into the convolutions
            gelu_a = conv(ta, wa, None, pd, [1, 1], [1, 1], groups, "gelu", [], "none")
            out = conv.binary(tb, gelu_a, wb, None, pd, [1, 1], [1, 1], groups, "mul", None, None, [], None)
        else:  # grouped (the Lite Transformer's MLP): oneDNN's fused post-ops are slow there
            out = conv(ta, wa, None, pd, [1, 1], [1, 1], groups, "none", [], "")
            gelu_(out)
            out.mul_(conv(tb, wb, None, pd, [1, 1], [1, 1], groups, "none", [], ""))
        return a.like(to_nhwc(out), geometry.shrink(intersect(a.valid, b.valid)))

    def attend(self, x: Tensor, v: Tensor, m: Tensor) -> Tensor:
        b, h, w, c = v.shape
        if b == 1:
            return self.mkldnn._linear_pointwise.binary(v.reshape(-1, c), x.reshape(-1, c), m[0].t().contiguous(),
                                                        None, "add").view(1, h, w, c)
        # image by image: a batched product would go to BLAS, whose rounding depends on the thread count
        return torch.cat([self.attend(x[i:i + 1], v[i:i + 1], m[i:i + 1]) for i in range(b)])


class BF16Ops(FusedOps):
    """Mixed precision on CPU: bfloat16 matrix products and dense convolutions, float32 elsewhere.

    Activations and the weights given to each op are float32 (the engine runs with a float32
    model); each weight gets a bfloat16 copy the first time it is used. What runs in bfloat16:
    every 1x1 convolution (the matrix products: q|k, v, the feed-forward's project-in and
    project-out, the invertible nodes' 1x1s) and the dense 3x3 convolutions (the Lite
    Transformers' composed q|k and v, their grouped feed-forward, the output head). What stays
    float32, measured on TNO and RoadScene to be where bfloat16 costs accuracy: the depthwise 3x3
    convolutions (their nine taps often cancel, so rounding their weights or inputs to bfloat16
    moved fused pixels by up to 1.2 gray levels) and the single-channel input convolution; also
    biases, residual adds, LayerNorm, the attention's Gram matrices and norms, and ``v @ M``.
    On CPUs without AMX or AVX512-BF16 oneDNN emulates bfloat16, which is slower than float32
    (:func:`cddfuse.engine.cpu.bf16_feature` tells).
    """

    def __init__(self) -> None:
        super().__init__()
        self._copies: dict[int, tuple[Tensor, Tensor]] = {}

    def _bf16(self, w: Tensor) -> Tensor:
        """The bfloat16 copy of weight ``w`` (made once; memory format kept)."""
        hit = self._copies.get(id(w))
        if hit is None or hit[0] is not w:
            hit = (w, w.to(torch.bfloat16))
            self._copies[id(w)] = hit  # the original is kept too, so its id is not reused
        return hit[1]

    @staticmethod
    def _narrow(t: Tensor) -> Tensor:
        out = t.to(torch.bfloat16)
        return out if out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last) \
            else out.contiguous()

    def linear(self, x: Tensor, w: Tensor, bias: Tensor | None = None, relu6: bool = False,
               add: Tensor | None = None) -> Tensor:
        return self._linear_narrow(self._narrow(x.reshape(-1, x.shape[-1])), x.shape[:-1], w, bias, relu6, add)

    def linear_pair(self, x: Tensor, w1: Tensor, w2: Tensor) -> tuple[Tensor, Tensor]:
        x2 = self._narrow(x.reshape(-1, x.shape[-1]))  # one bfloat16 copy for both
        shape = x.shape[:-1]
        return self._linear_narrow(x2, shape, w1), self._linear_narrow(x2, shape, w2)

    def _linear_narrow(self, x2: Tensor, shape: torch.Size, w: Tensor, bias: Tensor | None = None,
                       relu6: bool = False, add: Tensor | None = None) -> Tensor:
        n = w.shape[0]
        if relu6 and bias is None:
            out = self.mkldnn._linear_pointwise(x2, self._bf16(w), None, "hardtanh", [0.0, 6.0], "")
        else:
            out = self.mkldnn._linear_pointwise(x2, self._bf16(w), None, "none", [], "")
        wide = out.float()
        del out
        if add is not None:
            wide += add.reshape(-1, n)  # float32 residual add
        elif bias is not None:
            wide += bias
        if relu6 and bias is not None:
            wide.clamp_(0.0, 6.0)
        return wide.view(*shape, n)

    def conv(self, geometry: TileGeometry, x: RegionTensor, w: Tensor, groups: int = 1, pad: str = "zeros",
             post: str | None = None) -> RegionTensor:
        if w.shape[1] == 1:  # depthwise, or the one-channel input convolution: float32
            return super().conv(geometry, x, w, groups, pad, post)
        t, padding = geometry.nchw(x, pad)
        attr, scalars = _post_op(post)
        out = self.mkldnn._convolution_pointwise(self._narrow(t), self._bf16(w), None, [padding, padding], [1, 1],
                                                 [1, 1], groups, attr, scalars, "")
        return x.like(to_nhwc(out.float()), geometry.shrink(x.valid))

    def conv_gate(self, geometry: TileGeometry, a: RegionTensor, b: RegionTensor, wa: Tensor, wb: Tensor,
                  groups: int) -> RegionTensor:
        if wa.shape[1] == 1:  # depthwise (the Restormer blocks' feed-forward): float32
            return super().conv_gate(geometry, a, b, wa, wb, groups)
        ta, padding = geometry.nchw(a, "zeros")
        tb, _ = geometry.nchw(b, "zeros")
        pd = [padding, padding]
        conv = self.mkldnn._convolution_pointwise
        out = conv(self._narrow(ta), self._bf16(wa), None, pd, [1, 1], [1, 1], groups, "none", [], "").float()
        gelu_(out)
        out.mul_(conv(self._narrow(tb), self._bf16(wb), None, pd, [1, 1], [1, 1], groups, "none", [], ""))
        return a.like(to_nhwc(out), geometry.shrink(intersect(a.valid, b.valid)))

    def attend(self, x: Tensor, v: Tensor, m: Tensor) -> Tensor:
        return Ops.attend(self, x, v, m)  # float32: its result is added to the residual stream


def fused_ops_available() -> bool:
    """Whether this PyTorch build has the oneDNN pointwise ops :class:`FusedOps` calls."""
    try:
        mkldnn = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
        return mkldnn and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
            and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except Exception:  # pragma: no cover
        return False


def make_ops(device: torch.device | str, dtype: torch.dtype, kind: str = "auto") -> Ops:
    """``kind``: 'auto' (oneDNN fused ops on CPU float32 when available), 'fused', 'plain' or 'bf16'
    (:class:`BF16Ops`: CPU float32 model, bfloat16 products)."""
    if kind not in OPS_KINDS:
        raise ValueError(f"ops must be one of {OPS_KINDS}, got {kind!r}")
    if kind == "plain":
        return Ops()
    ok = torch.device(device).type == "cpu" and dtype == torch.float32 and fused_ops_available()
    if kind in ("fused", "bf16") and not ok:
        raise ValueError(f"{kind} oneDNN ops need a CPU float32 model and a PyTorch build with oneDNN")
    if kind == "bf16":
        return BF16Ops()
    return FusedOps() if ok else Ops()


@contextlib.contextmanager
def precision_context(precision: str, device: str | torch.device) -> Generator[None, None, None]:
    """On CUDA: ``fp32`` is true float32 (TF32 off for convolutions and matrix products),
    ``tf32`` turns TF32 on, ``bf16`` adds bfloat16 autocast. Elsewhere a no-op (bf16 on CPU is a
    bfloat16 ``dtype`` for :func:`~cddfuse.engine.engine.tiled_fuse` instead)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        yield
        return
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
