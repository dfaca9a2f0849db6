//! The `[rl]` settings (GRPO / DAPO, QwenLong-L1's defaults) and the file `longrl rl --config`
//! reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::advantage::{AdvantageEstimator, ScaleRewards};
use super::loss::PolicyLossConfig;
use crate::config::{ModelSection, RunSection};
use crate::error::{Error, Result};
use crate::reward::RewardSection;
use crate::train::OptimConfig;

/// `[rl]`: the GRPO / DAPO settings. Defaults are QwenLong-L1's public script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlConfig {
    /// Training prompts: JSONL or parquet, with longrl's or verl's fields (see
    /// [`crate::data::record::rl_sample`]).
    pub train_file: PathBuf,
    /// Unknown fields (columns) in `train_file` are errors naming the file, line and field
    /// (`--strict`); by default they are ignored with one warning listing them.
    pub strict: bool,
    /// Training steps (rollout batches); 0 derives them from `num_epochs`.
    pub max_steps: usize,
    /// Passes over the prompts when `max_steps` is 0.
    pub num_epochs: f64,
    /// Prompts per training step (after dynamic sampling).
    pub train_batch_size: usize,
    /// Prompts per generation batch; 0: 3 x `train_batch_size` with dynamic sampling, else
    /// `train_batch_size`.
    pub gen_batch_size: usize,
    /// Rollouts per prompt (G).
    pub num_generations: usize,
    /// Sampling temperature of rollouts (log-probs use the same temperature).
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Top-k (0: off).
    pub top_k: usize,
    /// Longest prompt in tokens; longer prompts are skipped and counted.
    pub max_prompt_length: usize,
    /// Most response tokens (L_max).
    pub max_response_length: usize,
    /// Advantage estimator.
    pub advantage: AdvantageEstimator,
    /// Reward scaling of `grpo` (TRL's `scale_rewards`).
    pub scale_rewards: ScaleRewards,
    /// DAPO dynamic sampling: drop groups whose accuracy is all 0 or all 1 and refill.
    pub dynamic_sampling: bool,
    /// Most generation batches per step under dynamic sampling.
    pub max_num_gen_batches: usize,
    /// Prompts per optimiser step (their G rollouts each).
    pub ppo_mini_batch_size: usize,
    /// Passes over the rollout batch.
    pub ppo_epochs: usize,
    /// Padded tokens per micro-batch (verl's `ppo_max_token_len_per_gpu`).
    pub micro_batch_tokens: usize,
    /// Zero the loss of rollouts cut at `max_response_length` (TRL's `mask_truncated_completions`).
    pub mask_truncated_completions: bool,
    /// Prompts decoded together in one engine call (bounds the KV cache).
    pub rollout_batch_size: usize,
    /// Prompt columns prefilled per forward pass.
    pub prefill_chunk: usize,
    /// Positions projected to the vocabulary at once in the loss.
    pub logits_chunk: usize,
    /// Recompute each decoder layer of the policy in the backward pass instead of keeping its
    /// activations (verl's `enable_gradient_checkpointing`).
    pub gradient_checkpointing: bool,
    /// Mixed precision for the policy's training forward and backward (TRL's `bf16`): bf16
    /// compute from f32 master weights and optimiser state; rollouts stay in f32.
    pub bf16: bool,
    /// Shape buckets for JIT backends (`[rl.shapes]`, see [`crate::shapes`]).
    pub shapes: crate::shapes::ShapeConfig,
    /// Shuffle the prompts every epoch.
    pub shuffle: bool,
    /// Balance every generation batch over the prompts' task types, drawing from each task in
    /// turn (QwenLong-L1.5's task-balanced sampling; see [`crate::data::TaskBalancedSampler`]).
    pub task_balanced_sampling: bool,
    /// The policy loss.
    pub loss: PolicyLossConfig,
    /// AdamW and schedule.
    pub optim: OptimConfig,
    /// The reward.
    pub reward: RewardSection,
}

impl Default for RlConfig {
    fn default() -> Self {
        Self {
            train_file: PathBuf::new(),
            strict: false,
            max_steps: 0,
            num_epochs: 1.0,
            train_batch_size: 128,
            gen_batch_size: 0,
            num_generations: 8,
            temperature: 0.7,
            top_p: 0.95,
            top_k: 0,
            max_prompt_length: 60000,
            max_response_length: 10000,
            advantage: AdvantageEstimator::Grpo,
            scale_rewards: ScaleRewards::Group,
            dynamic_sampling: true,
            max_num_gen_batches: 10,
            ppo_mini_batch_size: 32,
            ppo_epochs: 1,
            micro_batch_tokens: 10000,
            mask_truncated_completions: false,
            rollout_batch_size: 16,
            prefill_chunk: 2048,
            logits_chunk: 1024,
            gradient_checkpointing: false,
            bf16: false,
            shapes: crate::shapes::ShapeConfig::default(),
            shuffle: true,
            task_balanced_sampling: false,
            loss: PolicyLossConfig::default(),
            optim: OptimConfig {
                lr: 2e-6,
                weight_decay: 0.01,
                max_grad_norm: 1.0,
                ..OptimConfig::default()
            },
            reward: RewardSection::default(),
        }
    }
}

