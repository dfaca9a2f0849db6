//! Group-relative advantages (GRPO, Dr. GRPO): each rollout's reward compared with the other
//! rollouts of its prompt, broadcast later to every response token.

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
/// rollouts; the result has the same shape. A group of one has mean 0 and std 1 (verl).
pub fn group_advantages(
    groups: &[Vec<f64>],
    estimator: AdvantageEstimator,
    scale: ScaleRewards,
) -> Vec<Vec<f64>> {
    let scale = match estimator {
        AdvantageEstimator::DrGrpo => ScaleRewards::None,
        AdvantageEstimator::Grpo => scale,
    };
    let all: Vec<f64> = groups.iter().flatten().copied().collect();
    let batch_std = std_unbiased(&all);
    groups
        .iter()
        .map(|g| {
            let (m, s) = if g.len() == 1 {
                (0.0, 1.0)
            } else {
                (mean(g), std_unbiased(g))
            };
            g.iter()
                .map(|r| match scale {
                    ScaleRewards::Group => (r - m) / (s + STD_EPS),
                    ScaleRewards::Batch => (r - m) / (batch_std + STD_EPS),
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
}
