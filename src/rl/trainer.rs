//! The GRPO / DAPO trainer. One step: draw prompts, roll out G samples each on the current policy
//! (behaviour log-probs kept), reward them, keep the groups with a learning signal (dynamic
//! sampling, refilling with further generation batches), compute group advantages, then update the
//! policy with the clipped surrogate over `ppo_epochs` passes of mini-batches (one optimiser step
//! each), every mini-batch split into micro-batches by a token budget.
//!
//! Randomness is keyed by (seed, step, prompt position, sample), never by batch layout or device,
//! so a run resumes exactly and data parallelism can split the batch by prompts without changing
//! the rollouts.

use crate::model::{ModelBackend, TrainBackend};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{FloatDType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::advantage::group_advantages;
use super::config::RlConfig;
use super::dynamic::{FilterReport, GroupFilter};
use super::loss::{policy_loss, AggScale, PolicyLossInputs, PolicyLossStats};
use crate::config::{ModelSection, RunSection};
use crate::data::{load_rl_any, EpochSampler, RlSample, SamplerState};
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::generate::{
    pad_token_id, sample_seed, stop_token_ids, Engine, EngineOptions, FinishReason,
    GenerateRequest, SamplingParams,
};
use crate::model::{load_model, Qwen2ForCausalLM};
use crate::reward::judge::{HttpJudge, HttpJudgeConfig, LocalJudge, LocalJudgeConfig};
use crate::reward::{
    HybridConfig, HybridReward, Judge, OverlongConfig, RewardItem, RewardStats, Rewarder,
    RuleOptions, TaskKind,
};
use crate::tokenizer::{Message, Tokenizer};
use crate::train::run_dir::OPTIMIZER_FILE;
use crate::train::{
    clip_grad_norm, stable_param_ids, token_budget_batches, AdamWOptimizer, Packed, RunDir,
    Sequence,
};

/// `[rl.reward]`: the hybrid reward's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSection {
    /// Rule verifier options (`require_think`, `case_insensitive`, `eos_suffixes`).
    pub rule: RuleOptions,
    /// OpenAI-compatible judge server (e.g. `http://127.0.0.1:8000/v1`); none: rules only.
    pub judge_url: Option<String>,
    /// The served judge model's name.
    pub judge_model: Option<String>,
    /// Environment variable holding the judge server's API key.
    pub judge_api_key_env: Option<String>,
    /// Judge requests in flight at once.
    pub judge_concurrency: usize,
    /// Seconds before a judge request is abandoned (then retried).
    pub judge_timeout_s: f64,
    /// Retries of a judge request after 429, 5xx or a transport error.
    pub judge_retries: u32,
    /// A local judge: HuggingFace model folder run on the training device.
    pub judge_checkpoint: Option<PathBuf>,
    /// Overlong shaping buffer L_cache in tokens (0: off); L_max is `max_response_length`.
    pub overlong_buffer_len: usize,
    /// Overlong penalty at the limit.
    pub overlong_penalty_factor: f64,
}

impl Default for RewardSection {
    fn default() -> Self {
        Self {
            rule: RuleOptions::default(),
            judge_url: None,
            judge_model: None,
            judge_api_key_env: None,
            judge_concurrency: 32,
            judge_timeout_s: 120.0,
            judge_retries: 5,
            judge_checkpoint: None,
            overlong_buffer_len: 0,
            overlong_penalty_factor: 1.0,
        }
    }
}

/// What an RL checkpoint remembers besides the weights and the optimiser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlState {
    /// Training steps done.
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// The prompt sampler's position.
    pub sampler: SamplerState,
    /// The observer's state (e.g. the pipeline's difficulty store).
    #[serde(default)]
    pub observer: serde_json::Value,
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

/// A prompt ready for rollouts.
#[derive(Debug, Clone)]
pub struct PreparedPrompt {
    /// Index in the dataset.
    pub index: usize,
    /// The sample's id.
    pub id: String,
    /// The templated user message (what the judge's question is cut from).
    pub text: String,
    /// Prompt ids (chat template with generation prompt).
    pub ids: Vec<u32>,
    /// Verifier.
    pub task: TaskKind,
    /// Gold answer.
    pub answer: String,
}

