//! HuggingFace checkpoints in and out: safetensors (single file or sharded with
//! `model.safetensors.index.json`), f32/bf16/f16 converted to the run's float type, every missing,
//! unexpected or mis-shaped tensor reported by name; and saving back in the HF layout (safetensors
//! + config.json + tokenizer files) that transformers and vLLM load unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::{backend::Backend, DType, Tensor, TensorCreationOptions, TensorData};
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot};
use safetensors::tensor::{Dtype as StDtype, Metadata, SafeTensorError, SafeTensors, TensorView};

use super::config::Qwen2Config;
use super::qwen2::Qwen2ForCausalLM;
use super::weights::{TensorKind, WeightSource};
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

/// Checks that `path` is a whole safetensors file: its header parses and every tensor's data lies
/// within the file, which ends where the last tensor's data does. A file cut short (a full disk,
/// an interrupted copy) is an error naming the file and how much is missing, before any loading.
pub fn check_weight_file(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: as in `WeightFiles::open`: read-only, and only read through this map.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    read_header(path, &map).map(|_| ())
}

/// The header of the safetensors file `path` mapped as `bytes`: (header length, metadata), after
/// the checks of [`SafeTensors::read_metadata`] (data offsets consistent with the shapes, the data
/// exactly filling the rest of the file); errors say what is wrong in words.
fn read_header(path: &Path, bytes: &[u8]) -> Result<(usize, Metadata)> {
    SafeTensors::read_metadata(bytes).map_err(|e| {
        let why = match e {
            SafeTensorError::HeaderTooSmall => format!(
                "truncated: {} bytes, less than the 8 that give the header's length",
                bytes.len()
            ),
            SafeTensorError::InvalidHeaderLength => format!(
                "truncated inside its header: {} bytes, but the header alone needs {}",
                bytes.len(),
                header_end(bytes).unwrap_or(0)
            ),
            SafeTensorError::MetadataIncompleteBuffer => {
                size_mismatch(bytes).unwrap_or_else(|| e.to_string())
            }
            e => e.to_string(),
        };
        Error::checkpoint(path, format!("not a valid safetensors file: {why}"))
    })
}

/// Where the header of a safetensors file ends (8 bytes of length, then the JSON header).
fn header_end(bytes: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    usize::try_from(n).ok()?.checked_add(8)
}

/// Describes a file whose size differs from what its (valid) header describes: cut short (naming
/// the first tensor whose data is missing) or with bytes after the last tensor.
fn size_mismatch(bytes: &[u8]) -> Option<String> {
    let start = header_end(bytes)?;
    let meta: Metadata = serde_json::from_slice(bytes.get(8..start)?).ok()?;
    let expected = start.checked_add(meta.data_len())?;
    let actual = bytes.len();
    if actual >= expected {
        return Some(format!(
            "{} bytes after the last tensor's data (the header describes {expected} bytes, the \
             file has {actual})",
            actual - expected
        ));
    }
    let data = actual - start;
    let cut = meta
        .offset_keys()
        .into_iter()
        .find(|k| meta.info(k).is_some_and(|i| i.data_offsets.1 > data))
        .unwrap_or_default();
    Some(format!(
        "truncated: {actual} bytes, but its header places tensor data up to byte {expected} \
         ({} bytes missing, from tensor `{cut}` on); the file was cut short, e.g. by a full disk \
         or an interrupted copy",
        expected - actual
    ))
}

pub(super) fn burn_dtype(dtype: StDtype) -> Option<DType> {
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
            let (header_len, meta) = read_header(path, &map)?;
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

    /// The tensor's values as `target`, `[out, in]` turned into `[in, out]` when `transpose`:
    /// one pass from the mapped file into the buffer the tensor takes over. The file's pages are
    /// released afterwards, so resident memory holds one copy of the weights, not two.
    fn read(&self, t: &StoredTensor, transpose: bool, target: DType) -> TensorData {
        let map = &self.maps[t.file];
        let bytes = &map[t.start..t.end];
        let (rows, cols) = match (transpose, t.shape.as_slice()) {
            (true, [r, c]) => (*r, *c),
            _ => (1, t.shape.iter().product()),
        };
        let shape = if transpose {
            vec![cols, rows]
        } else {
            t.shape.clone()
        };
        let data = match target {
            DType::BF16 => TensorData::new(
                convert(bytes, t.dtype, rows, cols, transpose, bf16_from),
                shape,
            ),
            DType::F16 => TensorData::new(
                convert(bytes, t.dtype, rows, cols, transpose, f16_from),
                shape,
            ),
            _ => TensorData::new(convert(bytes, t.dtype, rows, cols, transpose, |x| x), shape)
                .convert_dtype(target),
        };
        release(map, t.start, t.end);
        data
    }
}

