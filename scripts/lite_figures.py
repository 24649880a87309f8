"""Figures of the CDDFuse-lite model card (docs/lite/): training curves and sample fusions beside the exact model.

    PYTHONPATH=src python scripts/lite_figures.py curves --runs runs/distill_ivf runs/distill_mif   # needs matplotlib
    PYTHONPATH=src python scripts/lite_figures.py samples TNO:01 RoadScene:FLIR_05005 MRI_PET:1

``curves``: the training loss (TensorBoard scalars ``loss/total``) and the held-out agreement with the
teacher (``validation.jsonl``: PSNR after min-max normalisation) of each run.
``samples``: for each ``SET:STEM`` of the shared test data, the two sources, the exact bundled model's
fusion and CDDFuse-lite's (bundled weights; both min-max normalised, gray luminance as the metrics
see it), and their absolute difference x4. The exact fusions are kept in ``runs/lite_figures/`` so a
second call does not recompute them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
OUT = ROOT / "docs/lite"
TASK = {"TNO": "ivf", "RoadScene": "ivf", "MRI_CT": "mif", "MRI_PET": "mif", "MRI_SPECT": "mif"}


def curves(runs: list[Path], name: str = "curves.png") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
        ea.Reload()
        if "loss/total" in ea.Tags()["scalars"]:
            ev = ea.Scalars("loss/total")
            axes[0].plot([e.step for e in ev], [e.value for e in ev], label=run.name, lw=1)
        val = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines() if x.strip()]
        last: dict[int, float] = {}
        for r in val:  # a resumed run may repeat a step: keep the last
            last[r["step"]] = r["psnr"]
        axes[1].plot(sorted(last), [last[k] for k in sorted(last)], marker="o", ms=3, label=run.name)
    axes[0].set(xlabel="step", ylabel="training loss (total)", yscale="log", title="training loss")
    axes[1].set(xlabel="step", ylabel="PSNR vs teacher (dB, min-max normalised)",
                title="held-out pairs: agreement with the teacher")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    dest = OUT / name
    fig.savefig(dest, dpi=110)
    return dest


def _pair(name: str, stem: str) -> tuple[Path, Path]:
    from cddfuse.io.pairs import match_pairs

    root = SHARED / "data/test" / name
    a_dir, b_dir = (root / "ir", root / "vi") if TASK[name] == "ivf" else (
        next(d for d in root.iterdir() if d.name != "MRI"), root / "MRI")
    for s, pa, pb in match_pairs(a_dir, b_dir).pairs:
        if s == stem:
            return Path(pa), Path(pb)
    raise SystemExit(f"{name}: no pair {stem!r}")


def samples(items: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cddfuse.fusion.fuser import Fuser
    from cddfuse.fusion.policy import minmax_normalize
    from cddfuse.train.data import read_luminance

    cache = ROOT / "runs/lite_figures"
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for item in items:
        name, stem = item.split(":", 1)
        task = TASK[name]
        pa, pb = _pair(name, stem)
        a, b = read_luminance(pa), read_luminance(pb)
        f_exact = cache / f"exact_{name}_{stem}.npy"
        if not f_exact.exists():
            np.save(f_exact, Fuser(task=task, device="cpu").fuse_luminance(a, b))  # type: ignore[arg-type]
        exact = minmax_normalize(np.load(f_exact))
        lite = minmax_normalize(Fuser(task=task, method="lite", device="cpu").fuse_luminance(a, b))  # type: ignore[arg-type]
        rows.append((f"{name} {stem}", a, b, exact, lite))
    fig, axes = plt.subplots(len(rows), 5, figsize=(15, 3.1 * len(rows)), squeeze=False)
    for r, (label, a, b, exact, lite) in enumerate(rows):
        diff = np.clip(4 * np.abs(lite - exact), 0, 1)
        for c, (img, title) in enumerate(((a, "A (IR / functional)"), (b, "B (visible / MRI)"),
                                          (exact, "CDDFuse (exact)"), (lite, "CDDFuse-lite"),
                                          (diff, "|lite - exact| x4"))):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_title(f"{label}: {title}" if c == 0 else title, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    dest = OUT / "samples.png"
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(dest, dpi=60)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves")
    c.add_argument("--runs", nargs="+", type=Path, required=True)
    c.add_argument("--name", default="curves.png", help="file name under docs/lite (default curves.png)")
    s = sub.add_parser("samples")
    s.add_argument("items", nargs="+", help="SET:STEM of the shared test data")
    args = ap.parse_args()
    print(curves(args.runs, args.name) if args.cmd == "curves" else samples(args.items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
