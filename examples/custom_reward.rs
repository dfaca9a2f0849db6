//! A user-defined reward driving GRPO on the shipped tiny model: the reward is the share of
//! response tokens that are digits in the tokenizer's vocabulary, so the policy learns to write
//! digits. Shows the library API: a `Rewarder`, an `RlConfig` built in code, `rl::train`.
//!
//! ```text
//! cargo run --release --example custom_reward
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use longrl::config::{ModelSection, RunSection};
use longrl::reward::{RewardItem, RewardOutput, RewardStats, Rewarder};
use longrl::rl::{self, RlConfig};
use longrl::train::OptimConfig;

/// Reward = fraction of characters of the response text that are ASCII digits.
struct Digits;

impl Rewarder for Digits {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        let out = items
            .iter()
            .map(|it| {
                let chars = it
                    .response
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .count()
                    .max(1);
                let digits = it.response.chars().filter(|c| c.is_ascii_digit()).count();
                let score = digits as f64 / chars as f64;
                RewardOutput::from_score(score, score >= 0.5)
            })
            .collect();
        Ok((out, RewardStats::default()))
    }
}

fn run() -> anyhow::Result<(f64, f64)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let prompts = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| format!("{{\"task\": \"qa\", \"prompt\": \"Write a number, please ({i}).\", \"answer\": \"0\"}}"))
        .collect();
    std::fs::write(&prompts, lines.join("\n"))?;
    let mut config = RlConfig {
        train_file: prompts,
        max_steps: 20,
        train_batch_size: 4,
        num_generations: 8,
        temperature: 1.0,
        top_p: 1.0,
        max_response_length: 8,
        dynamic_sampling: false,
        ppo_mini_batch_size: 4,
        micro_batch_tokens: 512,
        optim: OptimConfig {
            lr: 1e-2,
            ..OptimConfig::default()
        },
        ..RlConfig::default()
    };
    config.loss.entropy_coeff = 0.0;
    let model = ModelSection::new(root.join("models/tiny-qwen2-chatml"));
    let run = RunSection {
        run_dir: dir.path().join("run"),
        progress: false,
        ..RunSection::default()
    };
    let summary = rl::train::<Autodiff<Flex>>(
        &model,
        &run,
        &config,
        Some(Arc::new(Digits)),
        false,
        Default::default(),
    )?;
    Ok((summary.first_score_mean, summary.last_score_mean))
}

fn main() -> anyhow::Result<()> {
    let (first, last) = run()?;
    println!("digit share of responses: {first:.3} at the first step, {last:.3} at the last");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_custom_reward_is_learned() {
        let (first, last) = super::run().unwrap();
        assert!(last > first, "{first} -> {last}");
    }
}
