"""The thirteen VIFB metrics: names, directions, public functions and :func:`compute_vifb_metrics`."""
from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ...errors import UsageError
from ..info import MetricInfo, UnknownMetricError
from ._common import Triplet, prepare
from .basic import (
    _avg_gradient,
    _cross_entropy,
    _edge_intensity,
    _entropy,
    _mutinf,
    _psnr,
    _rmse,
    _spatial_frequency,
    _variance,
)
from .perceptual import _qcb, _qcv
from .structural import _qabf, _ssim

__all__ = [
    "VIFB_METRICS", "VIFB_NAMES", "resolve_vifb_metrics", "compute_vifb_metrics", "vifb_metric_info",
    "avg_gradient", "cross_entropy", "edge_intensity", "entropy", "mutinf", "psnr", "qabf", "qcb", "qcv",
    "rmse", "spatial_frequency", "ssim", "variance",
]


def _fused_only(impl: Callable[[Triplet], float], doc: str) -> Callable[[Any], float]:
    def fn(f: Any) -> float:
        return impl(prepare(f, f, f))

    fn.__doc__ = doc
    return fn


def _with_sources(impl: Callable[[Triplet], float], doc: str) -> Callable[[Any, Any, Any], float]:
    def fn(a: Any, b: Any, f: Any) -> float:
        return impl(prepare(a, b, f))

    fn.__doc__ = doc
    return fn


_IMAGES = """

    Images are 8-bit, as VIFB reads its JPEGs (:func:`read_vifb_image`): ``uint8`` (or integer-valued)
    ``(H, W)`` gray or ``(H, W, 3)`` RGB, values 0-255. A colour fused image is evaluated per channel
    and the channels' values averaged; a gray source is then paired with every channel."""
_PAIR = _IMAGES + """ ``a`` is the infrared source, ``b`` the visible one (the metric is symmetric in them)."""

avg_gradient = _fused_only(_avg_gradient, """VIFB Avg_gradient: mean of ``sqrt((gx^2 + gy^2) / 2)``.

    ``gx``, ``gy`` are MATLAB ``gradient`` (central differences, one-sided on the border); the sum is
    divided by ``(H-1)(W-1)``, not by the number of pixels. Higher is better.""" + _IMAGES)
edge_intensity = _fused_only(_edge_intensity, """VIFB Edge_intensity: mean Sobel gradient magnitude.

    ``imfilter`` with ``fspecial('sobel')`` and its transpose, replicated border. Higher is better.""" + _IMAGES)
entropy = _fused_only(_entropy, """VIFB Entropy: Shannon entropy (bits) of the 256-level histogram.
    Higher is better.""" + _IMAGES)
spatial_frequency = _fused_only(_spatial_frequency, """VIFB Spatial_frequency: ``sqrt(RF + CF)``.

    ``RF``, ``CF``: sums of squared horizontal / vertical neighbour differences over the number of
    values. VIFB indexes a colour image as its three channels side by side (R | G | B), so the two
    seams between channels count as horizontal differences (reproduced). Higher is better.""" + _IMAGES)
variance = _fused_only(_variance, """VIFB Variance: the standard deviation (not the variance) of the
    values (population, divided by H W). Higher is better.""" + _IMAGES)
cross_entropy = _with_sources(_cross_entropy, """VIFB Cross_entropy: mean over the two sources of
    ``sum p_src log2(p_src / p_fused)`` over the gray levels present in both histograms. Lower is
    better.""" + _PAIR)
mutinf = _with_sources(_mutinf, """VIFB Mutinf: MI(visible, fused) + MI(infrared, fused), in nats.

    Each image of a pair is min-max scaled and re-quantised to 256 levels (``int16(x * 255)``)
    before the 256 x 256 joint histogram. Higher is better.""" + _PAIR)
psnr = _with_sources(_psnr, """VIFB Psnr: ``20 log10(255 / sqrt(E))`` (dB).

    ``E`` is the mean over the two sources of VIFB's ``mse``, which is ``sqrt(sum (s - f)^2) / (H W)``
    (a root of the sum, over the pixel count: not a mean squared error). Higher is better.""" + _PAIR)
rmse = _with_sources(_rmse, """VIFB Rmse: the mean over the two sources of ``sqrt(sum (s - f)^2) / (H W)``
    (VIFB's definition, not a root mean square). Lower is better.""" + _PAIR)
qabf = _with_sources(_qabf, """VIFB Qabf: Xydeas-Petrovic gradient-based edge preservation Q^AB/F.

    Sobel by ``conv2(.., 'same')`` (zero padding), orientation ``atan(gy / gx)`` (pi/2 where
    ``gx = 0``); where a source's edge strength equals the fused one, VIFB takes the strength itself
    as the ratio (reproduced). In [0, 1), higher is better.""" + _PAIR)
qcb = _with_sources(_qcb, """VIFB Qcb: Chen-Blum perceptual quality (Z. Liu's implementation).

    Images min-max scaled to rounded 0-255, filtered by a difference-of-Gaussians contrast
    sensitivity function on the ``freqspace`` grid, local contrast from 31 x 31 Gaussians (sigma 2
    and 4), preservation weighted by the sources' saliency. Higher is better.""" + _PAIR)
