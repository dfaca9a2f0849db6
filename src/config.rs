//! Training configuration files (TOML): the sections every command shares (`[model]`, `[run]`) and
//! the loader that turns a bad file into an error naming the file, the line and the field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use burn::tensor::backend::Backend;

use crate::model::{
    is_adapter_dir, load_adapted, load_adapter, load_model, load_model_as, BaseDtype, LoraConfig,
    Qwen2ForCausalLM, SaveDtype,
};

/// `[model]`: the checkpoint training starts from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HuggingFace model folder (config.json, safetensors, tokenizer.json); relative paths are
    /// read from the config file's folder first, then the working directory.
    pub path: PathBuf,
    /// Chat template override: a .jinja file (relative paths as `path`), a template the model
    /// folder names, or a built-in (chatml, qwen2.5, qwen3, r1); default: the model's own.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Extra chat template variables, as transformers' `chat_template_kwargs`
    /// (e.g. `{ enable_thinking = false }` for Qwen3).
    #[serde(default)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// dtype of the final model (float32, bfloat16, float16); default: float32.
    #[serde(default)]
    pub save_dtype: Option<String>,
    /// dtype the frozen base is kept in while `[lora]` adapters train: `auto` (the checkpoint's
    /// own), float32, bfloat16 or float16; default float32. TRL's `torch_dtype`. Adapters and
    /// their optimiser state are f32 whatever this is.
    #[serde(default, alias = "torch_dtype")]
    pub base_dtype: Option<String>,
    /// A PEFT adapter folder to start from: its weights (and its settings when there is no
    /// `[lora]`); relative paths as `path`.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// The file's `[lora]` section, attached by [`ModelSection::resolve`]: train adapters on a
    /// frozen base instead of every weight.
    #[serde(skip)]
    pub lora: Option<LoraConfig>,
}

