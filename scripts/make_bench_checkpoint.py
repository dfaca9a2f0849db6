"""A random Qwen2.5-0.5B-shaped checkpoint for memory measurements (`longrl plan` against peaks).

The shape of models/Qwen2.5-0.5B-Instruct/config.json with the vocabulary cut to 32000 (0.39B
parameters, tied embeddings), random bf16 weights, and the tiny tokenizer of
models/tiny-qwen2-chatml (1009 tokens, which fit the 32000 rows), so `longrl sft` runs on it;
plus `sft.jsonl` in the same folder: SFT examples of about 400 prompt + 100 response words, so a
`max_length` and `micro_batch_tokens` of the same size make one sequence per micro-batch:

    python scripts/make_bench_checkpoint.py /tmp/bench-0.39b
"""

import json
import os
import shutil
import sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 32000


def main(out):
    cfg = AutoConfig.from_pretrained(os.path.join(ROOT, "models", "Qwen2.5-0.5B-Instruct"))
    cfg.vocab_size = VOCAB
    tiny = os.path.join(ROOT, "models", "tiny-qwen2-chatml")
    with open(os.path.join(tiny, "config.json")) as f:
        tiny_cfg = json.load(f)
    cfg.bos_token_id = tiny_cfg.get("bos_token_id")
    cfg.eos_token_id = tiny_cfg.get("eos_token_id")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        shutil.copy(os.path.join(tiny, name), os.path.join(out, name))
    words = ["document", "number", "answer", "therefore", "the", "is", "of", "report", "value"]
    with open(os.path.join(out, "sft.jsonl"), "w") as f:
        for i in range(16):
            prompt = " ".join(words[(i + k) % len(words)] for k in range(400))
            response = " ".join(words[(i * 3 + k) % len(words)] for k in range(100))
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n} parameters ({n / 1e9:.2f}B), vocab {VOCAB}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bench-0.39b")
