//! `longrl bench train` / `longrl bench generate`: size a run on one's own hardware.

use crate::model::{ModelBackend, TrainBackend};
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::train::load_rl_file;
use crate::bench::{
    bench_allreduce, bench_generate, bench_model, bench_train, parameters, report, AllReduceReport,
    BenchReport,
};
use crate::config::Overrides;
use crate::device::{AutodiffBackendFn, BackendFn, DeviceSpec};
use crate::distributed::{launch, DistributedSection, Worker, BUCKET_ELEMENTS};
use crate::error::{Error, Result};
use crate::rl::bench::{bench_rl, RlBenchReport};
use crate::rl::RlFile;

/// Arguments of `longrl bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub what: BenchCommand,
}

/// The measurements of `longrl bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training steps (forward, backward, AdamW) on `--batch` sequences of `--seq-len` tokens.
    Train(BenchTrainArgs),
    /// Rollout decoding: `--batch` prompts of `--seq-len` tokens, `--n` samples each.
    Generate(BenchGenerateArgs),
    /// Data-parallel training steps: the gradient all-reduce's time and bytes per optimiser step
    /// across `--devices` (and `--nodes`), and the whole step's time.
    Allreduce(BenchAllReduceArgs),
    /// Real RL steps of a config (rollouts, rewards, update) after the stage's warm-up: seconds
    /// and kernels compiled per step, rollout and training tokens per second.
    Rl(BenchRlArgs),
}

/// Options of `longrl bench rl`.
#[derive(Debug, Clone, Args)]
pub struct BenchRlArgs {
    /// An RL config (`longrl rl --config`); its run directory is not touched.
    #[arg(long)]
    pub config: PathBuf,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Shapes: `auto`, `bucketed` or `exact` (overrides `[rl.shapes] policy`).
    #[arg(long)]
    pub shapes: Option<String>,
    /// Skip the warm-up (overrides `[rl.shapes] warmup`).
    #[arg(long)]
    pub no_warmup: bool,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `longrl bench allreduce`.
#[derive(Debug, Clone, Args)]
pub struct BenchAllReduceArgs {
    /// Model folder, or a `config.json` file for random weights of that shape.
    #[arg(long)]
    pub model: PathBuf,
    /// This machine's devices, one worker each (`flex,flex`, `cuda:0,cuda:1`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub devices: Vec<String>,
    /// Machines in the run.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// This machine's rank.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// `HOST:PORT` of node rank 0's orchestrator.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Sequences per worker per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `longrl bench train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model folder, or a `config.json` file for random weights of that shape.
    #[arg(long)]
    pub model: PathBuf,
    /// Tokens per sequence.
    #[arg(long)]
    pub seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Mixed precision: bf16 forward and backward from f32 master weights.
    #[arg(long)]
    pub bf16: bool,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `longrl bench generate`.
#[derive(Debug, Args)]
pub struct BenchGenerateArgs {
    /// Model folder, or a `config.json` file for random weights of that shape.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt tokens.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Prompts.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Samples per prompt (they share the prompt's prefill).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// New tokens per sample.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Nucleus mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Timed generate calls (after one warm-up call).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `longrl bench` on `device`.
pub fn run(args: BenchArgs, device: DeviceSpec) -> Result<()> {
    let name = device.to_string();
    let (report, json) = match args.what {
        BenchCommand::Train(a) => {
            let json = a.json;
            (device.run_autodiff(TrainTask(a, name))??, json)
        }
        BenchCommand::Generate(a) => {
            let json = a.json;
            (device.run(GenerateTask(a, name))??, json)
        }
        BenchCommand::Allreduce(a) => return run_allreduce(a, device),
        BenchCommand::Rl(a) => return run_rl(a, device),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
    } else {
        let peak = report
            .peak_memory_bytes
            .map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{} on {}: {:.1} tokens/s, {:.3} s per step, peak memory {peak} ({} parameters{}, batch {}, {} tokens)",
            report.bench,
            report.device,
            report.tokens_per_s,
            report.seconds_per_step,
            report.parameters,
            if report.random_weights { ", random weights" } else { "" },
            report.batch,
            report.seq_len,
        );
    }
    Ok(())
}

fn run_rl(a: BenchRlArgs, device: DeviceSpec) -> Result<()> {
    let mut file = load_rl_file(&a.config, &Overrides::default())?;
    if let Some(policy) = &a.shapes {
        file.rl.shapes.policy = serde_json::from_value(serde_json::Value::String(policy.clone()))
            .map_err(|_| {
            Error::Invalid(format!(
                "--shapes {policy}: expected auto, bucketed or exact"
            ))
        })?;
    }
    if a.no_warmup {
        file.rl.shapes.warmup = false;
    }
    let json = a.json;
    let report = device.run_autodiff(RlBenchTask(a, file, device.to_string()))??;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
        return Ok(());
    }
    let count = |k: Option<u64>| k.map_or_else(|| "n/a".to_string(), |k| k.to_string());
    println!(
        "rl on {} ({} shapes): warm-up {:.2} s ({} kernels compiled)",
        report.device,
        if report.bucketed { "bucketed" } else { "exact" },
        report.warmup_s,
        count(report.warmup_kernels_compiled)
    );
    for s in &report.steps {
        println!(
            "step {}: {:.3} s (rollout {:.3} s, update {:.3} s), {} kernels compiled, {} autotunes, {} rollout / {} train tokens",
            s.step, s.step_s, s.gen_s, s.update_s, count(s.kernels_compiled), count(s.autotunes),
            s.rollout_tokens, s.train_tokens
        );
    }
    println!(
        "median step {:.3} s, slowest {:.2}x the median, {} kernels compiled after step 1; {:.1} rollout tokens/s, {:.1} train tokens/s",
        report.step_s_median,
        report.slowest_over_median,
        count(report.kernels_compiled_after_first),
        report.rollout_tokens_per_s,
        report.train_tokens_per_s
    );
    Ok(())
}

struct RlBenchTask(BenchRlArgs, RlFile, String);

impl AutodiffBackendFn for RlBenchTask {
    type Output = Result<RlBenchReport>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        let RlBenchTask(args, file, name) = self;
        bench_rl::<B>(
            &file,
            args.steps,
            None,
            device,
            &name,
            &args.config.display().to_string(),
        )
    }
}

