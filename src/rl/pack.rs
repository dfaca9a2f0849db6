//! The pack stage: once per step, the kept groups are cut into mini-batches (one optimiser step
//! each) and micro-batches (by a token budget), and every micro-batch is packed into device
//! tensors: inputs, targets, behaviour and reference log-probs, advantages and the loss mask.
//! Every PPO epoch then reuses them.
//!
//! The reference log-probs are computed here too (on the device, per group, and kept there); a
//! rollout of this worker without them is an error.

use burn::tensor::Tensor;

use super::config::RlConfig;
use super::groups::{Group, Rollout};
use super::loss::AggScale;
use crate::data::PreparedPrompt;
use crate::error::{Error, Result};
use crate::model::{ModelBackend, Qwen2ForCausalLM, TrainBackend};
use crate::train::{token_budget_batches, Packed, Sequence};

/// One micro-batch on the device: everything its loss needs except the policy's log-probs.
pub(crate) struct MicroBatch<B: TrainBackend> {
    /// Inputs and targets of the forward pass.
    pub packed: Packed<B>,
    /// `[rows, R]` behaviour log-probs.
    pub old_logp: Tensor<B, 2>,
    /// `[rows, R]` advantages (each sequence's, broadcast over its tokens).
    pub advantages: Tensor<B, 2>,
    /// `[rows, R]` 1 at the response tokens that count, 0 elsewhere.
    pub mask: Tensor<B, 2>,
    /// `[rows, R]` reference log-probs (0 at padding), when the loss has a KL term.
    pub ref_logp: Option<Tensor<B, 2>>,
}

/// One mini-batch as this worker sees it.
pub(crate) enum MiniBatch<B: TrainBackend> {
    /// No loss token on any worker: no update.
    Empty,
    /// No sequence of this worker in the mini-batch (loss tokens on others): it sends zero
    /// gradients.
    Others,
    /// This worker's micro-batches, with the normalisers of the whole mini-batch (all workers).
    Mine {
        /// Token and sequence counts of the whole mini-batch.
        scale: AggScale,
        /// This worker's micro-batches, in order.
        micro_batches: Vec<MicroBatch<B>>,
    },
}

/// The pack stage's output: the step's mini-batches, in order.
pub(crate) struct PackedStep<B: TrainBackend> {
    /// One per `ppo_mini_batch_size` groups.
    pub mini_batches: Vec<MiniBatch<B>>,
}

/// Reference log-probs of this worker's rollouts, per group then rollout, each `[1, len]` on the
/// device (none for other workers' groups, nor for the rollouts AEPO left out).
pub(crate) struct ReferenceLogprobs<B: ModelBackend> {
    /// Per group of the step, its rollouts' log-probs (empty for another worker's group).
    pub per_group: Vec<Vec<Tensor<B, 2>>>,
}

/// The sequences of this worker's groups among `groups`, flattened in order, without the
/// rollouts AEPO left out of the update.
pub(crate) fn sequences<'a>(
    groups: &'a [Group],
    prompts: &'a [PreparedPrompt],
) -> Vec<(Sequence<'a>, &'a Rollout)> {
    groups
        .iter()
        .filter(|g| g.mine)
        .flat_map(|g| {
            g.rollouts.iter().filter(|r| !r.aepo_masked).map(move |r| {
                (
                    Sequence {
                        prompt: &prompts[g.prompt].ids,
                        response: &r.response,
                    },
                    r,
                )
            })
        })
        .collect()
}

/// Reference log-probs of every rollout of this worker's groups, computed group by group (each
/// group's sequences cut into micro-batches by the token budget), kept on the device.
pub(crate) fn reference_logprobs<B: ModelBackend>(
    reference: &Qwen2ForCausalLM<B>,
    groups: &[Group],
    prompts: &[PreparedPrompt],
    pad: u32,
    config: &RlConfig,
    device: &B::Device,
) -> Result<ReferenceLogprobs<B>> {
    let shapes = config.shapes.resolve::<B>();
    let mut per_group = Vec::with_capacity(groups.len());
    for g in groups {
        if !g.mine {
            per_group.push(Vec::new());
            continue;
        }
        let seqs = sequences(std::slice::from_ref(g), prompts);
        let plain: Vec<Sequence<'_>> = seqs.iter().map(|(s, _)| *s).collect();
        let mut per_rollout: Vec<Option<Tensor<B, 2>>> = vec![None; plain.len()];
        for mb in token_budget_batches(&plain, config.micro_batch_tokens) {
            let part: Vec<Sequence<'_>> = mb.iter().map(|&i| plain[i]).collect();
            let packed = Packed::<B>::with_shapes(&part, pad, &shapes, device);
            let (logp, _) =
                packed.logprobs(reference, config.temperature, config.logits_chunk, false)?;
            for (row, &i) in mb.iter().enumerate() {
                let len = plain[i].response.len();
                per_rollout[i] = Some(logp.clone().slice([row..row + 1, 0..len]));
            }
        }
        let per_rollout = per_rollout
            .into_iter()
            .map(|t| t.ok_or_else(|| missing_reference(g.prompt)))
            .collect::<Result<_>>()?;
        per_group.push(per_rollout);
    }
    Ok(ReferenceLogprobs { per_group })
}

fn missing_reference(prompt: usize) -> Error {
    Error::Invalid(format!(
        "rl: no reference log-probs for a rollout of prompt {prompt} (the KL term needs one per rollout)"
    ))
}

/// What the pack stage needs besides the groups.
pub(crate) struct PackContext<'a> {
    /// The run's RL settings.
    pub config: &'a RlConfig,
    /// Every prompt of the run.
    pub prompts: &'a [PreparedPrompt],
    /// Padding id.
    pub pad: u32,
}