qcv = _with_sources(_qcv, """VIFB Qcv: Chen-Varshney perceptual distortion (Z. Liu's implementation).

    16 x 16 blocks (partial blocks zero-padded, as ``blkproc``), saliency = sum of the Sobel magnitude
    to the power 5, distortion = mean square of the Mannos-Sakrison-filtered difference. Lower is
    better.""" + _PAIR)
ssim = _with_sources(_ssim, """VIFB Ssim: SSIM(visible, fused) + SSIM(infrared, fused).

    Wang et al.'s Gaussian SSIM (11 x 11, sigma 1.5, K = 0.01, 0.03, L = 255) averaged over the 'valid'
    part (``filter2(.., 'valid')``: no border). In [-2, 2], higher is better.""" + _PAIR)


def _m(name: str, title: str, function: Callable[..., float], impl: Callable[[Triplet], float],
       uses_sources: bool, value_range: str, higher: bool = True, min_size: int = 1) -> tuple[str, MetricInfo]:
    return name, MetricInfo(name, title, function, uses_sources, higher, value_range, min_size, impl,
                            protocol="vifb")


#: The thirteen VIFB metrics under VIFB's own names, in its column order (``util/configMetrics.m``).
VIFB_METRICS: dict[str, MetricInfo] = dict([
    _m("Avg_gradient", "average gradient", avg_gradient, _avg_gradient, False, "[0, 255]", min_size=2),
    _m("Cross_entropy", "cross entropy, mean of visible and infrared (bits)", cross_entropy, _cross_entropy,
       True, ">= 0", higher=False),
    _m("Edge_intensity", "edge intensity (Sobel magnitude)", edge_intensity, _edge_intensity, False, "[0, 1082]"),
    _m("Entropy", "entropy (bits)", entropy, _entropy, False, "[0, 8]"),
    _m("Mutinf", "mutual information, visible plus infrared (nats)", mutinf, _mutinf, True, "[0, 11.09]"),
    _m("Psnr", "peak signal-to-noise ratio (dB), VIFB's definition", psnr, _psnr, True, "dB"),
    _m("Qabf", "gradient-based edge preservation Q^AB/F", qabf, _qabf, True, "[0, 1)"),
    _m("Qcb", "Chen-Blum perceptual quality", qcb, _qcb, True, "[0, 1]", min_size=2),
    _m("Qcv", "Chen-Varshney perceptual distortion", qcv, _qcv, True, ">= 0", higher=False),
    _m("Rmse", "root error, mean of visible and infrared, VIFB's definition", rmse, _rmse, True, ">= 0",
       higher=False),
    _m("Spatial_frequency", "spatial frequency", spatial_frequency, _spatial_frequency, False, ">= 0"),
    _m("Ssim", "structural similarity, visible plus infrared", ssim, _ssim, True, "[-2, 2]", min_size=11),
    _m("Variance", "standard deviation (VIFB calls it variance)", variance, _variance, False, "[0, 127.5]"),
])
#: The thirteen names, in order.
VIFB_NAMES: tuple[str, ...] = tuple(VIFB_METRICS)

# the abbreviations of the VIFB paper's tables, and the paper protocol's names for the same ideas
_ALIASES = {
    "AG": "Avg_gradient", "CE": "Cross_entropy", "EI": "Edge_intensity", "EN": "Entropy", "MI": "Mutinf",
    "QABF": "Qabf", "QAB/F": "Qabf", "QCB": "Qcb", "QCV": "Qcv", "SF": "Spatial_frequency", "SD": "Variance",
    "PSNR": "Psnr", "RMSE": "Rmse", "SSIM": "Ssim",
}
_BY_UPPER = {n.upper(): n for n in VIFB_METRICS}


def resolve_vifb_metrics(names: None | str | Iterable[str] = None) -> list[str]:
    """VIFB metric names from user input (``None``, ``"all"`` or ``"vifb"``: all thirteen).

    Matching ignores case; VIFB's table abbreviations are accepted (``AG``, ``CE``, ``EI``, ``EN``,
    ``MI``, ``SF``, ``SD``, ``SSIM``...), and a ``vifb.`` prefix.

    Raises:
        UnknownMetricError: an unknown name, or a name with the ``paper.`` prefix.

    Example:
        >>> from cddfuse.metrics.vifb import resolve_vifb_metrics
        >>> resolve_vifb_metrics("ssim, vifb.Qcb, EN")
        ['Ssim', 'Qcb', 'Entropy']
    """
    if names is None:
        return list(VIFB_NAMES)
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    unknown: list[str] = []
    for raw in names:
        key = str(raw).strip()
        if not key:
            continue
        up = key.upper()
        if up.startswith("VIFB."):
            up = up[len("VIFB."):]
        elif up.startswith("PAPER."):
            raise UnknownMetricError(f"{key!r} is a metric of the paper protocol, not of VIFB; use "
                                     "protocol='paper' (on the command line: --protocol paper)")
        if up in ("ALL", "VIFB"):
            found: tuple[str, ...] = VIFB_NAMES
        elif up in _BY_UPPER:
            found = (_BY_UPPER[up],)
        elif up in _ALIASES:
            found = (_ALIASES[up],)
        else:
            unknown.append(key)
            continue
        out.extend(n for n in found if n not in out)
    if unknown:
        raise UnknownMetricError(
            f"unknown VIFB metric{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)}; "
            f"known: {', '.join(VIFB_NAMES)} (or 'all')"
        )
    if not out:
        raise UnknownMetricError(f"no metric named; known: {', '.join(VIFB_NAMES)}")
    return out


