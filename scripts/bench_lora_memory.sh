#!/usr/bin/env bash
# `longrl plan` against measured peaks for LoRA SFT on the 0.39B shape (BENCHMARKS.md, "Memory
# plan (issue 20)", LoRA rows): r = 16 on every linear layer, base in f32 and in bf16, batch 2 of
# 670 tokens, 2 steps, no gradient checkpointing.
#   python scripts/make_bench_checkpoint.py /tmp/bench-0.39b
#   cargo build --release && scripts/bench_lora_memory.sh [/tmp/bench-0.39b] [LONGRL_BINARY]
set -euo pipefail
ckpt=${1:-/tmp/bench-0.39b}
bin=${2:-${CARGO_TARGET_DIR:-target}/release/longrl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| base | plan peak GiB | measured peak GiB |"
echo "|---|---|---|"
for dtype in float32 bfloat16; do
  cat > "$work/$dtype.toml" <<TOML
[model]
path = "$ckpt"
base_dtype = "$dtype"

[run]
run_dir = "$work/run-$dtype"
save_steps = 0
progress = false

[lora]
r = 16
lora_alpha = 32
target_modules = "all-linear"

[sft]
train_file = "$ckpt/sft.jsonl"
max_steps = 2
batch_size = 2
micro_batch_tokens = 1340
max_length = 670
TOML
  plan=$("$bin" --device flex plan --config "$work/$dtype.toml" --json |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["peak_bytes"] / 2**30, 2))')
  RAYON_NUM_THREADS=2 /usr/bin/time -v "$bin" --device flex sft --config "$work/$dtype.toml" \
    --quiet --no-plan-check > /dev/null 2> "$work/time.txt"
  kb=$(grep "Maximum resident set size" "$work/time.txt" | awk '{print $NF}')
  echo "| $dtype | $plan | $(python3 -c "print(round($kb / 2**20, 2))") |"
done
