#!/usr/bin/env python3
"""Write tests/fixtures/rl/losses.json: policy-loss values and gradients computed with numpy.

An independent implementation of longrl's GRPO/DAPO loss (src/rl/loss.rs), written from the
formulas of verl's core_algos (clipped surrogate with separate lower/upper clip ranges, k1/abs/k2/k3
KL estimators with k3 clamped to [-10, 10], entropy bonus) and the three aggregation modes:

  token-mean               sum(x * mask) / sum(mask)
  seq-mean-token-mean      mean over rows of sum(x * mask) / max(1, sum(mask))
  seq-mean-token-sum-norm  mean over rows of sum(x * mask) / C        (C = the response limit)

For every case the table holds the inputs, the loss, its parts and statistics, and the analytic
gradient of the loss with respect to the policy log-probs (zero on tokens where the clipped term is
taken). Run from the repository root:

    python scripts/make_loss_table.py
"""

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "rl" / "losses.json"
NORM_CONSTANT = 8.0


def aggregate_weights(mask, mode):
    """d(aggregate)/d(x) per token: aggregate(x) = sum(weights * x)."""
    rows = mask.shape[0]
    if mode == "token-mean":
        return mask / max(mask.sum(), 1.0)
    if mode == "seq-mean-token-mean":
        lengths = np.maximum(mask.sum(axis=1, keepdims=True), 1.0)
        return mask / lengths / rows
    if mode == "seq-mean-token-sum-norm":
        return mask / NORM_CONSTANT / rows
    raise ValueError(mode)


def kl_and_grad(logp, ref, estimator):
    diff = logp - ref
    if estimator == "k1":
        return diff, np.ones_like(diff)
    if estimator == "abs":
        return np.abs(diff), np.sign(diff)
    if estimator == "k2":
        return 0.5 * diff**2, diff
    if estimator == "k3":
        kl = ref - logp
        raw = np.exp(kl) - kl - 1.0
        inside = (raw >= -10.0) & (raw <= 10.0)
        return np.clip(raw, -10.0, 10.0), np.where(inside, 1.0 - np.exp(kl), 0.0)
    raise ValueError(estimator)


def case(name, rng, rows, cols, mode, eps, eps_high, beta, estimator, entropy_coeff, spread):
    logp = -rng.uniform(0.05, 3.0, size=(rows, cols))
    old = logp + rng.normal(0.0, spread, size=(rows, cols))
    ref = logp + rng.normal(0.0, spread, size=(rows, cols))
    adv_rows = rng.normal(0.0, 1.0, size=(rows, 1))
    adv_rows[0, 0] = abs(adv_rows[0, 0]) + 0.5  # one positive and one negative row for sure
    adv_rows[1, 0] = -abs(adv_rows[1, 0]) - 0.5
    adv = np.repeat(adv_rows, cols, axis=1)
    lengths = rng.integers(1, cols + 1, size=rows)
    lengths[0] = cols
    mask = (np.arange(cols)[None, :] < lengths[:, None]).astype(np.float64)
    entropy = rng.uniform(0.0, 4.0, size=(rows, cols))

    log_ratio = np.clip(logp - old, -20.0, 20.0)
    ratio = np.exp(log_ratio)
    pg1 = -adv * ratio
    clipped_ratio = np.clip(ratio, 1.0 - eps, 1.0 + eps_high)
    pg2 = -adv * clipped_ratio
    pg = np.maximum(pg1, pg2)
    in_range = (ratio >= 1.0 - eps) & (ratio <= 1.0 + eps_high)
    # d pg / d logp: through rho when the unclipped term is taken (or the clip is inactive).
    pg_grad = np.where(pg1 >= pg2, -adv * ratio, np.where(in_range, -adv * ratio, 0.0))

    w = aggregate_weights(mask, mode)
    pg_loss = float((w * pg).sum())
    loss = pg_loss
    grad = w * pg_grad
    ent_loss = float((w * entropy).sum())
    if entropy_coeff != 0.0:
        loss -= entropy_coeff * ent_loss
    kl, kl_grad = kl_and_grad(logp, ref, estimator)
    kl_loss = float((w * kl).sum())
    if beta > 0.0:
        loss += beta * kl_loss
        grad = grad + beta * w * kl_grad

    return {
        "name": name,
        "config": {
            "epsilon": eps,
            "epsilon_high": eps_high,
            "loss_agg_mode": mode,
            "beta": beta,
            "kl_estimator": estimator,
            "entropy_coeff": entropy_coeff,
        },
        "norm_constant": NORM_CONSTANT,
        "shape": [rows, cols],
        "logp": logp.ravel().tolist(),
        "old_logp": old.ravel().tolist(),
        "ref_logp": ref.ravel().tolist(),
        "advantages": adv.ravel().tolist(),
        "mask": mask.ravel().tolist(),
        "entropy": entropy.ravel().tolist(),
        "expected": {
            "loss": loss,
            "pg_loss": pg_loss,
            "kl_loss": kl_loss if beta > 0.0 else 0.0,
            "tokens": float(mask.sum()),
            "clipped": float(((pg2 > pg1) * mask).sum()),
            "clipped_low": float(((ratio < 1.0 - eps) & (adv < 0)).astype(float).__mul__(mask).sum()),
            "clipped_high": float(((ratio > 1.0 + eps_high) & (adv > 0)).astype(float).__mul__(mask).sum()),
            "ppo_kl": float((-log_ratio * mask).sum()),
            "kl": float((kl * mask).sum()) if beta > 0.0 else 0.0,
            "entropy": float((entropy * mask).sum()),
            "grad_logp": grad.ravel().tolist(),
            "unclipped_tokens": float((np.where(pg1 >= pg2, 1.0, in_range) * mask).sum()),
        },
    }


def main():
    rng = np.random.default_rng(20261125)
    cases = []
    modes = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
    for mode in modes:
        for eps, eps_high in [(0.2, 0.2), (0.2, 0.28)]:
            cases.append(case(f"pg/{mode}/{eps}-{eps_high}", rng, 4, 6, mode, eps, eps_high, 0.0, "k3", 0.0, 0.4))
        cases.append(case(f"entropy/{mode}", rng, 3, 5, mode, 0.2, 0.28, 0.0, "k3", 0.001, 0.3))
    for estimator in ["k1", "abs", "k2", "k3"]:
        for mode in modes:
            cases.append(case(f"kl/{estimator}/{mode}", rng, 3, 7, mode, 0.2, 0.2, 0.05, estimator, 0.0, 0.5))
    # k3's clamp: reference far from the policy.
    cases.append(case("kl/k3-clamped", rng, 3, 4, "token-mean", 0.2, 0.2, 0.1, "k3", 0.0, 4.0))
    # Heavy clipping on both sides.
    cases.append(case("pg/heavy-clipping", rng, 5, 6, "token-mean", 0.1, 0.1, 0.0, "k3", 0.0, 1.5))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"cases": cases}, indent=None) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
