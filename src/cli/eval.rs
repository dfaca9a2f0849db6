//! `longrl eval`: the Table 4 benchmarks for a longrl model (`--model`) or a served model
//! (`--endpoint` + `--served-model`), with the same prompts, truncation and scoring.

use crate::model::ModelBackend;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::judge::JudgeArgs;
use crate::device::{BackendFn, DeviceSpec};
use crate::error::{Error, Result};
use crate::eval::benchmarks::Benchmark;
use crate::eval::harness::{run_eval, HarnessOptions, JudgePolicy, Responder, Summary};
use crate::eval::responder::{EndpointResponder, EndpointSampling, LocalResponder};
use crate::generate::{pad_token_id, stop_token_ids, Engine, EngineOptions, SamplingParams};
use crate::model::load_adapted;
use crate::openai::{ChatClient, ChatClientConfig, OptionNames};
use crate::tokenizer::Tokenizer;

/// Arguments of `longrl eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// HuggingFace model folder to evaluate with longrl's own engine on `--device`.
    #[arg(
        long,
        required_unless_present = "endpoint",
        conflicts_with = "endpoint"
    )]
    pub model: Option<PathBuf>,
    /// A PEFT LoRA adapter folder applied on `--model` (its base).
    #[arg(long, requires = "model")]
    pub adapter: Option<PathBuf>,
    /// Evaluate a served model instead: an OpenAI-compatible base URL (`http://host:8000/v1`).
    #[arg(long, requires = "served_model")]
    pub endpoint: Option<String>,
    /// The model name the endpoint serves (the request's `model`).
    #[arg(long, requires = "endpoint")]
    pub served_model: Option<String>,
    /// Bearer token for the endpoint.
    #[arg(long, env = "LONGRL_ENDPOINT_API_KEY", hide_env_values = true)]
    pub endpoint_api_key: Option<String>,
    /// Endpoint requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub endpoint_concurrency: usize,
    /// Seconds before an endpoint request is abandoned (then retried).
    #[arg(long, default_value_t = 1800.0)]
    pub endpoint_timeout: f64,
    /// Retries of an endpoint request after 429, 5xx or a transport error.
    #[arg(long, default_value_t = 4)]
    pub endpoint_retries: u32,
    /// Folder with the tokenizer.json that counts input tokens for middle truncation (default:
    /// `--model`; needed with `--endpoint` unless `--max-input-tokens 0`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Benchmarks, comma-separated: docmath, frames, 2wikimqa, hotpotqa, musique, narrativeqa,
    /// qasper, or all.
    #[arg(long, default_value = "all")]
    pub benchmarks: String,
    /// Folder holding `<benchmark>.jsonl` in each benchmark's public format.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Output folder: `<benchmark>.jsonl` per answer, `summary.json`, `summary.md`. Rerunning
    /// with the same folder resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// Sampling temperature (the paper: 0.7).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus mass (the paper: 0.95).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Answers per item (accuracy averages them).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Most new tokens per answer (the paper: 10000).
    #[arg(long, default_value_t = 10000)]
    pub max_new_tokens: usize,
    /// Most tokens of a prompt; longer ones keep their first and last halves (the paper:
    /// 120000; 0: no limit).
    #[arg(long, default_value_t = 120000)]
    pub max_input_tokens: usize,
    /// Seed of the sampling streams.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// When the judge is asked: on every answer (the paper), only where the rule fails, or never.
    #[arg(long, value_enum, default_value_t = JudgePolicy::Every)]
    pub judge_policy: JudgePolicy,
    /// The LLM judge.
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Only the first N items of each benchmark (smoke runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Items generated together (`--model`) or sent together (`--endpoint`), then written out.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Prompt columns prefilled per forward pass (`--model`).
    #[arg(long, default_value_t = 2048)]
    pub prefill_chunk: usize,
    /// Cap on the KV cache in GiB (`--model`); a batch that needs more is an error.
    #[arg(long)]
    pub max_kv_cache_gib: Option<f64>,
    /// No progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The chat template prompts are rendered with (`--model`).
    #[command(flatten)]
    pub template: super::ChatTemplateArgs,
}

