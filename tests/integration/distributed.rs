//! Data parallelism on CPU (seeded): two `flex` workers in one process take the same SFT and RL
//! steps as one worker over the same global batch (token-mean and seq-mean-token-mean, dynamic
//! sampling on); a 2-worker run resumed on 1 worker ends where an uninterrupted 2-worker run
//! does; a failing, panicking or silent worker stops the run with an error naming it; two
//! processes on loopback (node ranks 0 and 1) train like one, and a killed peer stops the other
//! within its timeout, as does a judge outage on one worker; `longrl sft|rl|pipeline --devices
//! flex,flex` run from the command line.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use common::{model_dir, read_safetensors};
use longrl::config::{ModelSection, RunSection};
use longrl::distributed::{launch, DistributedSection, Plan, Worker};
use longrl::reward::{RewardItem, RewardOutput, RewardStats, Rewarder};
use longrl::rl::loss::LossAggMode;
use longrl::rl::{self, RlConfig};
use longrl::sft::{self, SftConfig};
use longrl::train::OptimConfig;
use longrl::DeviceSpec;

type B = Autodiff<Flex>;

fn plan(workers: usize) -> Plan {
    DistributedSection {
        devices: vec!["flex".into(); workers],
        timeout_s: 120.0,
        ..DistributedSection::default()
    }
    .plan(DeviceSpec::Flex)
    .unwrap()
}

fn model() -> ModelSection {
    ModelSection::new(model_dir("tiny-qwen2-chatml"))
}

fn run_section(dir: &Path, save_steps: usize) -> RunSection {
    common::run_section(dir, 5, save_steps)
}

/// Asserts that two saved models hold the same weights: for every tensor,
/// `|a - b| / |a| <= tol` (L2 norms).
///
/// The key projections' biases are left out: their exact gradient is zero (a bias on the keys
/// adds the same amount to every score of a softmax row), so what they get is rounding noise,
/// which Adam scales up to full-size steps of random sign.
fn assert_same_weights(a: &Path, b: &Path, tol: f64) {
    let wa = read_safetensors(&a.join("model.safetensors"));
    let wb = read_safetensors(&b.join("model.safetensors"));
    assert_eq!(wa.len(), wb.len());
    let mut worst = (0.0f64, String::new());
    for (name, x) in wa.iter().filter(|(n, _)| !n.ends_with("k_proj.bias")) {
        let y = &wb[name];
        let diff: f64 = x
            .data
            .iter()
            .zip(&y.data)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = x.data.iter().map(|p| p * p).sum::<f64>().sqrt();
        let rel = diff / norm.max(1e-12);
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    assert!(
        worst.0 <= tol,
        "{} differs by {:.2e} (relative) between {} and {}",
        worst.1,
        worst.0,
        a.display(),
        b.display()
    );
}

/// Asserts that a model moved away from the starting checkpoint (so equality means something).
fn assert_trained(dir: &Path) {
    let start = read_safetensors(&model_dir("tiny-qwen2-chatml").join("model.safetensors"));
    let end = read_safetensors(&dir.join("model.safetensors"));
    let moved = start
        .iter()
        .any(|(k, v)| v.data.iter().zip(&end[k].data).any(|(a, b)| a != b));
    assert!(moved, "{} equals the starting model", dir.display());
}

const WORDS: [&str; 8] = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"];

fn sft_config(dir: &Path, steps: usize) -> SftConfig {
    let mut text = String::new();
    for k in 0..24 {
        let (a, b) = (WORDS[k % 8], WORDS[(3 * k + 1) % 8]);
        let line = serde_json::json!({
            "prompt": format!("Repeat twice: {a} {b}"),
            "response": format!("{a} {b} {a} {b}"),
        });
        text.push_str(&format!("{line}\n"));
    }
    let train_file = dir.join("sft.jsonl");
    std::fs::write(&train_file, &text).unwrap();
    SftConfig {
        train_file: train_file.clone(),
        valid_file: Some(train_file),
        max_steps: steps,
        batch_size: 5,
        micro_batch_tokens: 64,
        optim: OptimConfig {
            lr: 1e-3,
            ..OptimConfig::default()
        },
        ..SftConfig::default()
    }
}

fn sft_on(plan: &Plan, cfg: &SftConfig, run: &RunSection, resume: bool) -> sft::SftSummary {
    let (cfg, run, model) = (cfg.clone(), run.clone(), model());
    launch(plan, move |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            sft::train_with::<B>(&model, &run, &cfg, resume, Default::default(), &w)
        })
    })
    .unwrap()
}

