#!/usr/bin/env python3
"""Time the QwenLong-L1 reference rule rewards on the responses `examples/bench_rewards.rs` wrote.

    cargo run --release --example bench_rewards -- --write-input /tmp/rewards.jsonl
    python scripts/bench_reward_rules.py --qwenlong /tmp/qwenlong --input /tmp/rewards.jsonl

The reference modules are loaded as scripts/check_reward_rules.py loads them (get the checkout
with `git clone https://github.com/Tongyi-Zhiwen/QwenLong-L1 /tmp/qwenlong`); their console
output is discarded, as a training run would redirect it. Gold answers go through the same
fallback as in the checker, so both sides score the same things. Prints responses/s and the
number scored correct, to compare with the Rust benchmark's line.
"""

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_reward_rules import evaluate, load_reference  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--qwenlong", required=True, type=Path, help="QwenLong-L1 checkout")
    parser.add_argument("--input", required=True, type=Path, help="JSONL from bench_rewards")
    args = parser.parse_args()
    mods = load_reference(args.qwenlong)
    cases = [json.loads(line) for line in args.input.open()]
    sink = io.StringIO()
    start = time.perf_counter()
    correct = 0
    for case in cases:
        with contextlib.redirect_stdout(sink):
            score, _, _ = evaluate(mods, case)
        sink.seek(0)
        sink.truncate()
        correct += score == 1.0
    seconds = time.perf_counter() - start
    print(
        f"reference (1 thread): {len(cases)} responses in {seconds:.3f} s = "
        f"{len(cases) / seconds:.0f} responses/s; {correct} correct"
    )


if __name__ == "__main__":
    main()
