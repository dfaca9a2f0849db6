#!/usr/bin/env python3
"""Build the tiny random Qwen2 / Qwen3 checkpoints under models/ and the config-only
folders of the real checkpoints the recipe uses.

    python scripts/make_tiny_models.py

Writes (overwriting):
    models/tiny-qwen2-chatml/   Qwen2ForCausalLM, untied, ChatML (Qwen2.5-Instruct) template
    models/tiny-r1-distill/     Qwen2ForCausalLM, tied, DeepSeek-R1-Distill-Qwen template
    models/tiny-qwen3/          Qwen3ForCausalLM, tied, head_dim 24 != 64 / 4, random q/k norms,
                                Qwen3 template in chat_template.jinja
    models/<real checkpoint>/config.json   (config only, no weights)
    models/README.md

Everything is deterministic: the tokenizer corpus comes from random.Random(0), the
weights from a torch.Generator seeded with 0.  Running the script twice gives
byte-identical files (checked for tokenizer.json at build time).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"

# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------

QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

LEARNED_VOCAB_SIZE = 1000  # includes the 256 byte-level alphabet symbols

# Added after the learned vocab, in this order.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
]
NON_SPECIAL_ADDED = ["<think>", "</think>"]

SUBJECTS = [
    "the document", "the report", "the author", "the table", "the first section", "the appendix",
    "the contract", "the company", "the study", "the question", "the answer", "the reader",
    "the second paragraph", "the summary", "the invoice", "the letter", "the model", "the user",
    "the assistant", "the chapter", "the article", "the data", "the budget", "the city council",
]
VERBS = [
    "states", "reports", "shows", "mentions", "describes", "explains", "claims", "lists",
    "suggests", "confirms", "says", "notes", "argues", "implies", "estimates", "records",
]
OBJECTS = [
    "the total revenue", "the number of employees", "the final result", "the main reason",
    "the date of the meeting", "the name of the river", "the population of the town",
    "the price of the product", "the length of the bridge", "the capital of the country",
    "the year of publication", "the average score", "the growth rate", "the first answer",
    "the correct option", "the missing value", "the key evidence", "the long context",
]
QUESTION_WORDS = ["What", "Which", "When", "Where", "Who", "How many", "How much", "Why"]
CONNECTIVES = [
    "Therefore, the answer is", "So the answer is", "Hence the answer is", "Thus, the final answer is",
    "In conclusion, the answer is", "The answer is",
]
REASONING = [
    "Let me think step by step.", "First, I need to find the relevant part of the document.",
    "Wait, let me check the numbers again.", "The question asks about", "According to the text,",
    "Okay, so", "Hmm, that does not match.", "I should compare the two values.",
    "Let me re-read the passage.", "This means that", "We can compute", "Adding these together gives",
]
UNITS = ["dollars", "people", "meters", "kilometers", "percent", "years", "days", "items", "points"]
COMMON_WORDS = (
    "about above across after again against all almost alone along already also although always among "
    "and another any anything area around ask asked back because become been before began behind being "
    "believe below best better between big book both bring brought build business but call came can car "
    "case cause certain change child children city clear close come common company consider could country "
    "course current day death develop different do does done door down during each early east economic "
    "education effect end enough even evening event ever every example experience face fact family far "
    "father feel few field figure find first five follow food for force form four free friend from full "
    "game general get give given go good government great group grow hand hard have head hear heart help "
    "here high history hold home hope hour house however human idea important increase information "
    "interest issue job just keep kind know land language large last later law lead learn least leave left "
    "less level life light like line little live local long look lose love low main make man manager many "
    "market matter may mean measure member method might mind minute moment money month more morning most "
    "mother move much music must nation national nature near need never new news next night nothing now "
    "number of office often old once only open order other our out over own paper part party pass past pay "
    "people perhaps period person picture place plan play point policy political position possible power "
    "present president pressure probably problem process produce program provide public put quality quite "
    "rather reach read real reason receive record remain remember research rest result return right road "
    "room rule run same school science season second see seem sense serious service set several short "
    "should show side simple since small social society some something sometimes soon sort sound south "
    "space speak special stand start state still story street strong student study such suddenly support "
    "sure system take talk teacher team tell term than thank that their them then theory there these thing "
    "think third this those though thought three through time today together too toward town trade "
    "treatment true try turn under understand until upon usually value very view voice wait walk want war "
    "watch water way week weight well west what whatever while white whole whose wide wife will window "
    "with within without woman word work world would write writer wrong yard yeah year yes yet young"
).split()
NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Qwen", "Paris", "London"]


def make_corpus() -> list[str]:
    rng = random.Random(0)
    lines: list[str] = []

    def num() -> str:
        k = rng.random()
        if k < 0.4:
            return str(rng.randint(0, 99))
        if k < 0.7:
            return str(rng.randint(100, 99999))
        if k < 0.85:
            return f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}"
        return f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}"

    for _ in range(6000):
        kind = rng.randrange(8)
        if kind == 7:
            words = [rng.choice(COMMON_WORDS) for _ in range(rng.randint(6, 16))]
            s = " ".join(words).capitalize() + rng.choice([".", ".", "?", "!", ","])
        elif kind == 0:
            s = f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} that {rng.choice(OBJECTS)} is {num()} {rng.choice(UNITS)}."
        elif kind == 1:
            s = f"{rng.choice(QUESTION_WORDS)} {rng.choice(['is', 'was', 'are', 'does', 'did'])} {rng.choice(OBJECTS)} in {rng.choice(SUBJECTS)}?"
        elif kind == 2:
            s = f"{rng.choice(REASONING)} {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {num()}. {rng.choice(CONNECTIVES)} {num()}."
        elif kind == 3:
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            s = f"{a} + {b} = {a + b}. {rng.choice(CONNECTIVES)} {a + b}."
        elif kind == 4:
            s = (f"Document {rng.randint(1, 20)}: {rng.choice(NAMES)} wrote {rng.choice(['a', 'the'])} "
                 f"{rng.choice(['report', 'letter', 'note', 'paper'])} in {rng.randint(1900, 2025)}.\n"
                 f"Question: {rng.choice(QUESTION_WORDS)} {rng.choice(['is', 'was'])} {rng.choice(OBJECTS)}?")
        elif kind == 5:
            s = (f"<think>\n{rng.choice(REASONING)} {rng.choice(REASONING)}\n</think>\n\n"
                 f"{rng.choice(CONNECTIVES)} {num()} {rng.choice(UNITS)}.")
        else:
            s = (f"Please read the following text and answer the question below.\n<text>\n"
                 f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}.\n</text>\n"
                 f"Format your response as follows: \"Therefore, the answer is (insert answer here)\".")
        lines.append(s)
    return lines


def build_tokenizer_json(post_bos: str | None = None) -> str:
    """Train the byte-level BPE and return tokenizer.json as a string."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                        fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = BpeTrainer(
        vocab_size=LEARNED_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(make_corpus(), trainer=trainer)
    n_learned = tok.get_vocab_size(with_added_tokens=False)
    assert n_learned == LEARNED_VOCAB_SIZE, n_learned
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED])
    if post_bos is None:
        # Qwen2: byte-level post-processor, nothing added.
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    else:
        # DeepSeek-R1-Distill-Qwen: BOS is prepended on encode(add_special_tokens=True).
        bos_id = tok.token_to_id(post_bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{post_bos}:0 $A:0",
            pair=f"{post_bos}:0 $A:0 {post_bos}:1 $B:1",
            special_tokens=[(post_bos, bos_id)],
        )
    # Pretty-print like the published files (indent=2) so diffs are readable.
    return json.dumps(json.loads(tok.to_str()), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------------------

# Verbatim Qwen2.5-Instruct chat template (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct),
# including the tool branches.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# DeepSeek-R1-Distill-Qwen chat template (the revision whose generation prompt ends in
# "<think>\n"), with the tool-call / tool-output branches dropped (the tiny vocab has
# no tool tokens).  The non-tool paths are character-for-character the published ones.
R1_DISTILL_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}"
    "{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)


