//! The Qwen2 / Qwen3 (dense) configuration, read from a HuggingFace `config.json`.
//!
//! Both layouts are accepted: the classic one of the published checkpoints (`rope_theta`,
//! `rope_scaling`, `torch_dtype`) and the transformers 5 one (`rope_parameters`, `dtype`). Every
//! field error names the field and what was expected. The original JSON object is kept so that a
//! saved model carries every field it was loaded with.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How rotary position embeddings are scaled beyond the pre-training context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// The interpolation factor.
        factor: f64,
    },
    /// YaRN (arXiv 2309.00071), as transformers computes it (Qwen2.5 / R1-distill above 32K).
    Yarn {
        /// Context extension factor (4 for 32K -> 128K).
        factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: usize,
        /// Rotations above which dimensions are extrapolated (default 32).
        beta_fast: f64,
        /// Rotations below which dimensions are interpolated (default 1).
        beta_slow: f64,
        /// Scale applied to cos/sin; derived from `factor` (and `mscale`s) when absent.
        attention_factor: Option<f64>,
        /// DeepSeek-style numerator of the derived attention factor.
        mscale: Option<f64>,
        /// DeepSeek-style denominator of the derived attention factor.
        mscale_all_dim: Option<f64>,
        /// Round the correction range outward to whole dimensions (default true).
        truncate: bool,
    },
}

/// The architecture a `config.json` describes (its `model_type`).
///
/// Both share one decoder ([`crate::model::Qwen2ForCausalLM`]); they differ only in attention:
///
/// | | q/k/v bias | o_proj bias | per-head q/k RMSNorm | head_dim |
/// |---|---|---|---|---|
/// | `qwen2` | always | never | no | hidden / heads |
/// | `qwen3` | `attention_bias` | `attention_bias` | yes (before RoPE) | config `head_dim` (default hidden / heads) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen, QwenLong-L1 (`Qwen2ForCausalLM`).
    Qwen2,
    /// Qwen3 dense models (`Qwen3ForCausalLM`).
    Qwen3,
}

impl ModelType {
    /// Every supported `model_type`, as config.json spells it.
    pub const ALL: [ModelType; 2] = [ModelType::Qwen2, ModelType::Qwen3];

    /// The `model_type` string of config.json (`qwen2`, `qwen3`).
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Qwen2 => "qwen2",
            ModelType::Qwen3 => "qwen3",
        }
    }

    /// The transformers class name (`Qwen2ForCausalLM`, `Qwen3ForCausalLM`).
    pub fn architecture(self) -> &'static str {
        match self {
            ModelType::Qwen2 => "Qwen2ForCausalLM",
            ModelType::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// The `model_type` named `s`, if supported.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl std::fmt::Display for ModelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Qwen2- or Qwen3-architecture configuration (Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen,
/// QwenLong-L1, Qwen3 dense); [`ModelType`] says which and what differs.
#[derive(Debug, Clone)]
pub struct Qwen2Config {
    /// Which architecture (`model_type`).
    pub model_type: ModelType,
    /// Vocabulary size (rows of the embedding and of the lm_head).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than the query heads).
    pub num_key_value_heads: usize,
    /// Per-head width: config.json's `head_dim` for Qwen3 (128 for every published size, which
    /// need not be `hidden_size / num_attention_heads`), else `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// Whether q_proj, k_proj and v_proj carry a bias (always for Qwen2; Qwen3's
    /// `attention_bias`, default false).
    pub qkv_bias: bool,
    /// Whether o_proj carries a bias (never for Qwen2; Qwen3's `attention_bias`).
    pub o_proj_bias: bool,
    /// Whether queries and keys go through a per-head RMSNorm (`self_attn.q_norm`/`k_norm`,
    /// weight `[head_dim]`, epsilon `rms_norm_eps`) before RoPE: Qwen3.
    pub qk_norm: bool,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest position the checkpoint is meant for.
    pub max_position_embeddings: usize,
    /// Whether the lm_head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// The dtype the weights are stored in (`bfloat16`, `float16`, `float32`), if stated.
    pub torch_dtype: Option<String>,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (a config may list several).
    pub eos_token_ids: Vec<u32>,
    /// The JSON object this config was read from (written back on save, with updates).
    pub raw: Map<String, Value>,
}

/// Reads fields out of a JSON object with errors that name the file and the field.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, key: &str, expected: &str, found: Option<&Value>) -> Error {
        let found = match found {
            Some(v) => format!("found {v}"),
            None => "it is missing".to_string(),
        };
        Error::config(
            self.path,
            format!("field `{key}`: expected {expected}, {found}"),
        )
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(key, "a positive integer", None))
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(self.err(key, "a positive integer", Some(v))),
            },
        }
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(self.err(key, "a number", Some(v))),
            },
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(key, "true or false", Some(v))),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, "a string", Some(v))),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = |v: &Value| self.err(key, "a token id or a list of token ids", Some(v));
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(v @ Value::Number(_)) => Ok(vec![as_u32(v).ok_or_else(|| bad(v))?]),
            Some(v @ Value::Array(items)) => items
                .iter()
                .map(|x| as_u32(x).ok_or_else(|| bad(v)))
                .collect(),
            Some(v) => Err(bad(v)),
        }
    }
}

