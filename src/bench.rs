//! Sizing runs on one's own hardware (`longrl bench train` / `longrl bench generate`): tokens per
//! second of a full training step (forward, backward, gradient clipping, AdamW) or of rollout
//! decoding, and the peak
//! memory they reach, for a model folder or a bare `config.json` (random weights of that shape, so
//! a 1.5B or 32B shape can be measured without downloading it).

use crate::model::{ModelBackend, TrainBackend};
use std::path::Path;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;

use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::generate::{sample_seed, Engine, EngineOptions, GenerateRequest, SamplingParams};
use crate::model::{checkpoint, load_model, Qwen2Config, Qwen2ForCausalLM, DEFAULT_LOGITS_CHUNK};
use crate::train::optim::{clip_grad_norm, AdamWOptimizer, OptimConfig};

/// A model to measure: `path` is a model folder (its weights when it has some, else random ones)
/// or a `config.json` file (random weights). Returns the model and whether its weights are random.
pub fn bench_model<B: ModelBackend>(
    path: &Path,
    device: &B::Device,
) -> Result<(Qwen2ForCausalLM<B>, bool)> {
    let (dir, config_path) = if path.is_file() {
        (None, path.to_path_buf())
    } else {
        (Some(path), path.join("config.json"))
    };
    if !config_path.exists() {
        return Err(Error::Invalid(format!(
            "--model {}: expected a model folder with config.json, or a config.json file",
            path.display()
        )));
    }
    let config = Qwen2Config::from_file(&config_path)?;
    match dir {
        Some(dir) if checkpoint::weight_files(dir).is_ok() => Ok((load_model(dir, device)?, false)),
        _ => Ok((Qwen2ForCausalLM::init(&config, device), true)),
    }
}

/// The largest resident memory of this process since the last [`reset_peak_memory`], in bytes
/// (Linux: `VmHWM`); `None` elsewhere. Device memory of GPU backends is not counted.
pub fn peak_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Starts a new peak-memory window (Linux: writes 5 to `/proc/self/clear_refs`); returns whether
/// the system allowed it (if not, the peak covers the whole process lifetime).
pub fn reset_peak_memory() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// One measurement, printed as a JSON line by `longrl bench --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// `train` or `generate`.
    pub bench: String,
    /// The device measured on.
    pub device: String,
    /// The model folder or config file.
    pub model: String,
    /// Whether the weights were random (a bare config).
    pub random_weights: bool,
    /// Parameters of the model.
    pub parameters: usize,
    /// Sequences per batch (`generate`: prompts).
    pub batch: usize,
    /// Tokens per sequence (`generate`: prompt tokens).
    pub seq_len: usize,
    /// Timed steps (`generate`: timed generate calls).
    pub steps: usize,
    /// Tokens per second: trained tokens (`train`) or new tokens after the first (`generate`).
    pub tokens_per_s: f64,
    /// Mean seconds per step (`generate`: per call).
    pub seconds_per_step: f64,
    /// Peak resident memory of the measured steps, in bytes (CPU backends on Linux; `None` where
    /// it cannot be read, and GPU memory is not included).
    pub peak_memory_bytes: Option<u64>,
}

/// Token ids of a fixed pseudo-random stream (the same as `scripts/bench_transformers.py`'s).
pub fn bench_ids(batch: usize, seq: usize, vocab: usize) -> Vec<i64> {
    (0..batch * seq)
        .map(|i| ((i as u64 * 2_654_435_761 + 12_345) % vocab as u64) as i64)
        .collect()
}

/// Mean next-token NLL of `x` `[batch, seq]` under `model` (log-probs in chunks of the sequence).
pub fn mean_nll<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    x: Tensor<B, 2, Int>,
) -> Result<Tensor<B, 1>> {
    let [b, t] = x.dims();
    let device = x.device();
    let mask = Tensor::<B, 2, Int>::ones([b, t], &device).bool();
    let pos = Tensor::<B, 1, Int>::arange(0..t as i64, &device)
        .reshape([1, t])
        .expand([b, t]);
    let hidden = model.forward_hidden(x.clone(), mask, pos, None)?;
    let [_, _, h] = hidden.dims();
    let lp = model.token_logprobs(
        hidden.slice([0..b, 0..t - 1, 0..h]),
        x.slice([0..b, 1..t]),
        1.0,
        DEFAULT_LOGITS_CHUNK,
    );
    Ok(lp.mean().neg())
}

