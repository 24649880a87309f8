"""Quality gate of ``--precision bf16`` on CPU: the five test sets, bundled weights, against fp32.

For each set it runs the paper's protocol (:func:`cddfuse.bench.paper.run_bench`: gray
sources, min-max normalised, 8-bit) twice, in fp32 and in bf16, keeping the fused PNGs, then
reports the share of pixels whose 8-bit values differ by at most one gray level and the relative
difference of each of the eight paper metrics. The gate: >= 99.9% of pixels within one level and
every metric within 0.5% of fp32, on every set.

Usage: python benchmarks/bf16_gate.py [--shared DIR] [--out benchmarks/BF16_GATE.md] [--limit N]
           [--sets MRI_SPECT,...] [--variant engine|head-fp32|1x1-only]

``--variant`` probes how much of the bf16 difference is whose (the package is not changed): ``engine``
is ``--precision bf16`` as shipped; ``head-fp32`` also keeps the output head's two dense 3x3
convolutions (64->32, 32->1) in float32; ``1x1-only`` keeps every 3x3 convolution in float32, so
that only the 1x1 convolutions (the matrix products) run in bfloat16. The table also gives the share
of 8-bit values that differ at all ("changed").
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cddfuse.bench.paper import run_bench
from cddfuse.engine import ops as engine_ops
from cddfuse.engine.cpu import bf16_feature, cpu_model

SETS = ("TNO", "RoadScene", "MRI_CT", "MRI_PET", "MRI_SPECT")
METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")
VARIANTS = ("engine", "head-fp32", "1x1-only")


def use_variant(variant: str) -> None:
    """Keep more convolutions of :class:`BF16Ops` in float32 (see the module docstring)."""
    if variant == "engine":
        return
    bf16_conv = engine_ops.BF16Ops.conv

    def conv(self, geometry, x, w, groups=1, pad="zeros", post=None):  # type: ignore[no-untyped-def]
        dense3 = w.shape[1] > 1 and w.shape[-1] == 3
        head = dense3 and groups == 1 and w.shape[0] <= 32
        if (variant == "head-fp32" and head) or (variant == "1x1-only" and dense3):
            return engine_ops.FusedOps.conv(self, geometry, x, w, groups, pad, post)
        return bf16_conv(self, geometry, x, w, groups, pad, post)

    engine_ops.BF16Ops.conv = conv  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("CDDFUSE_SHARED", str(Path(__file__).resolve().parents[2]
                                                                                / "shared")))
    ap.add_argument("--out", default="benchmarks/BF16_GATE.md")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--variant", choices=VARIANTS, default="engine")
    args = ap.parse_args()
    if bf16_feature() is None:
        print("this CPU has neither AMX nor AVX512-BF16: nothing to gate", file=sys.stderr)
        return 1
    use_variant(args.variant)
    rows, ok = [], True
    notes: list[str] = []
    started = time.time()
    for name in args.sets.split(","):
        folder = Path(args.shared) / "data" / "test" / name
        with tempfile.TemporaryDirectory() as tmp:
            runs, secs = {}, {}
            for precision in ("fp32", "bf16"):
                t = time.perf_counter()
                runs[precision] = run_bench(folder, out_dir=Path(tmp) / precision, limit=args.limit,
                                            precision=precision, progress=False)
                secs[precision] = time.perf_counter() - t
            within = total = changed = 0
            pair_changed: dict[str, float] = {}
            worst = 0
            for png in sorted((Path(tmp) / "fp32").glob("*.png")):
                a = cv2.imread(str(png), cv2.IMREAD_UNCHANGED).astype(np.int16)
                b = cv2.imread(str(Path(tmp) / "bf16" / png.name), cv2.IMREAD_UNCHANGED).astype(np.int16)
                d = np.abs(a - b)
                within += int((d <= 1).sum())
                changed += int((d > 0).sum())
                pair_changed[png.stem] = float((d > 0).mean())
                total += d.size
                worst = max(worst, int(d.max()))
        m32 = runs["fp32"].evaluation.mean
        m16 = runs["bf16"].evaluation.mean
        rel = {k: abs(m16[k] - m32[k]) / max(abs(m32[k]), 1e-12) for k in METRICS}
        share = within / total
        passed = share >= 0.999 and max(rel.values()) <= 0.005
        ok &= passed
        per32, per16 = dict(runs["fp32"].evaluation.rows()), dict(runs["bf16"].evaluation.rows())
        pair_diff = {stem: max((abs(per16[stem][k] - v[k]) / max(abs(v[k]), 1e-12), k) for k in METRICS)
                     for stem, v in per32.items()}
        top = sorted(pair_diff.items(), key=lambda kv: -kv[1][0])[:3]
        notes.append(f"{name}: largest per-pair differences: " + ", ".join(
            f"{stem} {k} {d:.2%} ({per32[stem][k]:.4f} -> {per16[stem][k]:.4f}; {pair_changed.get(stem, 0):.1%} of "
            "its pixels changed)" for stem, (d, k) in top))
        print(notes[-1], file=sys.stderr)
        rows.append((name, len(runs["fp32"].evaluation), share, changed / total, worst, rel, secs, passed))
        print(f"{name}: {share:.5%} within 1 level, {changed / total:.3%} changed, worst {worst}, "
              f"max metric diff {max(rel.values()):.3%}, "
              f"fp32 {secs['fp32']:.0f} s, bf16 {secs['bf16']:.0f} s", file=sys.stderr)
    lines = [
        "# bf16 quality gate (CPU)",
        "",
        "Generated by `python benchmarks/bf16_gate.py"
        + "".join(f" {a}" for a in sys.argv[1:]) + "` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC ({(time.time() - started) / 60:.0f} min). "
        f"CPU: {cpu_model()} ({bf16_feature()}), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}.",
        "Bundled weights, the paper's protocol (gray, min-max, 8-bit), fp32 vs `precision=\"bf16\"`"
        + ("." if args.variant == "engine" else f", variant `{args.variant}` (see the script's docstring)."),
        "Gate: >= 99.9% of pixels within one gray level and each metric within 0.5% of fp32.",
        "Times are whole `run_bench` runs (reading, fusing, metrics) and were taken on a shared machine.",
        "",
        "| set | pairs | pixels within 1 level | changed | largest difference | "
        + " | ".join(f"{m} diff" for m in METRICS) + " | fp32 / bf16 run | gate |",
        "|---|---|---|---|---|" + "---|" * len(METRICS) + "---|---|",
    ]
    for name, n, share, frac, worst, rel, secs, passed in rows:
        lines.append(f"| {name} | {n} | {share:.4%} | {frac:.3%} | {worst} | "
                     + " | ".join(f"{rel[m]:.3%}" for m in METRICS)
                     + f" | {secs['fp32']:.0f} s / {secs['bf16']:.0f} s | {'pass' if passed else 'FAIL'} |")
    lines += ["", *(f"- {n}" for n in notes)]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}; gate {'passed' if ok else 'FAILED'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