impl EvalArgs {
    fn options(&self, model: String) -> Result<HarnessOptions> {
        if self.n == 0 {
            return Err(Error::Invalid("--n: must be at least 1".into()));
        }
        let fingerprint: BTreeMap<String, Value> = [
            ("model", json!(model)),
            ("temperature", json!(self.temperature)),
            ("top_p", json!(self.top_p)),
            ("n", json!(self.n)),
            ("max_new_tokens", json!(self.max_new_tokens)),
            ("max_input_tokens", json!(self.max_input_tokens)),
            ("seed", json!(self.seed)),
            ("judge_policy", json!(self.judge_policy)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(HarnessOptions {
            benchmarks: Benchmark::parse_list(&self.benchmarks)?,
            data_dir: self.data_dir.clone(),
            out: self.out.clone(),
            n: self.n,
            max_input_tokens: self.max_input_tokens,
            judge_policy: self.judge_policy,
            limit: self.limit,
            chunk: self.batch_size.max(1),
            seed: self.seed,
            fingerprint,
            quiet: self.quiet,
        })
    }

    fn tokenizer(&self) -> Result<Option<Tokenizer>> {
        match (&self.tokenizer, &self.model) {
            (Some(dir), _) => Tokenizer::from_dir(dir).map(Some),
            (None, Some(dir)) => Tokenizer::from_dir(dir).map(Some),
            (None, None) if self.max_input_tokens == 0 => Ok(None),
            (None, None) => Err(Error::Invalid(
                "--endpoint: middle truncation counts tokens, so give --tokenizer DIR (the served \
                 model's folder with tokenizer.json), or --max-input-tokens 0 to send prompts whole"
                    .into(),
            )),
        }
    }
}

/// Runs `longrl eval`: with `--model` (or a local judge) on `device`, else over HTTP only.
pub fn run(args: EvalArgs, device: DeviceSpec) -> Result<()> {
    let summary = if args.model.is_some() || args.judge.judge_checkpoint.is_some() {
        device.run(EvalTask(args))??
    } else {
        let judge = args.judge.http()?;
        run_endpoint(&args, judge)?
    };
    print_summary(&summary);
    Ok(())
}

fn run_endpoint(
    args: &EvalArgs,
    judge: Option<std::sync::Arc<dyn crate::reward::Judge>>,
) -> Result<Summary> {
    let (Some(url), Some(model)) = (&args.endpoint, &args.served_model) else {
        return Err(Error::Invalid(
            "give --model DIR, or --endpoint URL with --served-model NAME".into(),
        ));
    };
    let client = ChatClient::new(
        ChatClientConfig {
            url: url.clone(),
            api_key: args.endpoint_api_key.clone(),
            concurrency: args.endpoint_concurrency,
            timeout: Duration::from_secs_f64(args.endpoint_timeout.max(0.001)),
            max_retries: args.endpoint_retries,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(64),
            breaker: None,
        },
        OptionNames {
            url: "--endpoint",
            concurrency: "--endpoint-concurrency",
            timeout: "--endpoint-timeout",
        },
    )?;
    let mut responder = EndpointResponder::new(
        client,
        model.clone(),
        EndpointSampling {
            temperature: args.temperature,
            top_p: args.top_p,
            max_new_tokens: args.max_new_tokens,
        },
    );
    let tokenizer = args.tokenizer()?;
    let options = args.options(responder.describe())?;
    run_eval(&mut responder, tokenizer.as_ref(), judge, &options)
}

struct EvalTask(EvalArgs);

impl BackendFn for EvalTask {
    type Output = Result<Summary>;

    fn call<B: ModelBackend>(self, device: B::Device) -> Result<Summary> {
        let args = self.0;
        let judge = args.judge.build::<B>(&device)?;
        let Some(dir) = args.model.clone() else {
            return run_endpoint(&args, judge);
        };
        let model = load_adapted::<B>(&dir, args.adapter.as_deref(), None, &device)?;
        let config = model.config().clone();
        let mut tokenizer = Tokenizer::from_dir(&dir)?;
        tokenizer.check_fits(config.vocab_size)?;
        args.template.apply(&mut tokenizer)?;
        tokenizer.template()?;
        let counter = args.tokenizer()?;
        let stop = stop_token_ids(&dir, &config, Some(&tokenizer))?;
        let pad = pad_token_id(Some(&tokenizer), &stop);
        let engine = Engine::new(
            &model,
            device,
            EngineOptions {
                pad_token_id: pad,
                prefill_chunk: args.prefill_chunk,
                max_cache_bytes: args
                    .max_kv_cache_gib
                    .map(|g| (g * (1u64 << 30) as f64) as usize),
                shapes: crate::shapes::Shapes::auto::<B>(),
                max_prompt_len: None,
            },
        )
        .with_detokenizer(Box::new(|ids: &[u32]| tokenizer.decode(ids, true)));
        let params = SamplingParams {
            temperature: args.temperature,
            top_p: if args.temperature == 0.0 {
                1.0
            } else {
                args.top_p
            },
            top_k: 0,
            max_new_tokens: args.max_new_tokens,
            stop_token_ids: stop,
            stop_strings: Vec::new(),
        };
        let name = dir.display().to_string();
        let mut responder = LocalResponder::new(engine, &tokenizer, params, name.clone())?;
        let options = args.options(name)?;
        run_eval(&mut responder, counter.as_ref(), judge, &options)
    }
}

fn print_summary(summary: &Summary) {
    for b in Benchmark::ALL {
        let Some(s) = summary.benchmarks.get(b.name()) else {
            continue;
        };
        let name = b.name();
        println!(
            "{name:>12}: {:5.1} ± {:.1}  ({} items, {} answers; paper QwenLong-L1-32B {:.1})",
            s.accuracy, s.stderr, s.items, s.n, s.paper_qwenlong_l1_32b
        );
    }
    println!(
        "{:>12}: {:5.1} ± {:.1}",
        "average", summary.average, summary.average_stderr
    );
}
