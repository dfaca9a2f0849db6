#!/usr/bin/env bash
# Before/after speed of two longrl binaries, run alternately (the machines are shared and noisy):
# `bench train` (tiny shape, 1K and 4K tokens) and `bench generate` (tiny shape, 4 prompts x 4
# samples), ROUNDS rounds; prints one JSON line per run, prefixed by the binary's name.
#   scripts/ab_bench.sh BEFORE_BIN AFTER_BIN [ROUNDS]
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
model=models/tiny-qwen2-chatml/config.json
export RAYON_NUM_THREADS=2
for _ in $(seq "$rounds"); do
  for bin in "$before" "$after"; do
    for seq in 1024 4096; do
      echo "$(basename "$bin") train $seq $("$bin" --device flex bench train --model $model \
        --seq-len "$seq" --steps 40 --json 2>/dev/null)"
    done
    echo "$(basename "$bin") generate $("$bin" --device flex bench generate --model $model \
      --seq-len 512 --batch 4 --n 4 --new-tokens 64 --steps 10 --json 2>/dev/null)"
  done
done
