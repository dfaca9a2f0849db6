//! HuggingFace checkpoints in and out: safetensors (single file or sharded with
//! `model.safetensors.index.json`), f32/bf16/f16 converted to the run's float type, every missing,
//! unexpected or mis-shaped tensor reported by name; and saving back in the HF layout (safetensors
//! + config.json + tokenizer files) that transformers and vLLM load unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use burn::module::ParamId;
use burn::tensor::{backend::Backend, DType, Shape, Tensor, TensorData};
use burn_store::{
    ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, TensorSnapshot,
    TensorSnapshotError,
};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use super::config::Qwen2Config;
use super::qwen2::Qwen2ForCausalLM;
use crate::error::{Error, Result};
use crate::io::{tmp_path, write_atomic};

/// Files copied next to saved weights when present in the source model folder.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
];

/// Largest shard written by [`save_model`] (as transformers' default `max_shard_size`).
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

/// Tensors some checkpoints carry that are recomputed, not loaded (as transformers ignores them).
fn ignorable(name: &str) -> bool {
    name.ends_with("rotary_emb.inv_freq")
}

/// The float storage type of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    /// 32-bit floats.
    F32,
    /// bfloat16 (what published Qwen2 checkpoints use).
    Bf16,
    /// IEEE half precision.
    F16,
}

impl SaveDtype {
    /// The name transformers writes in `torch_dtype`.
    pub fn hf_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
            SaveDtype::F16 => "float16",
        }
    }

    /// Parses `float32`/`f32`, `bfloat16`/`bf16`, `float16`/`f16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "float32" | "f32" => Ok(SaveDtype::F32),
            "bfloat16" | "bf16" => Ok(SaveDtype::Bf16),
            "float16" | "f16" => Ok(SaveDtype::F16),
            other => Err(Error::Invalid(format!(
                "unknown dtype \"{other}\": expected float32, bfloat16 or float16"
            ))),
        }
    }

    fn burn(self) -> DType {
        match self {
            SaveDtype::F32 => DType::F32,
            SaveDtype::Bf16 => DType::BF16,
            SaveDtype::F16 => DType::F16,
        }
    }

    fn safetensors(self) -> StDtype {
        match self {
            SaveDtype::F32 => StDtype::F32,
            SaveDtype::Bf16 => StDtype::BF16,
            SaveDtype::F16 => StDtype::F16,
        }
    }
}

/// The dtype a frozen base is held in (`[model] base_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseDtype {
    /// The checkpoint's own float type (bf16 for published Qwen2 checkpoints).
    Auto,
    /// 32-bit floats (the default).
    Float32,
    /// bfloat16.
    Bfloat16,
    /// IEEE half precision.
    Float16,
}

impl BaseDtype {
    /// Parses `auto`, `float32`/`f32`, `bfloat16`/`bf16`, `float16`/`f16`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            other => Ok(
                match SaveDtype::parse(other).map_err(|_| {
                    Error::Invalid(format!(
                        "unknown dtype \"{other}\": expected auto, float32, bfloat16 or float16"
                    ))
                })? {
                    SaveDtype::F32 => Self::Float32,
                    SaveDtype::Bf16 => Self::Bfloat16,
                    SaveDtype::F16 => Self::Float16,
                },
            ),
        }
    }

    /// Bytes per weight (`auto` counts as 2: published checkpoints are bf16).
    pub fn bytes(self) -> usize {
        match self {
            Self::Float32 => 4,
            _ => 2,
        }
    }
}

/// One tensor of a checkpoint: where its bytes are and what they are.
struct StoredTensor {
    file: usize,
    start: usize,
    end: usize,
    dtype: DType,
    shape: Vec<usize>,
}

/// The safetensors files of a model folder, memory-mapped.
struct WeightFiles {
    paths: Vec<PathBuf>,
    maps: Vec<Arc<memmap2::Mmap>>,
    tensors: BTreeMap<String, StoredTensor>,
}

/// Lists the weight files of `dir`: the shards named by `model.safetensors.index.json`, else
/// `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(&index, format!("not valid JSON: {e}")))?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                Error::checkpoint(
                    &index,
                    "field `weight_map`: expected an object of tensor name -> file",
                )
            })?;
        let mut files: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::checkpoint(
                    &index,
                    format!("weight_map[\"{name}\"]: expected a file name"),
                )
            })?;
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::checkpoint(
        dir,
        "no weights found: expected model.safetensors or model.safetensors.index.json",
    ))
}

