"""Names of the metrics, their properties, and :func:`compute_metrics`."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable

from ..errors import UsageError
from ._validate import MetricInputError, as_triplet
from .info import MetricInfo, UnknownMetricError
from .nonref import (
    _average_gradient,
    _entropy,
    _spatial_frequency,
    _standard_deviation,
    average_gradient,
    entropy,
    spatial_frequency,
    standard_deviation,
)
from .pixelwise import (
    _correlation_coefficient,
    _mse,
    _mutual_information,
    _psnr,
    _scd,
    correlation_coefficient,
    mse,
    mutual_information,
    psnr,
    scd,
)
from .qabf import _qabf, qabf
from .ssim import _ssim, ssim
from .vif import VIF_MIN_SIZE, _vif, vif

__all__ = [
    "MetricInfo", "METRICS", "ALL_METRICS", "PAPER_METRICS", "UnknownMetricError",
    "resolve_metrics", "compute_metrics", "metric_info",
]


def _m(name: str, title: str, function: Callable[..., float], impl: Callable[..., float], uses_sources: bool,
       value_range: str, higher: bool = True, min_size: int = 1) -> tuple[str, MetricInfo]:
    return name, MetricInfo(name, title, function, uses_sources, higher, value_range, min_size, impl)


#: Every metric, in the column order of the authors' evaluation (the reference values' order).
METRICS: dict[str, MetricInfo] = dict([
    _m("EN", "entropy (bits)", entropy, _entropy, False, "[0, 8]"),
    _m("SD", "standard deviation", standard_deviation, _standard_deviation, False, "[0, 127.5]"),
    _m("SF", "spatial frequency", spatial_frequency, _spatial_frequency, False, "[0, 360.6]", min_size=2),
    _m("AG", "average gradient", average_gradient, _average_gradient, False, "[0, 255]", min_size=2),
    _m("MI", "mutual information, F with A plus F with B (nats)", mutual_information, _mutual_information,
       True, "[0, 11.09]"),
    _m("SCD", "sum of the correlations of differences", scd, _scd, True, "[-2, 2]"),
    _m("VIF", "visual information fidelity, A plus B", vif, _vif, True, "[0, ~2]", min_size=VIF_MIN_SIZE),
    _m("Qabf", "gradient-based edge preservation Q^AB/F", qabf, _qabf, True, "[0, 1)"),
    _m("SSIM", "structural similarity, F with A plus F with B", ssim, _ssim, True, "[-2, 2]", min_size=7),
    _m("CC", "correlation coefficient, mean of A and B", correlation_coefficient, _correlation_coefficient,
       True, "[-1, 1]"),
    _m("PSNR", "peak signal-to-noise ratio (dB, peak = max(F))", psnr, _psnr, True, "(-inf, inf]"),
    _m("MSE", "mean squared error, mean of A and B", mse, _mse, True, "[0, 65025]", higher=False),
])

#: All metric names, in order.
ALL_METRICS: tuple[str, ...] = tuple(METRICS)
#: The eight columns of the CDDFuse paper's tables, in their order.
PAPER_METRICS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")

_ALIASES = {"VIFF": "VIF", "QAB/F": "Qabf", "QABF": "Qabf", "ENTROPY": "EN"}
_BY_UPPER = {name.upper(): name for name in METRICS}
_GROUPS = {"ALL": ALL_METRICS, "PAPER": PAPER_METRICS}


def resolve_metrics(names: None | str | Iterable[str] = None, protocol: str = "paper") -> list[str]:
    """Canonical metric names from user input.

    ``names`` may be ``None`` (all twelve), a comma-separated string or a list. Matching ignores
    case; ``"paper"`` stands for the paper's eight columns and ``"all"`` for all twelve. Duplicates
    are dropped, the given order is kept. A name may carry its protocol (``"paper.SSIM"``).

    ``protocol="vifb"`` resolves among the thirteen VIFB metrics instead
    (:func:`cddfuse.metrics.vifb.resolve_vifb_metrics`).

    Raises:
        UnknownMetricError: a name that is not a metric (the message lists the known names).

    Example:
        >>> from cddfuse.metrics import resolve_metrics
        >>> resolve_metrics("en, qabf,ssim")
        ['EN', 'Qabf', 'SSIM']
        >>> resolve_metrics("paper")
        ['EN', 'SD', 'SF', 'MI', 'SCD', 'VIF', 'Qabf', 'SSIM']
    """
    if protocol != "paper":
        if protocol == "vifb":
            from .vifb.registry import resolve_vifb_metrics

            return resolve_vifb_metrics(names)
        raise UsageError.invalid("protocol", protocol, "choose 'paper' or 'vifb'")
    if names is None:
        return list(ALL_METRICS)
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    unknown: list[str] = []
    for raw in names:
        key = str(raw).strip()
        if not key:
            continue
        up = key.upper()
        if up.startswith("PAPER."):
            up = up[len("PAPER."):]
        elif up.startswith("VIFB."):
            raise UnknownMetricError(f"{key!r} is a metric of the VIFB protocol; use protocol='vifb' "
                                     "(on the command line: --protocol vifb)")
        if up in _GROUPS:
            found: Sequence[str] = _GROUPS[up]
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
            f"unknown metric{'s' if len(unknown) > 1 else ''} {', '.join(repr(u) for u in unknown)}; "
            f"known: {', '.join(ALL_METRICS)} (or 'paper' for {','.join(PAPER_METRICS)}, 'all')"
        )
    if not out:
        raise UnknownMetricError(f"no metric named; known: {', '.join(ALL_METRICS)}")
    return out


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of one metric name (case-insensitive)."""
    return METRICS[resolve_metrics([name])[0]]


def compute_metrics(a: Any, b: Any, f: Any, names: None | str | Iterable[str] = None) -> dict[str, float]:
    """Compute several metrics of one fused image at once.

    Args:
        a: first source (infrared / functional), 2-D gray, 0-255 scale.
        b: second source (visible / MRI), same size.
        f: the fused image, same size.
        names: which metrics (see :func:`resolve_metrics`); all twelve by default.

    Returns:
        ``{name: value}`` in the order asked for, Python floats.

    Inputs are validated once (2-D, same size, finite); use :func:`cddfuse.metrics.read_gray`
    to read files with the authors' gray conversion.

    Example:
        >>> import numpy as np
        >>> from cddfuse.metrics import compute_metrics
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.integers(0, 256, (2, 64, 64)).astype(np.float64)
        >>> m = compute_metrics(a, b, (a + b) / 2, names="EN,SSIM,MSE")
        >>> list(m)
        ['EN', 'SSIM', 'MSE']
    """
    chosen = resolve_metrics(names)
    fa, fb, ff = as_triplet(a, b, f)
    side = min(ff.shape)
    too_small = [n for n in chosen if METRICS[n].min_size > side]
    if too_small:
        raise MetricInputError(
            f"the images ({ff.shape[1]}x{ff.shape[0]}) are too small for "
            + ", ".join(f"{n} (needs {METRICS[n].min_size}x{METRICS[n].min_size})" for n in too_small)
        )
    return {n: float(METRICS[n]._compute(fa, fb, ff)) for n in chosen}
