//! The judge flags shared by `longrl reward` and `longrl eval`: an OpenAI-compatible judge server
//! or a local judge checkpoint.

use crate::model::ModelBackend;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::error::Result;
use crate::openai::BreakerConfig;
use crate::reward::judge::{HttpJudge, HttpJudgeConfig, LocalJudge, LocalJudgeConfig};
use crate::reward::Judge;

/// Where the LLM judge is.
#[derive(Debug, Clone, Args)]
pub struct JudgeArgs {
    /// OpenAI-compatible judge server, e.g. `http://127.0.0.1:8000/v1` (vLLM, SGLang, llama.cpp).
    #[arg(long, requires = "judge_model", conflicts_with = "judge_checkpoint")]
    pub judge_url: Option<String>,
    /// Model name the judge server serves (e.g. `Qwen/Qwen2.5-1.5B-Instruct`).
    #[arg(long, requires = "judge_url")]
    pub judge_model: Option<String>,
    /// Bearer token for the judge server.
    #[arg(long, env = "LONGRL_JUDGE_API_KEY", hide_env_values = true)]
    pub judge_api_key: Option<String>,
    /// Judge requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub judge_concurrency: usize,
    /// Seconds before a judge request is abandoned (then retried).
    #[arg(long, default_value_t = 120.0)]
    pub judge_timeout: f64,
    /// Retries of a judge request after 429, 5xx or a transport error.
    #[arg(long, default_value_t = 5)]
    pub judge_retries: u32,
    /// Failed judge attempts in a row that open the circuit breaker (queries then fail at once).
    #[arg(long, default_value_t = 5)]
    pub judge_breaker_failures: u32,
    /// Seconds an open circuit refuses judge queries before one probe is sent.
    #[arg(long, default_value_t = 30.0)]
    pub judge_breaker_cooldown: f64,
    /// A local judge: HuggingFace model folder run on `--device` (e.g. Qwen2.5-1.5B-Instruct).
    #[arg(long)]
    pub judge_checkpoint: Option<PathBuf>,
    /// Most tokens of a local judge's reply.
    #[arg(long, default_value_t = 512)]
    pub judge_max_new_tokens: usize,
}

impl JudgeArgs {
    /// The HTTP judge, when `--judge-url` is given.
    pub fn http(&self) -> Result<Option<Arc<dyn Judge>>> {
        match (&self.judge_url, &self.judge_model) {
            (Some(url), Some(model)) => Ok(Some(Arc::new(HttpJudge::new(HttpJudgeConfig {
                api_key: self.judge_api_key.clone(),
                concurrency: self.judge_concurrency,
                timeout: Duration::from_secs_f64(self.judge_timeout.max(0.001)),
                max_retries: self.judge_retries,
                breaker: Some(BreakerConfig::from_settings(
                    self.judge_breaker_failures,
                    self.judge_breaker_cooldown,
                    "--judge-breaker-failures",
                    "--judge-breaker-cooldown",
                )?),
                ..HttpJudgeConfig::new(url.clone(), model.clone())
            })?))),
            _ => Ok(None),
        }
    }

    /// The configured judge: the local checkpoint loaded on `device`, or the HTTP judge, or none.
    pub fn build<B: ModelBackend>(&self, device: &B::Device) -> Result<Option<Arc<dyn Judge>>> {
        match &self.judge_checkpoint {
            Some(dir) => Ok(Some(Arc::new(LocalJudge::<B>::load(
                dir,
                device.clone(),
                LocalJudgeConfig {
                    max_new_tokens: self.judge_max_new_tokens,
                    ..LocalJudgeConfig::default()
                },
            )?))),
            None => self.http(),
        }
    }
}
