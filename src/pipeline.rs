//! The QwenLong-L1 pipeline as one staged run: held-out evaluation of the base model, warm-up SFT,
//! then RL stage by stage with the input length raised (each stage drawing only its length band),
//! difficulty-aware retrospective sampling at every stage transition, and an evaluation after every
//! phase. Every phase writes its own run directory under `RUN_DIR`; the pipeline's state (phases
//! done, their results, the difficulty store, the samples carried) is saved after each phase, and
//! each phase checkpoints on its own, so `--resume` continues mid-stage or across a stage boundary.

use crate::model::{ModelBackend, TrainBackend};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{ModelSection, RunSection};
use crate::data::curriculum::{
    carry_over, stage_of, stage_pool, validate_stages, DifficultyStore, RetrospectiveConfig,
    StageConfig,
};
use crate::data::synthetic::{self, SyntheticConfig};
use crate::data::TaskKind;
use crate::data::{
    load_rl_any_with, load_sft_with, LoadOptions, PreparedPrompt, RlSample, SftRecord,
};
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::eval::{evaluate, EvalItem, EvalOptions, EvalReport};
use crate::generate::{pad_token_id, stop_token_ids};
use crate::io::{write_atomic, JsonlReader};
use crate::model::is_adapter_dir;
use crate::reward::Rewarder;
use crate::rl::{self, RlConfig, RlObserver};
use crate::sft::{self, SftConfig};
use crate::tokenizer::Tokenizer;

/// `[data]`: where samples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Built-in synthetic long-document QA (`true`) or the files below.
    pub synthetic: bool,
    /// Synthetic: training samples (spread over every stage's length band).
    pub train_count: usize,
    /// Synthetic: held-out samples.
    pub eval_count: usize,
    /// Synthetic: SFT samples (within the first stage's band, with reasoning and answer).
    pub sft_count: usize,
    /// Synthetic: shortest prompt in tokens.
    pub min_tokens: usize,
    /// Synthetic: task families mixed in turn (qa, docmath, multiple_choice).
    pub tasks: Vec<TaskKind>,
    /// Synthetic: SFT responses open with a `<think>` block (for models with thinking tags).
    pub think: bool,
    /// Synthetic: seed of the generated sets (default: `[run] seed`); `longrl ablate` fixes it so
    /// every seed of every arm trains and evaluates on the same data.
    pub seed: Option<u64>,
    /// Files: RL training samples (JSONL or parquet, longrl's or verl's fields).
    pub train_file: Option<PathBuf>,
    /// Files: held-out samples (JSONL or parquet, longrl's or verl's fields).
    pub eval_file: Option<PathBuf>,
    /// Files: SFT data (`{"prompt", "response" | "completion"}` / `{"messages"}` JSONL).
    pub sft_file: Option<PathBuf>,
    /// Files: unknown fields (columns) are errors naming the file, line and field (`--strict`);
    /// by default they are ignored with one warning per file listing them.
    pub strict: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            synthetic: true,
            train_count: 600,
            eval_count: 60,
            sft_count: 300,
            min_tokens: 120,
            tasks: vec![TaskKind::DocMath, TaskKind::MultipleChoice, TaskKind::Qa],
            think: false,
            seed: None,
            train_file: None,
            eval_file: None,
            sft_file: None,
            strict: false,
        }
    }
}

/// The file `longrl pipeline --config` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// `[model]`.
    pub model: ModelSection,
    /// `[run]`.
    #[serde(default)]
    pub run: RunSection,
    /// `[data]`.
    #[serde(default)]
    pub data: DataSection,
    /// `[sft]`: the warm-up (its `train_file` is filled by the pipeline); absent: no warm-up.
    #[serde(default)]
    pub sft: Option<SftConfig>,
    /// `[rl]`: settings shared by every stage (`max_prompt_length`, `max_response_length` and the
    /// step count come from the stage).
    #[serde(default)]
    pub rl: RlConfig,
    /// `[[stages]]`: the curriculum.
    pub stages: Vec<StageConfig>,
    /// `[retrospective]`.
    #[serde(default)]
    pub retrospective: RetrospectiveConfig,
    /// `[eval]`: the held-out evaluation after each phase.
    #[serde(default)]
    pub eval: EvalOptions,
    /// `[distributed]`: data parallelism (devices, machines).
    #[serde(default)]
    pub distributed: crate::distributed::DistributedSection,
    /// `[lora]`: train PEFT LoRA adapters on a frozen base (absent: every weight trains).
    #[serde(default)]
    pub lora: Option<crate::model::LoraConfig>,
    /// `[ablation]`: the arms and seeds of `longrl ablate` (ignored by `longrl pipeline`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ablation: Option<crate::ablation::AblationSection>,
}

