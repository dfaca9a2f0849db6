//! `longrl ablate`: what each part of the recipe is worth, measured. One pipeline config is run as
//! several *arms* (the recipe with parts taken away, or QwenLong-L1.5's stabilisers added) times
//! several seeds, all from one shared start (the base model's evaluation and the warm-up SFT, run
//! once) on the same data, with the same number of trained rollouts per arm; the held-out
//! accuracy of each arm's final model is reported per input-length bucket and overall as the
//! mean over seeds with a 95% Student-t interval.
//!
//! Layout of `RUN_DIR`: `start/` (the shared base evaluation and SFT, a pipeline run directory),
//! `arms/ARM/seedN/` (one pipeline run directory per arm and seed, resumable on its own),
//! `ablation.json`, `ablation.md` and `ablation.png`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::curriculum::StageConfig;
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::TrainBackend;
use crate::pipeline::{
    self, bucket_edges, bucket_name, PhaseResult, PipelineFile, PipelineSummary,
};
use crate::reward::Rewarder;
use crate::rl::ScaleRewards;

/// One way of running the RL phase, compared with the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Arm {
    /// One RL stage at the final input length, for as many steps as all stages together.
    #[serde(rename = "flat")]
    Flat,
    /// The stages (input length raised stage by stage), no retrospective sampling.
    #[serde(rename = "curriculum")]
    Curriculum,
    /// QwenLong-L1's recipe: the stages with difficulty-aware retrospective sampling.
    #[serde(rename = "curriculum+retrospective")]
    Recipe,
    /// The recipe with task-balanced sampling (`rl.task_balanced_sampling`).
    #[serde(rename = "recipe+task_balanced")]
    TaskBalanced,
    /// The recipe with task-specific advantage normalisation (`rl.scale_rewards = "task"`).
    #[serde(rename = "recipe+task_norm")]
    TaskNorm,
    /// The recipe with AEPO's entropy control (`rl.loss.aepo`).
    #[serde(rename = "recipe+aepo")]
    Aepo,
}

impl Arm {
    /// Every arm, in report order.
    pub const ALL: [Arm; 6] = [
        Arm::Flat,
        Arm::Curriculum,
        Arm::Recipe,
        Arm::TaskBalanced,
        Arm::TaskNorm,
        Arm::Aepo,
    ];

    /// The arm's name as written in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Arm::Flat => "flat",
            Arm::Curriculum => "curriculum",
            Arm::Recipe => "curriculum+retrospective",
            Arm::TaskBalanced => "recipe+task_balanced",
            Arm::TaskNorm => "recipe+task_norm",
            Arm::Aepo => "recipe+aepo",
        }
    }

    /// The arm's folder name under `RUN_DIR/arms`.
    fn dir_name(self) -> String {
        self.name().replace('+', "_")
    }

    /// The pipeline of this arm from the ablation's config: its stages, retrospective sampling
    /// and L1.5 options (every arm sets all of them, so the config's own values never leak in).
    /// Errors when the stages are given by epochs (the rollout budget would differ by arm).
    pub fn configure(self, base: &PipelineFile) -> Result<PipelineFile> {
        let mut file = base.clone();
        if let Some(k) = base.stages.iter().position(|s| s.max_steps == 0) {
            return Err(Error::Invalid(format!(
                "stages[{k}]: longrl ablate needs max_steps on every stage (equal rollout budgets \
                 per arm), not num_epochs"
            )));
        }
        file.retrospective.enabled = !matches!(self, Arm::Flat | Arm::Curriculum);
        file.rl.task_balanced_sampling = self == Arm::TaskBalanced;
        file.rl.loss.aepo = self == Arm::Aepo;
        if self == Arm::TaskNorm {
            file.rl.scale_rewards = ScaleRewards::Task;
        } else if file.rl.scale_rewards == ScaleRewards::Task {
            file.rl.scale_rewards = ScaleRewards::Group;
        }
        if self == Arm::Flat {
            let last = base
                .stages
                .last()
                .ok_or_else(|| Error::Invalid("at least one [[stages]] entry is needed".into()))?;
            file.stages = vec![StageConfig {
                name: Some("flat".into()),
                max_input_tokens: last.max_input_tokens,
                max_output_tokens: last.max_output_tokens,
                max_steps: base.stages.iter().map(|s| s.max_steps).sum(),
                num_epochs: None,
            }];
        }
        Ok(file)
    }
}

