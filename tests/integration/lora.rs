//! LoRA against PEFT: adapters PEFT made give PEFT's log-probs in longrl, `longrl merge` gives
//! PEFT's `merge_and_unload` weights, an adapter longrl trained gives in PEFT what it gives in
//! longrl (fixtures: scripts/make_lora_fixtures.py); adapters round-trip; bad adapters are clear
//! errors.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::backend::Flex;
use common::{copy_dir, fixture, model_dir, read_safetensors};
use longrl::model::{load_adapted, load_adapter, load_model, save_adapter, LoraConfig};

const VARIANTS: [&str; 2] = ["all_linear_rslora", "default_targets"];

fn base() -> PathBuf {
    fixture("parity/gqa_untied")
}

fn adapter(name: &str) -> PathBuf {
    fixture("lora").join(name)
}

/// `(input_ids, token_logprobs)` rows of a fixture's `key`.
fn expected(dir: &Path, key: &str) -> (Vec<Vec<u32>>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(dir.join("fixture.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = serde_json::from_value(v["input_ids"].clone()).unwrap();
    let lps = serde_json::from_value(v[key].clone()).unwrap();
    (ids, lps)
}

fn assert_logprobs<B: longrl::model::ModelBackend>(
    model: &longrl::model::Qwen2ForCausalLM<B>,
    dir: &Path,
    key: &str,
) {
    let (rows, want) = expected(dir, key);
    for (ids, want) in rows.iter().zip(want) {
        let got = model
            .sequence_logprobs(ids, 64, &Default::default())
            .unwrap();
        assert_eq!(got.len(), want.len());
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() < 1e-4,
                "{} {key} position {t}: longrl {g} vs PEFT {w}",
                dir.display()
            );
        }
    }
}

#[test]
fn peft_adapters_give_pefts_logprobs() {
    for v in VARIANTS {
        let model = load_adapted::<Flex>(&base(), Some(&adapter(v)), None, &Default::default())
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        assert!(model.has_adapters());
        assert_logprobs(&model, &adapter(v), "token_logprobs");
        // Without the adapter the base's log-probs differ: the fixture tests the adapter.
        let (rows, want) = expected(&adapter(v), "token_logprobs");
        let plain = model
            .without_adapters()
            .sequence_logprobs(&rows[0], 64, &Default::default());
        let gap = plain
            .unwrap()
            .iter()
            .zip(&want[0])
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(gap > 1e-2, "{v}: the adapter changes nothing ({gap})");
    }
}

/// The GPU code path (wgpu; lavapipe in CI): an adapter gives PEFT's log-probs; a bf16 base is
/// PEFT's within bf16's tolerance where the device holds bf16, else a clear error.
#[cfg(feature = "wgpu")]
#[test]
fn peft_adapters_on_wgpu() {
    type W = burn::backend::Wgpu;
    let dev = Default::default();
    let v = "all_linear_rslora";
    let model = load_adapted::<W>(&base(), Some(&adapter(v)), None, &dev).unwrap();
    assert_logprobs(&model, &adapter(v), "token_logprobs");
    let bf16 = load_adapted::<W>(
        &base(),
        Some(&adapter(v)),
        Some(longrl::model::BaseDtype::Bfloat16),
        &dev,
    );
    use burn::tensor::backend::Backend;
    if !W::supports_dtype(&dev, burn::tensor::DType::BF16) {
        // WGSL has no bf16 (lavapipe, most wgpu adapters): a clear error, not a crash.
        let e = bf16.expect_err("wgsl holds no bf16").to_string();
        assert!(e.contains("model.base_dtype"), "{e}");
        return;
    }
    let bf16 = bf16.unwrap();
    let (rows, want) = expected(&adapter(v), "token_logprobs");
    let got = bf16.sequence_logprobs(&rows[0], 64, &dev).unwrap();
    for (g, w) in got.iter().zip(&want[0]) {
        assert!((*g as f64 - w).abs() < 0.1, "bf16 base on wgpu: {g} vs {w}");
    }
}

#[test]
fn merge_equals_pefts_merge_and_unload() {
    for v in VARIANTS {
        let out = tempfile::tempdir().unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_longrl"))
            .args(["--device", "flex", "merge", "--model"])
            .arg(base())
            .arg("--adapter")
            .arg(adapter(v))
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let ours = read_safetensors(&out.path().join("model.safetensors"));
        let peft = read_safetensors(&adapter(v).join("merged.safetensors"));
        assert_eq!(ours.len(), peft.len(), "{v}: tensor count");
        for (name, p) in &peft {
            let o = &ours[name];
            assert_eq!(o.shape, p.shape, "{v} {name}");
            let diff = o
                .data
                .iter()
                .zip(&p.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-4, "{v} {name}: max difference {diff}");
        }
        let merged = load_model::<Flex>(out.path(), &Default::default()).unwrap();
        assert_logprobs(&merged, &adapter(v), "merged_token_logprobs");
    }
}

