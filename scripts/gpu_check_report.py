#!/usr/bin/env python3
"""The helper of scripts/gpu_check.sh: parity inputs and verdict, and the combined report.

Standard library only (it never imports torch), so it runs even where the torch stage failed.

    python3 scripts/gpu_check_report.py inputs  --out DIR [--model DIR]   # parity input files
    python3 scripts/gpu_check_report.py rescore --out DIR                 # prompt + CUDA greedy ids, for flex to score
    python3 scripts/gpu_check_report.py parity  --out DIR [--tol 5e-3]    # CUDA-vs-flex verdict (JSON)
    python3 scripts/gpu_check_report.py combine --out DIR                 # DIR/gpu_check.json, DIR/gpu_check.md; prints the Markdown

Files it reads in DIR (written by gpu_check.sh): `stages.tsv` (name, status, rc, seconds, timeout,
command per line) and each stage's `NAME.out` / `NAME.err`.

Parity: `longrl score` log-probs of the same token ids on flex and CUDA must agree within `--tol`
(absolute, per token; default 5e-3, the CUDA logits bound of tests/integration/parity.rs: burn's
CUDA matmuls run f32 on TF32 tensor cores). Greedy `longrl generate` must give the same tokens,
their log-probs within `--tol`; a divergence is accepted only at a near-tie: where flex itself
(scoring the CUDA tokens, `parity_flex_rescore`) puts CUDA's token within `--tol` of its own choice.
"""

import argparse
import datetime
import json
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import torch_reference as ref  # noqa: E402  (FLOPs formula; torch is only imported by its Runner)

SCORE_LENGTHS = [7, 64, 300]
GEN_PROMPT_LENGTHS = [8, 21]


def ids(n, vocab, salt):
    return [(i * 2_654_435_761 + 12_345 + 7_919 * salt) % vocab for i in range(n)]


