//! Run metrics: the console progress bar shared by the trainers (metrics themselves are written as
//! JSONL by [`crate::train::RunDir::log_metrics`], with verl's names where they exist) and PNG
//! charts of a run's metrics log ([`plot`]).

pub mod plot;

pub use plot::{plot_metrics, plot_run};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr for `total` steps starting at `position`, labelled `label`; hidden
/// when `visible` is false.
pub fn progress_bar(total: u64, position: u64, visible: bool, label: &str) -> ProgressBar {
    let bar = if visible {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label} {{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} steps {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(position);
    bar
}