#[test]
fn an_adapter_longrl_trained_gives_pefts_logprobs() {
    let dir = adapter("longrl_trained");
    let model = load_adapted::<Flex>(
        &model_dir("tiny-qwen2-chatml"),
        Some(&dir),
        None,
        &Default::default(),
    )
    .unwrap();
    assert_logprobs(&model, &dir, "token_logprobs");
}

#[test]
fn adapters_round_trip_through_save_adapter() {
    let v = "all_linear_rslora";
    let (model, lora) = load_adapter(
        load_model::<Flex>(&base(), &Default::default()).unwrap(),
        &adapter(v),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    save_adapter(&model, &lora, "gqa_untied", out.path(), None).unwrap();
    let a = read_safetensors(&adapter(v).join("adapter_model.safetensors"));
    let b = read_safetensors(&out.path().join("adapter_model.safetensors"));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(b[name].shape, t.shape, "{name}");
        assert!(b[name].data == t.data, "{name} changed");
    }
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["base_model_name_or_path"], "gqa_untied");
    assert_eq!(config["r"], 4);
    assert_eq!(config["use_rslora"], true);
    // PEFT wrote "all-linear" out as one path per projection; the list is kept as it came.
    assert_eq!(config["target_modules"].as_array().unwrap().len(), 14);
}

/// The error of loading `adapter_dir` onto `base_dir`.
fn load_err(base_dir: &Path, adapter_dir: &Path) -> String {
    let base = load_model::<Flex>(base_dir, &Default::default()).unwrap();
    load_adapter(base, adapter_dir)
        .expect_err("an error")
        .to_string()
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

#[test]
fn bad_adapters_are_clear_errors() {
    // A base whose shapes differ (4 KV heads, not 2): every k/v tensor is named.
    let e = load_err(&fixture("parity/mha_tied"), &adapter("all_linear_rslora"));
    assert!(
        e.contains("does not match the base")
            && e.contains("model.layers.0.self_attn.k_proj.lora_B.weight` has shape [16, 4]"),
        "{e}"
    );
    // A target module the adapter has no tensors for.
    let dir = copy_dir(&adapter("default_targets"));
    edit_config(dir.path(), |c| {
        c.insert(
            "target_modules".into(),
            serde_json::json!(["q_proj", "v_proj", "o_proj"]),
        );
    });
    let e = load_err(&base(), dir.path());
    assert!(
        e.contains("missing tensor") && e.contains("o_proj.lora_A.weight"),
        "{e}"
    );
    // Settings longrl cannot run, or that are wrong.
    for (field, value, says) in [
        ("r", serde_json::json!(0), "rank must be at least 1"),
        ("lora_alpha", serde_json::json!(-1.0), "lora_alpha"),
        (
            "target_modules",
            serde_json::json!(["qkv_proj"]),
            "unknown module \"qkv_proj\"",
        ),
        ("use_dora", serde_json::json!(true), "use_dora"),
    ] {
        let dir = copy_dir(&adapter("default_targets"));
        edit_config(dir.path(), |c| {
            c.insert(field.into(), value);
        });
        let e = load_err(&base(), dir.path());
        assert!(
            e.contains("adapter_config.json") && e.contains(says),
            "{field}: {e}"
        );
    }
    // A folder without its weights.
    let dir = copy_dir(&adapter("default_targets"));
    std::fs::remove_file(dir.path().join("adapter_model.safetensors")).unwrap();
    let e = load_err(&base(), dir.path());
    assert!(e.contains("missing adapter_model.safetensors"), "{e}");
}

#[test]
fn lora_settings_errors_name_the_field() {
    let bad = |toml: &str| {
        let c: std::result::Result<LoraConfig, _> = toml::from_str(toml);
        match c {
            Ok(c) => c.validate("lora").unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    };
    assert!(bad("r = 0").contains("lora.r"));
    assert!(bad("lora_alpha = 0").contains("lora.lora_alpha"));
    assert!(bad("alpha = -2").contains("lora.lora_alpha"));
    assert!(bad("target_modules = [\"attn\"]").contains("lora.target_modules"));
    assert!(bad("rank = 4").contains("unknown field"));
}
