//! Warm-up SFT: the chat template over each example, the loss on response tokens only (token mean
//! over the optimiser step), micro-batches by a token budget with gradient accumulation, AdamW with
//! warm-up and a constant/cosine/linear schedule, global-norm clipping, a held-out loss,
//! checkpoints every N steps and exact resume.

use crate::model::{ModelBackend, TrainBackend};
use crate::shapes::Shapes;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::Backend;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{ModelSection, RunSection};
use crate::data::{load_sft_with, EpochSampler, LoadOptions, SamplerState, SftRecord};
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::generate::stop_token_ids;
use crate::model::Qwen2ForCausalLM;
use crate::tokenizer::Tokenizer;
use crate::train::{
    clip_grad_norm, stable_param_ids, token_budget_batches, AdamWOptimizer, OptimConfig, Packed,
    RunDir, Sequence, SkipCounts, SkipGuard,
};

/// `[sft]`: the warm-up SFT settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SftConfig {
    /// Training data (JSONL: `{"prompt", "response"}` or `{"messages"}`).
    pub train_file: PathBuf,
    /// Held-out data in the same format (optional).
    pub valid_file: Option<PathBuf>,
    /// Optimiser steps; 0 derives them from `num_epochs`.
    pub max_steps: usize,
    /// Passes over the data when `max_steps` is 0.
    pub num_epochs: f64,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// Padded tokens per micro-batch (dynamic batch size: many short or few long examples).
    pub micro_batch_tokens: usize,
    /// Longest example (prompt + response tokens); longer ones are skipped and counted.
    pub max_length: usize,
    /// Held-out loss every this many steps (0: only at the end).
    pub eval_steps: usize,
    /// Positions projected to the vocabulary at once.
    pub logits_chunk: usize,
    /// Recompute each decoder layer in the backward pass instead of keeping its activations
    /// (HF's gradient checkpointing: about one extra forward, a layer's input kept per layer).
    pub gradient_checkpointing: bool,
    /// Mixed precision (TRL's `bf16`): forward and backward in bf16 from f32 master weights;
    /// the optimiser state stays f32. For GPUs; CPU backends emulate bf16 (slower than f32).
    pub bf16: bool,
    /// Shape buckets for JIT backends (`[sft.shapes]`, see [`crate::shapes`]).
    pub shapes: crate::shapes::ShapeConfig,
    /// Shuffle the data every epoch.
    pub shuffle: bool,
    /// Unknown fields in the data files are errors naming the file, line and field (`--strict`);
    /// by default they are ignored with one warning per file.
    pub strict: bool,
    /// AdamW and schedule.
    pub optim: OptimConfig,
}

impl Default for SftConfig {
    fn default() -> Self {
        Self {
            train_file: PathBuf::new(),
            valid_file: None,
            max_steps: 0,
            num_epochs: 1.0,
            batch_size: 8,
            micro_batch_tokens: 16384,
            max_length: 32768,
            eval_steps: 0,
            logits_chunk: 1024,
            gradient_checkpointing: false,
            bf16: false,
            shapes: crate::shapes::ShapeConfig::default(),
            shuffle: true,
            strict: false,
            optim: OptimConfig {
                lr: 1e-5,
                warmup_ratio: 0.03,
                lr_scheduler: crate::train::LrSchedule::Cosine,
                ..OptimConfig::default()
            },
        }
    }
}

impl SftConfig {
    /// Checks the settings, naming the bad field.
    pub fn validate(&self) -> Result<()> {
        self.shapes.validate("sft.shapes")?;
        if self.train_file.as_os_str().is_empty() {
            return Err(Error::Invalid("sft.train_file is required".into()));
        }
        if self.batch_size == 0 || self.micro_batch_tokens == 0 || self.max_length == 0 {
            return Err(Error::Invalid(
                "sft.batch_size, sft.micro_batch_tokens and sft.max_length must be at least 1"
                    .into(),
            ));
        }
        if self.max_steps == 0 && (self.num_epochs.is_nan() || self.num_epochs <= 0.0) {
            return Err(Error::Invalid(
                "sft: set max_steps, or num_epochs > 0".into(),
            ));
        }
        self.optim.validate("sft.optim")
    }
}

/// The file `longrl sft --config` reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftFile {
    /// `[model]`.
    pub model: ModelSection,
    /// `[run]`.
    #[serde(default)]
    pub run: RunSection,
    /// `[sft]`.
    pub sft: SftConfig,
    /// `[distributed]`: data parallelism (devices, machines).
    #[serde(default)]
    pub distributed: crate::distributed::DistributedSection,
    /// `[lora]`: train PEFT LoRA adapters on a frozen base (absent: every weight trains).
    #[serde(default)]
    pub lora: Option<crate::model::LoraConfig>,
}

