#!/usr/bin/env python3
"""Write tests/fixtures/rope/long_context.json: transformers' RoPE tables at long positions.

For the long-context settings QwenLong-L1 runs with (Qwen2.5 / R1-Distill-Qwen: theta 1e6,
head_dim 128, YaRN factor 4 over 32768 original positions, and plain RoPE for comparison), this
records inv_freq, the attention factor, and cos/sin at positions up to 131071 as computed by
transformers' Qwen2RotaryEmbedding (float32, as in a forward pass). tests/integration/rope.rs checks
longrl's tables against them.

    python3 -m venv .venv && .venv/bin/pip install torch transformers
    .venv/bin/python scripts/make_rope_fixture.py
"""
import json
import os

import torch
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POSITIONS = [0, 1, 4095, 32767, 32768, 65535, 98304, 131071]

VARIANTS = {
    "yarn_4x_32k": {"rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
                    "max_position_embeddings": 131072},
    "plain_32k": {"rope_scaling": None, "max_position_embeddings": 32768},
}


def main():
    out = {"positions": POSITIONS, "variants": {}}
    for name, v in VARIANTS.items():
        cfg = dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                   num_hidden_layers=1, vocab_size=1000, rope_theta=1000000.0,
                   max_position_embeddings=v["max_position_embeddings"], rope_scaling=v["rope_scaling"])
        config = Qwen2Config(**cfg)
        rot = Qwen2RotaryEmbedding(config)
        x = torch.zeros(1, len(POSITIONS), 128)
        pos = torch.tensor([POSITIONS])
        cos, sin = rot(x, pos)
        config_json = {k: cfg[k] for k in cfg}
        config_json["model_type"] = "qwen2"
        out["variants"][name] = {
            "config": config_json,
            "inv_freq": rot.inv_freq.tolist(),
            "attention_factor": float(rot.attention_scaling),
            "cos": cos[0].tolist(),
            "sin": sin[0].tolist(),
        }
    path = os.path.join(ROOT, "tests", "fixtures", "rope", "long_context.json")
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
