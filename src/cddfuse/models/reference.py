"""A literal, unoptimised eager implementation of CDDFuse: the yardstick for the fast paths.

This follows the authors' code operation by operation (``to_3d``/``to_4d`` transposes around
every LayerNorm, ``rearrange``-style reshapes around the channel attention, a full 3x3
convolution after the 1x1 in the Lite Transformer's attention, ``torch.cat`` everywhere) and
is kept deliberately naive. It is used by the tests and ``benchmarks/run_all.py`` to check that
:class:`cddfuse.models.cddfuse.CDDFuse` and the inference engine (:mod:`cddfuse.engine`, e.g.
:func:`cddfuse.engine.tiled_fuse`) compute the same function, and to measure what the
optimisations buy. It is not meant for production use.

The module tree and parameter names equal :class:`~cddfuse.models.cddfuse.CDDFuse`'s, so the
same state dict loads into both (:func:`reference_from`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cddfuse import CDDFuse, CDDFuseConfig, residual_image

__all__ = ["ReferenceCDDFuse", "reference_from"]


class _LNParams(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class _WithBiasLayerNorm(nn.Module):
    """The authors' ``LayerNorm(dim, 'WithBias')``: to (B, HW, C), normalise the last axis, back."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = _LNParams(dim)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x3 = x.reshape(b, c, h * w).transpose(1, 2).contiguous()  # to_3d: b (h w) c
        mu = x3.mean(-1, keepdim=True)
        sigma = x3.var(-1, keepdim=True, unbiased=False)
        y = (x3 - mu) / torch.sqrt(sigma + 1e-5) * self.body.weight + self.body.bias
        return y.transpose(1, 2).contiguous().reshape(b, c, h, w)  # to_4d