/// A tokenised example.
#[derive(Debug, Clone)]
pub struct Tokenized {
    /// Prompt ids (chat template with the generation prompt).
    pub prompt: Vec<u32>,
    /// Response ids, ending with the end-of-turn token.
    pub response: Vec<u32>,
}

/// Tokenises SFT records with the model's chat template; examples longer than `max_length` are
/// dropped (their count is returned).
pub fn tokenize(
    records: &[SftRecord],
    tokenizer: &Tokenizer,
    end_of_turn: u32,
    max_length: usize,
) -> Result<(Vec<Tokenized>, usize)> {
    let mut out = Vec::with_capacity(records.len());
    let mut skipped = 0;
    for r in records {
        let prompt_text = tokenizer.apply_chat_template(&r.prompt, true)?;
        let prompt = tokenizer.encode(&prompt_text, false)?;
        // A generation prompt that opens the thinking block (R1-distill, QwQ) already holds the
        // response's leading `<think>\n`.
        let text = match r.response.strip_prefix("<think>\n") {
            Some(rest) if prompt_text.ends_with("<think>\n") => rest,
            _ => r.response.as_str(),
        };
        let mut response = tokenizer.encode(text, false)?;
        response.push(end_of_turn);
        if prompt.len() + response.len() > max_length {
            skipped += 1;
            continue;
        }
        out.push(Tokenized { prompt, response });
    }
    Ok((out, skipped))
}

/// The token that ends an assistant turn: the tokenizer's EOS, else the model's first EOS id.
pub fn end_of_turn_id(
    dir: &Path,
    model: &Qwen2ForCausalLM<impl Backend>,
    tok: &Tokenizer,
) -> Result<u32> {
    tok.eos_token_id
        .or_else(|| {
            stop_token_ids(dir, model.config(), None)
                .ok()?
                .first()
                .copied()
        })
        .ok_or_else(|| {
            Error::tokenizer(
                tok.path(),
                "no end-of-sequence token: set eos_token in tokenizer_config.json",
            )
        })
}

/// Mean `-log p` over the response tokens of a set of examples (no gradient).
pub fn eval_loss<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    data: &[Tokenized],
    pad: u32,
    budget: usize,
    chunk: usize,
    device: &B::Device,
) -> Result<f64> {
    let shapes = Shapes::auto::<B>();
    let (sum, count) = eval_sums(model, data.iter(), pad, (budget, chunk), &shapes, device)?;
    Ok(sum / count.max(1.0))
}

/// Sum of `-log p` over the response tokens of `data` and their count (no gradient).
fn eval_sums<'a, B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    data: impl Iterator<Item = &'a Tokenized>,
    pad: u32,
    (budget, chunk): (usize, usize),
    shapes: &Shapes,
    device: &B::Device,
) -> Result<(f64, f64)> {
    let seqs: Vec<Sequence<'_>> = data
        .map(|t| Sequence {
            prompt: &t.prompt,
            response: &t.response,
        })
        .collect();
    let (mut sum, mut count) = (0.0, 0.0);
    for mb in token_budget_batches(&seqs, budget) {
        let part: Vec<Sequence<'_>> = mb.iter().map(|&i| seqs[i]).collect();
        let packed = Packed::<B>::with_shapes(&part, pad, shapes, device);
        let (logp, _) = packed.logprobs(model, 1.0, chunk, false)?;
        sum -= (logp * packed.mask.clone())
            .sum()
            .into_data()
            .iter::<f64>()
            .next()
            .unwrap_or(0.0);
        count += packed.response_lens.iter().sum::<usize>() as f64;
    }
    Ok((sum, count))
}

/// What a checkpoint of an SFT run remembers besides the weights and the optimiser.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftState {
    /// Optimiser steps done.
    pub step: usize,
    /// Total steps of the run.
    pub total_steps: usize,
    /// The data sampler's position.
    pub sampler: SamplerState,
    /// Skipped-update counts, so a resumed run goes on counting (absent in older checkpoints).
    #[serde(default)]
    pub skips: SkipCounts,
}