/// One finished phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseResult {
    /// `base`, `sft`, `stage1`, ...
    pub name: String,
    /// The model the phase ended with.
    pub model_dir: PathBuf,
    /// Held-out accuracy.
    pub accuracy: f64,
    /// Accuracy per task family.
    pub by_task: BTreeMap<String, f64>,
    /// Accuracy per length bucket.
    pub by_bucket: BTreeMap<String, f64>,
    /// Held-out samples scored.
    pub n: usize,
}

/// What the pipeline has done so far (`RUN_DIR/pipeline_state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineState {
    /// Finished phases, in order.
    pub phases: Vec<PhaseResult>,
    /// Mean reward of every sample rolled out so far.
    pub difficulty: DifficultyStore,
    /// Ids carried into each stage (index 0: stage 1, always empty).
    pub carried: Vec<Vec<String>>,
    /// Training samples longer than every stage (counted, never trained on).
    pub too_long: usize,
}

/// The summary written to `RUN_DIR/summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PipelineSummary {
    /// Every phase's evaluation.
    pub phases: Vec<PhaseResult>,
    /// Training samples longer than every stage.
    pub too_long: usize,
}

const STATE_FILE: &str = "pipeline_state.json";

fn stage_name(stages: &[StageConfig], k: usize) -> String {
    stages[k]
        .name
        .clone()
        .unwrap_or_else(|| format!("stage{}", k + 1))
}

/// The data of a run: training prompts (tokenised once), held-out items, SFT records.
struct Data {
    train: Vec<PreparedPrompt>,
    eval: Vec<EvalItem>,
    sft: Vec<SftRecord>,
}

/// The pipeline's data; the synthetic sets are written to `data_dir` when `write` (rank 0).
fn prepare_data(
    file: &PipelineFile,
    tokenizer: &Tokenizer,
    data_dir: &Path,
    write: bool,
) -> Result<Data> {
    let (train, eval, sft) = if file.data.synthetic {
        synthetic_data(file, tokenizer, data_dir, write)?
    } else {
        file_data(&file.data)?
    };
    let train = train
        .iter()
        .enumerate()
        .map(|(i, s)| PreparedPrompt::new(i, s, tokenizer))
        .collect::<Result<Vec<_>>>()?;
    let eval = eval_items(&eval, tokenizer, &bucket_edges(file))?;
    Ok(Data { train, eval, sft })
}

/// The last stage's input limit: the longest synthetic prompt, and the edge of the last bucket.
fn last_stage_limit(stages: &[StageConfig]) -> usize {
    stages.last().map_or(1024, |s| s.max_input_tokens)
}

