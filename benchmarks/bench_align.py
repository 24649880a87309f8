"""Benchmark: ``cddfuse.align.estimate`` on synthetically misaligned real pairs, scored by its own consistency.

Every pair of a set gives five cases (fixed seed): its first image is warped by a random transform --
translation up to +-8% of the size, rotation up to +-5 degrees, scale 0.9..1.1, and for
infrared-visible a perspective term (each corner moved up to 2% of the size more); affine only for
medical pairs -- and in the fifth case also downscaled 2x (resolution mismatch). The estimate
(``homography`` for infrared-visible, ``affine`` for medical) is scored against the **self
reference**: with T the true map from the warped first image to the second and M0 the estimate on
the unwarped pair,

    self error = mean over the 4 corners c of the second image of |M(T^-1 c) - M0 T (T^-1 c)|

in pixels of the second image: how far the estimate on the warped pair (M) lands from where the
estimate on the original pair, carried through the known warp (M0 T), sends the same points. It needs no
registration of the datasets (which is itself several pixels off; ``align_gt_probe.py``). The error
against the datasets' own registration (M0 replaced by the identity) is kept as an information column.

Reported per set: the fraction accepted (confidence >= the default threshold), the median, 95th
percentile and maximum self error of the accepted cases, how many accepted cases are above 5 px, the
median and p95 against the dataset (information), how many original pairs were themselves refused
(their M0 still serves as the reference), and the seconds per case. Unrelated pairs (the first image of
pair i with the second image of pair i + n/2 of the same set): the fraction refused.

Each case in ``--json`` also holds the estimate (``matrix``), the estimate on the unwarped pair (``m0``), the
true map (``truth``) and the confidence's diagnostics (``extra``: block confidence, edge and intensity sharpness,
restart distance), so that a rule can be re-scored on the same estimates.

Two splits of disjoint pairs and seeds:
- ``--split held-out`` (the default; the reported numbers): the test sets TNO, RoadScene (together
  "IVF"), MRI_CT, MRI_PET, MRI_SPECT and the VIFB scenes, seed 16;
- ``--split calibration``: the training pairs (RoadScene train, Harvard MRI_CT train), seed 29 -- the pairs
  and seed the confidence of ``cddfuse.align`` was calibrated on (``align_calibration_probe.py``).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_align.py [--split held-out|calibration]
        [--sets TNO,RoadScene,...] [--step K] [--fusion N] [--shared PATH] [--json out.json]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_align.py --timing 5      # seconds per 640x480 pair
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _cpu_name() -> str:
    """The CPU's model name (benchmarks/_harness.py, beside this script; it is also imported as a module)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _harness import cpu_name

    return cpu_name()
# name: (first folder, second folder, task, where under the shared data folder)
SETS = {"TNO": ("ir", "vi", "ivf", "test/TNO"), "RoadScene": ("ir", "vi", "ivf", "test/RoadScene"),
        "VIFB": ("ir", "vi", "ivf", "../vifb"),
        "MRI_CT": ("CT", "MRI", "mif", "test/MRI_CT"), "MRI_PET": ("PET", "MRI", "mif", "test/MRI_PET"),
        "MRI_SPECT": ("SPECT", "MRI", "mif", "test/MRI_SPECT"),
        "RoadScene_train": ("ir", "vi", "ivf", "train/RoadScene"),
        "MRI_CT_train": ("CT", "MRI", "mif", "train/Harvard/MRI_CT")}
SPLITS = {"held-out": (("TNO", "RoadScene", "VIFB", "MRI_CT", "MRI_PET", "MRI_SPECT"), 16),
          "calibration": (("RoadScene_train", "MRI_CT_train"), 29)}
GROUPS = {"IVF": ("TNO", "RoadScene"), "Medical": ("MRI_CT", "MRI_PET", "MRI_SPECT")}
PAPER = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"bench_align: cannot read {path}")
    return np.ascontiguousarray(img[..., ::-1])


