"""Video flicker and speed: per-frame min-max against the temporally smoothed range, end to end.

A static-camera clip is made from a real TNO pair (01, a crop of ``--size``): every frame is the same view
with fresh sensor noise (Gaussian, sigma 2 gray levels) on both sources, and a hot object (24x12 pixels
at the infrared maximum, 255) walks through the infrared view from frame ``frames/4`` to ``3*frames/4``.
Both sources are written as H.264 files (``cddfuse.io.video.VideoWriter``), then fused with the real
command, ``cddfuse fuse ir.mp4 vi.mp4 -o fused.mp4 --temporal frame|ema`` (bundled IVF weights), and the
output is decoded. Flicker = mean absolute change of the mean brightness from one frame to the next, in
gray levels (0-255), measured on the decoded output; also printed: the wall time of each command and
its frames per second (Python start and model load included).

Usage: python benchmarks/bench_video.py [--frames 24] [--size 256x192] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "src"))

from cddfuse.fusion.video import flicker  # noqa: E402
from cddfuse.io.video import VideoWriter  # noqa: E402


def make_clip(folder: Path, frames: int, size: tuple[int, int]) -> tuple[Path, Path]:
    w, h = size
    ir = cv2.imread(str(SHARED / "data/test/TNO/ir/01.png"), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(SHARED / "data/test/TNO/vi/01.png"), cv2.IMREAD_GRAYSCALE)
    y0, x0 = (ir.shape[0] - h) // 2, (ir.shape[1] - w) // 2
    ir, vi = ir[y0:y0 + h, x0:x0 + w].astype(np.float64), vi[y0:y0 + h, x0:x0 + w].astype(np.float64)
    rng = np.random.default_rng(0)
    start, stop = frames // 4, 3 * frames // 4
    with VideoWriter(folder / "ir.mp4", Fraction(25)) as out_ir, VideoWriter(folder / "vi.mp4", Fraction(25)) as out_vi:
        for t in range(frames):
            a = ir + rng.normal(0, 2, ir.shape)
            if start <= t < stop:
                x = int((t - start) / (stop - start) * (w - 12))
                a[h // 2 - 12:h // 2 + 12, x:x + 12] = 255
            out_ir.write(np.clip(a, 0, 255).astype(np.uint8))
            out_vi.write(np.clip(vi + rng.normal(0, 2, vi.shape), 0, 255).astype(np.uint8))
    return folder / "ir.mp4", folder / "vi.mp4"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", default="256x192")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import av

    size = tuple(int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    ir, vi = make_clip(work, args.frames, size)  # type: ignore[arg-type]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    print(f"static-camera clip: TNO 01, {args.size}, {args.frames} frames at 25 frames/s, hot object in frames "
          f"{args.frames // 4}-{3 * args.frames // 4 - 1}; bundled IVF weights, {args.threads} threads\n")
    print("| normalisation | flicker (gray levels / frame) | wall | frames/s |\n|---|---|---|---|")
    for mode in ("frame", "ema"):
        out = work / f"fused-{mode}.mp4"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "-o", str(out),
                        "--temporal", mode, "-q"], env=env, check=True)
        wall = time.perf_counter() - t0
        with av.open(str(out)) as c:
            frames = [f.to_ndarray(format="gray").astype(np.float64) for f in c.decode(video=0)]
        print(f"| {mode} | **{flicker(frames):.2f}** | {wall:.1f} s | {len(frames) / wall:.2f} |")


if __name__ == "__main__":
    main()
