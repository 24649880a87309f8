"""Probe (issue 16): how well does one affine transform describe each *registered* infrared-visible test pair?

``bench_align.py`` measures errors against the datasets' own registration (identity between the two
images of a pair). That registration can only be the answer to 1 px if the two images of the pair
really are related by an affine transform close to the identity. This probe measures it: for every
registered pair (TNO, RoadScene; medical sets with ``--sets``), the local shifts between the two
images are measured by ``cddfuse.align``'s block matcher (edge-orientation fields, 64 px blocks
overlapping by half, shifts up to 8 px, distinct peaks only; images at most 640 px on the long side,
shifts reported in pixels of the original second image), starting from the identity. Then:

- ``|d| med``: median length of the local shifts (0 if every block agrees with the given registration);
- ``A corner``: mean corner displacement, from the identity, of the affine transform fitted to the
  shifts by RANSAC (1 px threshold; the hand registration of RoadScene is an affine fit) -- the error
  that an estimator agreeing with the block majority would score against the dataset on the unwarped
  pair;
- ``inl 1px``: share of the blocks that this transform explains within 1 px;
- ``halves``: corner distance between the affine transforms fitted to two interleaved halves of the blocks
  (alternate blocks in raster order). Were the blocks one rigid layer measured with small noise, the
  halves would agree far better than either departs from the identity; a larger value means the
  shifts do not determine one affine transform to that accuracy (several layers -- parallax -- or
  matching noise);
- ``top-bottom dy``: the mean vertical shift of the bottom third of the blocks minus that of the top
  third (parallax between near ground and far field shows as a difference).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/align_gt_probe.py [--sets TNO,RoadScene] [--threshold 1]
        [--verbose] [--figure docs/align_gt_check.png --pair TNO/13.png]

``--figure`` draws, for ``--pair``, the first image's edges (Canny, red) over the second image: left as
the dataset registers them, right moved by the affine transform fitted to the blocks; below each, the
corner of the frame where the two differ most, enlarged 3x.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align import SETS, corner_error, pairs, read_rgb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fit(p: np.ndarray, q: np.ndarray, threshold: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Affine ``p -> q`` by RANSAC (``threshold`` px), as a 3x3 matrix, and the inlier mask."""
    m, inl = cv2.estimateAffine2D(np.ascontiguousarray(p), np.ascontiguousarray(q), method=cv2.RANSAC,
                                  ransacReprojThreshold=threshold, maxIters=2000, refineIters=10)
    return (None if m is None else np.vstack([m, [0, 0, 1]])), inl


def figure(path: Path, ya: np.ndarray, yb: np.ndarray, m: np.ndarray) -> None:
    """Edges of ``ya`` (red) over ``yb``: as registered, and moved by ``m``; the worst corner enlarged."""
    h, w = yb.shape
    corners = np.float64([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]]).T
    moved = m @ corners
    worst = int(np.argmax(np.hypot(*(moved[:2] / moved[2] - corners[:2]))))
    cw, ch = w // 4, h // 4
    x0, y0 = (0 if corners[0, worst] == 0 else w - cw), (0 if corners[1, worst] == 0 else h - ch)
    columns = []
    for mat in (np.eye(3), m):
        warped = cv2.warpPerspective(ya, mat, (w, h), flags=cv2.INTER_LINEAR)
        edges = cv2.Canny((cv2.GaussianBlur(warped, (0, 0), 1.2) * 255).astype(np.uint8), 40, 100)
        rgb = np.repeat((yb * 255).astype(np.uint8)[..., None], 3, axis=2)
        rgb[edges > 0] = (255, 0, 0)
        zoom = cv2.resize(rgb[y0:y0 + ch, x0:x0 + cw], (3 * cw, 3 * ch), interpolation=cv2.INTER_NEAREST)
        full = cv2.resize(rgb, (3 * cw, round(3 * cw * h / w)), interpolation=cv2.INTER_AREA)
        columns.append(np.vstack([full, np.full((4, 3 * cw, 3), 255, np.uint8), zoom]))
    gap = np.full((columns[0].shape[0], 8, 3), 255, np.uint8)
    cv2.imwrite(str(path), np.hstack([columns[0], gap, columns[1]])[..., ::-1])
    print(f"wrote {path}", file=sys.stderr)