fn as_u32(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

impl Qwen2Config {
    /// Reads and validates `config.json` (or the `config.json` inside a model folder).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path: PathBuf = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_json_str(&text, &path)
    }

    /// Parses a config from JSON text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(Error::config(
                path,
                "expected a JSON object at the top level",
            ));
        };
        Self::from_json_object(obj, path)
    }

    /// Validates a parsed `config.json` object.
    pub fn from_json_object(obj: Map<String, Value>, path: &Path) -> Result<Self> {
        let f = Fields { path, obj: &obj };
        let model_type = parse_model_type(&f)?;
        if let Some(act) = f.str_opt("hidden_act")? {
            if act != "silu" {
                return Err(f.err("hidden_act", "\"silu\"", f.get("hidden_act")));
            }
        }
        check_full_attention(&f)?;

        let vocab_size = f.usize_req("vocab_size")?;
        let hidden_size = f.usize_req("hidden_size")?;
        let intermediate_size = f.usize_req("intermediate_size")?;
        let num_hidden_layers = f.usize_req("num_hidden_layers")?;
        let num_attention_heads = f.usize_req("num_attention_heads")?;
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(Error::config(
                path,
                format!(
                    "field `num_attention_heads` ({num_attention_heads}) must be a multiple of `num_key_value_heads` ({num_key_value_heads})"
                ),
            ));
        }
        let head_dim = parse_head_dim(&f, model_type, hidden_size, num_attention_heads)?;
        // Qwen3's q/k/v and o projections share one flag; Qwen2 hard-codes q/k/v bias.
        let (qkv_bias, o_proj_bias, qk_norm) = match model_type {
            ModelType::Qwen2 => (true, false, false),
            ModelType::Qwen3 => {
                let bias = f.bool_opt("attention_bias")?.unwrap_or(false);
                (bias, bias, true)
            }
        };
        let max_position_embeddings = f.usize_opt("max_position_embeddings")?.unwrap_or(32768);
        let rms_norm_eps = f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6);
        let (rope_theta, rope_scaling) = parse_rope(&f, max_position_embeddings)?;
        let tie_word_embeddings = f.bool_opt("tie_word_embeddings")?.unwrap_or(false);
        let torch_dtype = match f.str_opt("torch_dtype")? {
            Some(d) => Some(d.to_string()),
            None => f.str_opt("dtype")?.map(str::to_string),
        };
        if let Some(d) = &torch_dtype {
            if !matches!(d.as_str(), "float32" | "bfloat16" | "float16") {
                return Err(Error::config(
                    path,
                    format!(
                        "field `torch_dtype`/`dtype`: expected \"float32\", \"bfloat16\" or \"float16\", found \"{d}\""
                    ),
                ));
            }
        }
        let bos_token_id = f.token_ids("bos_token_id")?.first().copied();
        let eos_token_ids = f.token_ids("eos_token_id")?;

        Ok(Self {
            model_type,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            qkv_bias,
            o_proj_bias,
            qk_norm,
            rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings,
            torch_dtype,
            bos_token_id,
            eos_token_ids,
            raw: obj,
        })
    }

    /// The JSON to write as `config.json` next to saved weights stored as `dtype`.
    ///
    /// Keeps every field of the original file and its layout (classic `torch_dtype` or
    /// transformers 5 `dtype`); only the dtype is updated.
    pub fn to_json(&self, dtype: &str) -> Value {
        let mut obj = self.raw.clone();
        if obj.contains_key("dtype") && !obj.contains_key("torch_dtype") {
            obj.insert("dtype".into(), Value::String(dtype.into()));
        } else {
            obj.insert("torch_dtype".into(), Value::String(dtype.into()));
        }
        Value::Object(obj)
    }

    /// Number of parameters of the model this config describes (lm_head counted once when tied;
    /// biases and q/k norms as the architecture has them).
    pub fn num_parameters(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_proj_bias {
            attn += h;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim;
        }
        let mlp = 3 * h * i;
        let layer = attn + mlp + 2 * h;
        let embed = v * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        embed + self.num_hidden_layers * layer + h + head
    }

    /// Query heads per key/value head.
    pub fn num_key_value_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// `model_type`: one of [`ModelType::ALL`], else an error naming the field and the choices.
