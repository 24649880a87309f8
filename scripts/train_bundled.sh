#!/usr/bin/env bash
# Train (or resume) the bundled weights: bash scripts/train_bundled.sh ivf [--max-time 80m]
#                                    or: bash scripts/train_bundled.sh mif [--phase2-epochs 4]
# RECIPE=NAME picks configs/NAME.yaml and runs/NAME (default bundled_<task>), e.g. the v2 lineage:
#   RECIPE=bundled_ivf_v2 bash scripts/train_bundled.sh ivf --max-time 150m
# The split lives in runs/bundled_<task>/split as symlinks into ../shared/data/train (nothing copied),
# made by scripts/bundled_split.py: every 20th pair (sorted by name) is held out for validation; test
# images are never used.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:?usage: train_bundled.sh ivf|mif [cddfuse train options]}; shift
SHARED=${CDDFUSE_SHARED:-../shared}
recipe=${RECIPE:-bundled_$task}
run=runs/$recipe
split=runs/bundled_$task/split   # one split per task, shared by its recipes
if [ ! -d "$split" ]; then  # the split rule lives in scripts/bundled_split.py (also used by scripts/gpu_prepare.py)
  .venv/bin/python scripts/bundled_split.py --task "$task" --shared "$SHARED" --dest "$split"
fi
if [ "$task" = mif ] && [ "$recipe" = bundled_mif ]; then  # staged: Phase I, residual-mode probes, Phase II (see scripts/bundled_mif.py)
  exec .venv/bin/python scripts/bundled_mif.py --split "$split" --run "$run" "$@"
fi
# Runs (new or resumed) on a CPU with AMX or AVX512-BF16 train with bfloat16 autocast (a Phase-I step of batch 8 x 128^2
# took 15.2 s instead of 19.6 s on the AMX Xeon VM, loss curves tracking fp32: benchmarks/TRAIN_RESULTS.md);
# BF16=0 keeps fp32.
bf16=()
if [ "${BF16:-auto}" != 0 ] && .venv/bin/python -c "import sys, torch; from cddfuse.engine.cpu import bf16_feature; \
sys.exit(0 if bf16_feature() and not torch.cuda.is_available() else 1)"; then
  bf16=(--bf16)
fi
if [ -f "$run/checkpoints/last.pt" ]; then  # resumes keep the run's config; precision may change (autocast only)
  exec .venv/bin/cddfuse train --resume "$run" "${bf16[@]}" "$@"
fi
exec .venv/bin/cddfuse train --config "configs/$recipe.yaml" --run-dir "$run" "${bf16[@]}" \
  --a "$split/train/a" --b "$split/train/b" --val-a "$split/val/a" --val-b "$split/val/b" "$@"
