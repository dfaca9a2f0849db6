//! Rewards: the QwenLong-L1 rule verifiers, LLM judges, their hybrid (max of both, judge only when
//! the rule fails) and DAPO's overlong shaping.

pub mod judge;