def read_jsonl(path):
    """JSON objects of the lines of `path` that parse (others, e.g. log lines, are skipped)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return out


def tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
        return text[-n:]
    except OSError:
        return ""


# ---------------------------------------------------------------- parity

def cmd_inputs(a):
    cfg = ref.read_config(os.path.join(a.model, "config.json"))
    vocab = cfg["vocab_size"]
    with open(os.path.join(a.out, "parity_score_in.jsonl"), "w") as f:
        for k, n in enumerate(SCORE_LENGTHS):
            f.write(json.dumps({"input_ids": ids(n, vocab, k)}) + "\n")
    with open(os.path.join(a.out, "parity_gen_in.jsonl"), "w") as f:
        for k, n in enumerate(GEN_PROMPT_LENGTHS):
            f.write(json.dumps({"input_ids": ids(n, vocab, 100 + k)}) + "\n")


def prompts(out):
    return [r["input_ids"] for r in read_jsonl(os.path.join(out, "parity_gen_in.jsonl"))]


def samples(path):
    return {(r.get("index"), r.get("sample", 0)): r for r in read_jsonl(path) if "output_ids" in r}


def cmd_rescore(a):
    ps = prompts(a.out)
    gen = samples(os.path.join(a.out, "parity_cuda_gen.out"))
    with open(os.path.join(a.out, "parity_rescore_in.jsonl"), "w") as f:
        for key in sorted(gen, key=str):
            i = key[0]
            if isinstance(i, int) and i < len(ps) and gen[key]["output_ids"]:
                f.write(json.dumps({"input_ids": ps[i] + gen[key]["output_ids"]}) + "\n")


def max_abs(xs, ys):
    d = [abs(x - y) for x, y in zip(xs, ys)]
    return (max(d) if d else 0.0), (sum(d) / len(d) if d else 0.0), len(d)


def parity(out, tol):
    res = {"tolerance_abs_logprob": tol, "model": None}
    try:
        fs = read_jsonl(os.path.join(out, "parity_flex_score.out"))
        cs = read_jsonl(os.path.join(out, "parity_cuda_score.out"))
        n_in = len(read_jsonl(os.path.join(out, "parity_score_in.jsonl")))
        score = {"sequences": n_in, "flex_lines": len(fs), "cuda_lines": len(cs)}
        ok_score = n_in > 0 and len(fs) == n_in and len(cs) == n_in
        worst, total, count = 0.0, 0.0, 0
        for f, c in zip(fs, cs):
            if f.get("input_ids") != c.get("input_ids") or len(f["token_logprobs"]) != len(c["token_logprobs"]):
                ok_score = False
                score["mismatch"] = "input ids or lengths differ"
                continue
            m, mean, n = max_abs(f["token_logprobs"], c["token_logprobs"])
            worst, total, count = max(worst, m), total + mean * n, count + n
        score.update(tokens=count, max_abs_diff=worst, mean_abs_diff=(total / count if count else None))
        score["pass"] = bool(ok_score and count and worst <= tol)
        res["score"] = score

        ps = prompts(out)
        fg = samples(os.path.join(out, "parity_flex_gen.out"))
        cg = samples(os.path.join(out, "parity_cuda_gen.out"))
        # `longrl score` echoes the input ids: match rescored lines to samples by them.
        by_ids = {json.dumps(r["input_ids"]): r for r in
                  read_jsonl(os.path.join(out, "parity_flex_rescore.out")) if "input_ids" in r}
        gen = {"samples": len(ps), "flex_samples": len(fg), "cuda_samples": len(cg), "per_sample": []}
        ok_gen = len(ps) > 0 and len(fg) == len(ps) and len(cg) == len(ps)
        worst = 0.0
        for key in sorted(fg, key=str):
            f, c = fg[key], cg.get(key)
            one = {"index": key[0], "sample": key[1]}
            if c is None:
                ok_gen = False
                one["error"] = "no CUDA sample"
                gen["per_sample"].append(one)
                continue
            fo, co = f["output_ids"], c["output_ids"]
            k = next((j for j, (x, y) in enumerate(zip(fo, co)) if x != y), None)
            if k is None and len(fo) != len(co):
                k = min(len(fo), len(co))
            common = len(fo) if k is None else k
            m, _, _ = max_abs(f["logprobs"][:common], c["logprobs"][:common])
            worst = max(worst, m)
            one.update(tokens=len(fo), identical=k is None, logprob_max_abs_diff=m)
            if m > tol:
                ok_gen = False
            if k is not None:
                one["first_divergence"] = k
                idx = key[0]
                r = by_ids.get(json.dumps(ps[idx] + co)) if isinstance(idx, int) and idx < len(ps) else None
                if r is None or k >= len(fo) or k >= len(co):
                    one["near_tie"] = False
                    one["why"] = "different lengths" if k >= min(len(fo), len(co)) else "no flex rescore"
                else:
                    pos = len(ps[idx]) + k - 1  # entry t of score is log p(x[t+1] | x[..=t])
                    gap = f["logprobs"][k] - r["token_logprobs"][pos]
                    one["flex_logprob_gap_at_divergence"] = gap
                    one["near_tie"] = abs(gap) <= tol
                if not one["near_tie"]:
                    ok_gen = False
            gen["per_sample"].append(one)
        gen["identical"] = all(s.get("identical") for s in gen["per_sample"]) and ok_gen
        gen["logprob_max_abs_diff"] = worst
        gen["pass"] = bool(ok_gen)
        res["generate"] = gen
        res["status"] = "pass" if score["pass"] and gen["pass"] else "fail"
    except Exception as e:  # a missing or malformed file is a recorded failure, not a crash
        res["status"] = "error"
        res["error"] = f"{type(e).__name__}: {e}"
    return res


def cmd_parity(a):
    res = parity(a.out, a.tol)
    print(json.dumps(res, indent=1))
    return 0 if res["status"] == "pass" else 1


# ---------------------------------------------------------------- combine

def read_stages(out):
    stages = []
    try:
        with open(os.path.join(out, "stages.tsv")) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 6:
                    continue
                name, status, rc, secs, limit, cmd = parts[:6]
                st = {"name": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                      "seconds": float(secs) if secs else None,
                      "timeout_s": int(limit) if limit.isdigit() else None, "cmd": cmd,
                      "stdout": f"{name}.out", "stderr": f"{name}.err"}
                if status != "ok":
                    st["stderr_tail"] = tail(os.path.join(out, f"{name}.err"))
                stages.append(st)
    except OSError:
        pass
    return stages


def last_record(path, bench):
    rs = [r for r in read_jsonl(path) if r.get("bench") == bench]
    return rs[-1] if rs else None


def resolve(path):
    for p in (path, os.path.join(ROOT, path)):
        if p and os.path.exists(p):
            return p
    return None


def failure(stage):
    if stage is None:
        return {"error": "stage not run"}
    if stage["status"] == "timeout":
        return {"error": f"timeout after {stage['timeout_s']} s"}
    if stage["status"] == "skipped":
        return {"error": f"skipped (limit {stage['timeout_s']} s)"}
    return {"error": f"{stage['status']} (rc {stage['rc']})", "stderr_tail": stage.get("stderr_tail", "")[-600:]}


def longrl_train(out, stage, peak):
    rec = last_record(os.path.join(out, f"{stage['name']}.out"), "train") if stage else None
    if rec is None:
        return {"framework": "longrl", "bench": "train", "stage": stage and stage["name"], **failure(stage)}
    cmd = stage["cmd"]
    rec = {"framework": "longrl", "stage": stage["name"], **rec,
           "precision": "amp-bf16" if "--bf16" in cmd else "f32",
           "gradient_checkpointing": "--gradient-checkpointing" in cmd, "peak_tflops": peak,
           "flops_formula": ref.FLOPS_FORMULA}
    cfg_path = resolve(rec.get("model", ""))
    if cfg_path:
        cfg = ref.read_config(cfg_path)
        flops = ref.train_flops(cfg, rec["batch"], rec["seq_len"], rec.get("parameters"))
        rec["model_flops_per_step"] = flops
        rec["mfu"] = ref.mfu(flops, rec.get("seconds_per_step"), peak)
    else:
        rec["mfu"] = None
        rec["mfu_error"] = f"config {rec.get('model')} not found"
    return rec


def fmt(x, spec="{:.0f}"):
    return "-" if x is None else spec.format(x)


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def cell(rec, key, spec="{:.0f}"):
    if rec is None:
        return "not run"
    if "error" in rec:
        return rec["error"].split(" (")[0] if rec["error"].startswith("failed") else rec["error"]
    return fmt(rec.get(key), spec)


def markdown(rep):
    env = rep.get("env", {})
    gpu = env.get("gpu") or "GPU"
    lines = [f"### GPU check ({gpu}, {rep['created'][:10]})", "",
             "```sh", "scripts/gpu_check.sh target/release/longrl   # on the GPU machine, from the repo root",
             "```", ""]
    peak = rep["peak_tflops"]
    lines += [f"Training step, longrl (`bench train --bf16`) against PyTorch (`scripts/torch_reference.py`, "
              f"transformers + SDPA, autocast bf16 from f32 master weights); MFU against {peak:g} TFLOP/s, "
              f"model FLOPs = 6 N tokens + 12 layers hidden seq^2 batch:", "",
              "| shape | tokens | checkpointing | longrl tok/s | longrl MFU | PyTorch tok/s | PyTorch MFU | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for pair in rep["train"]:
        lo, to = pair.get("longrl"), pair.get("torch")
        ratio = "-"
        if lo and to and "error" not in lo and "error" not in to and to.get("tokens_per_s"):
            ratio = f"{lo['tokens_per_s'] / to['tokens_per_s']:.2f}x"
        cfg = (lo or {}).get("model") or (to or {}).get("model") or ""
        name = os.path.basename(os.path.dirname(cfg)) or "model"
        lines.append(f"| {name} | {pair['batch']} x {pair['seq_len']} | {'yes' if pair['gradient_checkpointing'] else 'no'} "
                     f"| {cell(lo, 'tokens_per_s')} | {pct(lo.get('mfu')) if lo and 'error' not in lo else '-'} "
                     f"| {cell(to, 'tokens_per_s')} | {pct(to.get('mfu')) if to and 'error' not in to else '-'} | {ratio} |")
    rl = rep.get("bench_rl") or {}
    lines += ["", f"`longrl bench rl` ({rep.get('rl_config')}, {rl.get('device') or rep.get('device')}):", "",
              "| warm-up s | step s (median) | slowest / median | rollout tok/s | train tok/s "
              "| kernels compiled per step | after the first step |",
              "|---|---|---|---|---|---|---|"]
    if "error" in rl:
        lines.append(f"| {rl['error']} | | | | | | |")
    else:
        kernels = ", ".join(fmt(s.get("kernels_compiled"), "{}") for s in rl.get("steps", []) if isinstance(s, dict))
        lines.append(f"| {fmt(rl.get('warmup_s'), '{:.1f}')} | {fmt(rl.get('step_s_median'), '{:.3f}')} "
                     f"| {fmt(rl.get('slowest_over_median'), '{:.2f}')} "
                     f"| {fmt(rl.get('rollout_tokens_per_s'))} | {fmt(rl.get('train_tokens_per_s'))} | {kernels or '-'} "
                     f"| {fmt(rl.get('kernels_compiled_after_first'), '{}')} |")
    if rep["rollout"]:
        lines += ["", "PyTorch rollout reference (`generate` with the KV cache, sampled, no EOS):", "",
                  "| prompts x G | prompt + new tokens | precision | decode tok/s | end-to-end tok/s | peak memory |",
                  "|---|---|---|---|---|---|"]
        for r in rep["rollout"]:
            if "error" in r:
                shape = (f"| {r['prompts']} x {r['n']} | {r['seq_len']} + {r['new_tokens']} | {r['precision']} "
                         if "prompts" in r else "| - | - | - ")
                lines.append(f"{shape}| {r['error'][:80]} | | |")
            else:
                mem = r.get("peak_memory_bytes")
                lines.append(f"| {r['prompts']} x {r['n']} | {r['seq_len']} + {r['new_tokens']} | {r['precision']} "
                             f"| {r['tokens_per_s']:.0f} | {r['e2e_tokens_per_s']:.0f} | {fmt(mem and mem / 2**30, '{:.1f} GiB')} |")
    p = rep["parity"]
    lines += [""]
    if p.get("status") == "error":
        lines.append(f"CUDA vs flex parity (tiny model): error: {p.get('error')}")
    else:
        s, g = p.get("score", {}), p.get("generate", {})
        same = sum(1 for x in g.get("per_sample", []) if x.get("identical"))
        ties = sum(1 for x in g.get("per_sample", []) if not x.get("identical") and x.get("near_tie"))
        lines.append(
            f"CUDA vs flex parity ({p.get('model')}): **{p['status'].upper()}**; `score` max |diff log p| "
            f"{fmt(s.get('max_abs_diff'), '{:.2e}')} over {s.get('tokens', 0)} tokens; greedy `generate` "
            f"{same}/{g.get('samples', 0)} samples identical"
            + (f", {ties} diverging at a near-tie" if ties else "")
            + f", log-probs within {fmt(g.get('logprob_max_abs_diff'), '{:.2e}')} (tolerance {p['tolerance_abs_logprob']:g}).")
    lines += ["", "| stage | status | seconds | limit s |", "|---|---|---|---|"]
    for st in rep["stages"]:
        lines.append(f"| {st['name']} | {st['status']} | {fmt(st['seconds'], '{:.1f}')} | {fmt(st['timeout_s'], '{}')} |")
    lines.append(f"\nTotal {rep.get('total_s') or 0:.0f} s of a {rep.get('budget_s')} s budget.")
    return "\n".join(lines) + "\n"


def cmd_combine(a):
    out = a.out
    stages = read_stages(out)
    by = {s["name"]: s for s in stages}
    env = {}
    for line in tail(os.path.join(out, "env.out"), 4000).splitlines():
        k, _, v = line.partition("=")
        if k in ("gpu", "longrl_version", "longrl", "host", "python"):
            env[k] = v.strip()

    rl_stage = by.get("bench_rl")
    rl = last_record(os.path.join(out, "bench_rl.out"), "rl") if rl_stage else None
    if rl is None:
        rl = failure(rl_stage)
        if rl_stage and rl_stage["status"] == "ok":
            rl = {"error": "no JSON line with bench \"rl\" in bench_rl.out"}

    torch_stage = by.get("torch_ref")
    torch_recs = read_jsonl(os.path.join(out, "torch_ref.out")) if torch_stage else []
    torch_train = [r for r in torch_recs if r.get("bench") == "train"]
    rollout = [r for r in torch_recs if r.get("bench") == "generate"]
    if torch_stage and not torch_recs:
        rollout = [{"bench": "generate", **failure(torch_stage)}]

    train = []
    names = [n for n in by if n.startswith("train_")]
    for name in names:
        lo = longrl_train(out, by[name], a.peak_tflops)
        batch, seq = lo.get("batch"), lo.get("seq_len")
        if batch is None:  # failed run: the shape from its command line
            toks = shlex.split(by[name]["cmd"])
            get = lambda flag, d=None: toks[toks.index(flag) + 1] if flag in toks else d  # noqa: E731
            batch, seq = int(get("--batch", 1)), int(get("--seq-len", 0))
            lo.update(batch=batch, seq_len=seq, gradient_checkpointing="--gradient-checkpointing" in toks,
                      model=get("--model", ""))
        to = next((r for r in torch_train if r.get("batch") == batch and r.get("seq_len") == seq), None)
        if to is None and torch_stage:
            to = {"framework": "torch", **failure(torch_stage)} if torch_stage["status"] != "ok" else None
        train.append({"batch": batch, "seq_len": seq, "gradient_checkpointing": lo.get("gradient_checkpointing"),
                      "longrl": lo, "torch": to})
    for r in torch_train:  # torch shapes without a longrl stage
        if not any(p["batch"] == r.get("batch") and p["seq_len"] == r.get("seq_len") for p in train):
            train.append({"batch": r.get("batch"), "seq_len": r.get("seq_len"),
                          "gradient_checkpointing": r.get("gradient_checkpointing"), "longrl": None, "torch": r})

    par = parity(out, a.tol)
    par["model"] = a.parity_model
    rep = {
        "schema": "longrl.gpu_check/1",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "env": env,
        "device": a.device,
        "rl_config": a.rl_config,
        "budget_s": a.budget,
        "total_s": a.total,
        "peak_tflops": a.peak_tflops,
        "flops_formula": ref.FLOPS_FORMULA,
        "parity": par,
        "bench_rl": rl,
        "train": train,
        "rollout": rollout,
        "stages": stages,
        "failed_stages": [s["name"] for s in stages if s["status"] != "ok"],
    }
    with open(os.path.join(out, "gpu_check.json"), "w") as f:
        json.dump(rep, f, indent=1)
        f.write("\n")
    md = markdown(rep)
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(md)
    print(md, end="")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("inputs", "rescore", "parity", "combine"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--tol", type=float, default=5e-3)
        s.add_argument("--model", default=os.path.join(ROOT, "models", "tiny-r1-distill"))
        s.add_argument("--parity-model", default="models/tiny-r1-distill")
        s.add_argument("--peak-tflops", type=float, default=ref.H100_BF16_DENSE_TFLOPS)
        s.add_argument("--device", default="cuda", help="longrl's device in the run")
        s.add_argument("--rl-config", default="configs/tiny-rl.toml")
        s.add_argument("--budget", type=float, default=None)
        s.add_argument("--total", type=float, default=None)
    a = p.parse_args()
    return {"inputs": cmd_inputs, "rescore": cmd_rescore, "parity": cmd_parity, "combine": cmd_combine}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
