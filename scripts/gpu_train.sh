#!/usr/bin/env bash
# Train both bundled models (IVF on RoadScene, MIF on Harvard CT+PET+SPECT) on one GPU within a fixed
# wall-clock budget, on a bare machine without network (Python 3.12, PyTorch + CUDA, no kornia).
#
# Here, once, in the checkout that travels (needs ../shared and PyPI; writes the ignored folder .gpu:
# copies of the training pairs, split as scripts/train_bundled.sh splits them, and kornia wheels for
# Python 3.12; ~38 MiB, ~49 MiB with the tracked tree, of the 64 MiB that may travel):
#   python3 scripts/gpu_prepare.py
# There, with the device tool (the command must finish inside timeout_s; GPU_TRAIN_BUDGET_S, default
# 510 s, counts from this script's start, the wheel install included):
#   run(command="bash scripts/gpu_train.sh", carry=[".gpu"], timeout_s=570)
# Afterwards, here, on the CPU: compare the returned weights with the shipped ones on the held-out
# pairs (never on the test sets): bash scripts/gpu_validate.sh DIR_OF_THE_RETURNED_FILES
#
# What it does: installs kornia from .gpu/wheels into a temporary folder (pip --no-index --no-deps
# --target; no network), puts it and src/ on PYTHONPATH (no install of cddfuse), then runs
# scripts/gpu_train.py for each model: a calibration on the GPU, a time-based plan (a quarter of the
# training time for Phase I, the rest for Phase II, the StepLR schedule fitted to the step counts),
# and `cddfuse train` with that plan (fine-tuning the shipped weights with their residual modes;
# 128x128 random crops with flips, batch 8, the paper's rate), --max-time as a safety net.
#
# Choices:
# - Fine-tuning the shipped weights rather than training from scratch: a few thousand steps per model
#   at batch 8 fit in the budget (an estimate; the calibration decides), a small fraction of the
#   paper's 120 epochs over MSRS patches; the shipped weights (CPU recipes: 64x64 crops, batch 4; IVF
#   1,280 steps, MIF 684) are a better start than random, and 128x128 crops continue them at the
#   paper's patch size. GPU_TRAIN_INIT=scratch runs the recipe from a random start instead.
# - Both models at once by default: one step is ~6,800 PyTorch ops (kernel launches; ~55 ms of CPU
#   time per step measured here with tiny tensors), about as long as the GPU's work on 8 pairs of
#   128x128 crops, so two processes fill each other's gaps; they also overlap their start-up,
#   calibration, validation and export, and each needs ~26 GB of activations (an 80 GB card holds
#   two). They calibrate together, so each plans with its share of the GPU. GPU_TRAIN_MODE=sequential
#   gives each the whole GPU for half the time.
#
# Everything comes back under $OUT as it is written (8 files at most):
#   ivf.safetensors, mif.safetensors  the latest weights, rewritten at every checkpoint; at the end the
#                                     final ones (provenance status "complete", phase2_steps > 0)
#   ivf.log, mif.log                  each model's log: calibration, plan, losses and pairs/s, validation
#   gpu_train.log                     this script's log (install, environment, timing)
#   summary.json                      per model: plan, measured steps/s, validation before and after
#   runs.tar.gz                       run folders without checkpoints (config.yaml, state.json,
#                                     validation.jsonl, TensorBoard events)
# Exit code 0 when both models completed.
#
# Settings (environment variables):
#   OUT                  folder for the results (required)
#   GPU_TRAIN_BUDGET_S   wall-clock seconds for everything (default 510)
#   GPU_TRAIN_MODE       concurrent (default: both models at once, one process each, sharing the GPU)
#                        or sequential (IVF in the first half of the time, MIF in the rest)
#   GPU_TRAIN_INIT       shipped (default: fine-tune the shipped weights) or scratch
#   GPU_TRAIN_BATCH      global batch (default 8; the rate is 1e-4 x sqrt(batch / 8)); GPU_TRAIN_LR overrides
#   GPU_TRAIN_P1         share of the training time for Phase I (default 0.25)
#   GPU_TRAIN_DEVICE     cuda (default) or cpu
#   GPU_TRAIN_TINY=1     tiny network and crops (the CPU test of this script)
#   GPU_TRAIN_MAX_STEPS  at most this many training steps per model, however long the budget (the CPU test)
#   GPU_TRAIN_EXTRA      more options for scripts/gpu_train.py (e.g. --bf16, --no-tf32)
#   GPU_TRAIN_BUNDLE     the folder gpu_prepare.py wrote (default .gpu)
#   GPU_TRAIN_WORK       where run folders and the kornia install go (default a new folder in /tmp)
#   GPU_TRAIN_PYTHON     the interpreter (default python3)
set -uo pipefail
T0=$(date +%s.%N)
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder whose files come back}"
PY=${GPU_TRAIN_PYTHON:-python3}
BUDGET=${GPU_TRAIN_BUDGET_S:-510}
MODE=${GPU_TRAIN_MODE:-concurrent}
BUNDLE=${GPU_TRAIN_BUNDLE:-.gpu}
WORK=${GPU_TRAIN_WORK:-$(mktemp -d /tmp/gpu_train.XXXXXX)}
TAIL=3  # seconds kept at the end for the summary and the archive
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
now() { date +%s.%N; }
since() { awk -v a="$T0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[gpu_train.sh $(since)s] $*" | tee -a "$OUT/gpu_train.log" >&2; }
case "$MODE" in concurrent|sequential) ;; *) log "GPU_TRAIN_MODE must be concurrent or sequential"; exit 2 ;; esac
DEADLINE=$(awk -v a="$T0" -v b="$BUDGET" -v t="$TAIL" 'BEGIN { printf "%.3f", a + b - t }')

