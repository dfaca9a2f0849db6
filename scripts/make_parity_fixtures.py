#!/usr/bin/env python3
"""Reference outputs of HF transformers for the Rust Qwen2 / Qwen3 implementation.

    python scripts/make_parity_fixtures.py      (run scripts/make_tiny_models.py first)
    python scripts/make_parity_fixtures.py qwen3_untied qwen3_bias_tied   (only these variants,
                                                 no tokenizer cases: leaves the other fixtures alone)

Writes (overwriting):
    tests/fixtures/parity/<variant>/{config.json, model.safetensors, fixture.safetensors, fixture.json}
        for variant in gqa_untied, mha_tied, rope_linear, rope_yarn (Qwen2),
        qwen3_untied, qwen3_bias_tied (Qwen3: head_dim != hidden / heads, random q/k norms)
    tests/fixtures/tokenizer/cases.json   (only when no variant is named)

fixture.safetensors tensors (all produced by transformers, attn_implementation="eager", f32, CPU):
    input_ids          i64 [3, T]   row 0 full length, rows 1/2 LEFT-padded with PAD_ID
    attention_mask     i64 [3, T]
    position_ids       i64 [3, T]   (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  (== what generate() builds)
    logits             f32 [3, T, V] model(input_ids, attention_mask, position_ids).logits
                                    NOTE: rows at pad positions are implementation-defined garbage
                                    (fully-masked attention rows); compare only where attention_mask == 1.
    rp_input_ids       i64 [3, T]   same prompts RIGHT-padded
    rp_attention_mask  i64 [3, T]
    rp_position_ids    i64 [3, T]   0..len-1 on real tokens, 0 on pads (same formula as above)
    rp_logits          f32 [3, T, V] (again: only mask == 1 positions are meaningful)
    greedy_0..2        i64 [len_i + 10]  prompt + 10 greedy tokens, model.generate with KV cache
    loss               f32 [1]      next-token CE over the left-padded batch (see fixture.json)
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures"
PAD_ID = 0
GREEDY_NEW = 10
MARGIN = 1e-2  # stricter than needed (1e-3) so f32 reimplementations agree on argmax
T = 14
LENGTHS = [14, 10, 7]  # unpadded prompt lengths of rows 0, 1, 2

BASE = dict(vocab_size=256, hidden_size=32, intermediate_size=88, num_hidden_layers=2, rms_norm_eps=1e-6)

VARIANTS = {
    "gqa_untied": dict(
        description="GQA (4 heads, 2 kv heads, head_dim 8), untied lm_head, default RoPE theta 1e4; classic config.json layout",
        heads=4, kv_heads=2, tie=False, rope_theta=10000.0, scaling=None, max_pos=128, layout="classic", seed=1),
    "mha_tied": dict(
        description="MHA (4 heads, 4 kv heads), tied embeddings (no lm_head.weight in safetensors), RoPE theta 1e6; classic layout",
        heads=4, kv_heads=4, tie=True, rope_theta=1000000.0, scaling=None, max_pos=128, layout="classic", seed=2),
    "rope_linear": dict(
        description="GQA, linear RoPE scaling factor 2.0, theta 1e4; config.json exactly as transformers 5 save_pretrained writes it (rope_parameters, dtype)",
        heads=4, kv_heads=2, tie=False, rope_theta=10000.0, scaling={"rope_type": "linear", "factor": 2.0},
        max_pos=128, layout="tf5", seed=3),
    "rope_yarn": dict(
        description="GQA, YaRN factor 4.0, original_max_position_embeddings 16, max_position_embeddings 64, theta 1e4; classic layout with rope_scaling {type: yarn}",
        heads=4, kv_heads=2, tie=False, rope_theta=10000.0,
        scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        max_pos=64, layout="classic", seed=4),
    # Qwen3: per-head q/k RMSNorm before RoPE (weights drawn around 1), head_dim 12 != 32 / 4.
    "qwen3_untied": dict(
        description="Qwen3: GQA (4 heads, 2 kv heads, head_dim 12 != hidden/heads = 8), q/k norms, no attention bias, untied lm_head, theta 1e6; published Qwen3 config.json layout",
        arch="qwen3", heads=4, kv_heads=2, head_dim=12, attention_bias=False, tie=False, rope_theta=1000000.0,
        scaling=None, max_pos=128, layout="classic", seed=5),
    "qwen3_bias_tied": dict(
        description="Qwen3 with attention_bias true (q/k/v AND o_proj biased), MHA (4 heads, head_dim 16 != 8), q/k norms, tied embeddings, theta 1e4; config.json as transformers 5 save_pretrained writes it (rope_parameters, dtype, layer_types)",
        arch="qwen3", heads=4, kv_heads=4, head_dim=16, attention_bias=True, tie=True, rope_theta=10000.0,
        scaling=None, max_pos=128, layout="tf5", seed=6),
}


def head_dim(v: dict) -> int:
    return v.get("head_dim", BASE["hidden_size"] // v["heads"])


def classic_config(v: dict) -> dict:
    if v.get("arch") == "qwen3":
        return qwen3_classic_config(v)
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "eos_token_id": None,
        "hidden_act": "silu",
        "hidden_size": BASE["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": BASE["intermediate_size"],
        "max_position_embeddings": v["max_pos"],
        "max_window_layers": BASE["num_hidden_layers"],
        "model_type": "qwen2",
        "num_attention_heads": v["heads"],
        "num_hidden_layers": BASE["num_hidden_layers"],
        "num_key_value_heads": v["kv_heads"],
        "rms_norm_eps": BASE["rms_norm_eps"],
        "rope_scaling": v["scaling"],
        "rope_theta": v["rope_theta"],
        "sliding_window": v["max_pos"],
        "tie_word_embeddings": v["tie"],
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": BASE["vocab_size"],
    }


def qwen3_classic_config(v: dict) -> dict:
    """The published Qwen3 layout (keys sorted, as Qwen/Qwen3-*/config.json)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": v["attention_bias"],
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "eos_token_id": None,
        "head_dim": head_dim(v),
        "hidden_act": "silu",
        "hidden_size": BASE["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": BASE["intermediate_size"],
        "max_position_embeddings": v["max_pos"],
        "max_window_layers": BASE["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": v["heads"],
        "num_hidden_layers": BASE["num_hidden_layers"],
        "num_key_value_heads": v["kv_heads"],
        "rms_norm_eps": BASE["rms_norm_eps"],
        "rope_scaling": v["scaling"],
        "rope_theta": v["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": v["tie"],
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": BASE["vocab_size"],
    }


def hf_config(v: dict):
    from transformers import Qwen2Config, Qwen3Config
    rp = {"rope_type": "default", "rope_theta": v["rope_theta"]}
    if v["scaling"]:
        s = dict(v["scaling"])
        rp = {"rope_type": s.pop("type", None) or s.pop("rope_type"), "rope_theta": v["rope_theta"], **s}
    if v.get("arch") == "qwen3":
        return Qwen3Config(
            vocab_size=BASE["vocab_size"], hidden_size=BASE["hidden_size"],
            intermediate_size=BASE["intermediate_size"], num_hidden_layers=BASE["num_hidden_layers"],
            num_attention_heads=v["heads"], num_key_value_heads=v["kv_heads"], head_dim=head_dim(v),
            attention_bias=v["attention_bias"], rms_norm_eps=BASE["rms_norm_eps"],
            max_position_embeddings=v["max_pos"], tie_word_embeddings=v["tie"], rope_parameters=rp,
            use_sliding_window=False, sliding_window=None, max_window_layers=BASE["num_hidden_layers"],
            bos_token_id=None, eos_token_id=None, pad_token_id=None, dtype="float32",
        )
    return Qwen2Config(
        vocab_size=BASE["vocab_size"], hidden_size=BASE["hidden_size"], intermediate_size=BASE["intermediate_size"],
        num_hidden_layers=BASE["num_hidden_layers"], num_attention_heads=v["heads"],
        num_key_value_heads=v["kv_heads"], rms_norm_eps=BASE["rms_norm_eps"], max_position_embeddings=v["max_pos"],
        tie_word_embeddings=v["tie"], rope_parameters=rp, use_sliding_window=False,
        sliding_window=v["max_pos"], max_window_layers=BASE["num_hidden_layers"],
        bos_token_id=None, eos_token_id=None, pad_token_id=None, dtype="float32",
    )


def init_weights(model, seed: int):
    """Scaled-up deterministic init so logits are well separated."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                # non-trivial norm weights (Qwen3's q_norm / k_norm included)
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))        # non-zero q/k/v(/o) biases
            elif "embed_tokens" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    # What GenerationMixin._prepare_position_ids_for_generation does.
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def make_prompts(seed: int, attempt: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * seed + attempt)
    return [torch.randint(1, BASE["vocab_size"], (n,), generator=g) for n in LENGTHS]


def pad_batch(prompts, left: bool):
    ids = torch.full((len(prompts), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        n = len(p)
        if left:
            ids[i, T - n:] = p
            mask[i, T - n:] = 1
        else:
            ids[i, :n] = p
            mask[i, :n] = 1
    return ids, mask, position_ids_from_mask(mask)


def greedy(model, prompt: torch.Tensor):
    out = model.generate(
        input_ids=prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False, max_new_tokens=GREEDY_NEW, eos_token_id=None, pad_token_id=PAD_ID,
        output_logits=True, return_dict_in_generate=True, use_cache=True,
        temperature=None, top_p=None, top_k=None,
    )
    seq = out.sequences[0]
    assert seq.shape[0] == len(prompt) + GREEDY_NEW, seq.shape
    margins = []
    for step_logits in out.logits:
        top2 = step_logits[0].topk(2).values
        margins.append((top2[0] - top2[1]).item())
    # cross-check against a cache-free full forward
    with torch.no_grad():
        full = model(seq[None]).logits[0]
    for k in range(GREEDY_NEW):
        pos = len(prompt) - 1 + k
        assert full[pos].argmax().item() == seq[pos + 1].item(), "cached greedy != full-forward argmax"
    return seq, min(margins)


def build_variant(name: str, v: dict) -> dict:
    import transformers
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM
    from safetensors.torch import save_file

    out = OUT / "parity" / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    cfg = hf_config(v)
    torch.manual_seed(v["seed"])
    model_class = Qwen3ForCausalLM if v.get("arch") == "qwen3" else Qwen2ForCausalLM
    model = model_class(cfg).to(torch.float32)
    init_weights(model, v["seed"])
    model.save_pretrained(out)
    for stray in ("generation_config.json",):
        if (out / stray).exists():
            (out / stray).unlink()
    (out / "model.safetensors").chmod(0o644)
    if v["layout"] == "classic":
        (out / "config.json").write_text(json.dumps(classic_config(v), indent=2) + "\n")

    # Load back exactly as a user would, in eager and sdpa.
    m, info = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    m.eval()
    m_sdpa = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa").eval()
    assert m.dtype == torch.float32
    assert type(m) is model_class, type(m)
    for (k1, p1), (k2, p2) in zip(model.state_dict().items(), m.state_dict().items()):
        assert k1 == k2 and torch.equal(p1, p2), k1
    # generation must not stop early
    m.generation_config.eos_token_id = None
    m.generation_config.bos_token_id = None

    rot = m.model.rotary_emb
    inv_freq = rot.inv_freq.detach().clone()
    attention_factor = float(rot.attention_scaling)
    rope_params = dict(m.config.rope_parameters)

    # Find prompts whose greedy continuations have a clear top-1 margin.
    for attempt in range(50):
        prompts = make_prompts(v["seed"], attempt)
        greedy_seqs, margins = [], []
        for p in prompts:
            s, mg = greedy(m, p)
            greedy_seqs.append(s)
            margins.append(mg)
        if min(margins) > MARGIN:
            break
    else:
        raise SystemExit(f"{name}: no prompt set with greedy margin > {MARGIN}")
    assert min(margins) > MARGIN

    ids, mask, pos = pad_batch(prompts, left=True)
    rp_ids, rp_mask, rp_pos = pad_batch(prompts, left=False)

    # Forward + backward on the left-padded batch.
    m.zero_grad(set_to_none=True)
    logits = m(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    tgt_mask = (mask[:, 1:] * mask[:, :-1]).float()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    loss = (ce * tgt_mask.reshape(-1)).sum() / tgt_mask.sum()
    loss.backward()
    grad_norms = {k: p.grad.norm().item() for k, p in m.named_parameters()}
    total = math.sqrt(sum(x * x for x in grad_norms.values()))
    logits = logits.detach()

    with torch.no_grad():
        rp_logits = m(input_ids=rp_ids, attention_mask=rp_mask, position_ids=rp_pos).logits
        sd_logits = m_sdpa(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        sd_rp_logits = m_sdpa(input_ids=rp_ids, attention_mask=rp_mask, position_ids=rp_pos).logits
        singles = [m(p[None]).logits[0] for p in prompts]

    # Consistency checks.
    real = mask.bool()
    rp_real = rp_mask.bool()
    d_sdpa = (sd_logits - logits)[real].abs().max().item()
    d_sdpa_rp = (sd_rp_logits - rp_logits)[rp_real].abs().max().item()
    assert d_sdpa < 1e-5 and d_sdpa_rp < 1e-5, (d_sdpa, d_sdpa_rp)
    d_pad = 0.0
    for i, p in enumerate(prompts):
        n = len(p)
        d_pad = max(d_pad, (logits[i, T - n:] - singles[i]).abs().max().item(),
                    (rp_logits[i, :n] - singles[i]).abs().max().item())
    assert d_pad < 1e-4, d_pad
    # logits are well spread (not all near-equal)
    spread = logits[real].std(-1).mean().item()

    tensors = {
        "input_ids": ids, "attention_mask": mask, "position_ids": pos, "logits": logits.contiguous(),
        "rp_input_ids": rp_ids, "rp_attention_mask": rp_mask, "rp_position_ids": rp_pos,
        "rp_logits": rp_logits.contiguous(),
        "loss": loss.detach().reshape(1).to(torch.float32),
    }
    for i, s in enumerate(greedy_seqs):
        tensors[f"greedy_{i}"] = s.to(torch.long).contiguous()
    save_file(tensors, str(out / "fixture.safetensors"), metadata={"format": "pt"})

    fx = {
        "variant": name,
        "description": v["description"],
        "config_layout": "classic (rope_theta / rope_scaling / torch_dtype)" if v["layout"] == "classic"
        else "transformers 5 save_pretrained (rope_parameters / dtype)",
        "pad_id": PAD_ID,
        "seq_len": T,
        "prompt_lengths": LENGTHS,
        "position_ids_rule": "(attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0); same for the right-padded batch",
        "compare_only_where_attention_mask_is_1": True,
        "attn_implementation": "eager",
        "sdpa_max_abs_diff_real_positions": max(d_sdpa, d_sdpa_rp),
        "padded_vs_unpadded_max_abs_diff": d_pad,
        "logits_mean_std_over_vocab": spread,
        "greedy_new_tokens": GREEDY_NEW,
        "greedy_min_top1_margin": min(margins),
        "greedy_note": "model.generate(do_sample=False, max_new_tokens=10, eos_token_id=None, pad_token_id=0) on each unpadded prompt; greedy_i = prompt + continuation",
        "loss_definition": "mean over (b, t) with attention_mask[b,t]*attention_mask[b,t+1]==1 of CE(logits[b,t], input_ids[b,t+1]), logits from the left-padded forward",
        "loss": loss.item(),
        "num_loss_targets": int(tgt_mask.sum().item()),
        "grad_norms": grad_norms,
        "total_grad_norm": total,
        "tied_embeddings": v["tie"],
        "rope_parameters_as_parsed_by_transformers": rope_params,
        "inv_freq": inv_freq.tolist(),
        "attention_factor": attention_factor,
        "head_dim": head_dim(v),
        "architecture": model_class.__name__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    if v["tie"]:
        fx["grad_norms_note"] = "tied: lm_head.weight is model.embed_tokens.weight; its gradient (embedding + lm_head paths summed) is under model.embed_tokens.weight"
    (out / "fixture.json").write_text(json.dumps(fx, indent=2) + "\n")
    print(f"  {name}: loss {loss.item():.6f}, total grad norm {total:.6f}, min margin {min(margins):.4f}, "
          f"sdpa diff {max(d_sdpa, d_sdpa_rp):.2e}, pad diff {d_pad:.2e}, attention_factor {attention_factor:.6f}")
    return fx


# --------------------------------------------------------------------------------------
# Tokenizer cases
# --------------------------------------------------------------------------------------

TEXTS = [
    "Hello world",
    "Therefore, the answer is 42.",
    "The document states that the total revenue is 1,234.56 dollars.",
    "  leading spaces, trailing spaces   ",
    "line one\nline two\n\n\nline five\r\nwindows line",
    "tabs\tand\tmixed \t whitespace",
    "I'm sure you've seen it; they'll say it's done, we'd agree. DON'T SHOUT",
    "numbers: 0 7 12 123 2025 3.14159 -17 1e9 100000000",
    "中文测试：长上下文推理。日本語のテキスト、한국어",
    "emoji 🎉🚀 and family 👨‍👩‍👧 and flags 🇫🇷",
    "accents: café naïve résumé Ångström (NFC: e\u0301 -> é)",
    "code: fn main() { println!(\"{}\", x[0] + 1); } // done",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<｜begin▁of▁sentence｜><｜User｜>Question?<｜Assistant｜><think>\nhmm\n</think>\n\nThe answer is 4.<｜end▁of▁sentence｜>",
    "text<think>inline</think>more",
    "",
    " ",
    "\n",
]

CHATS = {
    "single_user": [{"role": "user", "content": "What is the capital of France?"}],
    "system_user": [
        {"role": "system", "content": "You are a careful reader."},
        {"role": "user", "content": "Read the document and answer.\n<text>\nThe river is 42 km long.\n</text>"},
    ],
    "user_assistant_user": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Sum 12 and 30."},
    ],
    "assistant_with_think": [
        {"role": "user", "content": "How long is the river?"},
        {"role": "assistant", "content": "<think>\nThe text says 42 km.\n</think>\n\nTherefore, the answer is 42 km."},
        {"role": "user", "content": "And in meters?"},
    ],
}


def tokenizer_cases():
    import transformers
    from transformers import AutoTokenizer

    out = {"transformers_version": transformers.__version__, "models": {}}
    for d in sorted((REPO / "models").glob("tiny-*")):
        tok = AutoTokenizer.from_pretrained(d)
        enc = []
        for text in TEXTS:
            ids = tok.encode(text, add_special_tokens=False)
            enc.append({
                "text": text,
                "ids": ids,
                "ids_add_special_tokens": tok.encode(text, add_special_tokens=True),
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            })
        chats = []
        for cname, msgs in CHATS.items():
            for agp in (True, False):
                rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
                chats.append({
                    "name": cname,
                    "messages": msgs,
                    "add_generation_prompt": agp,
                    "rendered": rendered,
                    "ids": tok.encode(rendered, add_special_tokens=False),
                })
        out["models"][d.name] = {
            "path": f"models/{d.name}",
            "vocab_len": len(tok),
            "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
            "special_ids": sorted(tok.all_special_ids),
            "encode": enc,
            "chat": chats,
        }
    p = OUT / "tokenizer" / "cases.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"  tokenizer cases for {list(out['models'])}")


def main():
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    only = sys.argv[1:]
    unknown = [n for n in only if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    for name, v in VARIANTS.items():
        if not only or name in only:
            build_variant(name, v)
    if not only:
        tokenizer_cases()
    print("done")


if __name__ == "__main__":
    main()
