"""The README's alignment figure: a real infrared-visible pair, its infrared image moved by a known
transform (as a side-by-side rig would see it), fused as it is (ghosting) and with ``--align homography``.

    .venv/bin/python scripts/align_figure.py [--shared PATH] [-o docs/align.png]

Panels (crops of the fused images): the original registered pair fused; the misaligned pair fused
naively; the misaligned pair aligned, then fused. Writes a small PNG (about 1000 px wide).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--pair", default="RoadScene/ir/FLIR_00977.jpg")
    ap.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "align.png")
    args = ap.parse_args()
    from cddfuse import Fuser
    from cddfuse.align import AlignmentError
    from cddfuse.io.image import read_image, write_image

    ir_path = args.shared / "data" / "test" / args.pair
    vi_path = Path(str(ir_path).replace("/ir/", "/vi/"))
    ir, vi = read_image(ir_path, keep_integer=True), read_image(vi_path, keep_integer=True)
    h, w = vi.shape[:2]
    # the infrared camera sees the scene shifted 4% right and 3% down, rotated 3 degrees, 4% larger
    t = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 3.0, 1.04)
    t[:, 2] += (0.04 * w, 0.03 * h)
    moved = cv2.warpAffine(ir, t, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)
    plain = Fuser(task="ivf", device="cpu")
    aligned = Fuser(task="ivf", device="cpu", align="homography")
    original = plain.fuse(ir, vi)
    naive = plain.fuse(moved, vi)
    try:
        fixed = aligned.fuse(moved, vi)
    except AlignmentError as e:
        sys.exit(f"align_figure: {e}")
    al = aligned.last_alignment
    assert al is not None
    panels = []
    for img, label in ((original, "registered pair"), (naive, "misaligned, fused as is"),
                       (fixed, f"--align homography (conf {al.confidence:.2f})")):
        rgb = np.ascontiguousarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        if rgb.ndim == 2:
            rgb = np.dstack([rgb] * 3)
        scale = 300 / w
        rgb = cv2.resize(rgb, (300, round(h * scale)), interpolation=cv2.INTER_AREA)
        bar = np.full((22, rgb.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        panels.append(np.vstack([bar, rgb]))
    gap = np.full((panels[0].shape[0], 6, 3), 255, np.uint8)
    figure = np.hstack([panels[0], gap, panels[1], gap, panels[2]])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_image(args.output, figure.astype(np.float32) / 255)
    print(f"wrote {args.output} ({figure.shape[1]}x{figure.shape[0]}); alignment confidence {al.confidence:.3f}, "
          f"matrix {np.round(al.matrix, 4).tolist()}; true {np.round(t, 4).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