#[test]
fn sft_on_two_workers_takes_the_single_device_step() {
    let data = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = sft_config(data.path(), 3);
    let a = sft_on(&plan(1), &cfg, &run_section(one.path(), 0), false);
    let b = sft_on(&plan(2), &cfg, &run_section(two.path(), 0), false);
    assert_trained(&a.final_dir);
    assert_same_weights(&a.final_dir, &b.final_dir, 1e-5);
    // Losses are global on both.
    let (la, lb) = (a.last_train_loss, b.last_train_loss);
    assert!((la - lb).abs() <= 1e-5 * la.abs(), "{la} vs {lb}");
    let (va, vb) = (a.final_valid_loss.unwrap(), b.final_valid_loss.unwrap());
    assert!((va - vb).abs() <= 1e-5 * va.abs(), "{va} vs {vb}");
}

/// Accuracy from the response alone (never from its place in a batch): prompts answered "wrong"
/// are never right (dynamic sampling drops their groups); others are right when the first token
/// is even.
struct EvenFirst;

impl Rewarder for EvenFirst {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        let out = items
            .iter()
            .map(|it| {
                let acc = it.ground_truth != "wrong"
                    && it.response_ids.first().is_some_and(|t| t % 2 == 0);
                let score = it.response_ids.iter().filter(|&&t| t % 3 == 0).count() as f64
                    / it.response_ids.len().max(1) as f64;
                RewardOutput::from_score(if acc { 1.0 } else { score * 0.5 }, acc)
            })
            .collect();
        let stats = RewardStats {
            items: items.len(),
            ..RewardStats::default()
        };
        Ok((out, stats))
    }
}

fn rl_config(dir: &Path, steps: usize, mode: LossAggMode) -> RlConfig {
    let answers = ["x", "wrong", "x", "x", "wrong", "x", "x", "x", "wrong", "x"];
    let mut text = String::new();
    for (i, a) in answers.iter().enumerate() {
        let line = serde_json::json!({"id": format!("p{i}"), "task": "qa",
            "prompt": format!("Question {i}: say something."), "answer": a});
        text.push_str(&format!("{line}\n"));
    }
    let train_file = dir.join("prompts.jsonl");
    std::fs::write(&train_file, text).unwrap();
    let mut c = RlConfig {
        train_file,
        max_steps: steps,
        train_batch_size: 4,
        gen_batch_size: 4,
        num_generations: 4,
        temperature: 1.0,
        top_p: 1.0,
        max_response_length: 6,
        dynamic_sampling: true,
        ppo_mini_batch_size: 2,
        micro_batch_tokens: 64,
        mask_truncated_completions: false,
        // Large enough that a wrong weighting of the workers' gradients shows in the weights
        // (Adam's update barely depends on the gradient's scale). Adam's epsilon is far above
        // the rounding noise of a sum (which differs between one and two workers): with 1e-8,
        // an element whose exact gradient is zero moves by a full step of the noise's sign.
        optim: OptimConfig {
            lr: 1e-2,
            adam_epsilon: 1e-4,
            ..OptimConfig::default()
        },
        ..RlConfig::default()
    };
    c.loss.loss_agg_mode = mode;
    c
}

fn rl_on(plan: &Plan, cfg: &RlConfig, run: &RunSection, resume: bool) -> rl::RlSummary {
    let (cfg, run, model) = (cfg.clone(), run.clone(), model());
    launch(plan, move |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            rl::train_with::<B>(
                &model,
                &run,
                &cfg,
                Some(Arc::new(EvenFirst)),
                resume,
                Default::default(),
                &w,
            )
        })
    })
    .unwrap()
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rl_matches(mode: LossAggMode) {
    let data = tempfile::tempdir().unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = rl_config(data.path(), 2, mode);
    let a = rl_on(&plan(1), &cfg, &run_section(one.path(), 0), false);
    let b = rl_on(&plan(2), &cfg, &run_section(two.path(), 0), false);
    assert_trained(&a.final_dir);
    assert_same_weights(&a.final_dir, &b.final_dir, 1e-5);
    // The same groups were kept and filtered, and the metrics are global.
    let (ma, mb) = (metrics(one.path()), metrics(two.path()));
    assert_eq!(ma.len(), 2);
    for (x, y) in ma.iter().zip(&mb) {
        for key in [
            "train/groups_kept",
            "train/num_gen_batches",
            "reward/judge_calls",
            "actor/updates",
        ] {
            assert_eq!(x[key], y[key], "{key}");
        }
        for key in [
            "rollout/score/mean",
            "critic/rewards/mean",
            "response_length/mean",
            "actor/pg_loss",
            "actor/entropy",
            "actor/grad_norm",
        ] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!(
                (p - q).abs() <= 1e-4 * p.abs().max(1e-3),
                "{key}: {p} vs {q}"
            );
        }
    }
    assert!(
        ma.iter()
            .any(|m| m["train/filtered_groups_frac"].as_f64().unwrap() > 0.0),
        "dynamic sampling filtered nothing: {ma:?}"
    );
}