/// Tokenises RL samples; prompts over `max_prompt_length` tokens are dropped (count returned).
pub fn prepare_prompts(
    samples: &[RlSample],
    tokenizer: &Tokenizer,
    max_prompt_length: usize,
) -> Result<(Vec<PreparedPrompt>, usize)> {
    let mut out = Vec::new();
    let mut skipped = 0;
    for (index, s) in samples.iter().enumerate() {
        let text = s.user_prompt()?;
        let ids = tokenizer.encode_chat(&[Message::new("user", text.clone())], true)?;
        if ids.len() > max_prompt_length {
            skipped += 1;
            continue;
        }
        out.push(PreparedPrompt {
            index,
            id: s.id.clone(),
            text,
            ids,
            task: s.task_kind()?,
            answer: s.answer.clone(),
        });
    }
    Ok((out, skipped))
}

/// One rollout with everything the update needs. Under data parallelism a worker holds the
/// tokens of its own rollouts only; of the others' it knows the numbers (length, reward, ...).
#[derive(Debug, Clone)]
struct Rollout {
    response: Vec<u32>,
    old_logp: Vec<f32>,
    /// Response tokens (known for every rollout, also another worker's).
    len: usize,
    reward: f64,
    score: f64,
    acc: bool,
    truncated: bool,
    advantage: f64,
}

/// A prompt's group of rollouts.
#[derive(Debug, Clone)]
struct Group {
    prompt: usize,
    /// Generated by this worker (which then trains on it).
    mine: bool,
    rollouts: Vec<Rollout>,
}

/// The numbers of a rollout that workers exchange (all but tokens and log-probs).
const SHARED: usize = 5;

impl Rollout {
    fn shared(&self) -> [f32; SHARED] {
        [
            self.score as f32,
            self.reward as f32,
            self.acc as u8 as f32,
            self.truncated as u8 as f32,
            self.len as f32,
        ]
    }

    /// Another worker's rollout, from its [`Rollout::shared`] numbers.
    fn remote(v: &[f32]) -> Self {
        Rollout {
            response: Vec::new(),
            old_logp: Vec::new(),
            len: v[4] as usize,
            reward: v[1] as f64,
            score: v[0] as f64,
            acc: v[2] != 0.0,
            truncated: v[3] != 0.0,
            advantage: 0.0,
        }
    }
}

fn stats_to_vec(s: &RewardStats) -> Vec<f64> {
    [
        s.items,
        s.correct,
        s.judge_calls,
        s.judge_cache_hits,
        s.judge_flips,
        s.judge_failures,
        s.judge_unparsed,
        s.overlong_penalised,
    ]
    .iter()
    .map(|&x| x as f64)
    .collect()
}

fn stats_from_vec(v: &[f64]) -> RewardStats {
    let u = |i: usize| v[i].round() as usize;
    RewardStats {
        items: u(0),
        correct: u(1),
        judge_calls: u(2),
        judge_cache_hits: u(3),
        judge_flips: u(4),
        judge_failures: u(5),
        judge_unparsed: u(6),
        overlong_penalised: u(7),
    }
}

fn loss_stats_to_vec(s: &PolicyLossStats) -> Vec<f64> {
    vec![
        s.tokens,
        s.pg_loss,
        s.clipped,
        s.clipped_low,
        s.clipped_high,
        s.ppo_kl,
        s.kl,
        s.kl_loss,
        s.entropy,
    ]
}

fn loss_stats_from_vec(v: &[f64]) -> PolicyLossStats {
    PolicyLossStats {
        tokens: v[0],
        pg_loss: v[1],
        clipped: v[2],
        clipped_low: v[3],
        clipped_high: v[4],
        ppo_kl: v[5],
        kl: v[6],
        kl_loss: v[7],
        entropy: v[8],
    }
}

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

