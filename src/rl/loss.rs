//! The GRPO / DAPO policy loss: the clipped surrogate with separate lower and upper clip ranges
//! (clip-higher), KL to a reference policy with verl's estimators, an entropy bonus, and the loss
//! aggregation modes that frameworks disagree on, made explicit.
//!
//! Every term is computed per response token on a `[rows, cols]` grid with a 0/1 mask. For
//! gradient accumulation (and data parallelism) the normalisers are passed in: each micro-batch
//! divides by the token or sequence count of the whole mini-batch, so the accumulated gradient is
//! exactly that of the mini-batch loss.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{backend::Backend, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How per-token losses are reduced to the loss (verl's `loss_agg_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LossAggMode {
    /// Sum over every response token of the batch / their count (DAPO; TRL's `dapo`).
    #[default]
    #[serde(rename = "token-mean")]
    TokenMean,
    /// Mean over each sequence's tokens, then mean over sequences (GRPO).
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
    /// Sum over each sequence's tokens / a constant (the response limit), then mean over
    /// sequences (Dr. GRPO).
    #[serde(rename = "seq-mean-token-sum-norm")]
    SeqMeanTokenSumNorm,
}

impl LossAggMode {
    /// The option's value as written in configs.
    pub fn name(self) -> &'static str {
        match self {
            LossAggMode::TokenMean => "token-mean",
            LossAggMode::SeqMeanTokenMean => "seq-mean-token-mean",
            LossAggMode::SeqMeanTokenSumNorm => "seq-mean-token-sum-norm",
        }
    }
}

impl fmt::Display for LossAggMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LossAggMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "token-mean" => Ok(Self::TokenMean),
            "seq-mean-token-mean" => Ok(Self::SeqMeanTokenMean),
            "seq-mean-token-sum-norm" => Ok(Self::SeqMeanTokenSumNorm),
            _ => Err(Error::Invalid(format!(
                "unknown loss_agg_mode {s:?}: expected token-mean, seq-mean-token-mean or seq-mean-token-sum-norm"
            ))),
        }
    }
}

/// Estimator of KL(policy || reference) per token (verl's `kl_loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// k1: `logp - ref_logp` (verl `kl`).
    #[serde(alias = "kl")]
    K1,
    /// `|logp - ref_logp|` (verl `abs`).
    Abs,
    /// k2: `0.5 (logp - ref_logp)^2` (verl `mse`).
    #[serde(alias = "mse")]
    K2,
    /// k3: `exp(ref - logp) - (ref - logp) - 1`, clamped to [-10, 10] (verl `low_var_kl`).
    #[default]
    #[serde(alias = "low_var_kl")]
    K3,
}

/// Settings of the policy loss (names as TRL's GRPOConfig / verl).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyLossConfig {
    /// Lower clip range: the ratio is kept above `1 - epsilon`.
    pub epsilon: f64,
    /// Upper clip range: the ratio is kept below `1 + epsilon_high` (DAPO's clip-higher: 0.28).
    pub epsilon_high: f64,
    /// How token losses are reduced.
    pub loss_agg_mode: LossAggMode,
    /// KL coefficient; 0 loads no reference model.
    pub beta: f64,
    /// KL estimator.
    pub kl_estimator: KlEstimator,
    /// Entropy bonus coefficient (the loss subtracts `entropy_coeff * entropy`).
    pub entropy_coeff: f64,
    /// AEPO (QwenLong-L1.5's Adaptive Entropy-Controlled Policy Optimization): leave the rollouts
    /// with a negative advantage out of the update while the batch entropy is high (see
    /// `rl/aepo.rs`).
    pub aepo: bool,
    /// AEPO's lower entropy bound (nats per token): below it the negatives train again.
    pub aepo_entropy_low: f64,
    /// AEPO's upper entropy bound (nats per token): above it the negatives are masked.
    pub aepo_entropy_high: f64,
}

impl Default for PolicyLossConfig {
    /// QwenLong-L1's public script: 0.2 / 0.2, token-mean, beta 0, entropy 0.001. AEPO is off;
    /// its bounds are read off QwenLong-L1.5's Figure 11 (Qwen3-30B-A3B-Thinking: negatives
    /// masked from about 0.25 nats, back below about 0.14); the paper states no values.
    fn default() -> Self {
        Self {
            epsilon: 0.2,
            epsilon_high: 0.2,
            loss_agg_mode: LossAggMode::TokenMean,
            beta: 0.0,
            kl_estimator: KlEstimator::K3,
            entropy_coeff: 0.001,
            aepo: false,
            aepo_entropy_low: 0.14,
            aepo_entropy_high: 0.25,
        }
    }
}

