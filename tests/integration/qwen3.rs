//! Qwen3 dense end to end on the tiny random model `models/tiny-qwen3` (head_dim 24 != 64 / 4,
//! random q/k norm weights, no attention bias, tied embeddings): it loads as Qwen3, saves back in
//! the HF layout (config.json and the q/k norm tensors intact), takes LoRA adapters that save as
//! PEFT and merge, and trains in a short RL run with gradient checkpointing. Parity with
//! transformers (logits, per-token log-probs, gradients, KV-cached greedy) is in `parity.rs`.

use crate::common;

use std::path::Path;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Bool, Distribution, Int, Tensor, TensorData};
use common::{copy_dir, model_dir, read_safetensors, LowIds};
use longrl::config::ModelSection;
use longrl::model::{
    load_adapted, load_model, save_adapter, save_model, LoraConfig, ModelType, Qwen2Config,
    Qwen3ForCausalLM, SaveDtype, TargetModules,
};
use longrl::rl::{self, RlConfig};

type B = Flex;

const IDS: [i64; 9] = [1001, 17, 42, 301, 7, 999, 1007, 3, 1002];

fn tiny() -> std::path::PathBuf {
    model_dir("tiny-qwen3")
}

fn logits(model: &Qwen3ForCausalLM<B>, ids: &[i64]) -> Vec<f32> {
    let device = Default::default();
    let n = ids.len();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, n]), &device);
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [1, n]), &device);
    let pos =
        Tensor::<B, 2, Int>::from_data(TensorData::new((0..n as i64).collect(), [1, n]), &device);
    model
        .forward(input, mask, pos, None)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn tiny_qwen3_loads_with_q_k_norms_and_its_own_head_dim() {
    let model = load_model::<B>(tiny(), &Default::default()).unwrap();
    let c = model.config();
    assert_eq!(c.model_type, ModelType::Qwen3);
    assert_eq!(
        (c.hidden_size, c.num_attention_heads, c.head_dim),
        (64, 4, 24)
    );
    assert!(model.lm_head.is_none(), "tied embeddings");
    for layer in &model.model.layers {
        let a = &layer.self_attn;
        assert_eq!(a.q_proj.weight.val().dims(), [64, 4 * 24]);
        assert_eq!(a.k_proj.weight.val().dims(), [64, 2 * 24]);
        assert_eq!(a.o_proj.weight.val().dims(), [4 * 24, 64]);
        assert!(a.q_proj.bias.is_none() && a.o_proj.bias.is_none());
        for norm in [&a.q_norm, &a.k_norm] {
            let w: Vec<f32> = norm
                .as_ref()
                .expect("q/k norm")
                .weight
                .val()
                .into_data()
                .to_vec()
                .unwrap();
            assert_eq!(w.len(), 24);
            assert!(
                w.iter().any(|x| (x - 1.0).abs() > 1e-3),
                "norm weights are not all ones"
            );
        }
    }
    // KV-cached greedy decoding equals the cache-free argmax of the full forward.
    let cfg = longrl::generate::GreedyConfig {
        max_new_tokens: 6,
        stop_token_ids: vec![],
        pad_token_id: 0,
        prefill_chunk: 3,
        ..Default::default()
    };
    let prompt: Vec<u32> = IDS.iter().map(|&x| x as u32).collect();
    let out = longrl::generate::greedy(
        &model,
        std::slice::from_ref(&prompt),
        &cfg,
        &Default::default(),
    )
    .unwrap();
    let mut seq: Vec<i64> = IDS.to_vec();
    for &tok in &out[0].output_ids {
        let l = logits(&model, &seq);
        let v = l.len() / seq.len();
        let last = &l[l.len() - v..];
        let argmax = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        assert_eq!(tok as usize, argmax, "cached greedy vs full forward");
        seq.push(tok as i64);
    }
}

#[test]
fn save_round_trip_keeps_model_type_fields_and_q_k_norms() {
    let src = tiny();
    let model = load_model::<B>(&src, &Default::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_model(&model, out.path(), SaveDtype::F32, Some(&src), usize::MAX).unwrap();
    assert_eq!(
        json(&out.path().join("config.json")),
        json(&src.join("config.json")),
        "config.json round trip (model_type qwen3, head_dim, attention_bias, ...)"
    );
    let (a, b) = (
        read_safetensors(&src.join("model.safetensors")),
        read_safetensors(&out.path().join("model.safetensors")),
    );
    let mut names: Vec<&String> = b.keys().collect();
    names.sort();
    let mut want: Vec<&String> = a.keys().collect();
    want.sort();
    assert_eq!(names, want, "same tensor names as transformers wrote");
    for name in [
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.1.self_attn.k_norm.weight",
    ] {
        assert_eq!(b[name].shape, vec![24], "{name}");
        assert!(b[name].data == a[name].data, "{name} changed");
    }
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        assert_eq!(
            std::fs::read(out.path().join(file)).unwrap(),
            std::fs::read(src.join(file)).unwrap(),
            "{file}"
        );
    }
    let reloaded = load_model::<B>(out.path(), &Default::default()).unwrap();
    assert_eq!(logits(&model, &IDS), logits(&reloaded, &IDS));
}