/// The outcome of an SFT run.
#[derive(Debug, Clone, Serialize)]
pub struct SftSummary {
    /// Steps done in total.
    pub steps: usize,
    /// Held-out loss before training (when a valid file is given and the run starts fresh).
    pub initial_valid_loss: Option<f64>,
    /// Held-out loss at the end.
    pub final_valid_loss: Option<f64>,
    /// Training loss of the last step.
    pub last_train_loss: f64,
    /// Examples skipped for exceeding `max_length`.
    pub skipped: usize,
    /// The final model folder.
    pub final_dir: PathBuf,
}

/// Runs SFT on backend `B` (an autodiff backend) from the `[model]`, `[run]` and `[sft]` sections.
///
/// With `resume`, training continues from the run directory's latest checkpoint (a fresh start when
/// there is none); without it, a run directory that already holds checkpoints is an error, so a
/// finished run is never overwritten by accident.
pub fn train<B: TrainBackend>(
    model_section: &ModelSection,
    run: &RunSection,
    config: &SftConfig,
    resume: bool,
    device: B::Device,
) -> Result<SftSummary> {
    let worker = Worker::single(crate::DeviceSpec::best_available());
    train_with::<B>(model_section, run, config, resume, device, &worker)
}

/// [`train`] as one worker of a data-parallel run (see [`crate::distributed`]): each step's
/// examples are dealt round-robin to the workers, whose gradients (each scaled by the step's
/// global token count) are summed before clipping and the update, so every replica takes the
/// step one device would take over the same batch. Rank 0 writes the run directory.
pub fn train_with<B: TrainBackend>(
    model_section: &ModelSection,
    run: &RunSection,
    config: &SftConfig,
    resume: bool,
    device: B::Device,
    worker: &Worker,
) -> Result<SftSummary> {
    config.validate()?;
    model_section.check_dropout(config.gradient_checkpointing, "sft")?;
    let leader = worker.is_leader();
    let run_dir = RunDir::open(&run.run_dir)?;
    let resume_from = run_dir.resume_point(resume)?;
    crate::train::check_bf16::<B>("sft", config.bf16, &device)?;
    let tokenizer = model_section.load_tokenizer()?;
    let (model, state): (_, Option<SftState>) =
        RunDir::starting_point::<B, _>(resume_from.as_deref(), model_section, run.seed, &device)?;
    let mut model = stable_param_ids(model)
        .with_gradient_checkpointing(config.gradient_checkpointing)
        .with_compute_dtype(config.bf16.then_some(FloatDType::BF16));
    tokenizer.check_fits(model.config().vocab_size)?;
    let eot = end_of_turn_id(&model_section.path, &model, &tokenizer)?;
    let pad = tokenizer.pad_token_id.unwrap_or(eot);

    let (train_set, valid_set, skipped) = load_sets(config, &tokenizer, eot)?;
    let total_steps = if config.max_steps > 0 {
        config.max_steps
    } else {
        ((config.num_epochs * train_set.len() as f64) / config.batch_size as f64).ceil() as usize
    };
    let (start, sampler_state) = match &state {
        Some(s) => (s.step, s.sampler),
        None => (0, SamplerState::default()),
    };
    let mut sampler = EpochSampler::new(train_set.len(), run.seed, config.shuffle, sampler_state);
    let mut optim = AdamWOptimizer::<B, Qwen2ForCausalLM<B>>::new(&config.optim);
    if let Some(ckpt) = &resume_from {
        run_dir.load_optimizer(ckpt, |p| optim.load(p, &device))?;
    }
    if leader {
        run_dir.truncate_metrics(resume_from.as_ref().map(|_| start))?;
    }
    if leader {
        crate::train::record::record_config(run, resume_from.is_some())?;
    }
    let valid = |m: &Qwen2ForCausalLM<B>| {
        held_out_loss(m, valid_set.as_deref(), worker, pad, config, &device)
    };
    let initial_valid_loss = if state.is_none() {
        valid(&model)?
    } else {
        None
    };
    if let (Some(l), true) = (initial_valid_loss, leader) {
        run_dir.log_metrics(&json!({"step": 0, "eval/loss": l}))?;
    }
    let bar = crate::metrics::progress_bar(
        total_steps as u64,
        start as u64,
        run.progress && leader,
        "sft",
    );
    let mut last_loss = f64::NAN;
    let counts = state.as_ref().map_or_else(SkipCounts::default, |s| s.skips);
    let mut skips = SkipGuard::new("sft", config.optim.max_skipped_updates, counts);
    for step in start..total_steps {
        let t0 = Instant::now();
        let idx = sampler.take(config.batch_size);
        let (updated, n) = optimizer_step(
            model,
            &mut optim,
            &train_set,
            &idx,
            pad,
            config,
            worker,
            (step, total_steps),
            &device,
        )?;
        model = updated;
        last_loss = n.loss;
        let done = step + 1;
        let mut record = json!({
            "step": done,
            "epoch": sampler.epochs_done(),
            "train/loss": n.loss,
            "train/grad_norm": n.grad_norm,
            "train/lr": n.lr,
            "train/tokens": n.tokens,
            "train/skipped_update": n.skipped,
            "timing/step_s": t0.elapsed().as_secs_f64(),
        });
        let last = done == total_steps;
        if config.eval_steps > 0 && done % config.eval_steps == 0 && !last {
            if let Some(l) = valid(&model)? {
                record["eval/loss"] = json!(l);
            }
        }
        if leader {
            run_dir.log_metrics(&record)?;
        }
        // Before the checkpoint: a run that learns nothing stops with its last good one.
        skips.record(done, usize::from(!n.skipped), usize::from(n.skipped))?;
        if last {
            skips.finish()?;
        }
        bar.set_message(format!("loss {:.4}", n.loss));
        bar.inc(1);
        if leader && ((run.save_steps > 0 && done % run.save_steps == 0) || last) {
            let state = SftState {
                step: done,
                total_steps,
                sampler: sampler.state(),
                skips: skips.counts(),
            };
            run_dir.save_checkpoint(
                done,
                &model,
                model_section,
                |p| optim.save(p),
                &state,
                (run.save_total_limit > 0).then_some(run.save_total_limit),
            )?;
        }
    }
    bar.finish_and_clear();
    let final_valid_loss = valid(&model)?;
    let final_dir = if leader {
        if let Some(l) = final_valid_loss {
            run_dir.log_metrics(&json!({"step": total_steps, "eval/loss": l, "final": true}))?;
        }
        run_dir.save_final(&model, model_section)?
    } else {
        run_dir.final_dir()
    };
    // The final model is read by whatever comes next (a pipeline's next phase).
    worker.barrier::<B::InnerBackend>("waiting for the final model", &device)?;
    Ok(SftSummary {
        steps: total_steps,
        initial_valid_loss,
        final_valid_loss,
        last_train_loss: last_loss,
        skipped,
        final_dir,
    })
}

