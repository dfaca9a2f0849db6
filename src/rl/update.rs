//! The update stage: `ppo_epochs` passes over the packed mini-batches, one optimiser step each.
//! A mini-batch's gradient is accumulated over its micro-batches (and summed over workers) and
//! clipped with the global norm; a non-finite loss or norm skips the step, which never reaches
//! the weights nor the optimiser state.

use burn::optim::{GradientsAccumulator, GradientsParams};

use super::config::RlConfig;
use super::exchange::sum_one;
use super::loss::{policy_loss, AggScale, PolicyLossInputs, PolicyLossStats};
use super::pack::{MicroBatch, MiniBatch, PackedStep};
use crate::distributed::Worker;
use crate::error::Result;
use crate::model::{Qwen2ForCausalLM, TrainBackend};
use crate::train::{clip_grad_norm, AdamWOptimizer};

/// The update stage's output: what the step's optimiser steps did.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UpdateStats {
    /// Loss statistics summed over the applied updates (all workers).
    pub loss: PolicyLossStats,
    /// Gradient norm (before clipping) of every applied update.
    pub grad_norms: Vec<f64>,
    /// Learning rate of the last applied update (0 when none was).
    pub lr: f64,
    /// Updates skipped for a non-finite loss or gradient norm.
    pub skipped_updates: usize,
}

/// What the update stage needs besides the policy, the optimiser and the batch.
pub(crate) struct UpdateContext<'a> {
    /// The run's RL settings.
    pub config: &'a RlConfig,
    /// This worker.
    pub worker: &'a Worker,
    /// The 0-based step (for the learning rate and messages).
    pub step: usize,
    /// Steps of the run (for the learning rate).
    pub total_steps: usize,
}

/// Runs `ppo_epochs` passes over `packed`; returns the updated policy and the statistics.
pub(crate) fn update<B: TrainBackend>(
    mut policy: Qwen2ForCausalLM<B>,
    optim: &mut AdamWOptimizer<B, Qwen2ForCausalLM<B>>,
    packed: &PackedStep<B>,
    ctx: &UpdateContext<'_>,
    device: &B::Device,
) -> Result<(Qwen2ForCausalLM<B>, UpdateStats)> {
    let (config, worker, step) = (ctx.config, ctx.worker, ctx.step);
    let mut out = UpdateStats::default();
    for _epoch in 0..config.ppo_epochs {
        for mini in &packed.mini_batches {
            let (mut grads, mut stats) = match mini {
                MiniBatch::Empty => continue,
                // No group of this worker: it sends zeros (see `Worker::sum_grads`).
                MiniBatch::Others => (GradientsParams::new(), PolicyLossStats::default()),
                MiniBatch::Mine {
                    scale,
                    micro_batches,
                } => mini_batch_grads(&policy, micro_batches, scale, config)?,
            };
            if worker.world > 1 {
                let what = format!("step {}: summing gradients", step + 1);
                grads = worker.sum_grads::<B, _>(&what, &policy, grads, device)?;
                let what = format!("step {}: summing loss statistics", step + 1);
                stats = sum_one::<_, B::InnerBackend>(worker, &what, &stats, device)?;
            }
            let norm = clip_grad_norm::<B, _>(&policy, &mut grads, config.optim.max_grad_norm);
            if !norm.is_finite() || !stats.pg_loss.is_finite() {
                out.skipped_updates += 1;
                log::warn!(
                    "step {}: non-finite loss ({}) or gradient norm ({norm}): update skipped",
                    step + 1,
                    stats.pg_loss
                );
                continue;
            }
            out.loss.add(&stats);
            out.grad_norms.push(norm);
            out.lr = config.optim.lr_at(step, ctx.total_steps);
            policy = optim.step(out.lr, policy, grads);
        }
    }
    Ok((policy, out))
}

/// This worker's gradients of one mini-batch, accumulated over its micro-batches, and their loss
/// statistics. The loss is normalised by the whole mini-batch's counts (`scale`), so the
/// micro-batches' (and the workers') gradients sum to the mini-batch's.
pub(crate) fn mini_batch_grads<B: TrainBackend>(
    policy: &Qwen2ForCausalLM<B>,
    micro_batches: &[MicroBatch<B>],
    scale: &AggScale,
    config: &RlConfig,
) -> Result<(GradientsParams, PolicyLossStats)> {
    let mut stats = PolicyLossStats::default();
    let mut acc = GradientsAccumulator::<Qwen2ForCausalLM<B>>::new();
    for mb in micro_batches {
        let (logp, entropy) =
            mb.packed
                .logprobs(policy, config.temperature, config.logits_chunk, true)?;
        let inputs = PolicyLossInputs {
            logp,
            old_logp: mb.old_logp.clone(),
            advantages: mb.advantages.clone(),
            mask: mb.mask.clone(),
            ref_logp: mb.ref_logp.clone(),
            entropy,
        };
        let (loss, s) = policy_loss(inputs, &config.loss, scale);
        stats.add(&s);
        acc.accumulate(policy, GradientsParams::from_grads(loss.backward(), policy));
    }
    Ok((acc.grads(), stats))
}