def main() -> int:
    from cddfuse.align.registration import block_matches, border_mask, orientation_field
    from cddfuse.io.color import luminance

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--sets", default="TNO,RoadScene")
    ap.add_argument("--threshold", type=float, default=1.0, help="RANSAC threshold, px (default 1)")
    ap.add_argument("--verbose", action="store_true", help="one line per pair")
    ap.add_argument("--figure", type=Path, default=None, help="write the overlay figure of --pair here")
    ap.add_argument("--pair", default="TNO/13.png", help="SET/FILE for --figure (default TNO/13.png)")
    args = ap.parse_args()
    shared = args.shared / "data" if (args.shared / "data").is_dir() else args.shared
    cv2.setNumThreads(1)
    print("| set | pairs | blocks per pair | \\|d\\| med px | A corner px: median | p90 | pairs > 1 px | "
          "halves median px | inl 1px median | top-bottom dy median px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        if name not in SETS:
            sys.exit(f"align_gt_probe: unknown set {name!r}; choose from {', '.join(SETS)}")
        stats = []
        for fa, fb in pairs(shared, name):
            ya, yb = luminance(read_rgb(fa)), luminance(read_rgb(fb))
            if ya.shape != yb.shape:
                continue
            f = min(1.0, 640 / max(yb.shape))
            if f < 1:
                size = (round(yb.shape[1] * f), round(yb.shape[0] * f))
                ya = cv2.resize(ya, size, interpolation=cv2.INTER_AREA)
                yb = cv2.resize(yb, size, interpolation=cv2.INTER_AREA)
            va, vb = border_mask(ya), border_mask(yb)
            p, q = block_matches(ya, va, yb, vb, orientation_field(yb, vb), np.eye(3), 8, 64)
            if len(p) < 8:
                stats.append((len(p), np.nan, np.nan, np.nan, np.nan, np.nan))
                continue
            d = (q - p) / f
            hm, inl = fit(p, q, args.threshold)
            h, w = yb.shape
            corner = corner_error(hm, np.eye(3), w, h) / f if hm is not None else np.nan
            share = float(np.count_nonzero(inl)) / len(p) if inl is not None else 0.0
            order = np.argsort(p[:, 1])
            third = max(1, len(p) // 3)
            dy = float(d[order[-third:], 1].mean() - d[order[:third], 1].mean())
            halves = [fit(p[k::2], q[k::2], args.threshold)[0] for k in (0, 1)]
            split = (corner_error(np.linalg.inv(halves[1]) @ halves[0], np.eye(3), w, h) / f
                     if halves[0] is not None and halves[1] is not None else np.nan)
            stats.append((len(p), float(np.median(np.hypot(*d.T))), corner, share, dy, split))
            if args.verbose:
                print(f"  {name} {fa.name}: {len(p)} blocks, |d| med {stats[-1][1]:.2f}, A corner {corner:.2f} px, "
                      f"inl {share:.2f}, dy {dy:+.2f}, halves {split:.2f}", file=sys.stderr, flush=True)
            if args.figure and f"{name}/{fa.name}" == args.pair and hm is not None:
                figure(args.figure, ya, yb, hm)
        s = np.array(stats, np.float64)
        ok = s[np.isfinite(s[:, 2])]
        print(f"| {name} | {len(s)} ({len(ok)} with >= 8 blocks) | {np.median(s[:, 0]):.0f} | "
              f"{np.median(ok[:, 1]):.2f} | {np.median(ok[:, 2]):.2f} | {np.percentile(ok[:, 2], 90):.2f} | "
              f"{int((ok[:, 2] > 1).sum())} of {len(ok)} | {np.nanmedian(ok[:, 5]):.2f} | {np.median(ok[:, 3]):.2f} | "
              f"{np.median(ok[:, 4]):+.2f} "
              f"(abs {np.median(np.abs(ok[:, 4])):.2f}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
