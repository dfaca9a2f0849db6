//! `longrl plot RUN_DIR`: PNG charts of a run's metrics under `RUN_DIR/plots/`, one written path
//! printed per line.

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::metrics::plot_run;

/// Arguments of `longrl plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directory of `longrl sft` or `longrl rl` (reads its metrics.jsonl, writes plots/).
    pub run_dir: PathBuf,
}

/// Writes the charts and prints their paths.
pub fn run(args: &PlotArgs) -> Result<()> {
    let written = plot_run(&args.run_dir)?;
    if written.is_empty() {
        log::warn!(
            "{}: no chartable metrics found",
            args.run_dir.join("metrics.jsonl").display()
        );
    }
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}
