//! Shared helpers for the integration tests: fixture paths and safetensors fixture reading.

#![allow(dead_code)]

pub mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/...`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// `models/...`.
pub fn model_dir(name: &str) -> PathBuf {
    root().join("models").join(name)
}

/// A quiet run directory section for tests: `dir`, `seed`, a checkpoint every `save_steps` steps
/// (0: none), every checkpoint kept.
pub fn run_section(dir: &Path, seed: u64, save_steps: usize) -> longrl::config::RunSection {
    longrl::config::RunSection {
        run_dir: dir.to_path_buf(),
        seed,
        save_steps,
        save_total_limit: 0,
        progress: false,
        ..Default::default()
    }
}

/// A tensor read from a fixture file, as f64 values with its shape.
#[derive(Debug, Clone)]
pub struct Arr {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Arr {
    pub fn i64s(&self) -> Vec<i64> {
        self.data.iter().map(|&x| x as i64).collect()
    }

    pub fn row(&self, r: usize) -> &[f64] {
        let w: usize = self.shape[1..].iter().product();
        &self.data[r * w..(r + 1) * w]
    }
}

/// Reads every tensor of a safetensors file (F32, F64, I64, I32, BOOL).
pub fn read_safetensors(path: &Path) -> HashMap<String, Arr> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let raw = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => raw
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => raw
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I32 => raw
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::BOOL => raw.iter().map(|&b| b as f64).collect(),
                other => panic!("{name}: unsupported fixture dtype {other:?}"),
            };
            (
                name,
                Arr {
                    shape: view.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

/// Copies a directory (one level) into a fresh temporary directory and returns it.
pub fn copy_dir(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dst.path().join(entry.file_name())).unwrap();
        }
    }
    dst
}

/// Reward: the fraction of response tokens with an id below 128 (about 1/8 for a random model);
/// accurate when at least half are.
pub struct LowIds;

impl longrl::reward::Rewarder for LowIds {
    fn reward(
        &self,
        items: &[longrl::reward::RewardItem<'_>],
    ) -> longrl::Result<(
        Vec<longrl::reward::RewardOutput>,
        longrl::reward::RewardStats,
    )> {
        let out = items
            .iter()
            .map(|it| {
                let n = it.response_ids.len().max(1) as f64;
                let score = it.response_ids.iter().filter(|&&t| t < 128).count() as f64 / n;
                longrl::reward::RewardOutput::from_score(score, score >= 0.5)
            })
            .collect();
        Ok((out, longrl::reward::RewardStats::default()))
    }
}
