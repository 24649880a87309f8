"""Figures for MODEL_CARD.md: training curves of the bundled runs and sample fusions per test set.

    .venv/bin/python scripts/model_card_figures.py            # needs matplotlib (pip install matplotlib)

Reads the TensorBoard logs of runs/bundled_ivf and runs/bundled_mif/{phase1,final} (``--only lineages``:
runs/bundled_ivf_v2 and runs/bundled_mif_v2, the continuation lineages) and fuses two
pairs of every test set in ../shared/data/test with the bundled weights (``cddfuse.Fuser``, the
default pipeline a user gets: colour restored from the colour source). Writes docs/model_card/*.png.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SETS = {  # set -> (folder of A, folder of B, task)
    "TNO": ("ir", "vi", "ivf"),
    "RoadScene": ("ir", "vi", "ivf"),
    "MRI_CT": ("CT", "MRI", "mif"),
    "MRI_PET": ("PET", "MRI", "mif"),
    "MRI_SPECT": ("SPECT", "MRI", "mif"),
}


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        last: dict[int, float] = {}
        for e in acc.Scalars(tag):
            last[e.step] = e.value  # a resumed run may repeat steps: keep the last value
        out[tag] = sorted(last.items())
    return out


def plot_run(ax_l, ax_v, s: dict[str, list[tuple[int, float]]], losses: tuple[tuple[str, str], ...],
             metrics: tuple[str, ...], offset: int = 0, lw: float = 1.0) -> None:
    """One run's loss terms (``(tag, label)``) on ``ax_l`` and its ``val/<metric>`` values on ``ax_v``,
    steps shifted by ``offset``; tags the run did not log are skipped."""
    for tag, label in losses:
        if tag in s:
            st, v = zip(*s[tag])
            ax_l.plot(np.array(st) + offset, v, label=label, lw=lw)
    for m in metrics:
        if f"val/{m}" in s:
            st, v = zip(*s[f"val/{m}"])
            ax_v.plot(np.array(st) + offset, v, marker="o", ms=3, label=m)


def label_axes(ax_l, ax_v, loss_title: str, val_title: str, fontsize: float | None = None) -> None:
    """Titles (matplotlib's title size unless ``fontsize``), step axes, a log scale for the losses, small legends."""
    size = {} if fontsize is None else {"fontsize": fontsize}
    ax_l.set_title(loss_title, **size)
    ax_l.set_xlabel("step")
    ax_l.set_yscale("log")
    ax_l.legend(fontsize=7)
    ax_v.set_title(val_title, **size)
    ax_v.set_xlabel("step")
    ax_v.legend(fontsize=7)


def curves(out: Path) -> None:
    import matplotlib.pyplot as plt

    runs = [("IVF (RoadScene)", [ROOT / "runs/bundled_ivf/tb"], 0),
            ("MIF (Harvard)", [ROOT / "runs/bundled_mif/phase1/tb", ROOT / "runs/bundled_mif/final/tb"], None)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for col, (title, dirs, _) in enumerate(runs):
        offset = 0
        ax_l, ax_v = axes[0, col], axes[1, col]
        for d in dirs:
            if not d.is_dir():
                continue
            s = scalars(d)
            plot_run(ax_l, ax_v, s, (("loss_phase1/total", "Phase I total"), ("loss_phase2/total", "Phase II total"),
                                     ("loss_phase2/intensity", "Phase II intensity"),
                                     ("loss_phase2/gradient", "Phase II gradient"),
                                     ("loss_phase1/decomp", "Phase I L_decomp"),
                                     ("loss_phase2/decomp", "Phase II L_decomp")),
                     ("VIF", "Qabf", "SSIM", "SCD", "MI"), offset=offset, lw=1.0)
            last = max((max(x[0] for x in vals) for vals in s.values() if vals), default=0)
            offset += last
        label_axes(ax_l, ax_v, f"{title}: training loss (every 10 steps)",
                   f"{title}: metrics on held-out training pairs")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=90)
    plt.close(fig)
    print(f"wrote {out / 'loss_curves.png'}")


def lineages(out: Path) -> None:
    """Loss and held-out metrics of the v2 continuation runs (whatever of them exists here)."""
    import matplotlib.pyplot as plt

    runs = [(title, ROOT / "runs" / name / "tb") for title, name in
            (("IVF v2 (RoadScene)", "bundled_ivf_v2"), ("MIF v2 (Harvard)", "bundled_mif_v2"))]
    runs = [(t, d) for t, d in runs if d.is_dir()]
    if not runs:
        print("no v2 run folders under runs/: nothing to draw", file=sys.stderr)
        return
    fig, axes = plt.subplots(2, len(runs), figsize=(5.5 * len(runs), 7), squeeze=False)
    for col, (title, d) in enumerate(runs):
        ax_l, ax_v = axes[0, col], axes[1, col]
        plot_run(ax_l, ax_v, scalars(d), (("loss_phase2/total", "total"), ("loss_phase2/intensity", "intensity"),
                                          ("loss_phase2/gradient", "gradient"), ("loss_phase2/decomp", "L_decomp")),
                 ("MI", "SCD", "VIF", "Qabf", "SSIM"), lw=0.8)
        label_axes(ax_l, ax_v, f"{title}: Phase II loss (every 10 steps)", f"{title}: held-out training pairs",
                   fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "lineage_v2.png", dpi=80)
    plt.close(fig)
    print(f"wrote {out / 'lineage_v2.png'}")


def samples(out: Path, shared: Path, per_set: int) -> None:
    import matplotlib.pyplot as plt

    from cddfuse import Fuser
    from cddfuse.io.image import read_image

    fusers = {}
    for name, (da, db, task) in SETS.items():
        root = shared / "data/test" / name
        if not root.is_dir():
            print(f"skip {name}: {root} missing", file=sys.stderr)
            continue
        fa = sorted((root / da).iterdir())
        picks = [fa[round(i * (len(fa) - 1) / max(1, per_set - 1))] for i in range(per_set)]
        fuser = fusers.setdefault(task, Fuser(task=task, device="cpu"))
        fig, axes = plt.subplots(per_set, 3, figsize=(10, 3.3 * per_set))
        for r, pa in enumerate(picks):
            pb = next(p for p in (root / db).iterdir() if p.stem == pa.stem)
            fused = fuser.fuse(pa, pb)
            for c, (img, label) in enumerate(((read_image(pa), f"{da} {pa.name}"), (read_image(pb), f"{db} {pb.name}"),
                                              (fused, "CDDFuse (bundled weights)"))):
                ax = axes[r, c]
                img = np.asarray(img, dtype=np.float32)
                img = img / (255.0 if img.max() > 1.5 else 1.0)
                ax.imshow(np.clip(img, 0, 1), cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
                ax.set_title(label, fontsize=8)
                ax.axis("off")
        fig.suptitle(f"{name} test set", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / f"samples_{name}.png", dpi=80)
        plt.close(fig)
        print(f"wrote {out / f'samples_{name}.png'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("CDDFUSE_SHARED", str(ROOT.parent / "shared")))
    ap.add_argument("--out", default=str(ROOT / "docs/model_card"))
    ap.add_argument("--per-set", type=int, default=2)
    ap.add_argument("--only", choices=("curves", "samples", "lineages"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.only == "lineages":
        lineages(out)
        return 0
    if a.only != "samples":
        curves(out)
    if a.only != "curves":
        samples(out, Path(a.shared), a.per_set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