/// The built-in synthetic train, held-out and SFT sets of `[data]`, seeded from the run's seed;
/// the train and held-out sets are written to `data_dir` when `write`.
fn synthetic_data(
    file: &PipelineFile,
    tokenizer: &Tokenizer,
    data_dir: &Path,
    write: bool,
) -> Result<(Vec<RlSample>, Vec<RlSample>, Vec<SftRecord>)> {
    let d = &file.data;
    let stages = &file.stages;
    let max_tokens = last_stage_limit(stages);
    let make = |seed: u64, count: usize, max: usize| -> Result<Vec<synthetic::SyntheticSample>> {
        synthetic::generate(
            &SyntheticConfig {
                seed,
                count,
                min_tokens: d.min_tokens,
                max_tokens: max,
                tasks: d.tasks.clone(),
            },
            tokenizer,
        )
    };
    let seed = d.seed.unwrap_or(file.run.seed);
    let train = make(
        seed.wrapping_mul(3).wrapping_add(1),
        d.train_count,
        max_tokens,
    )?;
    let eval = make(
        seed.wrapping_mul(3).wrapping_add(2),
        d.eval_count,
        max_tokens,
    )?;
    let sft_max = stages[0].max_input_tokens;
    let sft = make(seed.wrapping_mul(3).wrapping_add(3), d.sft_count, sft_max)?;
    if write {
        synthetic::write_jsonl(&train, &data_dir.join("train.jsonl"))?;
        synthetic::write_jsonl(&eval, &data_dir.join("eval.jsonl"))?;
    }
    let sft: Vec<SftRecord> = sft.iter().map(|s| s.sft_record(d.think)).collect();
    Ok((
        train.into_iter().map(|s| s.sample).collect(),
        eval.into_iter().map(|s| s.sample).collect(),
        sft,
    ))
}

/// The train, held-out and SFT files of `[data]` (`data.synthetic = false`).
fn file_data(d: &DataSection) -> Result<(Vec<RlSample>, Vec<RlSample>, Vec<SftRecord>)> {
    let need = |p: &Option<PathBuf>, name: &str| {
        p.clone().ok_or_else(|| {
            Error::Invalid(format!(
                "data.{name} is required when data.synthetic = false"
            ))
        })
    };
    let options = LoadOptions { strict: d.strict };
    let train = load_rl_any_with(&need(&d.train_file, "train_file")?, options)?;
    let eval = load_rl_any_with(&need(&d.eval_file, "eval_file")?, options)?;
    let sft = match &d.sft_file {
        Some(p) => load_sft_with(p, options)?,
        None => Vec::new(),
    };
    Ok((train, eval, sft))
}

/// The upper edges of the held-out length buckets: `[eval] length_buckets`, else every stage's
/// `max_input_tokens`.
pub fn bucket_edges(file: &PipelineFile) -> Vec<usize> {
    if file.eval.length_buckets.is_empty() {
        file.stages.iter().map(|s| s.max_input_tokens).collect()
    } else {
        file.eval.length_buckets.clone()
    }
}

/// The name of the length bucket of a prompt of `len` tokens: `<=EDGE` for the first edge it
/// fits under, `>LAST` past the last (`edges` ascending).
pub fn bucket_name(len: usize, edges: &[usize]) -> String {
    match edges.iter().find(|&&e| len <= e) {
        Some(e) => format!("<={e}"),
        None => format!(">{}", edges.last().copied().unwrap_or(0)),
    }
}

/// The held-out items, each in its length bucket (see [`bucket_name`]).
fn eval_items(eval: &[RlSample], tokenizer: &Tokenizer, edges: &[usize]) -> Result<Vec<EvalItem>> {
    let mut items = Vec::with_capacity(eval.len());
    for (i, s) in eval.iter().enumerate() {
        let prompt = PreparedPrompt::new(i, s, tokenizer)?;
        let bucket = bucket_name(prompt.ids.len(), edges);
        items.push(EvalItem {
            id: s.id.clone(),
            prompt_ids: prompt.ids,
            prompt_text: prompt.text,
            task: prompt.task,
            answer: prompt.answer,
            bucket,
        });
    }
    Ok(items)
}

/// The model section a phase trains from `current`, the model the last phase left: a model
/// folder replaces the base; an adapter folder (a LoRA phase's output) is the adapter the next
/// phase continues, on the same base.
fn phase_section(model: &ModelSection, current: &Path) -> ModelSection {
    if is_adapter_dir(current) {
        ModelSection {
            adapter: Some(current.to_path_buf()),
            ..model.clone()
        }
    } else {
        ModelSection {
            path: current.to_path_buf(),
            ..model.clone()
        }
    }
}

/// The difficulty store as an RL observer: every group's mean score updates its sample.
struct DifficultyObserver<'a> {
    store: &'a mut DifficultyStore,
}

