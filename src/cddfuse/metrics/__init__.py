"""Fusion quality metrics, computed exactly as the CDDFuse authors' evaluation code does, and fast.

Twelve metrics, each a documented function on numpy arrays (gray, 0-255 scale; ``a`` = infrared /
functional source, ``b`` = visible / MRI source, ``f`` = fused image):

========  ==================================================  ==========  ===========
name      function                                            range       better
========  ==================================================  ==========  ===========
EN        :func:`entropy` ``(f)``                             [0, 8]      higher
SD        :func:`standard_deviation` ``(f)``                  [0, 127.5]  higher
SF        :func:`spatial_frequency` ``(f)``                   >= 0        higher
AG        :func:`average_gradient` ``(f)``                    [0, 255]    higher
MI        :func:`mutual_information` ``(a, b, f)``            [0, 11.09]  higher
SCD       :func:`scd` ``(a, b, f)``                           [-2, 2]     higher
VIF       :func:`vif` ``(a, b, f)``                           >= 0        higher
Qabf      :func:`qabf` ``(a, b, f)``                          [0, 1)      higher
SSIM      :func:`ssim` ``(a, b, f)``                          [-2, 2]     higher
CC        :func:`correlation_coefficient` ``(a, b, f)``       [-1, 1]     higher
PSNR      :func:`psnr` ``(a, b, f)``                          dB          higher
MSE       :func:`mse` ``(a, b, f)``                           [0, 65025]  lower
========  ==================================================  ==========  ===========

:func:`compute_metrics` computes several at once, :func:`read_gray` reads a file with the
authors' gray conversion, :func:`evaluate_folders` evaluates a folder of fused images.

Example:
    >>> import numpy as np
    >>> from cddfuse.metrics import compute_metrics
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.integers(0, 256, (2, 64, 64)).astype(np.float64)
    >>> m = compute_metrics(a, b, np.maximum(a, b))
    >>> sorted(m) == sorted(["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE"])
    True
"""
from typing import Any

from ._memory import tune_malloc
from ._validate import MetricInputError
from .io import quantize_like_authors, read_gray, rgb_to_gray
from .nonref import average_gradient, entropy, spatial_frequency, standard_deviation
from .pixelwise import correlation_coefficient, mse, mutual_information, psnr, scd
from .qabf import qabf
from .registry import (
    ALL_METRICS,
    METRICS,
    PAPER_METRICS,
    MetricInfo,
    UnknownMetricError,
    compute_metrics,
    metric_info,
    resolve_metrics,
)
from .ssim import ssim
from .vif import vif, vif_window

__all__ = [
    "entropy", "standard_deviation", "spatial_frequency", "average_gradient",
    "mutual_information", "scd", "vif", "qabf", "ssim", "correlation_coefficient", "mse", "psnr",
    "compute_metrics", "resolve_metrics", "metric_info", "MetricInfo", "METRICS", "ALL_METRICS",
    "PAPER_METRICS", "UnknownMetricError", "MetricInputError",
    "read_gray", "rgb_to_gray", "quantize_like_authors", "vif_window",
    "evaluate_folders", "evaluate_files", "EvaluationResult", "tune_malloc",
]


def __getattr__(name: str) -> Any:  # lazy: folder evaluation pulls in the progress bar and pairing code
    if name in ("evaluate_folders", "evaluate_files", "EvaluationResult"):
        from . import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