def _attention(q: Tensor, k: Tensor, v: Tensor, heads: int, temperature: Tensor) -> Tensor:
    b, c, h, w = q.shape
    q = q.reshape(b, heads, c // heads, h * w).contiguous()
    k = k.reshape(b, heads, c // heads, h * w).contiguous()
    v = v.reshape(b, heads, c // heads, h * w).contiguous()
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    attn = attn.softmax(dim=-1)
    out = attn @ v
    return out.reshape(b, c, h, w).contiguous()


class _MDTA(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv_dwconv(self.qkv(x))
        q, k, v = qkv.chunk(3, dim=1)
        return self.project_out(_attention(q, k, v, self.num_heads, self.temperature))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, expansion: float, groups: int | None = None) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=groups or hidden * 2, bias=False)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.project_in(x)
        x1, x2 = self.dwconv(x).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class _TransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1 = _WithBiasLayerNorm(dim)
        self.attn = _MDTA(dim, num_heads)
        self.norm2 = _WithBiasLayerNorm(dim)
        self.ffn = _FeedForward(dim, expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.ffn(self.norm2(x))
        return x


class _AttentionBase(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv1 = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv2 = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv2(self.qkv1(x))
        q, k, v = qkv.chunk(3, dim=1)
        return self.proj(_attention(q, k, v, self.num_heads, self.scale))


class _BaseFeatureExtraction(nn.Module):
    def __init__(self, dim: int, num_heads: int, expansion: float) -> None:
        super().__init__()
        self.norm1 = _WithBiasLayerNorm(dim)
        self.attn = _AttentionBase(dim, num_heads)
        self.norm2 = _WithBiasLayerNorm(dim)
        hidden = int(dim * expansion)
        self.mlp = _FeedForward(dim, expansion, groups=hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


def _reflect_pad1(x: Tensor) -> Tensor:
    # nn.ReflectionPad2d(1); along an axis of length 1 the pixel is replicated (as CDDFuse does).
    if x.shape[-1] >= 2 and x.shape[-2] >= 2:
        return F.pad(x, (1, 1, 1, 1), mode="reflect")
    return F.pad(x, (1, 1, 1, 1), mode="replicate")


class _ReflectPad(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _reflect_pad1(x)


class _InvertedResidualBlock(nn.Module):
    def __init__(self, inp: int, oup: int, expansion: float) -> None:
        super().__init__()
        hidden = int(inp * expansion)
        self.bottleneckBlock = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, bias=False),
            nn.ReLU6(inplace=False),
            _ReflectPad(),
            nn.Conv2d(hidden, hidden, 3, groups=hidden, bias=False),
            nn.ReLU6(inplace=False),
            nn.Conv2d(hidden, oup, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneckBlock(x)


class _DetailNode(nn.Module):
    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        half = dim // 2
        self.theta_phi = _InvertedResidualBlock(half, half, expansion)
        self.theta_rho = _InvertedResidualBlock(half, half, expansion)
        self.theta_eta = _InvertedResidualBlock(half, half, expansion)
        self.shffleconv = nn.Conv2d(dim, dim, 1, bias=True)

    def separateFeature(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2: x.shape[1]]
        return z1, z2

    def forward(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = self.separateFeature(self.shffleconv(torch.cat((z1, z2), dim=1)))
        z2 = z2 + self.theta_phi(z1)
        z1 = z1 * torch.exp(self.theta_rho(z2)) + self.theta_eta(z2)
        return z1, z2


class _DetailFeatureExtraction(nn.Module):
    def __init__(self, dim: int, num_layers: int, expansion: float) -> None:
        super().__init__()
        self.net = nn.Sequential(*[_DetailNode(dim, expansion) for _ in range(num_layers)])

    def forward(self, x: Tensor) -> Tensor:
        z1, z2 = x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2: x.shape[1]]
        for layer in self.net:
            z1, z2 = layer(z1, z2)
        return torch.cat((z1, z2), dim=1)


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _Encoder(nn.Module):
    def __init__(self, cfg: CDDFuseConfig) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(cfg.in_channels, cfg.dim)
        self.encoder_level1 = nn.Sequential(
            *[_TransformerBlock(cfg.dim, cfg.num_heads, cfg.ffn_expansion) for _ in range(cfg.encoder_blocks)]
        )
        self.baseFeature = _BaseFeatureExtraction(cfg.dim, cfg.num_heads, cfg.base_ffn_expansion)
        self.detailFeature = _DetailFeatureExtraction(cfg.dim, cfg.encoder_inn_layers, cfg.inn_expansion)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out_enc_level1 = self.encoder_level1(self.patch_embed(x))
        return self.baseFeature(out_enc_level1), self.detailFeature(out_enc_level1), out_enc_level1


class _Decoder(nn.Module):
    def __init__(self, cfg: CDDFuseConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.reduce_channel = nn.Conv2d(2 * d, d, 1, bias=False)
        self.encoder_level2 = nn.Sequential(
            *[_TransformerBlock(d, cfg.num_heads, cfg.ffn_expansion) for _ in range(cfg.decoder_blocks)]
        )
        self.output = nn.Sequential(
            nn.Conv2d(d, d // 2, 3, padding=1, bias=False),
            nn.LeakyReLU(),
            nn.Conv2d(d // 2, cfg.out_channels, 3, padding=1, bias=False),
        )

    def forward(self, base: Tensor, detail: Tensor, residual: Tensor | None) -> Tensor:
        x = self.reduce_channel(torch.cat((base, detail), dim=1))
        x = self.encoder_level2(x)
        x = self.output(x)
        if residual is not None:
            x = x + residual
        return torch.sigmoid(x)


class ReferenceCDDFuse(nn.Module):
    """The straightforward eager CDDFuse (same state-dict keys as :class:`CDDFuse`).

    ``forward(a, b, residual)`` runs the two sources through the encoder one after the other,
    exactly like the authors' ``test_IVF.py``.
    """

    def __init__(self, config: CDDFuseConfig | None = None) -> None:
        super().__init__()
        self.config = config or CDDFuseConfig()
        cfg = self.config
        self.encoder = _Encoder(cfg)
        self.decoder = _Decoder(cfg)
        self.base_fuse = _BaseFeatureExtraction(cfg.dim, cfg.num_heads, cfg.base_ffn_expansion)
        self.detail_fuse = _DetailFeatureExtraction(cfg.dim, cfg.fuse_inn_layers, cfg.inn_expansion)

    def forward(self, a: Tensor, b: Tensor, residual: str = "vis") -> Tensor:
        base_b, detail_b, _ = self.encoder(b)
        base_a, detail_a, _ = self.encoder(a)
        fused_base = self.base_fuse(base_a + base_b)
        fused_detail = self.detail_fuse(detail_a + detail_b)
        return self.decoder(fused_base, fused_detail, residual_image(a, b, residual))


def reference_from(model: CDDFuse) -> ReferenceCDDFuse:
    """A :class:`ReferenceCDDFuse` holding a copy of ``model``'s weights (same device and dtype)."""
    p = next(model.parameters())
    ref = ReferenceCDDFuse(model.config).to(device=p.device, dtype=p.dtype)
    ref.load_state_dict(model.state_dict(), strict=True)
    return ref.eval()
