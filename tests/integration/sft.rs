//! Warm-up SFT on the tiny model (CPU, seeded): the held-out loss goes down on a small structured
//! task; a run stopped after a checkpoint and resumed ends with exactly the weights of an
//! uninterrupted run; per-layer gradient checkpointing follows the same loss curve, and bf16
//! mixed precision close to it; interrupted
//! checkpoint writes are ignored; config errors name the field.

use crate::common;

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use common::model_dir;
use longrl::config::{parse_toml, ModelSection, RunSection};
use longrl::sft::{self, SftConfig, SftFile};
use longrl::train::{LrSchedule, OptimConfig, RunDir};

type B = Autodiff<Flex>;

const WORDS: [&str; 8] = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"];

/// "Repeat twice: a b" -> "a b a b": learnable from the prompt alone.
fn write_data(dir: &Path, name: &str, n: usize, offset: usize) -> PathBuf {
    let mut text = String::new();
    for i in 0..n {
        let k = i + offset;
        let a = WORDS[k % 8];
        let b = WORDS[(k / 8 + 3 * k) % 8];
        let line = serde_json::json!({
            "prompt": format!("Repeat twice: {a} {b}"),
            "response": format!("{a} {b} {a} {b}"),
        });
        text.push_str(&format!("{line}\n"));
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn config(dir: &Path, steps: usize) -> SftConfig {
    SftConfig {
        train_file: write_data(dir, "train.jsonl", 48, 0),
        valid_file: Some(write_data(dir, "valid.jsonl", 8, 100)),
        max_steps: steps,
        batch_size: 8,
        micro_batch_tokens: 96,
        optim: OptimConfig {
            lr: 3e-3,
            warmup_steps: 2,
            lr_scheduler: LrSchedule::Cosine,
            ..OptimConfig::default()
        },
        ..SftConfig::default()
    }
}

fn model() -> ModelSection {
    ModelSection::new(model_dir("tiny-qwen2-chatml"))
}

fn run(dir: &Path, save_steps: usize) -> RunSection {
    common::run_section(dir, 3, save_steps)
}

#[test]
fn sft_lowers_the_held_out_loss() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let summary = sft::train::<B>(
        &model(),
        &run(out.path(), 0),
        &config(data.path(), 30),
        false,
        Default::default(),
    )
    .unwrap();
    let (before, after) = (
        summary.initial_valid_loss.unwrap(),
        summary.final_valid_loss.unwrap(),
    );
    assert!(after < 0.6 * before, "held-out loss {before} -> {after}");
    // The final model is a loadable HF folder, and the metrics log has every step.
    let reloaded = longrl::model::load_model::<Flex>(&summary.final_dir, &Default::default());
    assert!(reloaded.is_ok());
    assert!(summary.final_dir.join("tokenizer.json").exists());
    let log = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("train/loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=30).collect::<Vec<u64>>());
}

/// The per-step training losses of a run's metrics log.
fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("train/loss").and_then(|x| x.as_f64()))
        .collect()
}

/// Per-step training losses of two 6-step runs on the same data, the second with `variant`
/// applied to the config, and the second run's directory.
fn paired_losses(
    variant: impl Fn(SftConfig) -> SftConfig,
) -> (Vec<f64>, Vec<f64>, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let (base, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (out, config) in [
        (&base, config(data.path(), 6)),
        (&other, variant(config(data.path(), 6))),
    ] {
        sft::train::<B>(
            &model(),
            &run(out.path(), 0),
            &config,
            false,
            Default::default(),
        )
        .unwrap();
    }
    let (a, b) = (losses(base.path()), losses(other.path()));
    assert_eq!(a.len(), 6);
    assert_eq!(a.len(), b.len());
    (a, b, other)
}

#[test]
fn gradient_checkpointing_follows_the_same_loss_curve() {
    let (a, b, _) = paired_losses(|c| SftConfig {
        gradient_checkpointing: true,
        ..c
    });
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "step {}: loss {x} vs {y}",
            step + 1
        );
    }
}

