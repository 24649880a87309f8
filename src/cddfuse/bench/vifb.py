"""``cddfuse bench --protocol vifb``: fuse VIFB's pairs with a method and rank it in VIFB's table
(the metrics: :mod:`cddfuse.metrics.vifb`)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from .._fileutil import is_inside
from ..errors import CDDFuseError, UsageError
from ..metrics.evaluate import EvaluationResult, progress_bar
from ..metrics.io import PathLike
from ..metrics.vifb.evaluate import VifbTable, find_vifb_layout, vifb_table
from ..metrics.vifb.io import read_vifb_image
from ..metrics.vifb.registry import compute_vifb_metrics, resolve_vifb_metrics
from ..options import METHODS, TASKS, Precision, check_choice

__all__ = ["run_vifb_bench", "fuse_vifb_pairs"]


def fuse_vifb_pairs(root: PathLike, method: str = "cddfuse", weights: PathLike | None = None,
                    task: str | None = None, out_dir: PathLike | None = None, limit: int | None = None,
                    names: None | str | Iterable[str] = None, progress: bool | None = None,
                    precision: Precision = "fp32") -> EvaluationResult:
    """Fuse every infrared/visible pair of a VIFB folder and evaluate the results with VIFB's metrics.

    The visible image's colour goes back on the fused luminance as Cb/Cr (``chroma="ycbcr"``, as the
    deep methods of VIFB's table do), the result is rounded to 8 bits and evaluated in memory (no
    JPEG step: VIFB's published results are JPEG files, which costs them a little); ``out_dir``
    keeps the images as ``<scene>.png``.
    """
    from ..fusion import Fuser
    from ..io.image import write_image
    from ..io.pairs import match_pairs

    check_choice("method", method, METHODS)
    if task is not None:
        check_choice("task", task, TASKS)
    if weights is not None and method != "cddfuse":
        raise UsageError.invalid("weights", weights, f"weights are only used with method='cddfuse', not {method!r}")
    if limit is not None and limit < 1:
        raise UsageError.invalid("limit", limit, "must be at least 1")
    chosen = resolve_vifb_metrics(names)
    ir_dir, vi_dir, _ = find_vifb_layout(root)
    try:
        listing = match_pairs(ir_dir, vi_dir)
    except ValueError as e:
        raise CDDFuseError(str(e)) from None
    unmatched = listing.unmatched_message(ir_dir, vi_dir)
    if unmatched:
        raise CDDFuseError(f"{root}: {unmatched}")
    if not listing.pairs:
        raise CDDFuseError(f"{root}: no image pairs found")
    pairs = listing.pairs[:limit] if limit else listing.pairs
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (is_inside(ir_dir, [out]) or is_inside(vi_dir, [out])):
        raise UsageError.invalid("out_dir", str(out), "is or contains a source folder; choose another folder")
    fuser = Fuser(weights=weights, task=task or "ivf", method=method, color="auto", chroma="ycbcr",  # type: ignore[arg-type]
                  precision=precision)
    result = EvaluationResult(metrics=chosen, protocol="vifb")
    with progress_bar(len(pairs), f"fuse {method}", progress) as bar:
        for stem, p_ir, p_vi in pairs:
            ir, vi = read_vifb_image(p_ir), read_vifb_image(p_vi)
            fused = fuser.fuse(p_ir, p_vi)
            fused8 = np.rint(np.clip(fused, 0.0, 1.0) * 255).astype(np.uint8)
            if out is not None:
                write_image(out / f"{stem}.png", fused8 / np.float32(255))  # write_image takes [0, 1]
            try:
                values = compute_vifb_metrics(ir, vi, fused8, chosen)
            except CDDFuseError as e:
                raise CDDFuseError(f"{stem}: {e}") from None
            result.stems.append(stem)
            result.values.append(values)
            bar.update(1)
    return result


def run_vifb_bench(root: PathLike, method: str | None = None, weights: PathLike | None = None,
                   task: str | None = None, added: Mapping[str, PathLike] | None = None,
                   out_dir: PathLike | None = None, limit: int | None = None,
                   names: None | str | Iterable[str] = None, workers: int = 1, progress: bool | None = None,
                   precision: Precision = "fp32") -> VifbTable:
    """VIFB's table for a VIFB folder: its published methods, the ``added`` folders and, with ``method``,
    a fusion run of that method (row ``"<method> (this run)"``), all on the same images.

    ``limit`` restricts every row to the first ``limit`` scenes (by name).
    """
    run: dict[str, EvaluationResult] = {}
    only: list[str] | None = None
    if method is not None:
        res = fuse_vifb_pairs(root, method, weights, task, out_dir, limit, names, progress, precision)
        run[f"{'CDDFuse' if method == 'cddfuse' else method} (this run)"] = res
        only = list(res.stems) if limit else None
    elif limit is not None:
        from ..io.pairs import match_pairs

        ir_dir, vi_dir, _ = find_vifb_layout(root)
        only = [s for s, _, _ in match_pairs(ir_dir, vi_dir).pairs[:limit]]
    return vifb_table(root, added, names, workers=workers, progress=progress, precomputed=run, only=only)
