"""Do bf16 and fp32 training track each other? Phase-I loss curves from the same seed, on CPU.

Runs :meth:`cddfuse.train.trainer.Trainer.train_step` (what ``cddfuse train`` runs) for ``--steps``
steps twice -- fp32, then bfloat16 autocast (``cddfuse train --bf16``) -- from the same initial
weights on the same sequence of random crops of the RoadScene training pairs, and reports both
loss curves (total and per part), their mean relative difference over the last half, and the time
per step. The paper-size network; the batch and crop are smaller than the paper's (default 4 of
64x64) so that 2 x 200 steps fit in minutes on two cores.

Usage: python benchmarks/bf16_train_curves.py [--steps 200] [--batch 4] [--size 64] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import _bare_trainer  # noqa: E402  (the same bare trainer as the step benchmark)

from cddfuse.engine.cpu import bf16_feature, cpu_model  # noqa: E402
from cddfuse.train import config as C  # noqa: E402


def _crops(shared: Path, steps: int, batch: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of aligned random crops (ir, vis) of the RoadScene training pairs, in [0, 1]."""
    folder = shared / "data" / "train" / "RoadScene"
    names = sorted(p.name for p in (folder / "ir").iterdir())
    pairs = [(cv2.imread(str(folder / "ir" / n), cv2.IMREAD_GRAYSCALE),
              cv2.imread(str(folder / "vi" / n), cv2.IMREAD_GRAYSCALE)) for n in names]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        a, b = [], []
        for _ in range(batch):
            ir, vi = pairs[rng.integers(len(pairs))]
            y = rng.integers(ir.shape[0] - size + 1)
            x = rng.integers(ir.shape[1] - size + 1)
            a.append(ir[y:y + size, x:x + size])
            b.append(vi[y:y + size, x:x + size])
        out.append((torch.from_numpy(np.stack(a)[:, None] / 255.0).float(),
                    torch.from_numpy(np.stack(b)[:, None] / 255.0).float()))
    return out


def _curve(bf16: bool, batches, size: int) -> tuple[list[dict[str, float]], list[float]]:
    os.environ["CDDFUSE_BENCH_BF16"] = "1" if bf16 else "0"
    trainer = _bare_trainer(C.default_config(), torch.device("cpu"), size)  # seeds the weights with 0
    losses, times = [], []
    for a, b in batches:
        t = time.perf_counter()
        parts, _ = trainer.train_step(a, b, phase=1)
        times.append(time.perf_counter() - t)
        losses.append({k: float(v) for k, v in parts.items()})
    return losses, times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=os.environ.get("CDDFUSE_SHARED", str(Path(__file__).resolve().parents[2]
                                                                                / "shared")))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if bf16_feature() is None:
        print("this CPU has neither AMX nor AVX512-BF16", file=sys.stderr)
        return 1
    batches = _crops(Path(args.shared), args.steps, args.batch, args.size)
    curves = {}
    for name in ("fp32", "bf16"):
        losses, times = _curve(name == "bf16", batches, args.size)
        curves[name] = {"losses": losses, "seconds": times}
        print(f"{name}: median step {statistics.median(times):.3f} s, first loss {losses[0]['total']:.4f}, "
              f"last loss {losses[-1]['total']:.4f}", file=sys.stderr)
    half = args.steps // 2
    summary = {}
    for key in curves["fp32"]["losses"][0]:
        f = np.array([x[key] for x in curves["fp32"]["losses"]])
        g = np.array([x[key] for x in curves["bf16"]["losses"]])
        summary[key] = {
            "fp32_mean_last_half": float(f[half:].mean()), "bf16_mean_last_half": float(g[half:].mean()),
            "mean_rel_diff_last_half": float(np.mean(np.abs(g[half:] - f[half:]) / np.maximum(np.abs(f[half:]),
                                                                                                 1e-12))),
            "corr": float(np.corrcoef(f, g)[0, 1]) if f.std() > 0 and g.std() > 0 else float("nan"),
        }
        s = summary[key]
        print(f"{key:10s} last-half mean fp32 {s['fp32_mean_last_half']:.4f} bf16 {s['bf16_mean_last_half']:.4f} "
              f"mean |rel diff| {s['mean_rel_diff_last_half']:.2%} corr {s['corr']:.3f}")
    info = {"cpu": cpu_model(), "bf16_feature": bf16_feature(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "steps": args.steps, "batch": args.batch, "size": args.size,
            "date": time.strftime("%Y-%m-%d %H:%M"),
            "median_step_s": {k: statistics.median(v["seconds"]) for k, v in curves.items()},
            "summary": summary, "curves": curves}
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1))
    print(json.dumps({k: v for k, v in info.items() if k not in ("curves", "summary")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
