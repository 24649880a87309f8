"""CDDFuse-lite: a small student network distilled from CDDFuse.

The design is a *coefficient* network (in the spirit of bilateral-grid / guided-filter networks):

1. a small U-Net of depthwise-separable blocks sees both sources at low resolution (a strided
   "patchify" stem takes full resolution to ``1/stem``, then ``levels`` halvings, with a global
   squeeze-and-excite context at the bottom) and predicts, at ``1/stem`` resolution, smooth
   per-pixel coefficients ``alpha, beta, gamma`` and a few guide channels;
2. these are upsampled bilinearly to full resolution, where ``z = alpha * A + beta * B + gamma`` (the
   details come from the sources, so they stay sharp);
3. a thin full-resolution detail path (``head_layers - 1`` 3x3 convolutions of ``head_width`` channels
   on A, B, ``z`` and the guides, then a 1x1 convolution) adds a local correction to ``z``;
4. the output is ``sigmoid(z)``, like the teacher's decoder (whose output saturates at 0 and 1 --
   exactly the values min-max normalisation keys on).

It is fully convolutional: any ``H, W >= 1`` (the low-resolution path runs on a copy padded by edge
replication to a multiple of :attr:`LiteConfig.multiple` and is cropped back). Large images run the
full-resolution part in horizontal strips (exact: each strip carries a halo of ``head_layers - 1`` rows),
so memory stays a few bytes per pixel. The module is ONNX-exportable (opset 17, dynamic H and W;
under export the whole image is one strip).

The network maps luminance to what the exact CDDFuse pipeline hands to min-max normalisation (its
fused luminance with the residual already added), so normalisation and colour stay shared with it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LiteConfig", "CDDFuseLite", "create_lite", "STRIP_PIXELS"]

#: Above this many pixels the full-resolution part runs in strips of about this many pixels.
STRIP_PIXELS = 1 << 20


@dataclass(frozen=True)
class LiteConfig:
    """Sizes of :class:`CDDFuseLite`.

    Attributes:
        width: channels at ``1/stem`` resolution (doubled at each level, at most ``4 * width``).
        stem: stride of the patchify stem (full resolution -> ``1/stem``); a power of two.
        levels: encoder levels below the stem (each halves the resolution).
        blocks: depthwise-separable residual blocks per level (encoder and decoder).
        guides: extra low-resolution channels handed to the full-resolution detail path.
        head_width: channels of the full-resolution detail path (0: no detail path).
        head_layers: layers of the detail path: ``head_layers - 1`` 3x3 convolutions and a final 1x1
            (at least 2 when ``head_width > 0``).
    """

    width: int = 16
    stem: int = 4
    levels: int = 3
    blocks: int = 1
    guides: int = 2
    head_width: int = 8
    head_layers: int = 2

    def __post_init__(self) -> None:
        if self.width < 1 or self.levels < 0 or self.blocks < 0 or self.guides < 0 or self.head_width < 0:
            raise ValueError(f"bad LiteConfig sizes: {self}")
        if self.stem < 1 or self.stem & (self.stem - 1):
            raise ValueError(f"LiteConfig.stem must be a power of two, got {self.stem}")
        if self.head_width and self.head_layers < 2:
            raise ValueError("LiteConfig.head_layers must be at least 2 when head_width > 0")

    @property
    def multiple(self) -> int:
        """The low-resolution path works on sizes that are multiples of this (inputs are padded)."""
        return self.stem * 2 ** self.levels

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LiteConfig:
        """Build from a dict (e.g. weights metadata); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown LiteConfig field(s) {unknown}")
        return cls(**{k: int(v) for k, v in d.items()})


def _tracing() -> bool:
    """Whether the module is being traced (for ONNX export)."""
    return bool(torch.jit.is_tracing())  # type: ignore[attr-defined,no-untyped-call]


def _lean() -> bool:
    """Whether operations may work in place: no autograd graph to keep, and not tracing for export.

    In place, ``relu_`` and ``add_`` give the very same values as their out-of-place forms; they only save
    a full-size temporary each, which bounds the memory of very large images (4096 x 4096 and up).
    """
    return not (torch.is_grad_enabled() or _tracing() or torch.onnx.is_in_onnx_export())