impl PolicyLossConfig {
    /// Checks the ranges of every option, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &str, v: f64, want: &str| {
            Err(Error::Invalid(format!("{name} = {v}: expected {want}")))
        };
        if !(self.epsilon >= 0.0 && self.epsilon < 1.0) {
            return bad("epsilon", self.epsilon, "a number in [0, 1)");
        }
        if !(self.epsilon_high >= 0.0 && self.epsilon_high.is_finite()) {
            return bad("epsilon_high", self.epsilon_high, "a number >= 0");
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad("beta", self.beta, "a number >= 0");
        }
        if !self.entropy_coeff.is_finite() {
            return bad("entropy_coeff", self.entropy_coeff, "a finite number");
        }
        if !(self.aepo_entropy_low >= 0.0 && self.aepo_entropy_low.is_finite()) {
            return bad("aepo_entropy_low", self.aepo_entropy_low, "a number >= 0");
        }
        if !(self.aepo_entropy_high >= self.aepo_entropy_low && self.aepo_entropy_high.is_finite())
        {
            return bad(
                "aepo_entropy_high",
                self.aepo_entropy_high,
                &format!("a number >= aepo_entropy_low ({})", self.aepo_entropy_low),
            );
        }
        Ok(())
    }
}

/// The denominators of the aggregation, counted over the whole mini-batch (all micro-batches, all
/// devices), so per-micro-batch losses add up to the mini-batch loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggScale {
    /// Response tokens in the mini-batch (token-mean).
    pub tokens: f64,
    /// Sequences in the mini-batch (the seq-mean modes).
    pub sequences: f64,
    /// The constant of `seq-mean-token-sum-norm` (the response limit in tokens).
    pub norm_constant: f64,
}

impl AggScale {
    /// The normalisers of a single batch with `mask` `[rows, cols]`.
    pub fn of_mask<B: Backend>(mask: &Tensor<B, 2>, norm_constant: f64) -> Self {
        let [rows, _] = mask.dims();
        Self {
            tokens: mask.clone().sum().into_scalar_f64(),
            sequences: rows as f64,
            norm_constant,
        }
    }
}

trait ScalarF64 {
    fn into_scalar_f64(self) -> f64;
}

impl<B: Backend> ScalarF64 for Tensor<B, 1> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data().iter::<f64>().next().unwrap_or(0.0)
    }
}

/// Reduces per-token values `x` `[rows, cols]` under `mask` with `mode`, scaled by `scale`.
pub fn aggregate<B: Backend>(
    x: Tensor<B, 2>,
    mask: Tensor<B, 2>,
    mode: LossAggMode,
    scale: &AggScale,
) -> Tensor<B, 1> {
    let masked = x * mask.clone();
    match mode {
        LossAggMode::TokenMean => masked.sum().div_scalar(scale.tokens.max(1.0)),
        LossAggMode::SeqMeanTokenMean => {
            let per_seq = masked.sum_dim(1) / mask.sum_dim(1).clamp_min(1.0);
            per_seq.sum().div_scalar(scale.sequences.max(1.0))
        }
        LossAggMode::SeqMeanTokenSumNorm => masked
            .sum()
            .div_scalar(scale.norm_constant.max(1.0) * scale.sequences.max(1.0)),
    }
}

/// Per-token KL estimate of the policy against the reference.
pub fn kl_penalty<B: Backend>(
    logp: Tensor<B, 2>,
    ref_logp: Tensor<B, 2>,
    estimator: KlEstimator,
) -> Tensor<B, 2> {
    let diff = logp - ref_logp;
    match estimator {
        KlEstimator::K1 => diff,
        KlEstimator::Abs => diff.abs(),
        KlEstimator::K2 => diff.powi_scalar(2).mul_scalar(0.5),
        KlEstimator::K3 => {
            let kl = diff.neg();
            (kl.clone().exp() - kl).sub_scalar(1.0).clamp(-10.0, 10.0)
        }
    }
}

/// The inputs of one (micro-)batch, all `[rows, cols]` on the response-token grid.
pub struct PolicyLossInputs<B: Backend> {
    /// Log-probs of the sampled tokens under the current policy (with gradient).
    pub logp: Tensor<B, 2>,
    /// Log-probs under the policy that sampled them (no gradient).
    pub old_logp: Tensor<B, 2>,
    /// Per-token advantages (the sequence's advantage broadcast over its tokens).
    pub advantages: Tensor<B, 2>,
    /// 1 for response tokens that count, 0 for padding (and masked rollouts).
    pub mask: Tensor<B, 2>,
    /// Reference log-probs, when `beta > 0`.
    pub ref_logp: Option<Tensor<B, 2>>,
    /// Per-token entropy of the policy (with gradient when `entropy_coeff != 0`).
    pub entropy: Option<Tensor<B, 2>>,
}

