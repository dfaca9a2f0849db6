#!/usr/bin/env python3
"""Reference renderings of the published chat templates by transformers' apply_chat_template.

    python scripts/make_chat_template_fixtures.py     (pip install -r scripts/requirements.txt)

Reads the template texts in tests/fixtures/chat_templates/*.jinja (the `chat_template` of the
published tokenizer_config.json files: Qwen2.5-Instruct, Qwen3 (0.6B-32B share it), QwQ-32B,
DeepSeek-R1-Distill-Qwen) and writes tests/fixtures/chat_templates/cases.jsonl (overwriting), one
line per case:

    {"name", "template": file name, "model": tiny model folder whose tokenizer renders and encodes,
     "messages", "add_generation_prompt", "chat_template_kwargs", "tools" (or null),
     "text": apply_chat_template(..., tokenize=False),
     "input_ids": tokenizer(text, add_special_tokens=False).input_ids  (== tokenize=True)}

Real checkpoints' tokenizers are not needed: the template text is the model's, the special-token
strings (bos_token for R1) come from the tiny model folders, which hold every special token of
both families (models/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
DIR = REPO / "tests" / "fixtures" / "chat_templates"

DOC = "Please read the following text and answer the question below.\n\n<text>\nThe café opened in 1999 — \"Ünïcode\" & <tags> stay as they are.\n</text>\n\nWhen did it open?\n\nFormat your response as follows: \"Therefore, the answer is (insert answer here)\"."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city, in °C",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
                "required": ["city"],
            },
        },
    }
]
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}
        ],
    },
    {"role": "tool", "content": "{\"temp\": 3.5}"},
    {"role": "tool", "content": "{\"temp\": 4.0}"},
]
HISTORY = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is 5."},
    {"role": "user", "content": "And 4+4?"},
]
FINAL_WITH_THINKING = HISTORY + [{"role": "assistant", "content": "<think>\nEight.\n</think>\n\nThe answer is 8."}]

QWEN = "models/tiny-qwen2-chatml"
R1 = "models/tiny-r1-distill"

CASES = [
    # (name, template file, model, messages, add_generation_prompt, chat_template_kwargs, tools)
    ("qwen2.5/doc-prompt", "Qwen2.5-Instruct.jinja", QWEN, [{"role": "user", "content": DOC}], True, {}, None),
    ("qwen2.5/history", "Qwen2.5-Instruct.jinja", QWEN, HISTORY, False, {}, None),
    ("qwen2.5/tools", "Qwen2.5-Instruct.jinja", QWEN, TOOL_TURNS, True, {}, TOOLS),
    ("qwen3/thinking-on", "Qwen3.jinja", QWEN, [{"role": "user", "content": DOC}], True, {}, None),
    ("qwen3/thinking-off", "Qwen3.jinja", QWEN, [{"role": "user", "content": DOC}], True, {"enable_thinking": False}, None),
    ("qwen3/history-gen", "Qwen3.jinja", QWEN, HISTORY, True, {}, None),
    ("qwen3/history-no-gen", "Qwen3.jinja", QWEN, FINAL_WITH_THINKING, False, {}, None),
    ("qwen3/history-thinking-off", "Qwen3.jinja", QWEN, HISTORY, True, {"enable_thinking": False}, None),
    (
        "qwen3/reasoning-content",
        "Qwen3.jinja",
        QWEN,
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello.", "reasoning_content": "Greet back."},
        ],
        False,
        {},
        None,
    ),
    ("qwen3/tools", "Qwen3.jinja", QWEN, TOOL_TURNS, True, {}, TOOLS),
    ("r1/doc-prompt", "DeepSeek-R1-Distill-Qwen.jinja", R1, [{"role": "user", "content": DOC}], True, {}, None),
    ("r1/history", "DeepSeek-R1-Distill-Qwen.jinja", R1, HISTORY, True, {}, None),
    ("r1/history-no-gen", "DeepSeek-R1-Distill-Qwen.jinja", R1, FINAL_WITH_THINKING, False, {}, None),
    ("qwq/doc-prompt", "QwQ-32B.jinja", QWEN, [{"role": "user", "content": DOC}], True, {}, None),
    ("qwq/history", "QwQ-32B.jinja", QWEN, HISTORY, True, {}, None),
    ("qwq/history-no-gen", "QwQ-32B.jinja", QWEN, FINAL_WITH_THINKING, False, {}, None),
]


def main() -> None:
    tokenizers = {m: AutoTokenizer.from_pretrained(REPO / m) for m in (QWEN, R1)}
    lines = []
    for name, file, model, messages, gen, kwargs, tools in CASES:
        tok = tokenizers[model]
        template = (DIR / file).read_text()
        text = tok.apply_chat_template(
            messages, chat_template=template, tools=tools, add_generation_prompt=gen, tokenize=False, **kwargs
        )
        ids = tok(text, add_special_tokens=False).input_ids
        assert ids == list(
            tok.apply_chat_template(
                messages, chat_template=template, tools=tools, add_generation_prompt=gen, tokenize=True,
                return_dict=True, **kwargs
            )["input_ids"]
        ), name
        lines.append(
            json.dumps(
                {
                    "name": name,
                    "template": file,
                    "model": model,
                    "messages": messages,
                    "add_generation_prompt": gen,
                    "chat_template_kwargs": kwargs,
                    "tools": tools,
                    "text": text,
                    "input_ids": ids,
                },
                ensure_ascii=False,
            )
        )
    (DIR / "cases.jsonl").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} cases to {DIR / 'cases.jsonl'}")


if __name__ == "__main__":
    main()