#[test]
fn rl_on_two_workers_takes_the_single_device_step_token_mean() {
    rl_matches(LossAggMode::TokenMean);
}

#[test]
fn rl_on_two_workers_takes_the_single_device_step_seq_mean_token_mean() {
    rl_matches(LossAggMode::SeqMeanTokenMean);
}

#[test]
fn a_two_worker_run_resumes_on_one_worker() {
    let data = tempfile::tempdir().unwrap();
    let (whole, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = rl_config(data.path(), 3, LossAggMode::TokenMean);
    let a = rl_on(&plan(2), &cfg, &run_section(whole.path(), 0), false);
    // The same run checkpointing at step 2, cut back to that checkpoint, finished on one worker.
    let run = run_section(split.path(), 2);
    rl_on(&plan(2), &cfg, &run, false);
    let ckpts = split.path().join("checkpoints");
    std::fs::remove_dir_all(ckpts.join("step-00000003")).unwrap();
    std::fs::remove_dir_all(split.path().join("final")).unwrap();
    std::fs::write(ckpts.join("latest"), "step-00000002").unwrap();
    let b = rl_on(&plan(1), &cfg, &run, true);
    assert_same_weights(&a.final_dir, &b.final_dir, 1e-5);
    assert_eq!(metrics(split.path()).len(), 3);
}

#[test]
fn a_failing_worker_stops_the_run_and_is_named() {
    let t0 = Instant::now();
    let err = launch(&plan(2), |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            if w.rank == 1 {
                return Err(longrl::Error::Invalid("disk full".into()));
            }
            // Rank 0 waits for a peer that never comes.
            w.barrier::<Flex>("step 1: summing gradients", &Default::default())?;
            Ok(())
        })
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("worker 1 (flex) failed: disk full"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    // A panic is reported too, and the collective is usable again afterwards.
    let err = launch(&plan(2), |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            if w.rank == 0 {
                panic!("out of memory");
            }
            w.barrier::<Flex>("step 1", &Default::default())
        })
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("worker 0 (flex) panicked: out of memory"),
        "{err}"
    );
    // A worker that goes silent: the other gives up after timeout_s and names it.
    let quick = DistributedSection {
        devices: vec!["flex".into(); 2],
        timeout_s: 1.0,
        ..DistributedSection::default()
    }
    .plan(DeviceSpec::Flex)
    .unwrap();
    let t0 = Instant::now();
    let err = launch(&quick, |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            if w.rank == 1 {
                std::thread::sleep(Duration::from_secs(4));
            }
            w.barrier::<Flex>("step 7: summing gradients", &Default::default())
        })
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("worker 0 waited 1 s in step 7: summing gradients")
            && err.contains("worker 1 never reached it"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    let ranks = launch(&plan(2), |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            w.sum::<Flex>("ranks", vec![w.rank as f32], &Default::default())
        })
    })
    .unwrap();
    assert_eq!(ranks, vec![1.0]);
}

/// [`EvenFirst`] until its worker's `good` calls are used, then the error a reward gives when its
/// judge has been down longer than `judge_max_outage_s` under `judge_failure = "stop"`.
struct JudgeDownAfter {
    good: usize,
    calls: std::sync::atomic::AtomicUsize,
}

impl Rewarder for JudgeDownAfter {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < self.good {
            return EvenFirst.reward(items);
        }
        Err(longrl::Error::Judge(
            "judge at http://127.0.0.1:9 has been failing for 300.0 s".into(),
        ))
    }
}