impl RlConfig {
    /// Checks the settings, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        self.shapes.validate("rl.shapes")?;
        let positive = [
            ("train_batch_size", self.train_batch_size),
            ("num_generations", self.num_generations),
            ("max_response_length", self.max_response_length),
            ("max_prompt_length", self.max_prompt_length),
            ("ppo_mini_batch_size", self.ppo_mini_batch_size),
            ("ppo_epochs", self.ppo_epochs),
            ("micro_batch_tokens", self.micro_batch_tokens),
            ("rollout_batch_size", self.rollout_batch_size),
            ("max_num_gen_batches", self.max_num_gen_batches),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Invalid(format!("rl.{name} must be at least 1")));
            }
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!(
                "rl.temperature = {}: expected a number > 0 (rollouts are sampled, and scored for \
                 training, at this temperature; 0 would make every training log-prob NaN and skip \
                 every update)",
                self.temperature
            )));
        }
        if self.num_generations < 2 {
            return Err(Error::Invalid(format!(
                "rl.num_generations = {}: group-relative advantages need at least 2 rollouts per \
                 prompt (a group of one has no baseline; TRL's GRPOTrainer refuses it too)",
                self.num_generations
            )));
        }
        if self.ppo_mini_batch_size < self.train_batch_size
            && !self
                .train_batch_size
                .is_multiple_of(self.ppo_mini_batch_size)
        {
            return Err(Error::Invalid(format!(
                "rl.ppo_mini_batch_size = {} does not divide rl.train_batch_size = {}: every \
                 update must see as many prompts (the last mini-batch would be smaller and weigh \
                 more per prompt; verl refuses it too); a size >= the batch makes one update",
                self.ppo_mini_batch_size, self.train_batch_size
            )));
        }
        if self.max_steps == 0 && (self.num_epochs.is_nan() || self.num_epochs <= 0.0) {
            return Err(Error::Invalid(
                "rl: set max_steps, or num_epochs > 0".into(),
            ));
        }
        if self.reward.judge_url.is_some() != self.reward.judge_model.is_some() {
            return Err(Error::Invalid(
                "rl.reward: judge_url and judge_model go together".into(),
            ));
        }
        self.loss
            .validate()
            .map_err(|e| Error::Invalid(format!("rl.loss.{e}")))?;
        self.optim.validate("rl.optim")
    }

    /// Prompts per generation batch.
    pub fn gen_batch(&self) -> usize {
        match (self.gen_batch_size, self.dynamic_sampling) {
            (0, true) => 3 * self.train_batch_size,
            (0, false) => self.train_batch_size,
            (n, _) => n,
        }
    }
}

/// The file `longrl rl --config` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlFile {
    /// `[model]`.
    pub model: ModelSection,
    /// `[run]`.
    #[serde(default)]
    pub run: RunSection,
    /// `[rl]`.
    pub rl: RlConfig,
    /// `[distributed]`: data parallelism (devices, machines).
    #[serde(default)]
    pub distributed: crate::distributed::DistributedSection,
    /// `[lora]`: train PEFT LoRA adapters on a frozen base (absent: every weight trains).
    #[serde(default)]
    pub lora: Option<crate::model::LoraConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwenlong_l15_options_read_from_toml_and_bad_aepo_bounds_name_the_field() {
        let c: RlConfig = toml::from_str(
            "task_balanced_sampling = true\nscale_rewards = \"task\"\n\n[loss]\naepo = true\n\
             aepo_entropy_low = 0.1\naepo_entropy_high = 0.3\n",
        )
        .unwrap();
        assert!(c.task_balanced_sampling && c.loss.aepo);
        assert_eq!(c.scale_rewards, ScaleRewards::Task);
        assert_eq!(
            (c.loss.aepo_entropy_low, c.loss.aepo_entropy_high),
            (0.1, 0.3)
        );
        c.validate().unwrap();
        let d = RlConfig::default();
        assert!(!d.task_balanced_sampling && !d.loss.aepo);
        assert_eq!(
            (d.loss.aepo_entropy_low, d.loss.aepo_entropy_high),
            (0.14, 0.25)
        );
        let bad = |low: f64, high: f64| {
            let mut c = c.clone();
            (c.loss.aepo_entropy_low, c.loss.aepo_entropy_high) = (low, high);
            c.validate().unwrap_err().to_string()
        };
        let e = bad(-0.1, 0.3);
        assert!(e.contains("rl.loss.aepo_entropy_low = -0.1"), "{e}");
        let e = bad(0.3, 0.2);
        assert!(e.contains("rl.loss.aepo_entropy_high = 0.2"), "{e}");
        assert!(e.contains(">= aepo_entropy_low (0.3)"), "{e}");
        assert!(bad(0.1, f64::INFINITY).contains("rl.loss.aepo_entropy_high"));
        assert!(bad(f64::NAN, 0.3).contains("rl.loss.aepo_entropy_low"));
        let mut equal = c.clone();
        (equal.loss.aepo_entropy_low, equal.loss.aepo_entropy_high) = (0.2, 0.2);
        equal.validate().unwrap(); // equal bounds: a plain threshold
    }

    #[test]
    fn greedy_rollouts_and_groups_of_one_are_refused() {
        let c = RlConfig::default();
        c.validate().unwrap();
        for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let e = RlConfig {
                temperature: t,
                ..c.clone()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("rl.temperature") && e.contains("expected a number > 0"),
                "{e}"
            );
        }
        let e = RlConfig {
            num_generations: 1,
            dynamic_sampling: false,
            ..c.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("rl.num_generations = 1"), "{e}");
    }

    #[test]
    fn a_mini_batch_that_does_not_divide_the_batch_is_refused() {
        let c = RlConfig {
            train_batch_size: 12,
            ppo_mini_batch_size: 5,
            ..RlConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("rl.ppo_mini_batch_size = 5 does not divide rl.train_batch_size = 12"),
            "{e}"
        );
        for mini in [3, 12, 32] {
            RlConfig {
                ppo_mini_batch_size: mini,
                ..c.clone()
            }
            .validate()
            .unwrap();
        }
    }
}