def pairs(shared: Path, name: str) -> list[tuple[Path, Path]]:
    """The ``(first, second)`` image paths of set ``name`` under the shared data folder, sorted by name."""
    a, b, _, where = SETS[name]
    root = shared / where
    files = sorted(f for f in (root / a).iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    return [(f, root / b / f.name) for f in files]


def random_transform(rng: np.random.Generator, w: int, h: int, perspective: bool) -> np.ndarray:
    """A random map from the warped first image's pixels to the second's (see the module docstring)."""
    tx, ty = rng.uniform(-0.08, 0.08) * w, rng.uniform(-0.08, 0.08) * h
    angle, scale = np.deg2rad(rng.uniform(-5, 5)), rng.uniform(0.9, 1.1)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    t = (np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1.0]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
         @ np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1.0]]))
    if perspective:
        src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
        dst = src + (rng.uniform(-0.02, 0.02, (4, 2)) * np.float64([w, h])).astype(np.float32)
        t = t @ cv2.getPerspectiveTransform(src, dst).astype(np.float64)
    return t / t[2, 2]


def misalign(a: np.ndarray, t: np.ndarray, size: tuple[int, int], downscale: bool) -> tuple[np.ndarray, np.ndarray]:
    """The first image warped so that its pixel p shows the second's pixel t(p) (black outside), optionally
    downscaled 2x; returns it and the true map (warped first -> second)."""
    w, h = size
    warped = cv2.warpPerspective(a, np.linalg.inv(t), (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    if downscale:
        warped = cv2.resize(warped, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        sx, sy = w / (w // 2), h / (h // 2)
        t = t @ np.array([[sx, 0, 0.5 * (sx - 1)], [0, sy, 0.5 * (sy - 1)], [0, 0, 1.0]])
    return warped, t


def corner_error(h_est: np.ndarray, t: np.ndarray, w: int, h: int) -> float:
    """Mean distance over the corners c of a ``w`` x ``h`` frame between ``h_est(t^-1 c)`` and ``c``."""
    corners = np.float64([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]]).T
    p = np.linalg.inv(t) @ corners
    q = h_est @ (p / p[2])
    q = q / q[2]
    return float(np.mean(np.hypot(q[0] - corners[0], q[1] - corners[1])))


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


def model_of(name: str) -> str:
    return "homography" if SETS[name][2] == "ivf" else "affine"


def run_set(args: argparse.Namespace, name: str, step: int, rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """The misaligned cases and the unrelated pairs of every ``step``-th pair of one set."""
    from cddfuse.align import estimate
    from cddfuse.io.color import luminance

    model = model_of(name)
    ps = pairs(args.shared, name)
    rows: list[dict] = []
    for fa, fb in ps[:: step]:
        ya, yb = luminance(read_rgb(fa)), luminance(read_rgb(fb))
        hb, wb = yb.shape
        transforms = [random_transform(rng, wb, hb, model == "homography") for _ in range(5)]
        al0 = estimate(ya, yb, model)
        for k, t in enumerate(transforms):
            a2, t_true = misalign(ya, t, (wb, hb), downscale=k == 4)
            start = time.perf_counter()
            al = estimate(a2, yb, model)
            seconds = time.perf_counter() - start
            rows.append({"set": name, "pair": fa.name, "case": k, "model": model, "accepted": al.accepted,
                         "confidence": al.confidence, "matches": al.matches, "inliers": al.inliers,
                         "extra": {k2: v for k2, v in al.extra.items() if isinstance(v, (int, float, str))},
                         "self": corner_error(al.matrix, al0.matrix @ t_true, wb, hb),
                         "dataset": corner_error(al.matrix, t_true, wb, hb), "m0_accepted": al0.accepted,
                         "seconds": seconds, "size": [wb, hb],
                         "matrix": al.matrix.tolist(), "m0": al0.matrix.tolist(), "truth": t_true.tolist()})
            r = rows[-1]
            print(f"{name:10s} {fa.name:16s} #{k} conf {r['confidence']:.2f} {'acc' if r['accepted'] else 'REF'} "
                  f"self {r['self']:7.2f} dataset {r['dataset']:7.2f} {seconds:.2f}s "
                  f"{json.dumps(r['extra'])}", file=sys.stderr, flush=True)
    unrelated: list[dict] = []
    if name not in ("MRI_PET", "MRI_SPECT"):  # refused anyway; nothing to learn from their unrelated pairs
        for i in range(0, len(ps), step):
            fa, fb = ps[i][0], ps[(i + len(ps) // 2) % len(ps)][1]
            ya, yb = luminance(read_rgb(fa)), luminance(read_rgb(fb))
            start = time.perf_counter()
            al = estimate(ya, yb, model)
            unrelated.append({"set": name, "a": fa.name, "b": fb.name, "accepted": al.accepted,
                              "confidence": al.confidence, "seconds": time.perf_counter() - start,
                              "extra": {k2: v for k2, v in al.extra.items() if isinstance(v, (int, float, str))}})
            print(f"{name:10s} unrelated {fa.name} / {fb.name} conf {al.confidence:.2f} "
                  f"{json.dumps(unrelated[-1]['extra'])}", file=sys.stderr, flush=True)
    return rows, unrelated


def summary(sel: list[dict]) -> dict:
    """Acceptance and the self / dataset errors of the accepted cases of ``sel``."""
    acc = [r for r in sel if r["accepted"]]
    slf = [r["self"] for r in acc]
    ds = [r["dataset"] for r in acc]
    return {"cases": len(sel), "accepted": len(acc) / max(len(sel), 1), "self_median": pct(slf, 50),
            "self_p95": pct(slf, 95), "self_max": max(slf, default=float("nan")), "over5": sum(e > 5 for e in slf),
            "dataset_median": pct(ds, 50), "dataset_p95": pct(ds, 95),
            "m0_refused": len({r["pair"] for r in sel if not r["m0_accepted"]}),
            "seconds": float(np.mean([r["seconds"] for r in sel])) if sel else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared")))
    ap.add_argument("--split", choices=list(SPLITS), default="held-out")
    ap.add_argument("--step", type=int, default=1, help="use every K-th pair (default: all)")
    ap.add_argument("--sets", default=None,
                    help="comma-separated sets, each NAME or NAME:K for every K-th pair (default: those of --split)")
    ap.add_argument("--fusion", type=int, default=0, help="fuse N cases per group for the metric drop")
    ap.add_argument("--fusion-only", action="store_true", help="only the metric drop (no registration table)")
    ap.add_argument("--timing", type=int, default=0, metavar="N",
                    help="only time `estimate` N times on a 640x480 pair (TNO 01 resized, misaligned; all models)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if (args.shared / "data").is_dir():  # ../shared itself, or its data/ folder
        args.shared = args.shared / "data"
    cv2.setNumThreads(1)
    from cddfuse.align import DEFAULT_MIN_CONFIDENCE

    if args.timing:
        return timing(args)
    if args.fusion_only:
        stub = [{"set": name, "pair": fa.name, "case": 0, "model": model_of(name)}
                for name in GROUPS["IVF"] + GROUPS["Medical"] for fa, _ in pairs(args.shared, name)[:: args.step]]
        fusion = fusion_drop(args, stub)
        if args.json:
            args.json.write_text(json.dumps({"fusion": fusion}, indent=1))
        return 0

    names, seed = SPLITS[args.split]
    # NAME or NAME:K (every K-th pair of that set; default --step)
    specs = [(x.split(":")[0], int(x.split(":")[1]) if ":" in x else args.step)
             for x in (",".join(names) if args.sets is None else args.sets).split(",")]
    wanted = tuple(name for name, _ in specs)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    unrelated: list[dict] = []
    for name, step in specs:
        r, u = run_set(args, name, step, rng)
        rows += r
        unrelated += u

    table = {}
    groups = [(n, (n,)) for n in wanted]
    groups.insert(2 if wanted[:2] == ("TNO", "RoadScene") else len(groups), ("IVF", GROUPS["IVF"]))
    for label, members in groups:
        sel = [r for r in rows if r["set"] in members]
        if sel and (label in members or len({r["set"] for r in sel}) > 1):
            table[label] = summary(sel)
    print(f"\nalign benchmark ({args.split}: seed {seed}, sets {', '.join(f'{n}:{k}' for n, k in specs)}), "
          f"{_cpu_name()}, threads=1, threshold {DEFAULT_MIN_CONFIDENCE}")
    print("| set | cases | accepted | self median px | self p95 px | self max px | accepted > 5 px "
          "| vs dataset median / p95 px (info) | pairs refused unwarped | s/case |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s in table.items():
        print(f"| {name} | {s['cases']} | {100 * s['accepted']:.1f}% | {s['self_median']:.2f} | {s['self_p95']:.2f} "
              f"| {s['self_max']:.2f} | {s['over5']} | {s['dataset_median']:.2f} / {s['dataset_p95']:.2f} "
              f"| {s['m0_refused']} | {s['seconds']:.2f} |")
    if unrelated:
        print("\n| unrelated pairs | refused | s/pair |\n|---|---|---|")
        for name in [n for n in wanted if any(u["set"] == n for u in unrelated)] + ["all"]:
            sel = [u for u in unrelated if name in ("all", u["set"])]
            refused = sum(not u["accepted"] for u in sel)
            print(f"| {name} | {refused} of {len(sel)} ({100 * refused / len(sel):.1f}%) | "
                  f"{np.mean([u['seconds'] for u in sel]):.2f} |")
    result = {"split": args.split, "seed": seed, "rows": rows, "unrelated": unrelated, "table": table}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.fusion:
        result["fusion"] = fusion_drop(args, rows)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    return 0


def timing(args: argparse.Namespace) -> int:
    """Seconds per ``estimate`` call on a 640x480 pair, per model (min and median of ``--timing`` runs)."""
    from cddfuse.align import estimate
    from cddfuse.io.color import luminance

    fa, fb = pairs(args.shared, "TNO")[0]
    ya = cv2.resize(luminance(read_rgb(fa)), (640, 480), interpolation=cv2.INTER_AREA)
    yb = cv2.resize(luminance(read_rgb(fb)), (640, 480), interpolation=cv2.INTER_AREA)
    t = random_transform(np.random.default_rng(0), 640, 480, True)
    a2, _ = misalign(ya, t, (640, 480), downscale=False)
    print(f"estimate on a 640x480 pair, {args.timing} runs, 1 thread ({_cpu_name()})")
    for model in ("translation", "similarity", "affine", "homography"):
        times, cpu = [], []
        for _ in range(args.timing):
            start, start_cpu = time.perf_counter(), time.process_time()
            al = estimate(a2, yb, model)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(f"  {model:12s} min {min(times):.3f} s, median {float(np.median(times)):.3f} s "
              f"(CPU time: median {float(np.median(cpu)):.3f} s; confidence {al.confidence:.2f})")
    return 0


def fusion_drop(args: argparse.Namespace, rows: list[dict]) -> dict:
    """Fuse ``--fusion`` accepted cases per group three ways and average the paper's metrics."""
    from cddfuse import Fuser
    from cddfuse.io.color import luminance
    from cddfuse.metrics import compute_metrics

    out: dict = {}
    for group, members in GROUPS.items():
        sel = [r for r in rows if r["set"] in members and r["case"] == 0][: args.fusion]
        if not sel:
            continue
        task = "ivf" if group == "IVF" else "mif"
        plain = Fuser(task=task, device="cpu")
        aligned = Fuser(task=task, device="cpu", align=sel[0]["model"])
        rng = np.random.default_rng(1616)
        sums: dict[str, list[dict[str, float]]] = {"original": [], "misaligned": [], "aligned": []}
        for r in sel:
            fa = args.shared / SETS[r["set"]][3] / SETS[r["set"]][0] / r["pair"]
            fb = args.shared / SETS[r["set"]][3] / SETS[r["set"]][1] / r["pair"]
            a_rgb, b_rgb = read_rgb(fa), read_rgb(fb)
            hb, wb = b_rgb.shape[:2]
            t = random_transform(rng, wb, hb, task == "ivf")
            a2 = cv2.warpPerspective(a_rgb, np.linalg.inv(t), (wb, hb), flags=cv2.INTER_LINEAR, borderValue=0)
            ref_a, ref_b = luminance(a_rgb) * 255, luminance(b_rgb) * 255
            for key, img in (("original", plain.fuse(a_rgb, b_rgb, )), ("misaligned", plain.fuse(a2, b_rgb)),
                             ("aligned", _try(aligned, a2, b_rgb))):
                if img is None:
                    continue
                f = (luminance(img) if img.ndim == 3 else img) * 255
                sums[key].append(compute_metrics(ref_a, ref_b, np.round(f), PAPER))
        out[group] = {k: {m: float(np.mean([v[m] for v in vals])) for m in PAPER} | {"n": len(vals)}
                      for k, vals in sums.items() if vals}
        print(f"\n{group}: paper metrics against the original aligned sources (mean of {len(sel)} cases)")
        print("| fusion | n | " + " | ".join(PAPER) + " |")
        print("|---|---|" + "---|" * len(PAPER))
        for k, v in out[group].items():
            print(f"| {k} | {v['n']} | " + " | ".join(f"{v[m]:.3f}" for m in PAPER) + " |")
    return out


def _try(fuser, a, b):  # noqa: ANN001, ANN202 - a refused alignment is counted, not fused
    from cddfuse.align import AlignmentError

    try:
        return fuser.fuse(a, b)
    except AlignmentError:
        return None


if __name__ == "__main__":
    sys.exit(main())
