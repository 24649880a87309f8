"""``cddfuse bench`` (the paper's protocol): fuse a standard test set with the authors' protocol, evaluate it with
their metrics (:mod:`cddfuse.metrics`), compare with the paper."""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._fileutil import is_inside
from ..errors import CDDFuseError, UsageError
from ..fusion.policy import fuse_rule, minmax_normalize
from ..metrics.evaluate import EvaluationResult, progress_bar
from ..metrics.io import PathLike, quantize_like_authors, read_gray
from ..metrics.paper import COLUMNS, KNOWN_SETS, PublishedRow, reference_rows
from ..metrics.registry import compute_metrics, resolve_metrics
from ..options import BENCH_NORMALIZE_MODES, METHODS, NETWORK_METHODS, TASKS, Precision, check_choice

__all__ = ["BenchSet", "BenchResult", "detect_testset", "fuse_to_uint8", "run_bench", "format_bench", "NORMALIZE"]

#: ``auto``: min-max for the network, none for the rules (how the published baseline rows were made).
NORMALIZE = BENCH_NORMALIZE_MODES
_FUNCTIONAL = ("CT", "PET", "SPECT")


@dataclass(frozen=True)
class BenchSet:
    """A test set folder (``cddfuse bench``): ``name`` (its folder name), the task its layout implies, the
    two source folders."""

    name: str
    root: Path
    task: str
    dir_a: Path
    dir_b: Path

    @property
    def paper_name(self) -> str | None:
        """The standard set this is (``"TNO"``, ``"MRI_CT"``...), matched by folder name, else None."""
        for known in KNOWN_SETS:
            if known.lower() == self.name.lower():
                return known
        return None

    def describe(self) -> str:
        kind = "infrared-visible" if self.task == "ivf" else "medical"
        return f"{self.name} ({kind}: A = {self.dir_a.name}, B = {self.dir_b.name})"


def detect_testset(path: PathLike) -> BenchSet:
    """Recognise a test set folder by its layout.

    ``ir/`` + ``vi/`` is an infrared-visible set (A = ir, B = vi: TNO, RoadScene); ``MRI/`` plus one
    of ``CT/``, ``PET/``, ``SPECT/`` a medical one (A = the functional image, B = MRI: MRI_CT,
    MRI_PET, MRI_SPECT), as in the authors' ``test_img`` folder. Folder names match ignoring case.
    """
    root = Path(path)
    if not root.is_dir():
        raise CDDFuseError(f"test set {root} " + ("is not a folder" if root.exists() else "does not exist"))
    subdirs = {d.name.lower(): d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    if "ir" in subdirs and "vi" in subdirs:
        return BenchSet(root.name, root, "ivf", subdirs["ir"], subdirs["vi"])
    if "mri" in subdirs:
        functional = [subdirs[m.lower()] for m in _FUNCTIONAL if m.lower() in subdirs]
        if len(functional) > 1:  # pick the one the set's name says (MRI_PET -> PET)
            named = [d for d in functional if root.name.lower().endswith(d.name.lower())]
            functional = named if len(named) == 1 else functional
        if len(functional) == 1:
            return BenchSet(root.name, root, "mif", functional[0], subdirs["mri"])
        if functional:
            raise CDDFuseError(f"{root} has several functional folders ({', '.join(d.name for d in functional)}) "
                               "next to MRI/; keep one per test set")
    found = ", ".join(sorted(d.name for d in subdirs.values())) or "no sub-folders"
    raise CDDFuseError(
        f"{root} is not a test set this command knows: expected ir/ and vi/ (infrared-visible, like TNO and "
        f"RoadScene) or MRI/ with CT/, PET/ or SPECT/ (medical, like MRI_CT); found {found}"
    )



def _network(weights: PathLike | None, data_task: str, weights_task: str | None,
             precision: Precision = "fp32", method: str = "cddfuse"
             ) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], str, str]:
    """The network's fusion function, the kind of weights (``"ivf"``/``"mif"``) and the residual mode.

    ``data_task`` is the kind of images (from the set's layout): IVF weights on medical images use
    the sum of both sources as residual, as the authors did. ``weights_task`` (``--task``) says
    which weights these are when the file does not (:func:`cddfuse.fusion.resolve_residual`).
    CDDFuse-lite (``method="lite"``) has its teacher's residual built in (reported as ``built in``);
    without ``weights`` it is the bundled student of ``weights_task`` or else of the set's kind.
    """
    from ..fusion import Fuser, resolve_residual

    task = check_choice("task", data_task, TASKS)  # as Fuser checks it
    if method == "lite":
        lite = Fuser(weights=weights, task=check_choice("task", weights_task or task, TASKS), method="lite",
                     normalize="none", color="gray", precision=precision)
        declared = lite.info.task if lite.info is not None else None
        return lite.fuse_luminance, weights_task or declared or data_task, "built in"
    fuser = Fuser(weights=weights, task=task, method="cddfuse", normalize="none", color="gray", precision=precision)
    declared = fuser.info.task if fuser.info is not None else None
    residual = resolve_residual("auto", data_task, fuser.info, weights_task=weights_task)
    if residual != fuser.residual:
        fuser = Fuser(weights=weights, task=task, method="cddfuse", residual=residual, normalize="none",
                      color="gray", precision=precision)
    return fuser.fuse_luminance, weights_task or declared or data_task, str(fuser.residual)