#[test]
fn lora_on_qwen3_saves_as_peft_and_merges() {
    let src = tiny();
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: Some(TargetModules::Shorthand("all-linear".into())),
        ..Default::default()
    };
    let base = load_model::<B>(&src, &Default::default()).unwrap();
    let device = Default::default();
    let model = base
        .clone()
        .with_lora(&lora, 3)
        .unwrap()
        .map_projections(|_, _, mut p| {
            if let Some(l) = p.lora.as_mut() {
                let b = Tensor::random(l.b.val().dims(), Distribution::Normal(0.0, 0.05), &device);
                l.b = burn::module::Param::from_tensor(b);
            }
            Ok(p)
        })
        .unwrap();
    assert_eq!(
        model
            .projections()
            .iter()
            .filter(|(_, _, p)| p.lora.is_some())
            .count(),
        2 * 7,
        "q, k, v, o, gate, up, down in both layers"
    );
    let adapted = logits(&model, &IDS);
    assert!(
        max_diff(&adapted, &logits(&base, &IDS)) > 1e-3,
        "the adapters change the output"
    );

    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, &lora, "tiny-qwen3", dir.path(), Some(&src)).unwrap();
    let config = json(&dir.path().join("adapter_config.json"));
    assert_eq!(config["peft_type"], "LORA");
    let tensors = read_safetensors(&dir.path().join("adapter_model.safetensors"));
    // PEFT's key of layer 0's q_proj A: [r, in] = [4, 64]; o_proj's B: [out, r] = [64, 4].
    let a = &tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    assert_eq!(a.shape, vec![4, 64]);
    let b = &tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"];
    assert_eq!(b.shape, vec![64, 4]);
    let loaded = load_adapted::<B>(&src, Some(dir.path()), None, &Default::default()).unwrap();
    assert_eq!(logits(&loaded, &IDS), adapted, "PEFT folder round trip");

    let merged = model.merged();
    assert!(!merged.has_adapters());
    let d = max_diff(&logits(&merged, &IDS), &adapted);
    assert!(d < 1e-4, "merged vs adapted: {d}");
    let out = tempfile::tempdir().unwrap();
    save_model(&merged, out.path(), SaveDtype::F32, Some(&src), usize::MAX).unwrap();
    assert_eq!(json(&out.path().join("config.json"))["model_type"], "qwen3");
    let reloaded = load_model::<B>(out.path(), &Default::default()).unwrap();
    assert_eq!(logits(&reloaded, &IDS), logits(&merged, &IDS));
}

#[test]
fn rl_steps_run_on_qwen3_with_gradient_checkpointing() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let prompts = data.path().join("prompts.jsonl");
    let lines: String = (0..4)
        .map(|i| {
            let row = serde_json::json!({"id": format!("p{i}"), "task": "qa",
                "prompt": format!("Question {i}: say something."), "answer": "x"});
            format!("{row}\n")
        })
        .collect();
    std::fs::write(&prompts, lines).unwrap();
    let mut cfg = RlConfig {
        train_file: prompts,
        max_steps: 2,
        train_batch_size: 2,
        num_generations: 4,
        max_response_length: 6,
        dynamic_sampling: false,
        ppo_mini_batch_size: 2,
        micro_batch_tokens: 256,
        gradient_checkpointing: true,
        ..RlConfig::default()
    };
    cfg.loss.entropy_coeff = 0.0;
    let run = common::run_section(out.path(), 5, 0);
    // The template is named so the run does not depend on how chat_template.jinja is detected.
    let mut section = ModelSection::new(tiny());
    section.chat_template = Some("chatml".into());
    let summary = rl::train::<Autodiff<Flex>>(
        &section,
        &run,
        &cfg,
        Some(Arc::new(LowIds)),
        false,
        Default::default(),
    )
    .unwrap();
    let metrics = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);
    for line in metrics.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        let g = m["actor/grad_norm"].as_f64().unwrap();
        assert!(g.is_finite() && g > 0.0, "grad norm {g}");
    }
    let saved = summary.final_dir;
    assert_eq!(json(&saved.join("config.json"))["model_type"], "qwen3");
    let trained = load_model::<B>(&saved, &Default::default()).unwrap();
    let before = load_model::<B>(tiny(), &Default::default()).unwrap();
    let q = |m: &Qwen3ForCausalLM<B>| -> Vec<f32> {
        let n = m.model.layers[0].self_attn.q_norm.as_ref().unwrap();
        n.weight.val().into_data().to_vec().unwrap()
    };
    assert!(q(&trained) != q(&before), "the q norm weights train");
}

#[test]
fn config_errors_and_defaults() {
    // model_type qwen3 without head_dim: hidden / heads, as transformers defaults it.
    let dir = copy_dir(&tiny());
    let path = dir.path().join("config.json");
    let mut c = json(&path);
    c.as_object_mut().unwrap().remove("head_dim");
    std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(Qwen2Config::from_file(&path).unwrap().head_dim, 16);
    // ... which no longer matches the weights: every mis-shaped tensor is named.
    let e = load_model::<B>(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.0.self_attn.q_norm.weight"), "{e}");

    c["model_type"] = "llama".into();
    std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
    let e = load_model::<B>(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    for part in [
        "config.json",
        "`model_type`",
        "\"llama\"",
        "\"qwen2\"",
        "\"qwen3\"",
    ] {
        assert!(e.contains(part), "{part} missing from: {e}");
    }
}
