#!/usr/bin/env python3
"""Reference outputs of PEFT LoRA for longrl's adapters.

    pip install torch transformers peft safetensors
    python scripts/make_lora_fixtures.py

Base model: tests/fixtures/parity/gqa_untied (made by scripts/make_parity_fixtures.py).

Writes (overwriting) tests/fixtures/lora/<variant>/ for the PEFT-made variants:
    adapter_config.json, adapter_model.safetensors   PEFT's save_pretrained, untouched but for
                                                      base_model_name_or_path ("gqa_untied")
    merged.safetensors   merge_and_unload() state dict (HF names, f32)
    fixture.json         {"input_ids": [[..], ..], "token_logprobs": [[..], ..]}: log p(x_t | x_<t)
                         for t >= 1 of each row, from the PEFT model (f32, eager attention)

and, for the adapter that longrl trained (tests/fixtures/lora/longrl_trained/, committed: made by
`longrl sft --config configs/tiny-lora-sft.toml` on models/tiny-qwen2-chatml, its `final/` folder
copied), loads it with PeftModel.from_pretrained onto models/tiny-qwen2-chatml and writes the same
fixture.json: longrl's tests check that longrl and PEFT compute the same log-probs with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "tests" / "fixtures" / "parity" / "gqa_untied"
OUT = REPO / "tests" / "fixtures" / "lora"

VARIANTS = {
    # rsLoRA on every linear layer: scaling alpha / sqrt(r) = 4.
    "all_linear_rslora": dict(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True, seed=11),
    # PEFT's default targets for qwen2 (q_proj, v_proj), scaling alpha / r = 8.
    "default_targets": dict(r=2, lora_alpha=16, target_modules=None, use_rslora=False, seed=12),
}

INPUTS = [
    [5, 17, 42, 99, 3, 250, 7, 7, 128, 64, 33, 1],
    [200, 1, 2, 3, 4, 5, 6, 7, 8, 9],
]


def token_logprobs(model, rows):
    out = []
    for ids in rows:
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].float()
        lp = torch.log_softmax(logits, dim=-1)
        out.append([lp[t - 1, ids[t]].item() for t in range(1, len(ids))])
    return out


def peft_variant(name: str, v: dict) -> None:
    torch.manual_seed(v["seed"])
    base = AutoModelForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager")
    kwargs = dict(r=v["r"], lora_alpha=v["lora_alpha"], lora_dropout=0.0, use_rslora=v["use_rslora"],
                  init_lora_weights=False, task_type="CAUSAL_LM")
    if v["target_modules"] is not None:
        kwargs["target_modules"] = v["target_modules"]
    model = get_peft_model(base, LoraConfig(**kwargs))
    model.peft_config["default"].base_model_name_or_path = "gqa_untied"
    model.eval()
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    fixture = {"input_ids": INPUTS, "token_logprobs": token_logprobs(model, INPUTS)}
    merged = model.merge_and_unload()
    state = {k: t.detach().contiguous() for k, t in merged.state_dict().items()}
    save_file(state, out / "merged.safetensors", metadata={"format": "pt"})
    fixture["merged_token_logprobs"] = token_logprobs(merged, INPUTS)
    (out / "fixture.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {out}")


def longrl_trained() -> None:
    out = OUT / "longrl_trained"
    if not (out / "adapter_config.json").exists():
        print(f"skipped {out}: copy a longrl LoRA run's final/ folder there first")
        return
    tiny = REPO / "models" / "tiny-qwen2-chatml"
    base = AutoModelForCausalLM.from_pretrained(tiny, torch_dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(base, out)
    model.eval()
    fixture = {"input_ids": INPUTS, "token_logprobs": token_logprobs(model, INPUTS)}
    (out / "fixture.json").write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"PEFT loaded {out}; wrote its fixture.json")


if __name__ == "__main__":
    for name, v in VARIANTS.items():
        peft_variant(name, v)
    longrl_trained()