@dataclass
class BenchResult:
    """What :func:`run_bench` measured and what it is compared with."""

    testset: BenchSet
    task: str
    method: str
    weights: str | None
    evaluation: EvaluationResult
    total_pairs: int
    references: list[PublishedRow] = field(default_factory=list)
    normalize: str = "minmax"
    residual: str | None = None

    @property
    def run_label(self) -> str:
        weights = Path(self.weights).name if self.weights else "bundled " + self.task.upper()
        if self.method == "cddfuse":
            return f"this run: CDDFuse ({weights})"
        if self.method == "lite":
            return f"this run: CDDFuse-lite ({weights})"
        return f"this run: {self.method} rule"

    def to_dict(self) -> dict[str, Any]:
        ev = self.evaluation.to_dict()
        return {
            "dataset": self.testset.name,
            "task": self.task,
            "method": self.method,
            "weights": self.weights,
            "normalize": self.normalize,
            "residual": self.residual,
            "pairs": len(self.evaluation),
            "pairs_in_set": self.total_pairs,
            "metrics": ev["metrics"],
            "mean": ev["mean"],
            "images": ev["images"],
            "references": [
                {"label": r.label, "method": r.method, "weights": r.weights, "values": r.values, "source": r.source}
                for r in self.references
            ],
        }


def run_bench(testset_dir: PathLike, method: str = "cddfuse", weights: PathLike | None = None,
              task: str | None = None, out_dir: PathLike | None = None, limit: int | None = None,
              names: str | Sequence[str] = COLUMNS, normalize: str = "auto",
              progress: bool | None = None, precision: Precision = "fp32") -> BenchResult:
    """Fuse every pair of a test set with the authors' protocol and evaluate it.

    Protocol (their ``test_IVF.py`` / ``test_MIF.py``): sources read with their gray conversion and
    divided by 255 (float32), fused, min-max normalised to [0, 1], saved as 8-bit PNG the way their
    ``imsave`` does (:func:`quantize_like_authors`), read back and evaluated. The baseline rules
    are applied to the 0-255 gray images and rounded, without normalisation, which is how the
    published baseline rows were made (see :func:`fuse_to_uint8`). The 8-bit image is evaluated in
    memory (the same values a PNG round trip gives); ``out_dir`` also writes it as ``<stem>.png``.

    Args:
        testset_dir: a folder laid out like the authors' ``test_img/<set>`` (see :func:`detect_testset`).
        method: ``"cddfuse"`` (needs weights or bundled ones), ``"lite"`` (CDDFuse-lite, likewise),
            ``"mean"`` or ``"max"``.
        weights: checkpoint for ``cddfuse`` (the authors' ``.pth`` or this project's ``.safetensors``), or
            CDDFuse-lite weights for ``lite``.
        task: which weights these are, ``"ivf"`` or ``"mif"``: it picks the paper row to compare
            with (the paper gives both for the medical sets), and MIF weights decode without
            residual. Default: what the weights say (the authors' ``CDDFuse_IVF.pth`` /
            ``CDDFuse_MIF.pth``), else the set's kind (``ivf`` for ir/vi, ``mif`` for MRI). The
            images' kind always comes from the layout: IVF weights on medical images use the sum of
            both sources as residual, as the authors did.
        out_dir: keep the fused images here.
        limit: fuse only the first ``limit`` pairs (sorted by name).
        names: metrics to compute (the paper's eight by default).
        normalize: ``"auto"`` (``minmax`` for the network, ``none`` for the rules, which is how the
            published baseline rows were made), ``"minmax"`` or ``"none"``; see :func:`fuse_to_uint8`.
        progress: progress bar (default: when stderr is a terminal).
        precision: the network's arithmetic (:class:`~cddfuse.fusion.Fuser`'s ``precision``);
            the paper's protocol is ``"fp32"``.
    """
    from ..io.pairs import match_pairs

    check_choice("method", method, METHODS)
    chosen = resolve_metrics(names)
    if task is not None:
        check_choice("task", task, TASKS)
    if weights is not None and method not in NETWORK_METHODS:
        raise UsageError.invalid("weights", weights, f"only the networks (cddfuse, lite) take weights, not {method}")
    check_choice("normalize", normalize, NORMALIZE)
    if limit is not None and limit < 1:
        raise UsageError.invalid("limit", limit, "must be at least 1")
    ts = detect_testset(testset_dir)
    try:
        listing = match_pairs(ts.dir_a, ts.dir_b)
    except ValueError as e:  # two files with one stem
        raise CDDFuseError(str(e)) from None
    unmatched = listing.unmatched_message(ts.dir_a, ts.dir_b)
    if unmatched:
        raise CDDFuseError(f"{ts.root}: {unmatched}")
    if not listing.pairs:
        raise CDDFuseError(f"{ts.root}: no image pairs found")
    pairs = listing.pairs[:limit] if limit else listing.pairs

    if method in NETWORK_METHODS:
        fuse, task_used, residual = _network(weights, ts.task, task, precision, method)
    else:
        fuse = functools.partial(fuse_rule, method)
        task_used = task or ts.task
        residual = None
    norm = normalize if normalize != "auto" else ("minmax" if method in NETWORK_METHODS else "none")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (is_inside(ts.dir_a, [out]) or is_inside(ts.dir_b, [out])):
        raise UsageError.invalid("out_dir", str(out), "is or contains a source folder of the test set; the sources "
                                 "would be overwritten -- choose another folder")

    evaluation = EvaluationResult(metrics=chosen)
    with progress_bar(len(pairs), f"{ts.name} {method}", progress) as bar:
        for stem, path_a, path_b in pairs:
            a, b = read_gray(path_a), read_gray(path_b)
            if a.shape != b.shape:
                raise CDDFuseError(f"{stem}: the two sources differ in size ({a.shape[1]}x{a.shape[0]} vs "
                                   f"{b.shape[1]}x{b.shape[0]})")
            fused8 = fuse_to_uint8(fuse, a, b, method, norm)
            if out is not None:
                _write_png(out / f"{stem}.png", fused8)
            try:
                values = compute_metrics(a, b, fused8, chosen)
            except CDDFuseError as e:
                raise CDDFuseError(f"{stem}: {e}") from None
            evaluation.stems.append(stem)
            evaluation.values.append(values)
            bar.update(1)

    refs = reference_rows(ts.paper_name, task_used) if ts.paper_name else []
    return BenchResult(ts, task_used, method, str(weights) if weights is not None else None, evaluation,
                       len(listing.pairs), refs, norm, residual)


