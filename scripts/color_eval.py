"""How well each chroma mode keeps the visible image's colours (issue: night RoadScene colours washed out).

For every pair of a colour test set (RoadScene by default) the luminance is fused once with the
bundled IVF model, then coloured with each chroma mode (``ycbcr``: the authors' Cb/Cr put back;
``saturation``: hue and saturation kept, see :mod:`cddfuse.io.color`). Each result is compared with
the visible image in HSV:

* hue error: mean circular |H_out - H_vis| in degrees, over the pixels whose visible colour has a
  hue worth keeping (saturation >= 0.1 and value >= 0.05);
* saturation error: mean |S_out - S_vis| over the same pixels (HSV saturation, 0..1);
* at the gamut edge: share of pixels with a channel at 0 or 1 that had none in the visible image
  (``ycbcr`` clips such channels, shifting the hue; ``saturation`` desaturates the pixel just onto the
  edge, keeping hue and luminance).

Usage::

    python scripts/color_eval.py                       # RoadScene, all pairs -> docs/model_card/color_RoadScene.*
    python scripts/color_eval.py --limit 5 --out /tmp/c
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
MODES = ("ycbcr", "saturation")


def hsv(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32), cv2.COLOR_RGB2HSV)


def compare(out: np.ndarray, vis: np.ndarray) -> dict:
    ho, hv = hsv(out), hsv(vis)
    mask = (hv[..., 1] >= 0.1) & (hv[..., 2] >= 0.05)
    dh = np.abs(ho[..., 0] - hv[..., 0])
    dh = np.minimum(dh, 360.0 - dh)
    edge_out = (out <= 0.0) | (out >= 1.0)
    edge_vis = (vis <= 0.0) | (vis >= 1.0)
    return {
        "hue_error_deg": float(dh[mask].mean()) if mask.any() else 0.0,
        "saturation_error": float(np.abs(ho[..., 1] - hv[..., 1])[mask].mean()) if mask.any() else 0.0,
        "clipped": float((edge_out & ~edge_vis).any(axis=-1).mean()),
        "coloured_pixels": float(mask.mean()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default=str(SHARED / "data" / "test" / "RoadScene"), help="test set with ir/ and vi/")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "model_card"), help="folder for color_<set>.json/.md/.png")
    ap.add_argument("--figure", default="FLIR_08835", help="stem of the pair shown in the figure")
    args = ap.parse_args()

    from cddfuse.fusion import Fuser
    from cddfuse.io.color import merge_luminance, split_luminance
    from cddfuse.io.image import read_image
    from cddfuse.io.pairs import match_pairs

    root = Path(args.set)
    pairs = match_pairs(root / "ir", root / "vi").pairs[: args.limit]
    fuser = Fuser(task="ivf", device="cpu", color="gray")
    rows, figure = [], None
    for i, (stem, pa, pb) in enumerate(pairs):
        vis = read_image(pb)
        if vis.ndim != 3:
            continue
        result = fuser.fuse_detailed(pa, pb)
        source = split_luminance(read_image(pb, keep_integer=True))
        row = {"pair": stem, "luminance_change": float(np.abs(result.luminance - source.y).mean())}
        images = {}
        for mode in MODES:
            images[mode] = merge_luminance(result.luminance, source, mode)
            row.update({f"{mode}.{k}": v for k, v in compare(images[mode], vis).items()})
        rows.append(row)
        if stem == args.figure or (figure is None and i == len(pairs) - 1):
            figure = (stem, vis, images)
        print(f"{stem}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "pair"), file=sys.stderr)
    if not rows:
        print("no colour pairs", file=sys.stderr)
        return 1
    keys = [k for k in rows[0] if k != "pair"]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    dark = [r for r in rows if r["luminance_change"] >= np.median([r["luminance_change"] for r in rows])]
    mean_dark = {k: float(np.mean([r[k] for r in dark])) for k in keys}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = root.name
    (out / f"color_{name}.json").write_text(json.dumps({"pairs": rows, "mean": mean, "mean_large_change": mean_dark},
                                                       indent=1))
    lines = [f"Colour fidelity on {name} ({len(rows)} colour pairs; bundled IVF weights; "
             "`python scripts/color_eval.py`): error against the visible image in HSV.", "",
             "| chroma mode | hue error (deg) | saturation error | pixels newly at the gamut edge | "
             "same, half of pairs with the largest luminance change: hue / saturation |",
             "|---|---|---|---|---|"]
    for mode in MODES:
        lines.append(f"| `{mode}` | {mean[f'{mode}.hue_error_deg']:.2f} | {mean[f'{mode}.saturation_error']:.4f} | "
                     f"{100 * mean[f'{mode}.clipped']:.2f}% | {mean_dark[f'{mode}.hue_error_deg']:.2f} / "
                     f"{mean_dark[f'{mode}.saturation_error']:.4f} |")
    (out / f"color_{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if figure is not None:
        stem, vis, images = figure
        row = np.concatenate([vis] + [images[m] for m in MODES], axis=1)
        bgr = cv2.cvtColor((np.clip(row, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(out / f"color_{name}.png"), bgr)
        print(f"figure: {out / f'color_{name}.png'} ({stem}: visible | ycbcr | saturation)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