fn bf16_from(x: f32) -> half::bf16 {
    half::bf16::from_f32(x)
}

fn f16_from(x: f32) -> half::f16 {
    half::f16::from_f32(x)
}

/// Element `i` of little-endian `bytes` holding `dtype` values, as f32.
#[inline(always)]
fn element(bytes: &[u8], dtype: DType, i: usize) -> f32 {
    match dtype {
        DType::BF16 => {
            half::bf16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
        }
        DType::F16 => {
            half::f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
        }
        _ => f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]),
    }
}

/// `rows x cols` values of `dtype` in `bytes` converted by `f`, transposed to `cols x rows` when
/// `transpose`; rows of the output are filled in parallel (tiles keep the reads cache-friendly).
pub(super) fn convert<T: Copy + Default + Send>(
    bytes: &[u8],
    dtype: DType,
    rows: usize,
    cols: usize,
    transpose: bool,
    f: impl Fn(f32) -> T + Sync,
) -> Vec<T> {
    use rayon::prelude::*;
    let n = rows * cols;
    let mut out = vec![T::default(); n];
    if !transpose {
        out.par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(c, chunk)| {
                let base = c << 16;
                for (j, o) in chunk.iter_mut().enumerate() {
                    *o = f(element(bytes, dtype, base + j));
                }
            });
        return out;
    }
    // Output row `i` (an input column) is read down input rows; blocks of 16 output rows share
    // each input row's cache lines.
    const TILE: usize = 16;
    out.par_chunks_mut(rows * TILE)
        .enumerate()
        .for_each(|(b, block)| {
            let i0 = b * TILE;
            let width = block.len() / rows;
            for r in 0..rows {
                for k in 0..width {
                    block[k * rows + r] = f(element(bytes, dtype, r * cols + i0 + k));
                }
            }
        });
    out
}

/// Drops the mapped pages of `[start, end)` from this process's resident memory (they stay in
/// the page cache): a loaded tensor's bytes live in its own buffer from then on.
fn release(map: &memmap2::Mmap, start: usize, end: usize) {
    let page = 4096;
    let first = start.div_ceil(page) * page;
    let last = end / page * page;
    if last > first {
        // SAFETY: the map is read-only and private to this loader; discarding its pages only
        // means a later read faults them in again from the file.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
        };
    }
}

/// Builds a model from a checkpoint's tensors: a dry pass checks every name and shape (nothing
/// read), the real pass reads each tensor once into its device buffer.
struct FileSource<'a, B: Backend> {
    files: &'a WeightFiles,
    device: &'a B::Device,
    /// `None`: each tensor in its stored dtype.
    dtype: Option<DType>,
    dry: bool,
    used: std::collections::BTreeSet<String>,
    problems: Vec<String>,
}

impl<B: Backend> WeightSource<B> for FileSource<'_, B> {
    fn param<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        kind: TensorKind,
    ) -> Param<Tensor<B, D>> {
        self.used.insert(name.to_string());
        let transpose = kind == TensorKind::LinearWeight;
        let expected: Vec<usize> = if transpose {
            shape.iter().rev().copied().collect()
        } else {
            shape.to_vec()
        };
        let placeholder = || Param::from_tensor(Tensor::zeros([1; D], self.device));
        let Some(t) = self.files.tensors.get(name) else {
            self.problems.push(format!("missing tensor `{name}`"));
            return placeholder();
        };
        if t.shape != expected {
            self.problems.push(format!(
                "tensor `{name}` has shape {:?}, expected {expected:?}",
                t.shape
            ));
            return placeholder();
        }
        if self.dry {
            return placeholder();
        }
        let dtype = self.dtype.unwrap_or(t.dtype);
        let data = self.files.read(t, transpose, dtype);
        let options = TensorCreationOptions::new(self.device.clone()).with_dtype(dtype);
        Param::from_tensor(Tensor::from_data(data, options))
    }
}

/// The float type most of the weights of the model folder `dir` are stored in (by bytes).
pub fn stored_dtype(dir: &Path) -> Result<SaveDtype> {
    let files = WeightFiles::open(weight_files(dir)?)?;
    let mut bytes: BTreeMap<&'static str, usize> = BTreeMap::new();
    for t in files.tensors.values() {
        let name = match t.dtype {
            DType::BF16 => "bfloat16",
            DType::F16 => "float16",
            _ => "float32",
        };
        *bytes.entry(name).or_default() += t.end - t.start;
    }
    let top = bytes.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d);
    SaveDtype::parse(top.unwrap_or("float32"))
}

