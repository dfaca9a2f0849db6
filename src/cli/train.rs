//! `longrl sft` and `longrl rl`: training runs from a TOML config, with command-line overrides.

use crate::model::TrainBackend;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::{load_toml, resolve_path, Overrides};
use crate::device::{AutodiffBackendFn, DeviceSpec};
use crate::error::Result;
use crate::rl::{self, RlFile};
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
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
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
fn pick_device(cli: Option<DeviceSpec>, config: Option<&str>) -> Result<DeviceSpec> {
    match (cli, config) {
        (Some(d), _) => Ok(d),
        (None, Some(s)) => s.parse(),
        (None, None) => Ok(DeviceSpec::best_available()),
    }
}

/// Picks the device and records the resolved configuration as `RUN_DIR/config.toml`.
fn start_run<T: serde::Serialize>(
    file: &T,
    run: &crate::config::RunSection,
    device: Option<DeviceSpec>,
) -> Result<DeviceSpec> {
    let device = pick_device(device, run.device.as_deref())?;
    std::fs::create_dir_all(&run.run_dir).map_err(|e| crate::error::Error::io(&run.run_dir, e))?;
    let text = toml::to_string_pretty(file).unwrap_or_default();
    crate::model::checkpoint::write_atomic(&run.run_dir.join("config.toml"), text.as_bytes())?;
    Ok(device)
}

/// Reads an SFT config, resolving its paths and applying the overrides.
pub fn load_sft_file(path: &Path, overrides: &Overrides) -> Result<SftFile> {
    let mut file: SftFile = load_toml(path)?;
    file.model.path = resolve_path(path, &file.model.path);
    file.sft.train_file = resolve_path(path, &file.sft.train_file);
    file.sft.valid_file = file.sft.valid_file.as_ref().map(|p| resolve_path(path, p));
    overrides.apply(&mut file.run);
    if let Some(n) = overrides.max_steps {
        file.sft.max_steps = n;
    }
    Ok(file)
}

struct SftTask {
    file: SftFile,
    resume: bool,
}

impl AutodiffBackendFn for SftTask {
    type Output = Result<sft::SftSummary>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        let f = self.file;
        sft::train::<B>(&f.model, &f.run, &f.sft, self.resume, device)
    }
}

/// Runs `longrl sft`.
pub fn run_sft(args: TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let mut file = load_sft_file(&args.config, &args.overrides())?;
    if args.quiet {
        file.run.progress = false;
    }
    let device = start_run(&file, &file.run, device)?;
    let summary = device.run_autodiff(SftTask {
        file,
        resume: args.resume,
    })??;
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}

/// Reads an RL config, resolving its paths and applying the overrides.
pub fn load_rl_file(path: &Path, overrides: &Overrides) -> Result<RlFile> {
    let mut file: RlFile = load_toml(path)?;
    file.model.path = resolve_path(path, &file.model.path);
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

struct RlTask {
    file: RlFile,
    resume: bool,
}

impl AutodiffBackendFn for RlTask {
    type Output = Result<rl::RlSummary>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        let f = self.file;
        rl::train::<B>(&f.model, &f.run, &f.rl, None, self.resume, device)
    }
}

/// Runs `longrl rl`.
pub fn run_rl(args: TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let mut file = load_rl_file(&args.config, &args.overrides())?;
    if args.quiet {
        file.run.progress = false;
    }
    let device = start_run(&file, &file.run, device)?;
    let summary = device.run_autodiff(RlTask {
        file,
        resume: args.resume,
    })??;
    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    Ok(())
}

/// Reads a pipeline config, resolving its paths and applying the overrides.
pub fn load_pipeline_file(
    path: &Path,
    overrides: &Overrides,
) -> Result<crate::pipeline::PipelineFile> {
    let mut file: crate::pipeline::PipelineFile = load_toml(path)?;
    file.model.path = resolve_path(path, &file.model.path);
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

struct PipelineTask {
    file: crate::pipeline::PipelineFile,
    resume: bool,
}

impl AutodiffBackendFn for PipelineTask {
    type Output = Result<crate::pipeline::PipelineSummary>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        crate::pipeline::run::<B>(&self.file, None, self.resume, device)
    }
}

/// Runs `longrl pipeline`: prints the phase table and writes `RUN_DIR/summary.json`.
pub fn run_pipeline(args: TrainArgs, device: Option<DeviceSpec>) -> Result<()> {
    let mut file = load_pipeline_file(&args.config, &args.overrides())?;
    if args.quiet {
        file.run.progress = false;
    }
    let device = start_run(&file, &file.run, device)?;
    let run_dir = file.run.run_dir.clone();
    let summary = device.run_autodiff(PipelineTask {
        file,
        resume: args.resume,
    })??;
    print!("{}", crate::pipeline::summary_table(&summary.phases));
    println!("summary: {}", run_dir.join("summary.json").display());
    Ok(())
}