/// Builds the hybrid reward of `[rl.reward]` (the local judge runs on backend `B`).
pub fn build_rewarder<B: ModelBackend>(
    config: &RlConfig,
    device: &B::Device,
) -> Result<Arc<dyn Rewarder>> {
    let r = &config.reward;
    let judge: Option<Arc<dyn Judge>> = match (&r.judge_url, &r.judge_model, &r.judge_checkpoint) {
        (Some(url), Some(model), _) => {
            let api_key = match &r.judge_api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    Error::Invalid(format!(
                        "rl.reward.judge_api_key_env: environment variable {var} is not set"
                    ))
                })?),
                None => None,
            };
            Some(Arc::new(HttpJudge::new(HttpJudgeConfig {
                api_key,
                concurrency: r.judge_concurrency,
                timeout: Duration::from_secs_f64(r.judge_timeout_s.max(0.001)),
                max_retries: r.judge_retries,
                ..HttpJudgeConfig::new(url.clone(), model.clone())
            })?))
        }
        (_, _, Some(dir)) => Some(Arc::new(LocalJudge::<B>::load(
            dir,
            device.clone(),
            LocalJudgeConfig::default(),
        )?)),
        _ => None,
    };
    let overlong = (r.overlong_buffer_len > 0).then_some(OverlongConfig {
        max_response_length: config.max_response_length,
        buffer_length: r.overlong_buffer_len,
        penalty_factor: r.overlong_penalty_factor,
    });
    if let Some(o) = &overlong {
        o.validate()?;
    }
    Ok(Arc::new(HybridReward::new(
        HybridConfig {
            rule: r.rule.clone(),
            overlong,
        },
        judge,
    )))
}

/// The per-step seed: the same for every device and batch layout.
fn step_seed(seed: u64, step: usize) -> u64 {
    sample_seed(seed, step as u64, u64::MAX)
}

