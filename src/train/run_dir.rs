//! A training run's directory: checkpoints written atomically (a temporary folder renamed into
//! place, then the `latest` pointer replaced), the metrics log, and the final model.
//!
//! ```text
//! RUN_DIR/
//!   config.toml                   the resolved configuration of the run
//!   metrics.jsonl                 one JSON object per step
//!   checkpoints/step-00000010/    model.safetensors (f32) + config.json + tokenizer files,
//!                                 optimizer.bin, trainer_state.json
//!   checkpoints/latest            the name of the newest complete checkpoint
//!   final/                        the trained policy in HuggingFace layout
//! ```
//! A write interrupted at any point leaves the previous checkpoint and `latest` intact; stale
//! temporary folders are removed when the run directory is opened again.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ModelSection;
use crate::error::{Error, Result};
use crate::io::{write_atomic, JsonlReader};
use crate::model::{save_adapter, save_model, Qwen2ForCausalLM, SaveDtype};
use burn::tensor::backend::Backend;

/// Name of the trainer's JSON state inside a checkpoint.
pub const STATE_FILE: &str = "trainer_state.json";
/// Name of the optimiser state inside a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bin";
const SHARD_BYTES: usize = 5 << 30;

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Opens (creating) `root` and removes temporary folders left by an interrupted write.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let ckpts = root.join("checkpoints");
        std::fs::create_dir_all(&ckpts).map_err(|e| Error::io(&ckpts, e))?;
        for entry in std::fs::read_dir(&ckpts).map_err(|e| Error::io(&ckpts, e))? {
            let path = entry.map_err(|e| Error::io(&ckpts, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().to_string());
            if name.is_some_and(|n| n.starts_with(".tmp-")) {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(Self { root })
    }

    /// The run directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `RUN_DIR/metrics.jsonl`.
    pub fn metrics_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// `RUN_DIR/final`.
    pub fn final_dir(&self) -> PathBuf {
        self.root.join("final")
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The newest complete checkpoint, if any: the one `latest` names, else the highest step
    /// folder holding a trainer state.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        let pointer = self.checkpoints().join("latest");
        if pointer.exists() {
            let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
            let dir = self.checkpoints().join(name.trim());
            if dir.join(STATE_FILE).exists() {
                return Ok(Some(dir));
            }
            log::warn!(
                "{} names {}, which is incomplete",
                pointer.display(),
                dir.display()
            );
        }
        Ok(self.complete_checkpoints()?.pop())
    }

    /// The checkpoint a run continues from: the latest one with `resume`; with `resume` off, an
    /// existing checkpoint is an error (a finished run is never overwritten by accident).
    pub fn resume_point(&self, resume: bool) -> Result<Option<PathBuf>> {
        let latest = self.latest()?;
        if let (Some(c), false) = (&latest, resume) {
            return Err(Error::Invalid(format!(
                "run directory {} already has checkpoint {}: pass --resume to continue it, or \
                 choose another --run-dir",
                self.root.display(),
                c.display()
            )));
        }
        Ok(latest)
    }

    fn complete_checkpoints(&self) -> Result<Vec<PathBuf>> {
        let dir = self.checkpoints();
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                    && p.join(STATE_FILE).exists()
            })
            .collect();
        found.sort();
        Ok(found)
    }

    /// Writes a checkpoint for `step`: the model (f32, HF layout, tokenizer files copied from
    /// the model folder; with `[lora]`, only the adapters, as a PEFT folder), the optimiser state
    /// written by `save_optimizer` into the given path, and the trainer `state`. Keeps the
    /// newest `keep` checkpoints (all when `None`).
    pub fn save_checkpoint<B: Backend, S: Serialize>(
        &self,
        step: usize,
        model: &Qwen2ForCausalLM<B>,
        section: &ModelSection,
        save_optimizer: impl FnOnce(&Path) -> Result<()>,
        state: &S,
        keep: Option<usize>,
    ) -> Result<PathBuf> {
        let name = format!("step-{step:08}");
        let tmp = self.checkpoints().join(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        save_weights(model, section, &tmp, SaveDtype::F32)?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE))?;
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| Error::Invalid(format!("trainer state cannot be serialised: {e}")))?;
        write_atomic(&tmp.join(STATE_FILE), &json)?;
        let dir = self.checkpoints().join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        write_atomic(&self.checkpoints().join("latest"), name.as_bytes())?;
        if let Some(keep) = keep {
            let all = self.complete_checkpoints()?;
            for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
                std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
            }
        }
        Ok(dir)
    }

    /// Reads the trainer state of a checkpoint.
    pub fn load_state<S: DeserializeOwned>(checkpoint: &Path) -> Result<S> {
        let path = checkpoint.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(
                &path,
                format!("trainer state does not match this trainer: {e}"),
            )
        })
    }

    /// The model a run starts from ([`ModelSection::load_trainable`]) and, when resuming from
    /// checkpoint `resume_from`, its trainer state.
    pub fn starting_point<B: Backend, S: DeserializeOwned>(
        resume_from: Option<&Path>,
        section: &ModelSection,
        seed: u64,
        device: &B::Device,
    ) -> Result<(Qwen2ForCausalLM<B>, Option<S>)> {
        let state = match resume_from {
            Some(ckpt) => {
                log::info!("resuming from {}", ckpt.display());
                Some(Self::load_state(ckpt)?)
            }
            None => None,
        };
        Ok((
            section.load_trainable::<B>(resume_from, seed, device)?,
            state,
        ))
    }

    /// Appends one metrics record to `metrics.jsonl`.
    pub fn log_metrics(&self, record: &serde_json::Value) -> Result<()> {
        let path = self.metrics_path();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{record}").map_err(|e| Error::io(&path, e))
    }

    /// Drops metrics records of steps after `step` (written by a run that was interrupted after
    /// its last checkpoint), so a resumed run's log has each step once.
    pub fn truncate_metrics_after(&self, step: usize) -> Result<()> {
        let path = self.metrics_path();
        if !path.exists() {
            return Ok(());
        }
        // Lines that are not a record with a step (blank, unfinished) are kept as written.
        let reader = JsonlReader::new(&path);
        let mut kept = String::new();
        for line in reader.lines()? {
            let line = line?;
            let s = reader
                .parse::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()));
            if s.is_none_or(|s| s as usize <= step) {
                kept.push_str(&line.text);
                kept.push('\n');
            }
        }
        write_atomic(&path, kept.as_bytes())
    }

    /// Writes the final model to `RUN_DIR/final`: HuggingFace's layout in `[model] save_dtype`,
    /// or with `[lora]` the adapters as PEFT writes them (`longrl merge` folds them in).
    pub fn save_final<B: Backend>(
        &self,
        model: &Qwen2ForCausalLM<B>,
        section: &ModelSection,
    ) -> Result<PathBuf> {
        let dir = self.final_dir();
        save_weights(model, section, &dir, section.save_dtype()?)?;
        Ok(dir)
    }
}

/// Saves `model` into `dir`: its adapters as a PEFT folder when it has them, else the whole
/// model in `dtype`; tokenizer files come from the section's model folder.
fn save_weights<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    section: &ModelSection,
    dir: &Path,
    dtype: SaveDtype,
) -> Result<()> {
    match &section.lora {
        Some(lora) if model.has_adapters() => save_adapter(
            model,
            lora,
            &section.adapter_base_name(),
            dir,
            Some(&section.path),
        ),
        _ => save_model(model, dir, dtype, Some(&section.path), SHARD_BYTES),
    }
}
