//! The GRPO / DAPO trainer. One step: draw prompts, roll out G samples each on the current policy
//! (behaviour log-probs kept), reward them, keep the groups with a learning signal (dynamic
//! sampling, refilling with further generation batches), compute group advantages, then update the
//! policy with the clipped surrogate over `ppo_epochs` passes of mini-batches (one optimiser step
//! each), every mini-batch split into micro-batches by a token budget. [`RlTrainer::step`] runs
//! these as named stages (see its documentation); this module holds the run around them.
//!
//! Randomness is keyed by (seed, step, prompt position, sample), never by batch layout or device,
//! so a run resumes exactly and data parallelism can split the batch by prompts without changing
//! the rollouts.

use crate::model::TrainBackend;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use super::aepo::{aepo_stage, AepoContext, AepoReport, AepoState};
use super::config::RlConfig;
use super::exchange::sum_one;
use super::groups::GroupSelection;
use super::metrics::{StepMetrics, StepTimes};
use super::pack::{pack, reference_logprobs, PackContext};
use super::rollout::{rollout, step_seed, GenBatch, RolloutContext};
use super::score::{score, share};
use super::update::{update, UpdateContext};
use super::warmup::{warm_up, WarmUpReport};
use crate::config::{ModelSection, RunSection};
use crate::data::{
    load_rl_any_with, EpochSampler, LoadOptions, SamplerState, TaskBalancedSampler,
    TaskSamplerState,
};
pub use crate::data::{prepare_prompts, PreparedPrompt};
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::generate::{pad_token_id, stop_token_ids, SamplingParams};
use crate::model::{load_model, Qwen2ForCausalLM};
pub use crate::reward::RewardSection;
use crate::reward::{RewardStats, Rewarder};
use crate::tokenizer::Tokenizer;
use crate::train::record::record_config;
use crate::train::{stable_param_ids, AdamWOptimizer, RunDir, SkipCounts, SkipGuard};

/// What an RL checkpoint remembers besides the weights and the optimiser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlState {
    /// Training steps done.
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// The prompt sampler's position.
    pub sampler: SamplerState,
    /// The task-balanced sampler's position (`rl.task_balanced_sampling`; absent otherwise and
    /// in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_sampler: Option<TaskSamplerState>,
    /// AEPO's controller state (`rl.loss.aepo`; absent otherwise and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aepo: Option<AepoState>,
    /// The observer's state (e.g. the pipeline's difficulty store).
    #[serde(default)]
    pub observer: serde_json::Value,
    /// Skipped-update counts, so a resumed run goes on counting (absent in older checkpoints).
    #[serde(default)]
    pub skips: SkipCounts,
}

