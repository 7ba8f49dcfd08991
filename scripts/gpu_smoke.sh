#!/usr/bin/env bash
# GPU smoke test: run it when a session is lent a GPU (about 5 minutes on one GPU); without one it runs only the
# parts a CPU can, and says which were skipped.
#
#   bash scripts/gpu_smoke.sh                      # everything this machine can run
#   bash scripts/gpu_smoke.sh --cpu-only --quick   # the CPU parts, seconds-sized (tests/test_gpu_smoke.py)
#   bash scripts/gpu_smoke.sh --log out.log        # log file (default outputs/gpu_smoke/<UTC time>/smoke.log)
#
# Parts:
#   a  tiny-decoder LoRA run: embedexp-train experiment=demo_tiny model=tiny_qwen2 model.peft.r=8
#      model.gradient_checkpointing=true with trainer=gpu (bf16-mixed) on a GPU, trainer=cpu without; the run must
#      write results.json and an exported model with its adapter/ folder
#   b  GradCache / DDP gradient exactness on CUDA: tests/test_distributed_cuda.py (2-rank cases need 2 GPUs);
#      without a GPU (and without --quick): the CPU cases of tests/test_distributed.py
#   c  the MiniLM training row of scripts/bench.py in bf16 with embedexp on the GPU (trainer.accelerator=gpu;
#      the sentence-transformers row beside it runs on the CPU as bench.py does); without a GPU: skipped
#      (docs/benchmarks.md has the CPU rows)
# Exit status: 0 when every part that ran passed, 1 otherwise; a summary line per part ends the log.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CPU_ONLY=0
QUICK=0
LOG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-only) CPU_ONLY=1 ;;
    --quick) QUICK=1 ;;
    --log) LOG="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu_smoke.sh: unknown argument $1; expected --cpu-only, --quick, --log FILE" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="python"; fi
fi
OUT="${GPU_SMOKE_OUT:-$ROOT/outputs/gpu_smoke/$(date -u +%Y%m%dT%H%M%S)}"
LOG="${LOG:-$OUT/smoke.log}"
mkdir -p "$OUT" "$(dirname "$LOG")"
: > "$LOG"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export EMBEDEXP_CACHE="${EMBEDEXP_CACHE:-$OUT/cache}"

say() { echo "$*" | tee -a "$LOG"; }

GPU=0
if [ "$CPU_ONLY" = 0 ] && "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  GPU=1
  say "gpu_smoke: GPU found: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "| torch", torch.__version__, "| bf16", torch.cuda.is_bf16_supported())')"
  export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS, for trainer presets with deterministic: true
else
  why="no CUDA GPU visible"; [ "$CPU_ONLY" = 1 ] && why="--cpu-only"
  say "gpu_smoke: $why: running only the CPU-runnable parts (a on trainer=cpu, b on CPU unless --quick; c skipped)"
fi
say "gpu_smoke: log $LOG, outputs $OUT, quick=$QUICK"

declare -a SUMMARY
FAILED=0
run_part() {  # name, command...
  local name="$1"; shift
  say "--- part $name: $*"
  local t0=$SECONDS
  if "$@" >> "$LOG" 2>&1; then
    SUMMARY+=("part $name: PASS ($((SECONDS - t0)) s)")
  else
    SUMMARY+=("part $name: FAIL (exit $?, $((SECONDS - t0)) s; see $LOG)")
    FAILED=1
  fi
  say "${SUMMARY[-1]}"
}
skip_part() { SUMMARY+=("part $1: SKIPPED ($2)"); say "${SUMMARY[-1]}"; }

# a: tiny-decoder LoRA training run, end to end (base vs tuned, export)
part_a() {
  local trainer=cpu extra=()
  if [ "$GPU" = 1 ]; then trainer=gpu; fi
  if [ "$QUICK" = 1 ]; then extra+=(trainer.max_steps=2 data.batch_size=4 model.max_seq_length=32 "~data.eval_sets.demo_sts"); fi
  "$PY" -m embedexp.train experiment=demo_tiny model=tiny_qwen2 model.peft.r=8 model.gradient_checkpointing=true \
    "trainer=$trainer" logger=none trainer.enable_progress_bar=false "paths.output_dir=$OUT/a_lora" \
    "paths.cache_dir=$OUT/cache" "${extra[@]}" || return  # with the run's own exit status
  "$PY" - "$OUT/a_lora" <<'EOF'
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
res = json.loads((run / "results.json").read_text())
assert res["metrics"], "results.json has no metric rows"
assert (run / "model" / "adapter").is_dir(), "the export has no adapter/ folder"
print(f"part a: results.json with {len(res['metrics'])} metric rows; export {run / 'model'} (+ adapter/)")
EOF
}
run_part a part_a

# b: gradient exactness (GradCache, DDP gather) against one big batch
if [ "$GPU" = 1 ]; then
  run_part b "$PY" -m pytest -q -p no:cacheprovider tests/test_distributed_cuda.py
elif [ "$QUICK" = 1 ]; then
  skip_part b "--quick without a GPU: the CPU cases run in the default test suite (tests/test_distributed.py)"
else
  run_part b "$PY" -m pytest -q -p no:cacheprovider tests/test_distributed.py
fi

# c: the MiniLM training row of scripts/bench.py in bf16, embedexp on the GPU
if [ "$GPU" = 1 ]; then
  bench_args=(--only train --precisions bf16 --batches 32 --repeats 1 --warmup 2 --steps 10)
  if [ "$QUICK" = 1 ]; then bench_args=(--quick --only train --precisions bf16); fi
  run_part c "$PY" scripts/bench.py "${bench_args[@]}" --embedexp-override trainer.accelerator=gpu \
    --embedexp-override trainer.deterministic=false --out "$OUT/bench_minilm_bf16_gpu.md"
else
  skip_part c "no GPU: the MiniLM rows on this CPU are in docs/benchmarks.md"
fi

say "=== gpu_smoke summary (gpu=$GPU, quick=$QUICK)"
for line in "${SUMMARY[@]}"; do say "$line"; done
if [ "$FAILED" = 1 ]; then say "gpu_smoke: FAILED"; exit 1; fi
say "gpu_smoke: OK"
