"""What a metric is (:class:`MetricInfo`) and the error for an unknown name, shared by both protocols'
registries: the paper's (:mod:`cddfuse.metrics.registry`) and VIFB's (:mod:`cddfuse.metrics.vifb.registry`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import UsageError

__all__ = ["MetricInfo", "UnknownMetricError"]


class UnknownMetricError(UsageError, KeyError):
    """A metric name that the protocol's registry (:data:`~cddfuse.metrics.METRICS`,
    :data:`~cddfuse.metrics.vifb.VIFB_METRICS`) does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MetricInfo:
    """Properties of one metric.

    Attributes:
        name: the column name used in the paper and in results (``"EN"``, ``"Qabf"``...).
        title: what it stands for.
        function: the public function (``f`` only for no-reference metrics, else ``(a, b, f)``).
        uses_sources: False for the no-reference metrics EN, SD, SF, AG.
        higher_is_better: False only for MSE.
        value_range: the possible values, as text.
        min_size: the smallest image side the metric accepts.
        protocol: the evaluation protocol it belongs to: ``"paper"`` (the CDDFuse authors' code, these
            twelve) or ``"vifb"`` (the VIFB benchmark's MATLAB code, :mod:`cddfuse.metrics.vifb`).
            Both have a Qabf, an SSIM...: same idea, different conventions and values.
    """

    name: str
    title: str
    function: Callable[..., float]
    uses_sources: bool
    higher_is_better: bool
    value_range: str
    min_size: int = 1
    _impl: Callable[..., float] | None = field(default=None, repr=False, compare=False)
    protocol: str = "paper"

    @property
    def qualified_name(self) -> str:
        """``protocol.name`` (``"paper.SSIM"``, ``"vifb.Ssim"``): unique across the protocols."""
        return f"{self.protocol}.{self.name}"

    @property
    def direction(self) -> str:
        """``"higher"`` or ``"lower"`` (is better)."""
        return "higher" if self.higher_is_better else "lower"

    def _compute(self, a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
        assert self._impl is not None
        return self._impl(f) if not self.uses_sources else self._impl(a, b, f)
