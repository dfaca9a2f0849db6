//! Attention kernel benchmark: the forward (with log-sum-exp) and the backward of
//! [`ModelBackend::causal_attention`] on one backend and random inputs, timed apart from the
//! rest of a training step.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release --example bench_attention -- --heads 4 --kv-heads 2 --head-dim 16 --seq 2048
//! cargo run --release --features cuda --example bench_attention -- --device cuda --heads 14 --kv-heads 2 --head-dim 64 --seq 16384
//! ```
//!
//! Prints one JSON line: seconds per forward and per backward, and the GFLOP/s of each, counting
//! the causal half of the products: `2·L²·d` per query head for the forward's two, `5/2` of that
//! for the backward's five.

use std::time::Instant;

use burn::tensor::{Bool, Distribution, Tensor, TensorData};
use clap::Parser;
use longrl::device::{BackendFn, DeviceSpec};
use longrl::model::ModelBackend;
use serde_json::json;

/// mimalloc, the `longrl` binary's allocator, so that fresh buffers cost about what they cost in
/// training.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmark options.
#[derive(Debug, Parser)]
struct Args {
    /// Device: flex, ndarray, wgpu, cuda[:N].
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (divides `--heads`).
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = 16)]
    head_dim: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 2048)]
    seq: usize,
    /// Sequences.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed repetitions (after one warm-up).
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

struct Bench(Args);

impl BackendFn for Bench {
    type Output = ();

    fn call<B: ModelBackend>(self, device: B::Device) {
        let a = self.0;
        let groups = a.heads / a.kv_heads;
        let normal = Distribution::Normal(0.0, 1.0);
        let q_shape = [a.batch, a.kv_heads, groups * a.seq, a.head_dim];
        let kv_shape = [a.batch, a.kv_heads, a.seq, a.head_dim];
        let q = Tensor::<B, 4>::random(q_shape, normal, &device);
        let k = Tensor::<B, 4>::random(kv_shape, normal, &device);
        let v = Tensor::<B, 4>::random(kv_shape, normal, &device);
        let d_out = Tensor::<B, 4>::random(q_shape, normal, &device);
        let valid = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(vec![true; a.batch * a.seq], [a.batch, a.seq]),
            &device,
        );
        let (mut forward, mut backward) = (0.0, 0.0);
        for rep in 0..=a.reps {
            let start = Instant::now();
            let (out, lse) =
                B::causal_attention_lse(q.clone(), k.clone(), v.clone(), valid.clone(), groups);
            B::sync(&device).expect("sync");
            let f = start.elapsed().as_secs_f64();
            let start = Instant::now();
            let grads = B::causal_attention_backward(
                q.clone(),
                k.clone(),
                v.clone(),
                valid.clone(),
                groups,
                out,
                d_out.clone(),
                lse,
            );
            B::sync(&device).expect("sync");
            drop(grads);
            if rep > 0 {
                forward += f;
                backward += start.elapsed().as_secs_f64();
            }
        }
        let (forward, backward) = (forward / a.reps as f64, backward / a.reps as f64);
        let flops = 2.0 * (a.seq * a.seq * a.head_dim * a.batch * a.heads) as f64;
        let device_name = a
            .device
            .map(|d| d.to_string())
            .unwrap_or_else(|| DeviceSpec::best_available().to_string());
        let line = json!({
            "bench": "attention", "device": device_name, "heads": a.heads,
            "kv_heads": a.kv_heads, "head_dim": a.head_dim, "seq": a.seq, "batch": a.batch,
            "forward_s": forward, "backward_s": backward,
            "forward_gflops": flops / forward / 1e9,
            "backward_gflops": 2.5 * flops / backward / 1e9,
        });
        println!("{line}");
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.kv_heads > 0 && a.heads % a.kv_heads == 0,
        "--heads ({}) must be a multiple of --kv-heads ({})",
        a.heads,
        a.kv_heads
    );
    for (name, value) in [
        ("--seq", a.seq),
        ("--head-dim", a.head_dim),
        ("--batch", a.batch),
        ("--reps", a.reps),
    ] {
        anyhow::ensure!(value > 0, "{name} must be at least 1, got {value}");
    }
    let device = a.device.unwrap_or_else(DeviceSpec::best_available);
    device.run(Bench(a))?;
    Ok(())
}
