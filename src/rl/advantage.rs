//! Group-relative advantages (GRPO, Dr. GRPO): each rollout's reward compared with the other
//! rollouts of its prompt, broadcast later to every response token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How advantages are computed from a group's rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageEstimator {
    /// `(r - mean) / (std + 1e-6)` within the group, std unbiased (verl's `grpo`).
    #[default]
    Grpo,
    /// `r - mean` (Dr. GRPO: no division by the standard deviation).
    DrGrpo,
}

/// TRL's `scale_rewards`: which standard deviation divides the centred rewards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// The group's own standard deviation (GRPO).
    #[default]
    Group,
    /// The standard deviation of the whole batch's rewards.
    Batch,
    /// No scaling (Dr. GRPO).
    None,
    /// The standard deviation of the rewards of every rollout of the batch whose prompt has the
    /// same task type (QwenLong-L1.5's task-specific advantage estimation, §4.2 Eq. 7); the mean
    /// stays the group's. See [`task_group_advantages`].
    Task,
}

/// The `1e-6` added to the standard deviation, as verl and TRL do.
pub const STD_EPS: f64 = 1e-6;

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// Unbiased (n - 1) standard deviation, as `torch.std`; 1 for fewer than two values, as verl
/// treats a group of one.
fn std_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 1.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// Advantages of the rollouts of several groups: `groups[i]` holds the rewards of prompt i's
/// rollouts; the result has the same shape. A group of one has mean 0 and std 1 (verl). Without
/// task types every group is of one task, so `ScaleRewards::Task` is `Batch` here.
pub fn group_advantages(
    groups: &[Vec<f64>],
    estimator: AdvantageEstimator,
    scale: ScaleRewards,
) -> Vec<Vec<f64>> {
    task_group_advantages(groups, &vec![(); groups.len()], estimator, scale)
}