#[test]
fn bf16_mixed_precision_follows_the_f32_loss_curve() {
    let (a, b, bf16_run) = paired_losses(|c| SftConfig { bf16: true, ..c });
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 0.03 * x.abs(),
            "step {}: loss {x} (f32) vs {y} (bf16)",
            step + 1
        );
    }
    // The final model of the bf16 run is saved and loads.
    let reloaded =
        longrl::model::load_model::<Flex>(&bf16_run.path().join("final"), &Default::default());
    assert!(reloaded.is_ok());
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    let data = tempfile::tempdir().unwrap();
    let cfg = config(data.path(), 6);
    let straight = tempfile::tempdir().unwrap();
    let a = sft::train::<B>(
        &model(),
        &run(straight.path(), 3),
        &cfg,
        false,
        Default::default(),
    )
    .unwrap();

    // The same run, "killed" after its step-3 checkpoint: everything later is removed, including
    // a half-written step-6 checkpoint and the final model.
    let resumed = tempfile::tempdir().unwrap();
    sft::train::<B>(
        &model(),
        &run(resumed.path(), 3),
        &cfg,
        false,
        Default::default(),
    )
    .unwrap();
    let ckpts = resumed.path().join("checkpoints");
    std::fs::remove_dir_all(ckpts.join("step-00000006")).unwrap();
    std::fs::remove_dir_all(resumed.path().join("final")).unwrap();
    std::fs::create_dir_all(ckpts.join(".tmp-step-00000006")).unwrap();
    std::fs::write(
        ckpts.join(".tmp-step-00000006/model.safetensors"),
        b"partial",
    )
    .unwrap();
    std::fs::write(ckpts.join("latest"), "step-00000006").unwrap();

    // Without --resume the run directory is protected.
    let e = sft::train::<B>(
        &model(),
        &run(resumed.path(), 3),
        &cfg,
        false,
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("--resume"), "{e}");

    let b = sft::train::<B>(
        &model(),
        &run(resumed.path(), 3),
        &cfg,
        true,
        Default::default(),
    )
    .unwrap();
    assert!(
        !ckpts.join(".tmp-step-00000006").exists(),
        "stale temp folder removed"
    );
    assert_eq!(a.final_valid_loss, b.final_valid_loss);
    assert!(
        weights(&a.final_dir) == weights(&b.final_dir),
        "resumed weights differ from the uninterrupted run"
    );
    // The metrics log of the resumed run lists each step once.
    let log = std::fs::read_to_string(resumed.path().join("metrics.jsonl")).unwrap();
    let train_steps = log.lines().filter(|l| l.contains("train/loss")).count();
    assert_eq!(train_steps, 6);
}

#[test]
fn incomplete_checkpoints_are_never_resumed_from() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::open(dir.path()).unwrap();
    assert!(run_dir.latest().unwrap().is_none());
    let ckpts = dir.path().join("checkpoints");
    std::fs::create_dir_all(ckpts.join("step-00000002")).unwrap();
    std::fs::write(ckpts.join("step-00000002/trainer_state.json"), "{}").unwrap();
    // A newer folder without its trainer state is a write that did not finish.
    std::fs::create_dir_all(ckpts.join("step-00000004")).unwrap();
    assert_eq!(
        run_dir.latest().unwrap().unwrap().file_name().unwrap(),
        "step-00000002"
    );
}

#[test]
fn config_errors_name_the_line_and_field() {
    let path = Path::new("configs/bad.toml");
    let text = "[model]\npath = \"m\"\n\n[sft]\ntrain_file = \"t.jsonl\"\nbatch_sise = 4\n";
    let e = parse_toml::<SftFile>(text, path).unwrap_err().to_string();
    assert!(e.contains("bad.toml:6") && e.contains("batch_sise"), "{e}");
    let text = "[model]\npath = \"m\"\n[sft]\ntrain_file = \"t\"\n[sft.optim]\nlr = \"high\"\n";
    let e = parse_toml::<SftFile>(text, path).unwrap_err().to_string();
    assert!(
        e.contains("bad.toml:6") && e.contains("invalid type"),
        "{e}"
    );
    let ok: SftFile =
        parse_toml("[model]\npath = \"m\"\n[sft]\ntrain_file = \"t\"\n", path).unwrap();
    assert_eq!(ok.sft.batch_size, 8);
}

fn lora_model() -> ModelSection {
    let mut m = model();
    m.lora = Some(longrl::model::LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: Some(longrl::model::TargetModules::Shorthand("all-linear".into())),
        ..Default::default()
    });
    m
}

