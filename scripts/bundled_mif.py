"""Train the bundled medical (MIF) weights in stages; run through ``scripts/train_bundled.sh mif``.

Stages (each resumable: a finished stage is skipped, an interrupted one continues from its
last checkpoint):

1. ``phase1``: Phase I (reconstruction) on the training split.
2. ``probe_<mode>`` for the residual modes none, vis and sum: a short Phase II
   (``--probe-steps`` steps) from the Phase-I weights, then a validation pass on the held-out pairs.
3. The residual mode is chosen by evidence: the mode that is best on most of the eight validation
   metrics (EN SD SF MI SCD VIF Qabf SSIM); ties go to the lower validation fusion loss. The
   table and the choice are written to ``residual_choice.json``.
4. ``final``: Phase II from the Phase-I weights with the chosen mode (``--phase2-epochs``).

The weights to ship are ``RUN/final/final.safetensors``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

MODES = ("none", "vis", "sum")
METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")


def stage(name: str, run: Path, args: list[str], config: str = "configs/bundled_mif.yaml") -> Path:
    """Run (or resume, or skip) one training stage; returns its final weights."""
    d = run / name
    final = d / "final.safetensors"
    if final.is_file():
        print(f"[bundled_mif] {name}: done already ({final})", flush=True)
        return final
    cli = str(Path(sys.executable).with_name("cddfuse"))
    if (d / "checkpoints" / "last.pt").is_file():
        cmd = [cli, "train", "--resume", str(d), "--no-progress"]
    else:
        cmd = [cli, "train", "--config", config, "--run-dir", str(d), "--no-progress", *args]
    print("[bundled_mif] " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    if not final.is_file():
        raise SystemExit(f"[bundled_mif] stage {name} stopped before the end; run the script again to continue")
    return final


def last_validation(run_dir: Path) -> dict[str, float]:
    lines = (run_dir / "validation.jsonl").read_text(encoding="utf-8").splitlines()
    return json.loads(lines[-1])


def choose(rows: dict[str, dict[str, float]]) -> str:
    wins = {m: 0 for m in rows}
    for k in [k for k in METRICS if all(k in r for r in rows.values())]:
        best = max(rows[m][k] for m in rows)
        for m in rows:
            wins[m] += rows[m][k] == best
    return min(rows, key=lambda m: (-wins[m], rows[m]["fusion_loss"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", required=True, help="folder with train/{a,b} and val/{a,b}")
    ap.add_argument("--run", required=True, help="run folder (stages go below it)")
    ap.add_argument("--phase1-epochs", type=int, default=2)
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--phase2-epochs", type=int, default=4)
    ap.add_argument("--config", default="configs/bundled_mif.yaml")
    a, extra = ap.parse_known_args()  # anything else goes to every `cddfuse train` (e.g. --set ...)
    split, run = Path(a.split), Path(a.run)
    data = ["--a", str(split / "train/a"), "--b", str(split / "train/b"),
            "--val-a", str(split / "val/a"), "--val-b", str(split / "val/b")]
    p1 = stage("phase1", run, [*data, "--epochs", str(a.phase1_epochs), "0", *extra], a.config)
    rows = {}
    for mode in MODES:
        stage(f"probe_{mode}", run, [*data, "--init", str(p1), "--epochs", "0", "1", "--residual", mode,
                                     "--set", f"train.max_steps_per_epoch={a.probe_steps}", *extra], a.config)
        rows[mode] = last_validation(run / f"probe_{mode}")
    win = choose(rows)
    print("[bundled_mif] validation after the probes (held-out pairs):", flush=True)
    print("  mode  " + " ".join(f"{k:>7}" for k in (*METRICS, "fusion_loss")))
    for m, r in rows.items():
        print(f"  {m:5} " + " ".join(f"{r.get(k, float('nan')):7.3f}" for k in (*METRICS, "fusion_loss")))
    print(f"[bundled_mif] chosen residual mode: {win}", flush=True)
    (run / "residual_choice.json").write_text(json.dumps({"probes": rows, "chosen": win}, indent=2) + "\n")
    final = stage("final", run,
                  [*data, "--init", str(p1), "--epochs", "0", str(a.phase2_epochs), "--residual", win, *extra],
                  a.config)
    print(f"[bundled_mif] weights: {final}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