/// Sums of one micro-batch's statistics (host values), to be added over micro-batches and devices
/// and divided by `tokens` for the token means.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyLossStats {
    /// Response tokens counted.
    pub tokens: f64,
    /// The policy-gradient part of the loss (already scaled by [`AggScale`]).
    pub pg_loss: f64,
    /// Tokens where the clipped term was taken (verl's `pg_clipfrac` numerator).
    pub clipped: f64,
    /// Tokens clipped below (ratio < 1 - epsilon with A < 0).
    pub clipped_low: f64,
    /// Tokens clipped above (ratio > 1 + epsilon_high with A > 0).
    pub clipped_high: f64,
    /// Sum of `old_logp - logp` (verl's `ppo_kl` numerator).
    pub ppo_kl: f64,
    /// Sum of the per-token KL to the reference.
    pub kl: f64,
    /// The KL part of the loss (scaled).
    pub kl_loss: f64,
    /// Sum of per-token entropies.
    pub entropy: f64,
}

impl PolicyLossStats {
    /// Adds another micro-batch's statistics.
    pub fn add(&mut self, o: &PolicyLossStats) {
        self.tokens += o.tokens;
        self.pg_loss += o.pg_loss;
        self.clipped += o.clipped;
        self.clipped_low += o.clipped_low;
        self.clipped_high += o.clipped_high;
        self.ppo_kl += o.ppo_kl;
        self.kl += o.kl;
        self.kl_loss += o.kl_loss;
        self.entropy += o.entropy;
    }
}

fn masked_sum<B: Backend>(x: Tensor<B, 2>, mask: &Tensor<B, 2>) -> f64 {
    (x * mask.clone()).sum().into_scalar_f64()
}

/// The policy loss of one micro-batch and its statistics:
/// `pg_loss - entropy_coeff * entropy + beta * kl`, each aggregated with the configured mode.
///
/// Per token, with `rho = exp(logp - old_logp)` (the log-ratio clamped to [-20, 20] as verl does):
/// `pg = max(-A rho, -A clip(rho, 1 - epsilon, 1 + epsilon_high))`. Where the clipped term is taken
/// the token's gradient is zero.
pub fn policy_loss<B: Backend>(
    inputs: PolicyLossInputs<B>,
    config: &PolicyLossConfig,
    scale: &AggScale,
) -> (Tensor<B, 1>, PolicyLossStats) {
    let PolicyLossInputs {
        logp,
        old_logp,
        advantages,
        mask,
        ref_logp,
        entropy,
    } = inputs;
    let mode = config.loss_agg_mode;
    let log_ratio = (logp.clone() - old_logp).clamp(-20.0, 20.0);
    let ratio = log_ratio.clone().exp();
    let pg1 = advantages.clone().neg() * ratio.clone();
    let pg2 = advantages.clone().neg()
        * ratio
            .clone()
            .clamp(1.0 - config.epsilon, 1.0 + config.epsilon_high);
    let pg = pg1.clone().max_pair(pg2.clone());

    let mut stats = PolicyLossStats {
        tokens: mask.clone().sum().into_scalar_f64(),
        clipped: masked_sum(pg2.greater(pg1).float(), &mask),
        clipped_low: masked_sum(
            ratio.clone().lower_elem(1.0 - config.epsilon).float()
                * advantages.clone().lower_elem(0.0).float(),
            &mask,
        ),
        clipped_high: masked_sum(
            ratio.greater_elem(1.0 + config.epsilon_high).float()
                * advantages.greater_elem(0.0).float(),
            &mask,
        ),
        ppo_kl: masked_sum(log_ratio.neg(), &mask),
        ..PolicyLossStats::default()
    };
    let pg_loss = aggregate(pg, mask.clone(), mode, scale);
    stats.pg_loss = pg_loss.clone().into_scalar_f64();
    let mut loss = pg_loss;
    if let Some(entropy) = entropy {
        stats.entropy = masked_sum(entropy.clone().detach(), &mask);
        if config.entropy_coeff != 0.0 {
            let ent = aggregate(entropy, mask.clone(), mode, scale);
            loss = loss - ent.mul_scalar(config.entropy_coeff);
        }
    }
    if let (Some(ref_logp), true) = (ref_logp, config.beta > 0.0) {
        let kl = kl_penalty(logp, ref_logp, config.kl_estimator);
        stats.kl = masked_sum(kl.clone().detach(), &mask);
        let kl_loss = aggregate(kl, mask, mode, scale);
        stats.kl_loss = kl_loss.clone().into_scalar_f64();
        loss = loss + kl_loss.mul_scalar(config.beta);
    }
    (loss, stats)
}
