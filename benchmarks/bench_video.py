"""Video flicker and speed: per-frame min-max against the temporally smoothed range, end to end.

A static-camera clip is made from a real TNO pair (01, a window of ``--size``): every frame is the same
view with fresh sensor noise (Gaussian, sigma 2 gray levels) on both sources, and a hot object (24x12
pixels at 255) walks through the infrared view from frame ``frames/4`` to ``3*frames/4``. Two windows:
``center`` (the middle of the image, whose infrared already spans 0-254: the object hardly changes the
range) and ``cool`` (the window, on a 16-pixel grid, with the lowest infrared maximum: a cool background
in which the object is the hottest thing in view, as when a person walks through a night scene).
Both sources are written as H.264 files (``cddfuse.io.video.VideoWriter``), then fused with the real
command, ``cddfuse fuse ir.mp4 vi.mp4 -o fused.mp4 --temporal frame|ema`` (bundled IVF weights), and the
output is decoded. Flicker = mean absolute change of the mean brightness from one frame to the next, in
gray levels (0-255), measured on the decoded output; also printed: the largest such change (a
sudden jump when the object enters or leaves, which the smoothed range turns into a gradual drift of
about the same total), the wall time of each command and its frames per second (Python start and
model load included).

Usage: python benchmarks/bench_video.py [--frames 24] [--size 256x192] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

import _harness as H
from _harness import ROOT, SHARED

sys.path.insert(0, str(ROOT / "src"))

from cddfuse.fusion.video import flicker  # noqa: E402
from cddfuse.io.video import VideoWriter  # noqa: E402


def window(ir: np.ndarray, size: tuple[int, int], where: str) -> tuple[int, int]:
    """Top-left corner of the ``center`` window, or of the ``cool`` one (lowest infrared maximum)."""
    w, h = size
    if where == "center":
        return (ir.shape[0] - h) // 2, (ir.shape[1] - w) // 2
    corners = [(y, x) for y in range(0, ir.shape[0] - h + 1, 16) for x in range(0, ir.shape[1] - w + 1, 16)]
    return min(corners, key=lambda c: (int(ir[c[0]:c[0] + h, c[1]:c[1] + w].max()), c))


def make_clip(folder: Path, frames: int, size: tuple[int, int], where: str) -> tuple[Path, Path, str]:
    w, h = size
    ir = cv2.imread(str(SHARED / "data/test/TNO/ir/01.png"), cv2.IMREAD_GRAYSCALE)
    vi = cv2.imread(str(SHARED / "data/test/TNO/vi/01.png"), cv2.IMREAD_GRAYSCALE)
    y0, x0 = window(ir, size, where)
    note = (f"{where} window at x={x0}, y={y0}: infrared {ir[y0:y0 + h, x0:x0 + w].min()}-"
            f"{ir[y0:y0 + h, x0:x0 + w].max()}")
    ir, vi = ir[y0:y0 + h, x0:x0 + w].astype(np.float64), vi[y0:y0 + h, x0:x0 + w].astype(np.float64)
    rng = np.random.default_rng(0)
    start, stop = frames // 4, 3 * frames // 4
    folder.mkdir()
    with VideoWriter(folder / "ir.mp4", Fraction(25)) as out_ir, VideoWriter(folder / "vi.mp4", Fraction(25)) as out_vi:
        for t in range(frames):
            a = ir + rng.normal(0, 2, ir.shape)
            if start <= t < stop:
                x = int((t - start) / (stop - start) * (w - 12))
                a[h // 2 - 12:h // 2 + 12, x:x + 12] = 255
            out_ir.write(np.clip(a, 0, 255).astype(np.uint8))
            out_vi.write(np.clip(vi + rng.normal(0, 2, vi.shape), 0, 255).astype(np.uint8))
    return folder / "ir.mp4", folder / "vi.mp4", note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", default="192x144")
    ap.add_argument("--where", nargs="+", default=["center", "cool"], choices=["center", "cool"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import av

    size = tuple(int(x) for x in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    env = H.src_env(OMP_NUM_THREADS=str(args.threads))
    print(f"static-camera clips from TNO 01, {args.size}, {args.frames} frames at 25 frames/s, hot object in "
          f"frames {args.frames // 4}-{3 * args.frames // 4 - 1}; bundled IVF weights, {args.threads} threads\n")
    print("| window | normalisation | flicker: mean change (gray levels / frame) | largest change | wall | frames/s |"
          "\n|---|---|---|---|---|---|")
    for where in args.where:
        ir, vi, note = make_clip(work / where, args.frames, size, where)  # type: ignore[arg-type]
        for mode in ("frame", "ema"):
            out = work / where / f"fused-{mode}.mp4"
            wall = H.run_command([sys.executable, "-m", "cddfuse.cli.main", "fuse", str(ir), str(vi), "-o",
                                  str(out), "--temporal", mode, "-q"], env).wall
            with av.open(str(out)) as c:
                frames = [f.to_ndarray(format="gray").astype(np.float64) for f in c.decode(video=0)]
            jump = float(np.abs(np.diff([f.mean() for f in frames])).max())
            print(f"| {note} | {mode} | **{flicker(frames):.2f}** | {jump:.2f} | {wall:.1f} s | "
                  f"{len(frames) / wall:.2f} |", flush=True)


if __name__ == "__main__":
    main()