fn burn_dtype(dtype: StDtype) -> Option<DType> {
    match dtype {
        StDtype::F32 => Some(DType::F32),
        StDtype::BF16 => Some(DType::BF16),
        StDtype::F16 => Some(DType::F16),
        _ => None,
    }
}

impl WeightFiles {
    fn open(paths: Vec<PathBuf>) -> Result<Self> {
        let mut maps = Vec::new();
        let mut tensors = BTreeMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            // SAFETY: the file is opened read-only and only read through this map; a checkpoint
            // modified by another process while loading is outside what any loader can guard.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                Error::checkpoint(path, format!("not a valid safetensors file: {e}"))
            })?;
            let base = 8 + header_len;
            for (name, info) in meta.tensors() {
                let dtype = burn_dtype(info.dtype).ok_or_else(|| {
                    Error::checkpoint(
                        path,
                        format!(
                            "tensor `{name}` has dtype {:?}; expected F32, BF16 or F16",
                            info.dtype
                        ),
                    )
                })?;
                let (start, end) = info.data_offsets;
                let entry = StoredTensor {
                    file: i,
                    start: base + start,
                    end: base + end,
                    dtype,
                    shape: info.shape.clone(),
                };
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(Error::checkpoint(
                        path,
                        format!("tensor `{name}` appears in more than one shard"),
                    ));
                }
            }
            maps.push(Arc::new(map));
        }
        Ok(Self {
            paths,
            maps,
            tensors,
        })
    }

    /// Lazy snapshots that read, convert to `target` and hand over each tensor when applied.
    fn snapshots(&self, skip: &dyn Fn(&str) -> bool, target: DType) -> Vec<TensorSnapshot> {
        self.tensors
            .iter()
            .filter(|(name, _)| !skip(name))
            .map(|(name, t)| {
                let map = self.maps[t.file].clone();
                let (start, end, dtype, shape) = (t.start, t.end, t.dtype, t.shape.clone());
                let data_shape = shape.clone();
                let read = move || -> Result<TensorData, TensorSnapshotError> {
                    let bytes = map[start..end].to_vec();
                    Ok(TensorData::from_bytes_vec(bytes, data_shape.clone(), dtype)
                        .convert_dtype(target))
                };
                TensorSnapshot::from_closure(
                    Rc::new(read),
                    target,
                    Shape::from(shape),
                    name.split('.').map(str::to_string).collect(),
                    Vec::new(),
                    ParamId::new(),
                )
            })
            .collect()
    }
}

/// Float dtype of the backend's default float tensors on `device`.
pub(crate) fn float_dtype<B: Backend>(device: &B::Device) -> DType {
    Tensor::<B, 1>::zeros([1], device).dtype()
}

/// Loads config.json and the safetensors weights of the model folder `dir` onto `device`.
///
/// Weights stored as bf16/f16/f32 are converted to the backend's float type. Any tensor the model
/// needs but the checkpoint lacks, any tensor the checkpoint has but the model does not use, and any
/// shape mismatch is an error that lists every offending tensor by name.
pub fn load_model<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<Qwen2ForCausalLM<B>> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "not a directory (expected a HuggingFace model folder)",
        ));
    }
    let config = Qwen2Config::from_file(dir.join("config.json"))?;
    let files = WeightFiles::open(weight_files(dir)?)?;
    let mut model = Qwen2ForCausalLM::init(&config, device);
    let tied = config.tie_word_embeddings;
    // A tied checkpoint may still carry lm_head.weight (a copy of the embeddings): transformers
    // ignores it, and so does longrl.
    let skip = |name: &str| ignorable(name) || (tied && name == "lm_head.weight");
    let snapshots = files.snapshots(&skip, float_dtype::<B>(device));
    let result = model.apply(snapshots, None, Some(Box::new(PyTorchToBurnAdapter)), false);
    check_apply(dir, &files, &result)?;
    Ok(model)
}

