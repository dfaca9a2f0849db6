#!/usr/bin/env bash
# One prepared GPU check of longrl: CUDA parity, `bench rl`, `bench train` on the Qwen2.5-0.5B
# shape with MFU, and the PyTorch reference on the same GPU, combined into one JSON and a
# Markdown table for BENCHMARKS.md.
#
# Usage (on the GPU machine, from the repo root; the binary is built elsewhere and carried):
#   scripts/gpu_check.sh [LONGRL_BINARY]          # default: $LONGRL, else target/release/longrl
#   OUT=/tmp/check scripts/gpu_check.sh .device/longrl
#
# Prerequisites: a longrl binary built with `CUDARC_CUDA_VERSION=13000 cargo build --release
# --features cuda` (the GPU machine has no Rust toolchain and no network); `python3` with torch and
# transformers (the torch stage only; everything else needs the standard library); coreutils
# `timeout`; the repo's models/ and configs/ (config.json files and the tiny checkpoints).
#
# Time budget: under 8 minutes in all. Every stage runs under `timeout` with its own limit (below,
# seconds; override with the environment variables named) and never past BUDGET_S (default 460 s)
# counted from the start; a stage that would start with under 5 s left is skipped. A failed, timed
# out or skipped stage is recorded and the next one runs.
#   env 10 | parity: flex score/generate 15 each (T_FLEX), CUDA score 45 (T_CUDA_SCORE),
#   CUDA generate 55 (T_CUDA_GEN), flex rescore 15 | bench rl 95 (T_RL) | bench train 4K 60
#   (T_TRAIN_SHORT), 16K 65 (T_TRAIN_LONG) | torch reference 85 (T_TORCH) | combine 30
#
# Writes everything under ${OUT:-gpu_check_out}/: NAME.out / NAME.err per stage, stages.tsv,
# gpu_check.log, gpu_check.json (schema in scripts/gpu_check_report.py's `combine`) and
# gpu_check.md (the Markdown, also printed at the end). burn/cubecl caches go to $OUT/cache
# (LONGRL_CACHE_DIR): a second run with the same OUT starts with warm caches, so use a fresh OUT
# to measure cold-start (JIT compilation and autotuning) times.
#
# Other knobs: DEVICE (longrl device, cuda), TORCH_DEVICE (cuda), PYTHON (python3),
# TRAIN_CONFIG (models/Qwen2.5-0.5B-Instruct/config.json), SEQ_SHORT (4096), SEQ_LONG (16384),
# TRAIN_STEPS (3), RL_CONFIG (configs/tiny-rl.toml), RL_STEPS (5), PARITY_MODEL
# (models/tiny-r1-distill), PARITY_TOL (5e-3), ROLLOUT (16x8x512x128: prompts x G x prompt tokens x
# new tokens), PEAK_TFLOPS (989.4, H100 dense bf16), TORCH_ARGS (extra torch_reference.py args).
# A CPU dry run of the plumbing (no GPU): DEVICE=flex TORCH_DEVICE=cpu
# TRAIN_CONFIG=models/tiny-qwen2-chatml/config.json SEQ_SHORT=256 SEQ_LONG=512 ROLLOUT=2x2x16x8
# scripts/gpu_check.sh BINARY

set -u

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