/// [`group_advantages`] knowing each group's task type (`tasks[i]` is group i's). With
/// `ScaleRewards::Task` (QwenLong-L1.5, §4.2, Eq. 7, and its public `compute_grpo_task_norm_
/// outcome_advantage`), rollout i of group g, task t:
/// `A_i = (r_i - mean(r of g)) / (std({r_k : rollout k of the batch, task(k) = t}) + 1e-6)`,
/// the std unbiased over every rollout of the batch's groups of task t. A task with a single
/// rollout in the batch gets std 1 (as a group of one here; the public code takes 0).
pub fn task_group_advantages<K: Ord>(
    groups: &[Vec<f64>],
    tasks: &[K],
    estimator: AdvantageEstimator,
    scale: ScaleRewards,
) -> Vec<Vec<f64>> {
    assert_eq!(groups.len(), tasks.len(), "one task type per group");
    let scale = match estimator {
        AdvantageEstimator::DrGrpo => ScaleRewards::None,
        AdvantageEstimator::Grpo => scale,
    };
    let all: Vec<f64> = groups.iter().flatten().copied().collect();
    let batch_std = std_unbiased(&all);
    let mut per_task: BTreeMap<&K, Vec<f64>> = BTreeMap::new();
    for (g, t) in groups.iter().zip(tasks) {
        per_task.entry(t).or_default().extend(g);
    }
    let task_std: BTreeMap<&K, f64> = per_task
        .into_iter()
        .map(|(t, r)| (t, std_unbiased(&r)))
        .collect();
    groups
        .iter()
        .zip(tasks)
        .map(|(g, t)| {
            let (m, s) = if g.len() == 1 {
                (0.0, 1.0)
            } else {
                (mean(g), std_unbiased(g))
            };
            g.iter()
                .map(|r| match scale {
                    ScaleRewards::Group => (r - m) / (s + STD_EPS),
                    ScaleRewards::Batch => (r - m) / (batch_std + STD_EPS),
                    ScaleRewards::Task => (r - m) / (task_std[t] + STD_EPS),
                    ScaleRewards::None => r - m,
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpo_is_a_group_z_score_with_unbiased_std() {
        let a = group_advantages(
            &[vec![1.0, 0.0, 0.0, 1.0], vec![0.5]],
            AdvantageEstimator::Grpo,
            ScaleRewards::Group,
        );
        // mean 0.5, unbiased std sqrt(1/3).
        let s = (1.0f64 / 3.0).sqrt() + STD_EPS;
        assert!((a[0][0] - 0.5 / s).abs() < 1e-12 && (a[0][1] + 0.5 / s).abs() < 1e-12);
        assert_eq!(a[1], vec![0.5 / (1.0 + STD_EPS)]); // group of one: mean 0, std 1
        let same = group_advantages(
            &[vec![1.0; 4]],
            AdvantageEstimator::Grpo,
            ScaleRewards::Group,
        );
        assert_eq!(same[0], vec![0.0; 4]);
    }

    #[test]
    fn dr_grpo_only_centres() {
        let a = group_advantages(
            &[vec![1.0, 0.0, 0.0, 0.0]],
            AdvantageEstimator::DrGrpo,
            ScaleRewards::Group,
        );
        assert_eq!(a[0], vec![0.75, -0.25, -0.25, -0.25]);
        let b = group_advantages(
            &[vec![2.0, 0.0], vec![1.0, 1.0]],
            AdvantageEstimator::Grpo,
            ScaleRewards::Batch,
        );
        // Batch std of [2, 0, 1, 1] (unbiased) = sqrt(2/3).
        let s = (2.0f64 / 3.0).sqrt() + STD_EPS;
        assert!((b[0][0] - 1.0 / s).abs() < 1e-12);
        assert_eq!(b[1], vec![0.0, 0.0]);
    }

    #[test]
    fn task_scaling_divides_by_the_std_of_the_tasks_rewards_across_the_batch() {
        // Groups 0 and 2 are task "qa": rewards [1, 0, 0, 0] and [1, 1, 0, 1]; group 1 is "mc":
        // [4, 0]. Means are the groups': 0.25, 2, 0.75.
        let groups = [
            vec![1.0, 0.0, 0.0, 0.0],
            vec![4.0, 0.0],
            vec![1.0, 1.0, 0.0, 1.0],
        ];
        let tasks = ["qa", "mc", "qa"];
        let a = task_group_advantages(
            &groups,
            &tasks,
            AdvantageEstimator::Grpo,
            ScaleRewards::Task,
        );
        // qa rewards [1, 0, 0, 0, 1, 1, 0, 1]: mean 0.5, sum of squares 8 x 0.25 = 2, unbiased
        // variance 2/7. mc rewards [4, 0]: mean 2, variance (4 + 4) / 1 = 8.
        let qa = (2.0f64 / 7.0).sqrt() + STD_EPS;
        let mc = 8f64.sqrt() + STD_EPS;
        let want = [
            vec![0.75 / qa, -0.25 / qa, -0.25 / qa, -0.25 / qa],
            vec![2.0 / mc, -2.0 / mc],
            vec![0.25 / qa, 0.25 / qa, -0.75 / qa, 0.25 / qa],
        ];
        for (got, want) in a.iter().zip(&want) {
            for (x, y) in got.iter().zip(want) {
                assert!((x - y).abs() < 1e-12, "{got:?} != {want:?}");
            }
        }
        // One task: the batch std. A lone rollout of a task: std 1 (and mean 0: a group of one).
        let one = group_advantages(&groups, AdvantageEstimator::Grpo, ScaleRewards::Task);
        let batch = group_advantages(&groups, AdvantageEstimator::Grpo, ScaleRewards::Batch);
        assert_eq!(one, batch);
        let lone = task_group_advantages(
            &[vec![3.0], vec![1.0, 0.0]],
            &[1, 2],
            AdvantageEstimator::Grpo,
            ScaleRewards::Task,
        );
        assert_eq!(lone[0], vec![3.0 / (1.0 + STD_EPS)]);
        // Dr. GRPO never scales.
        let dr = task_group_advantages(
            &groups,
            &tasks,
            AdvantageEstimator::DrGrpo,
            ScaleRewards::Task,
        );
        assert_eq!(dr[1], vec![2.0, -2.0]);
    }

    #[test]
    fn scale_rewards_reads_task_from_toml() {
        #[derive(Deserialize)]
        struct T {
            scale_rewards: ScaleRewards,
        }
        let t: T = toml::from_str("scale_rewards = \"task\"").unwrap();
        assert_eq!(t.scale_rewards, ScaleRewards::Task);
    }
}
