"""ONNX Runtime (``--backend onnx``, the graph of ``cddfuse export``) against the torch engine, one pair.

Each backend runs in a fresh process (so that its peak resident memory is its own): build the ``Fuser``
with the bundled IVF weights, fuse once to warm up, then ``--repeats`` times; the best time, the peak RSS
of the whole process (``VmHWM``, model and warm-up included) and the CPU time that *other*
processes used meanwhile (the machine may be shared) are printed as one JSON line per backend, then a
Markdown table. The pair is TNO 01 resized to the requested size with ``cv2.INTER_AREA``.

Usage: python benchmarks/bench_export.py [--size 640x480] [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from _harness import SHARED, Load, peak_rss_bytes, run_command, src_env


def child(backend: str, size: tuple[int, int], threads: int, repeats: int) -> dict:
    import cv2
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    from cddfuse.fusion import Fuser
    from cddfuse.io.color import split_luminance
    from cddfuse.io.image import read_image

    w, h = size
    ya, yb = (split_luminance(cv2.resize(read_image(SHARED / "data/test/TNO" / d / "01.png", keep_integer=True),
                                         (w, h), interpolation=cv2.INTER_AREA)).y for d in ("ir", "vi"))
    t0 = time.perf_counter()
    fuser = Fuser(task="ivf", device="cpu", backend=backend)  # type: ignore[arg-type]
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = fuser.fuse_luminance(ya, yb)
    first_s = time.perf_counter() - t0
    times, others = [], []
    for _ in range(repeats):
        with Load() as load:
            out = fuser.fuse_luminance(ya, yb)
        times.append(load.wall)
        others.append(load.others)
    np.save(f"/tmp/bench_export_{backend}.npy", out)
    return {"backend": backend, "size": f"{w}x{h}", "threads": threads, "setup_s": setup_s, "first_s": first_s,
            "times_s": times, "best_s": min(times), "others_percent": others,
            "peak_rss_mib": peak_rss_bytes() / 2 ** 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    if args.child:
        print(json.dumps(child(args.child, size, args.threads, args.repeats)))  # type: ignore[arg-type]
        return
    import numpy as np

    rows = []
    for backend in ("torch", "onnx"):
        done = run_command([sys.executable, __file__, "--child", backend, "--size", args.size,
                            "--threads", str(args.threads), "--repeats", str(args.repeats)],
                           src_env(OMP_NUM_THREADS=str(args.threads)))
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    diff = float(np.abs(np.load("/tmp/bench_export_torch.npy") - np.load("/tmp/bench_export_onnx.npy")).max())
    print(f"\n| backend | set-up (load; ONNX: export + session) | first pair | best of {args.repeats} | "
          "peak RSS (process) | others % |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['setup_s']:.1f} s | {r['first_s']:.2f} s | **{r['best_s']:.2f} s** | "
              f"{r['peak_rss_mib']:.0f} MiB | {', '.join(f'{o:.0f}%' for o in r['others_percent'])} |")
    print(f"\nmax abs difference of the raw outputs, onnx vs torch: {diff:.1e}")


if __name__ == "__main__":
    main()
