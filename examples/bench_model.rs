//! Model throughput benchmark: token log-probs (inference forward), a training step (forward +
//! backward of the mean token NLL) and batched greedy decoding with the KV cache, on any device.
//!
//! `scripts/bench_transformers.py` measures the same three things with HF transformers on the same
//! shapes and weights; run both side by side and record the figures in BENCHMARKS.md:
//!
//! ```sh
//! cargo run --release --example bench_model -- --model models/Qwen2.5-0.5B-Instruct --batch 2 --seq 256
//! ```
//!
//! A folder with only a `config.json` gets random weights (normal(0, 0.02), as HF initialises).
//! Prints one JSON line per measurement.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Parser;
use longrl::bench::{bench_ids, mean_nll};
use longrl::device::{AutodiffBackendFn, DeviceSpec};
use longrl::generate::{sample_seed, Engine, EngineOptions, GenerateRequest, SamplingParams};
use longrl::model::{checkpoint, load_model, Qwen2Config, Qwen2ForCausalLM, TrainBackend};
use serde_json::json;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Model folder (config.json; weights optional).
    #[arg(long)]
    model: PathBuf,
    /// Device: flex, ndarray, wgpu, cuda[:N].
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Sequences per batch.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Tokens per sequence for the forward and training measurements (and the decode prompt).
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// New tokens per sequence for the decode measurement.
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Samples per prompt in the decode measurement (G of a GRPO group).
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Sampling temperature of the decode measurement (0 is greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Nucleus mass of the decode measurement.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Which measurements: any of forward, train, decode (comma-separated).
    #[arg(long, default_value = "forward,train,decode")]
    only: String,
}

struct Bench(Args);

/// The benchmark's fixed pseudo-random token stream as a `[batch, seq]` tensor.
fn ids<B: Backend>(
    batch: usize,
    seq: usize,
    vocab: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(bench_ids(batch, seq, vocab), [batch, seq]),
        device,
    )
}

fn time<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

impl AutodiffBackendFn for Bench {
    type Output = ();

    fn call<B: TrainBackend>(self, device: B::Device) {
        let a = self.0;
        let config = Qwen2Config::from_file(a.model.join("config.json")).expect("config.json");
        let model: Qwen2ForCausalLM<B> = if checkpoint::weight_files(&a.model).is_ok() {
            load_model(&a.model, &device).expect("load weights")
        } else {
            Qwen2ForCausalLM::init(&config, &device)
        };
        let device_name = a
            .device
            .map(|d| d.to_string())
            .unwrap_or_else(|| DeviceSpec::best_available().to_string());
        let (b, t, vocab) = (a.batch, a.seq, config.vocab_size);
        let report = |what: &str, secs: f64, tokens: usize| {
            let line = json!({
                "impl": "longrl", "bench": what, "device": device_name, "model": a.model.display().to_string(),
                "batch": b, "n": a.n, "seq": t, "new_tokens": a.new_tokens, "seconds": secs,
                "tokens_per_s": tokens as f64 / secs,
            });
            println!("{line}");
        };
        let inner = model.valid();
        if a.only.contains("forward") {
            let secs = time(a.reps, || {
                let nll = mean_nll(&inner, ids::<B::InnerBackend>(b, t, vocab, &device))
                    .expect("forward");
                nll.into_scalar();
            });
            report("forward_logprobs", secs, b * t);
        }
        if a.only.contains("train") {
            let secs = time(a.reps, || {
                let loss = mean_nll(&model, ids::<B>(b, t, vocab, &device)).expect("forward");
                let grads = loss.backward();
                drop(grads);
                B::sync(&device).expect("sync");
            });
            report("train_step_fwd_bwd", secs, b * t);
        }
        if a.only.contains("decode") {
            assert!(
                a.new_tokens >= 2,
                "--new-tokens must be at least 2 (decode excludes the first token)"
            );
            // `batch` prompts, `n` samples each sharing the prompt's prefill, as RL rollouts run.
            let requests: Vec<GenerateRequest> = ids::<B::InnerBackend>(b, t, vocab, &device)
                .into_data()
                .iter::<i64>()
                .map(|x| x as u32)
                .collect::<Vec<_>>()
                .chunks(t)
                .enumerate()
                .map(|(i, p)| GenerateRequest {
                    prompt: p.to_vec(),
                    seeds: (0..a.n as u64)
                        .map(|j| sample_seed(0, i as u64, j))
                        .collect(),
                })
                .collect();
            let params = |new| SamplingParams {
                temperature: a.temperature,
                top_p: a.top_p,
                max_new_tokens: new,
                ..SamplingParams::default()
            };
            let engine = Engine::new(&inner, device.clone(), EngineOptions::default());
            let prefill = time(a.reps, || {
                engine.generate(&requests, &params(1)).expect("prefill");
            });
            let total = time(a.reps, || {
                engine
                    .generate(&requests, &params(a.new_tokens))
                    .expect("decode");
            });
            report("prefill", prefill, b * t);
            // Decode throughput excludes the prefill: new tokens after the first / their time.
            report(
                "decode",
                (total - prefill).max(1e-9),
                b * a.n * (a.new_tokens - 1),
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = args.device.unwrap_or_else(DeviceSpec::best_available);
    device.run_autodiff(Bench(args))?;
    Ok(())
}
