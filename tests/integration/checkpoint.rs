//! Checkpoint I/O: loading the shipped models, clear errors for every kind of bad checkpoint, and
//! saving back in the HF layout (single file and sharded, f32 and bf16) with a lossless round trip.

use crate::common;

use std::path::Path;

use burn::backend::Flex;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use common::{copy_dir, fixture, model_dir};
use longrl::model::{load_model, save_model, Qwen2ForCausalLM, SaveDtype};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

type B = Flex;

/// (name, dtype, shape, bytes) of every tensor in a safetensors file.
type Entries = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_entries(path: &Path) -> Entries {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Entries = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_entries(path: &Path, entries: &Entries) {
    let views: Vec<(String, TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

fn edit_weights(dir: &Path, f: impl FnOnce(&mut Entries)) {
    let path = dir.join("model.safetensors");
    let mut entries = read_entries(&path);
    f(&mut entries);
    write_entries(&path, &entries);
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match load_model::<B>(dir, &Default::default()) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn logits(model: &Qwen2ForCausalLM<B>, ids: &[i64]) -> Vec<f32> {
    let n = ids.len();
    let d = Default::default();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, n]), &d);
    let pos = Tensor::<B, 2, Int>::from_data(
        TensorData::new((0..n as i64).collect::<Vec<_>>(), [1, n]),
        &d,
    );
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [1, n]), &d);
    model
        .forward(input, mask, pos, None)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect()
}

const IDS: [i64; 6] = [5, 17, 99, 3, 250, 42];

#[test]
fn shipped_tiny_models_load() {
    for name in ["tiny-qwen2-chatml", "tiny-r1-distill"] {
        let m = load_model::<B>(model_dir(name), &Default::default()).unwrap();
        assert_eq!(m.config().vocab_size, 1024);
        assert_eq!(m.lm_head.is_none(), name == "tiny-r1-distill");
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_dir(&fixture("parity/gqa_untied"));
    edit_weights(dir.path(), |e| {
        e.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("missing") && e.contains("model.layers.1.mlp.up_proj.weight"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = copy_dir(&fixture("parity/gqa_untied"));
    edit_weights(dir.path(), |e| {
        e.push((
            "model.layers.0.self_attn.extra.weight".into(),
            Dtype::F32,
            vec![2],
            vec![0; 8],
        ))
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("unexpected") && e.contains("model.layers.0.self_attn.extra.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = copy_dir(&fixture("parity/gqa_untied"));
    edit_config(dir.path(), |c| {
        c.insert("intermediate_size".into(), 90.into());
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight` has shape [88, 32], expected [90, 32]"),
        "{e}"
    );
    assert!(e.contains("model.layers.1.mlp.down_proj.weight"), "{e}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = copy_dir(&fixture("parity/gqa_untied"));
    std::fs::write(
        dir.path().join("config.json"),
        "{\"model_type\": \"qwen2\",",
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("not valid JSON"),
        "{e}"
    );

    edit_config_fresh(dir.path(), |c| {
        c.insert("num_attention_heads".into(), "four".into());
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("`num_attention_heads`") && e.contains("\"four\""),
        "{e}"
    );
}

fn edit_config_fresh(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    std::fs::copy(
        fixture("parity/gqa_untied/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    edit_config(dir, f);
}

#[test]
fn unknown_architecture_is_rejected() {
    let dir = copy_dir(&fixture("parity/gqa_untied"));
    edit_config(dir.path(), |c| {
        c.insert("model_type".into(), "llama".into());
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("unsupported architecture") && e.contains("llama"),
        "{e}"
    );
}

#[test]
fn unreadable_files_are_clear_errors() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(
        e.contains("/nonexistent/model") && e.contains("not a directory"),
        "{e}"
    );

    let dir = copy_dir(&fixture("parity/gqa_untied"));
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x10\x00\x00\x00garbage",
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );

    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("no weights found"), "{e}");

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn bf16_checkpoint_loads_converted_to_f32() {
    let dir = copy_dir(&fixture("parity/gqa_untied"));
    let f32_model = load_model::<B>(dir.path(), &Default::default()).unwrap();
    edit_weights(dir.path(), |entries| {
        for (_, dtype, _, bytes) in entries.iter_mut() {
            let bf: Vec<u8> = bytes
                .chunks_exact(4)
                .flat_map(|c| {
                    half::bf16::from_f32(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes()
                })
                .collect();
            *dtype = Dtype::BF16;
            *bytes = bf;
        }
    });
    let bf_model = load_model::<B>(dir.path(), &Default::default()).unwrap();
    let (a, b) = (logits(&f32_model, &IDS), logits(&bf_model, &IDS));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff > 0.0 && diff < 0.1,
        "bf16 rounding should perturb logits slightly, diff {diff}"
    );
}

#[test]
fn save_round_trip_is_lossless_and_hf_shaped() {
    for variant in ["gqa_untied", "mha_tied"] {
        let src = fixture(&format!("parity/{variant}"));
        let model = load_model::<B>(&src, &Default::default()).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_model(&model, out.path(), SaveDtype::F32, Some(&src), usize::MAX).unwrap();
        // Same tensor names, dtypes, shapes and bytes as the transformers-written file.
        assert_eq!(
            read_entries(&out.path().join("model.safetensors")),
            read_entries(&src.join("model.safetensors")),
            "{variant}"
        );
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        let orig: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(saved, orig, "{variant}: config.json round trip");
        let reloaded = load_model::<B>(out.path(), &Default::default()).unwrap();
        assert_eq!(logits(&model, &IDS), logits(&reloaded, &IDS), "{variant}");
    }
}

#[test]
fn save_sharded_bf16_with_tokenizer_files() {
    let src = model_dir("tiny-qwen2-chatml");
    let model = load_model::<B>(&src, &Default::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_model(&model, out.path(), SaveDtype::Bf16, Some(&src), 100_000).unwrap();
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert!(map.contains_key("lm_head.weight") && map.contains_key("model.norm.weight"));
    let shards: std::collections::BTreeSet<&str> =
        map.values().map(|v| v.as_str().unwrap()).collect();
    assert!(shards.len() > 1, "expected several shards, got {shards:?}");
    for s in &shards {
        assert!(out.path().join(s).exists());
        for (_, dtype, _, _) in read_entries(&out.path().join(s)) {
            assert_eq!(dtype, Dtype::BF16);
        }
    }
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.path().join(f).exists(), "{f} copied");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    assert!(std::fs::read_dir(out.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));
    let reloaded = load_model::<B>(out.path(), &Default::default()).unwrap();
    let (a, b) = (logits(&model, &IDS), logits(&reloaded, &IDS));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 0.05, "bf16 round trip diff {diff}");
}

#[test]
fn shipped_real_configs_parse_with_published_parameter_counts() {
    use longrl::model::Qwen2Config;
    for (name, params) in [
        ("Qwen2.5-0.5B-Instruct", 494_032_768usize),
        ("Qwen2.5-1.5B-Instruct", 1_543_714_304),
        ("Qwen2.5-7B-Instruct", 7_615_616_512),
        ("DeepSeek-R1-Distill-Qwen-14B", 14_770_033_664),
        ("DeepSeek-R1-Distill-Qwen-32B", 32_763_876_352),
        ("QwenLong-L1-32B", 32_763_876_352),
    ] {
        let c = Qwen2Config::from_file(model_dir(name)).unwrap();
        assert_eq!(c.num_parameters(), params, "{name}");
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"), "{name}");
    }
}
