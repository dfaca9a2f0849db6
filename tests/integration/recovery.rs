//! Records that survive a kill (issue 24, items 5 and 6): a metrics log with an unfinished last
//! line is repaired on resume and still plotted; a fresh start over a stale log lists each step
//! once; a damaged latest checkpoint names itself and offers the previous one, from which the run
//! goes on after the damaged folder is deleted; `longrl info` refuses a weight file cut short.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::backend::{Autodiff, Flex};
use common::{copy_dir, model_dir};
use longrl::config::ModelSection;
use longrl::metrics::plot::{plot_run, read_metrics};
use longrl::sft::{self, SftConfig, SftSummary};
use longrl::train::OptimConfig;
use serde_json::Value;

type B = Autodiff<Flex>;

/// "Repeat: a b" -> "a b": a few dozen rows of a task the tiny model learns a little.
fn write_data(dir: &Path, name: &str, n: usize) -> PathBuf {
    let words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"];
    let mut text = String::new();
    for i in 0..n {
        let (a, b) = (words[i % 8], words[(3 * i + 1) % 8]);
        let row = serde_json::json!({"prompt": format!("Repeat: {a} {b}"), "response": format!("{a} {b}")});
        text.push_str(&format!("{row}\n"));
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn config(data: &Path, steps: usize) -> SftConfig {
    SftConfig {
        train_file: write_data(data, "train.jsonl", 32),
        valid_file: Some(write_data(data, "valid.jsonl", 8)),
        max_steps: steps,
        batch_size: 8,
        micro_batch_tokens: 96,
        optim: OptimConfig {
            lr: 3e-3,
            ..OptimConfig::default()
        },
        ..SftConfig::default()
    }
}

fn sft_run(
    dir: &Path,
    cfg: &SftConfig,
    save_steps: usize,
    resume: bool,
) -> longrl::Result<SftSummary> {
    let run = common::run_section(dir, 3, save_steps);
    let model = ModelSection::new(model_dir("tiny-qwen2-chatml"));
    sft::train::<B>(&model, &run, cfg, resume, Default::default())
}

/// Every line of the run's metrics log, each required to be a whole JSON record.
fn records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The steps of the records holding `key`, in log order.
fn steps_with(records: &[Value], key: &str) -> Vec<u64> {
    records
        .iter()
        .filter(|r| r.get(key).is_some() && r.get("final").is_none())
        .map(|r| r["step"].as_u64().unwrap())
        .collect()
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_resumed_run_drops_an_unfinished_metrics_line_and_lists_each_step_once() {
    let data = tempfile::tempdir().unwrap();
    let cfg = config(data.path(), 6);
    let dir = tempfile::tempdir().unwrap();
    sft_run(dir.path(), &cfg, 3, false).unwrap();
    // "Killed" while logging step 6 after the step-3 checkpoint: steps 4 and 5 are in the log,
    // step 6 only in part, and the checkpoint of step 6 and the final model are not written.
    let ckpts = dir.path().join("checkpoints");
    std::fs::remove_dir_all(ckpts.join("step-00000006")).unwrap();
    std::fs::remove_dir_all(dir.path().join("final")).unwrap();
    std::fs::write(ckpts.join("latest"), "step-00000003").unwrap();
    let log = dir.path().join("metrics.jsonl");
    let kept: String = records(dir.path())
        .iter()
        .filter(|r| r["step"].as_u64().unwrap() <= 5 && r.get("final").is_none())
        .map(|r| format!("{r}\n"))
        .collect();
    let whole_lines = kept.lines().count();
    std::fs::write(&log, kept).unwrap();
    append(&log, "{\"step\": 6, \"train/loss\": 0.4, \"train/l");
    // `plot` draws the log as the kill left it, skipping the unfinished line.
    assert_eq!(read_metrics(&log).unwrap().len(), whole_lines);
    assert!(!plot_run(dir.path()).unwrap().is_empty());

    sft_run(dir.path(), &cfg, 3, true).unwrap();
    let after = records(dir.path());
    assert_eq!(steps_with(&after, "train/loss"), [1, 2, 3, 4, 5, 6]);
    assert_eq!(steps_with(&after, "eval/loss"), [0]);
    assert_eq!(after.iter().filter(|r| r.get("final").is_some()).count(), 1);
    assert!(!plot_run(dir.path()).unwrap().is_empty());
}

#[test]
fn a_start_without_a_checkpoint_over_a_stale_log_lists_each_step_once() {
    let data = tempfile::tempdir().unwrap();
    let cfg = config(data.path(), 3);
    for resume in [false, true] {
        // A run killed before its first checkpoint left records and an unfinished line.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("metrics.jsonl");
        std::fs::write(
            &log,
            "{\"step\": 0, \"eval/loss\": 99.0}\n{\"step\": 1, \"train/loss\": 99.0}\n{\"step\": 2, ",
        )
        .unwrap();
        sft_run(dir.path(), &cfg, 0, resume).unwrap();
        let after = records(dir.path());
        assert_eq!(
            steps_with(&after, "train/loss"),
            [1, 2, 3],
            "resume {resume}"
        );
        assert_eq!(steps_with(&after, "eval/loss"), [0], "resume {resume}");
        assert!(
            after
                .iter()
                .all(|r| r["eval/loss"] != 99.0 && r["train/loss"] != 99.0),
            "stale records kept: {after:?}"
        );
    }
}

#[test]
fn a_damaged_checkpoint_names_itself_and_the_run_goes_on_from_the_previous_one() {
    let data = tempfile::tempdir().unwrap();
    let cfg = config(data.path(), 4);
    let straight = tempfile::tempdir().unwrap();
    let a = sft_run(straight.path(), &cfg, 2, false).unwrap();

    let dir = tempfile::tempdir().unwrap();
    sft_run(dir.path(), &cfg, 2, false).unwrap();
    std::fs::remove_dir_all(dir.path().join("final")).unwrap();
    let last = dir.path().join("checkpoints/step-00000004");
    // A file of the latest checkpoint cut short (a full disk, a crash of the file system).
    for file in ["model.safetensors", "optimizer.bin"] {
        let path = last.join(file);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let e = sft_run(dir.path(), &cfg, 2, true).unwrap_err().to_string();
        for part in [
            "step-00000004: damaged",
            file,
            "rm -r",
            "--resume",
            "step-00000002, the previous complete checkpoint",
        ] {
            assert!(e.contains(part), "{file}: `{part}` missing from: {e}");
        }
        std::fs::write(&path, whole).unwrap();
    }
    // The log is untouched by the refused starts.
    assert_eq!(steps_with(&records(dir.path()), "train/loss"), [1, 2, 3, 4]);
    // As the error says: delete the damaged checkpoint, resume, and the run redoes its steps.
    std::fs::remove_dir_all(&last).unwrap();
    let b = sft_run(dir.path(), &cfg, 2, true).unwrap();
    assert_eq!(a.final_valid_loss, b.final_valid_loss);
    assert!(
        std::fs::read(a.final_dir.join("model.safetensors")).unwrap()
            == std::fs::read(b.final_dir.join("model.safetensors")).unwrap(),
        "the run resumed from the previous checkpoint ends with other weights"
    );
    assert_eq!(steps_with(&records(dir.path()), "train/loss"), [1, 2, 3, 4]);
}

/// Runs the binary on the CPU backend.
fn longrl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longrl"))
        .args(["--device", "flex"])
        .args(args)
        .output()
        .expect("run longrl")
}

fn stderr(out: &Output) -> String {
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!e.contains("panicked"), "a panic instead of an error: {e}");
    e
}

#[test]
fn plot_skips_an_unfinished_last_line_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("metrics.jsonl");
    let whole = "{\"step\": 1, \"train/loss\": 1.0}\n{\"step\": 2, \"train/loss\": 0.8}\n";
    std::fs::write(&log, format!("{whole}{{\"step\": 3, \"train/lo")).unwrap();
    let run_dir = dir.path().to_str().unwrap();
    let out = longrl(&["plot", run_dir]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("{}:3:", log.display())) && err.contains("skipped"),
        "{err}"
    );
    assert!(dir.path().join("plots/sft_loss.png").exists());
    // A damaged line with records after it is an error naming it.
    std::fs::write(&log, format!("{{\"step\": 0, \"train/lo\n{whole}")).unwrap();
    let out = longrl(&["plot", run_dir]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains(&format!("{}:1:", log.display())), "{err}");
}

#[test]
fn info_on_a_weight_file_cut_short_is_an_error() {
    let model = copy_dir(&model_dir("tiny-qwen2-chatml"));
    let path = model.path().join("model.safetensors");
    let whole = std::fs::read(&path).unwrap();
    let dir = model.path().to_str().unwrap();
    let out = longrl(&["info", "--model", dir]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (keep, what) in [
        (whole.len() - 1, "1 bytes missing"),
        (40, "truncated inside its header"),
    ] {
        std::fs::write(&path, &whole[..keep]).unwrap();
        let out = longrl(&["info", "--model", dir, "--json"]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(out.stdout.is_empty(), "no summary of a damaged file");
        assert!(
            err.contains(&path.display().to_string()) && err.contains(what),
            "{err}"
        );
    }
}
