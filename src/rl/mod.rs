//! Reinforcement learning: group advantages, the GRPO/DAPO policy loss, dynamic sampling, and the
//! trainer that ties rollouts, rewards and updates together.

pub mod advantage;
pub mod config;
pub mod dynamic;
pub mod loss;
pub mod trainer;

pub use advantage::{group_advantages, AdvantageEstimator, ScaleRewards};
pub use config::{RlConfig, RlFile};
pub use dynamic::{FilterReport, GroupFilter};
pub use loss::{
    aggregate, kl_penalty, policy_loss, AggScale, KlEstimator, LossAggMode, PolicyLossConfig,
    PolicyLossInputs, PolicyLossStats,
};
pub use trainer::{
    load_tokenizer, prepare_prompts, train, train_prompts, train_prompts_with, train_with,
    NoObserver, PreparedPrompt, RewardSection, RlObserver, RlState, RlSummary,
};