/// What one optimiser step did, for its metrics record.
struct StepNumbers {
    /// Summed token NLL of the step's batch, over all workers.
    loss: f64,
    /// Global gradient norm before clipping.
    grad_norm: f64,
    /// Learning rate of the step.
    lr: f64,
    /// Response tokens of the step's batch, over all workers.
    tokens: usize,
    /// Whether the update was skipped (non-finite loss or norm).
    skipped: bool,
}

/// Step `step` of `total`: this worker's share of the examples `idx`, the gradients summed over
/// the workers and clipped, and the update, skipped when the loss or the norm is not finite (so
/// a failed step never reaches the weights nor the optimiser state).
#[allow(clippy::too_many_arguments)]
fn optimizer_step<B: TrainBackend>(
    model: Qwen2ForCausalLM<B>,
    optim: &mut AdamWOptimizer<B, Qwen2ForCausalLM<B>>,
    train_set: &[Tokenized],
    idx: &[usize],
    pad: u32,
    config: &SftConfig,
    worker: &Worker,
    (step, total): (usize, usize),
    device: &B::Device,
) -> Result<(Qwen2ForCausalLM<B>, StepNumbers)> {
    let seqs: Vec<Sequence<'_>> = idx
        .iter()
        .map(|&i| Sequence {
            prompt: &train_set[i].prompt,
            response: &train_set[i].response,
        })
        .collect();
    // The loss is a mean over the step's tokens on all workers.
    let tokens: usize = seqs.iter().map(|s| s.response.len()).sum();
    let mine: Vec<Sequence<'_>> = seqs
        .iter()
        .enumerate()
        .filter(|(i, _)| worker.owns(*i))
        .map(|(_, s)| *s)
        .collect();
    let (mut grads, loss) =
        step_gradients(&model, &mine, tokens, pad, config, worker, step, device)?;
    let grad_norm = clip_grad_norm::<B, _>(&model, &mut grads, config.optim.max_grad_norm);
    let lr = config.optim.lr_at(step, total);
    let skipped = !grad_norm.is_finite() || !loss.is_finite();
    let model = if skipped {
        log::warn!(
            "step {}: non-finite loss ({loss}) or gradient norm ({grad_norm}): update skipped",
            step + 1
        );
        model
    } else {
        optim.step(lr, model, grads)
    };
    Ok((
        model,
        StepNumbers {
            loss,
            grad_norm,
            lr,
            tokens,
            skipped,
        },
    ))
}