bin=${1:-${LONGRL:-target/release/longrl}}
if [[ $bin != */* ]] && ! [[ -e $bin ]] && command -v "$bin" >/dev/null 2>&1; then
  bin=$(command -v "$bin")
fi
LONGRL=$(abspath "$bin")
OUT=$(abspath "${OUT:-gpu_check_out}")
cd "$(dirname "$0")/.." || { echo "cannot cd to the repo root" >&2; exit 1; }

PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-460}
TRAIN_CONFIG=${TRAIN_CONFIG:-models/Qwen2.5-0.5B-Instruct/config.json}
SEQ_SHORT=${SEQ_SHORT:-4096}
SEQ_LONG=${SEQ_LONG:-16384}
TRAIN_STEPS=${TRAIN_STEPS:-3}
RL_CONFIG=${RL_CONFIG:-configs/tiny-rl.toml}
RL_STEPS=${RL_STEPS:-5}
PARITY_MODEL=${PARITY_MODEL:-models/tiny-r1-distill}
PARITY_TOL=${PARITY_TOL:-5e-3}
ROLLOUT=${ROLLOUT:-16x8x512x128}
PEAK_TFLOPS=${PEAK_TFLOPS:-989.4}
read -r -a torch_extra <<<"${TORCH_ARGS:-}"

mkdir -p "$OUT/cache" || exit 1
export LONGRL_CACHE_DIR="$OUT/cache"
: >"$OUT/stages.tsv"
: >"$OUT/gpu_check.log"

START=$(date +%s.%N)
DEADLINE=$(( ${START%.*} + BUDGET_S ))
MIN_STAGE_S=5

elapsed() { awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[%6ss] %s\n' "$(elapsed)" "$*" | tee -a "$OUT/gpu_check.log"; }

# run_stage NAME LIMIT_S COMMAND...: stdout to $OUT/NAME.out, stderr to $OUT/NAME.err, one line
# in stages.tsv (name, status ok|failed|timeout|skipped, rc, seconds, limit, command).
run_stage() {
  local name=$1 limit=$2 left t0 secs rc status cmd
  shift 2
  left=$(( DEADLINE - $(date +%s) ))
  (( left < limit )) && limit=$left
  cmd=$(printf '%q ' "$@")
  if (( limit < MIN_STAGE_S )); then
    printf '%s\tskipped\t\t0\t%s\t%s\n' "$name" "$limit" "$cmd" >>"$OUT/stages.tsv"
    log "$name: skipped (${limit}s left of its limit and the ${BUDGET_S}s budget; ${MIN_STAGE_S}s needed)"
    return 0
  fi
  log "$name: start (limit ${limit}s): $cmd"
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" </dev/null
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$limit" "$cmd" >>"$OUT/stages.tsv"
  log "$name: $status (rc $rc) in ${secs}s"
  if [[ $status != ok ]]; then
    tail -n 5 "$OUT/$name.err" | sed 's/^/    | /' | tee -a "$OUT/gpu_check.log"
  fi
  return 0
}

log "longrl gpu check: binary $LONGRL, device $DEVICE, out $OUT, budget ${BUDGET_S}s"
if [[ ! -x $LONGRL ]]; then
  log "WARNING: $LONGRL is not an executable file: the longrl stages will fail"
fi

# 0. environment
run_stage env 10 bash -c '
  echo "longrl=$1"
  echo "longrl_version=$("$1" --version 2>&1 | head -n 1)"
  echo "gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)"
  echo "host=$(hostname)"
  echo "python=$("$2" --version 2>&1)"
  nvidia-smi 2>&1 || true' env "$LONGRL" "$PY"

# 1. parity: the same token ids scored, and greedy generation, on flex and on the GPU
"$PY" scripts/gpu_check_report.py inputs --out "$OUT" --model "$PARITY_MODEL" \
  || log "parity inputs: failed to write"
T_FLEX=${T_FLEX:-15}
score() { run_stage "$1" "$2" "$LONGRL" --device "$3" score --model "$PARITY_MODEL" --input "$4"; }
gen() {
  run_stage "$1" "$2" "$LONGRL" --device "$3" generate --model "$PARITY_MODEL" \
    --input "$OUT/parity_gen_in.jsonl" --max-new-tokens 24 --temperature 0 --quiet
}
score parity_flex_score "$T_FLEX" flex "$OUT/parity_score_in.jsonl"
gen parity_flex_gen "$T_FLEX" flex
score parity_cuda_score "${T_CUDA_SCORE:-45}" "$DEVICE" "$OUT/parity_score_in.jsonl"
gen parity_cuda_gen "${T_CUDA_GEN:-55}" "$DEVICE"
"$PY" scripts/gpu_check_report.py rescore --out "$OUT" || log "parity rescore input: failed to write"
score parity_flex_rescore "$T_FLEX" flex "$OUT/parity_rescore_in.jsonl"
"$PY" scripts/gpu_check_report.py parity --out "$OUT" --tol "$PARITY_TOL" >"$OUT/parity.json" 2>&1
log "parity: $(grep -o '"status": "[a-z]*"' "$OUT/parity.json" | tail -n 1) (details: $OUT/parity.json)"

# 2. RL steps
run_stage bench_rl "${T_RL:-95}" "$LONGRL" bench rl --config "$RL_CONFIG" --device "$DEVICE" \
  --steps "$RL_STEPS" --json

# 3. training steps, Qwen2.5-0.5B shape, mixed precision (bf16 compute, f32 master weights)
run_stage "train_${SEQ_SHORT}" "${T_TRAIN_SHORT:-60}" "$LONGRL" bench train --device "$DEVICE" \
  --model "$TRAIN_CONFIG" --batch 1 --seq-len "$SEQ_SHORT" --steps "$TRAIN_STEPS" --bf16 --json
run_stage "train_${SEQ_LONG}" "${T_TRAIN_LONG:-65}" "$LONGRL" bench train --device "$DEVICE" \
  --model "$TRAIN_CONFIG" --batch 1 --seq-len "$SEQ_LONG" --steps "$TRAIN_STEPS" --bf16 \
  --gradient-checkpointing --json

# 4. PyTorch reference: the same shapes and flags, then rollout decoding
run_stage torch_ref "${T_TORCH:-85}" "$PY" scripts/torch_reference.py --device "$TORCH_DEVICE" \
  --config "$TRAIN_CONFIG" --train "1x${SEQ_SHORT}" --train "1x${SEQ_LONG}:gc" \
  --rollout "$ROLLOUT" --steps 5 --warmup 2 --peak-tflops "$PEAK_TFLOPS" ${torch_extra[@]+"${torch_extra[@]}"}

# 5. combine
total=$(elapsed)
log "combine"
if timeout 30 "$PY" scripts/gpu_check_report.py combine --out "$OUT" --tol "$PARITY_TOL" \
  --parity-model "$PARITY_MODEL" --peak-tflops "$PEAK_TFLOPS" --budget "$BUDGET_S" --total "$total" \
  --device "$DEVICE" --rl-config "$RL_CONFIG" \
  >"$OUT/combine.out" 2>"$OUT/combine.err"; then
  cat "$OUT/combine.out"
else
  log "combine failed: $(tail -n 3 "$OUT/combine.err")"
fi
log "done in $(elapsed)s; results in $OUT/gpu_check.json and $OUT/gpu_check.md"
