//! `longrl ablate`: the recipe's parts measured against each other (see [`crate::ablation`]).

use std::path::PathBuf;

use clap::Args;

use crate::ablation::{self, AblationSection};
use crate::config::Overrides;
use crate::device::{AutodiffBackendFn, DeviceSpec};
use crate::error::Result;
use crate::model::TrainBackend;
use crate::pipeline::PipelineFile;

/// Arguments of `longrl ablate`.
#[derive(Debug, Args)]
pub struct AblateArgs {
    /// A pipeline config (see `configs/tiny-ablation.toml`), with an optional `[ablation]`
    /// section (`seeds`, `arms`).
    #[arg(long)]
    pub config: PathBuf,
    /// Run directory (overrides `[run] run_dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Seeds per arm (overrides `[ablation] seeds`).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// First seed (overrides `[run] seed`; also the data's and the SFT's seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue an interrupted ablation: finished runs are read back, the others resume.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The ablation on one device.
struct AblateTask {
    file: PipelineFile,
    section: AblationSection,
    resume: bool,
    progress: bool,
}

impl AutodiffBackendFn for AblateTask {
    type Output = Result<ablation::AblationReport>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        ablation::run::<B>(
            &self.file,
            &self.section,
            None,
            self.resume,
            self.progress,
            device,
        )
    }
}

/// Runs `longrl ablate`: prints the table and where the report went.
pub fn run(args: AblateArgs, device: Option<DeviceSpec>) -> Result<()> {
    let overrides = Overrides {
        run_dir: args.run_dir.clone(),
        seed: args.seed,
        max_steps: None,
        resume: args.resume,
    };
    let file = super::train::load_pipeline_file(&args.config, &overrides)?;
    if file.distributed.devices.len() > 1 || file.distributed.nodes > 1 {
        return Err(crate::error::Error::Invalid(format!(
            "{}: longrl ablate runs on one device; remove [distributed] (devices, nodes)",
            args.config.display()
        )));
    }
    let mut section = file.ablation.clone().unwrap_or_default();
    if let Some(n) = args.seeds {
        section.seeds = n;
    }
    let device = super::train::pick_device(device, file.run.device.as_deref())?;
    let root = file.run.run_dir.clone();
    let report = device.run_autodiff(AblateTask {
        file,
        section,
        resume: args.resume,
        progress: !args.quiet,
    })??;
    print!("{}", report.table());
    println!("report: {}", root.join("ablation.json").display());
    Ok(())
}
