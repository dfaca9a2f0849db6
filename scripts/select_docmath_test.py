#!/usr/bin/env python3
"""Write the paper's 200 DocMath evaluation items as one `docmath.jsonl` for `longrl eval`.

QwenLong-L1's `eval/docmath.py` keeps the items of DocMath-Eval's four `*_testmini.jsonl` files
(complong, compshort, simplong, simpshort) whose question and paragraphs appear in a prompt of
`docmath_all_test_200.jsonl`; this script applies the same selection and tags each item's subset.

    python3 scripts/select_docmath_test.py --docmath-dir datasets/docmath --out data/eval/docmath.jsonl

Standard library only.
"""
import argparse
import json
import os
import sys

SUBSETS = ["complong", "compshort", "simplong", "simpshort"]


def prompt_texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["prompt"][0]["content"] for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docmath-dir", required=True,
                    help="folder with docmath_all_test_200.jsonl and the *_testmini.jsonl files")
    ap.add_argument("--out", required=True, help="output docmath.jsonl")
    args = ap.parse_args()

    prompts = prompt_texts(os.path.join(args.docmath_dir, "docmath_all_test_200.jsonl"))
    selected = []
    for subset in SUBSETS:
        path = os.path.join(args.docmath_dir, f"{subset}_testmini.jsonl")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                question = item["question"].strip()
                context = "\n".join(item["paragraphs"]).strip()
                if any(question in p and context in p for p in prompts):
                    item["domain"] = subset + "_test"
                    selected.append(item)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for item in selected:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{len(selected)} items written to {args.out} (the paper evaluates 200)", file=sys.stderr)


if __name__ == "__main__":
    main()
