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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))


def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def _children_cpu_s() -> float:
    t = os.times()
    return t.children_user + t.children_system


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, others' CPU in % of one core, the command's last stderr line)."""
    busy0, own0, t0 = _busy_jiffies(), _children_cpu_s(), time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    others = (_busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK") - (_children_cpu_s() - own0)
    summary = [line for line in done.stderr.splitlines() if "fused" in line]
    return wall, max(0.0, 100.0 * others / wall), summary[-1] if summary else ""


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
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
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
