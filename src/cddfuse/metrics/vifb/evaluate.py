"""Evaluate folders of fused images with the VIFB metrics, and VIFB's table of methods.

A VIFB folder (``VIFB_DIR``) is laid out like the benchmark's data: ``ir/<scene>.jpg``,
``vi/<scene>.jpg`` and, optionally, ``fused/<METHOD>/<scene>.jpg`` (one folder per method, as in
the published results). :func:`vifb_table` evaluates every method folder, plus any other folders
(a new method's results), into one table of per-image values and their means.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import CDDFuseError, UsageError
from ..evaluate import EvaluationResult, Triplet, find_triplets, progress_bar
from ..io import PathLike
from .io import read_vifb_image
from .registry import VIFB_METRICS, compute_vifb_metrics, resolve_vifb_metrics

__all__ = ["evaluate_vifb_files", "evaluate_vifb_folders", "VifbTable", "vifb_table", "find_vifb_layout",
           "format_vifb_evaluation", "format_vifb_table"]

UP, DOWN = "\u2191", "\u2193"


def _evaluate_one(item: Triplet, names: Sequence[str]) -> dict[str, float]:
    stem, p_ir, p_vi, p_f = item
    ir, vi, f = read_vifb_image(p_ir), read_vifb_image(p_vi), read_vifb_image(p_f)
    if not (ir.shape[:2] == vi.shape[:2] == f.shape[:2]):
        def size(x: Any) -> str:
            return f"{x.shape[1]}x{x.shape[0]}"

        raise CDDFuseError(f"{stem}: the images differ in size (infrared {size(ir)}, visible {size(vi)}, "
                           f"fused {size(f)})")
    try:
        return compute_vifb_metrics(ir, vi, f, names)
    except CDDFuseError as e:
        raise CDDFuseError(f"{stem}: {e}") from None


def _worker_init() -> None:
    import cv2

    from . import registry

    cv2.setNumThreads(1)
    registry.DEFAULT_THREADS = 1  # one process per core


def evaluate_vifb_files(items: Sequence[Triplet], names: None | str | Iterable[str] = None, workers: int = 1,
                        progress: bool | None = None, desc: str = "vifb") -> EvaluationResult:
    """Evaluate ``(stem, infrared, visible, fused)`` path items; see :func:`evaluate_vifb_folders`."""
    chosen = resolve_vifb_metrics(names)
    if workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    values: list[dict[str, float] | None] = [None] * len(items)
    with progress_bar(len(items), desc, progress) as bar:
        if workers == 1 or len(items) < 2:
            for i, item in enumerate(items):
                values[i] = _evaluate_one(item, chosen)
                bar.update(1)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=mp.get_context("spawn"),
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
    return EvaluationResult(metrics=chosen, stems=[it[0] for it in items],
                            values=[v for v in values if v is not None], protocol="vifb")


def evaluate_vifb_folders(dir_ir: PathLike, dir_vi: PathLike, dir_fused: PathLike,
                          names: None | str | Iterable[str] = None, workers: int = 1,
                          progress: bool | None = None) -> EvaluationResult:
    """Evaluate every fused image of ``dir_fused`` with VIFB's metrics (``cddfuse eval --protocol vifb``).

    Files are paired by stem and read as MATLAB's ``imread`` does (:func:`read_vifb_image`: colour
    kept). The result holds a row per image and their mean (VIFB's ``nanmean`` over the images is
    the mean when every value is finite).

    Args:
        dir_ir: infrared sources.
        dir_vi: visible sources.
        dir_fused: fused images; extra files are reported in ``ignored``.
        names: metric names (:func:`~cddfuse.metrics.vifb.resolve_vifb_metrics`); all thirteen by default.
        workers: images evaluated at a time, in separate processes.
        progress: show a progress bar (default: when stderr is a terminal).

    Raises:
        CDDFuseError: see :func:`cddfuse.metrics.evaluate.find_triplets`; unreadable images; sizes that differ.
    """
    items, extra = find_triplets(dir_ir, dir_vi, dir_fused)
    result = evaluate_vifb_files(items, names, workers=workers, progress=progress)
    result.ignored = extra
    return result


@dataclass
class VifbTable:
    """VIFB's table: per method, the per-image values and their means.

    Attributes:
        metrics: metric names, in column order.
        rows: ``{method: EvaluationResult}`` in row order (the published methods first, by name, then
            the added ones in the order given).
        added: the methods that were not in the VIFB folder (a run, or ``--fused`` folders).
    """

    metrics: list[str]
    rows: dict[str, EvaluationResult] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)

    def means(self) -> dict[str, dict[str, float]]:
        """``{method: {metric: mean over the images}}``."""
        return {m: r.mean for m, r in self.rows.items()}

    def best(self) -> dict[str, str]:
        """``{metric: method}`` with the best mean (highest, or lowest where lower is better)."""
        out: dict[str, str] = {}
        means = self.means()
        for name in self.metrics:
            sign = 1.0 if VIFB_METRICS[name].higher_is_better else -1.0
            finite = [(sign * v[name], m) for m, v in means.items() if math.isfinite(v[name])]
            if finite:
                out[name] = max(finite)[1]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: directions, each method's mean and per-image values (non-finite as None)."""
        return {
            "protocol": "vifb",
            "metrics": list(self.metrics),
            "higher_is_better": {m: VIFB_METRICS[m].higher_is_better for m in self.metrics},
            "methods": {m: {k: v for k, v in r.to_dict().items() if k in ("count", "mean", "images")}
                        for m, r in self.rows.items()},
            "added": list(self.added),
            "best": self.best(),
        }