impl RlObserver for DifficultyObserver<'_> {
    fn on_group(&mut self, prompt: &PreparedPrompt, scores: &[f64]) {
        self.store.update(&prompt.id, scores);
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&*self.store).unwrap_or_default()
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        if !state.is_null() {
            *self.store = serde_json::from_value(state).map_err(|e| {
                Error::Invalid(format!(
                    "difficulty store in the checkpoint is unreadable: {e}"
                ))
            })?;
        }
        Ok(())
    }
}

fn save_state(root: &Path, state: &PipelineState) -> Result<()> {
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Invalid(format!("pipeline state cannot be serialised: {e}")))?;
    write_atomic(&root.join(STATE_FILE), &json)
}

fn phase_result(name: &str, model_dir: &Path, report: EvalReport) -> PhaseResult {
    PhaseResult {
        name: name.to_string(),
        model_dir: model_dir.to_path_buf(),
        accuracy: report.accuracy,
        by_task: report
            .by_task
            .iter()
            .map(|(k, t)| (k.clone(), t.accuracy))
            .collect(),
        by_bucket: report
            .by_bucket
            .iter()
            .map(|(k, t)| (k.clone(), t.accuracy))
            .collect(),
        n: report.n,
    }
}

/// Evaluates the model in `dir` (a model folder, or an adapter on `section`'s base) on the
/// held-out items.
fn eval_dir<B: ModelBackend>(
    section: &ModelSection,
    dir: &Path,
    tokenizer: &Tokenizer,
    data: &Data,
    rewarder: &dyn Rewarder,
    options: &EvalOptions,
    device: &B::Device,
) -> Result<EvalReport> {
    let model = section.load_phase_model::<B>(dir, device)?;
    let stop = stop_token_ids(&section.path, model.config(), Some(tokenizer))?;
    let pad = pad_token_id(Some(tokenizer), &stop);
    evaluate(
        &model, tokenizer, &data.eval, rewarder, options, &stop, pad, device,
    )
}

