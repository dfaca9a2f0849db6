//! `longrl sft` and `longrl rl`: training runs from a TOML config, with command-line overrides.

use crate::model::TrainBackend;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Args;

use crate::config::{load_toml, resolve_path, ConfigRecord, Overrides};
use crate::device::{AutodiffBackendFn, DeviceSpec};
use crate::distributed::{launch, DistributedSection, Plan, Worker};
use crate::error::Result;
use crate::plan::{MemoryPlan, PlanOptions, Workload};
use crate::reward::Rewarder;
use crate::rl::{self, RlConfig, RlFile};
use crate::sft::{self, SftFile};

/// Options shared by the training commands.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML configuration (see `configs/`).
    #[arg(long)]
    pub config: PathBuf,
    /// Run directory (overrides `[run] run_dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Seed (overrides `[run] seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Optimiser steps (overrides the config's `max_steps`).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Continue from the latest checkpoint in the run directory.
    #[arg(long)]
    pub resume: bool,
    /// With `--resume`: go on even though the seed or a learning rate differ from the run's
    /// recorded `config.toml` (refused without it; other changed settings are only logged).
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Unknown fields (columns) in the data files are errors naming the file, line and field
    /// (sets `[sft] strict`, `[rl] strict` or `[data] strict`); by default they are ignored with
    /// one warning per file.
    #[arg(long)]
    pub strict: bool,
    /// Data parallelism: this machine's devices, one worker each, comma-separated
    /// (`cuda:0,cuda:1`; `flex,flex` runs two workers on one CPU). Overrides
    /// `[distributed] devices`.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Machines in a multi-machine run (overrides `[distributed] nodes`).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// This machine's rank, 0-based; rank 0 hosts the orchestrator (`[distributed] node_rank`).
    #[arg(long)]
    pub node_rank: Option<usize>,
    /// `HOST:PORT` of node rank 0's orchestrator (`[distributed] coordinator`).
    #[arg(long)]
    pub coordinator: Option<String>,
    /// The address other machines reach this one at (`[distributed] node_host`).
    #[arg(long)]
    pub node_host: Option<String>,
    /// Memory of one device in GiB for the memory plan checked before training (default: the
    /// machine's RAM for CPU devices; GPUs are not checked without it).
    #[arg(long)]
    pub device_memory_gib: Option<f64>,
    /// Start even when the memory plan says the config does not fit.
    #[arg(long)]
    pub no_plan_check: bool,
    /// The chat template prompts are rendered with (overrides `[model] chat_template` and
    /// `chat_template_kwargs`).
    #[command(flatten)]
    pub template: super::ChatTemplateArgs,
}

impl TrainArgs {
    /// Applies the data-parallel flags to a `[distributed]` section; a `--device` given on the
    /// command line (without `--devices`) replaces the section's devices.
    fn apply_distributed(&self, d: &mut DistributedSection, device: Option<DeviceSpec>) {
        if !self.devices.is_empty() {
            d.devices = self.devices.clone();
        } else if device.is_some() {
            d.devices.clear();
        }
        if let Some(n) = self.nodes {
            d.nodes = n;
        }
        if let Some(r) = self.node_rank {
            d.node_rank = r;
        }
        if let Some(c) = &self.coordinator {
            d.coordinator = Some(c.clone());
        }
        if let Some(h) = &self.node_host {
            d.node_host = Some(h.clone());
        }
    }

    /// Plans `workload` on `plan`'s devices and refuses it when it cannot fit (skipped with a
    /// log line when the device's memory is unknown, or with `--no-plan-check`).
    fn check_memory(&self, workload: &Workload, plan: &Plan) -> Result<()> {
        if self.no_plan_check {
            log::info!("memory plan: not checked (--no-plan-check)");
            return Ok(());
        }
        let options = PlanOptions {
            device: plan.devices.first().copied(),
            devices: Some(plan.world()),
            device_memory_gib: self.device_memory_gib,
            model_config: None,
        };
        let memory = MemoryPlan::new(workload, &options)?;
        match memory.fits {
            Some(false) => Err(memory.refusal()),
            Some(true) => {
                log::info!(
                    "memory plan: peak {:.2} GiB per device ({}), fits",
                    memory.peak_bytes as f64 / (1u64 << 30) as f64,
                    memory.peak_phase
                );
                Ok(())
            }
            None => {
                log::info!(
                    "memory plan: {} memory unknown, not checked (give --device-memory-gib)",
                    memory.device
                );
                Ok(())
            }
        }
    }

    fn overrides(&self) -> Overrides {
        Overrides {
            run_dir: self.run_dir.clone(),
            seed: self.seed,
            max_steps: self.max_steps,
            resume: self.resume,
        }
    }
}