/// Float dtype of the backend's default float tensors on `device`.
pub(crate) fn float_dtype<B: Backend>(device: &B::Device) -> DType {
    Tensor::<B, 1>::zeros([1], device).dtype()
}

/// Loads config.json and the safetensors weights of the model folder `dir` onto `device`, in the
/// backend's float type.
///
/// The model is built from the file's tensors (memory-mapped, each converted once into its
/// device buffer; nothing is initialised first). Any tensor the model needs but the checkpoint
/// lacks, any tensor the checkpoint has but the model does not use, and any shape mismatch is
/// an error that lists every offending tensor by name, before any weight is read.
pub fn load_model<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<Qwen2ForCausalLM<B>> {
    load_model_as(dir, None, device)
}

/// [`load_model`] with the weights held in `dtype` (`None`: the backend's float type);
/// [`BaseDtype::Auto`] keeps each tensor's stored dtype. A dtype the backend cannot hold is an
/// error.
pub fn load_model_as<B: Backend>(
    dir: impl AsRef<Path>,
    dtype: Option<BaseDtype>,
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
    let dtype = match dtype {
        None | Some(BaseDtype::Float32) => Some(float_dtype::<B>(device)),
        Some(BaseDtype::Bfloat16) => Some(DType::BF16),
        Some(BaseDtype::Float16) => Some(DType::F16),
        Some(BaseDtype::Auto) => None,
    };
    let wanted: Vec<DType> = match dtype {
        Some(d) => vec![d],
        None => files.tensors.values().map(|t| t.dtype).collect(),
    };
    for d in wanted {
        if !B::supports_dtype(device, d) {
            return Err(Error::Invalid(format!(
                "model.base_dtype: the {} backend cannot hold {d:?} tensors; use float32 or \
                 another device",
                B::name(device)
            )));
        }
    }
    let mut source = FileSource::<B> {
        files: &files,
        device,
        dtype,
        dry: true,
        used: Default::default(),
        problems: Vec::new(),
    };
    let _ = Qwen2ForCausalLM::build(&config, &mut source);
    // A tied checkpoint may still carry lm_head.weight (a copy of the embeddings): transformers
    // ignores it, and so does longrl.
    let tied = config.tie_word_embeddings;
    let unused: Vec<&str> = files
        .tensors
        .keys()
        .filter(|n| !(source.used.contains(*n) || ignorable(n) || tied && *n == "lm_head.weight"))
        .map(String::as_str)
        .collect();
    if !unused.is_empty() {
        source.problems.push(format!(
            "{} unexpected tensor(s) the model does not use: {}",
            unused.len(),
            unused.join(", ")
        ));
    }
    if !source.problems.is_empty() {
        let paths: Vec<String> = files
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(Error::checkpoint(
            dir,
            format!(
                "does not match config.json ({}): {}",
                paths.join(", "),
                source.problems.join("; ")
            ),
        ));
    }
    source.dry = false;
    Ok(Qwen2ForCausalLM::build(&config, &mut source))
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
    // Adapters are not part of the base: a LoRA run saves them as a PEFT folder instead.
    let snapshots: Vec<_> = model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .filter(|s| !s.full_path().contains(".lora."))
        .collect();
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
    copy_tokenizer_files(source_dir, dir)
}

