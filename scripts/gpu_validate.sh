#!/usr/bin/env bash
# Compare the weights a GPU run brought back (scripts/gpu_train.sh) with the shipped ones, on the
# held-out validation pairs only (every 20th training pair, .gpu/data/<task>/val; never the test sets),
# on the CPU: fuse each pair with both weights (cddfuse fuse, gray output), then the paper's eight
# metrics (cddfuse eval). Prints the mean over the pairs, per task and weights.
#   bash scripts/gpu_validate.sh RETURNED_DIR [ivf|mif ...]     (RETURNED_DIR holds ivf.safetensors ...)
# Needs the bundle of scripts/gpu_prepare.py (GPU_TRAIN_BUNDLE, default .gpu) and a cddfuse command
# (CDDFUSE, default .venv/bin/cddfuse). The fused images go to a new folder in $TMPDIR or /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
got=$(cd "${1:?usage: gpu_validate.sh RETURNED_DIR [ivf|mif ...]}" && pwd); shift
BUNDLE=${GPU_TRAIN_BUNDLE:-.gpu}
read -r -a CLI <<< "${CDDFUSE:-.venv/bin/cddfuse}"
tasks=("$@"); [ ${#tasks[@]} -gt 0 ] || tasks=(ivf mif)
out=$(mktemp -d "${TMPDIR:-/tmp}/gpu_validate.XXXXXX")
for t in "${tasks[@]}"; do
  val=$BUNDLE/data/$t/val
  for w in shipped gpu; do
    weights=src/cddfuse/weights/cddfuse_$t.safetensors
    [ "$w" = gpu ] && weights=$got/$t.safetensors
    "${CLI[@]}" fuse "$val/a" "$val/b" -o "$out/$t-$w" --weights "$weights" --color gray --device cpu -q
    echo "## $t, $w weights ($weights): $(ls "$val/a" | wc -l) held-out pairs"
    "${CLI[@]}" eval "$val/a" "$val/b" "$out/$t-$w" --metrics paper --format md | sed -n '1,2p;$p'
  done
done
echo "fused images in $out"
