"""Probe (issue 29): the numbers the confidence of ``cddfuse.align`` was calibrated on (training pairs only).

For ``n`` random pairs of a training set (RoadScene train: homography; Harvard MRI_CT train: affine; never the
test pairs that ``bench_align.py`` reports on), seed 29: the estimate on the registered pair (M0), then on
three misaligned copies made by ``bench_align.py``'s generator (two warps, one warp + 2x downscale), and on
``n // 2`` unrelated pairs (the first image of one pair with the second image of another). For each it prints
the block confidence, the matches and inliers, the self error (as in ``bench_align.py``) and the dense
refinement's edge-field correlation at the estimate (``c0``) and at the estimate moved by 3 px (``n3``) and 8 px
(``n8``) in the worst of 8 directions; ``sharpness`` = ``c0 - n3``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/align_calibration_probe.py rs_train 30 out.json
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/align_calibration_probe.py ct_train 20 out.json
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_align as bench  # noqa: E402

SEED = 29
SHIFTS = [(dx, dy) for r in (3, 8) for dx, dy in ((r, 0), (-r, 0), (0, r), (0, -r), (r, r), (-r, -r), (r, -r), (-r, r))]


def correlations(ya: np.ndarray, yb: np.ndarray, matrix: np.ndarray) -> list[float]:
    """``c0`` and the correlations at the 16 shifted transforms (3 px, then 8 px; 640 px level)."""
    from cddfuse.align import registration as reg

    a, b = np.ascontiguousarray(ya, np.float32), np.ascontiguousarray(yb, np.float32)
    va, vb = reg.border_mask(a), reg.border_mask(b)
    a, b = reg._fill_frame(a, va), reg._fill_frame(b, vb)
    as_, vas, sa, bs, vbs, sb, _ = reg._level(a, va, b, vb, matrix, 640)
    m = reg._normalised(sb @ matrix @ np.linalg.inv(sa))
    ms = [m] + [np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]]) @ m for dx, dy in SHIFTS]
    return [float(x) for x in reg.field_correlations(as_, vas, bs, vbs, ms)]


def main() -> int:
    from cddfuse.align import estimate
    from cddfuse.io.color import luminance

    which, n, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    shared = Path(os.environ.get("CDDFUSE_SHARED", bench.ROOT.parent / "shared"))
    shared = shared / "data" if (shared / "data").is_dir() else shared
    name = {"rs_train": "RoadScene_train", "ct_train": "MRI_CT_train"}[which]
    model = bench.model_of(name)
    ps = bench.pairs(shared, name)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(SEED)
    idx = rng.permutation(len(ps))[:n]
    rows: list[dict] = []

    def record(pair: str, case: int, al: object, c: list[float], **more: float) -> None:
        rows.append({"pair": pair, "case": case, "conf": al.extra["block_confidence"],  # type: ignore[attr-defined]
                     "blocks": al.matches, "inl": al.inliers, "c": c, **more})  # type: ignore[attr-defined]
        r = rows[-1]
        print(which, pair, case, f"conf {r['conf']:.2f} b{r['blocks']} i{r['inl']} self {r.get('self', 0):.2f} "
              f"c0 {c[0]:.3f} n3 {max(c[1:9]):.3f} n8 {max(c[9:]):.3f}", flush=True)

    for i in idx:
        fa, fb = ps[i]
        ya, yb = luminance(bench.read_rgb(fa)), luminance(bench.read_rgb(fb))
        hb, wb = yb.shape
        al0 = estimate(ya, yb, model)
        record(fa.name, -1, al0, correlations(ya, yb, al0.matrix))
        for k in range(3):
            t = bench.random_transform(rng, wb, hb, model == "homography")
            a2, tt = bench.misalign(ya, t, (wb, hb), downscale=k == 2)
            start = time.perf_counter()
            al = estimate(a2, yb, model)
            record(fa.name, k, al, correlations(a2, yb, al.matrix), sec=time.perf_counter() - start,
                   self=bench.corner_error(al.matrix, al0.matrix @ tt, wb, hb),
                   err=bench.corner_error(al.matrix, tt, wb, hb))
    for j, i in enumerate(idx[: n // 2]):
        fa, fb = ps[i][0], ps[idx[(j + 7) % len(idx)]][1]
        ya, yb = luminance(bench.read_rgb(fa)), luminance(bench.read_rgb(fb))
        if ya.shape != yb.shape:
            yb = cv2.resize(yb, ya.shape[::-1])
        al = estimate(ya, yb, model)
        record(fa.name + "|" + fb.name, -2, al, correlations(ya, yb, al.matrix))
    out.write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