def added_tokens_decoder(tok_json: dict) -> dict:
    out = {}
    for t in tok_json["added_tokens"]:
        out[str(t["id"])] = {
            "content": t["content"],
            "lstrip": t["lstrip"],
            "normalized": t["normalized"],
            "rstrip": t["rstrip"],
            "single_word": t["single_word"],
            "special": t["special"],
        }
    return out


def chatml_tokenizer_config(tok_json: dict) -> dict:
    # Layout of Qwen/Qwen2.5-*-Instruct tokenizer_config.json.
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tok_json),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def r1_tokenizer_config(tok_json: dict) -> dict:
    # Layout of deepseek-ai/DeepSeek-R1-Distill-Qwen-* tokenizer_config.json, including its
    # (odd) "LlamaTokenizerFast" class: transformers 5 sees the ByteLevel tokenizer.json and
    # loads it as a generic TokenizersBackend, i.e. tokenizer.json is used verbatim.
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added_tokens_decoder(tok_json),
        "bos_token": "<｜begin▁of▁sentence｜>",
        "chat_template": R1_DISTILL_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<｜end▁of▁sentence｜>",
        "legacy": True,
        "model_max_length": 16384,
        "pad_token": "<｜end▁of▁sentence｜>",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": None,
    }


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------

TINY_ARCH = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    max_position_embeddings=32768,
)