/// The device: `--device`, else `[run] device`, else the best compiled-in one.
pub(super) fn pick_device(cli: Option<DeviceSpec>, config: Option<&str>) -> Result<DeviceSpec> {
    match (cli, config) {
        (Some(d), _) => Ok(d),
        (None, Some(s)) => s.parse(),
        (None, None) => Ok(DeviceSpec::best_available()),
    }
}

/// Resolves the devices (one, or the `[distributed]` set) and runs `check` on them (the memory
/// plan). The resolved configuration is not written here but by the run once every start-time
/// check has passed (`run.record`, see [`crate::train::record::record_config`]).
fn start_run(
    distributed: &DistributedSection,
    device: Option<DeviceSpec>,
    config_device: Option<&str>,
    check: impl FnOnce(&Plan) -> Result<()>,
) -> Result<Plan> {
    let device = pick_device(device, config_device)?;
    let plan = distributed.plan(device)?;
    check(&plan)?;
    if plan.world() > 1 {
        log::info!(
            "data parallel: {} workers ({} on this machine: {})",
            plan.world(),
            plan.devices.len(),
            plan.devices
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(plan)
}

/// A training job that one worker of a (possibly data-parallel) run executes on its device.
trait Job: Clone + Send + Sync + 'static {
    type Output: Send + 'static;
    fn run<B: TrainBackend>(&self, device: B::Device, worker: &Worker) -> Result<Self::Output>;
}

/// One worker's share of a [`Job`]: joins the run's collective, runs, leaves.
struct WorkerTask<J: Job> {
    job: J,
    worker: Worker,
}

impl<J: Job> AutodiffBackendFn for WorkerTask<J> {
    type Output = Result<J::Output>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        let worker = &self.worker;
        worker.run::<B::InnerBackend, _>(&device.clone(), || self.job.run::<B>(device, worker))
    }
}

/// Runs `job` on every device of `plan` (one device: in this thread) and returns rank 0's output.
fn run_job<J: Job>(plan: &Plan, job: J) -> Result<J::Output> {
    launch(plan, move |worker: Worker| {
        worker.device.run_autodiff(WorkerTask {
            job: job.clone(),
            worker: worker.clone(),
        })?
    })
}

/// Reads an SFT config, resolving its paths and applying the overrides.
pub fn load_sft_file(path: &Path, overrides: &Overrides) -> Result<SftFile> {
    let mut file: SftFile = load_toml(path)?;
    file.model.resolve(path, file.lora.clone())?;
    file.sft.train_file = resolve_path(path, &file.sft.train_file);
    file.sft.valid_file = file.sft.valid_file.as_ref().map(|p| resolve_path(path, p));
    overrides.apply(&mut file.run);
    if let Some(n) = overrides.max_steps {
        file.sft.max_steps = n;
    }
    Ok(file)
}

#[derive(Clone)]
struct SftTask {
    file: SftFile,
    resume: bool,
}

impl Job for SftTask {
    type Output = sft::SftSummary;

    fn run<B: TrainBackend>(&self, device: B::Device, worker: &Worker) -> Result<Self::Output> {
        let f = &self.file;
        sft::train_with::<B>(&f.model, &f.run, &f.sft, self.resume, device, worker)
    }
}

/// Runs `longrl sft`.
pub fn run_sft(args: TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let mut file = load_sft_file(&args.config, &args.overrides())?;
    file.sft.strict |= args.strict;
    args.template.apply_model(&mut file.model);
    if args.quiet {
        file.run.progress = false;
    }
    args.apply_distributed(&mut file.distributed, device);
    let workload = Workload::from_sft(&file);
    let plan = start_run(&file.distributed, device, file.run.device.as_deref(), |p| {
        args.check_memory(&workload, p)
    })?;
    file.run.record = Some(ConfigRecord::of(&file, args.force)?);
    let summary = run_job(
        &plan,
        SftTask {
            file,
            resume: args.resume,
        },
    )?;
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}

/// Reads an RL config, resolving its paths and applying the overrides.
pub fn load_rl_file(path: &Path, overrides: &Overrides) -> Result<RlFile> {
    let mut file: RlFile = load_toml(path)?;
    file.model.resolve(path, file.lora.clone())?;
    file.rl.train_file = resolve_path(path, &file.rl.train_file);
    file.rl.reward.judge_checkpoint = file
        .rl
        .reward
        .judge_checkpoint
        .as_ref()
        .map(|p| resolve_path(path, p));
    overrides.apply(&mut file.run);
    if let Some(n) = overrides.max_steps {
        file.rl.max_steps = n;
    }
    Ok(file)
}

/// The reward of a run, built once by the first worker that needs it and shared by the
/// process's workers, so the judge's concurrency bound holds for the whole process.
#[derive(Clone, Default)]
struct SharedRewarder(Arc<Mutex<Option<Arc<dyn Rewarder>>>>);