/// Watches an RL run: sees every rollout group's correctness scores and keeps state that is saved
/// in the run's checkpoints (the pipeline's difficulty store is one).
pub trait RlObserver {
    /// Called for every group generated (kept or filtered), with its rollouts' correctness scores.
    fn on_group(&mut self, _prompt: &PreparedPrompt, _scores: &[f64]) {}
    /// State to save with a checkpoint.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores the state saved with the checkpoint a run resumes from.
    fn restore(&mut self, _state: serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// An observer that does nothing.
pub struct NoObserver;

impl RlObserver for NoObserver {}

/// The outcome of an RL run.
#[derive(Debug, Clone, Serialize)]
pub struct RlSummary {
    /// Steps done in total.
    pub steps: usize,
    /// Mean correctness score of the rollouts at the first step of this process.
    pub first_score_mean: f64,
    /// Mean correctness score of the rollouts at the last step.
    pub last_score_mean: f64,
    /// Prompts skipped for exceeding `max_prompt_length`.
    pub skipped_prompts: usize,
    /// The final model folder.
    pub final_dir: PathBuf,
}

/// Runs RL on autodiff backend `B`. `rewarder: None` builds the hybrid reward of `[rl.reward]`.
///
/// With `resume`, training continues from the run directory's latest checkpoint; without it, a run
/// directory that already holds checkpoints is an error.
pub fn train<B: TrainBackend>(
    model_section: &ModelSection,
    run: &RunSection,
    config: &RlConfig,
    rewarder: Option<Arc<dyn Rewarder>>,
    resume: bool,
    device: B::Device,
) -> Result<RlSummary> {
    let worker = Worker::single(crate::DeviceSpec::best_available());
    train_with::<B>(
        model_section,
        run,
        config,
        rewarder,
        resume,
        device,
        &worker,
    )
}

/// [`train`] as one worker of a data-parallel run (see [`train_prompts_with`]).
pub fn train_with<B: TrainBackend>(
    model_section: &ModelSection,
    run: &RunSection,
    config: &RlConfig,
    rewarder: Option<Arc<dyn Rewarder>>,
    resume: bool,
    device: B::Device,
    worker: &Worker,
) -> Result<RlSummary> {
    config.validate()?;
    if config.train_file.as_os_str().is_empty() {
        return Err(Error::Invalid(
            "rl.train_file is required: the prompts to train on (JSONL, JSON or Parquet)".into(),
        ));
    }
    let tokenizer = model_section.load_tokenizer()?;
    let options = LoadOptions {
        strict: config.strict,
    };
    let samples = load_rl_any_with(&config.train_file, options)?;
    let (prompts, skipped) = prepare_prompts(&samples, &tokenizer, config.max_prompt_length)?;
    if skipped > 0 {
        log::warn!(
            "{skipped} of {} prompts exceed rl.max_prompt_length = {} tokens and are skipped",
            samples.len(),
            config.max_prompt_length
        );
    }
    if prompts.is_empty() {
        return Err(Error::input(
            &config.train_file,
            0,
            format!(
                "every prompt exceeds rl.max_prompt_length = {}",
                config.max_prompt_length
            ),
        ));
    }
    let mut summary = train_prompts_with::<B>(
        model_section,
        run,
        config,
        &prompts,
        rewarder,
        &mut NoObserver,
        resume,
        device,
        worker,
    )?;
    summary.skipped_prompts = skipped;
    Ok(summary)
}

/// Runs RL over prepared prompts (a prompt listed twice is drawn twice as often), reporting every
/// rollout group to `observer`; see [`train`] for `resume`.
#[allow(clippy::too_many_arguments)]
pub fn train_prompts<B: TrainBackend>(
    model_section: &ModelSection,
    run: &RunSection,
    config: &RlConfig,
    prompts: &[PreparedPrompt],
    rewarder: Option<Arc<dyn Rewarder>>,
    observer: &mut dyn RlObserver,
    resume: bool,
    device: B::Device,
) -> Result<RlSummary> {
    let worker = Worker::single(crate::DeviceSpec::best_available());
    train_prompts_with::<B>(
        model_section,
        run,
        config,
        prompts,
        rewarder,
        observer,
        resume,
        device,
        &worker,
    )
}

/// [`train_prompts`] as one worker of a data-parallel run (see [`crate::distributed`]).
///
/// Every worker draws the same prompts; prompt `k` of a generation batch is rolled out and
/// rewarded by worker `k mod world` (its G samples stay together, so group advantages need no
/// communication). The workers then share each rollout's numbers (reward, score, length), so
/// all of them keep the same groups under dynamic sampling, refill until the global batch is
/// full, and cut the same mini-batches; in each, a worker computes the loss of its own groups,
/// normalised by the mini-batch's global token (or sequence) count, and the gradients are summed
/// before clipping with the global norm. Sampling seeds are keyed by (seed, step, prompt position,
/// sample), so the rollouts, and the step, do not depend on the number of workers. Rank 0
/// writes metrics and checkpoints.
#[allow(clippy::too_many_arguments)]
pub fn train_prompts_with<B: TrainBackend>(
    model_section: &ModelSection,
    run: &RunSection,
    config: &RlConfig,
    prompts: &[PreparedPrompt],
    rewarder: Option<Arc<dyn Rewarder>>,
    observer: &mut dyn RlObserver,
    resume: bool,
    device: B::Device,
    worker: &Worker,
) -> Result<RlSummary> {
    RlTrainer::<B>::new(
        model_section,
        run,
        config,
        prompts,
        rewarder,
        observer,
        resume,
        device,
        worker,
    )?
    .run()
}

/// An RL run in progress: the policy and its optimiser, the frozen reference, the reward and the
/// prompt sampler. [`RlTrainer::step`] runs one training step as named stages, each with a typed
/// output: rollout (`rl/rollout.rs`) -> score (`rl/score.rs`) -> advantages with dynamic
/// sampling (`rl/groups.rs`) -> AEPO when on (`rl/aepo.rs`) -> pack (`rl/pack.rs`) -> update
/// (`rl/update.rs`) -> metrics (`rl/metrics.rs`). The CLI, the pipeline
/// and every data-parallel worker go through it (via [`train_prompts_with`]).
pub struct RlTrainer<'a, B: TrainBackend> {
    model_section: &'a ModelSection,
    run: &'a RunSection,
    config: &'a RlConfig,
    prompts: &'a [PreparedPrompt],
    observer: &'a mut dyn RlObserver,
    worker: &'a Worker,
    device: B::Device,
    run_dir: RunDir,
    tokenizer: Tokenizer,
    /// `None` only after a step failed half-way through the update.
    policy: Option<Qwen2ForCausalLM<B>>,
    reference: Option<Qwen2ForCausalLM<B::InnerBackend>>,
    optim: AdamWOptimizer<B, Qwen2ForCausalLM<B>>,
    rewarder: Arc<dyn Rewarder>,
    sampler: PromptSampler,
    /// AEPO's state across steps (`rl.loss.aepo`).
    aepo: AepoState,
    params: SamplingParams,
    pad: u32,
    steps_done: usize,
    total_steps: usize,
    first_score: Option<f64>,
    last_score: f64,
    /// Whether [`Self::warm_up`] ran.
    warmed_up: bool,
    /// Stops the run after `rl.optim.max_skipped_updates` skipped updates in a row.
    skips: SkipGuard,
}

/// The run's prompt sampler: one permutation per epoch, or balanced over task types
/// (`rl.task_balanced_sampling`).
enum PromptSampler {
    Plain(EpochSampler),
    Balanced(TaskBalancedSampler),
}

impl PromptSampler {
    /// The sampler of `config` over `prompts`, at the position saved in `state` (the start when
    /// there is none, or when the checkpoint was written with the other sampler).
    fn new(
        prompts: &[PreparedPrompt],
        seed: u64,
        config: &RlConfig,
        state: Option<&RlState>,
    ) -> Self {
        if config.task_balanced_sampling {
            let tasks: Vec<&str> = prompts.iter().map(|p| p.task.name()).collect();
            let at = state.and_then(|s| s.task_sampler.clone());
            if state.is_some() && at.is_none() {
                log::warn!(
                    "rl: the checkpoint has no task-balanced sampler position: it starts afresh"
                );
            }
            let at = at.unwrap_or_default();
            PromptSampler::Balanced(TaskBalancedSampler::new(&tasks, seed, config.shuffle, &at))
        } else {
            let at = state.map_or(SamplerState::default(), |s| s.sampler);
            PromptSampler::Plain(EpochSampler::new(prompts.len(), seed, config.shuffle, at))
        }
    }

