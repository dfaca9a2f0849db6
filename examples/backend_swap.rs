//! The same SFT and RL steps on two devices, e.g. `flex` and `ndarray` (or `wgpu`), from the same
//! code: only the device changes. The final weights agree within f32 tolerance.
//!
//! ```text
//! cargo run --release --features ndarray --example backend_swap -- flex ndarray
//! cargo run --release --features wgpu --example backend_swap -- flex wgpu
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use longrl::config::{ModelSection, RunSection};
use longrl::device::AutodiffBackendFn;
use longrl::model::{load_model, TrainBackend};
use longrl::reward::{RewardItem, RewardOutput, RewardStats, Rewarder};
use longrl::rl::{self, RlConfig};
use longrl::sft::{self, SftConfig};
use longrl::train::OptimConfig;
use longrl::DeviceSpec;

/// A deterministic reward (share of even token ids), so both devices see the same signal.
struct EvenIds;

impl Rewarder for EvenIds {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        let out = items
            .iter()
            .map(|it| {
                let n = it.response_ids.len().max(1) as f64;
                let score = it.response_ids.iter().filter(|&&t| t % 2 == 0).count() as f64 / n;
                RewardOutput::from_score(score, score >= 0.5)
            })
            .collect();
        Ok((out, RewardStats::default()))
    }
}

struct Steps {
    root: PathBuf,
    out: PathBuf,
}

impl AutodiffBackendFn for Steps {
    type Output = anyhow::Result<PathBuf>;

    fn call<B: TrainBackend>(self, device: B::Device) -> Self::Output {
        let data = self.out.join("sft.jsonl");
        let lines: Vec<String> = (0..8)
            .map(|i| format!("{{\"prompt\": \"Say {i}\", \"response\": \"{i} {i} {i}\"}}"))
            .collect();
        std::fs::write(&data, lines.join("\n"))?;
        let model = ModelSection::new(self.root.join("models/tiny-qwen2-chatml"));
        let run = |name: &str| RunSection {
            run_dir: self.out.join(name),
            progress: false,
            ..RunSection::default()
        };
        let sft_cfg = SftConfig {
            train_file: data,
            max_steps: 3,
            batch_size: 4,
            shuffle: false,
            optim: OptimConfig {
                lr: 1e-3,
                ..OptimConfig::default()
            },
            ..SftConfig::default()
        };
        let s = sft::train::<B>(&model, &run("sft"), &sft_cfg, false, device.clone())?;
        let prompts = self.out.join("prompts.jsonl");
        std::fs::write(
            &prompts,
            "{\"task\": \"qa\", \"prompt\": \"Go.\", \"answer\": \"x\"}\n",
        )?;
        // Sampled rollouts (RL refuses temperature 0): both devices draw from the same seeded
        // streams, so only a rounding difference at a sampling boundary could split them.
        let rl_cfg = RlConfig {
            train_file: prompts,
            max_steps: 2,
            train_batch_size: 1,
            num_generations: 2,
            temperature: 1.0,
            max_response_length: 4,
            dynamic_sampling: false,
            ppo_mini_batch_size: 1,
            shuffle: false,
            optim: OptimConfig {
                lr: 1e-3,
                ..OptimConfig::default()
            },
            ..RlConfig::default()
        };
        let after_sft = ModelSection {
            path: s.final_dir,
            ..model
        };
        let r = rl::train::<B>(
            &after_sft,
            &run("rl"),
            &rl_cfg,
            Some(Arc::new(EvenIds)),
            false,
            device,
        )?;
        Ok(r.final_dir)
    }
}

fn max_abs_diff(a: &Path, b: &Path) -> anyhow::Result<f32> {
    let dev = Default::default();
    let ma = load_model::<burn::backend::Flex>(a, &dev)?;
    let mb = load_model::<burn::backend::Flex>(b, &dev)?;
    let ids: Vec<u32> = (1..40).collect();
    let la = ma.sequence_logprobs(&ids, 64, &dev)?;
    let lb = mb.sequence_logprobs(&ids, 64, &dev)?;
    Ok(la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max))
}

fn run(first: DeviceSpec, second: DeviceSpec) -> anyhow::Result<f32> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir()?;
    let mut finals = Vec::new();
    for (k, d) in [first, second].into_iter().enumerate() {
        let out = tmp.path().join(format!("run{k}"));
        std::fs::create_dir_all(&out)?;
        finals.push(d.run_autodiff(Steps {
            root: root.clone(),
            out,
        })??);
    }
    max_abs_diff(&finals[0], &finals[1])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let first: DeviceSpec = args.first().map_or(Ok(DeviceSpec::Flex), |s| s.parse())?;
    let second: DeviceSpec = args.get(1).map_or(Ok(DeviceSpec::Flex), |s| s.parse())?;
    let diff = run(first, second)?;
    println!("{first} vs {second}: largest log-prob difference of the trained models {diff:.2e}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use longrl::DeviceSpec;

    #[test]
    fn two_backends_agree() {
        let second = if cfg!(feature = "ndarray") {
            DeviceSpec::NdArray
        } else {
            DeviceSpec::Flex
        };
        let diff = super::run(DeviceSpec::Flex, second).unwrap();
        assert!(diff < 1e-3, "{diff}");
    }
}
