//! The metrics stage: a step's batch, update statistics, reward counters and timings -> one
//! metrics record under verl's names (`critic/...`, `actor/...`, `response_length/...`,
//! `timing_s/...`).

use std::time::Duration;

use serde_json::json;

use super::aepo::AepoReport;
use super::groups::{Rollout, TrainBatch};
use super::update::UpdateStats;
use crate::reward::RewardStats;

/// Wall-clock times of a step's stages.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StepTimes {
    /// Generating rollouts.
    pub gen: Duration,
    /// Rewarding them.
    pub reward: Duration,
    /// Reference log-probs, packing and the policy update.
    pub update_actor: Duration,
    /// The whole step.
    pub step: Duration,
}

/// Everything a step's metrics record is made of.
pub(crate) struct StepMetrics<'a> {
    /// Steps done (1-based step number).
    pub step: usize,
    /// Passes over the prompts so far.
    pub epoch: f64,
    /// The groups trained on and every rollout generated.
    pub batch: &'a TrainBatch,
    /// The update's statistics.
    pub update: &'a UpdateStats,
    /// The rewarder's counters (all workers).
    pub reward: &'a RewardStats,
    /// What AEPO did (`rl.loss.aepo`; `None` when off).
    pub aepo: Option<AepoReport>,
    /// Stage timings.
    pub times: StepTimes,
}

