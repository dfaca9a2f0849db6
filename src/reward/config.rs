//! `[rl.reward]`: the hybrid reward's settings and building the rewarder they describe (rule
//! verifiers, an optional HTTP or local judge, overlong shaping). `longrl rl`, the pipeline and
//! the library's `rl::train*` build their reward here; `longrl reward` and `longrl eval` build
//! theirs from their own flags (`cli/judge.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::judge::{
    HttpJudge, HttpJudgeConfig, JudgeFailure, LocalJudge, LocalJudgeConfig, OutageNames,
    OutagePolicy,
};
use super::{HybridConfig, HybridReward, Judge, OverlongConfig, Rewarder, RuleOptions};
use crate::error::{Error, Result};
use crate::model::ModelBackend;
use crate::openai::BreakerConfig;

/// `[rl.reward]`: the hybrid reward's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSection {
    /// Rule verifier options (`require_think`, `case_insensitive`, `eos_suffixes`).
    pub rule: RuleOptions,
    /// OpenAI-compatible judge server (e.g. `http://127.0.0.1:8000/v1`); none: rules only.
    pub judge_url: Option<String>,
    /// The served judge model's name.
    pub judge_model: Option<String>,
    /// Environment variable holding the judge server's API key.
    pub judge_api_key_env: Option<String>,
    /// Judge requests in flight at once.
    pub judge_concurrency: usize,
    /// Seconds before a judge request is abandoned (then retried).
    pub judge_timeout_s: f64,
    /// Retries of a judge request after 429, 5xx or a transport error.
    pub judge_retries: u32,
    /// A local judge: HuggingFace model folder run on the training device.
    pub judge_checkpoint: Option<PathBuf>,
    /// What to do while the judge cannot be reached: `"stop"` (default: ask the failed queries
    /// again for up to `judge_max_outage_s`, then stop the run before the update, refuse to start
    /// when the judge fails its check) or `"rule_only"` (score them with the rule alone, counted
    /// in `reward/judge_failures`, one warning per outage).
    pub judge_failure: JudgeFailure,
    /// Under `judge_failure = "stop"`: the longest judge outage waited out, in seconds.
    pub judge_max_outage_s: f64,
    /// Failed judge attempts in a row (refused, timed out, 429, 5xx) that open the HTTP judge's
    /// circuit breaker: queries then fail at once instead of each retrying on its own.
    pub judge_breaker_failures: u32,
    /// Seconds an open circuit refuses judge queries before one probe is sent.
    pub judge_breaker_cooldown_s: f64,
    /// Overlong shaping buffer L_cache in tokens (0: off); L_max is `max_response_length`.
    pub overlong_buffer_len: usize,
    /// Overlong penalty at the limit.
    pub overlong_penalty_factor: f64,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self {
            rule: RuleOptions::default(),
            judge_url: None,
            judge_model: None,
            judge_api_key_env: None,
            judge_concurrency: 32,
            judge_timeout_s: 120.0,
            judge_retries: 5,
            judge_checkpoint: None,
            judge_failure: JudgeFailure::Stop,
            judge_max_outage_s: 300.0,
            judge_breaker_failures: 5,
            judge_breaker_cooldown_s: 30.0,
            overlong_buffer_len: 0,
            overlong_penalty_factor: 1.0,
        }
    }
}

impl RewardSection {
    /// Checks the judge's failure settings, naming the field of the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.outage_policy()?;
        self.breaker()?;
        Ok(())
    }

    /// The policy while the judge is down (`judge_failure`, `judge_max_outage_s`).
    fn outage_policy(&self) -> Result<OutagePolicy> {
        OutagePolicy::from_settings(
            self.judge_failure,
            self.judge_max_outage_s,
            OutageNames::RL_REWARD,
        )
    }

    /// The HTTP judge's circuit breaker (`judge_breaker_failures`, `judge_breaker_cooldown_s`).
    fn breaker(&self) -> Result<BreakerConfig> {
        BreakerConfig::from_settings(
            self.judge_breaker_failures,
            self.judge_breaker_cooldown_s,
            "rl.reward.judge_breaker_failures",
            "rl.reward.judge_breaker_cooldown_s",
        )
    }

    /// Builds the hybrid reward these settings describe; overlong shaping measures against
    /// `max_response_length` (L_max), and a local judge runs on backend `B` on `device`. An HTTP
    /// judge is sent one test query first: under `judge_failure = "stop"` a judge that fails it is
    /// an error (nothing has run yet), under `"rule_only"` a warning.
    pub fn build<B: ModelBackend>(
        &self,
        max_response_length: usize,
        device: &B::Device,
    ) -> Result<Arc<dyn Rewarder>> {
        let outage = self.outage_policy()?;
        let judge: Option<Arc<dyn Judge>> =
            match (&self.judge_url, &self.judge_model, &self.judge_checkpoint) {
                (Some(url), Some(model), _) => {
                    let judge = Arc::new(self.http_judge(url, model)?);
                    outage.check(judge.as_ref())?;
                    Some(judge)
                }
                (_, _, Some(dir)) => Some(Arc::new(LocalJudge::<B>::load(
                    dir,
                    device.clone(),
                    LocalJudgeConfig::default(),
                )?)),
                _ => None,
            };
        let overlong = (self.overlong_buffer_len > 0).then_some(OverlongConfig {
            max_response_length,
            buffer_length: self.overlong_buffer_len,
            penalty_factor: self.overlong_penalty_factor,
        });
        if let Some(o) = &overlong {
            o.validate()?;
        }
        Ok(Arc::new(HybridReward::new(
            HybridConfig {
                rule: self.rule.clone(),
                overlong,
                outage,
            },
            judge,
        )))
    }

    /// The HTTP judge at `url` serving `model`, with these settings (not yet contacted).
    fn http_judge(&self, url: &str, model: &str) -> Result<HttpJudge> {
        let api_key = match &self.judge_api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                Error::Invalid(format!(
                    "rl.reward.judge_api_key_env: environment variable {var} is not set"
                ))
            })?),
            None => None,
        };
        HttpJudge::new(HttpJudgeConfig {
            api_key,
            concurrency: self.judge_concurrency,
            timeout: Duration::from_secs_f64(self.judge_timeout_s.max(0.001)),
            max_retries: self.judge_retries,
            breaker: Some(self.breaker()?),
            ..HttpJudgeConfig::new(url, model)
        })
    }
}