def classic_config(*, vocab_size: int, tie: bool, bos_id, eos_id, arch=TINY_ARCH, dtype="float32",
                   sliding_window=None, max_window_layers=None, rope_scaling=None,
                   transformers_version=None) -> dict:
    """config.json in the layout of the published (transformers 4.4x) Qwen2 checkpoints."""
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "hidden_act": "silu",
        "hidden_size": arch["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": arch["intermediate_size"],
        "max_position_embeddings": arch["max_position_embeddings"],
        "max_window_layers": max_window_layers if max_window_layers is not None else arch["num_hidden_layers"],
        "model_type": "qwen2",
        "num_attention_heads": arch["num_attention_heads"],
        "num_hidden_layers": arch["num_hidden_layers"],
        "num_key_value_heads": arch["num_key_value_heads"],
        "rms_norm_eps": arch["rms_norm_eps"],
        "rope_scaling": rope_scaling,
        "rope_theta": arch["rope_theta"],
        "sliding_window": sliding_window if sliding_window is not None else arch["max_position_embeddings"],
        "tie_word_embeddings": tie,
        "torch_dtype": dtype,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    if transformers_version is not None:
        cfg["transformers_version"] = transformers_version
    return cfg


# Qwen3 template, byte for byte the published one (kept as a test fixture of the chat-template code).
QWEN3_CHAT_TEMPLATE_FILE = REPO / "tests" / "fixtures" / "chat_templates" / "Qwen3.jinja"

# Tiny Qwen3: head_dim 24 on purpose != hidden / heads (16), as Qwen3-0.6B's 128 != 1024 / 16.
TINY_QWEN3_ARCH = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    max_position_embeddings=40960,
)