/// The tokenised training set, the held-out set (when `valid_file` is given) and the number of
/// training examples skipped for exceeding `max_length`; an error when every one is.
fn load_sets(
    config: &SftConfig,
    tokenizer: &Tokenizer,
    eot: u32,
) -> Result<(Vec<Tokenized>, Option<Vec<Tokenized>>, usize)> {
    let options = LoadOptions {
        strict: config.strict,
    };
    let records = load_sft_with(&config.train_file, options)?;
    let (train_set, skipped) = tokenize(&records, tokenizer, eot, config.max_length)?;
    if skipped > 0 {
        log::warn!(
            "{skipped} of {} training examples exceed sft.max_length = {} tokens and are skipped",
            records.len(),
            config.max_length
        );
    }
    if train_set.is_empty() {
        return Err(Error::input(
            &config.train_file,
            0,
            format!(
                "every example exceeds sft.max_length = {}",
                config.max_length
            ),
        ));
    }
    let valid_set = match &config.valid_file {
        Some(p) => Some(
            tokenize(
                &load_sft_with(p, options)?,
                tokenizer,
                eot,
                config.max_length,
            )?
            .0,
        ),
        None => None,
    };
    Ok((train_set, valid_set, skipped))
}

/// The held-out loss of `set` (each worker scores its share of the examples); `None` without a
/// held-out set.
fn held_out_loss<B: TrainBackend>(
    model: &Qwen2ForCausalLM<B>,
    set: Option<&[Tokenized]>,
    worker: &Worker,
    pad: u32,
    config: &SftConfig,
    device: &B::Device,
) -> Result<Option<f64>> {
    match set {
        Some(v) if !v.is_empty() => {
            let mine = v.iter().enumerate().filter(|(i, _)| worker.owns(*i));
            let (sum, count) = eval_sums(
                &model.valid(),
                mine.map(|(_, t)| t),
                pad,
                (config.micro_batch_tokens, config.logits_chunk),
                &config.shapes.resolve::<B>(),
                device,
            )?;
            let total = worker.sum_f64::<B::InnerBackend>(
                "summing the held-out loss",
                vec![sum, count],
                device,
            )?;
            Ok(Some(total[0] / total[1].max(1.0)))
        }
        _ => Ok(None),
    }
}

/// Step `step`'s gradients of this worker's sequences `mine`, micro-batch by micro-batch under
/// the token budget, summed over the workers, and the loss: the summed `-log p` over `tokens`,
/// the step's response tokens on all workers (so the workers' sums make the token mean).
#[allow(clippy::too_many_arguments)]
fn step_gradients<B: TrainBackend>(
    model: &Qwen2ForCausalLM<B>,
    mine: &[Sequence<'_>],
    tokens: usize,
    pad: u32,
    config: &SftConfig,
    worker: &Worker,
    step: usize,
    device: &B::Device,
) -> Result<(GradientsParams, f64)> {
    let mut acc = GradientsAccumulator::<Qwen2ForCausalLM<B>>::new();
    let mut loss_sum = 0.0;
    let shapes = config.shapes.resolve::<B>();
    for mb in token_budget_batches(mine, config.micro_batch_tokens) {
        let part: Vec<Sequence<'_>> = mb.iter().map(|&i| mine[i]).collect();
        let packed = Packed::<B>::with_shapes(&part, pad, &shapes, device);
        let (logp, _) = packed.logprobs(model, 1.0, config.logits_chunk, false)?;
        let loss = (logp * packed.mask.clone())
            .sum()
            .neg()
            .div_scalar(tokens as f64);
        loss_sum += loss.clone().into_data().iter::<f64>().next().unwrap_or(0.0);
        acc.accumulate(model, GradientsParams::from_grads(loss.backward(), model));
    }
    // A worker with no example this step sends zeros (see `Worker::sum_grads`).
    let mut grads = acc.grads();
    if worker.world > 1 {
        let what = format!("step {}: summing gradients", step + 1);
        grads = worker.sum_grads::<B, _>(&what, model, grads, device)?;
        let what = format!("step {}: summing the loss", step + 1);
        loss_sum = worker.sum_f64::<B::InnerBackend>(&what, vec![loss_sum], device)?[0];
    }
    Ok((grads, loss_sum))
}
