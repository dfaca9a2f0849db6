#!/usr/bin/env python3
"""Rollout benchmark: longrl's engine against HF transformers `generate`, side by side.

For each case both sides load the same weights (a random Qwen2.5-0.5B-shaped checkpoint is written
once with transformers), use the same threads, prompt length, number of new tokens, samples per
prompt and sampling settings (temperature 0.7, top-p 0.95, no EOS so every sample runs to length),
and report prefill and decode tokens/s. Prints a Markdown table for BENCHMARKS.md.

    cargo build --release --example bench_model
    python scripts/bench_generate.py --threads 2            # CPU (flex)
    python scripts/bench_generate.py --device cuda --bin target/release/examples/bench_model

longrl's decode figure counts new tokens after the first of every sample; transformers' likewise.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CASES = [
    # (label, model, batch, n, prompt tokens, new tokens)
    ("tiny, batch 1", "tiny", 1, 1, 64, 64),
    ("tiny, 16 prompts x G=8", "tiny", 16, 8, 64, 64),
    ("0.5B shape, batch 1", "0.5b", 1, 1, 128, 32),
    ("0.5B shape, 16 prompts x G=8", "0.5b", 16, 8, 128, 16),
]


def random_05b(dst):
    """A Qwen2.5-0.5B-shaped checkpoint with random weights (written once, reused)."""
    if os.path.exists(os.path.join(dst, "model.safetensors")):
        return dst
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(os.path.join(ROOT, "models", "Qwen2.5-0.5B-Instruct"))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(dst)
    return dst


def run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return {r["bench"]: r for r in (json.loads(l) for l in out.stdout.splitlines() if l.startswith("{"))}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", help="cpu (longrl: flex) or cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--bin", default=None, help="the bench_model binary (default: cargo run --release)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "longrl-bench-qwen2.5-0.5b-random"))
    p.add_argument("--only", default=None, help="run only cases whose label contains this")
    a = p.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    rust = [a.bin] if a.bin else ["cargo", "run", "-q", "--release", "--example", "bench_model", "--"]
    rust_device = "flex" if a.device == "cpu" else "cuda"
    rows = []
    for label, which, batch, n, seq, new in CASES:
        if a.only and a.only not in label:
            continue
        model = os.path.join(ROOT, "models", "tiny-qwen2-chatml") if which == "tiny" else random_05b(a.cache)
        common = ["--model", model, "--batch", str(batch), "--n", str(n), "--seq", str(seq),
                  "--new-tokens", str(new), "--reps", str(a.reps), "--only", "decode"]
        ours = run(rust + ["--device", rust_device] + common, env)
        theirs = run([sys.executable, os.path.join(HERE, "bench_transformers.py"), "--device", a.device,
                      "--threads", str(a.threads)] + common, env)
        rows.append((label, ours, theirs))
        print(f"{label}: longrl decode {ours['decode']['tokens_per_s']:.0f} tok/s, "
              f"transformers {theirs['decode']['tokens_per_s']:.0f} tok/s", file=sys.stderr, flush=True)
    print(f"| case ({a.device}, {a.threads} threads) | prefill tok/s longrl | transformers | decode tok/s longrl "
          "| transformers | decode ratio |")
    print("|---|---|---|---|---|---|")
    for label, ours, theirs in rows:
        pr = [ours["prefill"]["tokens_per_s"], theirs["prefill"]["tokens_per_s"]]
        dr = [ours["decode"]["tokens_per_s"], theirs["decode"]["tokens_per_s"]]
        print(f"| {label} | {pr[0]:.0f} | {pr[1]:.0f} | {dr[0]:.0f} | {dr[1]:.0f} | {dr[0] / dr[1]:.2f}x |")


if __name__ == "__main__":
    main()
