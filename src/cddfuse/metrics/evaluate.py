"""Evaluate folders of fused images against their sources (the ``cddfuse eval`` command)."""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CDDFuseError, UsageError
from .io import PathLike, read_gray
from .registry import METRICS, compute_metrics, resolve_metrics

__all__ = ["EvaluationResult", "find_triplets", "evaluate_files", "evaluate_folders", "format_evaluation",
           "progress_bar"]

Triplet = tuple[str, Path, Path, Path]


@dataclass
class EvaluationResult:
    """Per-image metric values and their mean.

    Attributes:
        metrics: metric names, in column order.
        stems: image names (file stems), in row order.
        values: one ``{metric: value}`` per image.
        ignored: fused images that have no sources (not evaluated).
        protocol: whose metrics these are, ``"paper"`` or ``"vifb"`` (:mod:`cddfuse.metrics.vifb`).
    """

    metrics: list[str]
    stems: list[str] = field(default_factory=list)
    values: list[dict[str, float]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    protocol: str = "paper"

    def __len__(self) -> int:
        return len(self.stems)

    @property
    def mean(self) -> dict[str, float]:
        """Arithmetic mean over the images of each metric (NaN if any image gives NaN, as in the authors' sum)."""
        n = len(self.values)
        return {m: (math.fsum(v[m] for v in self.values) / n if n else float("nan")) for m in self.metrics}

    def rows(self) -> list[tuple[str, dict[str, float]]]:
        """``[(stem, values), ...]``."""
        return list(zip(self.stems, self.values))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (non-finite values become None)."""
        def clean(d: dict[str, float]) -> dict[str, float | None]:
            return {k: (v if math.isfinite(v) else None) for k, v in d.items()}

        registry = METRICS
        if self.protocol != "paper":
            from .vifb.registry import VIFB_METRICS as registry
        out: dict[str, Any] = {} if self.protocol == "paper" else {"protocol": self.protocol}
        out.update({
            "metrics": list(self.metrics),
            "count": len(self.stems),
            "mean": clean(self.mean),
            "images": {s: clean(v) for s, v in self.rows()},
            "higher_is_better": {m: registry[m].higher_is_better for m in self.metrics},
        })
        return out


def progress_bar(total: int, desc: str, enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr; ``enabled=None`` shows it only when stderr is a terminal."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, leave=False)



def _folder(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise CDDFuseError(f"{what} {p} is not a folder" if p.exists() else f"{what} {p} does not exist")
    return p


def find_triplets(dir_a: PathLike, dir_b: PathLike, dir_f: PathLike) -> tuple[list[Triplet], list[str]]:
    """Match sources and fused images by file stem.

    Returns ``([(stem, path_a, path_b, path_f), ...], fused_stems_without_sources)``.

    Raises:
        CDDFuseError: a folder is missing, a source has no partner, a fused image is missing
            (the message lists the names), or nothing matched.
    """
    from ..io.pairs import list_images, match_pairs, short_list

    pa, pb, pf = _folder(dir_a, "source folder A"), _folder(dir_b, "source folder B"), _folder(dir_f, "fused folder")
    try:
        listing = match_pairs(pa, pb)
        fused = list_images(pf)
    except ValueError as e:  # two files with one stem
        raise CDDFuseError(str(e)) from None
    unmatched = listing.unmatched_message(pa, pb)
    if unmatched:
        raise CDDFuseError(f"the source folders do not pair up by file name: {unmatched}")
    if not listing.pairs:
        raise CDDFuseError(f"no images found in {pa} and {pb}")
    missing = [s for s, _, _ in listing.pairs if s not in fused]
    if missing:
        raise CDDFuseError(f"{len(missing)} of {len(listing.pairs)} fused images missing in {pf}: "
                           f"{short_list(missing, 20)}")
    stems = {s for s, _, _ in listing.pairs}
    extra = sorted(s for s in fused if s not in stems)
    return [(s, a, b, fused[s]) for s, a, b in listing.pairs], extra


def _evaluate_one(item: Triplet, names: Sequence[str]) -> dict[str, float]:
    stem, pa, pb, pf = item
    a, b, f = read_gray(pa), read_gray(pb), read_gray(pf)
    if not (a.shape == b.shape == f.shape):
        raise CDDFuseError(
            f"{stem}: the images differ in size (A {a.shape[1]}x{a.shape[0]}, B {b.shape[1]}x{b.shape[0]}, "
            f"fused {f.shape[1]}x{f.shape[0]})"
        )
    try:
        return compute_metrics(a, b, f, names)
    except CDDFuseError as e:
        raise CDDFuseError(f"{stem}: {e}") from None


def _worker_init() -> None:
    import cv2

    from ._memory import tune_malloc

    cv2.setNumThreads(1)  # one process per core; no nested thread pools
    tune_malloc()


def evaluate_files(items: Sequence[Triplet], names: None | str | Iterable[str] = None, workers: int = 1,
                   progress: bool | None = None) -> EvaluationResult:
    """Evaluate ``(stem, path_a, path_b, path_fused)`` items; see :func:`evaluate_folders`."""
    chosen = resolve_metrics(names)
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    result = EvaluationResult(metrics=chosen)
    values: list[dict[str, float] | None] = [None] * len(items)
    with progress_bar(len(items), "eval", progress) as bar:
        if workers == 1 or len(items) < 2:
            for i, item in enumerate(items):
                values[i] = _evaluate_one(item, chosen)
                bar.update(1)
        else:
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx,
                                     initializer=_worker_init) as pool:
                futures = {pool.submit(_evaluate_one, item, chosen): i for i, item in enumerate(items)}
                try:
                    for fut in as_completed(futures):
                        values[futures[fut]] = fut.result()
                        bar.update(1)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    result.stems = [it[0] for it in items]
    result.values = [v for v in values if v is not None]
    return result


def evaluate_folders(dir_a: PathLike, dir_b: PathLike, dir_f: PathLike,
                     names: None | str | Iterable[str] = None, workers: int = 1,
                     progress: bool | None = None) -> EvaluationResult:
    """Evaluate every fused image of ``dir_f`` against its sources in ``dir_a`` and ``dir_b``.

    Files are paired by stem (``01.png`` with ``01.jpg``) and read with the authors' gray
    conversion (:func:`read_gray`). The result holds a row per image and the mean over them
    (the authors divide by the number of files in the fused folder; here by the number of pairs,
    which is the same for a clean folder).

    Args:
        dir_a: first sources (infrared / CT / PET / SPECT).
        dir_b: second sources (visible / MRI).
        dir_f: fused images; extra files are reported in ``ignored``.
        names: metric names (see :func:`resolve_metrics`), all twelve by default.
        workers: images evaluated at a time, in separate processes (more than the number of CPU
            cores does not help).
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        CDDFuseError: see :func:`find_triplets`; unreadable images; sizes that differ.
    """
    items, extra = find_triplets(dir_a, dir_b, dir_f)
    result = evaluate_files(items, names, workers=workers, progress=progress)
    result.ignored = extra
    return result


def format_evaluation(result: EvaluationResult, fmt: str = "table", decimals: int = 4) -> str:
    """Render an :class:`EvaluationResult`: a row per image, then the mean (``table``/``md``/``csv``/``json``)."""
    from .report import format_rows, to_json

    if fmt == "json":
        return to_json(result.to_dict())
    header = ["image"] + list(result.metrics)
    rows = [[s] + [v[m] for m in result.metrics] for s, v in result.rows()]
    mean = result.mean
    label = "mean" if fmt != "md" else "**mean**"
    rows.append([f"{label}" if fmt != "table" else f"mean ({len(result)})"] + [mean[m] for m in result.metrics])
    return format_rows(header, rows, fmt, decimals, separator_before=len(rows) - 1)
