"""Weights of a :class:`~cddfuse.models.cddfuse.CDDFuse` packed for the engine.

:meth:`FastWeights.from_model` reads the module once and keeps, per block, the tensors the engine's
ops take: 1x1 convolutions as ``(out, in)`` matrices, 3x3 convolutions in ``channels_last``
format, the q|k and v rows of each attention's projections apart (the pass that gathers an
attention's statistics computes q and k only; the pass that applies it computes v only), and rho
and eta of an invertible node side by side (one matrix product and one depthwise convolution for
both).

**Fewer FLOPs, same function.** The Lite Transformer's ``qkv1`` (1x1, no bias) followed by
``qkv2`` (3x3, zero padding) is linear with nothing between, so the two are composed into one
3x3 convolution C -> 3C (in float64): 110,592 instead of 344,064 multiply-adds per pixel (zero
padding commutes with a bias-free 1x1 convolution, so borders are exact too).

Example:
    >>> import torch
    >>> from cddfuse.models import CDDFuse, CDDFuseConfig
    >>> _ = torch.manual_seed(0)
    >>> model = CDDFuse(CDDFuseConfig(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1)).eval()
    >>> weights = FastWeights.from_model(model)
    >>> weights.dim, len(weights.enc), tuple(weights.lt_enc.wc_qk.shape)  # q|k rows of the composed 3x3
    (8, 1, (16, 8, 3, 3))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LayerNormWeights",
    "AttentionWeights",
    "FeedForwardWeights",
    "RestormerBlockWeights",
    "LiteTransformerWeights",
    "InvertedResidualWeights",
    "INNNodeWeights",
    "FastWeights",
]


@dataclass
class LayerNormWeights:
    """A channel LayerNorm: ``weight`` and ``bias`` of shape (C,), and its epsilon."""

    weight: Tensor
    bias: Tensor
    eps: float


@dataclass
class AttentionWeights:
    """Channel attention: the number of heads, the per-head temperature and the output projection."""

    heads: int
    temperature: Tensor  # (heads,)
    proj: Tensor  # (C, C): project_out / proj weight


@dataclass
class FeedForwardWeights:
    """Gated feed-forward: project_in halves, their 3x3 (depthwise or grouped), project_out."""

    ln: LayerNormWeights
    w_a: Tensor  # (h, C) -> the GELU half
    w_b: Tensor  # (h, C) -> the linear half
    dw_a: Tensor  # (h, h/groups, 3, 3)
    dw_b: Tensor
    groups: int  # per half
    w_out: Tensor  # (C, h)


@dataclass
class RestormerBlockWeights:
    """A Restormer block: LayerNorm, q/k and v projections (1x1 then depthwise 3x3), attention, feed-forward."""

    ln1: LayerNormWeights
    w_qk: Tensor  # (2C, C)
    w_v: Tensor  # (C, C)
    dw_qk: Tensor  # (2C, 1, 3, 3)
    dw_v: Tensor  # (C, 1, 3, 3)
    attn: AttentionWeights
    ffn: FeedForwardWeights


@dataclass
class LiteTransformerWeights:
    """A lite transformer block: LayerNorm, q/k and v as merged 3x3 convolutions, attention, feed-forward."""

    ln1: LayerNormWeights
    wc_qk: Tensor  # (2C, C, 3, 3): qkv2 o qkv1, q and k rows
    wc_v: Tensor  # (C, C, 3, 3)
    attn: AttentionWeights
    ffn: FeedForwardWeights


@dataclass
class InvertedResidualWeights:
    """One inverted residual, or rho and eta merged."""

    w1: Tensor  # (hid, half) or (2 hid, half)
    dw: Tensor  # (hid, 1, 3, 3) or (2 hid, 1, 3, 3)
    w2: tuple[Tensor, ...]  # (half, hid) [, (half, hid)]


@dataclass
class INNNodeWeights:
    """One invertible node: the 1x1 shuffle convolution (``ws``, ``bs``), phi, and rho and eta merged."""

    ws: Tensor  # (C, C) shuffle conv
    bs: Tensor  # (C,)
    phi: InvertedResidualWeights
    rho_eta: InvertedResidualWeights


@dataclass
class FastWeights:
    """All weights of the network, packed for the engine."""

    dim: int
    in_channels: int
    out_channels: int
    pe: Tensor  # (C, in, 3, 3)
    enc: list[RestormerBlockWeights]
    lt_enc: LiteTransformerWeights
    inn_enc: list[INNNodeWeights]
    lt_fuse: LiteTransformerWeights
    inn_fuse: list[INNNodeWeights]
    reduce_b: Tensor  # (C, C)
    reduce_d: Tensor  # (C, C)
    dec: list[RestormerBlockWeights]
    out1: Tensor  # (C/2, C, 3, 3)
    out2: Tensor  # (out, C/2, 3, 3)

    @classmethod
    def from_model(cls, model: Any, dtype: torch.dtype | None = None) -> FastWeights:
        """Gather (and fuse) the weights of a :class:`CDDFuse`; ``dtype`` defaults to the model's."""
        p0 = next(model.parameters())
        dt = dtype or p0.dtype

        def dense(t: Tensor) -> Tensor:
            return t.detach().to(dtype=dt).contiguous()

        def channels_last(t: Tensor) -> Tensor:
            return t.detach().to(dtype=dt).contiguous(memory_format=torch.channels_last)

        def matrix(conv: Any) -> Tensor:  # 1x1 conv weight (out, in, 1, 1) -> (out, in)
            return dense(conv.weight[:, :, 0, 0])

        def layer_norm(norm: Any) -> LayerNormWeights:
            return LayerNormWeights(dense(norm.body.weight), dense(norm.body.bias), float(getattr(norm, "eps", 1e-5)))

        def feed_forward(norm: Any, ffn: Any) -> FeedForwardWeights:
            w_in = ffn.project_in.weight[:, :, 0, 0]
            h = w_in.shape[0] // 2
            groups = int(ffn.dwconv.groups) // 2  # groups never straddle the two halves
            return FeedForwardWeights(layer_norm(norm), dense(w_in[:h]), dense(w_in[h:]),
                                      channels_last(ffn.dwconv.weight[:h]), channels_last(ffn.dwconv.weight[h:]),
                                      groups, matrix(ffn.project_out))

        def restormer(block: Any) -> RestormerBlockWeights:
            c = block.norm1.body.weight.shape[0]
            wq = block.attn.qkv.weight[:, :, 0, 0]
            dw = block.attn.qkv_dwconv.weight
            attn = AttentionWeights(block.attn.num_heads, dense(block.attn.temperature.reshape(-1)),
                                    dense(block.attn.project_out.weight[:, :, 0, 0]))
            return RestormerBlockWeights(
                ln1=layer_norm(block.norm1), w_qk=dense(wq[: 2 * c]), w_v=dense(wq[2 * c:]),
                dw_qk=channels_last(dw[: 2 * c]), dw_v=channels_last(dw[2 * c:]),
                attn=attn, ffn=feed_forward(block.norm2, block.ffn),
            )

        def lite_transformer(block: Any) -> LiteTransformerWeights:
            c = block.norm1.body.weight.shape[0]
            w1 = block.attn.qkv1.weight[:, :, 0, 0].double()  # (3C, C)
            w2 = block.attn.qkv2.weight.double()  # (3C, 3C, 3, 3)
            composed = torch.einsum("omyx,mi->oiyx", w2, w1)  # composed (3C, C, 3, 3), in float64
            attn = AttentionWeights(block.attn.num_heads, dense(block.attn.scale.reshape(-1)),
                                    dense(block.attn.proj.weight[:, :, 0, 0]))
            return LiteTransformerWeights(
                ln1=layer_norm(block.norm1), wc_qk=channels_last(composed[: 2 * c]),
                wc_v=channels_last(composed[2 * c:]), attn=attn, ffn=feed_forward(block.norm2, block.mlp),
            )

        def inverted_residual_convs(module: Any) -> tuple[Tensor, Tensor, Tensor]:
            convs = [layer for layer in module.bottleneckBlock if isinstance(layer, torch.nn.Conv2d)]
            return convs[0].weight[:, :, 0, 0], convs[1].weight, convs[2].weight[:, :, 0, 0]

        def inn_node(node: Any) -> INNNodeWeights:
            p1, pd, p2 = inverted_residual_convs(node.theta_phi)
            r1, rd, r2 = inverted_residual_convs(node.theta_rho)
            e1, ed, e2 = inverted_residual_convs(node.theta_eta)
            return INNNodeWeights(
                ws=matrix(node.shffleconv), bs=dense(node.shffleconv.bias),
                phi=InvertedResidualWeights(dense(p1), channels_last(pd), (dense(p2),)),
                rho_eta=InvertedResidualWeights(dense(torch.cat((r1, e1), 0)), channels_last(torch.cat((rd, ed), 0)),
                                                (dense(r2), dense(e2))),
            )

        enc, dec = model.encoder, model.decoder
        wr = dec.reduce_channel.weight[:, :, 0, 0]
        c = wr.shape[0]
        return cls(
            dim=c, in_channels=enc.patch_embed.proj.weight.shape[1], out_channels=dec.output[2].weight.shape[0],
            pe=channels_last(enc.patch_embed.proj.weight),
            enc=[restormer(b) for b in enc.encoder_level1], lt_enc=lite_transformer(enc.baseFeature),
            inn_enc=[inn_node(n) for n in enc.detailFeature.net],
            lt_fuse=lite_transformer(model.base_fuse), inn_fuse=[inn_node(n) for n in model.detail_fuse.net],
            reduce_b=dense(wr[:, :c]), reduce_d=dense(wr[:, c:]),
            dec=[restormer(b) for b in dec.encoder_level2],
            out1=channels_last(dec.output[0].weight), out2=channels_last(dec.output[2].weight),
        )