/// Copies the [`TOKENIZER_FILES`] that the model folder `source_dir` has into `dir`
/// (atomically), so a saved model or adapter carries its tokenizer.
pub(crate) fn copy_tokenizer_files(source_dir: Option<&Path>, dir: &Path) -> Result<()> {
    if let Some(src) = source_dir.filter(|s| *s != dir) {
        for name in TOKENIZER_FILES {
            let from = src.join(name);
            if from.exists() {
                let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
                write_atomic(&dir.join(name), &bytes)?;
            }
        }
    }
    Ok(())
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2-chatml")
    }

    /// Every tensor of `model` by HF name, in HF's layout, as f32.
    fn model_tensors<B: Backend>(model: &Qwen2ForCausalLM<B>) -> BTreeMap<String, Vec<f32>> {
        model
            .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
            .into_iter()
            .map(|s| {
                let data = s.to_data().expect("tensor").convert_dtype(DType::F32);
                (s.full_path(), data.to_vec::<f32>().expect("f32"))
            })
            .collect()
    }

    /// Every tensor of the safetensors file, read by the safetensors crate, as f32.
    fn file_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
        let bytes = std::fs::read(path).expect("file");
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        st.tensors()
            .into_iter()
            .map(|(name, view)| {
                let d = view.data();
                let v = match view.dtype() {
                    StDtype::F32 => d
                        .chunks(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    StDtype::BF16 => d
                        .chunks(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                    other => panic!("unexpected dtype {other:?}"),
                };
                (name, v)
            })
            .collect()
    }

    /// Runs `name` alone in a child process: the backend's random generator is global, so a
    /// check that loading leaves it untouched cannot share the process with other tests.
    fn isolated(name: &str) -> bool {
        if std::env::var_os("LONGRL_ISOLATED_TEST").is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([name, "--exact", "--test-threads=1", "--nocapture"])
            .env("LONGRL_ISOLATED_TEST", "1")
            .output()
            .expect("child test");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "isolated run failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }

    #[test]
    fn loading_draws_no_random_numbers_and_yields_exactly_the_files_weights() {
        if !isolated("model::checkpoint::tests::loading_draws_no_random_numbers_and_yields_exactly_the_files_weights") {
            return;
        }
        let device = Default::default();
        let draw = || Tensor::<Flex, 1>::random([16], Distribution::Default, &device).into_data();
        Flex::seed(&device, 42);
        let expected = draw();
        Flex::seed(&device, 42);
        let model = load_model::<Flex>(tiny(), &device).expect("tiny model");
        assert_eq!(
            draw(),
            expected,
            "loading drew from the backend's random generator"
        );
        let loaded = model_tensors(&model);
        let file = file_tensors(&tiny().join("model.safetensors"));
        assert_eq!(loaded.len(), file.len());
        for (name, values) in &file {
            assert!(
                loaded[name] == *values,
                "tensor `{name}` differs from the file"
            );
        }
    }

    #[test]
    fn a_bf16_base_stays_bf16_and_equals_the_file() {
        let device = Default::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let f32_model = load_model::<Flex>(tiny(), &device).expect("tiny model");
        save_model(
            &f32_model,
            dir.path(),
            SaveDtype::Bf16,
            Some(&tiny()),
            DEFAULT_MAX_SHARD_BYTES,
        )
        .expect("save bf16");
        for dtype in [BaseDtype::Auto, BaseDtype::Bfloat16] {
            let model = load_model_as::<Flex>(dir.path(), Some(dtype), &device).expect("load");
            let w = model.model.layers[0].self_attn.q_proj.weight.val();
            assert_eq!(w.dtype(), DType::BF16, "{dtype:?}");
            let file = file_tensors(&dir.path().join("model.safetensors"));
            for (name, values) in model_tensors(&model) {
                assert!(
                    file[&name] == values,
                    "tensor `{name}` differs from the file"
                );
            }
        }
        let upcast = load_model::<Flex>(dir.path(), &device).expect("load as f32");
        assert_eq!(upcast.model.norm.weight.val().dtype(), DType::F32);
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn a_backend_without_bf16_refuses_a_bf16_base() {
        let device = Default::default();
        let err =
            load_model_as::<burn::backend::NdArray>(tiny(), Some(BaseDtype::Bfloat16), &device)
                .expect_err("ndarray holds no bf16");
        assert!(err.to_string().contains("model.base_dtype"), "{err}");
    }

    #[test]
    fn a_cut_short_or_padded_weight_file_is_named_with_what_is_wrong() {
        let whole = std::fs::read(tiny().join("model.safetensors")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, &whole).unwrap();
        check_weight_file(&path).unwrap();
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let e = check_weight_file(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            e
        };
        let e = check(&whole[..whole.len() - 10]);
        assert!(
            e.contains("truncated") && e.contains("10 bytes missing"),
            "{e}"
        );
        assert!(e.contains("from tensor `"), "{e}");
        let e = check(&whole[..20]);
        assert!(e.contains("truncated inside its header"), "{e}");
        let e = check(&whole[..5]);
        assert!(e.contains("truncated: 5 bytes"), "{e}");
        let e = check(&[whole.as_slice(), b"xyz"].concat());
        assert!(e.contains("3 bytes after the last tensor"), "{e}");
        // Loading reports the same.
        std::fs::write(&path, &whole[..whole.len() - 10]).unwrap();
        std::fs::copy(tiny().join("config.json"), dir.path().join("config.json")).unwrap();
        let e = load_model::<Flex>(dir.path(), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("10 bytes missing"), "{e}");
    }
}
