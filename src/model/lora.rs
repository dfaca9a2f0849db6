//! LoRA (arXiv 2106.09685) as PEFT configures and stores it: `[lora]` in a recipe is PEFT's
//! `LoraConfig` (same names, same defaults), and an adapter folder is what PEFT's
//! `save_pretrained` writes (`adapter_config.json` + `adapter_model.safetensors`), so PEFT and
//! vLLM load longrl's adapters unchanged and longrl loads theirs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The projections of a Qwen2 decoder layer LoRA can adapt, in PEFT's names.
pub const LINEAR_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// PEFT's default targets for Qwen2 when `target_modules` is not given
/// (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["qwen2"]`).
pub const DEFAULT_TARGETS: &[&str] = &["q_proj", "v_proj"];

/// `target_modules`: module names, or PEFT's shorthand `"all-linear"` (every linear layer but
/// the LM head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// `"all-linear"`.
    Shorthand(String),
    /// Module names, e.g. `["q_proj", "v_proj"]`.
    Names(Vec<String>),
}

/// `[lora]`: PEFT's `LoraConfig` for a Qwen2 causal LM. Only the adapters are trained; the base
/// stays frozen (and may stay in its checkpoint's low precision, `[model] base_dtype`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update `B A` (PEFT's default 8).
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `lora_alpha / r` (PEFT's default 8).
    #[serde(alias = "alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training (PEFT's default 0).
    #[serde(alias = "dropout")]
    pub lora_dropout: f64,
    /// Which projections get an adapter; default PEFT's for Qwen2, `q_proj` and `v_proj`.
    pub target_modules: Option<TargetModules>,
    /// rsLoRA: scale by `lora_alpha / sqrt(r)` instead (arXiv 2312.03732).
    pub use_rslora: bool,
    /// Written as `base_model_name_or_path` in `adapter_config.json` (the hub id or folder
    /// PEFT and vLLM load the base from); default: `[model] path`.
    pub base_model_name_or_path: Option<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: None,
            use_rslora: false,
            base_model_name_or_path: None,
        }
    }
}