def find_vifb_layout(root: PathLike) -> tuple[Path, Path, dict[str, Path]]:
    """``(ir_dir, vi_dir, {method: fused_dir})`` of a VIFB folder (``fused/`` may be absent).

    Raises:
        CDDFuseError: ``root`` is not a folder or lacks ``ir/`` or ``vi/``.
    """
    p = Path(root)
    if not p.is_dir():
        raise CDDFuseError(f"VIFB folder {p} " + ("is not a folder" if p.exists() else "does not exist"))
    sub = {d.name.lower(): d for d in sorted(p.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if "ir" not in sub or "vi" not in sub:
        found = ", ".join(sorted(d.name for d in sub.values())) or "no sub-folders"
        raise CDDFuseError(f"{p} is not laid out like VIFB's data: expected ir/ and vi/ (and fused/<METHOD>/ "
                           f"for published results); found {found}")
    methods: dict[str, Path] = {}
    if "fused" in sub:
        methods = {d.name: d for d in sorted(sub["fused"].iterdir(), key=lambda d: d.name.lower())
                   if d.is_dir() and not d.name.startswith(".")}
    return sub["ir"], sub["vi"], methods


def vifb_table(root: PathLike | None = None, added: Mapping[str, PathLike] | None = None,
               names: None | str | Iterable[str] = None, workers: int = 1, progress: bool | None = None,
               ir_dir: PathLike | None = None, vi_dir: PathLike | None = None,
               precomputed: Mapping[str, EvaluationResult] | None = None,
               only: Sequence[str] | None = None) -> VifbTable:
    """Evaluate every method of a VIFB folder, and other folders of fused results, into one table.

    Args:
        root: a VIFB folder (``ir/``, ``vi/``, ``fused/<METHOD>/``); its methods come first, by name.
        added: ``{name: folder}`` of other fused results (e.g. a new method), added after them.
        names: metric names; all thirteen by default.
        workers: images evaluated at a time (processes).
        progress: progress bars (default: when stderr is a terminal).
        ir_dir, vi_dir: the sources, when there is no ``root``.
        precomputed: rows already evaluated (a fusion run), added last.
        only: evaluate only these image names (stems), e.g. the ones a limited run fused.

    Raises:
        CDDFuseError: layout problems, a method folder that misses scenes, unreadable images.
        UsageError: a name given twice, or nothing to evaluate.
    """
    methods: dict[str, Path] = {}
    if root is not None:
        ir, vi, methods = find_vifb_layout(root)
    elif ir_dir is not None and vi_dir is not None:
        ir, vi = Path(ir_dir), Path(vi_dir)
    else:
        raise UsageError("give a VIFB folder, or the infrared and visible folders")
    chosen = resolve_vifb_metrics(names)
    table = VifbTable(metrics=chosen)
    extra = dict(added or {})
    for name in list(extra) + list(precomputed or {}):
        if name in methods or name in table.added:
            raise UsageError(f"the method name {name!r} is used twice; name the added folder differently")
        table.added.append(name)
    folders = {**methods, **{k: Path(v) for k, v in extra.items()}}
    if not folders and not precomputed:
        raise UsageError(f"nothing to evaluate: {root} has no fused/<METHOD>/ folders and no folder was added")
    for method, folder in folders.items():
        items, _ = find_triplets(ir, vi, folder)
        if only is not None:
            items = [it for it in items if it[0] in set(only)]
        table.rows[method] = evaluate_vifb_files(items, chosen, workers=workers, progress=progress, desc=method)
    for method, result in (precomputed or {}).items():
        table.rows[method] = result
    return table


def _header(metrics: Sequence[str], arrows: bool) -> list[str]:
    if not arrows:
        return list(metrics)
    return [f"{m} {UP if VIFB_METRICS[m].higher_is_better else DOWN}" for m in metrics]


def _csv_direction_row(metrics: Sequence[str]) -> str:
    return "direction," + ",".join("higher" if VIFB_METRICS[m].higher_is_better else "lower" for m in metrics) + "\n"


def format_vifb_evaluation(result: EvaluationResult, fmt: str = "table", decimals: int = 4) -> str:
    """One folder's VIFB values: a row per image, then the mean; the header marks each metric's
    direction (up: higher is better); csv ends with a ``direction`` row; json has ``higher_is_better``."""
    from ..report import format_rows, to_json

    if fmt == "json":
        return to_json(result.to_dict())
    rows: list[list[Any]] = [[s] + [v[m] for m in result.metrics] for s, v in result.rows()]
    mean = result.mean
    rows.append(["**mean**" if fmt == "md" else ("mean" if fmt == "csv" else f"mean ({len(result)})")]
                + [mean[m] for m in result.metrics])
    text = format_rows(["image", *_header(result.metrics, fmt != "csv")], rows, fmt, decimals,
                       separator_before=len(rows) - 1)
    return text + _csv_direction_row(result.metrics) if fmt == "csv" else text


def format_vifb_table(table: VifbTable, fmt: str = "table", decimals: int = 4) -> str:
    """VIFB's table: a row per method with its mean over the images (the added methods last, after a rule);
    in Markdown the best value of each column is bold."""
    from ..report import format_number, format_rows, to_json

    if fmt == "json":
        return to_json(table.to_dict())
    means = table.means()
    rows: list[list[Any]] = [[m] + [means[m][k] for k in table.metrics] for m in table.rows]
    first_added = next((i for i, m in enumerate(table.rows) if m in table.added), None)
    if fmt == "csv":
        return format_rows(["method", *table.metrics], rows, "csv") + _csv_direction_row(table.metrics)
    n = max((len(r) for r in table.rows.values()), default=0)
    head = f"VIFB metrics, mean over {n} image{'s' if n != 1 else ''} per method " \
           f"({UP} higher is better, {DOWN} lower is better)"
    if fmt == "md":
        best = table.best()
        lines = ["| method | " + " | ".join(_header(table.metrics, True)) + " |",
                 "|:---|" + "---:|" * len(table.metrics)]
        for method in table.rows:
            cells = []
            for k in table.metrics:
                text = format_number(means[method][k], decimals)
                cells.append(f"**{text}**" if best.get(k) == method else text)
            label = f"**{method}**" if method in table.added else method
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return f"{head}\n\n" + "\n".join(lines) + "\n"
    return f"{head}\n" + format_rows(["method", *_header(table.metrics, True)], rows, "table", decimals,
                                     separator_before=first_added)
