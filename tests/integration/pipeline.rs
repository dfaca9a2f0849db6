//! A shortened QwenLong-L1 pipeline end to end on the tiny model (CPU): base evaluation, warm-up
//! SFT, two curriculum stages with retrospective sampling, a summary; then a resume across the
//! stage boundary that reproduces the uninterrupted run.

use crate::common;

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use common::model_dir;
use longrl::config::{parse_toml, ConfigRecord};
use longrl::pipeline::{self, PipelineFile, PipelineState};
use serde_json::Value;

type B = Autodiff<Flex>;

pub const CONFIG: &str = r#"
[model]
path = "MODEL"

[run]
run_dir = "RUN"
seed = 5
progress = false

[data]
synthetic = true
train_count = 30
eval_count = 6
sft_count = 8
min_tokens = 60

[sft]
max_steps = 2
batch_size = 4
micro_batch_tokens = 4096

[rl]
train_batch_size = 2
num_generations = 2
temperature = 1.0
top_p = 1.0
dynamic_sampling = false
ppo_mini_batch_size = 2
micro_batch_tokens = 8192

[rl.reward.rule]
require_think = false

[[stages]]
max_input_tokens = 220
max_output_tokens = 6
max_steps = 2

[[stages]]
max_input_tokens = 400
max_output_tokens = 6
max_steps = 2

[retrospective]
count = 2
weight = 2.0

[eval]
temperature = 0.0
max_new_tokens = 6
"#;

pub fn file(run_dir: &Path) -> PipelineFile {
    let text = CONFIG
        .replace("MODEL", model_dir("tiny-qwen2-chatml").to_str().unwrap())
        .replace("RUN", run_dir.to_str().unwrap());
    parse_toml(&text, Path::new("pipeline.toml")).unwrap()
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

/// The difficulty store as stage 1's last checkpoint saved it.
fn store_after_stage1(stage1: &Path) -> longrl::data::curriculum::DifficultyStore {
    let text = std::fs::read_to_string(stage1.join("checkpoints/latest")).unwrap();
    let ckpt = stage1.join("checkpoints").join(text.trim());
    let st: longrl::rl::RlState =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap())
            .unwrap();
    serde_json::from_value(st.observer).unwrap()
}

#[test]
fn shortened_pipeline_runs_end_to_end_and_resumes_across_a_stage() {
    let out = tempfile::tempdir().unwrap();
    let mut f = file(out.path());
    f.run.record = Some(ConfigRecord::of(&f, false).unwrap());
    let summary = pipeline::run::<B>(&f, None, false, Default::default()).unwrap();
    // The run recorded its config at the top, not in each phase's folder.
    let recorded = std::fs::read(out.path().join("config.toml")).unwrap();
    assert_eq!(recorded, f.run.record.as_ref().unwrap().text.as_bytes());
    assert!(!out.path().join("stage1/config.toml").exists());
    let names: Vec<&str> = summary.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["base", "sft", "stage1", "stage2"]);
    for p in &summary.phases {
        assert_eq!(p.n, 6);
        assert!((0.0..=1.0).contains(&p.accuracy));
        assert!(!p.by_task.is_empty() && !p.by_bucket.is_empty());
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(json["phases"].as_array().unwrap().len(), 4);
    assert!(out.path().join("summary.md").exists());

    // Stage 2 carried the two hardest stage-1 samples, and logged them.
    let state: PipelineState = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("pipeline_state.json")).unwrap(),
    )
    .unwrap();
    assert!(state.carried[0].is_empty());
    assert_eq!(state.carried[1].len(), 2);
    let carried: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("stage2/carried.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(carried, state.carried[1]);
    for id in &carried {
        assert!(
            state.difficulty.get(id).is_some(),
            "carried {id} was rolled out in stage 1"
        );
    }
    // The merged metrics carry their phase.
    let merged = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert!(merged.contains("\"phase\":\"stage2\"") && merged.contains("\"phase\":\"sft\""));
    for plot in ["reward.png", "entropy.png", "sft_loss.png"] {
        assert!(out.path().join("plots").join(plot).exists(), "{plot}");
    }

    // Interrupt after stage 1: stage 2's work is lost, the state says stage 1 is done.
    let stage2_final = weights(&out.path().join("stage2/final"));
    std::fs::remove_dir_all(out.path().join("stage2")).unwrap();
    let mut s = state.clone();
    s.phases.retain(|p| p.name != "stage2");
    s.difficulty = store_after_stage1(&out.path().join("stage1"));
    std::fs::write(
        out.path().join("pipeline_state.json"),
        serde_json::to_string(&s).unwrap(),
    )
    .unwrap();
    // A refused rerun (no --resume) leaves the record as it was.
    let mut other = f.clone();
    other.run.record = Some(ConfigRecord {
        text: "# another config\n".into(),
        force: false,
    });
    let e = pipeline::run::<B>(&other, None, false, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    assert_eq!(
        std::fs::read(out.path().join("config.toml")).unwrap(),
        recorded
    );
    let again = pipeline::run::<B>(&f, None, true, Default::default()).unwrap();
    assert_eq!(again.phases.len(), 4);
    assert_eq!(again.phases[3].accuracy, summary.phases[3].accuracy);
    assert!(
        weights(&out.path().join("stage2/final")) == stage2_final,
        "resumed stage 2 differs"
    );
}

#[test]
fn config_without_stages_is_a_clear_error() {
    let out = tempfile::tempdir().unwrap();
    let mut f = file(out.path());
    f.stages.clear();
    let e = pipeline::run::<B>(&f, None, false, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[[stages]]"), "{e}");
}

#[test]
fn a_stage_without_samples_is_refused_before_any_work() {
    let out = tempfile::tempdir().unwrap();
    let mut f = file(out.path());
    // A one-token band after the first stage: none of this seed's 30 prompts is 221 tokens long.
    let mut narrow = f.stages[0].clone();
    narrow.max_input_tokens = 221;
    f.stages.insert(1, narrow);
    let e = pipeline::run::<B>(&f, None, false, Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stages[1] (stage2)") && e.contains("(220, 221]"),
        "{e}"
    );
    assert!(!out.path().join("sft").exists(), "nothing ran");
}