def fuse_to_uint8(fuse: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray,
                  method: str, normalize: str) -> np.ndarray:
    """One fused 8-bit image from gray sources ``a``, ``b`` (float, 0-255) with the authors' conventions.

    * network (``method="cddfuse"`` or ``"lite"``): ``fuse(a / 255, b / 255)`` in float32; ``minmax``: stretched to
      [0, 1] in float32 and written as their ``imsave`` writes ``fused * 255``
      (:func:`quantize_like_authors`); ``none``: ``round(clip(x, 0, 1) * 255)``.
    * rules: ``none``: the rule on the 0-255 values, rounded half to even (``np.round``), i.e.
      ``round((A + B) / 2)`` and ``max(A, B)``; ``minmax``: the rule on ``a / 255``, ``b / 255``
      (float32), then as for the network.
    """
    if method not in NETWORK_METHODS and normalize == "none":
        return np.round(fuse(a, b)).astype(np.uint8)  # exact in float32: (A + B) / 2 is a multiple of 0.5
    raw = fuse(a / np.float32(255), b / np.float32(255))
    if normalize == "minmax":
        return quantize_like_authors(minmax_normalize(raw))
    return np.round(np.clip(np.asarray(raw, dtype=np.float32), 0, 1) * np.float32(255)).astype(np.uint8)


def _write_png(path: Path, img: np.ndarray) -> None:
    import cv2

    from .._fileutil import atomic_write_bytes

    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover
        raise CDDFuseError(f"could not encode {path}")
    try:
        atomic_write_bytes(path, buf.tobytes())
    except OSError as e:
        raise CDDFuseError(f"cannot write {path}: {e.strerror or e}") from None


def format_bench(result: BenchResult, fmt: str = "table") -> str:
    """The run's mean next to the published rows (two decimals, like the paper; full precision in csv/json)."""
    from ..metrics.report import format_rows, to_json

    if fmt == "json":
        return to_json(result.to_dict())
    names = result.evaluation.metrics
    mean = result.evaluation.mean
    rows: list[list[Any]] = [[result.run_label] + [mean[m] for m in names]]
    for ref in result.references:
        rows.append([ref.label] + [ref.values.get(m, math.nan) for m in names])
    table = format_rows(["", *names] if fmt != "csv" else ["row", *names], rows, fmt, decimals=2,
                        separator_before=1 if len(rows) > 1 else None)
    if fmt == "csv":
        return table
    n, total = len(result.evaluation), result.total_pairs
    head = f"{result.testset.describe()}, {n} pair{'s' if n != 1 else ''}"
    head += f" of {total} (--limit; the published rows are over all {total})" if n < total else ""
    head += (f", {result.task.upper()} weights" if result.method in NETWORK_METHODS
             else f", task {result.task.upper()}")
    head += f" (residual {result.residual})" if result.residual else ""
    head += f", normalisation {result.normalize}"
    if not result.references:
        head += "; no published numbers for this set"
    if fmt == "md":
        return f"{head}\n\n{table}"
    return f"{head}\n{table}"
