#!/usr/bin/env bash
# Before/after speed of two longrl binaries, run alternately (the machines are shared and noisy):
# `bench train` (tiny shape, 1K and 4K tokens), `bench generate` (tiny shape, 4 prompts x 4
# samples) and a whole `longrl generate` process (the shipped tiny model, 8 inputs x 4 samples of
# 128 tokens), ROUNDS rounds; prints one line per run, prefixed by the binary's name (for
# `generate`: its wall seconds and the sha256 of its output, which must agree between binaries).
#   scripts/ab_bench.sh BEFORE_BIN AFTER_BIN [ROUNDS]
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
model=models/tiny-qwen2-chatml/config.json
export RAYON_NUM_THREADS=2
input=$(mktemp)
trap 'rm -f "$input"' EXIT
for i in 1 2 3 4 5 6 7 8; do
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"Question $i: what is $i plus $i?\"}]}"
done > "$input"
for _ in $(seq "$rounds"); do
  for bin in "$before" "$after"; do
    for seq in 1024 4096; do
      echo "$(basename "$bin") train $seq $("$bin" --device flex bench train --model $model \
        --seq-len "$seq" --steps 40 --json 2>/dev/null)"
    done
    echo "$(basename "$bin") generate $("$bin" --device flex bench generate --model $model \
      --seq-len 512 --batch 4 --n 4 --new-tokens 64 --steps 10 --json 2>/dev/null)"
    t0=$(date +%s.%N)
    out=$("$bin" --device flex generate --model models/tiny-qwen2-chatml --input "$input" \
      --n 4 --max-new-tokens 128 --temperature 1.0 2>/dev/null | sha256sum | cut -c1-16)
    echo "$(basename "$bin") longrl-generate $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }') s $out"
  done
done