fn parse_model_type(f: &Fields<'_>) -> Result<ModelType> {
    let choices = ModelType::ALL
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(" or ");
    match f.str_opt("model_type")? {
        Some(s) => ModelType::parse(s).ok_or_else(|| {
            Error::config(
                f.path,
                format!(
                    "unsupported architecture: field `model_type` is \"{s}\"; longrl supports \
                     {choices} (qwen2: Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen, QwenLong-L1; \
                     qwen3: Qwen3 dense)"
                ),
            )
        }),
        None => Err(f.err("model_type", &choices, None)),
    }
}

/// Refuses sliding-window attention (`use_sliding_window: true`, or a `layer_types` entry other
/// than `full_attention`): every layer attends to the whole context, as the published Qwen2 and
/// Qwen3 checkpoints do.
fn check_full_attention(f: &Fields<'_>) -> Result<()> {
    if f.bool_opt("use_sliding_window")?.unwrap_or(false) {
        return Err(Error::config(
            f.path,
            "field `use_sliding_window`: sliding-window attention is not supported; expected false",
        ));
    }
    match f.get("layer_types") {
        None => Ok(()),
        Some(Value::Array(kinds)) if kinds.iter().all(|k| k == "full_attention") => Ok(()),
        Some(v) => Err(f.err(
            "layer_types",
            "\"full_attention\" for every layer (sliding-window attention is not supported)",
            Some(v),
        )),
    }
}

/// The per-head width: Qwen3 reads `head_dim` (default `hidden_size / num_attention_heads`);
/// Qwen2 derives it, and a `head_dim` field must agree.
fn parse_head_dim(
    f: &Fields<'_>,
    model_type: ModelType,
    hidden_size: usize,
    num_attention_heads: usize,
) -> Result<usize> {
    let given = f.usize_opt("head_dim")?;
    let head_dim = match (model_type, given) {
        (ModelType::Qwen3, Some(hd)) => hd,
        _ => {
            if !hidden_size.is_multiple_of(num_attention_heads) {
                return Err(Error::config(
                    f.path,
                    format!(
                        "field `hidden_size` ({hidden_size}) must be a multiple of `num_attention_heads` ({num_attention_heads})"
                    ),
                ));
            }
            hidden_size / num_attention_heads
        }
    };
    if let (ModelType::Qwen2, Some(hd)) = (model_type, given) {
        if hd != head_dim {
            return Err(f.err(
                "head_dim",
                &format!("hidden_size / num_attention_heads = {head_dim}"),
                f.get("head_dim"),
            ));
        }
    }
    if head_dim % 2 != 0 {
        return Err(Error::config(
            f.path,
            format!("head dimension {head_dim} must be even for rotary embeddings"),
        ));
    }
    Ok(head_dim)
}

