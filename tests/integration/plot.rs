//! `longrl plot`: PNG charts from a run's metrics.jsonl (SFT and RL phases on one global step
//! axis), only the charts whose metrics exist, and clear errors for bad logs.

use std::io::Write;
use std::path::{Path, PathBuf};

use longrl::metrics::plot::{plot_metrics, plot_run, read_metrics};
use longrl::Error;
use serde_json::{json, Value};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

fn write_metrics(dir: &Path, records: &[Value]) -> PathBuf {
    let path = dir.join("metrics.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for r in records {
        writeln!(f, "{r}").unwrap();
    }
    path
}

/// A warm-up SFT phase as `longrl sft` logs it: an eval at step 0, train loss every step, eval
/// every 4 steps, and a final eval at the last step.
fn sft_records(steps: u64) -> Vec<Value> {
    let mut out = vec![json!({"phase": "sft", "step": 0, "eval/loss": 2.4})];
    for step in 1..=steps {
        let loss = 2.3 * (-(step as f64) / 12.0).exp() + 0.6;
        let mut r = json!({"phase": "sft", "step": step, "train/loss": loss, "train/lr": 1e-5});
        if step % 4 == 0 {
            r["eval/loss"] = json!(loss + 0.15);
        }
        out.push(r);
    }
    out.push(json!({"phase": "sft", "step": steps, "eval/loss": 0.8, "final": true}));
    out
}

/// An RL stage with the trainer's metric names; `offset` shifts the curves so the stages differ.
fn rl_records(phase: &str, stage: u64, steps: u64, offset: f64) -> Vec<Value> {
    (1..=steps)
        .map(|step| {
            let t = step as f64 / steps as f64 + offset;
            let mut r = json!({
                "phase": phase,
                "stage": stage,
                "step": step,
                "critic/score/mean": 0.3 + 0.4 * t,
                "rollout/score/mean": 0.25 + 0.35 * t,
                "critic/acc/mean": 0.28 + 0.4 * t,
                "actor/entropy": 0.9 - 0.3 * t,
                "actor/kl": 0.001 * t,
                "actor/ppo_kl": 0.0004 * (1.0 + (step as f64).sin()),
                "actor/pg_clipfrac": 0.01 + 0.002 * (step % 3) as f64,
                "actor/pg_clipfrac_low": 0.004,
                "actor/pg_clipfrac_high": 0.006 + 0.002 * (step % 3) as f64,
                "response_length/mean": 900.0 + 400.0 * t,
                "response_length/min": 200.0 + 50.0 * t,
                "response_length/max": 2000.0 + 300.0 * t,
                "response_length/clip_ratio": 0.02,
                // The trainer writes NaN (no advantages kept) as null: that point is absent.
                "critic/advantages/max": Value::Null,
            });
            if step == 3 {
                r.as_object_mut().unwrap().remove("actor/entropy");
            }
            r
        })
        .collect()
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes[..8], PNG_SIGNATURE, "{} is not a PNG", path.display());
    assert!(
        bytes.len() > 10_000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn sft_and_rl_phases_give_every_chart() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = sft_records(20);
    records.extend(rl_records("stage1", 1, 30, 0.0));
    records.extend(rl_records("stage2", 2, 30, 0.5));
    write_metrics(dir.path(), &records);

    let written = plot_run(dir.path()).unwrap();
    assert_eq!(
        names(&written),
        [
            "reward.png",
            "entropy.png",
            "kl.png",
            "response_length.png",
            "clip_fraction.png",
            "sft_loss.png"
        ]
    );
    for path in &written {
        assert_eq!(path.parent().unwrap(), dir.path().join("plots"));
        assert!(path.exists());
        assert_png(path);
    }
}

