//! AEPO, QwenLong-L1.5's Adaptive Entropy-Controlled Policy Optimization (arXiv 2512.12967,
//! §4.4): while the policy's entropy on the training batch is high, the rollouts with a negative
//! advantage are left out of the update (it trains on the positives only, an advantage-weighted
//! online rejection-sampling fine-tuning, which lowers the entropy); once the entropy has fallen
//! below a lower bound they are put back (negative gradients raise it again).
//!
//! The batch entropy is the paper's Eq. 11, the token mean over every response token of the
//! batch `B` (all kept groups, all workers) of the current policy's tempered distribution,
//! measured before the update (verl's `actor/entropy_loss` from its old-log-prob pass, which
//! the public AEPO snippet reads): `H(pi, B) = -1 / sum_i |y_i| * sum_i sum_t sum_v
//! pi(v | c, q, y_i,<t) log pi(v | c, q, y_i,<t)`. Here that is one extra forward pass of the
//! policy over the batch per step ([`batch_entropy`]).
//!
//! The control is a hysteresis ([`next_masking`]): above `aepo_entropy_high` the negatives are
//! masked, below `aepo_entropy_low` they train, in between the previous step's choice holds (the
//! paper's text and its Figure 11, where masking lasts while the entropy falls from about 0.27
//! to 0.13). That one bit ([`AepoState`]) is the controller's state across steps; it is saved in
//! the checkpoint (`RlState::aepo`), so a resumed run masks exactly as an unbroken one.
//!
//! The public snippet differs in two ways, and this module follows the paper's text: it masks
//! only while `low < H < high` (no hysteresis), and it also drops zero-advantage and zero-reward
//! rollouts. A masked rollout here is out of the loss and its normalisers (token and sequence
//! counts), as if removed from the batch, and out of the update's forward pass.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::config::RlConfig;
use super::exchange::{sum_one, Exchanged};
use super::groups::Group;
use super::pack::sequences;
use crate::data::PreparedPrompt;
use crate::distributed::Worker;
use crate::error::Result;
use crate::model::{ModelBackend, Qwen2ForCausalLM};
use crate::shapes::Shapes;
use crate::train::{token_budget_batches, Packed, Sequence};

/// AEPO's state across steps, saved in checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AepoState {
    /// The rollouts with a negative advantage are being left out of the update.
    pub masking: bool,
}

/// What AEPO did in a step (its metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct AepoReport {
    /// The batch entropy before the update (nats per response token).
    pub entropy: f64,
    /// Negatives were masked this step.
    pub masking: bool,
    /// Rollouts masked (all workers).
    pub masked: usize,
}

/// The hysteresis of AEPO: whether negatives are masked at a step whose batch entropy is
/// `entropy`, given whether they were at the previous step (`masking`): `entropy > high` masks,
/// `entropy < low` unmasks, otherwise `masking` holds.
pub fn next_masking(masking: bool, entropy: f64, low: f64, high: f64) -> bool {
    if entropy > high {
        true
    } else if entropy < low {
        false
    } else {
        masking
    }
}

/// Marks every rollout with a negative advantage as left out of the update (`aepo_masked`);
/// returns how many there are.
pub(crate) fn mask_negatives(groups: &mut [Group]) -> usize {
    let mut masked = 0;
    for r in groups.iter_mut().flat_map(|g| &mut g.rollouts) {
        r.aepo_masked = r.advantage < 0.0;
        masked += r.aepo_masked as usize;
    }
    masked
}

/// Sums of per-token entropies and their token count, which workers add up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct EntropySum {
    /// Sum of the entropies of the response tokens.
    pub sum: f64,
    /// Response tokens.
    pub tokens: f64,
}

impl EntropySum {
    /// The token mean (0 without tokens).
    pub fn mean(&self) -> f64 {
        if self.tokens > 0.0 {
            self.sum / self.tokens
        } else {
            0.0
        }
    }
}

impl Exchanged for EntropySum {
    const LEN: usize = 2;

    fn to_array(&self) -> Vec<f64> {
        vec![self.sum, self.tokens]
    }

    fn from_array(v: &[f64]) -> Self {
        EntropySum {
            sum: v[0],
            tokens: v[1],
        }
    }
}

