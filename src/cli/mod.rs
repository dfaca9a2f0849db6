//! The `longrl` command line: `info`, `score`, `generate`, `template`, `reward`, `sft`, `rl`,
//! `pipeline`, `eval`, `plan`, `bench`, `plot`, `merge`.

mod ablate;
mod bench;
mod eval;
mod judge;
mod merge;
mod plan;
mod plot;
mod reward;
mod template;
mod train;

pub use train::{load_pipeline_file, load_rl_file, load_sft_file};

use crate::model::ModelBackend;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::device::{BackendFn, DeviceSpec};
use crate::error::{Error, Result};
use crate::generate::{
    pad_token_id, sample_seed, stop_token_ids, Engine, EngineOptions, GenerateRequest,
    SamplingParams,
};
use crate::io::JsonlReader;
use crate::model::{checkpoint, load_adapted, Qwen2Config, DEFAULT_LOGITS_CHUNK};
use crate::tokenizer::{Message, Tokenizer};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Train long-context reasoning LLMs with the QwenLong-L1 recipe.
#[derive(Debug, Parser)]
#[command(name = "longrl", version, about)]
pub struct Cli {
    /// Device: flex (CPU), ndarray, wgpu[:N], cuda[:N]. Default: the best compiled-in device.
    #[arg(long, global = true, value_parser = parse_device)]
    pub device: Option<DeviceSpec>,
    /// Log more (repeat for debug output).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Folder of the persistent cubecl caches (autotune results; CUDA kernels) and compile logs.
    /// Default: `$LONGRL_CACHE_DIR`, else `$XDG_CACHE_HOME/longrl/cubecl`, else
    /// `~/.cache/longrl/cubecl`.
    #[arg(long, global = true)]
    pub jit_cache: Option<PathBuf>,
    /// cubecl autotune effort on wgpu/CUDA: minimal, balanced, extensive, full (cubecl's default
    /// when unset).
    #[arg(long, global = true)]
    pub autotune_level: Option<String>,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Any known device name: a device this build lacks is refused where it is used, so `plan` can
/// plan for it.
fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    DeviceSpec::parse_any(s).map_err(|e: Error| e.to_string())
}

/// longrl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summarise a model folder: architecture, parameter count, dtype.
    Info(InfoArgs),
    /// Log-probability of every token of each input given the tokens before it.
    Score(ScoreArgs),
    /// Continue each input with the model: greedy or sampled, n samples per input.
    Generate(GenerateArgs),
    /// Render conversations with the model's chat template and tokenise them, as transformers'
    /// `apply_chat_template` does: exactly what the model sees.
    Template(template::TemplateArgs),
    /// Reward responses with the QwenLong-L1 rules and, if asked, an LLM judge (JSONL in and out).
    Reward(reward::RewardArgs),
    /// Supervised fine-tuning (the warm-up phase) from a TOML config.
    Sft(train::TrainArgs),
    /// GRPO / DAPO reinforcement learning from a TOML config.
    Rl(train::TrainArgs),
    /// The QwenLong-L1 pipeline: SFT, curriculum RL stages, retrospective sampling, evaluation.
    Pipeline(train::TrainArgs),
    /// The recipe's parts measured: arms (flat, curriculum, curriculum+retrospective, the
    /// QwenLong-L1.5 stabilisers) x seeds from one SFT start, held-out accuracy with 95% intervals.
    Ablate(ablate::AblateArgs),
    /// The seven long-document QA benchmarks of QwenLong-L1's Table 4, for a longrl model or a
    /// served one (`--endpoint`).
    Eval(Box<eval::EvalArgs>),
    /// Per-device memory of a training config (weights, gradients, optimiser state,
    /// activations, KV cache, reference) and whether it fits, without loading anything.
    Plan(plan::PlanArgs),
    /// Measure training or rollout throughput and peak memory for a model or a bare config.
    Bench(bench::BenchArgs),
    /// PNG charts of a run (reward, entropy, KL, response length, clip fraction, SFT loss).
    Plot(plot::PlotArgs),
    /// Fold a PEFT LoRA adapter into its base and write a plain HuggingFace model folder.
    Merge(merge::MergeArgs),
}

/// Arguments of `longrl info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// HuggingFace model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `longrl score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// HuggingFace model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder applied on `--model` (its base).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL file: each line `{"input_ids": [..]}`, `{"text": ".."}` or `{"messages": [..]}`
    /// (the whole conversation through the chat template, no generation prompt).
    #[arg(long)]
    pub input: PathBuf,
    /// Positions projected to the vocabulary at once (bounds memory for long inputs).
    #[arg(long, default_value_t = DEFAULT_LOGITS_CHUNK)]
    pub logits_chunk: usize,
    /// The chat template for `messages` inputs.
    #[command(flatten)]
    pub template: ChatTemplateArgs,
}

