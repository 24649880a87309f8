"""Folder fusion throughput: one process against ``torchrun`` ranks, in pairs per minute.

Runs ``cddfuse fuse DIR DIR -o OUT`` (bundled IVF weights) on the first ``--pairs`` RoadScene test pairs
(native sizes, colour visible images) as complete commands, wall time from start to exit (Python start,
model load and the rank 0 summary included, as a user sees it):

* ``1 x T``: one process, ``OMP_NUM_THREADS=T`` for T in ``--threads`` (default 1, and 2);
* ``torchrun 2 x 1``: ``torchrun --standalone --nproc-per-node 2 -m cddfuse.cli.main fuse ...``, one
  thread per rank (each rank fuses its pixel-balanced share; gloo only for the summary).

Also printed: the CPU time that other processes used meanwhile (percent of one core; the machine may be
shared). Usage: python benchmarks/bench_shard.py [--pairs 8] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _harness import SHARED, run_command, src_env


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, others' CPU in % of one core, the command's last stderr line)."""
    run = run_command(cmd, env)
    summary = [line for line in run.stderr.splitlines() if "fused" in line]
    return run.wall, run.others, summary[-1] if summary else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    src = SHARED / "data" / "test" / "RoadScene"
    stems = sorted(p.stem for p in (src / "ir").iterdir())[: args.pairs]
    work = Path(tempfile.mkdtemp(prefix="bench-shard-"))
    for side in ("ir", "vi"):
        (work / side).mkdir()
        for stem in stems:
            (work / side / f"{stem}.jpg").symlink_to(src / side / f"{stem}.jpg")
    env = src_env()
    fuse = ["fuse", str(work / "ir"), str(work / "vi"), "-q"]
    runs = []
    for threads in args.threads:
        out = work / f"out-1x{threads}"
        runs.append((f"1 process x {threads} thread(s)",
                     *timed([sys.executable, "-m", "cddfuse.cli.main", *fuse, "-o", str(out)],
                            dict(env, OMP_NUM_THREADS=str(threads)))))
    out = work / "out-torchrun-2x1"
    runs.append(("torchrun, 2 processes x 1 thread",
                 *timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "cddfuse.cli.main", *fuse, "-o", str(out)], dict(env, OMP_NUM_THREADS="1"))))
    print(f"{len(stems)} RoadScene pairs ({', '.join(stems[:3])}, ...), bundled IVF weights, "
          f"{os.cpu_count()} CPUs\n")
    print("| run | wall (start to exit) | pairs/min | others % | summary |\n|---|---|---|---|---|")
    for name, wall, others, summary in runs:
        print(f"| {name} | {wall:.1f} s | **{60 * len(stems) / wall:.2f}** | {others:.0f}% | {summary} |")


if __name__ == "__main__":
    main()
