"""The CDDFuse network (Zhao et al., CVPR 2023), layer for layer as published.

Structure (paper sizes in brackets)::

    source (B,1,H,W) -> 3x3 conv 1->C [64] -> N_enc Restormer blocks [4] = shallow features
        shallow -> Lite-Transformer block          = base features   (low frequency)
        shallow -> INN with L_enc invertible nodes [3] = detail features (high frequency)
    fusion:  base   = Lite-Transformer block(base_A + base_B)
             detail = INN with L_fuse nodes [1] (detail_A + detail_B)
    decoder: concat(base, detail) -> 1x1 conv 2C->C -> N_dec Restormer blocks [4]
             -> 3x3 conv C->C/2 -> LeakyReLU -> 3x3 conv C/2->1 (+ residual image) -> sigmoid

The submodule names below are the authors' own (``encoder_level1``, ``baseFeature``,
``shffleconv`` ...), so their state dicts map onto this module by a prefix change only
(see :mod:`cddfuse.models.weights`).  This module knows nothing about files or devices.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..options import RESIDUAL_MODES, ResidualMode

__all__ = [
    "CDDFuseConfig",
    "CDDFuse",
    "CDDFuseEncoder",
    "CDDFuseDecoder",
    "ChannelLayerNorm",
    "RestormerBlock",
    "LiteTransformerBlock",
    "InvertibleDetailExtractor",
    "ResidualMode",
    "RESIDUAL_MODES",
    "residual_image",
    "cddfuse",
]


@dataclass(frozen=True)
class CDDFuseConfig:
    """Sizes of a CDDFuse network. The defaults are the paper's (1,188,272 parameters).

    Args:
        dim: feature channels ``C`` of encoder, fusion layers and decoder (paper: 64).
        num_heads: attention heads in every Restormer and Lite-Transformer block (paper: 8).
            Must divide ``dim``.
        encoder_blocks: Restormer blocks in the shared encoder (paper: 4).
        decoder_blocks: Restormer blocks in the decoder (paper: 4).
        ffn_expansion: expansion of the Restormer gated-Dconv feed-forward (paper: 2).
        base_ffn_expansion: expansion of the Lite-Transformer gated MLP (paper: 1).
        encoder_inn_layers: invertible nodes in the encoder's detail branch (paper: 3).
        fuse_inn_layers: invertible nodes in the detail fusion layer (paper: 1).
        inn_expansion: expansion of the inverted-residual blocks inside an INN node (paper: 2).
        in_channels: channels of a source image (1: luminance).
        out_channels: channels of the fused image (1: luminance).
    """

    dim: int = 64
    num_heads: int = 8
    encoder_blocks: int = 4
    decoder_blocks: int = 4
    ffn_expansion: float = 2.0
    base_ffn_expansion: float = 1.0
    encoder_inn_layers: int = 3
    fuse_inn_layers: int = 1
    inn_expansion: float = 2.0
    in_channels: int = 1
    out_channels: int = 1

    def __post_init__(self) -> None:
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"dim must be an even number >= 2 (the INN splits channels in halves), got {self.dim}")
        if self.num_heads < 1 or self.dim % self.num_heads:
            raise ValueError(f"num_heads must divide dim; got dim={self.dim}, num_heads={self.num_heads}")
        for name in ("encoder_blocks", "decoder_blocks", "encoder_inn_layers", "fuse_inn_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CDDFuseConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model size field(s) {unknown}; known: {sorted(known)}")
        return cls(**d)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a ``(B, C, H, W)`` tensor, with weight and bias.

    Computes ``(x - mean_c) / sqrt(var_c + eps) * weight + bias`` per pixel, where the mean
    and (biased) variance run over channels. Numerically equal to the authors'
    ``WithBias_LayerNorm`` applied to ``b (h w) c``, without the two transposing copies.
    The parameters live in ``self.body`` to keep the authors' key names.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.body = _LNParams(dim)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # One fused kernel (forward and backward) over the channel axis of a channels-last view;
        # the result keeps the input's memory format (no copy at all for channels_last inputs).
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.body.weight.shape[0],), self.body.weight, self.body.bias,
                         self.eps)
        y = y.permute(0, 3, 1, 2)
        return y if channels_last else y.contiguous()


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution (stride 1, no padding) computed as one matrix product per image.

    Same parameters, state-dict keys and function as ``nn.Conv2d(cin, cout, 1)``; on CPU the
    product ``W (Cout x Cin) @ x (Cin x HW)`` runs as a plain GEMM forward and backward, where
    PyTorch would otherwise pick its unfold-based ``slow_conv2d`` for single-threaded or
    small-batch calls (measured: a third of a training step's time).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if x.dim() != 4 or x.shape[0] == 0 or not x[0].is_contiguous():
            return super().forward(x)  # channels-last or otherwise strided input: the convolution
        b, c, h, w = x.shape
        wt = self.weight.view(1, self.out_channels, c).expand(b, self.out_channels, c)
        y = torch.bmm(wt, x.reshape(b, c, h * w))
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y.view(b, self.out_channels, h, w)


class _LNParams(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


def _channel_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: Tensor) -> Tensor:
    """Transposed (channel) attention: softmax over channels of ``norm(q) norm(k)^T * scale``.

    q, k, v: ``(B, C, H, W)``; the attention matrix is ``(B, heads, C/heads, C/heads)``.
    """
    b, c, h, w = q.shape
    q = F.normalize(q.reshape(b, heads, c // heads, h * w), dim=-1)
    k = F.normalize(k.reshape(b, heads, c // heads, h * w), dim=-1)
    attn = (q @ k.transpose(-2, -1)) * scale
    attn = attn.softmax(dim=-1)
    out = attn @ v.reshape(b, heads, c // heads, h * w)
    return out.reshape(b, c, h, w)


class MDTA(nn.Module):
    """Multi-Dconv-head transposed attention (Restormer): 1x1 conv -> depthwise 3x3 -> channel attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = Conv1x1(dim, dim * 3)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=False)
        self.project_out = Conv1x1(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return self.project_out(_channel_attention(q, k, v, self.num_heads, self.temperature))


class GatedFeedForward(nn.Module):
    """Gated feed-forward: 1x1 conv to 2*hidden, grouped 3x3, GELU(x1) * x2, 1x1 conv back.

    ``groups=None`` makes the 3x3 depthwise (Restormer's GDFN); the Lite Transformer's MLP
    uses ``groups=hidden`` (each group sees two channels).
    """

    def __init__(self, dim: int, expansion: float, groups: int | None = None) -> None:
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = Conv1x1(dim, hidden * 2)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=groups or hidden * 2, bias=False)
        self.project_out = Conv1x1(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class RestormerBlock(nn.Module):
    """Restormer transformer block: ``x + MDTA(LN(x))`` then ``x + GDFN(LN(x))``. Shape-preserving."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion: float) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = MDTA(dim, num_heads)
        self.norm2 = ChannelLayerNorm(dim)
        self.ffn = GatedFeedForward(dim, ffn_expansion)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class LiteAttention(nn.Module):
    """The Lite Transformer's attention: qkv by a 1x1 conv then a full 3x3 conv (3C->3C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv1 = nn.Conv2d(dim, dim * 3, 1, bias=False)
        self.qkv2 = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, bias=False)
        self.proj = Conv1x1(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        # qkv1 (1x1, no bias) then qkv2 (3x3, zero padding) is linear with nothing between, so it
        # is one 3x3 convolution C -> 3C with the composed weight: 110,592 instead of 344,064
        # multiply-adds per pixel, forward and backward (the same function; gradients still
        # reach both weights through the composition).
        w = torch.einsum("omyx,mi->oiyx", self.qkv2.weight, self.qkv1.weight[:, :, 0, 0])
        q, k, v = F.conv2d(x, w, padding=1).chunk(3, dim=1)
        return self.proj(_channel_attention(q, k, v, self.num_heads, self.scale))


class LiteTransformerBlock(nn.Module):
    """Base-feature extractor ("Lite Transformer", LT): ``x + attn(LN(x))``, ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion: float = 1.0) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim)
        self.attn = LiteAttention(dim, num_heads)
        self.norm2 = ChannelLayerNorm(dim)
        hidden = int(dim * ffn_expansion)
        self.mlp = GatedFeedForward(dim, ffn_expansion, groups=hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReflectPad1(nn.Module):
    """One-pixel reflection padding (as ``nn.ReflectionPad2d(1)``); along an axis of length 1,
    where reflection is undefined, the pixel is replicated instead, so every size works."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] >= 2 and x.shape[-2] >= 2:
            return F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.pad(x, (1, 1, 1, 1), mode="replicate")


class InvertedResidual(nn.Module):
    """MobileNetV2-style inverted residual without skip: 1x1, ReLU6, reflect-pad + depthwise 3x3, ReLU6, 1x1."""

    def __init__(self, inp: int, oup: int, expansion: float) -> None:
        super().__init__()
        hidden = int(inp * expansion)
        self.bottleneckBlock = nn.Sequential(
            Conv1x1(inp, hidden),
            nn.ReLU6(inplace=True),
            ReflectPad1(),
            nn.Conv2d(hidden, hidden, 3, groups=hidden, bias=False),
            nn.ReLU6(inplace=True),
            Conv1x1(hidden, oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneckBlock(x)


class DetailNode(nn.Module):
    """One invertible (affine coupling) node on ``C`` channels.

    ``z = shuffle_conv(cat(z1, z2))`` split into halves; ``z2 += phi(z1)``;
    ``z1 = z1 * exp(rho(z2)) + eta(z2)``.
    """

    def __init__(self, dim: int, expansion: float) -> None:
        super().__init__()
        half = dim // 2
        self.theta_phi = InvertedResidual(half, half, expansion)
        self.theta_rho = InvertedResidual(half, half, expansion)
        self.theta_eta = InvertedResidual(half, half, expansion)
        self.shffleconv = Conv1x1(dim, dim, bias=True)

    def forward(self, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        z = self.shffleconv(torch.cat((z1, z2), dim=1))
        half = z.shape[1] // 2
        z1, z2 = z[:, :half], z[:, half:]
        z2 = z2 + self.theta_phi(z1)
        z1 = z1 * torch.exp(self.theta_rho(z2)) + self.theta_eta(z2)
        return z1, z2


class InvertibleDetailExtractor(nn.Module):
    """Detail-feature extractor: a chain of :class:`DetailNode` on the two channel halves."""

    def __init__(self, dim: int = 64, num_layers: int = 3, expansion: float = 2.0) -> None:
        super().__init__()
        self.net = nn.Sequential(*[DetailNode(dim, expansion) for _ in range(num_layers)])

    def forward(self, x: Tensor) -> Tensor:
        half = x.shape[1] // 2
        z1, z2 = x[:, :half], x[:, half:]
        for node in self.net:
            z1, z2 = node(z1, z2)
        return torch.cat((z1, z2), dim=1)


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class CDDFuseEncoder(nn.Module):
    """Shared encoder: ``(B,1,H,W)`` image -> ``(base, detail, shallow)``, each ``(B,C,H,W)``."""

    def __init__(self, cfg: CDDFuseConfig) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(cfg.in_channels, cfg.dim)
        self.encoder_level1 = nn.Sequential(
            *[RestormerBlock(cfg.dim, cfg.num_heads, cfg.ffn_expansion) for _ in range(cfg.encoder_blocks)]
        )
        self.baseFeature = LiteTransformerBlock(cfg.dim, cfg.num_heads, cfg.base_ffn_expansion)
        self.detailFeature = InvertibleDetailExtractor(cfg.dim, cfg.encoder_inn_layers, cfg.inn_expansion)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shallow = self.encoder_level1(self.patch_embed(x))
        return self.baseFeature(shallow), self.detailFeature(shallow), shallow


class CDDFuseDecoder(nn.Module):
    """Decoder: ``(base, detail)`` features -> ``(B,1,H,W)`` image in (0, 1) after the sigmoid."""

    def __init__(self, cfg: CDDFuseConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.reduce_channel = Conv1x1(2 * d, d)
        self.encoder_level2 = nn.Sequential(
            *[RestormerBlock(d, cfg.num_heads, cfg.ffn_expansion) for _ in range(cfg.decoder_blocks)]
        )
        self.output = nn.Sequential(
            nn.Conv2d(d, d // 2, 3, padding=1, bias=False),
            nn.LeakyReLU(),
            nn.Conv2d(d // 2, cfg.out_channels, 3, padding=1, bias=False),
        )

    def forward(self, base: Tensor, detail: Tensor, residual: Tensor | None = None) -> Tensor:
        x = self.encoder_level2(self.reduce_channel(torch.cat((base, detail), dim=1)))
        x = self.output(x)
        if residual is not None:
            x = x + residual
        return torch.sigmoid(x)


def residual_image(a: Tensor, b: Tensor, mode: str) -> Tensor | None:
    """The image added before the decoder's sigmoid: ``vis`` -> b, ``sum`` -> a + b, ``none`` -> None."""
    if mode == "vis":
        return b
    if mode == "sum":
        return a + b
    if mode == "none":
        return None
    raise ValueError(f"unknown residual mode {mode!r}; choose one of {RESIDUAL_MODES}")


class CDDFuse(nn.Module):
    """CDDFuse: encoder, base/detail fusion layers and decoder in one module.

    Args:
        config: network sizes (:class:`CDDFuseConfig`); the paper's when omitted.

    Inputs are luminance images ``(B, 1, H, W)`` in [0, 1], any ``H, W >= 1``; the first source
    ``a`` is infrared / functional (IR, CT, PET, SPECT), the second ``b`` visible / MRI.
    The output is ``(B, 1, H, W)`` in (0, 1) (before any min-max normalisation).

    Example:
        >>> import torch
        >>> from cddfuse.models import CDDFuse, CDDFuseConfig
        >>> net = CDDFuse(CDDFuseConfig(dim=8, num_heads=2, encoder_blocks=1, decoder_blocks=1)).eval()
        >>> a, b = torch.rand(1, 1, 20, 30), torch.rand(1, 1, 20, 30)
        >>> net(a, b, residual="vis").shape
        torch.Size([1, 1, 20, 30])
    """

    def __init__(self, config: CDDFuseConfig | None = None) -> None:
        super().__init__()
        self.config = config or CDDFuseConfig()
        cfg = self.config
        self.encoder = CDDFuseEncoder(cfg)
        self.decoder = CDDFuseDecoder(cfg)
        self.base_fuse = LiteTransformerBlock(cfg.dim, cfg.num_heads, cfg.base_ffn_expansion)
        self.detail_fuse = InvertibleDetailExtractor(cfg.dim, cfg.fuse_inn_layers, cfg.inn_expansion)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B,1,H,W)`` -> ``(base, detail, shallow)`` features, each ``(B,C,H,W)``."""
        return self.encoder(x)

    def fuse_features(self, base_a: Tensor, base_b: Tensor, detail_a: Tensor,
                      detail_b: Tensor) -> tuple[Tensor, Tensor]:
        """Fusion layers: ``(LT(base_a + base_b), INN(detail_a + detail_b))``."""
        return self.base_fuse(base_a + base_b), self.detail_fuse(detail_a + detail_b)

    def decode(self, base: Tensor, detail: Tensor, residual: Tensor | None = None) -> Tensor:
        """Features -> image in (0, 1); ``residual`` ``(B,1,H,W)`` is added before the sigmoid."""
        return self.decoder(base, detail, residual)

    def forward(self, a: Tensor, b: Tensor, residual: str = "vis") -> Tensor:
        """Fuse ``a`` (IR/functional) and ``b`` (visible/MRI), both ``(B,1,H,W)`` in [0,1]."""
        if a.shape != b.shape:
            raise ValueError(f"the two sources must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        if a.dim() != 4 or a.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected sources of shape (B, {self.config.in_channels}, H, W), got {tuple(a.shape)}"
            )
        n = a.shape[0]
        # Both sources through the shared encoder as one batch (identical to two calls).
        base, detail, _ = self.encode(torch.cat((a, b), dim=0))
        fb, fd = self.fuse_features(base[:n], base[n:], detail[:n], detail[n:])
        return self.decode(fb, fd, residual_image(a, b, residual))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Phase-I reconstruction of one source (residual = the source itself)."""
        base, detail, _ = self.encode(x)
        return self.decode(base, detail, x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cddfuse(**sizes: Any) -> CDDFuse:
    """Build a CDDFuse with the paper's sizes, overridden by ``sizes`` (fields of :class:`CDDFuseConfig`)."""
    return CDDFuse(CDDFuseConfig(**sizes))

