#!/usr/bin/env python3
"""Attention kernel benchmark: `examples/bench_attention.rs` against PyTorch's SDPA, side by side.

Both sides time the causal attention's forward and its backward alone on random inputs of one
shape (grouped-query heads, no padding) and count FLOPs the same way (the causal half: `2·L²·d`
per query head forward, `5/2` of that backward). PyTorch runs `scaled_dot_product_attention`
with `is_causal=True` (its flash CPU kernel) and `enable_gqa=True`. Prints a Markdown table.

    cargo build --release --example bench_attention
    python scripts/bench_attention.py --threads 2
    python scripts/bench_attention.py --threads 2 --heads 14 --kv-heads 2 --head-dim 64 --seq 1024,2048
"""

import argparse
import json
import os
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def torch_side(a, seq):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    shape_q = (a.batch, a.heads, seq, a.head_dim)
    shape_kv = (a.batch, a.kv_heads, seq, a.head_dim)
    q = torch.randn(shape_q, requires_grad=True)
    k = torch.randn(shape_kv, requires_grad=True)
    v = torch.randn(shape_kv, requires_grad=True)
    d_out = torch.randn(shape_q)
    forward = backward = 0.0
    for rep in range(a.reps + 1):
        start = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        f = time.perf_counter() - start
        start = time.perf_counter()
        torch.autograd.backward(out, d_out)
        b = time.perf_counter() - start
        q.grad = k.grad = v.grad = None
        if rep > 0:
            forward += f
            backward += b
    return forward / a.reps, backward / a.reps


def longrl_side(a, seq):
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    cmd = [
        a.binary, "--device", a.device, "--heads", str(a.heads), "--kv-heads", str(a.kv_heads),
        "--head-dim", str(a.head_dim), "--seq", str(seq), "--batch", str(a.batch),
        "--reps", str(a.reps),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["forward_s"], r["backward_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--seq", default="1024,2048,4096", help="comma-separated lengths")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--device", default="flex")
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "examples", "bench_attention"))
    a = p.parse_args()
    print("| heads / kv heads / d | tokens | longrl fwd ms | PyTorch fwd ms | longrl bwd ms | PyTorch bwd ms | fwd ratio | bwd ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for seq in [int(s) for s in a.seq.split(",")]:
        lf, lb = longrl_side(a, seq)
        tf, tb = torch_side(a, seq)
        print(
            f"| {a.heads} / {a.kv_heads} / {a.head_dim} | {a.batch} x {seq} | {lf * 1e3:.2f} | {tf * 1e3:.2f} "
            f"| {lb * 1e3:.2f} | {tb * 1e3:.2f} | {tf / lf:.2f}x | {tb / lb:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
