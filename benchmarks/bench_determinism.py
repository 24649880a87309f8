"""How much the engine's raw output moves with the thread count, tiles in flight, tile side and op backend.

One real pair (a crop of TNO 01, bundled IVF weights) is fused once as the reference (1 thread, one
tile at a time, 128-px tiles, the default op backend) and again with one thing changed at a time. For
each run it prints whether the float32 output is bit-identical to the reference, how many raw outputs
differ, the largest difference, and how many pixels differ after min-max normalisation and 8-bit
rounding. The thread counts above the machine's cores are oversubscribed on purpose: what matters is
how PyTorch splits the work, not the speed.

Usage: python benchmarks/bench_determinism.py [--shared DIR] [--size 200x260] [--threads 1,2,3,7,16]
"""
from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

import numpy as np
import torch

from cddfuse.engine import tiled_fuse
from cddfuse.engine.cpu import cpu_model
from cddfuse.fusion import Fuser
from cddfuse.io.image import read_image


def _eight_bit(x: np.ndarray) -> np.ndarray:
    return np.round((x - x.min()) / (x.max() - x.min()) * 255)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=os.environ.get("CDDFUSE_SHARED", "/work/shared"))
    p.add_argument("--size", default="200x260", help="crop HxW from the top left of TNO 01")
    p.add_argument("--threads", default="1,2,3,7,16")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    folder = Path(args.shared) / "data" / "test" / "TNO"
    ir = read_image(folder / "ir" / "01.png")[:h, :w]
    vi = read_image(folder / "vi" / "01.png")[:h, :w]
    model = Fuser(task="ivf", device="cpu", color="gray").model
    a = torch.from_numpy(np.ascontiguousarray(ir))[None, None].float()
    b = torch.from_numpy(np.ascontiguousarray(vi))[None, None].float()

    def run(threads: int, workers: int, tile: int, ops: str) -> np.ndarray:
        torch.set_num_threads(threads)
        out = tiled_fuse(model, a, b, "vis", tile=tile, workers=workers, ops=ops, store="memory")
        assert isinstance(out, torch.Tensor)
        return out[0, 0].numpy().copy()

    ref = run(1, 1, 128, "auto")
    cases = [(f"{n} threads", (n, 1, 128, "auto")) for n in map(int, args.threads.split(",")) if n != 1]
    cases += [("2 threads, 2 tiles in flight", (2, 2, 128, "auto")), ("tile 96", (1, 1, 96, "auto")),
              ("tile 160", (1, 1, 160, "auto")), ("plain backend (BLAS)", (1, 1, 128, "plain"))]
    print(f"{cpu_model()}, torch {torch.__version__}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"
          f" UTC, TNO 01 crop {h}x{w} ({h * w} px), reference: 1 thread, 128-px tiles, default backend\n")
    print("| changed | bit-identical | raw outputs that differ | largest difference | 8-bit pixels that differ |")
    print("|---|---|---|---|---|")
    for name, spec in cases:
        out = run(*spec)
        diff = np.abs(out - ref)
        print(f"| {name} | {'yes' if out.tobytes() == ref.tobytes() else 'no'} | {int((diff > 0).sum())} "
              f"| {diff.max():.1e} | {int((_eight_bit(out) != _eight_bit(ref)).sum())} |", flush=True)


if __name__ == "__main__":
    main()