    /// The next `n` prompt indices.
    fn take(&mut self, n: usize) -> Vec<usize> {
        match self {
            PromptSampler::Plain(s) => s.take(n),
            PromptSampler::Balanced(s) => s.take(n),
        }
    }

    /// Passes over the prompts so far (prompts drawn / prompts when balanced).
    fn epochs_done(&self) -> f64 {
        match self {
            PromptSampler::Plain(s) => s.epochs_done(),
            PromptSampler::Balanced(s) => s.epochs_done(),
        }
    }

    /// The positions a checkpoint keeps: `RlState::sampler` and `RlState::task_sampler`.
    fn states(&self) -> (SamplerState, Option<TaskSamplerState>) {
        match self {
            PromptSampler::Plain(s) => (s.state(), None),
            PromptSampler::Balanced(s) => (SamplerState::default(), Some(s.state())),
        }
    }
}

/// What one [`RlTrainer::step`] did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Steps done, this one included.
    pub step: usize,
    /// Mean correctness score of the step's rollouts (kept or filtered).
    pub score_mean: f64,
    /// Mean entropy per loss token of the step's updates.
    pub entropy: f64,
    /// The step's metrics record (verl names), as the leader writes it to `metrics.jsonl`.
    pub record: serde_json::Value,
    /// Tokens this worker sampled in the step's rollouts (filtered groups included).
    pub rollout_tokens: usize,
    /// Tokens (prompt and response) this worker trained on, over all PPO epochs.
    pub train_tokens: usize,
    /// Seconds of the rollout stage.
    pub gen_s: f64,
    /// Seconds of the update stage (reference, pack and update).
    pub update_s: f64,
}

/// The rollout and score stages' outputs over a step's generation batches.
struct Generation {
    selection: GroupSelection,
    reward_stats: RewardStats,
    t_gen: Duration,
    t_reward: Duration,
    /// Tokens sampled by this worker.
    tokens: usize,
}