/// `[ablation]`: the arms and seeds `longrl ablate` runs (ignored by `longrl pipeline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AblationSection {
    /// Seeds per arm: `[run] seed`, `seed + 1`, ... (each changes rollout sampling and the prompt
    /// order; the data and the SFT start stay those of `[run] seed`).
    pub seeds: usize,
    /// Arms to run, in report order (default: all).
    pub arms: Vec<Arm>,
}

impl Default for AblationSection {
    fn default() -> Self {
        Self {
            seeds: 3,
            arms: Arm::ALL.to_vec(),
        }
    }
}

/// Trained rollouts of a pipeline's RL phase: every stage's steps x prompts per step x rollouts
/// per prompt (the budget `longrl ablate` keeps equal across arms).
pub fn rollout_budget(file: &PipelineFile) -> usize {
    let steps: usize = file.stages.iter().map(|s| s.max_steps).sum();
    steps * file.rl.train_batch_size * file.rl.num_generations
}

/// A mean over seeds and the half-width of its 95% confidence interval (Student t with n - 1
/// degrees of freedom: `t * s / sqrt(n)`, `s` the unbiased standard deviation); no interval for
/// fewer than two values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Mean.
    pub mean: f64,
    /// Half-width of the 95% interval (`null` with one seed).
    pub ci95: Option<f64>,
}

impl Interval {
    /// The mean and 95% interval of `xs` (at least one value).
    pub fn of(xs: &[f64]) -> Self {
        let n = xs.len();
        let mean = xs.iter().sum::<f64>() / n.max(1) as f64;
        if n < 2 {
            return Self { mean, ci95: None };
        }
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1) as f64;
        Self {
            mean,
            ci95: Some(t975(n - 1) * var.sqrt() / (n as f64).sqrt()),
        }
    }

    /// Whether the two intervals are disjoint (both must have one).
    pub fn separated_from(&self, other: &Interval) -> bool {
        match (self.ci95, other.ci95) {
            (Some(a), Some(b)) => self.mean - a > other.mean + b || other.mean - b > self.mean + a,
            _ => false,
        }
    }
}

/// The 0.975 quantile of Student's t with `df` degrees of freedom (tabulated to 30, then the
/// Cornish-Fisher expansion around the normal quantile, within 1e-4 of the exact value).
pub fn t975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
        2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
        2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
    ];
    if (1..=30).contains(&df) {
        return TABLE[df - 1];
    }
    let z: f64 = 1.959964;
    let v = df.max(1) as f64;
    let g1 = (z.powi(3) + z) / 4.0;
    let g2 = (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / 96.0;
    let g3 = (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / 384.0;
    z + g1 / v + g2 / (v * v) + g3 / (v * v * v)
}

/// One arm and seed's final held-out result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed (`[run] seed` of its pipeline).
    pub seed: u64,
    /// Held-out accuracy of the arm's final model.
    pub accuracy: f64,
    /// Accuracy per length bucket.
    pub by_bucket: BTreeMap<String, f64>,
    /// Wall time of the arm's RL phase and evaluations, in seconds (0 when it was done before a
    /// resume).
    pub wall_s: f64,
}

