#!/usr/bin/env python3
"""PyTorch reference for longrl's GPU figures: training steps (with MFU) and rollout decoding.

A Qwen2 model built from a config.json (random weights, transformers' Qwen2 with SDPA attention)
on the same token stream as `longrl bench` (`longrl::bench::bench_ids`). One JSON line per
measurement, with the keys of `longrl bench train|generate --json` where they apply, plus
`framework: "torch"`, `mfu`, `model_flops_per_step`, `flops_formula`, `precision`, the per-step
times and the versions.

    # on the GPU machine (H100): 4K tokens plain, 16K tokens with gradient checkpointing, and a
    # rollout batch of 16 prompts x G=8 samples, 512 prompt tokens, 128 new tokens
    python3 scripts/torch_reference.py --device cuda
    # quick CPU self-test (tiny shape and sizes)
    python3 scripts/torch_reference.py --device cpu --tiny

Training step (as `longrl bench train`): forward, mean next-token NLL (the LM head on positions
0..S-2, cross-entropy in f32), backward, global-norm clipping at 1.0, AdamW (lr 1e-6, betas 0.9 /
0.999, eps 1e-8, weight decay 0.01; torch's fused kernel on CUDA). `--warmup` untimed steps, then
`--steps` timed steps, each ended by a device synchronisation; the median step time is reported.

Precision (`--precision`):
  amp-bf16 (default): f32 master weights and AdamW state, forward and backward under
            `torch.autocast(dtype=bfloat16)`: what `longrl bench train --bf16` does;
  bf16:     a pure bf16 model (weights, gradients and AdamW state in bf16, no master copy);
  f32:      f32 throughout (TF32 matmuls as torch's defaults decide).
Rollouts run on a bf16 copy of the weights unless `--rollout-precision` says otherwise.

Gradient checkpointing is per shape: `--train 1x16384:gc` recomputes each decoder layer in the
backward (transformers' `gradient_checkpointing_enable`, non-reentrant), as longrl's
`--gradient-checkpointing` does. The default shapes are 1x4096 (plain) and 1x16384:gc: 16K tokens
fit an 80 GB H100 without it as well, but longrl's long-context runs use it, so both sides
recompute at 16K.

Model FLOPs (the MFU numerator; recomputation is not counted, as for MFU in the PaLM paper):
  training step = 6 * N * batch * seq + 12 * layers * heads * head_dim * seq^2 * batch
  (N: parameters less the input embedding table when the LM head is untied, i.e. the weights that
  multiply activations; the attention term counts the full seq x seq scores, not halved for the
  causal mask). Decoding a token at context c = 2 * N + 4 * layers * heads * head_dim * c.
MFU = model FLOPs / (seconds * peak); peak: `--peak-tflops`, default 989.4 (H100 SXM dense bf16).

Rollout (as `longrl bench generate`): `generate` with the KV cache on `prompts` prompts of
`prompt_len` tokens, `num_return_sequences = samples`, sampled at temperature 0.7 / top-p 0.95,
no EOS (every sample runs to `new_tokens`). `tokens_per_s` is decode throughput: new tokens after
the first over (median time of the full call - median time of a one-new-token call, which is the
prefill); `e2e_tokens_per_s` is all new tokens over the full call.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

H100_BF16_DENSE_TFLOPS = 989.4
DEFAULT_CONFIG = "models/Qwen2.5-0.5B-Instruct/config.json"
TINY_CONFIG = "models/tiny-qwen2-chatml/config.json"
FLOPS_FORMULA = (
    "train: 6*N*batch*seq + 12*layers*heads*head_dim*seq^2*batch; "
    "decode token at context c: 2*N + 4*layers*heads*head_dim*c; "
    "N = parameters - vocab*hidden if the LM head is untied (embedding lookup is no matmul); "
    "attention not halved for causality; recomputation not counted"
)


# ---------------------------------------------------------------- FLOPs (no torch needed here)

def read_config(path):
    """config.json as a dict (a model folder or the file itself)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path) as f:
        return json.load(f)