/// The chat template a command renders conversations with.
#[derive(Debug, Clone, Default, Args)]
pub struct ChatTemplateArgs {
    /// Chat template: a .jinja file, a template the model folder names, or a built-in (chatml,
    /// qwen2.5, qwen3, r1). Default: the model's own (chat_template.jinja or
    /// tokenizer_config.json).
    #[arg(long)]
    pub chat_template: Option<String>,
    /// Extra chat template variables as a JSON object (transformers' `chat_template_kwargs`),
    /// e.g. '{"enable_thinking": false}'.
    #[arg(long, value_parser = parse_json_object)]
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
}

impl ChatTemplateArgs {
    /// Applies the choice to a loaded tokenizer.
    pub fn apply(&self, tokenizer: &mut Tokenizer) -> Result<()> {
        if let Some(spec) = &self.chat_template {
            tokenizer
                .set_chat_template(spec)
                .map_err(|e| Error::Invalid(format!("--chat-template: {e}")))?;
        }
        if let Some(kwargs) = &self.chat_template_kwargs {
            tokenizer.set_chat_template_kwargs(kwargs);
        }
        Ok(())
    }

    /// Applies the choice to a config's `[model]` section (the flags win over the file; the
    /// kwargs are merged into the file's).
    pub fn apply_model(&self, model: &mut crate::config::ModelSection) {
        if let Some(spec) = &self.chat_template {
            model.chat_template = Some(spec.clone());
        }
        if let Some(kwargs) = &self.chat_template_kwargs {
            let merged = model
                .chat_template_kwargs
                .get_or_insert_with(Default::default);
            merged.extend(kwargs.clone());
        }
    }
}

/// A JSON object given on the command line.
fn parse_json_object(s: &str) -> std::result::Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str(s) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("expected a JSON object, e.g. '{\"enable_thinking\": false}'".into()),
        Err(e) => Err(format!("not valid JSON ({e}); expected a JSON object")),
    }
}

/// Arguments of `longrl generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// HuggingFace model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A PEFT LoRA adapter folder applied on `--model` (its base).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// JSONL file: each line `{"input_ids": [..]}`, `{"text": ".."}` or `{"messages": [..]}`.
    #[arg(long)]
    pub input: PathBuf,
    /// Most new tokens per sample.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Samples per input (a GRPO group: the prompt is prefilled once and shared).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass (1 is off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sample from the k most probable tokens only (0 is off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampling streams (sample j of input line i uses its own stream).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A string that ends a sample (repeatable); the text is cut before it.
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Inputs decoded together in one batch (each with its n samples).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// The chat template for `messages` inputs.
    #[command(flatten)]
    pub template: ChatTemplateArgs,
    /// Prompt tokens prefilled per forward pass.
    #[arg(long, default_value_t = 2048)]
    pub prefill_chunk: usize,
    /// Largest KV cache one batch may allocate, in GiB (f32); default: no limit.
    #[arg(long)]
    pub max_kv_cache_gib: Option<f64>,
    /// No progress bar on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses the command line and runs it; errors are returned for `main` to print.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let cache = cli
        .jit_cache
        .clone()
        .unwrap_or_else(crate::jit::default_cache_dir);
    if let Err(e) = crate::jit::configure_caches(&cache, cli.autotune_level.as_deref()) {
        if cli.autotune_level.is_some() {
            return Err(e.into());
        }
        log::warn!(
            "cubecl caches under {} not switched on: {e}",
            cache.display()
        );
    }
    let device = cli.device.unwrap_or_else(DeviceSpec::best_available);
    match cli.command {
        Command::Info(args) => info(&args)?,
        Command::Score(args) => device.run(ScoreTask(args))??,
        Command::Generate(args) => device.run(GenerateTask(args))??,
        Command::Template(args) => template::run(&args)?,
        Command::Reward(args) => reward::run(args, device)?,
        Command::Sft(args) => train::run_sft(args, cli.device)?,
        Command::Rl(args) => train::run_rl(args, cli.device)?,
        Command::Pipeline(args) => train::run_pipeline(args, cli.device)?,
        Command::Ablate(args) => ablate::run(args, cli.device)?,
        Command::Eval(args) => eval::run(*args, device)?,
        Command::Plan(args) => plan::run(&args, cli.device)?,
        Command::Bench(args) => bench::run(args, device)?,
        Command::Plot(args) => plot::run(&args)?,
        Command::Merge(args) => device.run(merge::MergeTask(args))??,
    }
    Ok(())
}