fn check_apply(dir: &Path, files: &WeightFiles, result: &ApplyResult) -> Result<()> {
    let mut problems = Vec::new();
    let mut missing: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
    missing.sort();
    if !missing.is_empty() {
        problems.push(format!(
            "{} missing tensor(s): {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    let mut unused: Vec<&str> = result.unused.iter().map(String::as_str).collect();
    unused.sort();
    if !unused.is_empty() {
        problems.push(format!(
            "{} unexpected tensor(s) the model does not use: {}",
            unused.len(),
            unused.join(", ")
        ));
    }
    for e in &result.errors {
        let detail = match e {
            burn_store::ApplyError::ShapeMismatch {
                path,
                expected,
                found,
            } => {
                // burn stores linear weights as [in, out]; report in the checkpoint's [out, in].
                let stored = files.tensors.get(path.as_str()).map(|t| t.shape.clone());
                let (exp, fnd) = match stored {
                    Some(s) if path.ends_with("proj.weight") || path == "lm_head.weight" => {
                        (rev(expected.as_slice()), s)
                    }
                    _ => (expected.to_vec(), found.to_vec()),
                };
                format!("tensor `{path}` has shape {fnd:?}, expected {exp:?}")
            }
            other => other.to_string(),
        };
        problems.push(detail);
    }
    if problems.is_empty() {
        return Ok(());
    }
    let files: Vec<String> = files
        .paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Err(Error::checkpoint(
        dir,
        format!(
            "does not match config.json ({}): {}",
            files.join(", "),
            problems.join("; ")
        ),
    ))
}

fn rev(dims: &[usize]) -> Vec<usize> {
    dims.iter().rev().copied().collect()
}

/// Saves `model` to `dir` in the HuggingFace layout: `model.safetensors` (or shards of at most
/// `max_shard_bytes` with `model.safetensors.index.json`), `config.json`, and the tokenizer and
/// generation files copied from `source_dir` when given. Every file is written atomically.
pub fn save_model<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    dir: impl AsRef<Path>,
    dtype: SaveDtype,
    source_dir: Option<&Path>,
    max_shard_bytes: usize,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let snapshots = model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false);
    // Materialise one tensor at a time, converted to the storage dtype, into shards.
    let mut shards: Vec<Vec<(String, TensorData)>> = vec![Vec::new()];
    let mut shard_bytes = 0usize;
    for snap in snapshots {
        let name = snap.full_path();
        let data = snap
            .to_data()
            .map_err(|e| Error::checkpoint(dir, format!("reading tensor `{name}`: {e:?}")))?
            .convert_dtype(dtype.burn());
        let n = data.as_bytes().len();
        if shard_bytes > 0 && shard_bytes + n > max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += n;
        shards.last_mut().expect("one shard").push((name, data));
    }
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let count = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0usize;
    for (i, shard) in shards.iter().enumerate() {
        let file = if count == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, count)
        };
        let mut views = Vec::with_capacity(shard.len());
        for (name, data) in shard {
            let view = TensorView::new(dtype.safetensors(), data.shape.to_vec(), data.as_bytes())
                .map_err(|e| Error::checkpoint(dir, format!("tensor `{name}`: {e}")))?;
            total += data.as_bytes().len();
            weight_map.insert(name.clone(), file.clone());
            views.push((name.clone(), view));
        }
        let path = dir.join(&file);
        let tmp = tmp_path(&path);
        safetensors::tensor::serialize_to_file(views, Some(metadata.clone()), &tmp)
            .map_err(|e| Error::checkpoint(&path, format!("writing safetensors: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    }
    let index_path = dir.join("model.safetensors.index.json");
    if count > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_atomic(
            &index_path,
            serde_json::to_string_pretty(&index)
                .unwrap_or_default()
                .as_bytes(),
        )?;
    } else if index_path.exists() {
        std::fs::remove_file(&index_path).map_err(|e| Error::io(&index_path, e))?;
    }
    let config = model.config().to_json(dtype.hf_name());
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    if let Some(src) = source_dir {
        if src != dir {
            for name in TOKENIZER_FILES {
                let from = src.join(name);
                if from.exists() {
                    let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
                    write_atomic(&dir.join(name), &bytes)?;
                }
            }
        }
    }
    Ok(())
}
