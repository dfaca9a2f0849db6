#!/usr/bin/env python3
"""Whole-process load and decode benchmark: `longrl score` / `longrl generate` against the same
work in transformers, each a fresh process timed end to end with its peak RSS
(`/usr/bin/time -v`), the commands alternated round by round; medians are printed as a Markdown
table for BENCHMARKS.md.

    python scripts/make_bench_checkpoint.py /tmp/bench-0.39b        # 0.39B, bf16 on disk
    cargo build --release
    python scripts/bench_load.py --big /tmp/bench-0.39b --small /tmp/bench-40m --rounds 5

Cases (issue 20):
  load   score 4 tokens on the 0.39B bf16 checkpoint (weights become f32) vs
         transformers from_pretrained(dtype=float32) + one forward
  decode 8 prompts x 128 greedy new tokens on a 40M-parameter shape (written once with random
         bf16 weights, the tiny tokenizer) vs transformers generate(do_sample=False)
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT_LEN = 16
NEW_TOKENS = 128
BATCH = 8


def small_checkpoint(dst):
    """A 40M-parameter Qwen2 (hidden 512, 8 layers, GQA 8/2, vocab 32000, tied), bf16."""
    if os.path.exists(os.path.join(dst, "model.safetensors")):
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(os.path.join(ROOT, "models", "Qwen2.5-0.5B-Instruct"))
    cfg.update(dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                    num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
                    layer_types=["full_attention"] * 8, max_window_layers=8))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(ROOT, "models", "tiny-qwen2-chatml", f), dst)


def timed(cmd, env=None):
    """(wall seconds, peak RSS GiB, stdout) of one process."""
    out = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{out.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", out.stderr).group(1)
    parts = [float(x) for x in wall.split(":")]
    secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return secs, rss / 2**20, out.stdout


TF_LOAD = """
import sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with torch.no_grad():
    lp = torch.log_softmax(m(input_ids=torch.tensor([[1, 2, 3, 4]])).logits[0], -1)
print([lp[t - 1, t + 1].item() for t in range(1, 4)])
"""

TF_DECODE = """
import sys, json, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=%d,
                     do_sample=False, eos_token_id=None, pad_token_id=0)
print("new tokens", (out.shape[1] - ids.shape[1]) * out.shape[0])
""" % NEW_TOKENS


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--big", required=True, help="0.39B checkpoint (make_bench_checkpoint.py)")
    p.add_argument("--small", required=True, help="40M checkpoint folder (written if missing)")
    p.add_argument("--bin", default=os.path.expanduser("~/.cache/longrl-target/release/longrl"))
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    small_checkpoint(a.small)
    tmp = tempfile.mkdtemp()
    score_in = os.path.join(tmp, "score.jsonl")
    with open(score_in, "w") as f:
        f.write(json.dumps({"input_ids": [1, 2, 3, 4]}) + "\n")
    prompts = [[(7 * i + 13 * j) % 1000 + 5 for j in range(PROMPT_LEN)] for i in range(BATCH)]
    gen_in = os.path.join(tmp, "gen.jsonl")
    with open(gen_in, "w") as f:
        for ids in prompts:
            f.write(json.dumps({"input_ids": ids}) + "\n")
    cases = {
        "load: longrl score": [a.bin, "--device", "flex", "score", "--model", a.big, "--input", score_in],
        "load: transformers": [sys.executable, "-c", TF_LOAD, a.big],
        "decode: longrl generate": [a.bin, "--device", "flex", "generate", "--model", a.small, "--input",
                                    gen_in, "--max-new-tokens", str(NEW_TOKENS), "--batch-size",
                                    str(BATCH), "--quiet"],
        "decode: transformers": [sys.executable, "-c", TF_DECODE, a.small, json.dumps(prompts)],
    }
    results = {k: [] for k in cases}
    for r in range(a.rounds):
        for name, cmd in cases.items():
            secs, rss, stdout = timed(cmd)
            results[name].append((secs, rss))
            if r == 0 and name == "decode: longrl generate":
                n = sum(len(json.loads(l)["output_ids"]) for l in stdout.splitlines() if l.strip())
                print(f"longrl generate: new tokens {n}", file=sys.stderr)
            if r == 0 and name == "decode: transformers":
                print(stdout.strip(), file=sys.stderr)
            print(f"round {r + 1} {name}: {secs:.2f} s, {rss:.2f} GiB", file=sys.stderr)
    print("| case | wall s, median (min-max) | peak RSS GiB, median |")
    print("|---|---|---|")
    for name, vals in results.items():
        s = [v[0] for v in vals]
        m = [v[1] for v in vals]
        print(f"| {name} | {statistics.median(s):.2f} ({min(s):.2f}-{max(s):.2f}) | {statistics.median(m):.2f} |")


if __name__ == "__main__":
    main()