impl SharedRewarder {
    fn get<B: TrainBackend>(
        &self,
        config: &RlConfig,
        device: &B::Device,
    ) -> Result<Arc<dyn Rewarder>> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = slot.as_ref() {
            return Ok(r.clone());
        }
        let r = config
            .reward
            .build::<B::InnerBackend>(config.max_response_length, device)?;
        *slot = Some(r.clone());
        Ok(r)
    }
}

#[derive(Clone)]
struct RlTask {
    file: RlFile,
    resume: bool,
    rewarder: SharedRewarder,
}

impl Job for RlTask {
    type Output = rl::RlSummary;

    fn run<B: TrainBackend>(&self, device: B::Device, worker: &Worker) -> Result<Self::Output> {
        let f = &self.file;
        let rewarder = self.rewarder.get::<B>(&f.rl, &device)?;
        rl::train_with::<B>(
            &f.model,
            &f.run,
            &f.rl,
            Some(rewarder),
            self.resume,
            device,
            worker,
        )
    }
}

/// Runs `longrl rl`.
pub fn run_rl(args: TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let mut file = load_rl_file(&args.config, &args.overrides())?;
    file.rl.strict |= args.strict;
    args.template.apply_model(&mut file.model);
    if args.quiet {
        file.run.progress = false;
    }
    args.apply_distributed(&mut file.distributed, device);
    let workload = Workload::from_rl(&file);
    let plan = start_run(&file.distributed, device, file.run.device.as_deref(), |p| {
        args.check_memory(&workload, p)
    })?;
    file.run.record = Some(ConfigRecord::of(&file, args.force)?);
    let summary = run_job(
        &plan,
        RlTask {
            file,
            resume: args.resume,
            rewarder: SharedRewarder::default(),
        },
    )?;
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}

/// Reads a pipeline config, resolving its paths and applying the overrides.
pub fn load_pipeline_file(
    path: &Path,
    overrides: &Overrides,
) -> Result<crate::pipeline::PipelineFile> {
    let mut file: crate::pipeline::PipelineFile = load_toml(path)?;
    file.model.resolve(path, file.lora.clone())?;
    for p in [
        &mut file.data.train_file,
        &mut file.data.eval_file,
        &mut file.data.sft_file,
        &mut file.rl.reward.judge_checkpoint,
    ] {
        *p = p.as_ref().map(|x| resolve_path(path, x));
    }
    overrides.apply(&mut file.run);
    if let Some(n) = overrides.max_steps {
        for s in &mut file.stages {
            s.max_steps = n;
        }
        if let Some(sft) = &mut file.sft {
            sft.max_steps = n;
        }
    }
    Ok(file)
}

#[derive(Clone)]
struct PipelineTask {
    file: crate::pipeline::PipelineFile,
    resume: bool,
    rewarder: SharedRewarder,
}

impl Job for PipelineTask {
    type Output = crate::pipeline::PipelineSummary;

    fn run<B: TrainBackend>(&self, device: B::Device, worker: &Worker) -> Result<Self::Output> {
        let rewarder = self.rewarder.get::<B>(&self.file.rl, &device)?;
        crate::pipeline::run_with::<B>(&self.file, Some(rewarder), self.resume, device, worker)
    }
}

/// Runs `longrl pipeline`: prints the phase table and writes `RUN_DIR/summary.json`.
pub fn run_pipeline(args: TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let mut file = load_pipeline_file(&args.config, &args.overrides())?;
    file.data.strict |= args.strict;
    args.template.apply_model(&mut file.model);
    if args.quiet {
        file.run.progress = false;
    }
    args.apply_distributed(&mut file.distributed, device);
    let workload = Workload::from_pipeline(&file);
    let plan = start_run(&file.distributed, device, file.run.device.as_deref(), |p| {
        args.check_memory(&workload, p)
    })?;
    file.run.record = Some(ConfigRecord::of(&file, args.force)?);
    let run_dir = file.run.run_dir.clone();
    let summary = run_job(
        &plan,
        PipelineTask {
            file,
            resume: args.resume,
            rewarder: SharedRewarder::default(),
        },
    )?;
    print!("{}", crate::pipeline::summary_table(&summary.phases));
    println!("summary: {}", run_dir.join("summary.json").display());
    Ok(())
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    #[test]
    fn workers_share_one_rewarder() {
        // One judge client (and so one concurrency bound) for all the workers of a process.
        let shared = SharedRewarder::default();
        let config = RlConfig::default();
        let first = shared.get::<B>(&config, &Default::default()).unwrap();
        let other = shared.clone();
        let second = std::thread::spawn(move || {
            other
                .get::<B>(&RlConfig::default(), &Default::default())
                .unwrap()
        })
        .join()
        .unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let fresh = SharedRewarder::default()
            .get::<B>(&config, &Default::default())
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &fresh));
    }
}