/// One arm over its seeds (an entry of `ablation.json`'s `arms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmResult {
    /// The arm's name.
    pub name: String,
    /// Its seeds.
    pub seeds: Vec<u64>,
    /// Trained rollouts per seed ([`rollout_budget`]).
    pub rollouts: usize,
    /// Mean and interval per length bucket.
    pub by_bucket: BTreeMap<String, Interval>,
    /// Mean and interval of the overall accuracy.
    pub overall: Interval,
    /// Every seed's result.
    pub per_seed: Vec<SeedResult>,
}

/// `RUN_DIR/ablation.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AblationReport {
    /// Length buckets, shortest first.
    pub buckets: Vec<String>,
    /// The shared start's held-out accuracy (the SFT model, else the base).
    pub start: PhaseResult,
    /// The arms, in the configured order.
    pub arms: Vec<ArmResult>,
}

impl AblationReport {
    /// Builds the report from every arm's seed results (`runs[i]` belongs to `arms[i]`).
    pub fn new(
        buckets: Vec<String>,
        start: PhaseResult,
        arms: &[(Arm, usize, Vec<SeedResult>)],
    ) -> Self {
        let arms = arms
            .iter()
            .map(|(arm, rollouts, runs)| {
                let by_bucket = buckets
                    .iter()
                    .map(|b| {
                        let xs: Vec<f64> = runs
                            .iter()
                            .map(|r| r.by_bucket.get(b).copied().unwrap_or(0.0))
                            .collect();
                        (b.clone(), Interval::of(&xs))
                    })
                    .collect();
                let overall: Vec<f64> = runs.iter().map(|r| r.accuracy).collect();
                ArmResult {
                    name: arm.name().into(),
                    seeds: runs.iter().map(|r| r.seed).collect(),
                    rollouts: *rollouts,
                    by_bucket,
                    overall: Interval::of(&overall),
                    per_seed: runs.clone(),
                }
            })
            .collect();
        Self {
            buckets,
            start,
            arms,
        }
    }

    /// The report as a markdown table: one row per arm, accuracy (mean +- 95% half-width, in
    /// percent) overall and per bucket.
    pub fn table(&self) -> String {
        let pct = |i: &Interval| match i.ci95 {
            Some(c) => format!("{:.1} ± {:.1}", 100.0 * i.mean, 100.0 * c),
            None => format!("{:.1}", 100.0 * i.mean),
        };
        let mut out = String::from("| arm | seeds | rollouts | overall |");
        for b in &self.buckets {
            out.push_str(&format!(" {b} |"));
        }
        out.push_str("\n|---|---|---|---|");
        out.push_str(&"---|".repeat(self.buckets.len()));
        out.push_str(&format!(
            "\n| start ({}) | - | 0 | {:.1} |",
            self.start.name,
            100.0 * self.start.accuracy
        ));
        for b in &self.buckets {
            let v = self.start.by_bucket.get(b).copied().unwrap_or(0.0);
            out.push_str(&format!(" {:.1} |", 100.0 * v));
        }
        for a in &self.arms {
            out.push_str(&format!(
                "\n| {} | {} | {} | {} |",
                a.name,
                a.seeds.len(),
                a.rollouts,
                pct(&a.overall)
            ));
            for b in &self.buckets {
                out.push_str(&format!(
                    " {} |",
                    a.by_bucket.get(b).map(pct).unwrap_or_default()
                ));
            }
        }
        out.push('\n');
        out
    }
}

/// The held-out buckets of a config, shortest first: one per edge (`[eval] length_buckets`, else
/// the stages' limits) and the one past the last edge.
pub fn buckets(file: &PipelineFile) -> Vec<String> {
    let edges = bucket_edges(file);
    let mut out: Vec<String> = edges.iter().map(|&e| bucket_name(e, &edges)).collect();
    out.push(bucket_name(usize::MAX, &edges));
    out
}

/// Where `longrl ablate` stands: the arm and seed runs to do, each with its pipeline.
struct Plan {
    root: PathBuf,
    start: PipelineFile,
    runs: Vec<(Arm, u64, PipelineFile)>,
}