/// Packs the step's groups: mini-batches of `ppo_mini_batch_size` groups, each cut into
/// micro-batches by `micro_batch_tokens`. `refs` must hold every rollout of this worker when given.
pub(crate) fn pack<B: TrainBackend>(
    groups: &[Group],
    refs: Option<&ReferenceLogprobs<B::InnerBackend>>,
    ctx: &PackContext<'_>,
    device: &B::Device,
) -> Result<PackedStep<B>> {
    let size = ctx.config.ppo_mini_batch_size;
    let mini_batches = groups
        .chunks(size)
        .enumerate()
        .map(|(mb_index, mini)| {
            let refs = match refs {
                Some(r) => {
                    let first = mb_index * size;
                    let part = r.per_group.get(first..first + mini.len()).ok_or_else(|| {
                        Error::Invalid(format!(
                            "rl: reference log-probs cover {} groups, the step has {}",
                            r.per_group.len(),
                            groups.len()
                        ))
                    })?;
                    Some(part)
                }
                None => None,
            };
            pack_mini_batch(mini, refs, ctx, device)
        })
        .collect::<Result<_>>()?;
    Ok(PackedStep { mini_batches })
}

/// Packs one mini-batch (`refs`: the reference log-probs of its groups).
fn pack_mini_batch<B: TrainBackend>(
    groups: &[Group],
    refs: Option<&[Vec<Tensor<B::InnerBackend, 2>>]>,
    ctx: &PackContext<'_>,
    device: &B::Device,
) -> Result<MiniBatch<B>> {
    let config = ctx.config;
    let seqs = sequences(groups, ctx.prompts);
    let truncated_out = |r: &Rollout| config.mask_truncated_completions && r.truncated;
    let counts = |r: &Rollout| !(r.aepo_masked || truncated_out(r));
    let all = || {
        groups
            .iter()
            .flat_map(|g| &g.rollouts)
            .filter(|r| counts(r))
    };
    let tokens: usize = all().map(|r| r.len).sum();
    let sequences_counted = all().count();
    if tokens == 0 {
        return Ok(MiniBatch::Empty);
    }
    if seqs.is_empty() {
        return Ok(MiniBatch::Others);
    }
    let refs: Option<Vec<&Tensor<B::InnerBackend, 2>>> = match refs {
        Some(r) => {
            let mut flat = Vec::with_capacity(seqs.len());
            for (g, per_rollout) in groups.iter().zip(r).filter(|(g, _)| g.mine) {
                if per_rollout.len() != g.rollouts.iter().filter(|r| !r.aepo_masked).count() {
                    return Err(missing_reference(g.prompt));
                }
                flat.extend(per_rollout);
            }
            Some(flat)
        }
        None => None,
    };
    let scale = AggScale {
        tokens: tokens as f64,
        sequences: sequences_counted as f64,
        norm_constant: config.max_response_length as f64,
    };
    let plain: Vec<Sequence<'_>> = seqs.iter().map(|(s, _)| *s).collect();
    let shapes = config.shapes.resolve::<B>();
    let mut micro_batches = Vec::new();
    for mb in token_budget_batches(&plain, config.micro_batch_tokens) {
        let part: Vec<Sequence<'_>> = mb.iter().map(|&i| plain[i]).collect();
        let packed = Packed::<B>::with_shapes(&part, ctx.pad, &shapes, device);
        let rollouts: Vec<&Rollout> = mb.iter().map(|&i| seqs[i].1).collect();
        let old: Vec<Vec<f32>> = rollouts.iter().map(|r| r.old_logp.clone()).collect();
        let adv: Vec<Vec<f32>> = rollouts
            .iter()
            .map(|r| vec![r.advantage as f32; r.response.len()])
            .collect();
        let keep: Vec<Vec<f32>> = rollouts
            .iter()
            .map(|r| vec![if counts(r) { 1.0 } else { 0.0 }; r.response.len()])
            .collect();
        let ref_logp = match &refs {
            Some(refs) => {
                let rows: Vec<&Tensor<B::InnerBackend, 2>> = mb.iter().map(|&i| refs[i]).collect();
                Some(reference_grid::<B>(&rows, &packed, device)?)
            }
            None => None,
        };
        micro_batches.push(MicroBatch {
            old_logp: packed.response_grid(&old, device),
            advantages: packed.response_grid(&adv, device),
            mask: packed.response_grid(&keep, device),
            ref_logp,
            packed,
        });
    }
    Ok(MiniBatch::Mine {
        scale,
        micro_batches,
    })
}

/// The `[rows, R]` grid of a micro-batch's reference log-probs (each row's values, then 0 at the
/// padding), assembled on the device.
pub(crate) fn reference_grid<B: TrainBackend>(
    rows: &[&Tensor<B::InnerBackend, 2>],
    packed: &Packed<B>,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let r = packed.response_cols;
    let mut padded = Vec::with_capacity(rows.len());
    for (&t, &len) in rows.iter().zip(&packed.response_lens) {
        let [one, n] = t.dims();
        if one != 1 || n != len {
            return Err(Error::Invalid(format!(
                "rl: reference log-probs of shape [{one}, {n}] for a response of {len} tokens"
            )));
        }
        padded.push(if len < r {
            Tensor::cat(vec![t.clone(), Tensor::zeros([1, r - len], device)], 1)
        } else {
            t.clone()
        });
    }
    if packed.rows > rows.len() {
        padded.push(Tensor::zeros([packed.rows - rows.len(), r], device));
    }
    Ok(Tensor::from_inner(Tensor::cat(padded, 0)))
}