#[test]
fn a_run_without_rl_metrics_gets_only_the_sft_loss() {
    let dir = tempfile::tempdir().unwrap();
    write_metrics(dir.path(), &sft_records(12));
    let written = plot_run(dir.path()).unwrap();
    assert_eq!(names(&written), ["sft_loss.png"]);
    assert_png(&written[0]);
    let on_disk: Vec<_> = std::fs::read_dir(dir.path().join("plots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, ["sft_loss.png"]);
}

#[test]
fn records_without_phases_and_single_points_are_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let records = vec![
        json!({"step": 1, "actor/entropy": 0.5}),
        json!({"step": 1, "actor/entropy": 0.7, "stage": 2}),
        json!({"step": 2, "train/loss": 1.0}),
    ];
    let written = plot_metrics(&records, &dir.path().join("out")).unwrap();
    assert_eq!(names(&written), ["entropy.png", "sft_loss.png"]);
    for path in &written {
        assert_png(path);
    }
}

#[test]
fn degenerate_values_are_drawn_or_skipped_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<Value> = (1..=6u64)
        .map(|step| {
            json!({
                "step": step,
                // The trainer logs f64::MAX as the minimum length of a batch without responses.
                "response_length/min": if step == 2 { f64::MAX } else { 10.0 },
                "response_length/max": 1e299,
                "actor/entropy": 0.5,
                "actor/kl": 0.25 + step as f64 * 1e-17,
                "actor/pg_clipfrac": 0.0,
                "critic/score/mean": -1.0 + step as f64 * 1e-12,
                "train/loss": "not a number",
            })
        })
        .collect();
    let written = plot_metrics(&records, dir.path()).unwrap();
    assert_eq!(
        names(&written),
        [
            "reward.png",
            "entropy.png",
            "kl.png",
            "response_length.png",
            "clip_fraction.png"
        ]
    );
    for path in &written {
        assert_png(path);
    }
    let only_sentinels = [json!({"step": 1, "response_length/min": f64::MAX})];
    assert!(plot_metrics(&only_sentinels, dir.path())
        .unwrap()
        .is_empty());
}

#[test]
fn a_log_without_known_metrics_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_metrics(dir.path(), &[json!({"step": 1, "timing_s/step": 3.0})]);
    assert!(plot_run(dir.path()).unwrap().is_empty());
    assert!(!dir.path().join("plots").exists());
}

#[test]
fn a_bad_line_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    // A bad line before the last one is an error (only an unfinished last line is skipped).
    std::fs::write(
        &path,
        "{\"step\": 1, \"train/loss\": 1.0}\n\n{\"step\": 2, \"train/loss\": 0.9\n{\"step\": 3}\n",
    )
    .unwrap();
    let err = plot_run(dir.path()).unwrap_err();
    match &err {
        Error::Input { path: p, line, .. } => {
            assert_eq!(p, &path);
            assert_eq!(*line, 3);
        }
        other => panic!("expected an input error, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:3:", path.display())),
        "{text}"
    );
    assert!(text.contains("not valid JSON"), "{text}");
    assert!(!dir.path().join("plots").exists());

    std::fs::write(
        &path,
        "{\"step\": 1}\n{\"train/loss\": 0.9}\n{\"step\": 3}\n",
    )
    .unwrap();
    let text = read_metrics(&path).unwrap_err().to_string();
    assert_eq!(text, format!("{}:2: missing \"step\"", path.display()));

    std::fs::write(&path, "[1, 2]\n\n{\"step\": 3}\n").unwrap();
    let text = plot_run(dir.path()).unwrap_err().to_string();
    assert!(
        text.starts_with(&format!("{}:1:", path.display())),
        "{text}"
    );

    let records = [json!({"step": -1, "train/loss": 1.0})];
    let text = plot_metrics(&records, dir.path()).unwrap_err().to_string();
    assert!(text.contains("metrics record 1"), "{text}");
}

#[test]
fn a_missing_metrics_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = plot_run(dir.path()).unwrap_err().to_string();
    let expected = dir.path().join("metrics.jsonl").display().to_string();
    assert!(text.contains(&expected), "{text}");
    assert!(text.contains("not found"), "{text}");
}

/// A run killed while appending a record leaves an unfinished last line: the log is still read
/// (the line skipped), and the charts are drawn.
#[test]
fn an_unfinished_last_line_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_metrics(dir.path(), &sft_records(6));
    let whole = read_metrics(&path).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    write!(f, "{{\"phase\": \"sft\", \"step\": 7, \"train/lo").unwrap();
    drop(f);
    assert_eq!(read_metrics(&path).unwrap(), whole);
    assert_eq!(names(&plot_run(dir.path()).unwrap()), ["sft_loss.png"]);
    // A complete last line that is not a record is skipped too; blank lines after it do not
    // make it a middle line.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n\n");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(read_metrics(&path).unwrap(), whole);
}