impl Plan {
    /// The shared start's pipeline and every arm x seed pipeline of `file`.
    fn new(file: &PipelineFile, section: &AblationSection) -> Result<Self> {
        if section.seeds == 0 || section.arms.is_empty() {
            return Err(Error::Invalid(
                "ablation: seeds must be at least 1 and arms must not be empty".into(),
            ));
        }
        if let Some(a) = section
            .arms
            .iter()
            .enumerate()
            .find_map(|(i, a)| section.arms[..i].contains(a).then_some(a))
        {
            return Err(Error::Invalid(format!(
                "ablation.arms lists {} twice",
                a.name()
            )));
        }
        let root = file.run.run_dir.clone();
        let mut base = file.clone();
        base.data.seed = Some(file.data.seed.unwrap_or(file.run.seed));
        base.eval.length_buckets = bucket_edges(file);
        base.run.progress = false;
        let mut start = base.clone();
        start.run.run_dir = root.join("start");
        let mut runs = Vec::new();
        for &arm in &section.arms {
            let mut arm_file = arm.configure(&base)?;
            arm_file.sft = None;
            for k in 0..section.seeds as u64 {
                let mut f = arm_file.clone();
                f.run.seed = file.run.seed + k;
                f.run.run_dir = root
                    .join("arms")
                    .join(arm.dir_name())
                    .join(format!("seed{}", f.run.seed));
                runs.push((arm, f.run.seed, f));
            }
        }
        Ok(Self { root, start, runs })
    }
}

/// Records the pipeline a run directory holds as its `config.toml` (what this arm and seed ran:
/// stages, retrospective and L1.5 options resolved).
fn write_config(file: &PipelineFile) -> Result<()> {
    let dir = &file.run.run_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let text = toml::to_string_pretty(file)
        .map_err(|e| Error::Invalid(format!("the arm's config cannot be written: {e}")))?;
    write_atomic(&dir.join("config.toml"), text.as_bytes())
}

/// Reads a finished pipeline's summary (`None` when it has not finished).
fn finished(dir: &Path) -> Result<Option<PipelineSummary>> {
    let path = dir.join("summary.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::checkpoint(&path, format!("unreadable: {e}")))
}

/// Runs the ablation of `file` (its `[ablation]`, else the defaults) on autodiff backend `B` and
/// writes `ablation.json`, `ablation.md` and `ablation.png` under `[run] run_dir`. Every run is
/// resumable: with `resume`, finished arm x seed runs are read back and an interrupted one goes
/// on from its last checkpoint; without it, a run directory that already holds an ablation is
/// refused.
pub fn run<B: TrainBackend>(
    file: &PipelineFile,
    section: &AblationSection,
    rewarder: Option<Arc<dyn Rewarder>>,
    resume: bool,
    progress: bool,
    device: B::Device,
) -> Result<AblationReport> {
    let plan = Plan::new(file, section)?;
    let root = &plan.root;
    if !resume && root.join("start").exists() {
        return Err(Error::Invalid(format!(
            "run directory {} already holds an ablation: pass --resume to continue it, or choose \
             another --run-dir",
            root.display()
        )));
    }
    // One reward for every run (a local judge checkpoint is loaded once).
    let rewarder = pipeline::rewarder_or_built::<B>(file, rewarder, &device)?;
    let worker = Worker::single(crate::DeviceSpec::best_available());
    write_config(&plan.start)?;
    let start = pipeline::run_prefix::<B>(
        &plan.start,
        Some(rewarder.clone()),
        true,
        device.clone(),
        &worker,
    )?;
    let first = start
        .last()
        .cloned()
        .ok_or_else(|| Error::Invalid("the ablation's start evaluated no model".into()))?;
    let bar = run_bar(plan.runs.len(), progress);
    let mut results: Vec<(Arm, usize, Vec<SeedResult>)> = Vec::new();
    for (arm, seed, f) in &plan.runs {
        bar.set_message(format!("{} seed {seed}", arm.name()));
        let t0 = Instant::now();
        let (summary, wall_s) = match finished(&f.run.run_dir)? {
            Some(s) => (s, 0.0),
            None => {
                write_config(f)?;
                let s = pipeline::run_from::<B>(
                    f,
                    Some(rewarder.clone()),
                    true,
                    device.clone(),
                    &worker,
                    &start,
                )?;
                (s, t0.elapsed().as_secs_f64())
            }
        };
        let last = summary.phases.last().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the pipeline has no phase",
                f.run.run_dir.display()
            ))
        })?;
        let r = SeedResult {
            seed: *seed,
            accuracy: last.accuracy,
            by_bucket: last.by_bucket.clone(),
            wall_s,
        };
        match results.last_mut() {
            Some((a, _, runs)) if a == arm => runs.push(r),
            _ => results.push((*arm, rollout_budget(f), vec![r])),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Buckets without held-out items (the same for every arm) are left out.
    let names = buckets(&plan.start)
        .into_iter()
        .filter(|b| first.by_bucket.contains_key(b))
        .collect();
    let report = AblationReport::new(names, first, &results);
    write_report(root, &report)?;
    Ok(report)
}