/// Reads `rope_theta` and the scaling from either layout.
fn parse_rope(f: &Fields<'_>, max_position_embeddings: usize) -> Result<(f64, RopeScaling)> {
    // transformers 5: `rope_parameters` holds the theta and the scaling together.
    let (params_key, params) = match f.get("rope_parameters") {
        Some(v) => ("rope_parameters", Some(v)),
        None => ("rope_scaling", f.get("rope_scaling")),
    };
    let params = match params {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(v) => return Err(f.err(params_key, "an object", Some(v))),
    };
    let inner = params.map(|m| Fields {
        path: f.path,
        obj: m,
    });
    let theta_inner = match &inner {
        Some(p) => p.f64_opt("rope_theta")?,
        None => None,
    };
    let rope_theta = match theta_inner {
        Some(t) => t,
        None => f.f64_opt("rope_theta")?.unwrap_or(10000.0),
    };
    if rope_theta <= 0.0 {
        return Err(f.err("rope_theta", "a positive number", f.get("rope_theta")));
    }
    let Some(p) = inner else {
        return Ok((rope_theta, RopeScaling::None));
    };
    let kind = match p.str_opt("rope_type")? {
        Some(k) => k.to_string(),
        None => p.str_opt("type")?.unwrap_or("default").to_string(),
    };
    let field = |k: &str| format!("{params_key}.{k}");
    let factor = p.f64_opt("factor")?;
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => {
            let factor = factor.ok_or_else(|| f.err(&field("factor"), "a number", None))?;
            RopeScaling::Linear { factor }
        }
        "yarn" => {
            let original = p
                .usize_opt("original_max_position_embeddings")?
                .unwrap_or(max_position_embeddings);
            let factor = factor.unwrap_or(max_position_embeddings as f64 / original as f64);
            let nonzero = |x: Option<f64>, d: f64| x.filter(|v| *v != 0.0).unwrap_or(d);
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: nonzero(p.f64_opt("beta_fast")?, 32.0),
                beta_slow: nonzero(p.f64_opt("beta_slow")?, 1.0),
                attention_factor: p.f64_opt("attention_factor")?,
                mscale: p.f64_opt("mscale")?,
                mscale_all_dim: p.f64_opt("mscale_all_dim")?,
                truncate: p.bool_opt("truncate")?.unwrap_or(true),
            }
        }
        other => {
            return Err(Error::config(
                f.path,
                format!(
                    "field `{}`: rope type \"{other}\" is not supported; expected \"default\", \"linear\" or \"yarn\"",
                    field("rope_type")
                ),
            ))
        }
    };
    if let RopeScaling::Linear { factor } | RopeScaling::Yarn { factor, .. } = &scaling {
        if *factor <= 0.0 {
            return Err(f.err(&field("factor"), "a positive number", p.get("factor")));
        }
    }
    Ok((rope_theta, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Qwen2Config> {
        Qwen2Config::from_json_str(json, Path::new("config.json"))
    }

    const BASE: &str = r#""model_type": "qwen2", "vocab_size": 100, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2"#;

    #[test]
    fn classic_layout() {
        let c = parse(&format!(
            r#"{{{BASE}, "rope_theta": 1000000.0, "torch_dtype": "bfloat16",
               "rope_scaling": {{"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
               "eos_token_id": 151643}}"#
        ))
        .unwrap();
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.eos_token_ids, vec![151643]);
        match c.rope_scaling {
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                assert_eq!(
                    (
                        factor,
                        original_max_position_embeddings,
                        beta_fast,
                        beta_slow,
                        truncate
                    ),
                    (4.0, 32768, 32.0, 1.0, true)
                );
            }
            other => panic!("expected yarn, got {other:?}"),
        }
        assert_eq!(
            c.to_json("float32")["torch_dtype"],
            Value::String("float32".into())
        );
    }

    #[test]
    fn transformers5_layout() {
        let c = parse(&format!(
            r#"{{{BASE}, "dtype": "float32",
               "rope_parameters": {{"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}},
               "eos_token_id": [1, 2]}}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 500.0);
        assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        let out = c.to_json("bfloat16");
        assert_eq!(out["dtype"], Value::String("bfloat16".into()));
        assert!(out.get("torch_dtype").is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(r#"{"model_type": "llama"}"#).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("llama"), "{e}");
        let e = parse(&format!(r#"{{{BASE}, "hidden_size": "wide"}}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`hidden_size`") && e.contains("positive integer"),
            "{e}"
        );
        let e = parse(r#"{"model_type": "qwen2", "vocab_size": 10}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`hidden_size`") && e.contains("missing"), "{e}");
        let e = parse(&format!(
            r#"{{{BASE}, "rope_scaling": {{"type": "dynamic", "factor": 2.0}}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("dynamic"), "{e}");
        let e = parse("{not json").unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("not valid JSON"),
            "{e}"
        );
    }

    const QWEN3: &str = r#""model_type": "qwen3", "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2"#;

    #[test]
    fn qwen3_reads_head_dim_attention_bias_and_has_q_k_norms() {
        let c = parse(&format!(r#"{{{QWEN3}, "head_dim": 24}}"#)).unwrap();
        assert_eq!(c.model_type, ModelType::Qwen3);
        assert_eq!(c.model_type.architecture(), "Qwen3ForCausalLM");
        assert_eq!(c.head_dim, 24);
        assert!(c.qk_norm && !c.qkv_bias && !c.o_proj_bias);
        let biased = parse(&format!(r#"{{{QWEN3}, "attention_bias": true}}"#)).unwrap();
        assert!(biased.qkv_bias && biased.o_proj_bias);
        // Without `head_dim`: hidden / heads, as transformers defaults it.
        let c = parse(&format!("{{{QWEN3}}}")).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.to_json("float32")["model_type"], "qwen3");
        let q2 = parse(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(q2.model_type, ModelType::Qwen2);
        assert!(q2.qkv_bias && !q2.o_proj_bias && !q2.qk_norm);
        // Qwen2 keeps its rule: a `head_dim` must be hidden / heads.
        let e = parse(&format!(r#"{{{BASE}, "head_dim": 24}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`head_dim`"), "{e}");
    }

    #[test]
    fn unknown_architectures_and_sliding_windows_are_refused_by_name() {
        let e = parse(&format!(r#"{{{QWEN3}, "model_type": "llama"}}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json")
                && e.contains("`model_type`")
                && e.contains("\"llama\"")
                && e.contains("\"qwen2\"")
                && e.contains("\"qwen3\""),
            "{e}"
        );
        let e = parse(r#"{"vocab_size": 10}"#).unwrap_err().to_string();
        assert!(e.contains("`model_type`") && e.contains("missing"), "{e}");
        let e = parse(&format!(r#"{{{QWEN3}, "use_sliding_window": true}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`use_sliding_window`"), "{e}");
        let e = parse(&format!(
            r#"{{{QWEN3}, "layer_types": ["full_attention", "sliding_attention"]}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("`layer_types`"), "{e}");
        parse(&format!(
            r#"{{{QWEN3}, "layer_types": ["full_attention", "full_attention"]}}"#
        ))
        .unwrap();
        let e = parse(&format!(r#"{{{QWEN3}, "attention_bias": "no"}}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`attention_bias`"), "{e}");
    }

    #[test]
    fn published_qwen3_configs_parse_with_their_parameter_counts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        // (folder, parameters): 0.6B as published (596,049,920); the others from the same
        // formula, tied up to 4B.
        for (name, tied) in [
            ("Qwen3-0.6B", true),
            ("Qwen3-1.7B", true),
            ("Qwen3-4B", true),
            ("Qwen3-8B", false),
            ("Qwen3-14B", false),
            ("Qwen3-32B", false),
        ] {
            let c = Qwen2Config::from_file(root.join(name)).unwrap();
            assert_eq!(c.model_type, ModelType::Qwen3, "{name}");
            assert_eq!(c.head_dim, 128, "{name}");
            assert_eq!(c.tie_word_embeddings, tied, "{name}");
            assert_eq!(c.vocab_size, 151_936, "{name}");
            assert_eq!(c.eos_token_ids, vec![151_645], "{name}");
        }
        let c = Qwen2Config::from_file(root.join("Qwen3-0.6B")).unwrap();
        assert_eq!(c.num_parameters(), 596_049_920);
    }

    #[test]
    fn parameter_count_matches_published_qwen25_05b() {
        // Qwen2.5-0.5B: 494,032,768 parameters (tied embeddings).
        let c = parse(
            r#"{"model_type": "qwen2", "vocab_size": 151936, "hidden_size": 896,
                "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                "num_key_value_heads": 2, "tie_word_embeddings": true}"#,
        )
        .unwrap();
        assert_eq!(c.num_parameters(), 494_032_768);
    }
}
