//! `longrl plan`: the per-device memory of a training config, before anything is loaded.

use std::path::PathBuf;

use clap::Args;

use crate::device::DeviceSpec;
use crate::error::Result;
use crate::plan::{MemoryPlan, PlanOptions, Workload};

/// Arguments of `longrl plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// TOML configuration of `sft`, `rl` or `pipeline` (see `configs/`).
    #[arg(long)]
    pub config: PathBuf,
    /// Data-parallel workers (overrides `[distributed] devices` x `nodes`).
    #[arg(long)]
    pub devices: Option<usize>,
    /// Memory of one device in GiB (default: the machine's RAM for CPU devices; required to
    /// say whether a GPU config fits, since the plan never touches a device).
    #[arg(long)]
    pub device_memory_gib: Option<f64>,
    /// A model `config.json` (or its folder) to plan with instead of `[model] path`'s.
    #[arg(long)]
    pub model_config: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `longrl plan`: the table (or JSON) on stdout; a config that does not fit is not an
/// error here (the training commands refuse it).
pub fn run(args: &PlanArgs, device: Option<DeviceSpec>) -> Result<()> {
    let workload = Workload::from_file(&args.config)?;
    let plan = MemoryPlan::new(
        &workload,
        &PlanOptions {
            device,
            devices: args.devices,
            device_memory_gib: args.device_memory_gib,
            model_config: args.model_config.clone(),
        },
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        print!("{}", plan.table());
    }
    Ok(())
}