fn policy_lost() -> Error {
    Error::Invalid("rl: the policy was lost to an earlier step that failed".into())
}

impl<'a, B: TrainBackend> RlTrainer<'a, B> {
    /// Prepares a run over `prompts` (a prompt listed twice is drawn twice as often), reporting
    /// every rollout group to `observer`: loads the policy (from the run directory's latest
    /// checkpoint with `resume`, which also restores the optimiser, the sampler and the
    /// observer), the reference when the loss has a KL term, and the reward (`rewarder: None`
    /// builds the hybrid reward of `[rl.reward]`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model_section: &'a ModelSection,
        run: &'a RunSection,
        config: &'a RlConfig,
        prompts: &'a [PreparedPrompt],
        rewarder: Option<Arc<dyn Rewarder>>,
        observer: &'a mut dyn RlObserver,
        resume: bool,
        device: B::Device,
        worker: &'a Worker,
    ) -> Result<Self> {
        config.validate()?;
        model_section.check_dropout(config.gradient_checkpointing, "rl")?;
        let leader = worker.is_leader();
        if prompts.is_empty() {
            return Err(Error::Invalid("RL needs at least one prompt".into()));
        }
        let run_dir = RunDir::open(&run.run_dir)?;
        let resume_from = run_dir.resume_point(resume)?;
        crate::train::check_bf16::<B>("rl", config.bf16, &device)?;
        let tokenizer = model_section.load_tokenizer()?;
        let (policy, state): (_, Option<RlState>) = RunDir::starting_point::<B, _>(
            resume_from.as_deref(),
            model_section,
            run.seed,
            &device,
        )?;
        let policy = stable_param_ids(policy)
            .with_gradient_checkpointing(config.gradient_checkpointing)
            .with_compute_dtype(config.bf16.then_some(FloatDType::BF16));
        tokenizer.check_fits(policy.config().vocab_size)?;
        // The frozen reference is the policy at the start of RL (loaded again when resuming);
        // with LoRA it is the policy's own base with the adapters off (no second copy).
        let reference = if config.loss.beta > 0.0 && model_section.lora.is_none() {
            Some(load_model::<B::InnerBackend>(&model_section.path, &device)?)
        } else {
            None
        };
        let stop = stop_token_ids(&model_section.path, policy.config(), Some(&tokenizer))?;
        let pad = pad_token_id(Some(&tokenizer), &stop);
        let rewarder = match rewarder {
            Some(r) => r,
            None => config
                .reward
                .build::<B::InnerBackend>(config.max_response_length, &device)?,
        };
        let total_steps = if config.max_steps > 0 {
            config.max_steps
        } else {
            ((config.num_epochs * prompts.len() as f64) / config.train_batch_size as f64).ceil()
                as usize
        };
        let start = state.as_ref().map_or(0, |s| s.step);
        if let Some(s) = &state {
            observer.restore(s.observer.clone())?;
        }
        let sampler = PromptSampler::new(prompts, run.seed, config, state.as_ref());
        let aepo = state.as_ref().and_then(|s| s.aepo).unwrap_or_default();
        let mut optim = AdamWOptimizer::<B, Qwen2ForCausalLM<B>>::new(&config.optim);
        if let Some(ckpt) = &resume_from {
            run_dir.load_optimizer(ckpt, |p| optim.load(p, &device))?;
        }
        if leader {
            run_dir.truncate_metrics(resume_from.as_ref().map(|_| start))?;
        }
        let params = SamplingParams {
            temperature: config.temperature,
            top_p: config.top_p,
            top_k: config.top_k,
            max_new_tokens: config.max_response_length,
            stop_token_ids: stop.clone(),
            stop_strings: Vec::new(),
        };
        params.validate()?;
        if leader {
            record_config(run, resume_from.is_some())?;
        }
        Ok(Self {
            model_section,
            run,
            config,
            prompts,
            observer,
            worker,
            device,
            run_dir,
            tokenizer,
            policy: Some(policy),
            reference,
            optim,
            rewarder,
            sampler,
            aepo,
            params,
            pad,
            steps_done: start,
            total_steps,
            first_score: None,
            last_score: 0.0,
            warmed_up: false,
            skips: SkipGuard::new(
                "rl",
                config.optim.max_skipped_updates,
                state.as_ref().map_or_else(SkipCounts::default, |s| s.skips),
            ),
        })
    }

    /// Steps done (those of the checkpoint a run resumed from included).
    pub fn steps_done(&self) -> usize {
        self.steps_done
    }

    /// Steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Runs every shape the run's steps can produce once, when shapes are bucketed and
    /// `[rl.shapes] warmup` is on (see [`crate::shapes`]); [`Self::run`] calls it first.
    pub fn warm_up(&mut self) -> Result<WarmUpReport> {
        if self.warmed_up {
            return Ok(WarmUpReport::default());
        }
        let policy = self.policy.take().ok_or_else(policy_lost)?;
        let base = (self.reference.is_none() && self.config.loss.beta > 0.0)
            .then(|| burn::module::AutodiffModule::valid(&policy).without_adapters());
        let (policy, report) = warm_up(
            policy,
            self.reference.as_ref().or(base.as_ref()),
            self.prompts,
            self.pad,
            self.config,
            &self.device,
        )?;
        self.policy = Some(policy);
        self.warmed_up = true;
        if report.update_shapes + report.rollout_passes > 0 {
            log::info!(
                "rl: warmed up {} rollout passes and {} update shapes in {:.1} s",
                report.rollout_passes,
                report.update_shapes,
                report.seconds
            );
        }
        Ok(report)
    }

    /// Runs the remaining steps, then saves the final model (see [`RlTrainer::finish`]).
    pub fn run(mut self) -> Result<RlSummary> {
        if self.steps_done < self.total_steps {
            self.warm_up()?;
        }
        let bar = crate::metrics::progress_bar(
            self.total_steps as u64,
            self.steps_done as u64,
            self.run.progress && self.worker.is_leader(),
            "rl",
        );
        while self.steps_done < self.total_steps {
            let report = self.step()?;
            bar.set_message(format!(
                "score {:.3} entropy {:.3}",
                report.score_mean, report.entropy
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        self.finish()
    }

    /// One training step: rollout -> score -> advantages (dynamic sampling) -> AEPO (when on) ->
    /// pack -> update -> metrics. The leader writes the step's record and, when due, a
    /// checkpoint.
    pub fn step(&mut self) -> Result<StepReport> {
        let step = self.steps_done;
        if step >= self.total_steps {
            return Err(Error::Invalid(format!(
                "rl: all {} steps of the run are done",
                self.total_steps
            )));
        }
        let t_step = Instant::now();
        let seed = step_seed(self.run.seed, step);
        let generation = self.generate(step, seed)?;
        let mut batch = generation.selection.finish(self.config, self.prompts, step);
        let aepo = self.aepo_stage(step, &mut batch.groups)?;

        log::debug!(
            "rl step {}: rollouts done, {:?} kernels compiled so far",
            step + 1,
            crate::jit::kernels_compiled()
        );
        let t_update = Instant::now();
        let base = match (&self.reference, &self.policy) {
            (None, Some(p)) if self.config.loss.beta > 0.0 && p.has_adapters() => {
                Some(burn::module::AutodiffModule::valid(p).without_adapters())
            }
            _ => None,
        };
        let refs = match self.reference.as_ref().or(base.as_ref()) {
            Some(r) => Some(reference_logprobs(
                r,
                &batch.groups,
                self.prompts,
                self.pad,
                self.config,
                &self.device,
            )?),
            None => None,
        };
        let pack_ctx = PackContext {
            config: self.config,
            prompts: self.prompts,
            pad: self.pad,
        };
        let packed = pack::<B>(&batch.groups, refs.as_ref(), &pack_ctx, &self.device)?;
        drop(refs);
        let update_ctx = UpdateContext {
            config: self.config,
            worker: self.worker,
            step,
            total_steps: self.total_steps,
        };
        let policy = self.policy.take().ok_or_else(policy_lost)?;
        let (policy, updates) =
            update(policy, &mut self.optim, &packed, &update_ctx, &self.device)?;
        self.policy = Some(policy);
        drop(packed);
        let t_update = t_update.elapsed();

        let mut reward_stats = generation.reward_stats;
        if self.worker.world > 1 {
            let what = format!("step {}: summing reward counters", step + 1);
            reward_stats =
                sum_one::<_, B::InnerBackend>(self.worker, &what, &reward_stats, &self.device)?;
        }
        let metrics = StepMetrics {
            step: step + 1,
            epoch: self.sampler.epochs_done(),
            batch: &batch,
            update: &updates,
            reward: &reward_stats,
            aepo,
            times: StepTimes {
                gen: generation.t_gen,
                reward: generation.t_reward,
                update_actor: t_update,
                step: t_step.elapsed(),
            },
        };
        let train_tokens: usize = batch
            .groups
            .iter()
            .filter(|g| g.mine)
            .flat_map(|g| {
                g.rollouts
                    .iter()
                    .filter(|r| !r.aepo_masked)
                    .map(|r| self.prompts[g.prompt].ids.len() + r.len)
            })
            .sum();
        let report = StepReport {
            step: step + 1,
            score_mean: metrics.score_mean(),
            entropy: metrics.entropy(),
            record: metrics.record(),
            rollout_tokens: generation.tokens,
            train_tokens: train_tokens * self.config.ppo_epochs,
            gen_s: generation.t_gen.as_secs_f64(),
            update_s: t_update.as_secs_f64(),
        };
        self.first_score.get_or_insert(report.score_mean);
        self.last_score = report.score_mean;
        self.steps_done = step + 1;
        if self.worker.is_leader() {
            self.run_dir.log_metrics(&report.record)?;
        }
        // Before the checkpoint: a run that learns nothing stops with its last good one.
        self.skips
            .record(step + 1, updates.grad_norms.len(), updates.skipped_updates)?;
        if self.steps_done == self.total_steps {
            self.skips.finish()?;
        }
        self.save_checkpoint_if_due()?;
        Ok(report)
    }

    /// The AEPO stage (`rl.loss.aepo`, see `rl/aepo.rs`): the policy's entropy on the step's
    /// batch moves the controller on, and while it masks, the negatives of `groups` are marked
    /// to be left out of the update. `None` when AEPO is off.
    fn aepo_stage(
        &mut self,
        step: usize,
        groups: &mut [super::groups::Group],
    ) -> Result<Option<AepoReport>> {
        if !self.config.loss.aepo {
            return Ok(None);
        }
        let policy = self.policy.as_ref().ok_or_else(policy_lost)?;
        let inner = burn::module::AutodiffModule::valid(policy);
        let ctx = AepoContext {
            config: self.config,
            prompts: self.prompts,
            pad: self.pad,
            worker: self.worker,
            step,
        };
        let report = aepo_stage(&inner, &mut self.aepo, groups, &ctx, &self.device)?;
        Ok(Some(report))
    }

    /// The rollout and score stages, over as many generation batches as dynamic sampling asks
    /// for; every group generated goes to the observer, then to the selection.
    fn generate(&mut self, step: usize, seed: u64) -> Result<Generation> {
        let config = self.config;
        let policy = self.policy.as_ref().ok_or_else(policy_lost)?;
        let ctx = RolloutContext {
            config,
            prompts: self.prompts,
            tokenizer: &self.tokenizer,
            params: &self.params,
            pad: self.pad,
            worker: self.worker,
        };
        let mut out = Generation {
            selection: GroupSelection::new(config),
            reward_stats: RewardStats::default(),
            t_gen: Duration::ZERO,
            t_reward: Duration::ZERO,
            tokens: 0,
        };
        let mut position = 0u64;
        loop {
            out.selection.start_batch();
            let batch = GenBatch {
                prompts: self.sampler.take(config.gen_batch()),
                first_position: position,
            };
            position += batch.prompts.len() as u64;
            let rollouts = rollout(policy, &batch, seed, &ctx, &self.device)?;
            out.t_gen += rollouts.elapsed;
            out.tokens += rollouts
                .prompts
                .iter()
                .flat_map(|p| &p.samples)
                .map(|s| s.output_ids.len())
                .sum::<usize>();
            let scored = score(&*self.rewarder, self.prompts, rollouts, batch.prompts.len())?;
            out.reward_stats.add(&scored.stats);
            out.t_reward += scored.elapsed;
            let what = format!("step {}: sharing rollout rewards", step + 1);
            let groups = share::<B::InnerBackend>(
                scored.own,
                &batch.prompts,
                config.num_generations,
                self.worker,
                &what,
                &self.device,
            )?;
            for group in groups {
                let prompt = &self.prompts[group.prompt];
                let scores: Vec<f64> = group.rollouts.iter().map(|r| r.score).collect();
                self.observer.on_group(prompt, &scores);
                out.selection.offer(group, prompt.ids.len());
            }
            if !out.selection.wants_more() {
                break;
            }
        }
        Ok(out)
    }

    /// The leader saves a checkpoint every `save_steps` steps and after the last one.
    fn save_checkpoint_if_due(&self) -> Result<()> {
        let (done, run) = (self.steps_done, self.run);
        let due = (run.save_steps > 0 && done % run.save_steps == 0) || done == self.total_steps;
        if !self.worker.is_leader() || !due {
            return Ok(());
        }
        let policy = self.policy.as_ref().ok_or_else(policy_lost)?;
        let (sampler, task_sampler) = self.sampler.states();
        let state = RlState {
            step: done,
            total_steps: self.total_steps,
            sampler,
            task_sampler,
            aepo: self.config.loss.aepo.then_some(self.aepo),
            observer: self.observer.state(),
            skips: self.skips.counts(),
        };
        let optim = &self.optim;
        self.run_dir.save_checkpoint(
            done,
            policy,
            self.model_section,
            |p| optim.save(p),
            &state,
            (run.save_total_limit > 0).then_some(run.save_total_limit),
        )?;
        Ok(())
    }

    /// Saves the final model (the leader) and waits until every worker is done, so whatever
    /// comes next (a pipeline's next phase) reads it complete; the run's summary.
    pub fn finish(self) -> Result<RlSummary> {
        let policy = self.policy.as_ref().ok_or_else(policy_lost)?;
        let final_dir = if self.worker.is_leader() {
            self.run_dir.save_final(policy, self.model_section)?
        } else {
            self.run_dir.final_dir()
        };
        self.worker
            .barrier::<B::InnerBackend>("waiting for the final model", &self.device)?;
        Ok(RlSummary {
            steps: self.total_steps,
            first_score_mean: self.first_score.unwrap_or(self.last_score),
            last_score_mean: self.last_score,
            skipped_prompts: 0,
            final_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TaskKind;

    fn prompts() -> Vec<PreparedPrompt> {
        let tasks = [TaskKind::Qa, TaskKind::Qa, TaskKind::Qa, TaskKind::DocMath];
        tasks
            .iter()
            .enumerate()
            .map(|(index, &task)| PreparedPrompt {
                index,
                id: format!("p{index}"),
                text: String::new(),
                ids: vec![1],
                task,
                answer: String::new(),
            })
            .collect()
    }

    fn state(sampler: &PromptSampler, aepo: Option<AepoState>) -> RlState {
        let (sampler, task_sampler) = sampler.states();
        RlState {
            step: 1,
            total_steps: 9,
            sampler,
            task_sampler,
            aepo,
            observer: serde_json::Value::Null,
            skips: SkipCounts::default(),
        }
    }

    #[test]
    fn the_task_balanced_sampler_resumes_from_the_checkpoint_state() {
        let prompts = prompts();
        let config = RlConfig {
            task_balanced_sampling: true,
            ..RlConfig::default()
        };
        let mut s = PromptSampler::new(&prompts, 5, &config, None);
        let first = s.take(4);
        let n_math = first.iter().filter(|&&i| i == 3).count();
        assert_eq!(n_math, 2, "two of each task in a batch of four: {first:?}");
        let aepo = Some(AepoState { masking: true });
        let json = serde_json::to_string(&state(&s, aepo)).unwrap();
        let back: RlState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.aepo, aepo);
        let mut r = PromptSampler::new(&prompts, 5, &config, Some(&back));
        assert_eq!(r.take(6), s.take(6));
        assert_eq!(r.epochs_done(), 2.5);
    }

    #[test]
    fn checkpoints_without_the_new_fields_still_load_and_the_plain_sampler_is_unchanged() {
        let old = r#"{"step": 2, "total_steps": 4, "sampler": {"epoch": 0, "index": 3}}"#;
        let st: RlState = serde_json::from_str(old).unwrap();
        assert!(st.task_sampler.is_none() && st.aepo.is_none());
        let prompts = prompts();
        let config = RlConfig::default();
        let mut plain = PromptSampler::new(&prompts, 5, &config, Some(&st));
        let mut epoch = EpochSampler::new(4, 5, true, SamplerState { epoch: 0, index: 3 });
        assert_eq!(plain.take(5), epoch.take(5));
        // The plain sampler's checkpoint has no new fields.
        let json = serde_json::to_value(state(&plain, None)).unwrap();
        assert!(json.get("task_sampler").is_none() && json.get("aepo").is_none());
    }
}
