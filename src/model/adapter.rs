//! PEFT adapter folders: reading one onto a model, writing a trained one, merging one into the
//! base (`merge_and_unload`). Tensor names are PEFT's
//! (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`, `[r, in]`; `lora_B`,
//! `[out, r]`), the weights f32 as PEFT keeps adapters.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};

use super::checkpoint::{burn_dtype, convert, copy_tokenizer_files};
use super::lora::LoraConfig;
use super::qwen2::Qwen2ForCausalLM;
use crate::error::{Error, Result};
use crate::io::{tmp_path, write_atomic};
use crate::kernels::{Linear, LoraAdapter};

/// PEFT's adapter settings file.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// PEFT's adapter weights file.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// PEFT's key of `module`'s (`model.layers.0.self_attn.q_proj`) adapter matrix `which` (`A`, `B`).
fn peft_key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// Writes `model`'s adapters to `dir` as PEFT's `save_pretrained` does: `adapter_config.json`
/// (with `base_model_name_or_path = base_model`) and `adapter_model.safetensors`, plus the
/// tokenizer files of `source_dir` when given. Every file is written atomically.
pub fn save_adapter<B: Backend>(
    model: &Qwen2ForCausalLM<B>,
    lora: &LoraConfig,
    base_model: &str,
    dir: &Path,
    source_dir: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors: Vec<(String, TensorData)> = Vec::new();
    for (path, _, p) in model.projections() {
        if let Some(l) = &p.lora {
            let f32 = |t: Tensor<B, 2>| t.transpose().into_data().convert_dtype(DType::F32);
            tensors.push((peft_key(&path, 'A'), f32(l.a.val())));
            tensors.push((peft_key(&path, 'B'), f32(l.b.val())));
        }
    }
    if tensors.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the model has no adapters to save",
            dir.display()
        )));
    }
    let views = tensors
        .iter()
        .map(|(name, d)| {
            TensorView::new(StDtype::F32, d.shape.to_vec(), d.as_bytes())
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::checkpoint(dir, format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let tmp = tmp_path(&path);
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| Error::checkpoint(&path, format!("writing safetensors: {e}")))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let config =
        serde_json::to_string_pretty(&lora.adapter_config_json(base_model)).unwrap_or_default();
    write_atomic(&dir.join(ADAPTER_CONFIG), config.as_bytes())?;
    copy_tokenizer_files(source_dir, dir)
}

/// Reads the adapter folder `dir` (PEFT's layout) onto `model`, whose base it freezes; returns
/// the adapted model and the adapter's settings. An adapter that does not fit the base (a
/// missing or extra tensor, a shape that disagrees with the model) is an error listing every
/// problem, and nothing is attached.
pub fn load_adapter<B: Backend>(
    model: Qwen2ForCausalLM<B>,
    dir: &Path,
) -> Result<(Qwen2ForCausalLM<B>, LoraConfig)> {
    if !dir.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "not a directory (expected a PEFT adapter folder)",
        ));
    }
    for file in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        if !dir.join(file).is_file() {
            return Err(Error::checkpoint(
                dir,
                format!("missing {file}: a PEFT adapter folder has {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"),
            ));
        }
    }
    let lora = LoraConfig::from_adapter_config(&dir.join(ADAPTER_CONFIG))?;
    let path = dir.join(ADAPTER_WEIGHTS);
    super::checkpoint::check_weight_file(&path)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::checkpoint(&path, format!("not a valid safetensors file: {e}")))?;
    let stored: BTreeMap<String, (Vec<usize>, StDtype)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.shape().to_vec(), v.dtype())))
        .collect();
    let mut problems = Vec::new();
    let mut used = Vec::new();
    for (module, _, p) in model.projections() {
        if !lora.targets_path(&module) {
            continue;
        }
        let [d_in, d_out] = p.dims();
        for (which, want) in [('A', vec![lora.r, d_in]), ('B', vec![d_out, lora.r])] {
            let key = peft_key(&module, which);
            match stored.get(&key) {
                None => problems.push(format!("missing tensor `{key}`")),
                Some((shape, _)) if *shape != want => problems.push(format!(
                    "tensor `{key}` has shape {shape:?}, the base needs {want:?}"
                )),
                Some((_, dtype))
                    if !matches!(dtype, StDtype::F32 | StDtype::BF16 | StDtype::F16) =>
                {
                    problems.push(format!(
                        "tensor `{key}` has dtype {dtype:?}; expected a float"
                    ))
                }
                Some(_) => used.push(key),
            }
        }
    }
    let extra: Vec<&str> = stored
        .keys()
        .filter(|k| !used.contains(k))
        .map(String::as_str)
        .collect();
    if !extra.is_empty() {
        problems.push(format!(
            "{} tensor(s) this base has no place for: {}",
            extra.len(),
            extra.join(", ")
        ));
    }
    if !problems.is_empty() {
        return Err(Error::checkpoint(
            dir,
            format!(
                "adapter does not match the base model: {}",
                problems.join("; ")
            ),
        ));
    }
    let device = model.model.norm.weight.device();
    // PEFT's `[rows, cols]` as burn's contiguous `[cols, rows]`, f32.
    let read = |key: &str| -> Tensor<B, 2> {
        let view = file.tensor(key).expect("checked above");
        let dtype = burn_dtype(view.dtype()).expect("a float dtype, checked above");
        let (rows, cols) = (view.shape()[0], view.shape()[1]);
        let t = convert(view.data(), dtype, rows, cols, true, |x| x);
        Tensor::<B, 2>::from_data(TensorData::new(t, [cols, rows]), &device)
    };
    let model = model.frozen().map_projections(|module, _, p| {
        if !lora.targets_path(module) {
            return Ok(p);
        }
        let adapter = LoraAdapter::new(
            read(&peft_key(module, 'A')),
            read(&peft_key(module, 'B')),
            lora.scaling(),
            lora.lora_dropout,
        );
        Ok(Linear {
            lora: Some(adapter),
            ..p
        })
    })?;
    Ok((model, lora))
}

/// Whether `dir` is a PEFT adapter folder (it has `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// The base model of `base` (weights in `dtype`, see [`super::checkpoint::load_model_as`]) with
/// the adapter in `adapter` when given: what `--adapter` on `score`, `generate` and `eval` runs.
pub fn load_adapted<B: Backend>(
    base: &Path,
    adapter: Option<&Path>,
    dtype: Option<super::BaseDtype>,
    device: &B::Device,
) -> Result<Qwen2ForCausalLM<B>> {
    let model = super::checkpoint::load_model_as::<B>(base, dtype, device)?;
    match adapter {
        Some(dir) => Ok(load_adapter(model, dir)?.0),
        None => Ok(model),
    }
}