/// Renders the phases as a markdown table (accuracy overall, per task, per length bucket).
pub fn summary_table(phases: &[PhaseResult]) -> String {
    let tasks: Vec<String> = phases
        .iter()
        .flat_map(|p| p.by_task.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let buckets: Vec<String> = phases
        .iter()
        .flat_map(|p| p.by_bucket.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = String::from("| phase | accuracy |");
    for t in tasks.iter().chain(&buckets) {
        out.push_str(&format!(" {t} |"));
    }
    out.push_str("\n|---|---|");
    for _ in tasks.iter().chain(&buckets) {
        out.push_str("---|");
    }
    for p in phases {
        out.push_str(&format!("\n| {} | {:.1}% |", p.name, 100.0 * p.accuracy));
        for t in &tasks {
            out.push_str(&format!(
                " {:.1}% |",
                100.0 * p.by_task.get(t).copied().unwrap_or(0.0)
            ));
        }
        for b in &buckets {
            out.push_str(&format!(
                " {:.1}% |",
                100.0 * p.by_bucket.get(b).copied().unwrap_or(0.0)
            ));
        }
    }
    out.push('\n');
    out
}

/// Runs the pipeline on autodiff backend `B`. `rewarder: None` builds the hybrid reward of
/// `[rl.reward]` (used for training and for every evaluation).
pub fn run<B: TrainBackend>(
    file: &PipelineFile,
    rewarder: Option<Arc<dyn Rewarder>>,
    resume: bool,
    device: B::Device,
) -> Result<PipelineSummary> {
    let worker = Worker::single(crate::DeviceSpec::best_available());
    run_with::<B>(file, rewarder, resume, device, &worker)
}

/// [`run`] as one worker of a data-parallel run: every phase trains data-parallel (see
/// [`crate::distributed`]); rank 0 evaluates the phases and writes the pipeline's files.
pub fn run_with<B: TrainBackend>(
    file: &PipelineFile,
    rewarder: Option<Arc<dyn Rewarder>>,
    resume: bool,
    device: B::Device,
    worker: &Worker,
) -> Result<PipelineSummary> {
    run_from::<B>(file, rewarder, resume, device, worker, &[])
}

/// The pipeline's opening phases only: the base model's evaluation and the warm-up SFT (when
/// `[sft]` is set); returns their results, the start [`run_from`] takes (`longrl ablate` runs
/// this once and every arm from it).
pub fn run_prefix<B: TrainBackend>(
    file: &PipelineFile,
    rewarder: Option<Arc<dyn Rewarder>>,
    resume: bool,
    device: B::Device,
    worker: &Worker,
) -> Result<Vec<PhaseResult>> {
    let (phases, mut state) = Phases::<B>::open(file, rewarder, resume, device, worker, &[])?;
    phases.prefix(&mut state)?;
    Ok(state.phases)
}

/// [`run_with`] from phases already done elsewhere (`start`, e.g. [`run_prefix`]'s base and SFT):
/// a new run records them as its own and goes on from the model the last one ended with.
pub fn run_from<B: TrainBackend>(
    file: &PipelineFile,
    rewarder: Option<Arc<dyn Rewarder>>,
    resume: bool,
    device: B::Device,
    worker: &Worker,
    start: &[PhaseResult],
) -> Result<PipelineSummary> {
    let (phases, mut state) = Phases::<B>::open(file, rewarder, resume, device, worker, start)?;
    let mut current = phases.prefix(&mut state)?;
    for k in 0..file.stages.len() {
        current = phases.rl_stage(&mut state, k, current)?;
    }
    phases.finish(&state)
}

/// The given reward, else the hybrid reward of `[rl.reward]` built on `device`.
pub fn rewarder_or_built<B: TrainBackend>(
    file: &PipelineFile,
    given: Option<Arc<dyn Rewarder>>,
    device: &B::Device,
) -> Result<Arc<dyn Rewarder>> {
    match given {
        Some(r) => Ok(r),
        None => file
            .rl
            .reward
            .build::<B::InnerBackend>(file.rl.max_response_length, device),
    }
}

/// The pipeline's state in `root`: a new one, or with `resume` the one saved there (an error
/// without `resume`, so a finished or running pipeline is never overwritten by mistake).
fn load_state(root: &Path, resume: bool) -> Result<PipelineState> {
    let state_path = root.join(STATE_FILE);
    if !state_path.exists() {
        return Ok(PipelineState::default());
    }
    if !resume {
        return Err(Error::Invalid(format!(
            "run directory {} already holds a pipeline ({}): pass --resume to continue it, or \
             choose another --run-dir",
            root.display(),
            state_path.display()
        )));
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&state_path, format!("unreadable: {e}")))
}

/// Refuses, before any work, a stage whose length band holds no training sample (found only
/// when the stage was reached, after the base eval, SFT and earlier stages, before).
fn check_stage_pools(lengths: &[usize], stages: &[StageConfig]) -> Result<()> {
    for k in 0..stages.len() {
        if stage_pool(lengths, stages, k).is_empty() {
            return Err(Error::Invalid(format!(
                "stages[{k}] ({}): no training sample has a prompt length in ({}, {}] tokens",
                stage_name(stages, k),
                if k == 0 {
                    0
                } else {
                    stages[k - 1].max_input_tokens
                },
                stages[k].max_input_tokens
            )));
        }
    }
    Ok(())
}

/// Training samples longer than every stage (warned about: they are never trained on).
fn count_too_long(lengths: &[usize], stages: &[StageConfig]) -> usize {
    let too_long = lengths
        .iter()
        .filter(|&&l| stage_of(l, stages).is_none())
        .count();
    if too_long > 0 {
        log::warn!(
            "{} training samples are longer than every stage ({} tokens) and are not trained on",
            too_long,
            stages.last().map_or(0, |s| s.max_input_tokens)
        );
    }
    too_long
}

impl PipelineState {
    /// Whether phase `name` has finished.
    fn done(&self, name: &str) -> bool {
        self.phases.iter().any(|p| p.name == name)
    }
}

/// What every phase of one pipeline run shares: the settings, the data, the reward and where
/// the phases write.
struct Phases<'a, B: TrainBackend> {
    file: &'a PipelineFile,
    root: PathBuf,
    data_dir: PathBuf,
    tokenizer: Tokenizer,
    data: Data,
    /// Prompt length in tokens of every training sample.
    lengths: Vec<usize>,
    rewarder: Arc<dyn Rewarder>,
    device: B::Device,
    worker: &'a Worker,
}

