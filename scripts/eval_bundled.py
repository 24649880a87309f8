"""Evaluate the bundled weights on the paper's test sets (for MODEL_CARD.md).

    .venv/bin/python scripts/eval_bundled.py [ivf|mif ...]

For each set: ``cddfuse bench`` (the authors' protocol and metrics, all pairs) with the bundled
weights of its task; writes docs/model_card/bench_<set>.md (our row, the paper's row, the mean and
max baselines) and .json (per-pair values). Equivalent to
``cddfuse bench ../shared/data/test/<set> --format json -o docs/model_card/bench_<set>.json``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CDDFUSE_SHARED", ROOT.parent / "shared"))
SETS = {"ivf": ("TNO", "RoadScene"), "mif": ("MRI_CT", "MRI_PET", "MRI_SPECT")}


def main() -> int:
    from cddfuse.bench.paper import format_bench, run_bench
    from cddfuse.metrics._memory import tune_malloc

    tune_malloc()
    out = ROOT / "docs/model_card"
    out.mkdir(parents=True, exist_ok=True)
    for task in sys.argv[1:] or list(SETS):
        for name in SETS[task]:
            t0 = time.monotonic()
            res = run_bench(SHARED / "data/test" / name, task=task, progress=False)
            (out / f"bench_{name}.json").write_text(format_bench(res, "json"), encoding="utf-8")
            md = format_bench(res, "md")
            (out / f"bench_{name}.md").write_text(md, encoding="utf-8")
            print(f"## {name} ({time.monotonic() - t0:.0f} s)\n\n{md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
