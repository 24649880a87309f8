"""The VIFB protocol: the thirteen metrics of the VIFB benchmark, exactly as its MATLAB code computes them.

VIFB (X. Zhang, P. Ye, G. Xiao, "VIFB: A Visible and Infrared Image Fusion Benchmark", CVPR
Workshops 2020) evaluates fused images with thirteen metrics in MATLAB (``metrics/metrics*.m``,
called by ``compute_metrics.m`` as ``metric(visible, infrared, fused)`` on the images as
``imread`` returns them). This module reimplements them from those definitions, with their
conventions: colour results are evaluated per channel and averaged; MI and SSIM are sums over
the two sources, CE, PSNR and RMSE means; VIFB's own definitions of PSNR/RMSE and Variance (a
standard deviation) are kept.

==================  ==========================================  ===========
name                function                                    better
==================  ==========================================  ===========
Avg_gradient        :func:`avg_gradient` ``(f)``                higher
Cross_entropy       :func:`cross_entropy` ``(a, b, f)``         lower
Edge_intensity      :func:`edge_intensity` ``(f)``              higher
Entropy             :func:`entropy` ``(f)``                     higher
Mutinf              :func:`mutinf` ``(a, b, f)``                higher
Psnr                :func:`psnr` ``(a, b, f)``                  higher
Qabf                :func:`qabf` ``(a, b, f)``                  higher
Qcb                 :func:`qcb` ``(a, b, f)``                   higher
Qcv                 :func:`qcv` ``(a, b, f)``                   lower
Rmse                :func:`rmse` ``(a, b, f)``                  lower
Spatial_frequency   :func:`spatial_frequency` ``(f)``           higher
Ssim                :func:`ssim` ``(a, b, f)``                  higher
Variance            :func:`variance` ``(f)``                    higher
==================  ==========================================  ===========

``a`` is the infrared source, ``b`` the visible one, ``f`` the fused image: 8-bit arrays,
``(H, W)`` or ``(H, W, 3)`` RGB (read files with :func:`read_vifb_image`). Several at once:
:func:`compute_vifb_metrics`; folders: :func:`evaluate_vifb_folders` and :func:`vifb_table`.
The metrics of the CDDFuse paper's protocol (``cddfuse.metrics``) share some names with these
(SSIM, Qabf, MI, EN, SF, SD, PSNR) but not their conventions or values; each
:class:`~cddfuse.metrics.MetricInfo` says its ``protocol``.

Example:
    >>> import numpy as np
    >>> from cddfuse.metrics import vifb
    >>> rng = np.random.default_rng(0)
    >>> ir = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    >>> vi = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    >>> round(vifb.entropy(vi), 4) == round(vifb.entropy(vi[..., ::-1]), 4)
    True
    >>> sorted(vifb.compute_vifb_metrics(ir, vi, vi)) == sorted(vifb.VIFB_NAMES)
    True
"""
from typing import Any

from .io import read_vifb_image
from .registry import (
    VIFB_METRICS,
    VIFB_NAMES,
    avg_gradient,
    compute_vifb_metrics,
    cross_entropy,
    edge_intensity,
    entropy,
    mutinf,
    psnr,
    qabf,
    qcb,
    qcv,
    resolve_vifb_metrics,
    rmse,
    spatial_frequency,
    ssim,
    variance,
    vifb_metric_info,
)

__all__ = [
    "VIFB_METRICS", "VIFB_NAMES", "resolve_vifb_metrics", "compute_vifb_metrics", "vifb_metric_info",
    "read_vifb_image", "avg_gradient", "cross_entropy", "edge_intensity", "entropy", "mutinf", "psnr", "qabf",
    "qcb", "qcv", "rmse", "spatial_frequency", "ssim", "variance",
    "evaluate_vifb_folders", "vifb_table", "VifbTable",
]


def __getattr__(name: str) -> Any:  # lazy: folder evaluation pulls in the pairing code and the progress bar
    if name in ("evaluate_vifb_folders", "vifb_table", "VifbTable"):
        from . import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