/// The entropy sum of one micro-batch of `seqs` under `policy` (no gradient), packed as the
/// update packs it.
pub(crate) fn micro_batch_entropy<B: ModelBackend>(
    policy: &Qwen2ForCausalLM<B>,
    seqs: &[Sequence<'_>],
    pad: u32,
    shapes: &Shapes,
    config: &RlConfig,
    device: &B::Device,
) -> Result<EntropySum> {
    let packed = Packed::<B>::with_shapes(seqs, pad, shapes, device);
    let (_, entropy) = packed.logprobs(policy, config.temperature, config.logits_chunk, true)?;
    let Some(entropy) = entropy else {
        return Ok(EntropySum::default());
    };
    let ones: Vec<Vec<f32>> = seqs.iter().map(|s| vec![1.0; s.response.len()]).collect();
    let mask: Tensor<B, 2> = packed.response_grid(&ones, device);
    let sum = (entropy * mask).sum().into_data().iter::<f64>().next();
    Ok(EntropySum {
        sum: sum.unwrap_or(0.0),
        tokens: seqs.iter().map(|s| s.response.len()).sum::<usize>() as f64,
    })
}

/// This worker's share of the batch entropy: its groups' rollouts, cut into mini-batches of
/// `ppo_mini_batch_size` groups and micro-batches by `micro_batch_tokens` as the update cuts
/// them (so the shapes are the update's).
pub(crate) fn batch_entropy<B: ModelBackend>(
    policy: &Qwen2ForCausalLM<B>,
    groups: &[Group],
    prompts: &[PreparedPrompt],
    pad: u32,
    config: &RlConfig,
    device: &B::Device,
) -> Result<EntropySum> {
    let shapes = config.shapes.resolve::<B>();
    let mut out = EntropySum::default();
    for mini in groups.chunks(config.ppo_mini_batch_size) {
        let seqs: Vec<Sequence<'_>> = sequences(mini, prompts).iter().map(|(s, _)| *s).collect();
        for mb in token_budget_batches(&seqs, config.micro_batch_tokens) {
            let part: Vec<Sequence<'_>> = mb.iter().map(|&i| seqs[i]).collect();
            let e = micro_batch_entropy(policy, &part, pad, &shapes, config, device)?;
            out.sum += e.sum;
            out.tokens += e.tokens;
        }
    }
    Ok(out)
}

/// What the AEPO stage needs besides the policy, its state and the groups.
pub(crate) struct AepoContext<'a> {
    /// The run's RL settings.
    pub config: &'a RlConfig,
    /// Every prompt of the run.
    pub prompts: &'a [PreparedPrompt],
    /// Padding id.
    pub pad: u32,
    /// This worker.
    pub worker: &'a Worker,
    /// The 0-based step (for messages).
    pub step: usize,
}

/// The AEPO stage, between the advantages and the pack stages: measures the batch entropy of
/// `policy` (all workers), moves `state` on and, while masking, marks the negatives of `groups`.
pub(crate) fn aepo_stage<B: ModelBackend>(
    policy: &Qwen2ForCausalLM<B>,
    state: &mut AepoState,
    groups: &mut [Group],
    ctx: &AepoContext<'_>,
    device: &B::Device,
) -> Result<AepoReport> {
    let config = ctx.config;
    let mut entropy = batch_entropy(policy, groups, ctx.prompts, ctx.pad, config, device)?;
    if ctx.worker.world > 1 {
        let what = format!("step {}: summing the batch entropy (AEPO)", ctx.step + 1);
        entropy = sum_one::<_, B>(ctx.worker, &what, &entropy, device)?;
    }
    let entropy = entropy.mean();
    let loss = &config.loss;
    state.masking = next_masking(
        state.masking,
        entropy,
        loss.aepo_entropy_low,
        loss.aepo_entropy_high,
    );
    let masked = if state.masking {
        mask_negatives(groups)
    } else {
        0
    };
    Ok(AepoReport {
        entropy,
        masking: state.masking,
        masked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::groups::{Rollout, RolloutNumbers};

    #[test]
    fn the_hysteresis_masks_above_high_and_unmasks_below_low() {
        let (low, high) = (0.14, 0.25);
        // An entropy trace like Figure 11's: up, masked past 0.25, held on the way down, back at
        // 0.13, held on the way up again.
        let trace = [0.12, 0.2, 0.26, 0.2, 0.15, 0.13, 0.2, 0.25, 0.251];
        let mut masking = false;
        let got: Vec<bool> = trace
            .iter()
            .map(|&h| {
                masking = next_masking(masking, h, low, high);
                masking
            })
            .collect();
        assert_eq!(
            got,
            [false, false, true, true, true, false, false, false, true]
        );
        // At a bound exactly, the previous choice holds.
        assert!(next_masking(true, low, low, high));
        assert!(!next_masking(false, high, low, high));
    }

    #[test]
    fn masking_marks_the_negative_advantages_only() {
        let rollout = |advantage| Rollout {
            advantage,
            ..Rollout::remote(RolloutNumbers {
                score: 0.0,
                reward: 0.0,
                acc: false,
                truncated: false,
                len: 2,
            })
        };
        let mut groups = vec![Group {
            prompt: 0,
            mine: true,
            rollouts: vec![rollout(0.5), rollout(-0.5), rollout(0.0), rollout(-1e-9)],
        }];
        assert_eq!(mask_negatives(&mut groups), 2);
        let masked: Vec<bool> = groups[0].rollouts.iter().map(|r| r.aepo_masked).collect();
        assert_eq!(masked, [false, true, false, true]);
        let e = EntropySum {
            sum: 3.0,
            tokens: 12.0,
        };
        assert_eq!(EntropySum::from_array(&e.to_array()), e);
        assert_eq!((e.mean(), EntropySum::default().mean()), (0.25, 0.0));
        let state: AepoState = serde_json::from_str(r#"{"masking": true}"#).unwrap();
        assert!(state.masking);
    }
}