/// A judge outage on one worker of a data-parallel RL run ends the whole run at once (not after
/// the collective's timeout), naming the worker and the judge; the last checkpoint is intact.
#[test]
fn a_judge_outage_on_one_worker_stops_the_data_parallel_run() {
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cfg = rl_config(data.path(), 3, LossAggMode::TokenMean);
    // One reward call per step and worker.
    cfg.dynamic_sampling = false;
    let run = run_section(out.path(), 1);
    let model = model();
    let t0 = Instant::now();
    let err = launch(&plan(2), move |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            // Rank 1's judge goes down after the first step's rewards; rank 0's stays up.
            let good = if w.rank == 1 { 1 } else { usize::MAX };
            let rewarder = JudgeDownAfter {
                good,
                calls: Default::default(),
            };
            rl::train_with::<B>(
                &model,
                &run,
                &cfg,
                Some(Arc::new(rewarder)),
                false,
                Default::default(),
                &w,
            )
        })
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("worker 1 (flex) failed") && err.contains("has been failing for 300.0 s"),
        "{err}"
    );
    // The plan's collective timeout is 120 s: the peer learnt of the failure, it did not wait.
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    let latest = std::fs::read_to_string(out.path().join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-00000001");
    assert!(!out.path().join("final").exists());
}

/// A free loopback port whose next two ports (the data services of node ranks 0 and 1) are free too.
fn free_ports() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 65000
            && (1..=2).all(|k| std::net::TcpListener::bind(("0.0.0.0", port + k)).is_ok())
        {
            return port;
        }
    }
}

/// An SFT config on the tiny model with `[distributed] timeout_s`.
fn sft_toml(dir: &Path, steps: usize, save_steps: usize, timeout_s: f64) -> PathBuf {
    let cfg = sft_config(dir, steps);
    let text = format!(
        "[model]\npath = {:?}\n\n[run]\nseed = 5\nsave_steps = {save_steps}\nsave_total_limit = 0\n\n\
         [sft]\ntrain_file = {:?}\nmax_steps = {steps}\nbatch_size = {}\nmicro_batch_tokens = {}\n\n\
         [sft.optim]\nlr = 1e-3\n\n[distributed]\ntimeout_s = {timeout_s}\n",
        model_dir("tiny-qwen2-chatml"),
        cfg.train_file,
        cfg.batch_size,
        cfg.micro_batch_tokens,
    );
    let p = dir.join("sft.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn longrl_sft(config: &Path, run_dir: &Path, extra: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longrl"));
    cmd.args(["--device", "flex", "sft", "--quiet", "--config"])
        .arg(config)
        .arg("--run-dir")
        .arg(run_dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn node_args(port: u16, rank: usize) -> Vec<String> {
    vec![
        "--nodes".into(),
        "2".into(),
        "--node-rank".into(),
        rank.to_string(),
        "--coordinator".into(),
        format!("127.0.0.1:{port}"),
    ]
}

#[test]
fn two_processes_on_loopback_train_like_one() {
    let data = tempfile::tempdir().unwrap();
    let config = sft_toml(data.path(), 3, 0, 120.0);
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let single = longrl_sft(&config, one.path(), &[]).output().unwrap();
    assert!(
        single.status.success(),
        "{}",
        String::from_utf8_lossy(&single.stderr)
    );
    let port = free_ports();
    let ranks: Vec<_> = (0..2)
        .map(|r| {
            longrl_sft(&config, two.path(), &node_args(port, r))
                .spawn()
                .unwrap()
        })
        .collect();
    for (r, child) in ranks.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "node rank {r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The summary line is all that stdout holds.
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("node rank {r}: stdout is not one JSON line ({e}): {stdout}")
        });
        assert_eq!(summary["steps"], 3);
    }
    assert_trained(&one.path().join("final"));
    assert_same_weights(&one.path().join("final"), &two.path().join("final"), 1e-5);
}