fn info(args: &InfoArgs) -> anyhow::Result<()> {
    let config = Qwen2Config::from_file(args.model.join("config.json"))?;
    let files = checkpoint::weight_files(&args.model).ok();
    // A weight file cut short is an error here, not a summary of its header.
    for file in files.iter().flatten() {
        checkpoint::check_weight_file(file)?;
    }
    let summary = json!({
        "model_type": config.model_type.as_str(),
        "architecture": config.model_type.architecture(),
        "qk_norm": config.qk_norm,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "rope_theta": config.rope_theta,
        "rope_scaling": format!("{:?}", config.rope_scaling),
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        "dtype": config.torch_dtype.clone().unwrap_or_else(|| "unspecified".into()),
        "parameters": config.num_parameters(),
        "weight_files": files.as_ref().map(|f| f.len()).unwrap_or(0),
    });
    if args.json {
        println!("{summary}");
        return Ok(());
    }
    let gqa = if config.num_key_value_heads < config.num_attention_heads {
        format!(
            " (GQA, {} query heads per KV head)",
            config.num_key_value_groups()
        )
    } else {
        String::new()
    };
    println!("model       {}", args.model.display());
    println!(
        "arch        {} ({}{})",
        config.model_type.architecture(),
        config.model_type,
        if config.qk_norm { ", q/k norm" } else { "" }
    );
    println!(
        "layers      {} x (hidden {}, MLP {}, heads {}/{} kv{gqa}, head_dim {})",
        config.num_hidden_layers,
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim
    );
    println!(
        "vocab       {} ({} lm_head)",
        config.vocab_size,
        if config.tie_word_embeddings {
            "tied"
        } else {
            "untied"
        }
    );
    println!(
        "rope        theta {} scaling {:?}",
        config.rope_theta, config.rope_scaling
    );
    println!("context     {} positions", config.max_position_embeddings);
    println!(
        "dtype       {}",
        summary["dtype"].as_str().unwrap_or_default()
    );
    println!(
        "parameters  {} ({:.2}B)",
        config.num_parameters(),
        config.num_parameters() as f64 / 1e9
    );
    match files {
        Some(f) => println!("weights     {} safetensors file(s)", f.len()),
        None => println!("weights     none found (config only)"),
    }
    Ok(())
}

/// A parsed input line.
enum InputLine {
    Ids(Vec<u32>),
    Text(String),
    Messages(Vec<Message>),
}

/// Reads a JSONL input file; every bad line is an error naming the file and line.
fn read_inputs(path: &Path) -> Result<Vec<InputLine>> {
    let mut out = Vec::new();
    let expected = "an object with \"input_ids\" (list of token ids), \"text\" (string) or \"messages\" (list of {role, content})";
    JsonlReader::new(path)
        .on_bad_line(|e| format!("not valid JSON ({e}); expected {expected}"))
        .for_each(|n, value: Value| {
            let item = if let Some(ids) = value.get("input_ids") {
                let ids: Vec<u32> = serde_json::from_value(ids.clone()).map_err(|_| {
                    Error::input(
                        path,
                        n,
                        "field \"input_ids\": expected a list of non-negative integers",
                    )
                })?;
                InputLine::Ids(ids)
            } else if let Some(text) = value.get("text") {
                let text = text
                    .as_str()
                    .ok_or_else(|| Error::input(path, n, "field \"text\": expected a string"))?;
                InputLine::Text(text.to_string())
            } else if let Some(msgs) = value.get("messages") {
                let msgs: Vec<Message> = serde_json::from_value(msgs.clone()).map_err(|_| {
                    Error::input(
                        path,
                        n,
                        "field \"messages\": expected a list of {\"role\": string, \"content\": string}",
                    )
                })?;
                InputLine::Messages(msgs)
            } else {
                return Err(Error::input(path, n, format!("expected {expected}")));
            };
            out.push(item);
            Ok(())
        })?;
    Ok(out)
}

/// Loads the tokenizer of `dir` when the inputs need one, checking it fits the model.
fn tokenizer_for(dir: &Path, needed: bool, vocab: usize) -> Result<Option<Tokenizer>> {
    let path = dir.join("tokenizer.json");
    if !needed && !path.exists() {
        return Ok(None);
    }
    let tok = Tokenizer::from_dir(dir)?;
    tok.check_fits(vocab)?;
    Ok(Some(tok))
}

fn check_ids(ids: &[u32], vocab: usize, path: &Path, line: usize) -> Result<()> {
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(bad) => Err(Error::input(
            path,
            line,
            format!("token id {bad} is out of range for the model's vocab_size {vocab}"),
        )),
        None => Ok(()),
    }
}

struct ScoreTask(ScoreArgs);

impl BackendFn for ScoreTask {
    type Output = Result<()>;

