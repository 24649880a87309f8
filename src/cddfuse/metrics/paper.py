"""Published numbers to compare against: the CDDFuse paper's rows and the simple-rule baselines.

All rows are in the paper's column order :data:`COLUMNS` (EN SD SF MI SCD VIF Qabf SSIM), rounded
to two decimals as printed. MI is in nats (natural log), VIF and SSIM are sums over the two
sources, SSIM with the authors' ``data_range = 2`` (see :func:`cddfuse.metrics.ssim`).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COLUMNS", "PublishedRow", "PAPER_ROWS", "BASELINE_ROWS", "reference_rows", "KNOWN_SETS"]

COLUMNS: tuple[str, ...] = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")

_PAPER = (
    "Z. Zhao et al., \"CDDFuse: Correlation-Driven Dual-Branch Feature Decomposition for "
    "Multi-Modality Image Fusion\", CVPR 2023, results tables"
)
_BASELINE = (
    "the CDDFuse authors' evaluation code (utils/Evaluator.py) run on the full test set, "
    "fused by the rule with their protocol (gray sources in [0, 1], min-max normalised, 8-bit PNG)"
)

#: The five standard test sets, with the modality folder of source A and of source B.
KNOWN_SETS: dict[str, tuple[str, str, str]] = {
    # name: (task, folder of A = infrared / functional, folder of B = visible / MRI)
    "TNO": ("ivf", "ir", "vi"),
    "RoadScene": ("ivf", "ir", "vi"),
    "MRI_CT": ("mif", "CT", "MRI"),
    "MRI_PET": ("mif", "PET", "MRI"),
    "MRI_SPECT": ("mif", "SPECT", "MRI"),
}


@dataclass(frozen=True)
class PublishedRow:
    """One row of published numbers.

    Attributes:
        dataset: test set name (``"TNO"``, ``"MRI_CT"``...).
        method: ``"cddfuse"``, ``"mean"`` or ``"max"``.
        weights: for CDDFuse, which released weights (``"ivf"`` or ``"mif"``); None for the rules.
        values: ``{column: value}`` over :data:`COLUMNS`.
        source: where the numbers come from.
    """

    dataset: str
    method: str
    weights: str | None
    values: dict[str, float]
    source: str

    @property
    def label(self) -> str:
        if self.method == "cddfuse":
            return f"CDDFuse paper ({self.weights.upper() if self.weights else '?'} weights)"
        return f"{self.method} rule (authors' code)"


def _row(dataset: str, method: str, weights: str | None, text: str, source: str) -> PublishedRow:
    vals = [float(v) for v in text.split()]
    assert len(vals) == len(COLUMNS)
    return PublishedRow(dataset, method, weights, dict(zip(COLUMNS, vals)), source)


#: CDDFuse rows of the paper: IVF weights on TNO and RoadScene; on the medical sets,
#: both the MIF weights and the IVF weights applied to medical images.
PAPER_ROWS: list[PublishedRow] = [
    _row("TNO", "cddfuse", "ivf", "7.12 46.00 13.15 2.19 1.76 0.77 0.54 1.03", _PAPER),
    _row("RoadScene", "cddfuse", "ivf", "7.44 54.67 16.36 2.30 1.81 0.69 0.52 0.98", _PAPER),
    _row("MRI_CT", "cddfuse", "mif", "4.88 79.17 38.14 2.61 1.41 0.61 0.68 1.34", _PAPER),
    _row("MRI_PET", "cddfuse", "mif", "4.22 70.74 29.57 2.03 1.69 0.71 0.71 1.49", _PAPER),
    _row("MRI_SPECT", "cddfuse", "mif", "3.90 58.31 20.87 2.49 1.35 0.97 0.78 1.48", _PAPER),
    _row("MRI_CT", "cddfuse", "ivf", "4.83 88.59 33.83 2.24 1.74 0.50 0.59 1.31", _PAPER),
    _row("MRI_PET", "cddfuse", "ivf", "4.23 81.69 28.04 1.87 1.82 0.66 0.65 1.46", _PAPER),
    _row("MRI_SPECT", "cddfuse", "ivf", "3.91 71.81 20.66 1.90 1.87 0.65 0.68 1.45", _PAPER),
]

#: The mean ((A+B)/2) and max (max(A, B)) rules through the same protocol, measured with the
#: authors' metric code on the full test sets.
BASELINE_ROWS: list[PublishedRow] = [
    _row("TNO", "mean", None, "6.23 26.11 6.95 1.60 1.54 0.57 0.36 1.01", _BASELINE),
    _row("TNO", "max", None, "6.81 40.01 10.06 4.71 1.54 0.92 0.60 1.00", _BASELINE),
    _row("RoadScene", "mean", None, "6.45 28.52 7.53 2.00 1.42 0.57 0.38 0.95", _BASELINE),
    _row("RoadScene", "max", None, "7.03 44.01 11.63 5.11 1.41 0.85 0.60 0.97", _BASELINE),
    _row("MRI_CT", "mean", None, "4.45 57.32 19.57 2.61 0.99 0.45 0.37 1.31", _BASELINE),
    _row("MRI_CT", "max", None, "4.47 84.22 33.53 3.63 1.50 0.64 0.63 1.38", _BASELINE),
    _row("MRI_PET", "mean", None, "3.77 49.89 15.42 2.16 1.10 0.64 0.40 1.43", _BASELINE),
    _row("MRI_PET", "max", None, "3.85 75.49 27.33 3.04 1.70 0.92 0.71 1.51", _BASELINE),
    _row("MRI_SPECT", "mean", None, "3.56 44.64 10.79 2.14 0.74 0.61 0.40 1.45", _BASELINE),
    _row("MRI_SPECT", "max", None, "3.54 59.47 18.39 2.88 1.33 0.74 0.69 1.51", _BASELINE),
]


def reference_rows(dataset: str, task: str | None = None) -> list[PublishedRow]:
    """Rows to print next to a run on ``dataset``: the paper's CDDFuse row(s), then the baselines.

    With ``task`` given (``"ivf"``/``"mif"``), only the paper row of those weights is returned.
    """
    rows = [r for r in PAPER_ROWS if r.dataset == dataset and (task is None or r.weights == task)]
    rows += [r for r in BASELINE_ROWS if r.dataset == dataset]
    return rows
