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
    let (outputs, stats) = rewarder.reward(&items)?;
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
                aepo_masked: false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Sample;
    use crate::reward::{RewardOutput, TaskKind};
    use crate::rl::rollout::PromptSamples;

    /// Score: the response's length; accurate at 2 tokens or more.
    struct ByLength;

    impl Rewarder for ByLength {
        fn reward(&self, items: &[RewardItem<'_>]) -> Result<(Vec<RewardOutput>, RewardStats)> {
            let out = items
                .iter()
                .map(|it| {
                    let n = it.response_ids.len();
                    RewardOutput::from_score(n as f64, n >= 2)
                })
                .collect();
            let stats = RewardStats {
                items: items.len(),
                ..RewardStats::default()
            };
            Ok((out, stats))
        }
    }

    fn sample(ids: &[u32], finish_reason: FinishReason) -> Sample {
        Sample {
            output_ids: ids.to_vec(),
            logprobs: ids.iter().map(|&t| -(t as f32)).collect(),
            finish_reason,
            text: None,
        }
    }

    #[test]
    fn samples_become_rewarded_rollouts_in_their_batch_slots_then_groups_in_batch_order() {
        let prompts: Vec<PreparedPrompt> = (0..3)
            .map(|index| PreparedPrompt {
                index,
                id: format!("p{index}"),
                text: String::new(),
                ids: vec![1, 2],
                task: TaskKind::Qa,
                answer: String::new(),
            })
            .collect();
        // This worker generated slots 0 and 2 of a batch of three (prompts 2, 0).
        let rollouts = Rollouts {
            prompts: vec![
                PromptSamples {
                    slot: 0,
                    prompt: 2,
                    samples: vec![
                        sample(&[5], FinishReason::Stop),
                        sample(&[6, 7], FinishReason::Length),
                    ],
                },
                PromptSamples {
                    slot: 2,
                    prompt: 0,
                    samples: vec![
                        sample(&[8, 9, 10], FinishReason::Stop),
                        sample(&[11], FinishReason::Stop),
                    ],
                },
            ],
            elapsed: Duration::ZERO,
        };
        let scored = score(&ByLength, &prompts, rollouts, 3).unwrap();
        assert_eq!(scored.stats.items, 4);
        assert!(scored.own[1].is_none());
        let slot0 = scored.own[0].as_ref().unwrap();
        assert_eq!(slot0[1].response, vec![6, 7]);
        assert_eq!(slot0[1].old_logp, vec![-6.0, -7.0]);
        assert_eq!((slot0[1].len, slot0[1].score, slot0[1].acc), (2, 2.0, true));
        assert!(slot0[1].truncated && !slot0[0].truncated && !slot0[0].acc);

        // A single worker owns every slot of its batches; here slot 1 is missing: an error.
        let w = Worker::single(crate::DeviceSpec::best_available());
        let device = Default::default();
        let own = scored.own.clone();
        assert!(share::<burn::backend::Flex>(own, &[2, 1, 0], 2, &w, "t", &device).is_err());
        let mut own = scored.own;
        own.remove(1);
        let groups = share::<burn::backend::Flex>(own, &[2, 0], 2, &w, "t", &device).unwrap();
        let prompts_of: Vec<usize> = groups.iter().map(|g| g.prompt).collect();
        assert_eq!(prompts_of, vec![2, 0]);
        assert!(groups.iter().all(|g| g.mine && g.rollouts.len() == 2));
        assert_eq!(groups[1].rollouts[0].len, 3);
    }
}
