"""Benchmark: the thirteen VIFB metrics on one 640x480 colour triplet (``cddfuse.metrics.vifb``).

Times :func:`cddfuse.metrics.vifb.compute_vifb_metrics` on VIFB's ``labMan`` scene (640x480, RGB
visible, infrared stored as RGB, a colour fused result), as ``cddfuse eval --protocol vifb`` runs
it per image: with 2 threads (the default on a 2-core machine) and with 1, each the median of
``--repeat`` runs after a warm-up, wall and CPU time; then each metric alone (1 thread, input checks
included; Qcb and Qcv share their normalised spectra when run together, so alone they cost a little
more than their share of the whole). Records
the CPU, the date and the load average, since the numbers depend on what else runs.

    .venv/bin/python benchmarks/bench_vifb.py [--repeat 15] [--shared PATH] [--method SeAFusion] [--write]

``--write`` appends the result as a section of benchmarks/METRICS_RESULTS.md. Without the shared
VIFB data, a random 640x480 triplet is used (same sizes and channels; the timings are close).
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

import cv2
import numpy as np

from _harness import ROOT, SHARED, append_section, cores, cpu_model, loadavg, time_calls

sys.path.insert(0, str(ROOT / "src"))

from cddfuse.metrics.vifb import VIFB_METRICS, VIFB_NAMES, compute_vifb_metrics, read_vifb_image  # noqa: E402
from cddfuse.metrics.vifb._common import prepare  # noqa: E402
from cddfuse.metrics.vifb.registry import _run_single_threaded  # noqa: E402


def load_triplet(shared: Path, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    vifb = shared / "vifb"
    if (vifb / "fused" / method / "labMan.jpg").exists():
        return (read_vifb_image(vifb / "ir" / "labMan.jpg"), read_vifb_image(vifb / "vi" / "labMan.jpg"),
                read_vifb_image(vifb / "fused" / method / "labMan.jpg"), f"VIFB labMan, {method}")
    rng = np.random.default_rng(0)
    ir = np.repeat(rng.integers(0, 256, (480, 640, 1), dtype=np.uint8), 3, axis=2)
    vi, fused = rng.integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    return ir, vi, fused, "random 640x480 triplet (shared data not found)"


def timed(fn, repeat: int) -> tuple[float, float, float, float]:
    """Median and minimum wall seconds, median and minimum CPU seconds of ``fn()`` over ``repeat`` runs
    (after one warm-up run). On a shared machine the minimum is the run least disturbed by the others."""
    t = time_calls(fn, repeat, warmup=1)
    return t.median, t.best, t.cpu_median, t.cpu_best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--method", default="SeAFusion", help="which published fused result of labMan")
    ap.add_argument("--write", action="store_true", help="append the result to benchmarks/METRICS_RESULTS.md")
    args = ap.parse_args()

    ir, vi, fused, what = load_triplet(args.shared, args.method)
    load_before = loadavg()
    runs = {}
    cv_threads = cv2.getNumThreads()
    for threads in (2, 1):  # threads=1: one thread in all (OpenCV's pool off too)
        cv2.setNumThreads(cv_threads if threads > 1 else 1)
        runs[threads] = timed(lambda t=threads: compute_vifb_metrics(ir, vi, fused, threads=t), args.repeat)
    per_metric = {}
    for name in VIFB_NAMES:  # a fresh triplet each time: nothing shared between metrics is reused
        impl = VIFB_METRICS[name]._impl
        assert impl is not None
        per_metric[name] = timed(lambda f=impl: _run_single_threaded(f, prepare(ir, vi, fused)),
                                 max(3, args.repeat // 3))
    cv2.setNumThreads(cv_threads)
    load_after = loadavg()

    lines = [
        f"## VIFB protocol: 13 metrics of one 640x480 colour triplet ({dt.date.today().isoformat()})",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_vifb.py --repeat {args.repeat}`  ",
        f"CPU: {cpu_model()}, {cores()} cores available; Python {platform.python_version()}, numpy {np.__version__}  ",
        f"Load average (1/5/15 min) before: {load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f}, "
        f"after: {load_after[0]:.1f} / {load_after[1]:.1f} / {load_after[2]:.1f}  ",
        f"Images: {what}; ir {ir.shape}, vi {vi.shape}, fused {fused.shape}",
        "",
        "| all 13 metrics | wall, median | wall, best | CPU time, median | CPU time, best |",
        "|---|---:|---:|---:|---:|",
    ]
    for threads in (2, 1):
        w_med, w_min, c_med, c_min = runs[threads]
        lines.append(f"| `compute_vifb_metrics(..., threads={threads})` | {w_med * 1e3:.0f} ms | {w_min * 1e3:.0f} ms "
                     f"| {c_med * 1e3:.0f} ms | {c_min * 1e3:.0f} ms |")
    lines += ["", "| metric alone (1 thread) | wall ms, median | wall ms, best | CPU ms, median |",
              "|---|---:|---:|---:|"]
    for name, (w_med, w_min, c_med, _) in per_metric.items():
        lines.append(f"| {name} | {w_med * 1e3:.1f} | {w_min * 1e3:.1f} | {c_med * 1e3:.1f} |")
    sums = [sum(v[i] for v in per_metric.values()) * 1e3 for i in range(3)]
    lines.append(f"| sum | {sums[0]:.1f} | {sums[1]:.1f} | {sums[2]:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        out = ROOT / "benchmarks" / "METRICS_RESULTS.md"
        append_section(out, text)
        print(f"appended to {out}")


if __name__ == "__main__":
    main()