impl<'a, B: TrainBackend> Phases<'a, B> {
    /// Validates the stages, loads (or, with `resume`, reads back) the state, prepares the data
    /// and the reward; a new state starts with the phases of `start`.
    fn open(
        file: &'a PipelineFile,
        rewarder: Option<Arc<dyn Rewarder>>,
        resume: bool,
        device: B::Device,
        worker: &'a Worker,
        start: &[PhaseResult],
    ) -> Result<(Self, PipelineState)> {
        validate_stages(&file.stages)?;
        if file.eval.length_buckets.windows(2).any(|w| w[1] <= w[0]) {
            return Err(Error::Invalid(format!(
                "eval.length_buckets = {:?}: expected strictly ascending token counts",
                file.eval.length_buckets
            )));
        }
        let root = file.run.run_dir.clone();
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        // Temporaries of an interrupted atomic write (pipeline_state.json, summaries); a minute
        // old, as other machines' workers may be writing theirs.
        crate::io::remove_stale_tmp_files(&root, std::time::Duration::from_secs(60))?;
        let mut state = load_state(&root, resume)?;
        let resumed = !state.phases.is_empty();
        if state.phases.is_empty() {
            state.phases = start.to_vec();
        }
        let tokenizer = file.model.load_tokenizer()?;
        let data_dir = root.join("data");
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
        let data = prepare_data(file, &tokenizer, &data_dir, worker.is_leader())?;
        let lengths: Vec<usize> = data.train.iter().map(|p| p.ids.len()).collect();
        check_stage_pools(&lengths, &file.stages)?;
        state.too_long = count_too_long(&lengths, &file.stages);
        let rewarder = rewarder_or_built::<B>(file, rewarder, &device)?;
        if worker.is_leader() {
            crate::train::record::record_config(&file.run, resumed)?;
        }
        let phases = Self {
            file,
            root,
            data_dir,
            tokenizer,
            data,
            lengths,
            rewarder,
            device,
            worker,
        };
        Ok((phases, state))
    }

    /// The base evaluation and the warm-up SFT, each unless done; returns the model the last
    /// phase done ended with (the base model when none).
    fn prefix(&self, state: &mut PipelineState) -> Result<PathBuf> {
        let file = self.file;
        if state.phases.is_empty() {
            self.report(state, "base", &file.model.path)?;
        }
        let last = |state: &PipelineState| {
            state
                .phases
                .last()
                .map(|p| p.model_dir.clone())
                .unwrap_or_else(|| file.model.path.clone())
        };
        if let Some(sft_cfg) = &file.sft {
            if !state.done("sft") {
                let current = last(state);
                self.sft(state, sft_cfg, &current)?;
            }
        }
        Ok(last(state))
    }
}

