//! The score stage: samples -> rewards (rule verifiers, the judge, overlong shaping: whatever the
//! rewarder does), then every worker learns every rollout's numbers, so all of them see the same
//! groups in the same order.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

use super::exchange::sum_slots;
use super::groups::{Group, Rollout, RolloutNumbers};
use super::rollout::Rollouts;
use crate::data::PreparedPrompt;
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::generate::FinishReason;
use crate::reward::{RewardItem, RewardStats, Rewarder};

/// The score stage's output: this worker's rollouts of a generation batch, rewarded.
pub(crate) struct Scored {
    /// Per batch slot: this worker's rollouts of that prompt (none for another worker's prompt).
    pub own: Vec<Option<Vec<Rollout>>>,
    /// The rewarder's counters over this worker's samples.
    pub stats: RewardStats,
    /// Time spent rewarding.
    pub elapsed: Duration,
}

/// Rewards this worker's samples of a generation batch of `batch_len` prompts.
pub(crate) fn score(
    rewarder: &dyn Rewarder,
    prompts: &[PreparedPrompt],
    rollouts: Rollouts,
    batch_len: usize,
) -> Result<Scored> {
    let t1 = Instant::now();
    let mut items = Vec::new();
    for ps in &rollouts.prompts {
        let p = &prompts[ps.prompt];
        for s in &ps.samples {
            items.push(RewardItem {
                task: p.task,
                response: s.text.as_deref().unwrap_or(""),
                ground_truth: &p.answer,
                question: None,
                prompt: Some(&p.text),
                response_tokens: Some(s.output_ids.len()),
                response_ids: &s.output_ids,
            });
        }
    }
    let expected = items.len();
    let (outputs, stats) = rewarder.reward(&items);
    drop(items);
    let elapsed = t1.elapsed();
    if outputs.len() != expected {
        return Err(Error::Invalid(format!(
            "the rewarder returned {} outputs for {expected} samples",
            outputs.len()
        )));
    }

    let mut outputs = outputs.into_iter();
    let mut own: Vec<Option<Vec<Rollout>>> = vec![None; batch_len];
    for ps in rollouts.prompts {
        let group = ps
            .samples
            .into_iter()
            .zip(outputs.by_ref())
            .map(|(s, o)| Rollout {
                truncated: s.finish_reason == FinishReason::Length,
                len: s.output_ids.len(),
                response: s.output_ids,
                old_logp: s.logprobs,
                reward: o.reward,
                score: o.score,
                acc: o.acc,
                advantage: 0.0,
            })
            .collect();
        own[ps.slot] = Some(group);
    }
    Ok(Scored {
        own,
        stats,
        elapsed,
    })
}

/// Every worker learns every rollout's numbers: the generation batch's groups (prompt indices
/// `batch`), in batch order, each holding its `g` rollouts (tokens only where this worker generated
/// them). `what` names the exchange in errors.
pub(crate) fn share<B: Backend>(
    own: Vec<Option<Vec<Rollout>>>,
    batch: &[usize],
    g: usize,
    worker: &Worker,
    what: &str,
    device: &B::Device,
) -> Result<Vec<Group>> {
    let shared = if worker.world > 1 {
        let numbers: Vec<Option<RolloutNumbers>> = own
            .iter()
            .flat_map(|rollouts| {
                (0..g).map(move |j| {
                    rollouts
                        .as_ref()
                        .and_then(|r| r.get(j))
                        .map(Rollout::numbers)
                })
            })
            .collect();
        let slots: Vec<Option<&RolloutNumbers>> = numbers.iter().map(Option::as_ref).collect();
        sum_slots::<RolloutNumbers, B>(worker, what, &slots, device)?
    } else {
        Vec::new()
    };
    batch
        .iter()
        .zip(own)
        .enumerate()
        .map(|(k, (&p, rollouts))| {
            let mine = rollouts.is_some();
            let rollouts = match rollouts {
                Some(r) => r,
                None => shared
                    .get(k * g..(k + 1) * g)
                    .ok_or_else(|| {
                        Error::Distributed(format!("{what}: no numbers for batch slot {k}"))
                    })?
                    .iter()
                    .map(|&n| Rollout::remote(n))
                    .collect(),
            };
            Ok(Group {
                prompt: p,
                mine,
                rollouts,
            })
        })
        .collect()
}
