#!/usr/bin/env python3
"""Check tests/data/reward_rules.jsonl against the QwenLong-L1 reference rule verifiers.

longrl's rule verifiers (src/reward/) port the three rule-based reward functions of
QwenLong-L1's verl fork, `verl/verl/utils/reward_score/`:

  data_source contains "long_toc_choices"          -> long.py     (multiple choice, A-D)
  data_source contains "docmath"                    -> docmath.py  (numeric answer)
  data_source contains "multihoprag" or "musique"   -> docqa.py    (QA, sub-EM)

The table holds one case per line:

  {"id", "data_source", "response", "ground_truth", "score", "pred", "gold_fallback", "note"}

This script runs every case through the reference and compares `score`, `pred` and
`gold_fallback` with the table. It applies the same rules as longrl, which are the
reference's `compute_score` (with the LLM judge off: LLM_JUDGE is removed from the
environment) plus two documented additions:

* Trailing EOS removal: a response ending in `<|im_end|>`, `<|endoftext|>` or
  `<｜end▁of▁sentence｜>` has that one suffix removed before anything else, as verl's
  reward manager does with the tokenizer's EOS.
* Gold fallback, for golds that lack the answer phrase (where the reference crashes or can
  never score 1). When the reference `parse_model_answer(gold)` is None:
    - QA:       the gold becomes `parse_model_answer("the answer is " + gold)`;
    - DocMath:  the raw gold string is passed to `get_acc(pred, gold)`;
    - MC:       the gold becomes `parse_model_answer("The correct answer is " + gold.strip())`.
  `gold_fallback` in the table says whether a case takes this path.

`pred` in the table is the parsed answer: the reference `parse_model_answer` applied to the
text after the last `</think>` (stripped), or null when there is no `</think>` or that text
is empty. It can be "" where the reference parses an empty answer (e.g. "the answer is .").

The reference code is not part of longrl (licence); get it with

  git clone https://github.com/Tongyi-Zhiwen/QwenLong-L1 /tmp/qwenlong

and run, from the longrl root,

  python scripts/check_reward_rules.py --qwenlong /tmp/qwenlong            # check
  python scripts/check_reward_rules.py --qwenlong /tmp/qwenlong --write    # regenerate

`--write` rewrites `score`, `pred` and `gold_fallback` of every case from the reference (this
is how the table's expected values were produced; responses, golds and notes are hand-written).
The reference imports numpy and sympy (used here if installed, else replaced by stubs that are
sufficient for these cases) and openai/jsonlines/tqdm (stubbed when missing: the judge is never
called). Exit status: 0 when every case matches, 1 otherwise.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import types
from pathlib import Path

EOS_SUFFIXES = ("<|im_end|>", "<|endoftext|>", "<｜end▁of▁sentence｜>")
QA_PHRASE = "the answer is "
MC_PHRASE = "The correct answer is "
FIELDS = ("id", "data_source", "response", "ground_truth", "score", "pred", "gold_fallback", "note")


def install_stubs():
    """Put stand-ins into sys.modules for modules the reference imports but does not need here."""

    def missing(name):
        if name in sys.modules:
            return False
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True

    if missing("openai"):
        openai = types.ModuleType("openai")

        class OpenAI:  # only reached through the LLM judge, which is off
            def __init__(self, *args, **kwargs):
                raise RuntimeError("the LLM judge must not be called by this checker")

        openai.OpenAI = OpenAI
        sys.modules["openai"] = openai
    if missing("jsonlines"):
        sys.modules["jsonlines"] = types.ModuleType("jsonlines")
    if missing("tqdm"):
        tqdm = types.ModuleType("tqdm")
        tqdm.tqdm = lambda iterable=None, *args, **kwargs: iterable
        sys.modules["tqdm"] = tqdm
    # docmath.normalize only uses these in isinstance checks on eval() results; an answer
    # matched by the reference's regexes never evaluates to a sympy/numpy object.
    if missing("numpy"):
        numpy = types.ModuleType("numpy")
        numpy.ndarray = type("ndarray", (), {})
        sys.modules["numpy"] = numpy
    if missing("sympy"):
        sympy = types.ModuleType("sympy")
        sympy.Rational = type("Rational", (), {})
        sys.modules["sympy"] = sympy


def load_reference(root: Path):
    """Import long.py, docmath.py and docqa.py by file path (no verl package import needed)."""
    folder = root / "verl" / "verl" / "utils" / "reward_score"
    if not folder.is_dir():
        sys.exit(f"error: {folder} not found; pass the QwenLong-L1 checkout as --qwenlong")
    install_stubs()
    sys.dont_write_bytecode = True  # leave the checkout as it is
    mods = {}
    for task, name in (("mc", "long"), ("docmath", "docmath"), ("qa", "docqa")):
        spec = importlib.util.spec_from_file_location(f"qwenlong_ref_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        mods[task] = module
    return mods


def task_of(data_source: str) -> str:
    # Same order as the reference's reward_score/__init__.py dispatch.
    if "long_toc_choices" in data_source:
        return "mc"
    if "docmath" in data_source:
        return "docmath"
    if "multihoprag" in data_source or "musique" in data_source:
        return "qa"
    raise ValueError(f"no rule verifier for data_source {data_source!r}")


def strip_eos(response: str) -> str:
    for eos in EOS_SUFFIXES:
        if response.endswith(eos):
            return response[: -len(eos)]
    return response


def evaluate(mods, case):
    """Return (score, pred, gold_fallback) for one case, as longrl must compute them."""
    task = task_of(case["data_source"])
    mod = mods[task]
    response = strip_eos(case["response"])
    gold = case["ground_truth"]
    fallback = mod.parse_model_answer(gold) is None

    answer_text, _ = mod.extract_solution(response)
    pred = mod.parse_model_answer(answer_text) if answer_text else None

    if task == "docmath" and fallback:
        # compute_score calls get_acc(pred_status, gt_status) with gt_status None here (and
        # then crashes): hand get_acc the raw gold instead, for this call only.
        original = mod.get_acc
        mod.get_acc = lambda p, gt, *a, **k: original(p, gold if gt is None else gt, *a, **k)
        try:
            result = mod.compute_score(response, gold, "")
        finally:
            mod.get_acc = original
    else:
        if fallback and task == "qa":
            gold = QA_PHRASE + gold
        elif fallback and task == "mc":
            gold = MC_PHRASE + gold.strip()
        result = mod.compute_score(response, gold, "")

    # The reference's own "pred" is the whole text after </think>; ours is the parsed answer.
    assert result["pred"] == answer_text, (result["pred"], answer_text)
    return float(result["score"]), pred, fallback


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--qwenlong", required=True, type=Path, help="QwenLong-L1 checkout")
    parser.add_argument(
        "--cases",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "tests" / "data" / "reward_rules.jsonl",
    )
    parser.add_argument("--write", action="store_true", help="rewrite score/pred from the reference")
    args = parser.parse_args()

    os.environ.pop("LLM_JUDGE", None)
    mods = load_reference(args.qwenlong)

    lines = args.cases.read_text(encoding="utf-8").splitlines()
    cases = [json.loads(line) for line in lines if line.strip()]

    problems = []
    seen = set()
    counts = {}
    for case in cases:
        cid = case.get("id")
        if set(case) != set(FIELDS):
            problems.append(f"{cid}: fields {sorted(case)} != {sorted(FIELDS)}")
            continue
        if cid in seen:
            problems.append(f"{cid}: duplicate id")
        seen.add(cid)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the reference prints a lot
                score, pred, fallback = evaluate(mods, case)
        except Exception as exc:  # unknown data_source, or the reference crashed on this case
            problems.append(f"{cid}: evaluation failed: {type(exc).__name__}: {exc}")
            continue
        task = task_of(case["data_source"])
        counts.setdefault(task, [0, 0])[0 if score == 1.0 else 1] += 1
        if args.write:
            case["score"], case["pred"], case["gold_fallback"] = score, pred, fallback
            continue
        for field, want in (("score", score), ("pred", pred), ("gold_fallback", fallback)):
            if case[field] != want or type(case[field]) is not type(want):
                problems.append(f"{cid}: {field} is {case[field]!r} in the table, reference gives {want!r}")

    if args.write and not problems:
        text = "".join(json.dumps({k: c[k] for k in FIELDS}, ensure_ascii=False) + "\n" for c in cases)
        args.cases.write_text(text, encoding="utf-8")

    for problem in problems:
        print(problem)
    summary = ", ".join(f"{t}: {n1 + n0} ({n1} score 1, {n0} score 0)" for t, (n1, n0) in sorted(counts.items()))
    verb = "wrote" if args.write and not problems else "checked"
    print(f"{verb} {len(cases)} cases [{summary}]; {len(problems)} mismatch(es)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
