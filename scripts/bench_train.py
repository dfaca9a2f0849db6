#!/usr/bin/env python3
"""Training-step benchmark: `longrl bench train` against PyTorch eager (transformers), side by side.

Each case runs both sides on the same model shape (random weights from a config.json), the same
token stream (`longrl::bench::bench_ids`), batch, sequence length and thread count. One step is a
forward, the backward of the mean next-token NLL, global-norm clipping at 1.0 and an AdamW update
(lr 1e-6, weight decay 0.01); one warm-up step, then `--steps` timed ones. PyTorch runs
transformers' Qwen2 with SDPA attention (its flash / memory-efficient CPU kernels). Peak memory is
the process's resident high-water mark over the timed steps on both sides (`/proc/self/clear_refs`
then `VmHWM`). Prints a Markdown table for BENCHMARKS.md.

    cargo build --release
    python scripts/bench_train.py --threads 2
    python scripts/bench_train.py --threads 2 --only tiny --seq 1024,4096
    python scripts/bench_train.py --device cuda --model models/Qwen2.5-0.5B-Instruct/config.json --seq 4096

The PyTorch side alone: `python scripts/bench_train.py --torch-only --model CONFIG --seq N`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CASES = [
    # (label, config, batch, sequence lengths)
    ("tiny shape", "models/tiny-qwen2-chatml/config.json", 1, [1024, 2048, 4096]),
    ("Qwen2.5-0.5B shape", "models/Qwen2.5-0.5B-Instruct/config.json", 1, [256, 512]),
]


def bench_ids(batch, seq, vocab):
    """The token stream of `longrl::bench::bench_ids`."""
    return [(i * 2_654_435_761 + 12_345) % vocab for i in range(batch * seq)]


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def torch_side(config_path, batch, seq, steps, device, threads):
    """One JSON record like `longrl bench train --json`'s, for PyTorch eager."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(config_path)))
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    x = torch.tensor(bench_ids(batch, seq, config.vocab_size), device=device).reshape(batch, seq)

    def step():
        hidden = model.model(input_ids=x).last_hidden_state
        logits = model.lm_head(hidden[:, :-1])
        logp = torch.log_softmax(logits.float(), dim=-1)
        loss = -logp.gather(2, x[:, 1:].unsqueeze(2)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    secs = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else peak_rss()
    return {
        "bench": "train",
        "side": "pytorch",
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "seq_len": seq,
        "tokens_per_s": batch * seq / secs,
        "seconds_per_step": secs,
        "peak_memory_bytes": peak,
    }


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")][-1]


def mb(b):
    return f"{b / 1e6:.0f} MB" if b else "n/a"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu", help="cpu (longrl: flex) or cuda")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "longrl"))
    p.add_argument("--only", default=None, help="run only cases whose label contains this")
    p.add_argument("--model", default=None, help="one config.json instead of the built-in cases")
    p.add_argument("--seq", default=None, help="comma-separated sequence lengths (with --model or --only)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--torch-only", action="store_true", help="print the PyTorch record and exit")
    a = p.parse_args()
    seqs = [int(s) for s in a.seq.split(",")] if a.seq else None
    if a.torch_only:
        for seq in seqs or [1024]:
            print(json.dumps(torch_side(a.model, a.batch, seq, a.steps, a.device, a.threads)), flush=True)
        return
    cases = [("custom", a.model, a.batch, seqs or [1024])] if a.model else CASES
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    rust_device = "flex" if a.device == "cpu" else "cuda"
    rows = []
    for label, config, batch, lengths in cases:
        if a.only and a.only not in label:
            continue
        config = config if os.path.isabs(config) else os.path.join(ROOT, config)
        for seq in seqs or lengths:
            ours = run_json([a.bin, "--device", rust_device, "bench", "train", "--model", config, "--seq-len",
                             str(seq), "--batch", str(batch), "--steps", str(a.steps), "--json"], env)
            # PyTorch in a process of its own, so that its peak memory is its own.
            theirs = run_json([sys.executable, __file__, "--torch-only", "--model", config, "--seq", str(seq),
                               "--batch", str(batch), "--steps", str(a.steps), "--device", a.device,
                               "--threads", str(a.threads)], env)
            rows.append((label, seq, batch, ours, theirs))
            print(f"{label} {seq}: longrl {ours['tokens_per_s']:.0f} tok/s {mb(ours['peak_memory_bytes'])}, "
                  f"pytorch {theirs['tokens_per_s']:.0f} tok/s {mb(theirs['peak_memory_bytes'])}",
                  file=sys.stderr, flush=True)
    print(f"| shape ({a.device}, {a.threads} threads) | tokens | longrl tok/s | PyTorch tok/s | ratio "
          "| longrl peak | PyTorch peak |")
    print("|---|---|---|---|---|---|---|")
    for label, seq, batch, ours, theirs in rows:
        ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
        print(f"| {label} | {batch} x {seq} | {ours['tokens_per_s']:.0f} | {theirs['tokens_per_s']:.0f} "
              f"| {ratio:.2f}x | {mb(ours['peak_memory_bytes'])} | {mb(theirs['peak_memory_bytes'])} |")


if __name__ == "__main__":
    main()
