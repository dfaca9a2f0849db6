//! Reinforcement learning: group advantages, the GRPO/DAPO policy loss, dynamic sampling, and the
//! trainer that ties rollouts, rewards and updates together.
//!
//! One training step is a sequence of stages, each a module with one job and a typed output:
//! `rollout` (prompts -> samples with behaviour log-probs), `score` (samples -> rewards, shared
//! between workers), `groups` (dynamic sampling and advantages), `aepo` (QwenLong-L1.5's entropy
//! control, when on: which negatives sit the update out), `pack` (mini- and
//! micro-batches as device tensors, reference log-probs included), `update` (`ppo_epochs` passes
//! -> update statistics) and `metrics` (statistics -> a verl-named record), run in order by
//! [`RlTrainer::step`].

pub mod advantage;
pub mod aepo;
pub mod bench;
pub mod config;
pub mod dynamic;
mod exchange;
mod groups;
pub mod loss;
mod metrics;
mod pack;
mod rollout;
mod score;
#[cfg(test)]
mod stage_tests;
pub mod trainer;
mod update;
mod warmup;

pub use advantage::{group_advantages, task_group_advantages, AdvantageEstimator, ScaleRewards};
pub use aepo::{next_masking, AepoState};
pub use config::{RlConfig, RlFile};
pub use dynamic::{FilterReport, GroupFilter};
pub use loss::{
    aggregate, kl_penalty, policy_loss, AggScale, KlEstimator, LossAggMode, PolicyLossConfig,
    PolicyLossInputs, PolicyLossStats,
};
pub use trainer::{
    prepare_prompts, train, train_prompts, train_prompts_with, train_with, NoObserver,
    PreparedPrompt, RewardSection, RlObserver, RlState, RlSummary, RlTrainer, StepReport,
};
pub use warmup::WarmUpReport;
