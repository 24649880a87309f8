"""This CPU against its own compute floor: the numbers benchmarks/RESULTS.md keeps per processor.

Measures, in one run on one machine:

* the fp32 floor: 1.10 TFLOP (CDDFuse at 640x480, published FLOPs) / this CPU's ``torch.mm``
  4096^3 fp32 rate (best of 3), and the bf16 ``torch.mm`` rate where the CPU has AMX/AVX512-BF16;
* ``Fuser(task="ivf").fuse`` on TNO 01 resized to 640x480 (best of ``--repeats`` after a warm-up):
  with the built-in engine settings, with this machine's tuned settings (``cddfuse tune``, run
  here first unless ``--no-tune``), and with ``precision="bf16"`` (tuned settings) where supported;
* the ratio engine time / floor.

It prints a Markdown section to paste into benchmarks/RESULTS.md. Nothing else should run on the
machine meanwhile (the load average is printed with the results).

Usage: python benchmarks/bench_cpu.py [--shared DIR] [--repeats 3] [--no-tune]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cddfuse.engine import CPU_SPEED_TILE, tuning
from cddfuse.engine.cpu import bf16_feature, cpu_flags, cpu_model

import _harness as H

FLOP_640 = 1.10e12


def mm_rate(dtype: torch.dtype, n: int = 4096) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = H.time_calls(lambda: torch.mm(a, b), 3, warmup=0).best
    return 2 * n ** 3 / best / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("CDDFUSE_SHARED", str(Path(__file__).resolve().parents[2]
                                                                                / "shared")))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-tune", action="store_true", help="use the cached settings as they are")
    args = ap.parse_args()
    os.environ["CDDFUSE_TUNE"] = "0"  # tuning only where this script asks for it
    from cddfuse.fusion import Fuser

    folder = Path(args.shared) / "data" / "test" / "TNO"
    a = cv2.resize(cv2.imread(str(folder / "ir" / "01.png"), 0), (640, 480), interpolation=cv2.INTER_AREA)
    b = cv2.resize(cv2.imread(str(folder / "vi" / "01.png"), 0), (640, 480), interpolation=cv2.INTER_AREA)
    started = time.time()
    fp32_rate = mm_rate(torch.float32)
    floor = FLOP_640 / (fp32_rate * 1e9)
    bf16_rate = mm_rate(torch.bfloat16) if bf16_feature() else None

    def fuse_time(**kw) -> tuple[float, np.ndarray]:
        fuser = Fuser(task="ivf", device="cpu", **kw)
        outs: list[np.ndarray] = []
        timing = H.time_calls(lambda: outs.append(fuser.fuse(a, b)), args.repeats, warmup=1)
        return timing.best, outs[-1]

    # built-in settings: an empty private cache
    real_cache = os.environ.get("CDDFUSE_CACHE")
    os.environ["CDDFUSE_CACHE"] = str(Path("/nonexistent-cddfuse-cache") / str(os.getpid()))
    t_default, ref = fuse_time()
    if real_cache is None:
        del os.environ["CDDFUSE_CACHE"]
    else:
        os.environ["CDDFUSE_CACHE"] = real_cache
    tuned = tuning.cached_settings() if args.no_tune else None
    tune_s = None
    if tuned is None:
        t = time.perf_counter()
        tuned = tuning.tune()
        tune_s = time.perf_counter() - t
    t_tuned, out = fuse_time()
    same = float(np.abs(out - ref).max())
    t_bf16 = None
    if bf16_feature():
        t_bf16, _ = fuse_time(precision="bf16")
    load = H.loadavg()[0]
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sve", "asimd"))))
    lines = [
        f"### {cpu_model()} ({os.cpu_count()} cpus, {torch.get_num_threads()} threads)",
        "",
        f"{H.utc_now()}, torch {torch.__version__}, "
        f"`python benchmarks/bench_cpu.py` ({(time.time() - started) / 60:.1f} min; load average after: {load:.2f}). "
        f"Flags: {flags}.",
        "",
        "| what | value |",
        "|---|---|",
        f"| fp32 `torch.mm` 4096^3 | {fp32_rate:.0f} GFLOP/s |",
        f"| fp32 compute floor, 640x480 (1.10 TFLOP) | {floor:.2f} s |",
    ]
    if bf16_rate is not None:
        lines.append(f"| bf16 `torch.mm` 4096^3 ({bf16_feature()}) | {bf16_rate:.0f} GFLOP/s |")
    lines += [
        f"| `cddfuse fuse` engine, built-in settings (tile {CPU_SPEED_TILE}) | {t_default:.2f} s "
        f"({t_default / floor:.2f}x floor) |",
        f"| tuned: workers {tuned.workers}"
        + (f" (probe {tune_s:.1f} s)" if tune_s is not None else " (cached)")
        + f" | {t_tuned:.2f} s ({t_tuned / floor:.2f}x floor); max difference to built-in {same:.1e} |",
    ]
    if t_bf16 is not None:
        lines.append(f"| `--precision bf16` (tuned settings) | {t_bf16:.2f} s ({t_tuned / t_bf16:.2f}x faster than "
                     f"fp32 tuned) |")
    else:
        lines.append("| `--precision bf16` | refused: no AMX or AVX512-BF16 |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