fn run_allreduce(a: BenchAllReduceArgs, device: DeviceSpec) -> Result<()> {
    let section = DistributedSection {
        devices: a.devices.clone(),
        nodes: a.nodes,
        node_rank: a.node_rank,
        coordinator: a.coordinator.clone(),
        ..DistributedSection::default()
    };
    let plan = section.plan(device)?;
    let names = plan
        .devices
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let (world, nodes) = (plan.world(), a.nodes);
    let task = a.clone();
    let (params, allreduce_s, step_s) = launch(&plan, move |worker: Worker| {
        worker
            .device
            .run_autodiff(AllReduceTask(task.clone(), worker.clone()))?
    })?;
    let bytes = 4 * params as u64;
    let report = AllReduceReport {
        bench: "allreduce".into(),
        devices: names,
        world,
        nodes,
        model: a.model.display().to_string(),
        parameters: params,
        bytes_per_step: bytes,
        allreduces_per_step: params.div_ceil(BUCKET_ELEMENTS),
        allreduce_s,
        seconds_per_step: step_s,
        bytes_per_s: bytes as f64 / allreduce_s.max(1e-12),
        tokens_per_s: (world * a.batch * a.seq_len) as f64 / step_s,
        batch: a.batch,
        seq_len: a.seq_len,
        steps: a.steps,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).expect("a report serialises")
        );
    } else {
        println!(
            "allreduce over {} workers ({} per machine: {}): {:.1} MB of gradients per step in {:.4} s ({:.2} GB/s); step {:.3} s, {:.1} tokens/s ({} parameters, batch {} x {} tokens per worker)",
            report.world,
            plan.devices.len(),
            report.devices,
            bytes as f64 / 1e6,
            report.allreduce_s,
            report.bytes_per_s / 1e9,
            report.seconds_per_step,
            report.tokens_per_s,
            report.parameters,
            report.batch,
            report.seq_len,
        );
    }
    Ok(())
}

/// One worker of `longrl bench allreduce`: (parameters, all-reduce seconds, step seconds).
struct AllReduceTask(BenchAllReduceArgs, Worker);

impl AutodiffBackendFn for AllReduceTask {
    type Output = Result<(usize, f64, f64)>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        let (a, worker) = (self.0, self.1);
        worker.run::<B::InnerBackend, _>(&device.clone(), || {
            let (model, _) = bench_model::<B>(&a.model, &device)?;
            let model = crate::train::stable_param_ids(model);
            let params = parameters(&model);
            let (reduce, step) =
                bench_allreduce(model, &worker, a.batch, a.seq_len, a.steps, &device)?;
            Ok((params, reduce, step))
        })
    }
}

struct TrainTask(BenchTrainArgs, String);

impl AutodiffBackendFn for TrainTask {
    type Output = Result<BenchReport>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Result<BenchReport> {
        let a = self.0;
        let (model, random) = bench_model::<B>(&a.model, &device)?;
        let model = model
            .with_gradient_checkpointing(a.gradient_checkpointing)
            .with_compute_dtype(a.bf16.then_some(burn::tensor::FloatDType::BF16));
        let params = parameters(&model);
        let (secs, peak) = bench_train(model, a.batch, a.seq_len, a.steps, &device)?;
        Ok(report(
            "train",
            self.1,
            &a.model,
            params,
            random,
            a.batch,
            a.seq_len,
            a.steps,
            a.batch * a.seq_len,
            secs,
            peak,
        ))
    }
}

struct GenerateTask(BenchGenerateArgs, String);

impl BackendFn for GenerateTask {
    type Output = Result<BenchReport>;

    fn call<B: ModelBackend>(self, device: B::Device) -> Result<BenchReport> {
        let a = self.0;
        let (model, random) = bench_model::<B>(&a.model, &device)?;
        let (secs, peak) = bench_generate(
            &model,
            a.batch,
            a.seq_len,
            a.n,
            a.new_tokens,
            a.temperature,
            a.top_p,
            a.steps,
            &device,
        )?;
        Ok(report(
            "generate",
            self.1,
            &a.model,
            parameters(&model),
            random,
            a.batch * a.n,
            a.seq_len,
            a.steps,
            a.batch * a.n * (a.new_tokens - 1),
            secs,
            peak,
        ))
    }
}