/// The ablation's progress bar on stderr: arm x seed runs done of `total`, the current one as its
/// message; hidden unless `visible`.
fn run_bar(total: usize, visible: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = if visible {
        ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template(
        "ablate {elapsed_precise} [{bar:30}] {pos}/{len} runs (arm x seed) {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Writes `ablation.json`, `ablation.md` and `ablation.png` under `root`.
pub fn write_report(root: &Path, report: &AblationReport) -> Result<()> {
    let json = serde_json::to_vec_pretty(report)
        .map_err(|e| Error::Invalid(format!("ablation report cannot be serialised: {e}")))?;
    write_atomic(&root.join("ablation.json"), &json)?;
    write_atomic(&root.join("ablation.md"), report.table().as_bytes())?;
    let mut groups = vec!["overall".to_string()];
    groups.extend(report.buckets.iter().cloned());
    let start = Interval {
        mean: report.start.accuracy,
        ci95: None,
    };
    let mut series: Vec<(String, Vec<Interval>)> = vec![(
        format!("start ({})", report.start.name),
        std::iter::once(start)
            .chain(report.buckets.iter().map(|b| Interval {
                mean: report.start.by_bucket.get(b).copied().unwrap_or(0.0),
                ci95: None,
            }))
            .collect(),
    )];
    series.extend(report.arms.iter().map(|a| {
        let mut v = vec![a.overall];
        v.extend(report.buckets.iter().map(|b| {
            a.by_bucket.get(b).copied().unwrap_or(Interval {
                mean: 0.0,
                ci95: None,
            })
        }));
        (a.name.clone(), v)
    }));
    crate::metrics::plot::plot_bars(
        &root.join("ablation.png"),
        "Held-out accuracy by arm (mean over seeds, 95% interval)",
        &groups,
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(stages: &str) -> PipelineFile {
        let text = format!(
            "[model]\npath = \"m\"\n[rl]\ntrain_batch_size = 4\nnum_generations = 3\n\
             [rl.loss]\naepo = true\n{stages}"
        );
        crate::config::parse_toml(&text, Path::new("a.toml")).unwrap()
    }

    const STAGES: &str = "[[stages]]\nmax_input_tokens = 100\nmax_output_tokens = 8\n\
        max_steps = 5\n[[stages]]\nmax_input_tokens = 300\nmax_output_tokens = 16\n\
        max_steps = 7\n";

    #[test]
    fn every_arm_trains_the_same_rollout_budget() {
        let base = config(STAGES);
        let budgets: Vec<usize> = Arm::ALL
            .iter()
            .map(|a| rollout_budget(&a.configure(&base).unwrap()))
            .collect();
        assert_eq!(budgets, vec![12 * 4 * 3; 6]);
        let flat = Arm::Flat.configure(&base).unwrap();
        assert_eq!(flat.stages.len(), 1);
        let s = &flat.stages[0];
        assert_eq!(
            (s.max_input_tokens, s.max_output_tokens, s.max_steps),
            (300, 16, 12)
        );
        assert!(
            !flat.retrospective.enabled && !flat.rl.loss.aepo,
            "the config's aepo is reset"
        );
        let c = Arm::Curriculum.configure(&base).unwrap();
        assert!(!c.retrospective.enabled && c.stages == base.stages);
        let r = Arm::Recipe.configure(&base).unwrap();
        assert!(r.retrospective.enabled && !r.rl.task_balanced_sampling);
        assert!(
            Arm::TaskBalanced
                .configure(&base)
                .unwrap()
                .rl
                .task_balanced_sampling
        );
        assert_eq!(
            Arm::TaskNorm.configure(&base).unwrap().rl.scale_rewards,
            ScaleRewards::Task
        );
        assert!(Arm::Aepo.configure(&base).unwrap().rl.loss.aepo);
        let epochs = config(&STAGES.replace("max_steps = 7", "num_epochs = 1.0"));
        let e = Arm::Curriculum.configure(&epochs).unwrap_err().to_string();
        assert!(e.contains("stages[1]") && e.contains("max_steps"), "{e}");
    }

    #[test]
    fn arms_read_and_print_by_name() {
        let s: AblationSection = crate::config::parse_toml(
            "seeds = 2\narms = [\"flat\", \"curriculum+retrospective\", \"recipe+aepo\"]",
            Path::new("a.toml"),
        )
        .unwrap();
        assert_eq!(s.arms, vec![Arm::Flat, Arm::Recipe, Arm::Aepo]);
        let names: Vec<&str> = Arm::ALL.iter().map(|a| a.name()).collect();
        let json = serde_json::to_string(&Arm::ALL).unwrap();
        for n in names {
            assert!(json.contains(&format!("\"{n}\"")), "{n}");
        }
        let twice = AblationSection {
            seeds: 1,
            arms: vec![Arm::Flat, Arm::Aepo, Arm::Flat],
        };
        let e = Plan::new(&config(STAGES), &twice)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("flat twice"), "{e}");
        let bad =
            crate::config::parse_toml::<AblationSection>("arms = [\"flatt\"]", Path::new("a.toml"));
        assert!(bad.unwrap_err().to_string().contains("a.toml"));
    }

    #[test]
    fn intervals_are_student_t_over_seeds() {
        // Values 0.4, 0.5, 0.6: mean 0.5, s = 0.1, t(2) = 4.3027 -> 4.3027 * 0.1 / sqrt(3).
        let i = Interval::of(&[0.4, 0.5, 0.6]);
        assert!((i.mean - 0.5).abs() < 1e-12);
        assert!((i.ci95.unwrap() - 4.3027 * 0.1 / 3f64.sqrt()).abs() < 1e-9);
        assert_eq!(Interval::of(&[0.3]).ci95, None);
        assert!(Interval::of(&[0.2, 0.2, 0.2]).ci95.unwrap() < 1e-15);
        // The expansion beyond the table: t(40) = 2.0211, t(120) = 1.9799.
        assert!((t975(40) - 2.0211).abs() < 2e-4 && (t975(120) - 1.9799).abs() < 1e-4);
        assert!((t975(30) - 2.0423).abs() < 1e-12 && (t975(31) - 2.0395).abs() < 2e-4);
        let a = Interval {
            mean: 0.5,
            ci95: Some(0.1),
        };
        let b = Interval {
            mean: 0.25,
            ci95: Some(0.1),
        };
        assert!(a.separated_from(&b) && b.separated_from(&a));
        let c = Interval {
            mean: 0.35,
            ci95: Some(0.1),
        };
        assert!(!a.separated_from(&c));
    }
}
