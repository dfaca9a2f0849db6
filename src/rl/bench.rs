//! `longrl bench rl`: N real RL steps of a config (rollouts of varying lengths, rewards,
//! update), timed one by one after the stage's warm-up, with the kernels a JIT backend compiled
//! in each (see [`crate::jit`]): the measure of whether shapes stay bounded.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::config::RlFile;
use super::trainer::{NoObserver, RlTrainer};
use super::warmup::WarmUpReport;
use crate::data::{load_rl_any_with, prepare_prompts, LoadOptions};
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::model::TrainBackend;
use crate::reward::Rewarder;

/// One timed step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlBenchStep {
    /// 1-based step.
    pub step: usize,
    /// Seconds of the whole step.
    pub step_s: f64,
    /// Seconds of the rollout stage.
    pub gen_s: f64,
    /// Seconds of the update stage.
    pub update_s: f64,
    /// Kernels compiled during the step (`None`: not counted on this backend).
    pub kernels_compiled: Option<u64>,
    /// Autotune runs during the step (`None`: not counted).
    pub autotunes: Option<u64>,
    /// Tokens sampled.
    pub rollout_tokens: usize,
    /// Tokens trained on (prompt and response, all PPO epochs).
    pub train_tokens: usize,
}

/// What `longrl bench rl --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlBenchReport {
    /// `rl`.
    pub bench: String,
    /// The device measured on.
    pub device: String,
    /// The config file.
    pub config: String,
    /// Whether shapes were bucketed.
    pub bucketed: bool,
    /// Seconds of the warm-up (0 without one).
    pub warmup_s: f64,
    /// What the warm-up ran.
    pub warmup: WarmUpReport,
    /// Kernels compiled during the warm-up.
    pub warmup_kernels_compiled: Option<u64>,
    /// Autotune runs during the warm-up (0 when every key was in the persistent cache).
    pub warmup_autotunes: Option<u64>,
    /// The steps.
    pub steps: Vec<RlBenchStep>,
    /// Median step seconds.
    pub step_s_median: f64,
    /// Slowest step over the median.
    pub slowest_over_median: f64,
    /// Kernels compiled in steps 2..N.
    pub kernels_compiled_after_first: Option<u64>,
    /// Sampled tokens per second of rollout time, over all steps.
    pub rollout_tokens_per_s: f64,
    /// Trained tokens per second of update time, over all steps.
    pub train_tokens_per_s: f64,
}

/// Kernels compiled and autotunes run so far, on a JIT backend whose compilations are counted
/// (`None` on the CPU backends, which compile nothing).
fn counters<B: TrainBackend>() -> (Option<u64>, Option<u64>) {
    if !B::JIT {
        return (None, None);
    }
    (crate::jit::kernels_compiled(), crate::jit::autotunes_run())
}

fn delta(after: Option<u64>, before: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

/// Runs the warm-up and `steps` steps of `file` (its run directory replaced by a temporary one,
/// no checkpoints) on `device`, timing each.
pub fn bench_rl<B: TrainBackend>(
    file: &RlFile,
    steps: usize,
    rewarder: Option<Arc<dyn Rewarder>>,
    device: B::Device,
    device_name: &str,
    config_name: &str,
) -> Result<RlBenchReport> {
    let worker = Worker::single(crate::DeviceSpec::best_available());
    let run_dir = tempfile::Builder::new()
        .prefix("longrl-bench-rl")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let mut run = file.run.clone();
    run.run_dir = run_dir.path().to_path_buf();
    run.save_steps = 0;
    run.progress = false;
    let mut config = file.rl.clone();
    config.max_steps = steps;
    config.validate()?;
    let tokenizer = file.model.load_tokenizer()?;
    let options = LoadOptions {
        strict: config.strict,
    };
    let samples = load_rl_any_with(&config.train_file, options)?;
    let (prompts, _) = prepare_prompts(&samples, &tokenizer, config.max_prompt_length)?;
    let mut observer = NoObserver;
    let mut trainer = RlTrainer::<B>::new(
        &file.model,
        &run,
        &config,
        &prompts,
        rewarder,
        &mut observer,
        false,
        device,
        &worker,
    )?;
    let before = counters::<B>();
    let t0 = Instant::now();
    let warmup = trainer.warm_up()?;
    let warmup_s = t0.elapsed().as_secs_f64();
    let mut last = counters::<B>();
    let warmup_kernels_compiled = delta(last.0, before.0);
    let warmup_autotunes = delta(last.1, before.1);
    let mut out = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        let report = trainer.step()?;
        let step_s = t.elapsed().as_secs_f64();
        let now = counters::<B>();
        out.push(RlBenchStep {
            step: report.step,
            step_s,
            gen_s: report.gen_s,
            update_s: report.update_s,
            kernels_compiled: delta(now.0, last.0),
            autotunes: delta(now.1, last.1),
            rollout_tokens: report.rollout_tokens,
            train_tokens: report.train_tokens,
        });
        last = now;
    }
    drop(trainer);
    Ok(summarise(
        out,
        warmup,
        warmup_s,
        (warmup_kernels_compiled, warmup_autotunes),
        config.shapes.resolve::<B>().is_bucketed(),
        device_name,
        config_name,
    ))
}

/// The report's totals over the steps.
fn summarise(
    steps: Vec<RlBenchStep>,
    warmup: WarmUpReport,
    warmup_s: f64,
    (warmup_kernels_compiled, warmup_autotunes): (Option<u64>, Option<u64>),
    bucketed: bool,
    device: &str,
    config: &str,
) -> RlBenchReport {
    let mut times: Vec<f64> = steps.iter().map(|s| s.step_s).collect();
    times.sort_by(f64::total_cmp);
    let median = if times.is_empty() {
        0.0
    } else if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2.0
    };
    let slowest = times.last().copied().unwrap_or(0.0);
    let after_first = steps
        .iter()
        .skip(1)
        .map(|s| s.kernels_compiled)
        .try_fold(0u64, |acc, k| Some(acc + k?));
    let per_s = |tokens: usize, secs: f64| {
        if secs > 0.0 {
            tokens as f64 / secs
        } else {
            0.0
        }
    };
    let rollout_tokens: usize = steps.iter().map(|s| s.rollout_tokens).sum();
    let train_tokens: usize = steps.iter().map(|s| s.train_tokens).sum();
    let gen_s: f64 = steps.iter().map(|s| s.gen_s).sum();
    let update_s: f64 = steps.iter().map(|s| s.update_s).sum();
    RlBenchReport {
        bench: "rl".into(),
        device: device.into(),
        config: config.into(),
        bucketed,
        warmup_s,
        warmup,
        warmup_kernels_compiled,
        warmup_autotunes,
        step_s_median: median,
        slowest_over_median: if median > 0.0 { slowest / median } else { 0.0 },
        kernels_compiled_after_first: after_first,
        rollout_tokens_per_s: per_s(rollout_tokens, gen_s),
        train_tokens_per_s: per_s(train_tokens, update_s),
        steps,
    }
}
