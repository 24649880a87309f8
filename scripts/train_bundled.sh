#!/usr/bin/env bash
# Train (or resume) the bundled weights: bash scripts/train_bundled.sh ivf [--max-time 80m]
#                                    or: bash scripts/train_bundled.sh mif [--phase2-epochs 4]
# RECIPE=NAME picks configs/NAME.yaml and runs/NAME (default bundled_<task>), e.g. the v2 lineage:
#   RECIPE=bundled_ivf_v2 bash scripts/train_bundled.sh ivf --max-time 150m
# The split lives in runs/bundled_<task>/split as symlinks into ../shared/data/train (nothing copied).
# Every 20th pair (sorted by name) is held out for validation; test images are never used.
set -euo pipefail
cd "$(dirname "$0")/.."
task=${1:?usage: train_bundled.sh ivf|mif [cddfuse train options]}; shift
SHARED=${CDDFUSE_SHARED:-../shared}
recipe=${RECIPE:-bundled_$task}
run=runs/$recipe
split=runs/bundled_$task/split   # one split per task, shared by its recipes
if [ "$task" = ivf ]; then
  src_a=("$SHARED/data/train/RoadScene/ir"); src_b=("$SHARED/data/train/RoadScene/vi")
else
  src_a=(); src_b=()
  for s in CT PET SPECT; do src_a+=("$SHARED/data/train/Harvard/MRI_$s/$s"); src_b+=("$SHARED/data/train/Harvard/MRI_$s/MRI"); done
fi
if [ ! -d "$split" ]; then
  mkdir -p "$split"/{train,val}/{a,b}
  i=0
  for k in "${!src_a[@]}"; do
    for fa in $(ls "${src_a[$k]}" | sort); do
      stem=${fa%.*}; fb=$(ls "${src_b[$k]}" | grep -E "^${stem}\.[A-Za-z]+$" | head -1)
      [ -n "$fb" ] || continue
      prefix=$([ "$task" = mif ] && basename "$(dirname "${src_a[$k]}")"_ || true)
      part=$([ $((i % 20)) -eq 19 ] && echo val || echo train)
      ln -s "$(readlink -f "${src_a[$k]}/$fa")" "$split/$part/a/$prefix$fa"
      ln -s "$(readlink -f "${src_b[$k]}/$fb")" "$split/$part/b/$prefix$fb"
      i=$((i + 1))
    done
  done
fi
if [ "$task" = mif ] && [ "$recipe" = bundled_mif ]; then  # staged: Phase I, residual-mode probes, Phase II (see scripts/bundled_mif.py)
  exec .venv/bin/python scripts/bundled_mif.py --split "$split" --run "$run" "$@"
fi
if [ -f "$run/checkpoints/last.pt" ]; then
  exec .venv/bin/cddfuse train --resume "$run" "$@"
fi
exec .venv/bin/cddfuse train --config "configs/$recipe.yaml" --run-dir "$run" \
  --a "$split/train/a" --b "$split/train/b" --val-a "$split/val/a" --val-b "$split/val/b" "$@"