def shape_of(cfg):
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    return {
        "vocab": cfg["vocab_size"],
        "hidden": hidden,
        "layers": cfg["num_hidden_layers"],
        "heads": heads,
        "kv_heads": cfg.get("num_key_value_heads", heads),
        "head_dim": head_dim,
        "intermediate": cfg["intermediate_size"],
        "tied": bool(cfg.get("tie_word_embeddings", False)),
    }


def qwen2_parameters(cfg):
    """Parameter count of a Qwen2 model from its config (q/k/v bias, no o bias, SwiGLU, RMSNorm)."""
    s = shape_of(cfg)
    d, q, kv = s["hidden"], s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    layer = (d * q + q) + 2 * (d * kv + kv) + q * d + 3 * d * s["intermediate"] + 2 * d
    head = 0 if s["tied"] else s["vocab"] * d
    return s["vocab"] * d + s["layers"] * layer + d + head


def matmul_parameters(cfg, parameters=None):
    """N of the FLOPs formula: the parameters, less the input embedding when the head is untied."""
    s = shape_of(cfg)
    n = parameters if parameters is not None else qwen2_parameters(cfg)
    return n - (0 if s["tied"] else s["vocab"] * s["hidden"])


def train_flops(cfg, batch, seq, parameters=None):
    """Model FLOPs of one training step on `batch` sequences of `seq` tokens."""
    s = shape_of(cfg)
    n = matmul_parameters(cfg, parameters)
    attn = 12 * s["layers"] * s["heads"] * s["head_dim"] * seq * seq * batch
    return 6 * n * batch * seq + attn


def decode_flops(cfg, rows, prompt_len, new_tokens, parameters=None):
    """Model FLOPs of decoding new tokens 2..new_tokens of `rows` samples (the first new token
    comes from the prefill): token t (1-based) attends over prompt_len + t - 1 positions."""
    s = shape_of(cfg)
    n = matmul_parameters(cfg, parameters)
    per_ctx = 4 * s["layers"] * s["heads"] * s["head_dim"]
    ctx = sum(prompt_len + t - 1 for t in range(2, new_tokens + 1))
    return rows * (2 * n * (new_tokens - 1) + per_ctx * ctx)


def mfu(flops, seconds, peak_tflops):
    if not seconds or seconds <= 0 or not peak_tflops:
        return None
    return flops / seconds / (peak_tflops * 1e12)


def bench_ids(batch, seq, vocab):
    """The token stream of `longrl::bench::bench_ids`."""
    return [(i * 2_654_435_761 + 12_345) % vocab for i in range(batch * seq)]


# ---------------------------------------------------------------- measurements

def parse_train(spec):
    """`BxS` or `BxS:gc` -> (batch, seq, checkpointing)."""
    shape, _, flag = spec.partition(":")
    b, s = (int(x) for x in shape.lower().split("x"))
    if flag not in ("", "gc"):
        raise argparse.ArgumentTypeError(f"--train {spec}: expected BxS or BxS:gc")
    return b, s, flag == "gc"


def parse_rollout(spec):
    """`PxGxLxN`: prompts x samples per prompt x prompt tokens x new tokens."""
    p, g, l, n = (int(x) for x in spec.lower().split("x"))
    if n < 2:
        raise argparse.ArgumentTypeError(f"--rollout {spec}: new tokens must be at least 2")
    return p, g, l, n