fn mean(x: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = x.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

fn std(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x.iter().copied());
    (x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
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
    let tokenizer = load_tokenizer(model_section)?;
    let samples = load_rl_any(&config.train_file)?;
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

/// The model folder's tokenizer, with the `[model] chat_template` override.
pub fn load_tokenizer(model_section: &ModelSection) -> Result<Tokenizer> {
    model_section.load_tokenizer()
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
    config.validate()?;
    let leader = worker.is_leader();
    if prompts.is_empty() {
        return Err(Error::Invalid("RL needs at least one prompt".into()));
    }
    let run_dir = RunDir::open(&run.run_dir)?;
    let resume_from = run_dir.resume_point(resume)?;
    let tokenizer = load_tokenizer(model_section)?;
    let (policy, state) = match &resume_from {
        Some(ckpt) => {
            log::info!("resuming from {}", ckpt.display());
            let state: RlState = RunDir::load_state(ckpt)?;
            (load_model::<B>(ckpt, &device)?, Some(state))
        }
        None => (load_model::<B>(&model_section.path, &device)?, None),
    };
    let mut policy = stable_param_ids(policy)
        .with_gradient_checkpointing(config.gradient_checkpointing)
        .with_compute_dtype(config.bf16.then_some(FloatDType::BF16));
    tokenizer.check_fits(policy.config().vocab_size)?;
    // The frozen reference is the policy at the start of RL (loaded again when resuming).
    let reference = if config.loss.beta > 0.0 {
        Some(load_model::<B::InnerBackend>(&model_section.path, &device)?)
    } else {
        None
    };
    let stop = stop_token_ids(&model_section.path, policy.config(), Some(&tokenizer))?;
    let pad = pad_token_id(Some(&tokenizer), &stop);
    let rewarder = match rewarder {
        Some(r) => r,
        None => build_rewarder::<B::InnerBackend>(config, &device)?,
    };

    let total_steps = if config.max_steps > 0 {
        config.max_steps
    } else {
        ((config.num_epochs * prompts.len() as f64) / config.train_batch_size as f64).ceil()
            as usize
    };
    let (start, sampler_state) = match &state {
        Some(s) => (s.step, s.sampler),
        None => (0, SamplerState::default()),
    };
    if let Some(s) = &state {
        observer.restore(s.observer.clone())?;
    }
    let mut sampler = EpochSampler::new(prompts.len(), run.seed, config.shuffle, sampler_state);
    let mut optim = AdamWOptimizer::<B, Qwen2ForCausalLM<B>>::new(&config.optim);
    if let Some(ckpt) = &resume_from {
        optim.load(&ckpt.join(OPTIMIZER_FILE), &device)?;
        if leader {
            run_dir.truncate_metrics_after(start)?;
        }
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
    let bar = crate::metrics::progress_bar(
        total_steps as u64,
        start as u64,
        run.progress && leader,
        "rl",
    );
    let (mut first_score, mut last_score) = (None, 0.0);

    for step in start..total_steps {
        let t_step = Instant::now();
        let seed = step_seed(run.seed, step);
        let mut filter = GroupFilter::<Group>::new(
            config.dynamic_sampling,
            config.train_batch_size,
            config.max_num_gen_batches,
        );
        let (mut t_gen, mut t_reward) = (Duration::ZERO, Duration::ZERO);
        let mut reward_stats = RewardStats::default();
        let mut all_scores = Vec::new();
        let mut all_rewards = Vec::new();
        let mut position = 0u64;
        let mut prompt_lens = Vec::new();
        loop {
            filter.start_batch();
            let batch: Vec<usize> = sampler.take(config.gen_batch());
            let first_position = position;
            position += batch.len() as u64;
            // This worker's prompts of the batch: (index in the batch, prompt).
            let mine: Vec<(usize, usize)> = batch
                .iter()
                .copied()
                .enumerate()
                .filter(|(k, _)| worker.owns(*k))
                .collect();
            // Rollouts, in chunks of prompts that bound the KV cache.
            let t0 = Instant::now();
            let inner = policy.valid();
            let engine = Engine::new(
                &inner,
                device.clone(),
                EngineOptions {
                    pad_token_id: pad,
                    prefill_chunk: config.prefill_chunk,
                    max_cache_bytes: None,
                },
            )
            .with_detokenizer(Box::new(|ids: &[u32]| tokenizer.decode(ids, true)));
            let mut results = Vec::with_capacity(mine.len());
            for chunk in mine.chunks(config.rollout_batch_size) {
                let requests: Vec<GenerateRequest> = chunk
                    .iter()
                    .map(|&(k, p)| {
                        let pos = first_position + k as u64;
                        GenerateRequest {
                            prompt: prompts[p].ids.clone(),
                            seeds: (0..config.num_generations as u64)
                                .map(|j| sample_seed(seed, pos, j))
                                .collect(),
                        }
                    })
                    .collect();
                results.extend(engine.generate(&requests, &params)?);
            }
            drop(engine);
            drop(inner);
            t_gen += t0.elapsed();

            let t1 = Instant::now();
            let mut items = Vec::new();
            for (&(_, p), samples) in mine.iter().zip(&results) {
                for s in samples {
                    items.push(RewardItem {
                        task: prompts[p].task,
                        response: s.text.as_deref().unwrap_or(""),
                        ground_truth: &prompts[p].answer,
                        question: None,
                        prompt: Some(&prompts[p].text),
                        response_tokens: Some(s.output_ids.len()),
                        response_ids: &s.output_ids,
                    });
                }
            }
            let (outputs, stats) = rewarder.reward(&items);
            reward_stats.add(&stats);
            t_reward += t1.elapsed();

            let mut outputs = outputs.into_iter();
            let mut own: Vec<Option<Vec<Rollout>>> = vec![None; batch.len()];
            for (&(k, _), samples) in mine.iter().zip(results) {
                let rollouts = samples
                    .into_iter()
                    .zip(outputs.by_ref())
                    .map(|(s, o)| Rollout {
                        truncated: s.finish_reason == FinishReason::Length,
                        len: s.output_ids.len(),
                        response: s.output_ids,
                        old_logp: s.logprobs,
                        reward: o.reward,
                        score: o.score,
                        acc: o.acc,
                        advantage: 0.0,
                    })
                    .collect();
                own[k] = Some(rollouts);
            }
            // Every worker learns every rollout's numbers, in batch order.
            let g = config.num_generations;
            let shared = if worker.world > 1 {
                let mut v = vec![0f32; batch.len() * g * SHARED];
                for (k, rollouts) in own.iter().enumerate() {
                    for (j, r) in rollouts.iter().flatten().enumerate() {
                        let at = (k * g + j) * SHARED;
                        v[at..at + SHARED].copy_from_slice(&r.shared());
                    }
                }
                let what = format!("step {}: sharing rollout rewards", step + 1);
                worker.sum::<B::InnerBackend>(&what, v, &device)?
            } else {
                Vec::new()
            };
            for (k, (&p, rollouts)) in batch.iter().zip(own).enumerate() {
                prompt_lens.push(prompts[p].ids.len() as f64);
                let mine = rollouts.is_some();
                let rollouts = rollouts.unwrap_or_else(|| {
                    (0..g)
                        .map(|j| {
                            let at = (k * g + j) * SHARED;
                            Rollout::remote(&shared[at..at + SHARED])
                        })
                        .collect()
                });
                all_scores.extend(rollouts.iter().map(|r| r.score));
                all_rewards.extend(rollouts.iter().map(|r| r.reward));
                let scores: Vec<f64> = rollouts.iter().map(|r| r.score).collect();
                observer.on_group(&prompts[p], &scores);
                let accs: Vec<bool> = rollouts.iter().map(|r| r.acc).collect();
                filter.offer(
                    Group {
                        prompt: p,
                        mine,
                        rollouts,
                    },
                    &accs,
                );
            }
            if !filter.wants_more() {
                break;
            }
        }
        let (mut groups, report) = filter.finish();
        if filter_short(&report, groups.len(), config) {
            log::warn!(
                "step {}: dynamic sampling kept {} of {} groups after {} generation batches (rl.max_num_gen_batches)",
                step + 1,
                groups.len(),
                config.train_batch_size,
                report.gen_batches
            );
        }
        let rewards: Vec<Vec<f64>> = groups
            .iter()
            .map(|g| g.rollouts.iter().map(|r| r.reward).collect())
            .collect();
        let advantages = group_advantages(&rewards, config.advantage, config.scale_rewards);
        for (g, adv) in groups.iter_mut().zip(advantages) {
            for (r, a) in g.rollouts.iter_mut().zip(adv) {
                r.advantage = a;
            }
        }

        // Policy update.
        let t2 = Instant::now();
        let mut loss_stats = PolicyLossStats::default();
        let mut grad_norms = Vec::new();
        let mut lr = 0.0;
        let mut skipped_updates = 0usize;
        let ref_logps = match &reference {
            Some(r) => Some(reference_logprobs(
                r, &groups, prompts, pad, config, &device,
            )?),
            None => None,
        };
        for _epoch in 0..config.ppo_epochs {
            for (mb_index, mini) in groups.chunks(config.ppo_mini_batch_size).enumerate() {
                let first_group = mb_index * config.ppo_mini_batch_size;
                let (grads, stats) = mini_batch_grads(
                    &policy,
                    mini,
                    ref_logps
                        .as_ref()
                        .map(|r| &r[first_group..first_group + mini.len()]),
                    prompts,
                    pad,
                    config,
                    &device,
                )?;
                let Some(mut grads) = grads else { continue };
                let mut stats = stats;
                if worker.world > 1 {
                    let what = format!("step {}: summing gradients", step + 1);
                    grads = worker.sum_grads::<B, _>(&what, &policy, grads, &device)?;
                    let what = format!("step {}: summing loss statistics", step + 1);
                    let v = worker.sum_f64::<B::InnerBackend>(
                        &what,
                        loss_stats_to_vec(&stats),
                        &device,
                    )?;
                    stats = loss_stats_from_vec(&v);
                }
                let norm = clip_grad_norm::<B, _>(&policy, &mut grads, config.optim.max_grad_norm);
                if !norm.is_finite() || !stats.pg_loss.is_finite() {
                    // A failed update never reaches the weights (nor the optimiser state).
                    skipped_updates += 1;
                    log::warn!(
                        "step {}: non-finite loss ({}) or gradient norm ({norm}): update skipped",
                        step + 1,
                        stats.pg_loss
                    );
                    continue;
                }
                loss_stats.add(&stats);
                grad_norms.push(norm);
                lr = config.optim.lr_at(step, total_steps);
                policy = optim.step(lr, policy, grads);
            }
        }
        let t_train = t2.elapsed();

        // Metrics.
        if worker.world > 1 {
            let what = format!("step {}: summing reward counters", step + 1);
            let v =
                worker.sum_f64::<B::InnerBackend>(&what, stats_to_vec(&reward_stats), &device)?;
            reward_stats = stats_from_vec(&v);
        }
        let kept: Vec<&Rollout> = groups.iter().flat_map(|g| &g.rollouts).collect();
        let lens: Vec<f64> = kept.iter().map(|r| r.len as f64).collect();
        let score_mean = mean(all_scores.iter().copied());
        first_score.get_or_insert(score_mean);
        last_score = score_mean;
        let tok = loss_stats.tokens.max(1.0);
        let done = step + 1;
        let kept_scores: Vec<f64> = kept.iter().map(|r| r.score).collect();
        let kept_rewards: Vec<f64> = kept.iter().map(|r| r.reward).collect();
        let record = json!({
            "step": done,
            "epoch": sampler.epochs_done(),
            "critic/score/mean": mean(kept_scores.iter().copied()),
            "critic/score/std": std(&kept_scores),
            "critic/rewards/mean": mean(kept_rewards.iter().copied()),
            "critic/rewards/std": std(&kept_rewards),
            "critic/acc/mean": mean(kept.iter().map(|r| r.acc as u8 as f64)),
            "rollout/score/mean": score_mean,
            "rollout/score/std": std(&all_scores),
            "rollout/rewards/mean": mean(all_rewards.iter().copied()),
            "rollout/acc/mean": mean(all_scores.iter().map(|&s| (s == 1.0) as u8 as f64)),
            "critic/advantages/mean": mean(kept.iter().map(|r| r.advantage)),
            "critic/advantages/max": kept.iter().map(|r| r.advantage).fold(f64::NAN, f64::max),
            "critic/advantages/min": kept.iter().map(|r| r.advantage).fold(f64::NAN, f64::min),
            "train/num_gen_batches": report.gen_batches,
            "train/filtered_groups_frac": report.filtered_fraction(),
            "train/groups_kept": groups.len(),
        });
        let actor = json!({
            "actor/pg_loss": loss_stats.pg_loss,
            "actor/pg_clipfrac": loss_stats.clipped / tok,
            "actor/pg_clipfrac_low": loss_stats.clipped_low / tok,
            "actor/pg_clipfrac_high": loss_stats.clipped_high / tok,
            "actor/ppo_kl": loss_stats.ppo_kl / tok,
            "actor/kl_loss": loss_stats.kl_loss,
            "actor/kl": loss_stats.kl / tok,
            "actor/entropy": loss_stats.entropy / tok,
            "actor/grad_norm": mean(grad_norms.iter().copied()),
            "actor/lr": lr,
            "actor/updates": grad_norms.len(),
            "actor/skipped_updates": skipped_updates,
        });
        let lengths = json!({
            "response_length/mean": mean(lens.iter().copied()),
            "response_length/max": lens.iter().copied().fold(0.0, f64::max),
            "response_length/min": lens.iter().copied().fold(f64::INFINITY, f64::min).min(f64::MAX),
            "response_length/clip_ratio": mean(kept.iter().map(|r| r.truncated as u8 as f64)),
            "prompt_length/mean": mean(prompt_lens.iter().copied()),
            "prompt_length/max": prompt_lens.iter().copied().fold(0.0, f64::max),
        });
        let other = json!({
            "reward/judge_calls": reward_stats.judge_calls,
            "reward/judge_flips": reward_stats.judge_flips,
            "reward/judge_failures": reward_stats.judge_failures,
            "reward/judge_unparsed": reward_stats.judge_unparsed,
            "reward/judge_cache_hits": reward_stats.judge_cache_hits,
            "reward/overlong_penalised": reward_stats.overlong_penalised,
            "timing_s/gen": t_gen.as_secs_f64(),
            "timing_s/reward": t_reward.as_secs_f64(),
            "timing_s/update_actor": t_train.as_secs_f64(),
            "timing_s/step": t_step.elapsed().as_secs_f64(),
        });
        let mut record = record;
        for part in [actor, lengths, other] {
            if let (Some(map), serde_json::Value::Object(more)) = (record.as_object_mut(), part) {
                map.extend(more);
            }
        }
        if leader {
            run_dir.log_metrics(&record)?;
        }
        bar.set_message(format!(
            "score {score_mean:.3} entropy {:.3}",
            loss_stats.entropy / tok
        ));
        bar.inc(1);
        if leader && ((run.save_steps > 0 && done % run.save_steps == 0) || done == total_steps) {
            let state = RlState {
                step: done,
                total_steps,
                sampler: sampler.state(),
                observer: observer.state(),
            };
            run_dir.save_checkpoint(
                done,
                &policy,
                &model_section.path,
                |p| optim.save(p),
                &state,
                (run.save_total_limit > 0).then_some(run.save_total_limit),
            )?;
        }
    }
    bar.finish_and_clear();
    let final_dir = if leader {
        run_dir.save_final(&policy, &model_section.path, model_section.save_dtype()?)?
    } else {
        run_dir.final_dir()
    };
    // The final model is read by whatever comes next (a pipeline's next phase).
    worker.barrier::<B::InnerBackend>("waiting for the final model", &device)?;
    Ok(RlSummary {
        steps: total_steps,
        first_score_mean: first_score.unwrap_or(last_score),
        last_score_mean: last_score,
        skipped_prompts: 0,
        final_dir,
    })
}

fn filter_short(report: &FilterReport, kept: usize, config: &RlConfig) -> bool {
    config.dynamic_sampling && kept < config.train_batch_size && report.gen_batches > 0
}

/// The sequences of this worker's groups among `groups`, flattened in order.
fn sequences<'a>(
    groups: &'a [Group],
    prompts: &'a [PreparedPrompt],
) -> Vec<(Sequence<'a>, &'a Rollout)> {
    groups
        .iter()
        .filter(|g| g.mine)
        .flat_map(|g| {
            g.rollouts.iter().map(move |r| {
                (
                    Sequence {
                        prompt: &prompts[g.prompt].ids,
                        response: &r.response,
                    },
                    r,
                )
            })
        })
        .collect()
}

/// Reference log-probs of every rollout of this worker's groups, per group then rollout (none for
/// other workers' groups).
fn reference_logprobs<B: ModelBackend>(
    reference: &Qwen2ForCausalLM<B>,
    groups: &[Group],
    prompts: &[PreparedPrompt],
    pad: u32,
    config: &RlConfig,
    device: &B::Device,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        if !g.mine {
            out.push(Vec::new());
            continue;
        }
        let seqs = sequences(std::slice::from_ref(g), prompts);
        let plain: Vec<Sequence<'_>> = seqs.iter().map(|(s, _)| *s).collect();
        let mut per_rollout = vec![Vec::new(); plain.len()];
        for mb in token_budget_batches(&plain, config.micro_batch_tokens) {
            let part: Vec<Sequence<'_>> = mb.iter().map(|&i| plain[i]).collect();
            let packed = Packed::<B>::new(&part, pad, device);
            let (logp, _) =
                packed.logprobs(reference, config.temperature, config.logits_chunk, false)?;
            let r = packed.response_cols;
            let values: Vec<f32> = logp.into_data().to_vec().unwrap_or_default();
            for (row, &i) in mb.iter().enumerate() {
                per_rollout[i] = values[row * r..row * r + plain[i].response.len()].to_vec();
            }
        }
        out.push(per_rollout);
    }
    Ok(out)
}

/// This worker's gradients of one mini-batch (none when the mini-batch has no loss tokens on any
/// worker; zeros when it has none of them) and its statistics. The loss is normalised by the whole
/// mini-batch's token and sequence counts, so the workers' gradients sum to the mini-batch's.
#[allow(clippy::type_complexity)]
fn mini_batch_grads<B: TrainBackend>(
    policy: &Qwen2ForCausalLM<B>,
    groups: &[Group],
    ref_logps: Option<&[Vec<Vec<f32>>]>,
    prompts: &[PreparedPrompt],
    pad: u32,
    config: &RlConfig,
    device: &B::Device,
) -> Result<(Option<GradientsParams>, PolicyLossStats)> {
    let seqs = sequences(groups, prompts);
    let refs: Option<Vec<&Vec<f32>>> = ref_logps.map(|r| r.iter().flatten().collect());
    let counts = |r: &Rollout| !(config.mask_truncated_completions && r.truncated);
    let all = || {
        groups
            .iter()
            .flat_map(|g| &g.rollouts)
            .filter(|r| counts(r))
    };
    let tokens: usize = all().map(|r| r.len).sum();
    let sequences_counted = all().count();
    let mut stats = PolicyLossStats::default();
    if tokens == 0 {
        return Ok((None, stats));
    }
    if seqs.is_empty() {
        // No group of this worker: it sends zeros (see `Worker::sum_grads`).
        return Ok((Some(GradientsParams::new()), stats));
    }
    let scale = AggScale {
        tokens: tokens as f64,
        sequences: sequences_counted as f64,
        norm_constant: config.max_response_length as f64,
    };
    let plain: Vec<Sequence<'_>> = seqs.iter().map(|(s, _)| *s).collect();
    let mut acc = GradientsAccumulator::<Qwen2ForCausalLM<B>>::new();
    for mb in token_budget_batches(&plain, config.micro_batch_tokens) {
        let part: Vec<Sequence<'_>> = mb.iter().map(|&i| plain[i]).collect();
        let packed = Packed::<B>::new(&part, pad, device);
        let (logp, entropy) =
            packed.logprobs(policy, config.temperature, config.logits_chunk, true)?;
        let rollouts: Vec<&Rollout> = mb.iter().map(|&i| seqs[i].1).collect();
        let old: Vec<Vec<f32>> = rollouts.iter().map(|r| r.old_logp.clone()).collect();
        let adv: Vec<Vec<f32>> = rollouts
            .iter()
            .map(|r| vec![r.advantage as f32; r.response.len()])
            .collect();
        let keep: Vec<Vec<f32>> = rollouts
            .iter()
            .map(|r| vec![if counts(r) { 1.0 } else { 0.0 }; r.response.len()])
            .collect();
        let mask: Tensor<B, 2> = packed.response_grid(&keep, device);
        let ref_logp = refs.as_ref().map(|refs| {
            let rows: Vec<Vec<f32>> = mb.iter().map(|&i| refs[i].clone()).collect();
            packed.response_grid(&rows, device)
        });
        let inputs = PolicyLossInputs {
            logp,
            old_logp: packed.response_grid(&old, device),
            advantages: packed.response_grid(&adv, device),
            mask,
            ref_logp,
            entropy,
        };
        let (loss, s) = policy_loss(inputs, &config.loss, &scale);
        stats.add(&s);
        acc.accumulate(policy, GradientsParams::from_grads(loss.backward(), policy));
    }
    Ok((Some(acc.grads()), stats))
}