impl<B: TrainBackend> Phases<'_, B> {
    /// Records phase `name`, which ended with the model in `dir`: rank 0 evaluates it on the
    /// held-out items and saves the pipeline's state; other workers only track where each
    /// phase's model is.
    fn report(&self, state: &mut PipelineState, name: &str, dir: &Path) -> Result<()> {
        if !self.worker.is_leader() {
            state
                .phases
                .push(phase_result(name, dir, EvalReport::default()));
            return Ok(());
        }
        let report = eval_dir::<B::InnerBackend>(
            &self.file.model,
            dir,
            &self.tokenizer,
            &self.data,
            self.rewarder.as_ref(),
            &self.file.eval,
            &self.device,
        )?;
        log::info!(
            "{name}: held-out accuracy {:.3} over {}",
            report.accuracy,
            report.n
        );
        write_predictions(&self.root, name, &report)?;
        state.phases.push(phase_result(name, dir, report));
        save_state(&self.root, state)
    }

    /// The warm-up SFT phase from the model in `current`.
    fn sft(&self, state: &mut PipelineState, sft_cfg: &SftConfig, current: &Path) -> Result<()> {
        let (file, worker) = (self.file, self.worker);
        if self.data.sft.is_empty() {
            return Err(Error::Invalid(
                "[sft] is configured but there is no SFT data (data.sft_count or data.sft_file)"
                    .into(),
            ));
        }
        let sft_file = self.data_dir.join("sft.jsonl");
        if worker.is_leader() {
            write_sft(&self.data.sft, &sft_file)?;
        }
        worker.barrier::<B::InnerBackend>("waiting for the SFT data", &self.device)?;
        let mut cfg = sft_cfg.clone();
        cfg.train_file = sft_file;
        let run = phase_run(&file.run, &self.root, "sft");
        let model = phase_section(&file.model, current);
        let summary = sft::train_with::<B>(&model, &run, &cfg, true, self.device.clone(), worker)?;
        self.report(state, "sft", &summary.final_dir)
    }

    /// RL stage `k` from the model in `current` (skipped when already done); returns the model
    /// the stage ended with.
    fn rl_stage(&self, state: &mut PipelineState, k: usize, current: PathBuf) -> Result<PathBuf> {
        let file = self.file;
        let name = stage_name(&file.stages, k);
        if state.done(&name) {
            return Ok(state
                .phases
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.model_dir.clone())
                .unwrap_or(current));
        }
        let prompts = self.stage_prompts(state, k, &name)?;
        let cfg = stage_rl_config(&file.rl, &file.stages[k]);
        let run = phase_run(&file.run, &self.root, &name);
        let carried_path = run.run_dir.join("carried.json");
        std::fs::create_dir_all(&run.run_dir).map_err(|e| Error::io(&run.run_dir, e))?;
        if self.worker.is_leader() {
            write_atomic(
                &carried_path,
                serde_json::to_string_pretty(&state.carried[k])
                    .unwrap_or_default()
                    .as_bytes(),
            )?;
        }
        let model = phase_section(&file.model, &current);
        let summary = rl::train_prompts_with::<B>(
            &model,
            &run,
            &cfg,
            &prompts,
            Some(self.rewarder.clone()),
            &mut DifficultyObserver {
                store: &mut state.difficulty,
            },
            true,
            self.device.clone(),
            self.worker,
        )?;
        self.report(state, &name, &summary.final_dir)?;
        Ok(summary.final_dir)
    }

    /// The prompts of stage `k`: the samples in its length band, plus copies of the hard samples
    /// carried from earlier stages (recorded in `state.carried[k]`).
    fn stage_prompts(
        &self,
        state: &mut PipelineState,
        k: usize,
        name: &str,
    ) -> Result<Vec<PreparedPrompt>> {
        let file = self.file;
        let band = stage_pool(&self.lengths, &file.stages, k);
        let ids: Vec<String> = self.data.train.iter().map(|p| p.id.clone()).collect();
        let carried = carry_over(
            &state.difficulty,
            &ids,
            &self.lengths,
            &file.stages,
            k,
            &file.retrospective,
        );
        while state.carried.len() <= k {
            state.carried.push(Vec::new());
        }
        state.carried[k] = carried.iter().map(|&i| ids[i].clone()).collect();
        if !carried.is_empty() {
            log::info!(
                "{name}: {} hard samples carried from earlier stages: {:?}",
                carried.len(),
                state.carried[k]
            );
        }
        let mut pool: Vec<usize> = band.clone();
        for &i in &carried {
            pool.extend(std::iter::repeat_n(i, file.retrospective.copies()));
        }
        Ok(pool.iter().map(|&i| self.data.train[i].clone()).collect())
    }

    /// Writes the summary (`summary.json`, `summary.md`), the merged metrics and the plots
    /// (rank 0); returns the summary.
    fn finish(&self, state: &PipelineState) -> Result<PipelineSummary> {
        let summary = PipelineSummary {
            phases: state.phases.clone(),
            too_long: state.too_long,
        };
        if !self.worker.is_leader() {
            return Ok(summary);
        }
        let root = &self.root;
        let json = serde_json::to_vec_pretty(&summary)
            .map_err(|e| Error::Invalid(format!("summary cannot be serialised: {e}")))?;
        write_atomic(&root.join("summary.json"), &json)?;
        let table = summary_table(&summary.phases);
        write_atomic(&root.join("summary.md"), table.as_bytes())?;
        merge_metrics(root, &self.file.stages, self.file.sft.is_some())?;
        match crate::metrics::plot_run(root) {
            Ok(paths) => log::info!(
                "wrote {} plots under {}",
                paths.len(),
                root.join("plots").display()
            ),
            Err(e) => log::warn!("plots were not written: {e}"),
        }
        Ok(summary)
    }
}