/// LoRA SFT: only the adapters train (the final folder is a PEFT adapter, nothing else), the
/// loss goes down, and a run killed after a checkpoint and resumed ends with the same adapter,
/// bit for bit.
#[test]
fn lora_sft_trains_the_adapters_and_resumes_bitwise() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path(), 6);
    cfg.optim.lr = 2e-2;
    let straight = tempfile::tempdir().unwrap();
    let a = sft::train::<B>(
        &lora_model(),
        &run(straight.path(), 3),
        &cfg,
        false,
        Default::default(),
    )
    .unwrap();
    assert!(a.final_valid_loss.unwrap() < a.initial_valid_loss.unwrap());
    let files: Vec<String> = std::fs::read_dir(&a.final_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.contains(&"adapter_model.safetensors".to_string()),
        "{files:?}"
    );
    assert!(
        !files.contains(&"model.safetensors".to_string()),
        "{files:?}"
    );

    let resumed = tempfile::tempdir().unwrap();
    sft::train::<B>(
        &lora_model(),
        &run(resumed.path(), 3),
        &cfg,
        false,
        Default::default(),
    )
    .unwrap();
    let ckpts = resumed.path().join("checkpoints");
    std::fs::remove_dir_all(ckpts.join("step-00000006")).unwrap();
    std::fs::remove_dir_all(resumed.path().join("final")).unwrap();
    std::fs::write(ckpts.join("latest"), "step-00000003").unwrap();
    let b = sft::train::<B>(
        &lora_model(),
        &run(resumed.path(), 3),
        &cfg,
        true,
        Default::default(),
    )
    .unwrap();
    let w = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert!(
        w(&a.final_dir) == w(&b.final_dir),
        "resumed LoRA weights differ"
    );
    assert_eq!(a.final_valid_loss, b.final_valid_loss);
    // The base is untouched: the adapted model with its adapters off is the base, bit for bit.
    let adapted = longrl::model::load_adapted::<Flex>(
        &model().path,
        Some(&a.final_dir),
        None,
        &Default::default(),
    )
    .unwrap();
    let base = longrl::model::load_model::<Flex>(&model().path, &Default::default()).unwrap();
    let ids = [1u32, 5, 9, 13, 2, 7];
    let dev = Default::default();
    assert_eq!(
        adapted
            .without_adapters()
            .sequence_logprobs(&ids, 64, &dev)
            .unwrap(),
        base.sequence_logprobs(&ids, 64, &dev).unwrap()
    );
    // Dropout and per-layer recomputation do not go together.
    let mut dropout = lora_model();
    dropout.lora.as_mut().unwrap().lora_dropout = 0.1;
    let e = sft::train::<B>(
        &dropout,
        &run(tempfile::tempdir().unwrap().path(), 0),
        &SftConfig {
            gradient_checkpointing: true,
            ..cfg
        },
        false,
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("lora.lora_dropout") && e.contains("gradient_checkpointing"),
        "{e}"
    );
}

/// A bf16 base (`base_dtype`): the frozen weights stay bf16, the adapters and their optimiser
/// state f32, and the held-out loss still goes down.
#[test]
fn lora_sft_on_a_bf16_base() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path(), 6);
    cfg.optim.lr = 2e-2;
    let mut section = lora_model();
    section.base_dtype = Some("bfloat16".into());
    let dev = Default::default();
    let model = section.load_trainable::<B>(None, 0, &dev).unwrap();
    let q = &model.model.layers[0].self_attn.q_proj;
    assert_eq!(q.weight.val().dtype(), burn::tensor::DType::BF16);
    assert_eq!(
        q.lora.as_ref().unwrap().a.val().dtype(),
        burn::tensor::DType::F32
    );
    let out = tempfile::tempdir().unwrap();
    let s = sft::train::<B>(&section, &run(out.path(), 0), &cfg, false, dev).unwrap();
    assert!(
        s.final_valid_loss.unwrap() < s.initial_valid_loss.unwrap(),
        "{s:?}"
    );
    let adapter = common::read_safetensors(&s.final_dir.join("adapter_model.safetensors"));
    assert_eq!(adapter.len(), 2 * 7 * 2);
}

/// `bf16 = true` where the device holds no bf16 (WGSL on lavapipe): a clear error naming the
/// key, before anything is trained.
#[cfg(feature = "wgpu")]
#[test]
fn bf16_on_a_device_without_bf16_is_a_clear_error() {
    use burn::tensor::backend::Backend;
    type W = Autodiff<burn::backend::Wgpu>;
    let device = burn::backend::wgpu::WgpuDevice::default();
    if W::supports_dtype(&device, burn::tensor::DType::BF16) {
        eprintln!("skipping: this wgpu adapter holds bf16");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = SftConfig {
        bf16: true,
        ..config(data.path(), 1)
    };
    let err = sft::train::<W>(&model(), &run(out.path(), 0), &cfg, false, device)
        .expect_err("bf16 on a device without bf16");
    assert!(err.to_string().contains("sft.bf16"), "{err}");
}