class Runner:
    def __init__(self, a):
        import torch

        self.torch = torch
        self.a = a
        self.dev = torch.device(a.device)
        self.cuda = self.dev.type == "cuda"
        if self.cuda and self.dev.index is None:
            self.dev = torch.device("cuda", torch.cuda.current_device())
        if a.threads:
            torch.set_num_threads(a.threads)
        self.cfg = read_config(a.config)
        self.model = None
        self.model_dtype = None
        self.failed = False
        import transformers

        self.common = {
            "framework": "torch",
            "device": str(self.dev),
            "device_name": torch.cuda.get_device_name(self.dev) if self.cuda else "cpu",
            "model": a.config,
            "random_weights": True,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "attn_implementation": "sdpa",
            "peak_tflops": a.peak_tflops,
            "flops_formula": FLOPS_FORMULA,
        }

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.dev)

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.dev)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak(self):
        if self.cuda:
            return int(self.torch.cuda.max_memory_allocated(self.dev))
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def build(self, dtype):
        """The model in `dtype` on the device (random weights, seeded; built once, then cast)."""
        torch = self.torch
        if self.model is None:
            from transformers import AutoConfig, AutoModelForCausalLM

            torch.manual_seed(self.a.seed)
            config = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(self.a.config)))
            config._attn_implementation = "sdpa"
            config.use_cache = True
            with torch.device(self.dev):
                self.model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            self.model.to(self.dev)
            self.parameters = sum(p.numel() for p in self.model.parameters())
        elif self.model_dtype != dtype:
            self.model.to(dtype)
        self.model_dtype = dtype
        return self.model

    def emit(self, record):
        print(json.dumps({**self.common, **record}), flush=True)

    def guarded(self, what, f):
        try:
            f()
        except Exception as e:  # one failed measurement must not stop the others
            self.failed = True
            self.emit({**what, "error": f"{type(e).__name__}: {e}"[:2000]})
            if self.cuda:
                self.torch.cuda.empty_cache()

    # -- training

    def train(self, batch, seq, gc):
        torch, a = self.torch, self.a
        amp = a.precision == "amp-bf16"
        dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
        model = self.build(dtype)
        model.train()
        if gc:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        params = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                                  **({"fused": True} if self.cuda else {}))
        vocab = self.cfg["vocab_size"]
        x = torch.tensor(bench_ids(batch, seq, vocab), device=self.dev).reshape(batch, seq)
        targets = x[:, 1:].reshape(-1)

        def step():
            with torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=amp):
                hidden = model.model(input_ids=x, use_cache=False).last_hidden_state
                logits = model.lm_head(hidden[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            self.sync()
            return loss

        try:
            for _ in range(a.warmup):
                step()
            self.reset_peak()
            times = []
            for _ in range(a.steps):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            peak = self.peak()
        finally:
            del optim
            model.zero_grad(set_to_none=True)
            model.gradient_checkpointing_disable()
            if self.cuda:
                torch.cuda.empty_cache()
        secs = statistics.median(times)
        flops = train_flops(self.cfg, batch, seq, self.parameters)
        self.emit({
            "bench": "train",
            "parameters": self.parameters,
            "batch": batch,
            "seq_len": seq,
            "steps": a.steps,
            "warmup_steps": a.warmup,
            "tokens_per_s": batch * seq / secs,
            "seconds_per_step": secs,
            "step_s": times,
            "peak_memory_bytes": peak,
            "precision": a.precision,
            "gradient_checkpointing": gc,
            "optimizer": "AdamW" + (" (fused)" if self.cuda else ""),
            "model_flops_per_step": flops,
            "mfu": mfu(flops, secs, a.peak_tflops),
        })

    # -- rollout decoding

    def rollout(self, prompts, samples, prompt_len, new_tokens):
        torch, a = self.torch, self.a
        dtype = {"bf16": torch.bfloat16, "f32": torch.float32}[a.rollout_precision]
        model = self.build(dtype)
        model.eval()
        vocab = self.cfg["vocab_size"]
        ids = torch.tensor(bench_ids(prompts, prompt_len, vocab), device=self.dev).reshape(prompts, prompt_len)
        mask = torch.ones_like(ids)

        def gen(n):
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                num_return_sequences=samples, do_sample=True, temperature=a.temperature,
                top_p=a.top_p, top_k=0, pad_token_id=0, eos_token_id=None, use_cache=True,
            )
            self.sync()
            assert out.shape == (prompts * samples, prompt_len + n), tuple(out.shape)

        def timed(n, reps):
            gen(n)  # warm-up call
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                gen(n)
                times.append(time.perf_counter() - t0)
            return times

        torch.manual_seed(a.seed)
        with torch.no_grad():
            self.reset_peak()
            prefill = timed(1, a.rollout_steps)
            total = timed(new_tokens, a.rollout_steps)
            peak = self.peak()
        rows = prompts * samples
        pre, tot = statistics.median(prefill), statistics.median(total)
        decode = max(tot - pre, 1e-9)
        flops = decode_flops(self.cfg, rows, prompt_len, new_tokens, self.parameters)
        self.emit({
            "bench": "generate",
            "parameters": self.parameters,
            "batch": rows,
            "prompts": prompts,
            "n": samples,
            "seq_len": prompt_len,
            "new_tokens": new_tokens,
            "steps": a.rollout_steps,
            "tokens_per_s": rows * (new_tokens - 1) / decode,
            "seconds_per_step": decode,
            "prefill_s": pre,
            "generate_s": tot,
            "generate_call_s": total,
            "e2e_tokens_per_s": rows * new_tokens / tot,
            "peak_memory_bytes": peak,
            "precision": a.rollout_precision,
            "temperature": a.temperature,
            "top_p": a.top_p,
            "model_flops_per_step": flops,
            "mfu": mfu(flops, decode, a.peak_tflops),
        })


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--config", default=None, help=f"config.json (default {DEFAULT_CONFIG}; --tiny: {TINY_CONFIG})")
    p.add_argument("--tiny", action="store_true",
                   help="tiny sizes for a CPU self-test: the tiny config, 1x64 and 2x32:gc, rollout 2x2x16x8, 1 warm-up, 2 steps")
    p.add_argument("--train", action="append", type=parse_train, default=None, metavar="BxS[:gc]",
                   help="training shape, repeatable (default 1x4096 and 1x16384:gc); :gc = gradient checkpointing")
    p.add_argument("--rollout", action="append", type=parse_rollout, default=None, metavar="PxGxLxN",
                   help="rollout: prompts x samples x prompt tokens x new tokens, repeatable (default 16x8x512x128)")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-rollout", action="store_true")
    p.add_argument("--precision", choices=["amp-bf16", "bf16", "f32"], default="amp-bf16")
    p.add_argument("--rollout-precision", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps per shape (default 2)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per shape (default 5)")
    p.add_argument("--rollout-steps", type=int, default=None, help="timed generate calls of each length (default 3)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS,
                   help="device peak for MFU, TFLOP/s (default: H100 SXM dense bf16)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.tiny:
        a.config = a.config or TINY_CONFIG
        a.train = a.train or [(1, 64, False), (2, 32, True)]
        a.rollout = a.rollout or [(2, 2, 16, 8)]
        a.warmup = 1 if a.warmup is None else a.warmup
        a.steps = a.steps or 2
        a.rollout_steps = a.rollout_steps or 2
    a.config = a.config or DEFAULT_CONFIG
    if not os.path.isabs(a.config) and not os.path.exists(a.config):
        a.config = os.path.join(ROOT, a.config)
    a.train = [] if a.no_train else (a.train or [(1, 4096, False), (1, 16384, True)])
    a.rollout = [] if a.no_rollout else (a.rollout or [(16, 8, 512, 128)])
    a.warmup = 2 if a.warmup is None else a.warmup
    a.steps = a.steps or 5
    a.rollout_steps = a.rollout_steps or 3

    r = Runner(a)
    for b, s, gc in a.train:
        r.guarded({"bench": "train", "batch": b, "seq_len": s, "gradient_checkpointing": gc,
                   "precision": a.precision}, lambda: r.train(b, s, gc))
    for pr, g, l, n in a.rollout:
        r.guarded({"bench": "generate", "batch": pr * g, "prompts": pr, "n": g, "seq_len": l, "new_tokens": n,
                   "precision": a.rollout_precision}, lambda: r.rollout(pr, g, l, n))
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
