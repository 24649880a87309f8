"""The network's blocks on tile arrays: Restormer and Lite Transformer blocks, INN nodes, the head.

Each block is split at its attention: ``*_qk`` computes the q|k array whose statistics the
attention needs (:mod:`cddfuse.engine.attention`), ``*_apply`` the rest of the block once the
attention matrix is known. Inputs and outputs are :class:`~cddfuse.engine.geometry.RegionTensor`
arrays; every 3x3 convolution shrinks the valid region by one pixel on sides inside the image.
The primitive operations come from an :class:`~cddfuse.engine.ops.Ops` backend.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Region, RegionTensor, TileGeometry, intersect
from .ops import Ops
from .packing import (
    FastWeights,
    FeedForwardWeights,
    INNNodeWeights,
    InvertedResidualWeights,
    LayerNormWeights,
    LiteTransformerWeights,
    RestormerBlockWeights,
)

__all__ = ["Blocks"]


def _layer_norm(x: Tensor, weights: LayerNormWeights) -> Tensor:
    """LayerNorm over the channels (last axis), one fused kernel."""
    return F.layer_norm(x, (x.shape[-1],), weights.weight, weights.bias, weights.eps)


class Blocks:
    """The network's pieces on tile arrays, with a given set of primitive ops."""

    def __init__(self, geometry: TileGeometry, ops: Ops) -> None:
        self.geometry, self.ops = geometry, ops

    def attend(self, x: RegionTensor, v: RegionTensor, m: Tensor) -> RegionTensor:
        """``x + v @ m`` (the attention's output projection and residual add); same array."""
        return v.like(self.ops.attend(x.tensor, v.tensor, m), intersect(x.valid, v.valid))

    def ffn(self, weights: FeedForwardWeights, y: RegionTensor) -> RegionTensor:
        """``y + project_out(gelu(x1) * x2)``, ``x1|x2 = conv3x3(project_in(LN(y)))``."""
        ops = self.ops
        u = _layer_norm(y.tensor, weights.ln)
        ta, tb = ops.linear_pair(u, weights.w_a, weights.w_b)
        a, b = y.like(ta), y.like(tb)
        del ta, tb
        del u
        groups = weights.dw_a.shape[0] // weights.dw_a.shape[1]
        gate = ops.conv_gate(self.geometry, a, b, weights.dw_a, weights.dw_b, groups)
        del a, b
        return gate.like(ops.linear(gate.tensor, weights.w_out, add=y.tensor))

    def restormer_qk(self, weights: RestormerBlockWeights, x: RegionTensor) -> RegionTensor:
        """q|k (2C channels) of a Restormer block's attention."""
        qk = x.like(self.ops.linear(_layer_norm(x.tensor, weights.ln1), weights.w_qk))
        return self.ops.conv(self.geometry, qk, weights.dw_qk, groups=weights.dw_qk.shape[0])

    def restormer_apply(self, weights: RestormerBlockWeights, m: Tensor, x: RegionTensor) -> RegionTensor:
        """A Restormer block whose attention matrix ``m`` is known (valid region: two less)."""
        v = x.like(self.ops.linear(_layer_norm(x.tensor, weights.ln1), weights.w_v))
        v = self.ops.conv(self.geometry, v, weights.dw_v, groups=weights.dw_v.shape[0])
        y = self.attend(x, v, m)
        del v
        return self.ffn(weights.ffn, y)

    def lite_qk(self, weights: LiteTransformerWeights, x: RegionTensor) -> RegionTensor:
        """q|k of a Lite Transformer's attention (composed 3x3 convolution)."""
        return self.ops.conv(self.geometry, x.like(_layer_norm(x.tensor, weights.ln1)), weights.wc_qk)

    def lite_apply(self, weights: LiteTransformerWeights, m: Tensor, x: RegionTensor) -> RegionTensor:
        """A Lite Transformer block whose attention matrix ``m`` is known (valid region: two less)."""
        v = self.ops.conv(self.geometry, x.like(_layer_norm(x.tensor, weights.ln1)), weights.wc_v)
        y = self.attend(x, v, m)
        del v
        return self.ffn(weights.ffn, y)

    def inverted_residual(self, weights: InvertedResidualWeights, x: RegionTensor) -> tuple[list[Tensor], Region]:
        """1x1, ReLU6, reflection-padded depthwise 3x3, ReLU6, 1x1 (rho and eta: two 1x1 at the end)."""
        ops = self.ops
        hidden = x.like(ops.linear(x.tensor, weights.w1, relu6=True))
        hidden = ops.conv(self.geometry, hidden, weights.dw, groups=weights.dw.shape[0], pad="reflect", post="relu6")
        n = weights.w2[0].shape[1]
        outputs = [ops.linear(hidden.tensor[..., i * n:(i + 1) * n], w) for i, w in enumerate(weights.w2)]
        return outputs, hidden.valid

    def inn_node(self, weights: INNNodeWeights, x: RegionTensor) -> RegionTensor:
        """One invertible node on the full C channels (z1 | z2) (valid region: two less)."""
        z = self.ops.linear(x.tensor, weights.ws, bias=weights.bs)
        half = z.shape[-1] // 2
        z1, z2 = z[..., :half], z[..., half:]
        (phi,), v1 = self.inverted_residual(weights.phi, x.like(z1))
        z2n = z2 + phi
        del phi
        (rho, eta), v2 = self.inverted_residual(weights.rho_eta, x.like(z2n, v1))
        out = torch.empty_like(z)
        rho.exp_()
        torch.mul(z1, rho, out=out[..., :half])
        del rho
        out[..., :half] += eta
        out[..., half:] = z2n
        return x.like(out, v2)

    def head(self, weights: FastWeights, y: RegionTensor) -> RegionTensor:
        """Decoder output convolutions (before residual and sigmoid)."""
        o = self.ops.conv(self.geometry, y, weights.out1, post="leaky")
        return self.ops.conv(self.geometry, o, weights.out2)