impl ModelSection {
    /// The model folder `path` with every other setting at its default (full fine-tuning, f32).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            chat_template: None,
            chat_template_kwargs: None,
            save_dtype: None,
            base_dtype: None,
            adapter: None,
            lora: None,
        }
    }

    /// Resolves `path` and `adapter` against the config file at `config_path` and attaches the
    /// file's `[lora]` (validated); `base_dtype` without adapters is an error naming the field.
    pub fn resolve(&mut self, config_path: &Path, lora: Option<LoraConfig>) -> Result<()> {
        self.path = resolve_path(config_path, &self.path);
        self.adapter = self.adapter.as_ref().map(|p| resolve_path(config_path, p));
        if let Some(t) = &self.chat_template {
            let file = resolve_path(config_path, Path::new(t));
            if file.is_file() {
                self.chat_template = Some(file.display().to_string());
            }
        }
        if let Some(l) = &lora {
            l.validate("lora")?;
        }
        self.lora = lora;
        if self.lora.is_none() {
            if let Some(dir) = &self.adapter {
                let path = dir.join(crate::model::adapter::ADAPTER_CONFIG);
                self.lora = Some(LoraConfig::from_adapter_config(&path)?);
            }
        }
        let dtype = self.base_dtype()?;
        if self.lora.is_none() && dtype != Some(BaseDtype::Float32) && dtype.is_some() {
            return Err(Error::Invalid(
                "model.base_dtype: a base kept in low precision is frozen, so it needs adapters \
                 to train ([lora] or model.adapter); full fine-tuning keeps f32 weights"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The model a run trains, on `device`: without `[lora]`, the checkpoint `resume_from` or
    /// else the model folder; with it, the frozen base (in `base_dtype`) plus the adapters of
    /// `resume_from`, else of `adapter`, else fresh ones drawn from `seed`.
    pub fn load_trainable<B: Backend>(
        &self,
        resume_from: Option<&Path>,
        seed: u64,
        device: &B::Device,
    ) -> Result<Qwen2ForCausalLM<B>> {
        let Some(lora) = &self.lora else {
            return load_model::<B>(resume_from.unwrap_or(&self.path), device);
        };
        lora.validate("lora")?;
        let base = load_model_as::<B>(&self.path, self.base_dtype()?, device)?;
        let Some(dir) = resume_from.or(self.adapter.as_deref()) else {
            return base.with_lora(lora, seed);
        };
        let (model, found) = load_adapter(base, dir)?;
        let same = found.r == lora.r
            && found.targets()? == lora.targets()?
            && found.scaling() == lora.scaling();
        if !same {
            return Err(Error::checkpoint(
                dir,
                format!(
                    "adapter (r = {}, lora_alpha = {}, target_modules = {:?}) differs from \
                     [lora] (r = {}, lora_alpha = {}, target_modules = {:?})",
                    found.r,
                    found.lora_alpha,
                    found.targets()?,
                    lora.r,
                    lora.lora_alpha,
                    lora.targets()?
                ),
            ));
        }
        Ok(model)
    }

    /// The model a phase left in `dir` (a full model folder, or an adapter on this base) for
    /// inference.
    pub fn load_phase_model<B: Backend>(
        &self,
        dir: &Path,
        device: &B::Device,
    ) -> Result<Qwen2ForCausalLM<B>> {
        if is_adapter_dir(dir) {
            load_adapted::<B>(&self.path, Some(dir), self.base_dtype()?, device)
        } else {
            load_model::<B>(dir, device)
        }
    }

    /// `base_model_name_or_path` for the adapters this run writes.
    pub fn adapter_base_name(&self) -> String {
        self.lora
            .as_ref()
            .and_then(|l| l.base_model_name_or_path.clone())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Refuses LoRA dropout under gradient checkpointing: the recomputed layers run without
    /// dropout, so the two cannot be combined (`section`: where checkpointing was asked for).
    pub fn check_dropout(&self, gradient_checkpointing: bool, section: &str) -> Result<()> {
        match &self.lora {
            Some(l) if l.lora_dropout > 0.0 && gradient_checkpointing => {
                Err(Error::Invalid(format!(
                    "lora.lora_dropout = {} with {section}.gradient_checkpointing = true: the \
                 recomputed layers run without dropout; set one of them off",
                    l.lora_dropout
                )))
            }
            _ => Ok(()),
        }
    }

    /// The parsed `base_dtype` (`None`: not set, f32).
    pub fn base_dtype(&self) -> Result<Option<BaseDtype>> {
        self.base_dtype
            .as_deref()
            .map(BaseDtype::parse)
            .transpose()
            .map_err(|e| Error::Invalid(format!("model.base_dtype: {e}")))
    }

    /// The model folder's tokenizer, with the `chat_template` override and
    /// `chat_template_kwargs` applied.
    pub fn load_tokenizer(&self) -> Result<crate::tokenizer::Tokenizer> {
        let mut tokenizer = crate::tokenizer::Tokenizer::from_dir(&self.path)?;
        if let Some(t) = &self.chat_template {
            tokenizer
                .set_chat_template(t)
                .map_err(|e| Error::Invalid(format!("model.chat_template: {e}")))?;
        }
        if let Some(kwargs) = &self.chat_template_kwargs {
            tokenizer.set_chat_template_kwargs(kwargs);
        }
        Ok(tokenizer)
    }

    /// The dtype the final model is written in.
    pub fn save_dtype(&self) -> Result<SaveDtype> {
        match &self.save_dtype {
            Some(s) => {
                SaveDtype::parse(s).map_err(|e| Error::Invalid(format!("model.save_dtype: {e}")))
            }
            None => Ok(SaveDtype::F32),
        }
    }
}

/// `[run]`: where the run writes, its seed and its checkpoint cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// The run directory (checkpoints, metrics, final model).
    pub run_dir: PathBuf,
    /// Seed of data order and sampling.
    pub seed: u64,
    /// Checkpoint every this many steps (0: only at the end).
    pub save_steps: usize,
    /// Checkpoints kept (the newest ones); 0 keeps all.
    pub save_total_limit: usize,
    /// Device (flex, ndarray, wgpu[:N], cuda[:N]); `--device` overrides it.
    pub device: Option<String>,
    /// Progress bar and per-step console lines.
    pub progress: bool,
    /// The resolved configuration the run writes to `RUN_DIR/config.toml` once it really starts
    /// (after every start-time check), so a refused run never overwrites a finished run's record.
    /// Set by the command line; `None` writes nothing.
    #[serde(skip)]
    pub record: Option<ConfigRecord>,
}

/// What a run records as `RUN_DIR/config.toml`, and whether a resume may change its seed or
/// learning rate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigRecord {
    /// The resolved configuration as TOML.
    pub text: String,
    /// `--force`: resume even though the seed or a learning rate differ from the record.
    pub force: bool,
}

impl ConfigRecord {
    /// The record of `config` (serialised as TOML).
    pub fn of<T: Serialize>(config: &T, force: bool) -> Result<Self> {
        let text = toml::to_string_pretty(config)
            .map_err(|e| Error::Invalid(format!("the resolved config cannot be written: {e}")))?;
        Ok(Self { text, force })
    }
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("runs/longrl"),
            seed: 0,
            save_steps: 0,
            save_total_limit: 2,
            device: None,
            progress: true,
            record: None,
        }
    }
}

/// Reads a TOML file into `T`; syntax errors and unknown or mistyped fields name the file, the
/// line and the field.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_toml(&text, path)
}

/// Parses TOML text read from `path` (for error messages).
pub fn parse_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| {
                text.as_bytes()[..s.start.min(text.len())]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            })
            .unwrap_or(0);
        Error::input(path, line, e.message().to_string())
    })
}

/// Resolves a path from a config file: absolute as is; relative to the config's folder when that
/// exists, else relative to the working directory.
pub fn resolve_path(config_path: &Path, p: &Path) -> PathBuf {
    // An unset path stays unset (its check names the option), not the config's folder.
    if p.is_absolute() || p.as_os_str().is_empty() {
        return p.to_path_buf();
    }
    let beside = config_path.parent().map(|d| d.join(p));
    match beside {
        Some(b) if b.exists() => b,
        _ => p.to_path_buf(),
    }
}

/// Command-line overrides of a run's `[run]` section and step count.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--run-dir`.
    pub run_dir: Option<PathBuf>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--max-steps`.
    pub max_steps: Option<usize>,
    /// `--resume`: continue from the latest checkpoint of the run directory.
    pub resume: bool,
}

impl Overrides {
    /// Applies the run-directory and seed overrides.
    pub fn apply(&self, run: &mut RunSection) {
        if let Some(d) = &self.run_dir {
            run.run_dir = d.clone();
        }
        if let Some(s) = self.seed {
            run.seed = s;
        }
    }
}