class _SepBlock(nn.Module):
    """Depthwise 3x3 (optionally strided) + pointwise 1x1 + ReLU; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin)
        self.pw = nn.Conv2d(cin, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        if _lean():  # the same numbers, with one temporary fewer at a time
            y = self.pw(self.dw(x).relu_()).relu_()
            return y.add_(x) if self.residual else y
        y = F.relu(self.pw(F.relu(self.dw(x))))
        return x + y if self.residual else y


class _Context(nn.Module):
    """Squeeze-and-excite over the whole image: global statistics steer every coefficient."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(ch, ch, 1)
        self.fc2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        g = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(g))))


class CDDFuseLite(nn.Module):
    """The student network; see the module docstring.

    ``forward(a, b)``: ``a`` the infrared/functional luminance, ``b`` the visible/MRI luminance, both
    ``(N, 1, H, W)`` float32 in [0, 1]; returns ``(N, 1, H, W)`` in (0, 1), the un-normalised fused luminance.
    """

    def __init__(self, config: LiteConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LiteConfig()
        chans = [min(cfg.width * 2 ** i, cfg.width * 4) for i in range(cfg.levels + 1)]
        self.stem = nn.Conv2d(2, cfg.width, cfg.stem, stride=cfg.stem)
        self.enc0 = nn.Sequential(*[_SepBlock(chans[0], chans[0]) for _ in range(cfg.blocks)])
        self.down = nn.ModuleList()
        for i in range(cfg.levels):
            self.down.append(nn.Sequential(_SepBlock(chans[i], chans[i + 1], stride=2),
                                           *[_SepBlock(chans[i + 1], chans[i + 1]) for _ in range(cfg.blocks)]))
        self.context = _Context(chans[-1])
        self.lateral = nn.ModuleList([nn.Conv2d(chans[i + 1], chans[i], 1) for i in range(cfg.levels)])
        self.up = nn.ModuleList([nn.Sequential(*[_SepBlock(chans[i], chans[i]) for _ in range(max(cfg.blocks, 1))])
                                 for i in range(cfg.levels)])
        self.coef = nn.Conv2d(chans[0], 3 + cfg.guides, 1)
        with torch.no_grad():  # start as a monotone function of the mean: sigmoid(A + B - 1)
            bias = torch.zeros(3 + cfg.guides)
            bias[:3] = torch.tensor([1.0, 1.0, -1.0])
            self.coef.weight.mul_(0.01)
            self.coef.bias = nn.Parameter(bias)
        head: list[nn.Module] = []
        if cfg.head_width:
            cin = 3 + cfg.guides
            for _ in range(cfg.head_layers - 1):
                head += [nn.Conv2d(cin, cfg.head_width, 3, padding=1), nn.ReLU()]
                cin = cfg.head_width
            last = nn.Conv2d(cin, 1, 1)  # 1x1: a 3x3 convolution to one channel is slow on CPU
            nn.init.zeros_(last.weight)  # the detail path starts silent (it still learns: its input is not zero)
            last.bias = nn.Parameter(torch.zeros(1))
            head.append(last)
        self.head = nn.Sequential(*head)

    # ------------------------------------------------------------------ parts
    def coefficients(self, a: Tensor, b: Tensor) -> Tensor:
        """Low-resolution coefficients ``(N, 3 + guides, ceil(H/m)*m/stem, ceil(W/m)*m/stem)``, ``m = multiple``."""
        lean = _lean()
        x = self._stem(a, b)
        x = self.enc0(x.relu_() if lean else F.relu(x))
        skips: list[Tensor | None] = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        x = self.context(x)
        for i in reversed(range(self.config.levels)):
            x = F.interpolate(self.lateral[i](x), scale_factor=2.0, mode="bilinear", align_corners=False)
            skip, skips[i] = skips[i], None  # each skip is used once: let it go as soon as it is
            assert skip is not None
            x = self.up[i](x.add_(skip) if lean else x + skip)
            del skip
        return self.coef(x)

    def _stem(self, a: Tensor, b: Tensor) -> Tensor:
        """The patchify convolution on ``cat(a, b)``, padded by edge replication to a multiple of ``multiple``.

        Large images go through it in strips of rows: its patches do not overlap, so every output row
        depends on its own ``stem`` input rows only and the strips give the very same numbers, while the
        concatenated, padded ``2 x H x W`` input exists one strip at a time.
        """
        m, s = self.config.multiple, self.config.stem
        h, w = a.shape[-2], a.shape[-1]
        ph, pw = (m - h % m) % m, (m - w % m) % m
        exporting = _tracing() or torch.onnx.is_in_onnx_export()
        if exporting or h * w <= STRIP_PIXELS:
            x = torch.cat([a, b], dim=1)
            if not (isinstance(ph, int) and isinstance(pw, int) and ph == 0 and pw == 0):
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            return self.stem(x)
        hp, wp = h + ph, w + pw
        out = a.new_empty(a.shape[0], self.stem.out_channels, hp // s, wp // s)
        rows = max(s, (STRIP_PIXELS // max(wp, 1)) // s * s)
        for r0 in range(0, hp, rows):
            r1 = min(hp, r0 + rows)
            # rows past the image repeat its last row (replicate padding), columns likewise
            idx = torch.arange(r0, r1, device=a.device).clamp_(max=h - 1)
            x = torch.cat([a.index_select(2, idx), b.index_select(2, idx)], dim=1)
            if pw:
                x = F.pad(x, (0, pw, 0, 0), mode="replicate")
            out[:, :, r0 // s:r1 // s] = self.stem(x)
        return out

    def _full_res(self, a: Tensor, b: Tensor, up: Tensor) -> Tensor:
        """Full-resolution part on rows of ``a, b`` with the matching upsampled coefficients ``up``."""
        base = up[:, 0:1] * a + up[:, 1:2] * b + up[:, 2:3]
        if self.config.head_width:
            base = base + self.head(torch.cat([a, b, base, up[:, 3:]], dim=1))
        return torch.sigmoid(base)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Fuse ``(N, 1, H, W)`` luminances in [0, 1]; returns ``(N, 1, H, W)``."""
        h, w = a.shape[-2], a.shape[-1]
        s = self.config.stem
        low = self.coefficients(a, b)
        exporting = _tracing() or torch.onnx.is_in_onnx_export()
        if exporting or h * w <= STRIP_PIXELS:
            up = low if s == 1 else F.interpolate(low, scale_factor=float(s), mode="bilinear", align_corners=False)
            return self._full_res(a, b, up[:, :, :h, :w])
        # strips: bilinear upsampling of a slice of low-resolution rows (one spare row each side) equals
        # the same rows of the whole upsampling; the detail path carries a halo of head_layers - 1 rows.
        halo = self.config.head_layers - 1 if self.config.head_width else 0
        rows = max(s, (STRIP_PIXELS // max(w, 1)) // s * s)
        out = a.new_empty(a.shape[0], 1, h, w)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            h0, h1 = max(0, r0 - halo), min(h, r1 + halo)
            j0 = max(0, h0 // s - 1)
            j1 = min(low.shape[-2], math.ceil(h1 / s) + 1)
            part = low[:, :, j0:j1]
            up = part if s == 1 else F.interpolate(part, scale_factor=float(s), mode="bilinear", align_corners=False)
            up = up[:, :, h0 - j0 * s:h1 - j0 * s, :w]
            out[:, :, r0:r1] = self._full_res(a[:, :, h0:h1], b[:, :, h0:h1], up)[:, :, r0 - h0:r1 - h0]
        return out


def create_lite(config: LiteConfig | None = None) -> CDDFuseLite:
    """A freshly initialised :class:`CDDFuseLite` (it starts as ``sigmoid(A + B - 1)``, a function of the mean)."""
    return CDDFuseLite(config)