fn mean(x: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = x.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn std(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x.iter().copied());
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

impl StepMetrics<'_> {
    /// Mean correctness score of every rollout generated this step (kept or filtered).
    pub fn score_mean(&self) -> f64 {
        mean(self.batch.generated.scores.iter().copied())
    }

    /// Mean entropy per loss token of the applied updates.
    pub fn entropy(&self) -> f64 {
        self.update.loss.entropy / self.update.loss.tokens.max(1.0)
    }

    /// The record written to `metrics.jsonl`.
    pub fn record(&self) -> serde_json::Value {
        let mut record = self.rollout_part();
        let aepo = self.aepo.map(|a| {
            json!({
                "actor/aepo_entropy": a.entropy,
                "actor/aepo_negatives_masked": a.masking as u8,
                "actor/aepo_masked_rollouts": a.masked,
            })
        });
        let parts = [self.actor_part(), self.length_part(), self.other_part()];
        for part in parts.into_iter().chain(aepo) {
            if let (Some(map), serde_json::Value::Object(more)) = (record.as_object_mut(), part) {
                map.extend(more);
            }
        }
        record
    }

    fn kept(&self) -> Vec<&Rollout> {
        self.batch.groups.iter().flat_map(|g| &g.rollouts).collect()
    }

    fn rollout_part(&self) -> serde_json::Value {
        let kept = self.kept();
        let all_scores = &self.batch.generated.scores;
        let all_rewards = &self.batch.generated.rewards;
        let report = &self.batch.report;
        let kept_scores: Vec<f64> = kept.iter().map(|r| r.score).collect();
        let kept_rewards: Vec<f64> = kept.iter().map(|r| r.reward).collect();
        json!({
            "step": self.step,
            "epoch": self.epoch,
            "critic/score/mean": mean(kept_scores.iter().copied()),
            "critic/score/std": std(&kept_scores),
            "critic/rewards/mean": mean(kept_rewards.iter().copied()),
            "critic/rewards/std": std(&kept_rewards),
            "critic/acc/mean": mean(kept.iter().map(|r| r.acc as u8 as f64)),
            "rollout/score/mean": self.score_mean(),
            "rollout/score/std": std(all_scores),
            "rollout/rewards/mean": mean(all_rewards.iter().copied()),
            "rollout/acc/mean": mean(all_scores.iter().map(|&s| (s == 1.0) as u8 as f64)),
            "critic/advantages/mean": mean(kept.iter().map(|r| r.advantage)),
            "critic/advantages/max": kept.iter().map(|r| r.advantage).fold(f64::NAN, f64::max),
            "critic/advantages/min": kept.iter().map(|r| r.advantage).fold(f64::NAN, f64::min),
            "train/num_gen_batches": report.gen_batches,
            "train/filtered_groups_frac": report.filtered_fraction(),
            "train/groups_kept": self.batch.groups.len(),
        })
    }

    fn actor_part(&self) -> serde_json::Value {
        let u = self.update;
        let s = &u.loss;
        let tok = s.tokens.max(1.0);
        json!({
            "actor/pg_loss": s.pg_loss,
            "actor/pg_clipfrac": s.clipped / tok,
            "actor/pg_clipfrac_low": s.clipped_low / tok,
            "actor/pg_clipfrac_high": s.clipped_high / tok,
            "actor/ppo_kl": s.ppo_kl / tok,
            "actor/kl_loss": s.kl_loss,
            "actor/kl": s.kl / tok,
            "actor/entropy": s.entropy / tok,
            "actor/grad_norm": mean(u.grad_norms.iter().copied()),
            "actor/lr": u.lr,
            "actor/updates": u.grad_norms.len(),
            "actor/skipped_updates": u.skipped_updates,
        })
    }

    fn length_part(&self) -> serde_json::Value {
        let kept = self.kept();
        let lens: Vec<f64> = kept.iter().map(|r| r.len as f64).collect();
        let prompt_lens = &self.batch.generated.prompt_lens;
        json!({
            "response_length/mean": mean(lens.iter().copied()),
            "response_length/max": lens.iter().copied().fold(0.0, f64::max),
            "response_length/min": lens.iter().copied().fold(f64::INFINITY, f64::min).min(f64::MAX),
            "response_length/clip_ratio": mean(kept.iter().map(|r| r.truncated as u8 as f64)),
            "prompt_length/mean": mean(prompt_lens.iter().copied()),
            "prompt_length/max": prompt_lens.iter().copied().fold(0.0, f64::max),
        })
    }

    fn other_part(&self) -> serde_json::Value {
        let r = self.reward;
        let t = &self.times;
        json!({
            "reward/judge_calls": r.judge_calls,
            "reward/judge_flips": r.judge_flips,
            "reward/judge_failures": r.judge_failures,
            "reward/judge_unparsed": r.judge_unparsed,
            "reward/judge_cache_hits": r.judge_cache_hits,
            "reward/overlong_penalised": r.overlong_penalised,
            "timing_s/gen": t.gen.as_secs_f64(),
            "timing_s/reward": t.reward.as_secs_f64(),
            "timing_s/update_actor": t.update_actor.as_secs_f64(),
            "timing_s/step": t.step.as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::dynamic::FilterReport;
    use crate::rl::groups::{Generated, Group, RolloutNumbers};
    use crate::rl::loss::PolicyLossStats;

    fn rollout(score: f64, len: usize, advantage: f64) -> Rollout {
        Rollout {
            advantage,
            ..Rollout::remote(RolloutNumbers {
                score,
                reward: 2.0 * score,
                acc: score == 1.0,
                truncated: len == 8,
                len,
            })
        }
    }

    #[test]
    fn the_record_has_verl_names_and_hand_computed_values() {
        let batch = TrainBatch {
            groups: vec![Group {
                prompt: 0,
                mine: true,
                rollouts: vec![rollout(1.0, 4, 0.5), rollout(0.0, 8, -0.5)],
            }],
            report: FilterReport {
                gen_batches: 2,
                groups_seen: 4,
                groups_kept: 1,
                dropped_all_wrong: 2,
                dropped_all_right: 1,
                truncated: 0,
            },
            generated: Generated {
                scores: vec![1.0, 0.0, 0.0, 0.0],
                rewards: vec![2.0, 0.0, 0.0, 0.0],
                prompt_lens: vec![10.0, 30.0],
            },
        };
        let update = UpdateStats {
            loss: PolicyLossStats {
                tokens: 12.0,
                pg_loss: 0.25,
                clipped: 3.0,
                entropy: 6.0,
                ..PolicyLossStats::default()
            },
            grad_norms: vec![1.0, 3.0],
            lr: 1e-3,
            skipped_updates: 1,
        };
        let reward = RewardStats {
            judge_calls: 5,
            ..RewardStats::default()
        };
        let m = StepMetrics {
            step: 7,
            epoch: 0.5,
            batch: &batch,
            update: &update,
            reward: &reward,
            aepo: None,
            times: StepTimes::default(),
        };
        let r = m.record();
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(r.as_object().unwrap().len(), 45);
        assert_eq!(f("step"), 7.0);
        assert_eq!(f("critic/score/mean"), 0.5);
        assert_eq!(f("critic/rewards/mean"), 1.0);
        assert_eq!(f("critic/acc/mean"), 0.5);
        assert_eq!(f("rollout/score/mean"), 0.25);
        assert_eq!(f("rollout/acc/mean"), 0.25);
        assert_eq!(f("critic/advantages/max"), 0.5);
        assert_eq!(f("critic/advantages/min"), -0.5);
        assert_eq!(f("train/filtered_groups_frac"), 0.75);
        assert_eq!(f("train/groups_kept"), 1.0);
        assert_eq!(f("actor/pg_clipfrac"), 0.25);
        assert_eq!(f("actor/entropy"), 0.5);
        assert_eq!(f("actor/grad_norm"), 2.0);
        assert_eq!(f("actor/updates"), 2.0);
        assert_eq!(f("actor/skipped_updates"), 1.0);
        assert_eq!(f("response_length/mean"), 6.0);
        assert_eq!(f("response_length/min"), 4.0);
        assert_eq!(f("response_length/clip_ratio"), 0.5);
        assert_eq!(f("prompt_length/mean"), 20.0);
        assert_eq!(f("reward/judge_calls"), 5.0);
        assert_eq!(f("timing_s/step"), 0.0);
        assert_eq!((m.score_mean(), m.entropy()), (0.25, 0.5));
        // With AEPO on, its three numbers join the record.
        let with_aepo = StepMetrics {
            aepo: Some(AepoReport {
                entropy: 0.3,
                masking: true,
                masked: 1,
            }),
            ..m
        };
        let r = with_aepo.record();
        assert_eq!(r.as_object().unwrap().len(), 48);
        assert_eq!(r["actor/aepo_entropy"], 0.3);
        assert_eq!(r["actor/aepo_negatives_masked"], 1);
        assert_eq!(r["actor/aepo_masked_rollouts"], 1);
    }
}