impl LoraConfig {
    /// Checks the values; errors name the field (`section` is where it was read, e.g. `lora`).
    pub fn validate(&self, section: &str) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Invalid(format!(
                "{section}.r = 0: the adapter rank must be at least 1"
            )));
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return Err(Error::Invalid(format!(
                "{section}.lora_alpha = {}: expected a number > 0",
                self.lora_alpha
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Invalid(format!(
                "{section}.lora_dropout = {}: expected a probability in [0, 1)",
                self.lora_dropout
            )));
        }
        self.targets()
            .map(|_| ())
            .map_err(|e| Error::Invalid(format!("{section}.target_modules: {e}")))
    }

    /// The multiplier of the update: `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The kinds of projection adapted (in [`LINEAR_MODULES`] order); which layers' ones, see
    /// [`Self::targets_path`].
    pub fn targets(&self) -> Result<Vec<&'static str>> {
        let names: Vec<String> = match &self.target_modules {
            None => return Ok(DEFAULT_TARGETS.to_vec()),
            Some(TargetModules::Shorthand(s)) if s == "all-linear" => {
                return Ok(LINEAR_MODULES.to_vec())
            }
            Some(TargetModules::Shorthand(s)) => vec![s.clone()],
            Some(TargetModules::Names(v)) => v.clone(),
        };
        if names.is_empty() {
            return Err(Error::Invalid(
                "an empty list adapts nothing: name modules or use \"all-linear\"".into(),
            ));
        }
        // PEFT matches a name against the end of a module's path: `q_proj` adapts every
        // layer's, `model.layers.0.self_attn.q_proj` only layer 0's.
        let last = |n: &str| n.rsplit('.').next().unwrap_or(n).to_string();
        for n in &names {
            if !LINEAR_MODULES.contains(&last(n).as_str()) {
                return Err(Error::Invalid(format!(
                    "unknown module \"{n}\": Qwen2's linear layers are {} (or \"all-linear\")",
                    LINEAR_MODULES.join(", ")
                )));
            }
        }
        Ok(LINEAR_MODULES
            .iter()
            .copied()
            .filter(|m| names.iter().any(|n| last(n) == *m))
            .collect())
    }

    /// Whether the projection at `path` (`model.layers.3.self_attn.q_proj`) gets an adapter, as
    /// PEFT decides: a target equal to the path or to one of its dotted suffixes.
    pub fn targets_path(&self, path: &str) -> bool {
        let matches = |t: &str| path == t || path.ends_with(&format!(".{t}"));
        match &self.target_modules {
            None => DEFAULT_TARGETS.iter().any(|t| matches(t)),
            Some(TargetModules::Shorthand(s)) if s == "all-linear" => true,
            Some(TargetModules::Shorthand(s)) => matches(s),
            Some(TargetModules::Names(v)) => v.iter().any(|t| matches(t)),
        }
    }

    /// `adapter_config.json` as PEFT writes it, for the base `base_model`.
    pub fn adapter_config_json(&self, base_model: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": match &self.target_modules {
                Some(TargetModules::Names(v)) => v.clone(),
                _ => self.targets().unwrap_or_default().iter().map(|m| m.to_string()).collect(),
            },
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_dora": false,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "revision": null,
        })
    }

    /// Reads PEFT's `adapter_config.json`; what longrl cannot run (DoRA, bias training, per-module
    /// ranks, modules_to_save, another PEFT method) is an error naming the field.
    pub fn from_adapter_config(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(path, format!("not valid JSON: {e}")))?;
        let field = |name: &str| v.get(name).filter(|x| !x.is_null());
        let bad =
            |name: &str, what: &str| Error::checkpoint(path, format!("field `{name}`: {what}"));
        let peft_type = field("peft_type")
            .and_then(|x| x.as_str())
            .unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad("peft_type", &format!("\"{peft_type}\" is not LORA")));
        }
        let r = field("r")
            .and_then(|x| x.as_u64())
            .ok_or_else(|| bad("r", "expected a positive integer"))? as usize;
        let lora_alpha = match field("lora_alpha") {
            None => 8.0,
            Some(x) => x
                .as_f64()
                .ok_or_else(|| bad("lora_alpha", "expected a number"))?,
        };
        let lora_dropout = field("lora_dropout")
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0);
        let use_rslora = field("use_rslora")
            .and_then(|x| x.as_bool())
            .unwrap_or(false);
        let target_modules = match field("target_modules") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(TargetModules::Shorthand(s.clone())),
            Some(serde_json::Value::Array(a)) => Some(TargetModules::Names(
                a.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("target_modules", "expected module names"))?,
            )),
            Some(_) => return Err(bad("target_modules", "expected a list or a string")),
        };
        for (name, ok) in [
            ("use_dora", field("use_dora").is_none_or(|x| x == false)),
            ("bias", field("bias").is_none_or(|x| x == "none")),
            (
                "fan_in_fan_out",
                field("fan_in_fan_out").is_none_or(|x| x == false),
            ),
            (
                "modules_to_save",
                field("modules_to_save").is_none_or(|x| x.as_array().is_some_and(Vec::is_empty)),
            ),
            (
                "rank_pattern",
                field("rank_pattern").is_none_or(|x| x.as_object().is_some_and(|o| o.is_empty())),
            ),
            (
                "alpha_pattern",
                field("alpha_pattern").is_none_or(|x| x.as_object().is_some_and(|o| o.is_empty())),
            ),
            (
                "layers_to_transform",
                field("layers_to_transform").is_none(),
            ),
        ] {
            if !ok {
                return Err(bad(
                    name,
                    "longrl runs plain LoRA only; this setting is not supported",
                ));
            }
        }
        let config = Self {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            use_rslora,
            base_model_name_or_path: field("base_model_name_or_path")
                .and_then(|x| x.as_str())
                .map(str::to_string),
        };
        config
            .validate("adapter_config.json")
            .map_err(|e| Error::checkpoint(path, e.to_string()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_scaling_follow_peft() {
        let c = LoraConfig::default();
        assert_eq!(c.targets().unwrap(), vec!["q_proj", "v_proj"]);
        assert_eq!(c.scaling(), 1.0);
        let c = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            use_rslora: true,
            target_modules: Some(TargetModules::Shorthand("all-linear".into())),
            ..Default::default()
        };
        assert_eq!(c.scaling(), 8.0);
        assert_eq!(c.targets().unwrap().len(), 7);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = |c: LoraConfig| c.validate("lora").unwrap_err().to_string();
        assert!(e(LoraConfig {
            r: 0,
            ..Default::default()
        })
        .contains("lora.r"));
        assert!(e(LoraConfig {
            lora_alpha: 0.0,
            ..Default::default()
        })
        .contains("lora.lora_alpha"));
        let unknown = LoraConfig {
            target_modules: Some(TargetModules::Names(vec!["qkv_proj".into()])),
            ..Default::default()
        };
        let msg = e(unknown);
        assert!(
            msg.contains("lora.target_modules") && msg.contains("qkv_proj"),
            "{msg}"
        );
    }
}
