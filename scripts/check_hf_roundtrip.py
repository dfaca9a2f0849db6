#!/usr/bin/env python3
"""Check that a checkpoint written by longrl loads in HF transformers exactly like the original.

    python scripts/check_hf_roundtrip.py ORIGINAL_DIR SAVED_DIR [--atol 0] [--logits-atol 1e-5]

Checks, in order (every failure is reported; exit status 1 if any):
  1. SAVED_DIR loads with AutoModelForCausalLM with no missing / unexpected / mismatched keys
     and no error messages (output_loading_info=True);
  2. the config fields that matter are equal;
  3. every state_dict tensor is identical (same names, shapes, dtypes; max |diff| <= --atol);
  4. logits on a fixed prompt agree (max |diff| <= --logits-atol);
  5. AutoTokenizer of both gives the same ids on a fixed text (and the same chat template
     rendering, when the original has a chat template).
Exit 0 and print "OK" when everything matches.
"""

from __future__ import annotations

import argparse
import sys

import torch

CONFIG_FIELDS = [
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings",
    "rms_norm_eps", "tie_word_embeddings", "use_sliding_window", "sliding_window", "max_window_layers",
    "layer_types", "bos_token_id", "eos_token_id", "attention_dropout",
]

TEXT = ("Please read the document and answer.\n<text>\nThe river is 42 km long; 中文, émoji 🎉.\n</text>\n"
        "Therefore, the answer is 42.")
MESSAGES = [
    {"role": "system", "content": "You are a careful reader."},
    {"role": "user", "content": "How long is the river?"},
    {"role": "assistant", "content": "<think>\nIt says 42.\n</think>\n\nTherefore, the answer is 42."},
    {"role": "user", "content": "In meters?"},
]


