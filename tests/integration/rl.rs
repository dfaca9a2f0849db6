//! The GRPO/DAPO trainer on the tiny model (CPU, seeded): RL raises the mean reward of a simple
//! verifiable task, dynamic sampling refills the batch with informative groups, a resumed run ends
//! with the weights of an uninterrupted one, and `longrl rl` runs end to end from a TOML config
//! with the hybrid reward.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use common::{model_dir, LowIds};
use longrl::config::{ModelSection, RunSection};
use longrl::reward::{RewardItem, RewardOutput, RewardStats, Rewarder};
use longrl::rl::{self, RlConfig};
use longrl::train::OptimConfig;
use serde_json::Value;

type B = Autodiff<Flex>;

/// Accuracy set by the gold answer: "right" (all), "wrong" (none), "mixed" (every other rollout).
struct ByAnswer;

impl Rewarder for ByAnswer {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        let out = items
            .iter()
            .enumerate()
            .map(|(k, it)| {
                let acc = match it.ground_truth {
                    "right" => true,
                    "wrong" => false,
                    _ => k % 2 == 0,
                };
                let score = acc as u8 as f64;
                RewardOutput::from_score(score, acc)
            })
            .collect();
        Ok((out, RewardStats::default()))
    }
}

fn write_prompts(dir: &Path, answers: &[&str]) -> PathBuf {
    let mut text = String::new();
    for (i, a) in answers.iter().enumerate() {
        let line = serde_json::json!({"id": format!("p{i}"), "task": "qa", "prompt": format!("Question {i}: say something."), "answer": a});
        text.push_str(&format!("{line}\n"));
    }
    let p = dir.join("prompts.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn model() -> ModelSection {
    ModelSection::new(model_dir("tiny-qwen2-chatml"))
}

fn run(dir: &Path, save_steps: usize) -> RunSection {
    common::run_section(dir, 11, save_steps)
}

fn config(train_file: PathBuf, steps: usize) -> RlConfig {
    let mut c = RlConfig {
        train_file,
        max_steps: steps,
        train_batch_size: 4,
        num_generations: 8,
        temperature: 1.0,
        top_p: 1.0,
        max_response_length: 8,
        dynamic_sampling: false,
        ppo_mini_batch_size: 4,
        micro_batch_tokens: 256,
        optim: OptimConfig {
            lr: 1e-2,
            ..OptimConfig::default()
        },
        ..RlConfig::default()
    };
    c.loss.entropy_coeff = 0.0;
    c
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn rl_raises_the_mean_reward() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(write_prompts(data.path(), &["x"; 8]), 25);
    let summary = rl::train::<B>(
        &model(),
        &run(out.path(), 0),
        &cfg,
        Some(Arc::new(LowIds)),
        false,
        Default::default(),
    )
    .unwrap();
    let m = metrics(out.path());
    assert_eq!(m.len(), 25);
    let first: f64 = m[..3]
        .iter()
        .map(|r| r["rollout/score/mean"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    let last: f64 = m[22..]
        .iter()
        .map(|r| r["rollout/score/mean"].as_f64().unwrap())
        .sum::<f64>()
        / 3.0;
    assert!(first < 0.3, "a random policy starts low: {first}");
    assert!(last > first + 0.3, "mean reward {first} -> {last}");
    for key in [
        "actor/entropy",
        "actor/pg_clipfrac",
        "actor/ppo_kl",
        "actor/grad_norm",
        "response_length/mean",
        "timing_s/gen",
    ] {
        assert!(m[0][key].is_number(), "{key} missing: {}", m[0]);
    }
    assert!(summary.final_dir.join("model.safetensors").exists());
}

#[test]
fn dynamic_sampling_refills_the_batch_with_informative_groups() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(
        write_prompts(
            data.path(),
            &["right", "wrong", "mixed", "right", "wrong", "mixed"],
        ),
        2,
    );
    cfg.dynamic_sampling = true;
    cfg.train_batch_size = 2;
    cfg.gen_batch_size = 2;
    cfg.ppo_mini_batch_size = 1;
    cfg.num_generations = 4;
    cfg.max_num_gen_batches = 10;
    rl::train::<B>(
        &model(),
        &run(out.path(), 0),
        &cfg,
        Some(Arc::new(ByAnswer)),
        false,
        Default::default(),
    )
    .unwrap();
    for r in metrics(out.path()) {
        assert_eq!(r["train/groups_kept"], 2, "{r}");
        assert_eq!(
            r["critic/acc/mean"], 0.5,
            "only mixed groups are trained on: {r}"
        );
        assert!(r["train/num_gen_batches"].as_u64().unwrap() >= 2, "{r}");
        assert!(r["train/filtered_groups_frac"].as_f64().unwrap() > 0.0);
        assert_eq!(r["actor/updates"], 2, "two mini-batches of one group");
    }

    // A cap too small to fill the batch trains on what it has.
    let out2 = tempfile::tempdir().unwrap();
    cfg.max_num_gen_batches = 1;
    cfg.train_batch_size = 4;
    cfg.gen_batch_size = 3;
    rl::train::<B>(
        &model(),
        &run(out2.path(), 0),
        &cfg,
        Some(Arc::new(ByAnswer)),
        false,
        Default::default(),
    )
    .unwrap();
    for r in metrics(out2.path()) {
        assert_eq!(r["train/num_gen_batches"], 1);
        assert!(r["train/groups_kept"].as_u64().unwrap() < 4);
    }
}

#[test]
fn resumed_rl_run_ends_with_the_same_weights() {
    let data = tempfile::tempdir().unwrap();
    let cfg = config(write_prompts(data.path(), &["x"; 6]), 4);
    let a_dir = tempfile::tempdir().unwrap();
    let a = rl::train::<B>(
        &model(),
        &run(a_dir.path(), 2),
        &cfg,
        Some(Arc::new(LowIds)),
        false,
        Default::default(),
    )
    .unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    rl::train::<B>(
        &model(),
        &run(b_dir.path(), 2),
        &cfg,
        Some(Arc::new(LowIds)),
        false,
        Default::default(),
    )
    .unwrap();
    let ckpts = b_dir.path().join("checkpoints");
    std::fs::remove_dir_all(ckpts.join("step-00000004")).unwrap();
    std::fs::remove_dir_all(b_dir.path().join("final")).unwrap();
    std::fs::write(ckpts.join("latest"), "step-00000002").unwrap();
    let b = rl::train::<B>(
        &model(),
        &run(b_dir.path(), 2),
        &cfg,
        Some(Arc::new(LowIds)),
        true,
        Default::default(),
    )
    .unwrap();
    let w = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(
        w(&a.final_dir) == w(&b.final_dir),
        "resumed RL weights differ"
    );
    let ma = metrics(a_dir.path());
    let mb = metrics(b_dir.path());
    assert_eq!(mb.len(), 4);
    assert_eq!(ma[3]["rollout/score/mean"], mb[3]["rollout/score/mean"]);
}

#[test]
fn rl_cli_runs_from_a_toml_config_with_the_hybrid_reward() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("docs.jsonl");
    std::fs::write(
        &data,
        "{\"id\": \"a\", \"data_source\": \"docmath_v1\", \"document\": \"Revenue was 12 million.\", \"question\": \"What was revenue?\", \"answer\": \"12\"}\n\
         {\"id\": \"b\", \"data_source\": \"long_toc_choices_0_20000\", \"document\": \"Tom is taller than Ann.\", \"question\": \"Who is taller?\", \"choices\": [\"Tom\", \"Ann\"], \"answer\": \"A\"}\n",
    )
    .unwrap();
    let config = dir.path().join("rl.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {:?}\n\n[run]\nrun_dir = {:?}\nprogress = false\n\n[rl]\ntrain_file = \"docs.jsonl\"\nmax_steps = 2\ntrain_batch_size = 2\nnum_generations = 2\nmax_response_length = 6\nppo_mini_batch_size = 1\ndynamic_sampling = false\n\n[rl.loss]\nepsilon_high = 0.28\nbeta = 0.01\n\n[rl.reward]\noverlong_buffer_len = 2\n\n[rl.reward.rule]\nrequire_think = false\n",
            model_dir("tiny-qwen2-chatml"),
            dir.path().join("run"),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_longrl"))
        .args([
            "--device",
            "flex",
            "rl",
            "--config",
            config.to_str().unwrap(),
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["steps"], 2);
    let m = metrics(&dir.path().join("run"));
    assert_eq!(m.len(), 2);
    assert!(m[0]["actor/kl"].is_number());
    assert!(dir.path().join("run/final/config.json").exists());
    assert!(dir.path().join("run/config.toml").exists());

    // Running again without --resume is refused, and the finished run's record is untouched.
    let recorded = std::fs::read(dir.path().join("run/config.toml")).unwrap();
    let longrl = |extra: &[&str]| {
        let mut args = vec![
            "--device",
            "flex",
            "rl",
            "--config",
            config.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push("--quiet");
        Command::new(env!("CARGO_BIN_EXE_longrl"))
            .args(&args)
            .output()
            .unwrap()
    };
    let again = longrl(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    assert_eq!(
        std::fs::read(dir.path().join("run/config.toml")).unwrap(),
        recorded
    );
    // Resuming with another seed is refused without --force, naming the change.
    let reseeded = longrl(&["--resume", "--seed", "7"]);
    let e = String::from_utf8_lossy(&reseeded.stderr);
    assert!(!reseeded.status.success());
    assert!(
        e.contains("run.seed: 0 -> 7") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("run/config.toml")).unwrap(),
        recorded
    );
    let forced = longrl(&["--resume", "--seed", "7", "--force"]);
    assert!(
        forced.status.success(),
        "{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("run/config.toml")).unwrap();
    assert!(text.contains("seed = 7"), "{text}");

    // A typo in the config names the field; a config without a train file says so.
    std::fs::write(
        &config,
        "[model]\npath = \"m\"\n[rl]\ntrain_file = \"x\"\nnum_generation = 8\n",
    )
    .unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_longrl"))
        .args(["rl", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        e.contains("rl.toml:5") && e.contains("num_generation"),
        "{e}"
    );
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {:?}\n[run]\nrun_dir = {:?}\n[rl]\nmax_steps = 1\n",
            model_dir("tiny-qwen2-chatml"),
            dir.path().join("run2"),
        ),
    )
    .unwrap();
    let e = String::from_utf8_lossy(&longrl(&[]).stderr).to_string();
    assert!(e.contains("rl.train_file is required"), "{e}");
}

/// Rewards that are not numbers: every update fails.
struct Broken;

impl Rewarder for Broken {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        let (mut out, stats) = LowIds.reward(items)?;
        for o in &mut out {
            o.reward = f64::NAN;
        }
        Ok((out, stats))
    }
}

#[test]
fn a_run_whose_updates_are_all_skipped_fails_and_keeps_the_initial_weights() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = config(write_prompts(data.path(), &["x"; 4]), 2);
    let e = rl::train::<B>(
        &model(),
        &run(out.path(), 0),
        &cfg,
        Some(Arc::new(Broken)),
        false,
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("all 2 updates of the run were skipped") && e.contains("the first at step 1"),
        "{e}"
    );
    // Each step's record says what happened; nothing was saved as if trained.
    let records = metrics(out.path());
    assert_eq!(records.len(), 2);
    for r in records {
        assert_eq!(r["actor/skipped_updates"], 1, "{r}");
        assert_eq!(r["actor/updates"], 0);
    }
    assert!(!out.path().join("final").exists());
    assert!(!out.path().join("checkpoints/latest").exists());
}

/// Well-formed rewards for the first `good` calls, then rewards that are not numbers.
struct BreaksAfter {
    good: usize,
    calls: std::sync::atomic::AtomicUsize,
}

impl Rewarder for BreaksAfter {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if call < self.good {
            ByAnswer.reward(items)
        } else {
            Broken.reward(items)
        }
    }
}

#[test]
fn skipped_updates_in_a_row_stop_the_run_with_its_last_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(write_prompts(data.path(), &["mixed"; 4]), 6);
    cfg.optim.max_skipped_updates = 2;
    let go = |good: usize, resume: bool| {
        let rewarder = BreaksAfter {
            good,
            calls: Default::default(),
        };
        rl::train::<B>(
            &model(),
            &run(out.path(), 1),
            &cfg,
            Some(Arc::new(rewarder)),
            resume,
            Default::default(),
        )
        .unwrap_err()
        .to_string()
    };
    let e = go(1, false);
    assert!(
        e.contains("2 updates in a row were skipped")
            && e.contains("the first at step 2")
            && e.contains("rl.optim.max_skipped_updates = 2"),
        "{e}"
    );
    // Stopped at step 3, before its checkpoint: step 2's (holding step 1's weights, as the
    // skipped update never reached them) is the latest.
    assert_eq!(metrics(out.path()).len(), 3);
    let latest = std::fs::read_to_string(out.path().join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-00000002");
    // Resumed with the fault still there, the run goes on counting from its checkpoint: it
    // stops at step 3 again, naming the same first step, not two steps later.
    let e = go(0, true);
    assert!(
        e.contains("2 updates in a row were skipped") && e.contains("the first at step 2"),
        "{e}"
    );
    assert_eq!(metrics(out.path()).len(), 3);
}

/// LoRA RL with a KL term against the base (the policy with its adapters off, no second model),
/// per-layer recomputation on: a run killed after a checkpoint and resumed ends with the same
/// adapter, bit for bit, and the KL is measured.
#[test]
fn lora_rl_with_kl_resumes_bitwise() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(write_prompts(data.path(), &["x"; 6]), 4);
    cfg.loss.beta = 0.05;
    cfg.gradient_checkpointing = true;
    let mut section = model();
    section.lora = Some(longrl::model::LoraConfig {
        r: 4,
        lora_alpha: 16.0,
        target_modules: Some(longrl::model::TargetModules::Shorthand("all-linear".into())),
        ..Default::default()
    });
    let go = |dir: &Path, resume: bool| {
        rl::train::<B>(
            &section,
            &run(dir, 2),
            &cfg,
            Some(Arc::new(LowIds)),
            resume,
            Default::default(),
        )
        .unwrap()
    };
    let a_dir = tempfile::tempdir().unwrap();
    let a = go(a_dir.path(), false);
    let b_dir = tempfile::tempdir().unwrap();
    go(b_dir.path(), false);
    let ckpts = b_dir.path().join("checkpoints");
    std::fs::remove_dir_all(ckpts.join("step-00000004")).unwrap();
    std::fs::remove_dir_all(b_dir.path().join("final")).unwrap();
    std::fs::write(ckpts.join("latest"), "step-00000002").unwrap();
    let b = go(b_dir.path(), true);
    let w = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert!(
        w(&a.final_dir) == w(&b.final_dir),
        "resumed LoRA RL weights differ"
    );
    let m = metrics(a_dir.path());
    let kl: Vec<f64> = m
        .iter()
        .filter_map(|r| r["actor/kl_loss"].as_f64())
        .collect();
    assert_eq!(kl.len(), 4, "{m:?}");
    assert!(kl[0].abs() < 1e-6, "the adapters start at zero: KL {kl:?}");
    assert!(kl[3] > 0.0, "the policy moved from the base: KL {kl:?}");
}