def vifb_metric_info(name: str) -> MetricInfo:
    """The :class:`~cddfuse.metrics.MetricInfo` of one VIFB metric (case-insensitive, aliases accepted)."""
    return VIFB_METRICS[resolve_vifb_metrics([name])[0]]


#: Rough relative cost of each metric on a colour triplet (the order the thread pool starts them in).
_COST = {"Qcb": 35, "Qabf": 20, "Qcv": 17, "Ssim": 10, "Mutinf": 5, "Avg_gradient": 3, "Psnr": 2,
         "Edge_intensity": 2, "Cross_entropy": 1, "Rmse": 1, "Spatial_frequency": 1, "Entropy": 1, "Variance": 1}
#: Threads of :func:`compute_vifb_metrics` when not given (None: up to 2, as the CPU allows).
DEFAULT_THREADS: int | None = None


def _default_threads() -> int:
    if DEFAULT_THREADS is not None:
        return DEFAULT_THREADS
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def _run_single_threaded(impl: Callable[[Triplet], float], t: Triplet) -> float:
    """``impl(t)`` with one FFT thread in this thread (the pool's threads already share the cores)."""
    from .perceptual import _LOCAL

    before = getattr(_LOCAL, "fft_workers", None)
    _LOCAL.fft_workers = 1
    try:
        return float(impl(t))
    finally:
        if before is None:
            del _LOCAL.fft_workers
        else:
            _LOCAL.fft_workers = before


def compute_vifb_metrics(a: Any, b: Any, f: Any, names: None | str | Iterable[str] = None,
                         threads: int | None = None) -> dict[str, float]:
    """Several VIFB metrics of one fused image at once, exactly as VIFB's MATLAB code computes them.

    Args:
        a: infrared source, 8-bit ``(H, W)`` or ``(H, W, 3)`` (:func:`read_vifb_image` reads files
            as MATLAB's ``imread`` does).
        b: visible source, same size.
        f: fused image, same size; ``(H, W, 3)``: every metric per channel, averaged (VIFB's branch
            for colour results; a gray source is paired with every channel); ``(H, W)``: colour
            sources are reduced with MATLAB's ``rgb2gray`` the way each VIFB metric does it.
        names: which metrics (:func:`resolve_vifb_metrics`); all thirteen by default.
        threads: metrics computed at a time, in threads, each metric on one thread (default: 2
            where the CPU has 2 cores or more; the values do not depend on it). OpenCV's own
            threads (``cv2.setNumThreads``) are left as they are.

    Returns:
        ``{name: value}`` in the order asked for.

    Raises:
        MetricInputError: shapes, sizes or values VIFB cannot take, or images too small for a metric.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics.vifb import compute_vifb_metrics
        >>> rng = np.random.default_rng(0)
        >>> ir = rng.integers(0, 256, (32, 32), dtype=np.uint8)
        >>> vi = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        >>> fused = np.maximum(vi, ir[..., None])
        >>> m = compute_vifb_metrics(ir, vi, fused, "Entropy,Rmse")
        >>> list(m)
        ['Entropy', 'Rmse']
    """
    from .._validate import MetricInputError

    chosen = resolve_vifb_metrics(names)
    t = prepare(a, b, f)
    side = min(t.f.shape[1:])
    too_small = [n for n in chosen if VIFB_METRICS[n].min_size > side]
    if too_small:
        raise MetricInputError(
            f"the images ({t.f.shape[2]}x{t.f.shape[1]}) are too small for "
            + ", ".join(f"{n} (needs {VIFB_METRICS[n].min_size}x{VIFB_METRICS[n].min_size})" for n in too_small)
        )
    impls = {n: VIFB_METRICS[n]._impl for n in chosen}
    n_threads = threads if threads is not None else _default_threads()
    if n_threads < 1:
        raise UsageError.invalid("threads", threads, "must be at least 1")
    if n_threads == 1 or len(chosen) == 1:
        return {n: _run_single_threaded(impl, t) for n, impl in impls.items() if impl is not None}
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        futures = {n: pool.submit(_run_single_threaded, impls[n], t)  # type: ignore[arg-type]
                   for n in sorted(chosen, key=lambda n: -_COST.get(n, 1))}
        return {n: futures[n].result() for n in chosen}