    fn call<B: ModelBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let inputs = read_inputs(&args.input)?;
        let needs_tok = inputs.iter().any(|i| !matches!(i, InputLine::Ids(_)));
        let model = load_adapted::<B>(&args.model, args.adapter.as_deref(), None, &device)?;
        let vocab = model.config().vocab_size;
        let mut tok = tokenizer_for(&args.model, needs_tok, vocab)?;
        if let Some(t) = tok.as_mut() {
            args.template.apply(t)?;
        }
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (i, item) in inputs.into_iter().enumerate() {
            let ids = match item {
                InputLine::Ids(ids) => ids,
                InputLine::Text(t) => tok.as_ref().expect("loaded for text").encode(&t, true)?,
                InputLine::Messages(m) => tok.as_ref().expect("loaded").encode_chat(&m, false)?,
            };
            check_ids(&ids, vocab, &args.input, i + 1)?;
            let lp = model.sequence_logprobs(&ids, args.logits_chunk, &device)?;
            let line = json!({"input_ids": ids, "token_logprobs": lp});
            writeln!(out, "{line}").map_err(|e| Error::io("<stdout>", e))?;
        }
        Ok(())
    }
}

struct GenerateTask(GenerateArgs);

impl BackendFn for GenerateTask {
    type Output = Result<()>;

    fn call<B: ModelBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let inputs = read_inputs(&args.input)?;
        let needs_tok =
            !args.stop.is_empty() || inputs.iter().any(|i| !matches!(i, InputLine::Ids(_)));
        let model = load_adapted::<B>(&args.model, args.adapter.as_deref(), None, &device)?;
        let config = model.config().clone();
        let mut tok = tokenizer_for(&args.model, needs_tok, config.vocab_size)?;
        if let Some(t) = tok.as_mut() {
            args.template.apply(t)?;
        }
        let mut prompts = Vec::with_capacity(inputs.len());
        for (i, item) in inputs.into_iter().enumerate() {
            let ids = match item {
                InputLine::Ids(ids) => ids,
                InputLine::Text(t) => tok.as_ref().expect("loaded").encode(&t, true)?,
                InputLine::Messages(m) => tok.as_ref().expect("loaded").encode_chat(&m, true)?,
            };
            if ids.is_empty() {
                return Err(Error::input(
                    &args.input,
                    i + 1,
                    "empty input: at least one token is needed",
                ));
            }
            check_ids(&ids, config.vocab_size, &args.input, i + 1)?;
            prompts.push(ids);
        }
        let stop = stop_token_ids(&args.model, &config, tok.as_ref())?;
        let pad = pad_token_id(tok.as_ref(), &stop);
        let params = SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            max_new_tokens: args.max_new_tokens,
            stop_token_ids: stop,
            stop_strings: args.stop.clone(),
        };
        params.validate()?;
        let options = EngineOptions {
            pad_token_id: pad,
            prefill_chunk: args.prefill_chunk,
            max_cache_bytes: args
                .max_kv_cache_gib
                .map(|g| (g * (1u64 << 30) as f64) as usize),
            shapes: crate::shapes::Shapes::auto::<B>(),
            max_prompt_len: None,
        };
        let mut engine = Engine::new(&model, device, options);
        if let Some(t) = &tok {
            engine = engine.with_detokenizer(Box::new(move |ids: &[u32]| t.decode(ids, true)));
        }
        let total = (prompts.len() * args.n * args.max_new_tokens) as u64;
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} tokens (at most) {per_sec}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (b, batch) in prompts.chunks(args.batch_size.max(1)).enumerate() {
            let first = b * args.batch_size.max(1);
            let requests: Vec<GenerateRequest> = batch
                .iter()
                .enumerate()
                .map(|(k, p)| GenerateRequest {
                    prompt: p.clone(),
                    seeds: (0..args.n as u64)
                        .map(|j| sample_seed(args.seed, (first + k) as u64, j))
                        .collect(),
                })
                .collect();
            let results =
                engine.generate_with_progress(&requests, &params, &mut |n| bar.inc(n as u64))?;
            for (k, samples) in results.into_iter().enumerate() {
                for (j, s) in samples.into_iter().enumerate() {
                    let line = json!({
                        "index": first + k,
                        "sample": j,
                        "output_ids": s.output_ids,
                        "text": s.text.unwrap_or_default(),
                        "finish_reason": s.finish_reason,
                        "logprobs": s.logprobs,
                    });
                    writeln!(out, "{line}").map_err(|e| Error::io("<stdout>", e))?;
                }
            }
        }
        bar.finish_and_clear();
        Ok(())
    }
}

/// Runs the CLI, printing any error as `error: ...` and returning the process exit code.
pub fn run_main() -> std::process::ExitCode {
    match main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
