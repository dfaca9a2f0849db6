//! Rewards: the QwenLong-L1 rule verifiers, LLM judges, their hybrid (max of both, judge only when
//! the rule fails) and DAPO's overlong shaping.

pub mod config;
pub mod hybrid;
pub mod judge;
pub mod rule;
pub mod shaping;

pub use crate::data::TaskKind;
pub use config::RewardSection;
pub use hybrid::{HybridConfig, HybridReward, RewardItem, RewardOutput, RewardStats, Rewarder};
pub use judge::{Judge, JudgeFailure, JudgeOutcome, JudgeQuery, Verdict};
pub use rule::{QaMatch, RuleOptions, RuleResult};
pub use shaping::OverlongConfig;