def rope_view(cfg) -> dict:
    rp = getattr(cfg, "rope_parameters", None)
    if rp is None:  # transformers 4.x
        rp = dict(getattr(cfg, "rope_scaling", None) or {})
        rp.setdefault("rope_type", rp.get("type", "default"))
        rp["rope_theta"] = getattr(cfg, "rope_theta", None)
    rp = dict(rp)
    rp.pop("type", None)
    return rp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("original")
    ap.add_argument("saved")
    ap.add_argument("--atol", type=float, default=0.0, help="max abs diff allowed per weight (default 0: bit-exact)")
    ap.add_argument("--logits-atol", type=float, default=1e-5)
    ap.add_argument("--no-tokenizer", action="store_true", help="skip the tokenizer checks")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()

    errors: list[str] = []

    def fail(msg: str):
        errors.append(msg)
        print(f"FAIL: {msg}")

    try:
        orig = AutoModelForCausalLM.from_pretrained(args.original, dtype="auto", attn_implementation="eager")
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: cannot load ORIGINAL_DIR {args.original}: {e}")
        return 2
    try:
        saved, info = AutoModelForCausalLM.from_pretrained(
            args.saved, dtype="auto", attn_implementation="eager", output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: cannot load SAVED_DIR {args.saved}: {e}")
        return 1
    orig.eval()
    saved.eval()

    # 1. loading info
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        v = info.get(k)
        if v:
            fail(f"loading SAVED_DIR: {k} = {sorted(map(str, v))}")
    print(f"loading info: {({k: len(v) for k, v in info.items()})}")

    # 2. config
    oc, sc = orig.config, saved.config
    for f in CONFIG_FIELDS:
        a, b = getattr(oc, f, None), getattr(sc, f, None)
        if a != b:
            fail(f"config.{f}: original {a!r} != saved {b!r}")
    if rope_view(oc) != rope_view(sc):
        fail(f"rope parameters: original {rope_view(oc)} != saved {rope_view(sc)}")
    if orig.dtype != saved.dtype:
        fail(f"loaded dtype: original {orig.dtype} != saved {saved.dtype}")

    # 3. weights
    osd, ssd = orig.state_dict(), saved.state_dict()
    if set(osd) != set(ssd):
        fail(f"state_dict names differ: only original {sorted(set(osd) - set(ssd))}, "
             f"only saved {sorted(set(ssd) - set(osd))}")
    worst, worst_name = 0.0, None
    for name in sorted(set(osd) & set(ssd)):
        a, b = osd[name], ssd[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            fail(f"{name}: original {a.dtype}{list(a.shape)} != saved {b.dtype}{list(b.shape)}")
            continue
        d = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
        if d > worst or worst_name is None:
            worst, worst_name = d, name
        if not d <= args.atol:  # also catches NaN
            fail(f"{name}: max abs diff {d:g} > {args.atol:g}")
    print(f"weights: {len(osd)} tensors, max abs diff {worst:g} ({worst_name})")
    if oc.tie_word_embeddings:
        from pathlib import Path
        from safetensors import safe_open
        for f in sorted(Path(args.saved).glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                if "lm_head.weight" in h.keys():
                    print(f"note: tied model but {f.name} contains lm_head.weight "
                          "(published tied checkpoints omit it; harmless only if equal to embed_tokens)")
        if saved.lm_head.weight.data_ptr() != saved.model.embed_tokens.weight.data_ptr():
            fail("tie_word_embeddings is true but the saved lm_head is not tied to embed_tokens")

    # 4. logits
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(oc.vocab_size, sc.vocab_size), (2, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding on row 1
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        lo = orig(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        ls = saved(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    if lo.shape != ls.shape:
        fail(f"logits shape: original {list(lo.shape)} != saved {list(ls.shape)}")
    else:
        real = mask.bool()
        d = (lo - ls)[real].abs().max().item()
        print(f"logits: max abs diff {d:g} (|logits| max {lo[real].abs().max().item():g})")
        if not d <= args.logits_atol:
            fail(f"logits max abs diff {d:g} > {args.logits_atol:g}")

    # 5. tokenizer
    from pathlib import Path
    tok_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    has_tok = lambda d: any((Path(d) / f).exists() for f in tok_files)
    if not args.no_tokenizer and not has_tok(args.original):
        print("note: ORIGINAL_DIR has no tokenizer files; skipping tokenizer checks")
    elif not args.no_tokenizer and not has_tok(args.saved):
        fail("ORIGINAL_DIR has a tokenizer but SAVED_DIR has no tokenizer files")
    elif not args.no_tokenizer:
        try:
            to = AutoTokenizer.from_pretrained(args.original)
        except Exception as e:  # noqa: BLE001
            to = None
            print(f"note: ORIGINAL_DIR has no loadable tokenizer ({e}); skipping tokenizer checks")
        if to is not None:
            try:
                ts = AutoTokenizer.from_pretrained(args.saved)
            except Exception as e:  # noqa: BLE001
                ts = None
                fail(f"cannot load tokenizer from SAVED_DIR: {e}")
            if ts is not None:
                for special in (False, True):
                    a = to.encode(TEXT, add_special_tokens=special)
                    b = ts.encode(TEXT, add_special_tokens=special)
                    if a != b:
                        fail(f"tokenizer ids differ (add_special_tokens={special}): {a} vs {b}")
                for attr in ("bos_token", "eos_token", "pad_token"):
                    if getattr(to, attr) != getattr(ts, attr):
                        fail(f"tokenizer {attr}: {getattr(to, attr)!r} != {getattr(ts, attr)!r}")
                if len(to) != len(ts):
                    fail(f"tokenizer length {len(to)} != {len(ts)}")
                if getattr(to, "chat_template", None):
                    try:
                        ra = to.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
                        rb = ts.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
                        if ra != rb:
                            fail(f"chat template renders differ:\n{ra!r}\nvs\n{rb!r}")
                    except Exception as e:  # noqa: BLE001
                        fail(f"chat template failed on SAVED_DIR: {e}")
                print(f"tokenizer: {len(to.encode(TEXT, add_special_tokens=False))} ids compared")

    if errors:
        print(f"\n{len(errors)} mismatch(es) between {args.original} and {args.saved}", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