# 1. kornia from the carried wheels, without network
SITE=$WORK/site
shopt -s nullglob
wheels=("$BUNDLE"/wheels/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then log "no wheels in $BUNDLE/wheels: run python3 scripts/gpu_prepare.py first"; exit 2; fi
for t in ivf mif; do
  [ -d "$BUNDLE/data/$t/train/a" ] || { log "no data in $BUNDLE/data/$t: run python3 scripts/gpu_prepare.py first"; exit 2; }
done
if ! "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "${wheels[@]}" >>"$OUT/gpu_train.log" 2>&1; then
  log "installing ${wheels[*]} failed"; exit 1
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
log "installed: $("$PY" -c 'import kornia, torch; print(f"kornia {kornia.__version__} from {kornia.__file__}; torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")' 2>&1)"
command -v nvidia-smi >/dev/null && log "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
log "mode $MODE, budget ${BUDGET} s, deadline in $(awk -v d="$DEADLINE" -v n="$(now)" 'BEGIN { printf "%.0f", d - n }') s; work folder $WORK"

# 2. the two trainings
args=(--work "$WORK" --out "$OUT" --device "${GPU_TRAIN_DEVICE:-cuda}" --init "${GPU_TRAIN_INIT:-shipped}"
      --p1-fraction "${GPU_TRAIN_P1:-0.25}")
[ -n "${GPU_TRAIN_BATCH:-}" ] && args+=(--batch "$GPU_TRAIN_BATCH")
[ -n "${GPU_TRAIN_LR:-}" ] && args+=(--lr "$GPU_TRAIN_LR")
[ "${GPU_TRAIN_TINY:-0}" = 1 ] && args+=(--tiny)
[ -n "${GPU_TRAIN_MAX_STEPS:-}" ] && args+=(--max-steps "$GPU_TRAIN_MAX_STEPS")
read -r -a extra <<< "${GPU_TRAIN_EXTRA:-}"
train_one() {  # task deadline [peers]; stopped by SIGTERM (a clean stop, with the weights) 1 s after its deadline
  local secs
  secs=$(awk -v d="$2" -v n="$(now)" 'BEGIN { s = d - n + 1; printf "%d", (s < 1 ? 1 : s) }')
  timeout -k 10 "$secs" "$PY" scripts/gpu_train.py --task "$1" --data "$BUNDLE/data/$1" --deadline "$2" --peers "${3:-1}" \
    --barrier "$WORK/barrier" "${args[@]}" "${extra[@]}" >"$OUT/$1.log" 2>&1
}
declare -A rc
if [ "$MODE" = concurrent ]; then
  train_one ivf "$DEADLINE" 2 & pid_ivf=$!
  train_one mif "$DEADLINE" 2 & pid_mif=$!
  wait "$pid_ivf"; rc[ivf]=$?
  wait "$pid_mif"; rc[mif]=$?
else
  half=$(awk -v d="$DEADLINE" -v n="$(now)" 'BEGIN { printf "%.3f", n + (d - n) / 2 }')
  train_one ivf "$half"; rc[ivf]=$?
  train_one mif "$DEADLINE"; rc[mif]=$?
fi
log "exit codes: ivf ${rc[ivf]}, mif ${rc[mif]}"

# 3. summary and the run folders (without checkpoints)
"$PY" - "$WORK" "$OUT" "$MODE" "$BUDGET" "$(since)" "${rc[ivf]}" "${rc[mif]}" <<'EOF' || log "no summary"
import json, sys
from pathlib import Path
work, out, mode, budget, elapsed, rc_ivf, rc_mif = sys.argv[1:]
s = {"mode": mode, "budget_s": float(budget), "elapsed_before_summary_s": float(elapsed),
     "exit_codes": {"ivf": int(rc_ivf), "mif": int(rc_mif)}}
for t in ("ivf", "mif"):
    p = Path(work) / t / "summary.json"
    s[t] = json.loads(p.read_text()) if p.is_file() else None
(Path(out) / "summary.json").write_text(json.dumps(s, indent=1) + "\n")
short = {t: s[t] and {k: s[t][k] for k in ("status", "steps", "phase2_steps", "steps_per_s")} for t in ("ivf", "mif")}
print(json.dumps(short))
EOF
runs=()
for t in ivf mif; do [ -d "$WORK/$t/run" ] && runs+=("$t/run"); done
[ ${#runs[@]} -gt 0 ] && tar -czf "$OUT/runs.tar.gz" -C "$WORK" --exclude=checkpoints --exclude='*.safetensors' \
  "${runs[@]}"
log "done in $(since) s of ${BUDGET} s; in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
[ "${rc[ivf]}" = 0 ] && [ "${rc[mif]}" = 0 ]
