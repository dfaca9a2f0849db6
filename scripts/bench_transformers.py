#!/usr/bin/env python3
"""The reference side of examples/bench_model.rs: the same measurements with HF transformers.

Token log-probs (inference forward), a training step (forward + backward of the mean token NLL)
and greedy decoding with the KV cache, on the same shapes, token stream and (when the folder has
them) weights. A folder with only config.json gets random weights. Prints one JSON line each.

    python scripts/bench_transformers.py --model models/Qwen2.5-0.5B-Instruct --batch 2 --seq 256 --threads 2
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--n", type=int, default=1, help="samples per prompt in the decode measurement")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--only", default="forward,train,decode")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    has_weights = any(f.endswith(".safetensors") for f in os.listdir(a.model))
    if has_weights:
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    else:
        config = AutoConfig.from_pretrained(a.model)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(dev)
    vocab = model.config.vocab_size
    b, t = a.batch, a.seq
    ids = torch.tensor(
        [((i * 2654435761 + 12345) % vocab) for i in range(b * t)], dtype=torch.long, device=dev
    ).reshape(b, t)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(f):
        f()
        sync()
        start = time.perf_counter()
        for _ in range(a.reps):
            f()
        sync()
        return (time.perf_counter() - start) / a.reps

    def report(what, secs, tokens):
        print(json.dumps({
            "impl": "transformers", "bench": what, "device": a.device, "model": a.model,
            "batch": b, "n": a.n, "seq": t, "new_tokens": a.new_tokens, "seconds": secs,
            "tokens_per_s": tokens / secs, "threads": torch.get_num_threads(),
        }), flush=True)

    def mean_nll():
        logits = model(input_ids=ids).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return -lp.mean()

    if "forward" in a.only:
        model.eval()
        with torch.no_grad():
            report("forward_logprobs", timed(lambda: mean_nll().item()), b * t)
    if "train" in a.only:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            mean_nll().backward()

        report("train_step_fwd_bwd", timed(step), b * t)
        model.zero_grad(set_to_none=True)
    if "decode" in a.only:
        model.eval()
        mask = torch.ones_like(ids)

        def gen(n):
            sampling = dict(do_sample=True, temperature=a.temperature, top_p=a.top_p, top_k=0)
            if a.temperature == 0:
                sampling = dict(do_sample=False)
            return lambda: model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                num_return_sequences=a.n, pad_token_id=0, eos_token_id=None, **sampling,
            )

        with torch.no_grad():
            prefill = timed(gen(1))
            total = timed(gen(a.new_tokens))
        report("prefill", prefill, b * t)
        report("decode", max(total - prefill, 1e-9), b * a.n * (a.new_tokens - 1))


if __name__ == "__main__":
    main()