/// Parameters of a model.
pub fn parameters<B: ModelBackend>(model: &Qwen2ForCausalLM<B>) -> usize {
    use burn::module::Module;
    model.num_params()
}

/// Times `steps` training steps (forward, backward of the mean NLL, global-norm clipping and
/// AdamW update with the trainers' defaults, [`OptimConfig::default`]) of `batch`
/// sequences of `seq_len` tokens after one warm-up step; the peak memory covers the timed steps.
pub fn bench_train<B: TrainBackend>(
    model: Qwen2ForCausalLM<B>,
    batch: usize,
    seq_len: usize,
    steps: usize,
    device: &B::Device,
) -> Result<(f64, Option<u64>)> {
    let worker = Worker::single(crate::DeviceSpec::best_available());
    let (secs, _) = timed_steps(model, &worker, batch, seq_len, steps, device)?;
    Ok((secs, peak_memory_bytes()))
}

/// What one data-parallel training step costs in communication (`longrl bench allreduce`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AllReduceReport {
    /// `allreduce`.
    pub bench: String,
    /// This machine's devices.
    pub devices: String,
    /// Workers in the run (all machines).
    pub world: usize,
    /// Machines in the run.
    pub nodes: usize,
    /// The model folder or config file.
    pub model: String,
    /// Parameters of the model.
    pub parameters: usize,
    /// Gradient bytes each worker sends into the all-reduce per optimiser step (f32).
    pub bytes_per_step: u64,
    /// All-reduces per optimiser step (gradient buckets).
    pub allreduces_per_step: usize,
    /// Mean seconds of the gradient all-reduce per step.
    pub allreduce_s: f64,
    /// Mean seconds of a whole step per worker (forward, backward, all-reduce, AdamW).
    pub seconds_per_step: f64,
    /// Gradient bytes per second of all-reduce.
    pub bytes_per_s: f64,
    /// Trained tokens per second over all workers.
    pub tokens_per_s: f64,
    /// Sequences per worker per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Timed steps.
    pub steps: usize,
}

/// Times `steps` data-parallel training steps of `worker` (after one warm-up step): each worker
/// trains `batch` sequences of `seq_len` tokens, its gradients are summed over all workers
/// ([`Worker::sum_grads`]), clipped and applied by AdamW. Returns the mean seconds of the
/// all-reduce and of the whole step.
pub fn bench_allreduce<B: TrainBackend>(
    model: Qwen2ForCausalLM<B>,
    worker: &Worker,
    batch: usize,
    seq_len: usize,
    steps: usize,
    device: &B::Device,
) -> Result<(f64, f64)> {
    let (secs, reduce) = timed_steps(model, worker, batch, seq_len, steps, device)?;
    Ok((reduce, secs))
}