/// A stage's RL settings: the shared `[rl]` with the stage's lengths and step count.
fn stage_rl_config(rl: &RlConfig, stage: &StageConfig) -> RlConfig {
    let mut cfg = rl.clone();
    cfg.max_prompt_length = stage.max_input_tokens;
    cfg.max_response_length = stage.max_output_tokens;
    cfg.max_steps = stage.max_steps;
    if let Some(e) = stage.num_epochs {
        cfg.num_epochs = e;
    }
    cfg
}

/// A phase's `[run]`: its own folder under the pipeline's run directory.
fn phase_run(run: &RunSection, root: &Path, name: &str) -> RunSection {
    RunSection {
        run_dir: root.join(name),
        record: None,
        ..run.clone()
    }
}

/// Writes a phase's held-out answers to `RUN_DIR/eval/PHASE.jsonl` (one line per item: id, task,
/// bucket, prompt length, gold answer, response, score), to see what changed between phases.
fn write_predictions(root: &Path, phase: &str, report: &EvalReport) -> Result<()> {
    let dir = root.join("eval");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut text = String::new();
    for p in &report.predictions {
        text.push_str(&serde_json::to_string(p).unwrap_or_default());
        text.push('\n');
    }
    write_atomic(&dir.join(format!("{phase}.jsonl")), text.as_bytes())
}

fn write_sft(records: &[SftRecord], path: &Path) -> Result<()> {
    let mut text = String::new();
    for r in records {
        let mut messages: Vec<serde_json::Value> = r
            .prompt
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        messages.push(serde_json::json!({"role": "assistant", "content": r.response}));
        text.push_str(&serde_json::json!({ "messages": messages }).to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Concatenates the phases' metrics into `RUN_DIR/metrics.jsonl`, each line tagged with its
/// `"phase"` (and `"stage"` for RL stages), for plotting the whole run.
fn merge_metrics(root: &Path, stages: &[StageConfig], with_sft: bool) -> Result<()> {
    let mut names: Vec<(String, Option<usize>)> = Vec::new();
    if with_sft {
        names.push(("sft".into(), None));
    }
    for k in 0..stages.len() {
        names.push((stage_name(stages, k), Some(k + 1)));
    }
    let mut out = String::new();
    for (name, stage) in names {
        let path = root.join(&name).join("metrics.jsonl");
        // A phase without a readable log is left out; lines that are not objects are dropped.
        let reader = JsonlReader::new(&path);
        let Ok(lines) = reader.lines().and_then(|l| l.collect::<Result<Vec<_>>>()) else {
            continue;
        };
        for line in &lines {
            if let Ok(serde_json::Value::Object(mut m)) = reader.parse(line) {
                m.insert("phase".into(), serde_json::json!(name));
                if let Some(s) = stage {
                    m.insert("stage".into(), serde_json::json!(s));
                }
                out.push_str(&serde_json::Value::Object(m).to_string());
                out.push('\n');
            }
        }
    }
    write_atomic(&root.join("metrics.jsonl"), out.as_bytes())
}