def qwen3_config(*, vocab_size: int, tie: bool, bos_id, eos_id, arch: dict, dtype="bfloat16",
                 transformers_version=None) -> dict:
    """config.json in the layout of the published Qwen3 dense checkpoints (keys sorted)."""
    cfg = {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "head_dim": arch["head_dim"],
        "hidden_act": "silu",
        "hidden_size": arch["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": arch["intermediate_size"],
        "max_position_embeddings": arch["max_position_embeddings"],
        "max_window_layers": arch["num_hidden_layers"],
        "model_type": "qwen3",
        "num_attention_heads": arch["num_attention_heads"],
        "num_hidden_layers": arch["num_hidden_layers"],
        "num_key_value_heads": arch["num_key_value_heads"],
        "rms_norm_eps": arch["rms_norm_eps"],
        "rope_scaling": None,
        "rope_theta": arch["rope_theta"],
        "sliding_window": None,
        "tie_word_embeddings": tie,
        "torch_dtype": dtype,
        "transformers_version": transformers_version,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    if transformers_version is None:
        del cfg["transformers_version"]
    return cfg


def qwen3_tokenizer_config(tok_json: dict) -> dict:
    # Layout of Qwen/Qwen3-* tokenizer_config.json, with the chat template moved out to
    # chat_template.jinja (as transformers 5 save_pretrained writes it).
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tok_json),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def init_weights(model, seed: int, std: float, bias_std: float, norm_jitter: float = 0.0):
    """Deterministic init independent of transformers' own _init_weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + norm_jitter * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(bias_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(name: str, *, tie: bool, tokenizer_json: str, tokenizer_config: dict,
                     bos_tok, eos_toks: list[str], pad_tok: str, cfg_bos_tok, cfg_eos_tok,
                     qwen3: bool = False, chat_template: str | None = None):
    from transformers import (AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM,
                              Qwen3Config, Qwen3ForCausalLM)

    out = MODELS / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    tj = json.loads(tokenizer_json)
    vocab = {**tj["model"]["vocab"], **{t["content"]: t["id"] for t in tj["added_tokens"]}}
    n_tok = max(vocab.values()) + 1
    vocab_size = (n_tok + 63) // 64 * 64
    tid = lambda t: None if t is None else vocab[t]

    arch = TINY_QWEN3_ARCH if qwen3 else TINY_ARCH
    config_class, model_class = (Qwen3Config, Qwen3ForCausalLM) if qwen3 else (Qwen2Config, Qwen2ForCausalLM)
    hf_cfg = config_class(
        vocab_size=vocab_size, tie_word_embeddings=tie, bos_token_id=tid(cfg_bos_tok),
        eos_token_id=tid(cfg_eos_tok), use_sliding_window=False, initializer_range=0.02,
        **{k: v for k, v in arch.items() if k != "rope_theta"},
        rope_parameters={"rope_type": "default", "rope_theta": arch["rope_theta"]},
    )
    torch.manual_seed(0)
    model = model_class(hf_cfg).to(torch.float32)
    # initializer_range 0.02 for matrices; q/k/v biases non-zero so the bias path is exercised.
    # Qwen3 has no biases; its q/k norm weights (and the others) are drawn around 1 so the
    # per-head norms are not the identity.
    init_weights(model, seed=0, std=0.02, bias_std=0.1, norm_jitter=0.2 if qwen3 else 0.0)
    model.eval()
    model.save_pretrained(out)  # transformers 5 always writes safetensors
    # transformers 5 may also write generation_config.json; we write our own below.

    # Re-write config.json in the classic published-checkpoint layout.
    if qwen3:
        cfg = qwen3_config(vocab_size=vocab_size, tie=tie, bos_id=tid(cfg_bos_tok), eos_id=tid(cfg_eos_tok),
                           arch=arch, dtype="float32")
    else:
        cfg = classic_config(vocab_size=vocab_size, tie=tie, bos_id=tid(cfg_bos_tok), eos_id=tid(cfg_eos_tok))
    write_json(out / "config.json", cfg)
    gen = {"bos_token_id": tid(bos_tok) if bos_tok else tid(cfg_bos_tok),
           "eos_token_id": [tid(t) for t in eos_toks] if len(eos_toks) > 1 else tid(eos_toks[0]),
           "pad_token_id": tid(pad_tok)}
    write_json(out / "generation_config.json", gen)

    # Tokenizer files.
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    write_json(out / "tokenizer_config.json", tokenizer_config)
    os.chmod(out / "model.safetensors", 0o644)
    for stray in ("chat_template.jinja", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (out / stray).exists():
            (out / stray).unlink()
    if chat_template is not None:
        (out / "chat_template.jinja").write_bytes(chat_template.encode("utf-8"))

    # ---- verify ---------------------------------------------------------------------
    ids = torch.tensor([[vocab["<|endoftext|>"] - 5, 17, 42, 301, 7, 999, vocab["<think>"], 3]])
    with torch.no_grad():
        ref = model(ids).logits
    loaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"} or info.get("error_msgs")
    assert not bad, f"{name}: loading info {info}"
    assert loaded.dtype == torch.float32, loaded.dtype
    assert loaded.config.tie_word_embeddings == tie
    with torch.no_grad():
        got = loaded(ids).logits
    diff = (got - ref).abs().max().item()
    assert diff == 0.0, f"{name}: logits differ after config rewrite: {diff}"
    if tie:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == n_tok, (len(tok), n_tok)
    assert tok.eos_token == tokenizer_config["eos_token"]
    assert tok.pad_token == tokenizer_config["pad_token"]
    assert tok.bos_token == tokenizer_config["bos_token"]
    from tokenizers import Tokenizer
    raw = Tokenizer.from_str(tokenizer_json)
    for text in ["Therefore, the answer is 42.", "Hello 世界 🎉\n\n  x", "<|im_start|>user\nhi<|im_end|>",
                 "<think>\nok</think>", "<｜User｜>What?<｜Assistant｜>"]:
        a = tok.encode(text, add_special_tokens=False)
        b = raw.encode(text, add_special_tokens=False).ids
        assert a == b, (name, text, a, b)
        a = tok.encode(text)
        b = raw.encode(text).ids
        assert a == b, (name, "with specials", text, a, b)
    if chat_template is not None:
        assert tok.chat_template == chat_template, f"{name}: chat_template.jinja not picked up"
        assert "chat_template" not in tokenizer_config
    if qwen3:
        qn = loaded.model.layers[0].self_attn.q_norm.weight
        assert qn.shape == (arch["head_dim"],) and not torch.all(qn == 1.0), qn
        assert loaded.model.layers[0].self_attn.q_proj.bias is None
    print(f"  {name}: vocab_size={vocab_size} (tokenizer {n_tok}), tie={tie}, params="
          f"{sum(p.numel() for p in loaded.parameters())}, logits max diff after reload {diff}")
    return out


# --------------------------------------------------------------------------------------
# Real checkpoints (config.json only)
# --------------------------------------------------------------------------------------

R1_32B_ARCH = dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                   num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1000000.0,
                   max_position_embeddings=131072)
R1_14B_ARCH = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                   num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1000000.0,
                   max_position_embeddings=131072)
Q25_05B_ARCH = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768)
Q25_15B_ARCH = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                    num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768)
Q25_7B_ARCH = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                   num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768)

REAL = [
    # folder, hub repo, description, config kwargs
    ("DeepSeek-R1-Distill-Qwen-14B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
     "DeepSeek-R1 distilled into Qwen2.5-14B",
     dict(arch=R1_14B_ARCH, vocab_size=152064, tie=False, bos_id=151643, eos_id=151643,
          sliding_window=131072, max_window_layers=48, transformers_version="4.43.1")),
    ("DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
     "DeepSeek-R1 distilled into Qwen2.5-32B (base of QwenLong-L1-32B)",
     dict(arch=R1_32B_ARCH, vocab_size=152064, tie=False, bos_id=151643, eos_id=151643,
          sliding_window=131072, max_window_layers=64, transformers_version="4.43.1")),
    ("QwenLong-L1-32B", "Tongyi-Zhiwen/QwenLong-L1-32B",
     "QwenLong-L1 RL-trained checkpoint (same shape as R1-Distill-Qwen-32B)",
     dict(arch=R1_32B_ARCH, vocab_size=152064, tie=False, bos_id=151643, eos_id=151643,
          sliding_window=131072, max_window_layers=64)),
    ("Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "small ChatML model (smoke runs)",
     dict(arch=Q25_05B_ARCH, vocab_size=151936, tie=True, bos_id=151643, eos_id=151645,
          sliding_window=32768, max_window_layers=21, transformers_version="4.43.1")),
    ("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "judge / verifier model for the LLM reward",
     dict(arch=Q25_15B_ARCH, vocab_size=151936, tie=True, bos_id=151643, eos_id=151645,
          sliding_window=32768, max_window_layers=21, transformers_version="4.43.1")),
    ("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "mid-size ChatML model",
     dict(arch=Q25_7B_ARCH, vocab_size=152064, tie=False, bos_id=151643, eos_id=151645,
          sliding_window=131072, max_window_layers=28, transformers_version="4.43.1")),
]


# Written verbatim: its published config.json has fields classic_config does not make
# (`use_mrope`, rope_theta 10000, sliding_window 4096).
R1_7B = ("DeepSeek-R1-Distill-Qwen-7B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
         "DeepSeek-R1 distilled into Qwen2.5-Math-7B", {
             "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151646,
             "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
             "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
             "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28,
             "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 10000, "sliding_window": 4096,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.44.0",
             "use_cache": True, "use_mrope": False, "use_sliding_window": False, "vocab_size": 152064})

# Qwen3 dense (config.json of Qwen/Qwen3-*, transformers 4.51.0): vocab 151936, head_dim 128,
# rope_theta 1e6, 40960 positions, bos 151643, eos 151645; tied up to 4B.
QWEN3_COMMON = dict(head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000, max_position_embeddings=40960)
QWEN3_REAL = [
    # folder (= hub repo name), description, hidden, intermediate, layers, heads, kv heads, tied
    ("Qwen3-0.6B", "Qwen3 dense, smallest (smoke runs)", 1024, 3072, 28, 16, 8, True),
    ("Qwen3-1.7B", "Qwen3 dense", 2048, 6144, 28, 16, 8, True),
    ("Qwen3-4B", "Qwen3 dense", 2560, 9728, 36, 32, 8, True),
    ("Qwen3-8B", "Qwen3 dense", 4096, 12288, 36, 32, 8, False),
    ("Qwen3-14B", "Qwen3 dense", 5120, 17408, 40, 40, 8, False),
    ("Qwen3-32B", "Qwen3 dense", 5120, 25600, 64, 64, 8, False),
]


def write_real_configs():
    from transformers import AutoConfig
    for folder, _repo, _desc, kw in REAL:
        d = MODELS / folder
        d.mkdir(parents=True, exist_ok=True)
        cfg = classic_config(dtype="bfloat16", **kw)
        cfg.pop("rope_scaling")  # published files have no rope_scaling key (it reads as null)
        cfg = dict(sorted(cfg.items()))
        write_json(d / "config.json", cfg)
        c = AutoConfig.from_pretrained(d)  # must parse
        assert c.num_hidden_layers == kw["arch"]["num_hidden_layers"]
    folder, _repo, _desc, cfg = R1_7B
    (MODELS / folder).mkdir(parents=True, exist_ok=True)
    write_json(MODELS / folder / "config.json", cfg)
    assert AutoConfig.from_pretrained(MODELS / folder).num_hidden_layers == 28
    for folder, _desc, h, i, layers, heads, kv, tie in QWEN3_REAL:
        d = MODELS / folder
        d.mkdir(parents=True, exist_ok=True)
        arch = dict(QWEN3_COMMON, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                    num_attention_heads=heads, num_key_value_heads=kv)
        cfg = qwen3_config(vocab_size=151936, tie=tie, bos_id=151643, eos_id=151645, arch=arch,
                           transformers_version="4.51.0")
        write_json(d / "config.json", cfg)
        c = AutoConfig.from_pretrained(d)  # must parse
        assert c.model_type == "qwen3" and c.head_dim == 128 and c.num_hidden_layers == layers


README = """# models/

Everything here is produced by `python scripts/make_tiny_models.py` (deterministic; re-running
overwrites the same files).  Weights of the real checkpoints are NOT in the repo: only their
`config.json`, so that the Rust side can test config parsing / memory planning offline.

## Tiny random checkpoints (for tests)

| folder | what it is |
|---|---|
| `tiny-qwen2-chatml/` | `Qwen2ForCausalLM`, hidden 64, intermediate 176, 2 layers, 4 heads / 2 kv heads (GQA, head_dim 16), vocab {vocab} (tokenizer {ntok} tokens, rounded up to a multiple of 64), `tie_word_embeddings: false`, rope_theta 1e6, rms_norm_eps 1e-6, f32. Tokenizer/template like **Qwen2.5-Instruct** (ChatML, default system prompt, eos `<\\|im_end\\|>`, pad `<\\|endoftext\\|>`, no bos). `generation_config.json` eos = [`<\\|im_end\\|>`, `<\\|endoftext\\|>`]. |
| `tiny-qwen3/` | `Qwen3ForCausalLM`, hidden 64, intermediate 176, 2 layers, 4 heads / 2 kv heads, **head_dim 24** (not 64 / 4 = 16, as Qwen3-0.6B's 128 is not 1024 / 16), no q/k/v/o bias (`attention_bias: false`), per-head `q_norm`/`k_norm`, `tie_word_embeddings: true`, rope_theta 1e6, 40960 positions, f32; config.json in the published Qwen3 layout. Same tokenizer.json as `tiny-qwen2-chatml`; `tokenizer_config.json` without `chat_template`, the **Qwen3** template (byte for byte `tests/fixtures/chat_templates/Qwen3.jinja`) in `chat_template.jinja`; eos `<\\|im_end\\|>`, pad `<\\|endoftext\\|>`. Every norm weight (q/k norms included) is drawn around 1 (N(1, 0.2)). |
| `tiny-r1-distill/` | same architecture but `tie_word_embeddings: true` (no `lm_head.weight` in the safetensors). Tokenizer/template like **DeepSeek-R1-Distill-Qwen** (bos `<｜begin▁of▁sentence｜>`, eos = pad = `<｜end▁of▁sentence｜>`, generation prompt `<｜Assistant｜><think>\\n`, `</think>`-stripping of past assistant turns; tool branches dropped). Its tokenizer.json has a `TemplateProcessing` post-processor that prepends BOS on `encode(add_special_tokens=True)`, like the published R1-distill tokenizer. |

Both share one byte-level BPE tokenizer trained with HF `tokenizers` on a synthetic English-like
corpus (`random.Random(0)` templates about documents / numbers / "Therefore, the answer is"):
NFC normalizer, Qwen2 split regex (`isolated`) + ByteLevel(add_prefix_space=false, use_regex=false),
ByteLevel decoder, {nlearned} learned ids (256 byte symbols + merges), then the added tokens, in id order:
{added}.
`<think>`/`</think>` are added but **not special** (as in R1-distill), so `skip_special_tokens` keeps them.

Weights: `torch.Generator` seed 0, N(0, 0.02) for every matrix, N(0, 0.1) for the q/k/v biases
(non-zero on purpose), RMSNorm weights 1 (tiny-qwen3: N(1, 0.2)).  Saved with `save_pretrained` (transformers 5 always
writes safetensors), then `config.json` is rewritten by hand in the classic published layout
(`rope_theta` + `rope_scaling: null` + `torch_dtype`), and the script checks that transformers
reloads it with no missing/unexpected keys and bit-identical logits.

`tokenizer_config.json` is written by hand in the published layout with the chat template inline
(not in a separate `chat_template.jinja`).  Like the real R1-distill file, the tiny R1 one declares
`"tokenizer_class": "LlamaTokenizerFast"`; transformers 5 notices that tokenizer.json is ByteLevel and
loads it verbatim as a generic `TokenizersBackend` (it logs a one-line notice).  In the real R1-distill
vocabulary the ids differ from the tiny one: `<｜end▁of▁sentence｜>` = 151643 (the slot Qwen calls `<|endoftext|>`),
`<｜User｜>` 151644, `<｜Assistant｜>` 151645, `<｜begin▁of▁sentence｜>` 151646, `<think>` 151648,
`</think>` 151649; the tiny tokenizer instead has all special tokens of both families side by side.

## Real checkpoints (config.json only)

| folder | what it is | Hub repo (weights) |
|---|---|---|
{real_rows}
{qwen3_rows}

Download weights next to the config (the download overwrites config.json with the real one):

    huggingface-cli download REPO --local-dir models/NAME
    # e.g. huggingface-cli download deepseek-ai/DeepSeek-R1-Distill-Qwen-32B --local-dir models/DeepSeek-R1-Distill-Qwen-32B
    # (newer huggingface_hub: `hf download REPO --local-dir models/NAME`)

The configs were written from memory of the published files, cross-checked against copies
quoted in public code where available.  Confidence notes:

* Qwen2.5-0.5B/1.5B-Instruct: all values confirmed (sliding_window 32768, max_window_layers 21, tied, vocab 151936, eos 151645).
* Qwen2.5-7B-Instruct: shape, vocab 152064, untied, eos 151645 confirmed; `sliding_window: 131072` and
  `max_window_layers: 28` are from memory (irrelevant while `use_sliding_window` is false).
* DeepSeek-R1-Distill-Qwen-32B: confirmed (same file as Qwen2.5-32B base: rms_norm_eps 1e-5,
  max_position_embeddings 131072, sliding_window 131072, max_window_layers 64, bos = eos = 151643;
  the real EOS used for generation is `<｜end▁of▁sentence｜>` = 151643).
* DeepSeek-R1-Distill-Qwen-7B: shape (28 layers, 3584 hidden, 18944 intermediate, 28/4 heads), vocab
  152064, untied, rope_theta 10000, max_position_embeddings 131072, rms_norm_eps 1e-6, bos 151646,
  eos 151643 as the published file; `sliding_window` 4096 and `use_mrope` are inert (sliding window off).
* DeepSeek-R1-Distill-Qwen-14B: shape (48 layers, 5120 hidden, 13824 intermediate, 40/8 heads) and
  vocab 152064 are certain; rms_norm_eps 1e-5, max_position_embeddings 131072, sliding_window 131072,
  max_window_layers 48 are from memory (the Qwen2.5-14B base ships the same) -- check after download.
* QwenLong-L1-32B: the Hub id is **`Tongyi-Zhiwen/QwenLong-L1-32B`** (not `Qwen/...`). It is a fine-tune of
  R1-Distill-Qwen-32B, so the shape is certain; I have not seen its config.json, so bos/eos ids,
  max_position_embeddings and the absence of `rope_scaling` are assumed equal to R1-Distill-Qwen-32B.
  Its model card recommends enabling YaRN (`"rope_scaling": {{"type": "yarn", "factor": 4.0,
  "original_max_position_embeddings": 32768}}`) for inputs beyond 32K tokens -- that is a user-side edit,
  not part of the published config.
* Qwen3 (0.6B to 32B dense): the published files (transformers 4.51.0 layout), checked against copies of
  them: vocab 151936, head_dim 128, rope_theta 1000000, max_position_embeddings 40960, bos 151643,
  eos 151645, `sliding_window: null`, `max_window_layers` = layers, tied embeddings for 0.6B/1.7B/4B only.
* `transformers_version` is omitted where not known; it has no effect.
"""


def write_readme(vocab_size: int, ntok: int, tj: dict):
    added = ", ".join(f"`{t['content']}`={t['id']}" for t in tj["added_tokens"])
    rows = "\n".join(f"| `{f}/` | {d} | `{r}` |" for f, r, d, _ in [R1_7B, *REAL])
    qwen3_rows = "\n".join(
        f"| `{f}/` | {d}: hidden {h}, {layers} layers, {heads}/{kv} heads of 128, {'tied' if tie else 'untied'} | `Qwen/{f}` |"
        for f, d, h, _i, layers, heads, kv, tie in QWEN3_REAL)
    text = README.format(vocab=vocab_size, ntok=ntok, nlearned=LEARNED_VOCAB_SIZE, added=added,
                         real_rows=rows, qwen3_rows=qwen3_rows)
    (MODELS / "README.md").write_text(text, encoding="utf-8")


def main():
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    MODELS.mkdir(exist_ok=True)
    print("training tokenizer (twice, to check determinism)...")
    tj_chatml = build_tokenizer_json()
    tj_chatml2 = build_tokenizer_json()
    assert tj_chatml == tj_chatml2, "BPE training is not deterministic"
    tj_r1 = build_tokenizer_json(post_bos="<｜begin▁of▁sentence｜>")
    a, b = json.loads(tj_chatml), json.loads(tj_r1)
    assert a["model"] == b["model"] and a["added_tokens"] == b["added_tokens"]

    build_tiny_model(
        "tiny-qwen2-chatml", tie=False, tokenizer_json=tj_chatml,
        tokenizer_config=chatml_tokenizer_config(a),
        bos_tok="<|endoftext|>", eos_toks=["<|im_end|>", "<|endoftext|>"], pad_tok="<|endoftext|>",
        cfg_bos_tok="<|endoftext|>", cfg_eos_tok="<|im_end|>")
    build_tiny_model(
        "tiny-r1-distill", tie=True, tokenizer_json=tj_r1,
        tokenizer_config=r1_tokenizer_config(b),
        bos_tok="<｜begin▁of▁sentence｜>", eos_toks=["<｜end▁of▁sentence｜>"], pad_tok="<｜end▁of▁sentence｜>",
        cfg_bos_tok="<｜begin▁of▁sentence｜>", cfg_eos_tok="<｜end▁of▁sentence｜>")
    build_tiny_model(
        "tiny-qwen3", tie=True, tokenizer_json=tj_chatml,
        tokenizer_config=qwen3_tokenizer_config(a),
        bos_tok="<|endoftext|>", eos_toks=["<|im_end|>", "<|endoftext|>"], pad_tok="<|endoftext|>",
        cfg_bos_tok="<|endoftext|>", cfg_eos_tok="<|im_end|>", qwen3=True,
        chat_template=QWEN3_CHAT_TEMPLATE_FILE.read_bytes().decode("utf-8"))

    write_real_configs()
    ntok = len(a["model"]["vocab"]) + len(a["added_tokens"])
    write_readme((ntok + 63) // 64 * 64, ntok, a)
    print("done")


if __name__ == "__main__":
    main()
