"""Input handling shared by the VIFB metrics: image stacks, colour branches, MATLAB's rounding (internal).

VIFB evaluates every metric on the images as ``imread`` returns them: ``uint8`` ``(H, W)`` or
``(H, W, 3)``. Internally an image is a float64 *stack* ``(K, H, W)`` with ``K`` channels (1 or 3),
so that a gray source next to a colour fused image broadcasts over the channels, as VIFB's code
does for its gray infrared images.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .._validate import MetricInputError

__all__ = ["RGB2GRAY", "Triplet", "prepare", "round_half_away", "rgb2gray_matlab", "normalize255",
           "channel_mean", "freq_radius"]

#: MATLAB's ``rgb2gray`` weights (the first row of the inverse of the NTSC YIQ matrix).
RGB2GRAY: tuple[float, float, float] = (0.298936021293775, 0.587043074451121, 0.114020904255103)

GrayRule = Literal["round", "exact"]


def round_half_away(x: np.ndarray) -> np.ndarray:
    """MATLAB's ``round`` (and integer conversion): to nearest, halves away from zero, exactly.

    ``floor(x + 0.5)`` is not used: it rounds 0.49999999999999994 up.
    """
    ax = np.abs(x)
    fl = np.floor(ax)
    return np.copysign(fl + (ax - fl >= 0.5), x)


def rgb2gray_matlab(stack: np.ndarray, rule: GrayRule) -> np.ndarray:
    """``rgb2gray`` of a ``(3, H, W)`` stack (0-255): ``(1, H, W)`` float64.

    ``rule="round"``: as MATLAB does it on ``uint8`` input (the weighted sum rounded half away
    from zero); ``"exact"``: on ``double`` input (not rounded). A 1-channel stack is returned as is.
    """
    if stack.shape[0] == 1:
        return stack
    r, g, b = RGB2GRAY
    gray = stack[0] * r + stack[1] * g + stack[2] * b
    if rule == "round":
        gray = np.clip(round_half_away(gray), 0, 255)
    return gray[None]


def normalize255(x: np.ndarray) -> np.ndarray:
    """``round((x - min) / (max - min) * 255)`` of a 2-D image (Z. Liu's ``normalize1``).

    An all-zero image stays zero; another constant image gives NaN (0 / 0), as in MATLAB. For
    8-bit values the 256 possible results are computed once and looked up (same values).
    """
    hi, lo = float(x.max()), float(x.min())
    if hi == 0 and lo == 0:
        return x
    with np.errstate(divide="ignore", invalid="ignore"):
        if lo >= 0 and hi <= 255:
            u8 = x.astype(np.uint8)
            if np.array_equal(u8, x):
                lut = round_half_away((np.arange(256.0) - lo) / (hi - lo) * 255)
                return lut[u8]
        return round_half_away((x - lo) / (hi - lo) * 255)


def channel_mean(values: Any) -> float:
    """MATLAB's ``mean(g)`` over the per-channel values (sum in order, then divide)."""
    v = np.atleast_1d(np.asarray(values, dtype=np.float64))
    total = 0.0
    for x in v:
        total += float(x)
    return total / v.size


def freq_radius(shape: tuple[int, int], scale_rows: float, scale_cols: float) -> np.ndarray:
    """Radial frequency of MATLAB's ``freqspace(shape, 'meshgrid')`` grid scaled per axis, in FFT order.

    ``freqspace`` gives ``(k - floor(n/2)) * 2/n`` for ``k = 0..n-1`` (zero frequency at
    ``floor(n/2)``); the columns' values are multiplied by ``scale_cols``, the rows' by
    ``scale_rows``. The returned ``(H, W)`` array is ``ifftshift``-ed, so that it multiplies an
    unshifted ``fft2`` directly (``ifftshift(fftshift(X) .* R) = X .* ifftshift(R)``).
    """
    h, w = shape
    v = (np.arange(h) - h // 2) * (2.0 / h) * scale_rows
    u = (np.arange(w) - w // 2) * (2.0 / w) * scale_cols
    r = np.sqrt(u[None, :] ** 2 + v[:, None] ** 2)
    return np.fft.ifftshift(r)


def _stack(x: Any, name: str) -> np.ndarray:
    """An image as a float64 ``(K, H, W)`` stack of 8-bit values; refuses anything VIFB cannot read."""
    arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[2] == 3:
        arr = np.moveaxis(arr, 2, 0)
    else:
        raise MetricInputError(f"{name}: expected an (H, W) gray or (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MetricInputError(f"{name}: expected a numeric image, got dtype {arr.dtype}")
    if min(arr.shape[1:]) < 1:
        raise MetricInputError(f"{name}: the image is empty ({arr.shape[2]}x{arr.shape[1]})")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.dtype != np.uint8:
        ok = np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255 and np.array_equal(out, np.floor(out))
        if not ok:
            raise MetricInputError(f"{name}: the VIFB metrics take 8-bit images (integers 0-255, as imread "
                                   "returns them); convert the image to uint8 first")
    return out


def _collapse(stack: np.ndarray) -> np.ndarray:
    """A 3-channel stack whose channels are equal as one channel (the per-channel results are the same)."""
    if stack.shape[0] == 3 and np.array_equal(stack[0], stack[1]) and np.array_equal(stack[1], stack[2]):
        return stack[:1]
    return stack


@dataclass(frozen=True)
class Triplet:
    """Two sources and a fused image, validated, as VIFB's metric functions see them.

    Attributes:
        a: first source (infrared), ``(Ka, H, W)`` float64, 0-255 integers.
        b: second source (visible), ``(Kb, H, W)``.
        f: fused image, ``(Kf, H, W)``; ``Kf = 3`` is VIFB's per-channel branch, ``Kf = 1`` its gray branch.
    """

    a: np.ndarray
    b: np.ndarray
    f: np.ndarray
    #: intermediate results that several metrics share (filled under ``lock``; see ``perceptual``)
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def color(self) -> bool:
        """True when the fused image has three channels (every metric is computed per channel)."""
        return self.f.shape[0] == 3

    def sources(self, rule: GrayRule) -> tuple[np.ndarray, np.ndarray]:
        """The two sources as a metric pairs them with the fused channels.

        Colour fused image: each source per channel (a gray source, or one whose three channels are
        equal, as one channel that broadcasts). Gray fused image: colour sources reduced with
        ``rgb2gray`` by the metric's ``rule`` (``"round"`` where VIFB passes the ``uint8`` image,
        ``"exact"`` where it converts to ``double`` first).
        """
        if self.color:
            return self.a, self.b
        return rgb2gray_matlab(self.a, rule), rgb2gray_matlab(self.b, rule)


def prepare(a: Any, b: Any, f: Any) -> Triplet:
    """Validate ``a`` (infrared), ``b`` (visible), ``f`` (fused): 8-bit, gray or RGB, one size.

    Raises:
        MetricInputError: a wrong shape, non-8-bit values, or images of different sizes.
    """
    sa, sb, sf = _stack(a, "source A"), _stack(b, "source B"), _stack(f, "fused image")
    if not (sa.shape[1:] == sb.shape[1:] == sf.shape[1:]):
        def size(s: np.ndarray) -> str:
            return f"{s.shape[2]}x{s.shape[1]}"

        raise MetricInputError(f"the images differ in size: A {size(sa)}, B {size(sb)}, fused {size(sf)}")
    if sf.shape[0] == 3:
        sa, sb = _collapse(sa), _collapse(sb)
    return Triplet(sa, sb, sf)