#[test]
fn a_killed_peer_stops_the_other_machine_with_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let config = sft_toml(data.path(), 10_000, 1, 30.0);
    let run = tempfile::tempdir().unwrap();
    let port = free_ports();
    let mut rank0 = longrl_sft(&config, run.path(), &node_args(port, 0))
        .spawn()
        .unwrap();
    let mut rank1 = longrl_sft(&config, run.path(), &node_args(port, 1))
        .spawn()
        .unwrap();
    // Wait for a checkpoint, then kill node rank 1 mid-run.
    let t0 = Instant::now();
    let ckpts = run.path().join("checkpoints");
    while !ckpts.join("latest").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        if let Some(status) = rank0.try_wait().unwrap() {
            let out = rank0.wait_with_output().unwrap();
            panic!(
                "node rank 0 exited early ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    rank1.kill().unwrap();
    let _ = rank1.wait();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = rank0.try_wait().unwrap() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "node rank 0 still runs 90 s after its peer was killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = rank0.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success());
    assert!(
        stderr.contains("data-parallel run") && stderr.contains("node rank 1"),
        "{stderr}"
    );
    // The last checkpoint is whole: the run resumes from it on one device for one more step.
    let latest = std::fs::read_to_string(ckpts.join("latest")).unwrap();
    let step: usize = latest.trim().trim_start_matches("step-").parse().unwrap();
    let more = (step + 1).to_string();
    let out = longrl_sft(
        &config,
        run.path(),
        &["--resume".into(), "--max-steps".into(), more],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run.path().join("final/model.safetensors").exists());
}

#[test]
fn the_cli_runs_two_workers_on_one_cpu() {
    let data = tempfile::tempdir().unwrap();
    let config = sft_toml(data.path(), 2, 0, 120.0);
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, extra) in [
        (one.path(), vec![]),
        (
            two.path(),
            vec!["--devices".to_string(), "flex,flex".to_string()],
        ),
    ] {
        let out = longrl_sft(&config, dir, &extra).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_same_weights(&one.path().join("final"), &two.path().join("final"), 1e-5);
    // One backend per run.
    let out = longrl_sft(
        &config,
        two.path(),
        &["--devices".into(), "flex,ndarray".into()],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("distributed.devices")
            && (stderr.contains("different backends") || stderr.contains("ndarray")),
        "{stderr}"
    );
}

#[test]
fn the_pipeline_on_two_workers_matches_one() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = longrl::pipeline::run::<B>(
        &crate::pipeline::file(one.path()),
        None,
        false,
        Default::default(),
    )
    .unwrap();
    let f = crate::pipeline::file(two.path());
    let b = launch(&plan(2), move |w: Worker| {
        w.run::<Flex, _>(&Default::default(), || {
            longrl::pipeline::run_with::<B>(&f, None, false, Default::default(), &w)
        })
    })
    .unwrap();
    assert_eq!(a.phases.len(), b.phases.len());
    for (p, q) in a.phases.iter().zip(&b.phases) {
        assert_eq!((&p.name, p.n), (&q.name, q.n));
        assert!(
            (p.accuracy - q.accuracy).abs() < 1e-9,
            "{}: {} vs {}",
            p.name,
            p.accuracy,
            q.accuracy
        );
    }
    assert_same_weights(
        &one.path().join("stage2/final"),
        &two.path().join("stage2/final"),
        1e-5,
    );
    assert!(two.path().join("summary.json").exists());
}

#[test]
fn rl_and_pipeline_commands_take_devices() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = rl_config(dir.path(), 1, LossAggMode::TokenMean);
    let rl_toml = dir.path().join("rl.toml");
    std::fs::write(
        &rl_toml,
        format!(
            "[model]\npath = {:?}\n\n[run]\nseed = 5\n\n[rl]\ntrain_file = {:?}\nmax_steps = 2\n\
             train_batch_size = 2\nnum_generations = 2\nmax_response_length = 4\n\
             ppo_mini_batch_size = 2\ndynamic_sampling = false\n\n[rl.reward.rule]\n\
             require_think = false\n",
            model_dir("tiny-qwen2-chatml"),
            cfg.train_file,
        ),
    )
    .unwrap();
    let pipeline_toml = dir.path().join("pipeline.toml");
    let text = crate::pipeline::CONFIG
        .replace("MODEL", model_dir("tiny-qwen2-chatml").to_str().unwrap())
        .replace("RUN", dir.path().join("unused").to_str().unwrap());
    std::fs::write(&pipeline_toml, text).unwrap();
    for (command, config) in [("rl", &rl_toml), ("pipeline", &pipeline_toml)] {
        let run = dir.path().join(command);
        let out = Command::new(env!("CARGO_BIN_EXE_longrl"))
            .args([
                "--device",
                "flex",
                command,
                "--quiet",
                "--devices",
                "flex,flex",
            ])
            .arg("--config")
            .arg(config)
            .arg("--run-dir")
            .arg(&run)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let final_dir = match command {
            "rl" => run.join("final"),
            _ => run.join("stage2/final"),
        };
        assert!(final_dir.join("model.safetensors").exists(), "{command}");
    }
    // The pipeline's rank 0 wrote its summary; the RL run its two steps of metrics, once.
    assert!(dir.path().join("pipeline/summary.json").exists());
    assert_eq!(metrics(&dir.path().join("rl")).len(), 2);
}