/// The training steps behind [`bench_train`] and [`bench_allreduce`]: one warm-up step, then
/// `steps` timed ones (the peak-memory mark is reset in between). Returns the mean seconds of a
/// step and of its gradient all-reduce (zero with a single worker).
fn timed_steps<B: TrainBackend>(
    mut model: Qwen2ForCausalLM<B>,
    worker: &Worker,
    batch: usize,
    seq_len: usize,
    steps: usize,
    device: &B::Device,
) -> Result<(f64, f64)> {
    if seq_len < 2 || batch == 0 || steps == 0 {
        return Err(Error::Invalid(
            "--seq-len must be at least 2, --batch and --steps at least 1".into(),
        ));
    }
    let vocab = model.config().vocab_size;
    let ids = bench_ids(batch, seq_len, vocab);
    let optim_config = OptimConfig::default();
    let mut optim = AdamWOptimizer::<B, Qwen2ForCausalLM<B>>::new(&optim_config);
    let sync = || B::sync(device).map_err(|e| Error::Invalid(format!("device sync failed: {e:?}")));
    let distributed = worker.world > 1;
    let mut step = |model: Qwen2ForCausalLM<B>| -> Result<(Qwen2ForCausalLM<B>, f64)> {
        let x =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [batch, seq_len]), device);
        let loss = mean_nll(&model, x)?;
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut reduce = 0.0;
        if distributed {
            sync()?;
            let t = Instant::now();
            grads = worker.sum_grads::<B, _>("bench: summing gradients", &model, grads, device)?;
            sync()?;
            reduce = t.elapsed().as_secs_f64();
        }
        clip_grad_norm::<B, _>(&model, &mut grads, optim_config.max_grad_norm);
        let model = optim.step(1e-6, model, grads);
        sync()?;
        Ok((model, reduce))
    };
    model = step(model)?.0;
    reset_peak_memory();
    let start = Instant::now();
    let mut reduce = 0.0;
    for _ in 0..steps {
        let (m, r) = step(model)?;
        model = m;
        reduce += r;
    }
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    drop(model);
    Ok((secs, reduce / steps as f64))
}

/// Times rollout decoding: `batch` prompts of `seq_len` tokens, `n` samples each sharing the
/// prompt's prefill, `new_tokens` new tokens per sample, sampled at `temperature` / `top_p`.
/// Returns the seconds of decoding (the generate call minus a one-token call, which is the
/// prefill) per call and the peak memory.
#[allow(clippy::too_many_arguments)]
pub fn bench_generate<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    batch: usize,
    seq_len: usize,
    n: usize,
    new_tokens: usize,
    temperature: f32,
    top_p: f32,
    reps: usize,
    device: &B::Device,
) -> Result<(f64, Option<u64>)> {
    if seq_len == 0 || batch == 0 || n == 0 || reps == 0 || new_tokens < 2 {
        return Err(Error::Invalid(
            "--seq-len, --batch, --n and --steps must be at least 1, --new-tokens at least 2"
                .into(),
        ));
    }
    let vocab = model.config().vocab_size;
    let requests: Vec<GenerateRequest> = bench_ids(batch, seq_len, vocab)
        .chunks(seq_len)
        .enumerate()
        .map(|(i, p)| GenerateRequest {
            prompt: p.iter().map(|&x| x as u32).collect(),
            seeds: (0..n as u64).map(|j| sample_seed(0, i as u64, j)).collect(),
        })
        .collect();
    let params = |max_new_tokens| SamplingParams {
        temperature,
        top_p,
        max_new_tokens,
        ..SamplingParams::default()
    };
    let engine = Engine::new(model, device.clone(), EngineOptions::default());
    let time = |new: usize| -> Result<f64> {
        engine.generate(&requests, &params(new))?;
        let start = Instant::now();
        for _ in 0..reps {
            engine.generate(&requests, &params(new))?;
        }
        Ok(start.elapsed().as_secs_f64() / reps as f64)
    };
    let prefill = time(1)?;
    reset_peak_memory();
    let total = time(new_tokens)?;
    Ok(((total - prefill).max(1e-9), peak_memory_bytes()))
}

/// The report of a measurement of a model with `parameters` parameters.
#[allow(clippy::too_many_arguments)]
pub fn report(
    bench: &str,
    device: String,
    model_path: &Path,
    parameters: usize,
    random_weights: bool,
    batch: usize,
    seq_len: usize,
    steps: usize,
    tokens: usize,
    seconds: f64,
    peak: Option<u64>,
) -> BenchReport {
    BenchReport {
        bench: bench.into(),
        device,
        model: model_path.display().to_string(),
        random_weights,
        parameters,
        batch,
        seq_len,
        steps,
        tokens_per_s: tokens as f64 / seconds,
        seconds_per_step: seconds,
        peak_memory_bytes: peak,
    }
}
