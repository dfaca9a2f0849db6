//! The `longrl` binary end to end: `info`, `score`, `generate`, `reward`, and their error messages.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixture, model_dir, read_safetensors};
use serde_json::Value;

/// Runs the binary on the CPU backend unless the arguments name a device (a CUDA-enabled build
/// would otherwise default to a GPU that CI does not have).
fn longrl(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_longrl"));
    if !args.contains(&"--device") {
        cmd.args(["--device", "flex"]);
    }
    cmd.args(args).output().expect("run longrl")
}

fn ok_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "longrl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn err_text(out: &Output) -> String {
    assert!(!out.status.success(), "longrl should have failed");
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!e.contains("panicked"), "a panic instead of an error: {e}");
    e
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn info_reports_architecture_and_parameters() {
    let m = model_dir("tiny-qwen2-chatml");
    let v = &ok_lines(&longrl(&["info", "--model", m.to_str().unwrap(), "--json"]))[0];
    assert_eq!(v["num_hidden_layers"], 2);
    assert_eq!(v["num_key_value_heads"], 2);
    assert_eq!(v["weight_files"], 1);
    // Parameter count equals the number of stored values.
    let stored: usize = read_safetensors(&m.join("model.safetensors"))
        .values()
        .map(|a| a.data.len())
        .sum();
    assert_eq!(v["parameters"].as_u64().unwrap() as usize, stored);
    let text = longrl(&[
        "info",
        "--model",
        model_dir("DeepSeek-R1-Distill-Qwen-32B").to_str().unwrap(),
    ]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("config only") && text.contains("parameters"),
        "{text}"
    );
    assert_eq!(v["architecture"], "Qwen2ForCausalLM");
    let q3 = model_dir("tiny-qwen3");
    let v = &ok_lines(&longrl(&[
        "info",
        "--model",
        q3.to_str().unwrap(),
        "--json",
    ]))[0];
    assert_eq!(v["model_type"], "qwen3");
    assert_eq!(v["architecture"], "Qwen3ForCausalLM");
    assert_eq!(v["qk_norm"], true);
    let stored: usize = read_safetensors(&q3.join("model.safetensors"))
        .values()
        .map(|a| a.data.len())
        .sum();
    assert_eq!(v["parameters"].as_u64().unwrap() as usize, stored);
}

#[test]
fn score_matches_transformers_logprobs() {
    let dir = fixture("parity/gqa_untied");
    let fx = read_safetensors(&dir.join("fixture.safetensors"));
    let ids = fx["input_ids"].i64s()[..14].to_vec(); // row 0 is unpadded
    let logits = &fx["logits"];
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "in.jsonl",
        &format!(
            "{}\n\n{}\n",
            serde_json::json!({"input_ids": ids}),
            serde_json::json!({"input_ids": [7]})
        ),
    );
    let lines = ok_lines(&longrl(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        &input,
        "--logits-chunk",
        "4",
        "--device",
        "flex",
    ]));
    assert_eq!(lines.len(), 2);
    let lp: Vec<f64> = lines[0]["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(lp.len(), ids.len() - 1);
    let v = logits.shape[2];
    for t in 0..ids.len() - 1 {
        let row = &logits.data[t * v..(t + 1) * v];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        let want = row[ids[t + 1] as usize] - lse;
        assert!(
            (lp[t] - want).abs() < 1e-4,
            "position {t}: {} vs {want}",
            lp[t]
        );
    }
    assert_eq!(lines[1]["token_logprobs"].as_array().unwrap().len(), 0);
}

#[test]
fn score_text_uses_the_tokenizer() {
    let m = model_dir("tiny-r1-distill");
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "in.jsonl",
        "{\"text\": \"Therefore, the answer is 42.\"}\n",
    );
    let lines = ok_lines(&longrl(&[
        "score",
        "--model",
        m.to_str().unwrap(),
        "--input",
        &input,
    ]));
    let ids = lines[0]["input_ids"].as_array().unwrap();
    assert_eq!(ids[0], 1003, "R1's tokenizer adds BOS to plain text");
    assert_eq!(
        lines[0]["token_logprobs"].as_array().unwrap().len(),
        ids.len() - 1
    );
}

#[test]
fn generate_greedy_matches_transformers() {
    let dir = fixture("parity/rope_yarn");
    let fx = read_safetensors(&dir.join("fixture.safetensors"));
    let tmp = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut want = Vec::new();
    for i in 0..3 {
        let seq = fx[&format!("greedy_{i}")].i64s();
        let (p, c) = seq.split_at(seq.len() - 10);
        text.push_str(&format!("{}\n", serde_json::json!({"input_ids": p})));
        want.push(c.to_vec());
    }
    let input = write(tmp.path(), "in.jsonl", &text);
    let lines = ok_lines(&longrl(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        &input,
        "--max-new-tokens",
        "10",
        "--batch-size",
        "2",
    ]));
    assert_eq!(lines.len(), 3);
    for (l, w) in lines.iter().zip(&want) {
        let got: Vec<i64> = l["output_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(&got, w);
        assert_eq!(l["finish_reason"], "length");
    }
}

#[test]
fn generate_applies_the_chat_template_and_stops_at_eos() {
    let m = model_dir("tiny-qwen2-chatml");
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "in.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}]}\n{\"text\": \"The document says\"}\n",
    );
    let lines = ok_lines(&longrl(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--input",
        &input,
        "--max-new-tokens",
        "12",
    ]));
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let ids = l["output_ids"].as_array().unwrap();
        match l["finish_reason"].as_str().unwrap() {
            "length" => assert_eq!(ids.len(), 12),
            "stop" => assert!([1000, 1002].contains(&ids.last().unwrap().as_u64().unwrap())),
            other => panic!("finish_reason {other}"),
        }
        assert!(l["text"].is_string());
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let m = model_dir("tiny-qwen2-chatml");
    let m = m.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "in.jsonl",
        "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, -2]}\n",
    );
    let e = err_text(&longrl(&["score", "--model", m, "--input", &input]));
    assert!(e.contains("in.jsonl:2") && e.contains("input_ids"), "{e}");

    let input = write(tmp.path(), "bad.jsonl", "{\"prompt\": \"x\"}\n");
    let e = err_text(&longrl(&["generate", "--model", m, "--input", &input]));
    assert!(
        e.contains("bad.jsonl:1") && e.contains("\"messages\""),
        "{e}"
    );

    let input = write(tmp.path(), "big.jsonl", "{\"input_ids\": [1, 5000]}\n");
    let e = err_text(&longrl(&["score", "--model", m, "--input", &input]));
    assert!(
        e.contains("big.jsonl:1") && e.contains("5000") && e.contains("vocab_size"),
        "{e}"
    );

    let e = err_text(&longrl(&[
        "score",
        "--model",
        m,
        "--input",
        "/nonexistent.jsonl",
    ]));
    assert!(e.contains("/nonexistent.jsonl"), "{e}");

    let input = write(tmp.path(), "ok.jsonl", "{\"input_ids\": [1, 2]}\n");
    let e = err_text(&longrl(&[
        "generate",
        "--model",
        m,
        "--input",
        &input,
        "--temperature",
        "0.7",
        "--top-p",
        "1.5",
    ]));
    assert!(e.contains("top_p 1.5"), "{e}");
}

#[test]
fn tokenizer_that_does_not_fit_is_reported_by_the_cli() {
    // The parity model has vocab 256; the tiny tokenizer has ids up to 1008.
    let dir = common::copy_dir(&fixture("parity/gqa_untied"));
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(model_dir("tiny-qwen2-chatml").join(f), dir.path().join(f)).unwrap();
    }
    let input = write(dir.path(), "in.jsonl", "{\"text\": \"hello\"}\n");
    let e = err_text(&longrl(&[
        "score",
        "--model",
        dir.path().to_str().unwrap(),
        "--input",
        &input,
    ]));
    assert!(
        e.contains("tokenizer.json") && e.contains("does not fit"),
        "{e}"
    );
}

#[test]
fn unknown_device_is_a_clear_error() {
    let e = err_text(&longrl(&["--device", "tpu:0", "info", "--model", "x"]));
    assert!(
        e.contains("unknown device `tpu:0`") && e.contains("cuda:N"),
        "{e}"
    );
}

#[test]
fn generate_samples_n_per_input_in_order_with_logprobs() {
    let m = model_dir("tiny-qwen2-chatml");
    let m = m.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input = write(
        tmp.path(),
        "in.jsonl",
        "{\"input_ids\": [5, 6, 7]}\n{\"text\": \"Therefore, the answer is\"}\n",
    );
    let args = [
        "generate",
        "--model",
        m,
        "--input",
        &input,
        "--n",
        "3",
        "--temperature",
        "0.8",
        "--top-p",
        "0.95",
        "--top-k",
        "50",
        "--seed",
        "4",
        "--max-new-tokens",
        "6",
        "--batch-size",
        "1",
        "--quiet",
    ];
    let lines = ok_lines(&longrl(&args));
    assert_eq!(lines.len(), 6);
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], k / 3);
        assert_eq!(l["sample"], k % 3);
        let n = l["output_ids"].as_array().unwrap().len();
        assert!((1..=6).contains(&n));
        assert_eq!(l["logprobs"].as_array().unwrap().len(), n);
        assert!(l["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.as_f64().unwrap() <= 0.0));
    }
    // Seeded: the same command gives the same samples, whatever the batch size.
    let mut again = args.to_vec();
    let at = again.len() - 2;
    again[at] = "2";
    assert_eq!(ok_lines(&longrl(&again)), lines);
}

const REWARD_LINES: &str = r#"{"data_source": "docmath_v1", "response": "<think>sum</think>Therefore, the answer is 1,200.", "ground_truth": "$1,200"}
{"data_source": "musique_v1", "response": "<think>hops</think>Therefore, the answer is the Eiffel Tower", "ground_truth": "Gustave Eiffel's tower", "prompt": "<text>\ndoc\n</text>\n\nWhich landmark?\n\nFormat your response as follows: x"}
{"data_source": "long_toc_choices_0_20000", "response": "<think>c</think>The correct answer is (B)", "ground_truth": "C"}
{"task": "qa", "response": "no thinking here", "ground_truth": "x"}
"#;

#[test]
fn reward_scores_each_line_in_order_with_rules_only() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "r.jsonl", REWARD_LINES);
    let lines = ok_lines(&longrl(&["reward", "--input", &input]));
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["score"], 1.0);
    assert_eq!(lines[0]["acc"], true);
    assert_eq!(lines[0]["pred"], "1200");
    assert_eq!(lines[0]["judge"], Value::Null);
    assert_eq!(
        (lines[1]["score"].as_f64(), lines[1]["rule"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    assert_eq!(lines[2]["pred"], "B");
    assert_eq!(lines[3]["pred"], Value::Null);
    assert!(lines[0].get("reward").is_none());
}

#[test]
fn reward_asks_a_loopback_judge_only_for_rule_failures() {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", server.server_addr().to_ip().unwrap());
    let handle = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        // Exactly two requests are expected (the health check at start, then the one query);
        // the server stops after them.
        while bodies.len() < 2 {
            let Ok(Some(mut req)) = server.recv_timeout(std::time::Duration::from_secs(60)) else {
                break;
            };
            let mut body = String::new();
            req.as_reader().read_to_string(&mut body).unwrap();
            bodies.push(body);
            let reply = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Both name the same tower. [[YES]]"}, "finish_reason": "stop"}]});
            req.respond(tiny_http::Response::from_string(reply.to_string()))
                .unwrap();
        }
        bodies
    });
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "r.jsonl", REWARD_LINES);
    let lines = ok_lines(&longrl(&[
        "reward",
        "--input",
        &input,
        "--judge-url",
        &url,
        "--judge-model",
        "judge-1",
        "--judge-retries",
        "0",
        "--judge-timeout",
        "30",
    ]));
    let bodies = handle.join().unwrap();
    assert_eq!(bodies.len(), 2);
    let check: Value = serde_json::from_str(&bodies[0]).unwrap();
    let probe = check["messages"][1]["content"].as_str().unwrap();
    assert!(probe.contains("Problem: What is 1 + 1?"), "{probe}");
    let req: Value = serde_json::from_str(&bodies[1]).unwrap();
    assert_eq!(req["model"], "judge-1");
    let user = req["messages"][1]["content"].as_str().unwrap();
    assert!(user.contains("Problem: Which landmark?"), "{user}");
    assert!(
        user.contains("Answer 1: the Eiffel Tower")
            && user.contains("Answer 2: Gustave Eiffel's tower"),
        "{user}"
    );
    assert_eq!(lines[1]["judge"], 1.0);
    assert_eq!(lines[1]["verdict"], "yes");
    assert_eq!(lines[0]["verdict"], Value::Null);
    assert_eq!(
        (lines[1]["score"].as_f64(), lines[1]["acc"].as_bool()),
        (Some(1.0), Some(true))
    );
    assert_eq!(lines[0]["judge"], Value::Null, "rule already 1");
    assert_eq!(
        lines[2]["judge"],
        Value::Null,
        "multiple choice is never judged"
    );
}

#[test]
fn reward_with_a_local_judge_and_overlong_shaping() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "r.jsonl",
        r#"{"data_source": "docmath_v1", "response": "<think>x</think>Therefore, the answer is 3.", "ground_truth": "4", "response_length": 95}
"#,
    );
    let model = model_dir("tiny-qwen2-chatml");
    let lines = ok_lines(&longrl(&[
        "reward",
        "--input",
        &input,
        "--judge-checkpoint",
        model.to_str().unwrap(),
        "--judge-max-new-tokens",
        "4",
        "--max-response-length",
        "100",
        "--overlong-buffer",
        "10",
    ]));
    assert_eq!(lines[0]["rule"], 0.0);
    assert!(lines[0]["judge"].is_number(), "{}", lines[0]);
    assert_eq!(lines[0]["overlong"], -0.5);
    assert_eq!(
        lines[0]["reward"].as_f64().unwrap(),
        lines[0]["score"].as_f64().unwrap() - 0.5
    );
}

/// A reward input whose lines carry fields `longrl reward` does not read.
fn input_with_extra(dir: &Path) -> String {
    write(
        dir,
        "extra.jsonl",
        "{\"task\": \"qa\", \"response\": \"a\", \"ground_truth\": \"1\", \"respons\": 1}\n\
         {\"task\": \"qa\", \"response\": \"a\", \"ground_truth\": \"1\", \"model\": \"m\"}\n",
    )
}

#[test]
fn reward_input_errors_name_the_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "{\"data_source\": \"docmath_v1\", \"ground_truth\": \"1\"}\n",
            ":1:",
            "missing field `response`",
        ),
        (
            "{\"data_source\": \"trivia\", \"response\": \"a\", \"ground_truth\": \"1\"}\n",
            ":1:",
            "unknown data_source \"trivia\"",
        ),
        (
            "\n{\"task\": \"qa\", \"response\": \"a\", \"ground_truth\": [1]}\n",
            ":2:",
            "\"ground_truth\": expected a string or number",
        ),
        (
            "{\"task\": \"qa\", \"response\": \"a\", \"ground_truth\": \"1\"}\n{\"task\": \"qa\", \"response\": \"a\", \"ground_truth\": \"1\", \"respons\": 1}\n",
            ":2:",
            "unknown field \"respons\"",
        ),
    ];
    for (text, line, msg) in cases {
        let input = write(dir.path(), "bad.jsonl", text);
        let e = err_text(&longrl(&["reward", "--strict", "--input", &input]));
        assert!(
            e.contains(&format!("bad.jsonl{line}")) && e.contains(msg),
            "{e}"
        );
    }
    // Without --strict an extra field is accepted, with one warning naming it.
    let out = longrl(&["reward", "--input", &input_with_extra(dir.path())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("ignoring unknown fields").count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("unknown fields model, respons (first at line 1)"),
        "{stderr}"
    );
    let input = write(
        dir.path(),
        "ok.jsonl",
        "{\"task\": \"qa\", \"response\": \"a\", \"ground_truth\": \"1\"}\n",
    );
    let e = err_text(&longrl(&[
        "reward",
        "--input",
        &input,
        "--max-response-length",
        "10",
        "--overlong-buffer",
        "5",
    ]));
    assert!(
        e.contains("ok.jsonl:1:") && e.contains("response_length"),
        "{e}"
    );
    let e = err_text(&longrl(&[
        "reward",
        "--input",
        &input,
        "--judge-url",
        "ftp://x",
        "--judge-model",
        "m",
    ]));
    assert!(e.contains("--judge-url"), "{e}");
}

#[test]
fn bench_measures_training_and_generation_for_a_folder_or_a_bare_config() {
    let run = |args: &[&str]| bench_json(&[&["--device", "flex", "bench"], args].concat());
    let config = model_dir("tiny-qwen2-chatml").join("config.json");
    let train = run(&[
        "train",
        "--model",
        config.to_str().unwrap(),
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--steps",
        "1",
        "--json",
    ]);
    assert_eq!(train["bench"], "train");
    assert_eq!(train["random_weights"], true);
    assert_eq!(
        (train["batch"].as_u64(), train["seq_len"].as_u64()),
        (Some(2), Some(32))
    );
    assert!(train["tokens_per_s"].as_f64().unwrap() > 0.0);
    assert!(train["parameters"].as_u64().unwrap() > 100_000);
    if cfg!(target_os = "linux") {
        assert!(train["peak_memory_bytes"].as_u64().unwrap() > 1 << 20);
    }
    let folder = model_dir("tiny-qwen2-chatml");
    let gen = run(&[
        "generate",
        "--model",
        folder.to_str().unwrap(),
        "--seq-len",
        "16",
        "--batch",
        "2",
        "--n",
        "3",
        "--new-tokens",
        "4",
        "--steps",
        "1",
        "--json",
    ]);
    assert_eq!(gen["bench"], "generate");
    assert_eq!(gen["random_weights"], false);
    assert_eq!(gen["batch"].as_u64(), Some(6));
    assert!(gen["tokens_per_s"].as_f64().unwrap() > 0.0);

    let out = Command::new(env!("CARGO_BIN_EXE_longrl"))
        .args([
            "--device",
            "flex",
            "bench",
            "train",
            "--seq-len",
            "8",
            "--model",
        ])
        .arg(folder.join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("expected a model folder with config.json"),
        "{err}"
    );
}

#[test]
fn plan_prints_the_memory_of_a_tiny_config_as_json() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-sft.toml");
    let out = longrl(&[
        "plan",
        "--config",
        config.to_str().unwrap(),
        "--device-memory-gib",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["fits"], true);
    let peak = plan["peak_bytes"].as_u64().unwrap();
    assert!(peak > 10 << 20 && peak < 1 << 30, "{plan}");
    assert_eq!(plan["phases"][0]["name"], "sft");
    assert!(plan["phases"][0]["optimizer_bytes"].as_u64().unwrap() > 0);
    // A GPU this build may lack is planned without touching it.
    let out = longrl(&[
        "--device",
        "cuda",
        "plan",
        "--config",
        config.to_str().unwrap(),
        "--device-memory-gib",
        "0.01",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["fits"], false);
    assert!(!plan["advice"].as_array().unwrap().is_empty());
}

#[test]
fn sft_refuses_a_config_that_cannot_fit() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-sft.toml");
    let out = longrl(&[
        "sft",
        "--config",
        config.to_str().unwrap(),
        "--device-memory-gib",
        "0.01",
        "--run-dir",
        std::env::temp_dir()
            .join("longrl-plan-refusal")
            .to_str()
            .unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--no-plan-check") && err.contains("GiB"),
        "{err}"
    );
}

#[test]
fn sft_takes_the_chat_template_from_the_command_line() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-sft.toml");
    let run = tempfile::tempdir().unwrap();
    let sft = |extra: &[&str]| {
        let mut args = vec!["sft", "--quiet", "--config", config.to_str().unwrap()];
        args.extend_from_slice(&[
            "--max-steps",
            "1",
            "--run-dir",
            run.path().to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        longrl(&args)
    };
    let e = err_text(&sft(&["--chat-template", "nope"]));
    assert!(e.contains("`nope`") && e.contains("qwen3"), "{e}");
    std::fs::remove_dir_all(run.path()).unwrap();
    let out = sft(&[
        "--chat-template",
        "qwen3",
        "--chat-template-kwargs",
        r#"{"enable_thinking": false}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The resolved config records the choice, so a resumed run renders the same prompts.
    let recorded = std::fs::read_to_string(run.path().join("config.toml")).unwrap();
    assert!(
        recorded.contains("chat_template = \"qwen3\"")
            && recorded.contains("enable_thinking = false"),
        "{recorded}"
    );
}

/// A small RL config for `bench rl`: two prompts of two samples, short responses.
fn bench_rl_config(dir: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        r#"[model]
path = "{model}"

[run]
run_dir = "unused"

[rl]
max_prompt_length = 400
train_file = "{data}"
train_batch_size = 2
num_generations = 2
max_response_length = 6
dynamic_sampling = false
ppo_mini_batch_size = 2
micro_batch_tokens = 4096

[rl.shapes]
batch_buckets = [4]

[rl.reward.rule]
require_think = false
"#,
        model = root.join("models/tiny-qwen2-chatml").display(),
        data = root.join("examples/data/docqa_rl.jsonl").display(),
    );
    write(dir, "bench-rl.toml", &text)
}

/// Runs the binary with `args` (a `bench` command with `--json`) and parses its report.
fn bench_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_longrl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()
}

#[test]
fn bench_rl_reports_steps_tokens_and_no_kernel_counts_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let config = bench_rl_config(dir.path());
    let r = bench_json(&[
        "--device", "flex", "bench", "rl", "--config", &config, "--steps", "2", "--json",
    ]);
    assert_eq!(r["bench"], "rl");
    assert_eq!(r["bucketed"], false, "auto keeps exact shapes on the CPU");
    assert_eq!(r["warmup"]["update_shapes"], 0);
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for s in steps {
        assert!(s["step_s"].as_f64().unwrap() > 0.0);
        assert!(s["rollout_tokens"].as_u64().unwrap() > 0);
        assert!(s["train_tokens"].as_u64().unwrap() > s["rollout_tokens"].as_u64().unwrap());
        assert!(s["kernels_compiled"].is_null());
    }
    assert!(r["rollout_tokens_per_s"].as_f64().unwrap() > 0.0);
    let e = err_text(&longrl(&[
        "bench", "rl", "--config", &config, "--shapes", "some",
    ]));
    assert!(e.contains("--shapes some"), "{e}");
}

/// On wgpu (lavapipe in CI), after the warm-up the steps run no autotune and compile at most a
/// few kernels, and a second process with the same cache folder reruns no autotune (cubecl 0.10
/// keeps no WGSL kernels across processes, so it compiles them again: the second process skips
/// the warm-up and takes one step, which keeps this test's lavapipe time to one warm-up).
#[cfg(feature = "wgpu")]
#[test]
fn bench_rl_on_wgpu_compiles_once_and_reuses_the_autotune_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = bench_rl_config(dir.path());
    let cache = dir.path().join("cache");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--device",
            "wgpu",
            "--jit-cache",
            cache.to_str().unwrap(),
            "bench",
            "rl",
            "--config",
            &config,
            "--json",
        ];
        args.extend_from_slice(extra);
        bench_json(&args)
    };
    let first = run(&["--steps", "3"]);
    assert_eq!(first["bucketed"], true);
    assert!(first["warmup"]["update_shapes"].as_u64().unwrap() > 0);
    assert!(first["warmup_kernels_compiled"].as_u64().unwrap() > 0);
    assert!(first["warmup_autotunes"].as_u64().unwrap() > 0);
    let steps = first["steps"].as_array().unwrap();
    let compiled: Vec<u64> = steps
        .iter()
        .map(|s| s["kernels_compiled"].as_u64().unwrap())
        .collect();
    // Without the warm-up the first step compiles hundreds of kernels and autotunes dozens of
    // keys; after it, at most a few elementwise kernels that burn-fusion builds around the first
    // real batches remain (BENCHMARKS.md, issue 21).
    let warm = first["warmup_kernels_compiled"].as_u64().unwrap();
    assert!(
        compiled.iter().all(|&k| k <= 3) && warm > 100,
        "steps compiled {compiled:?} kernels after a warm-up of {warm}"
    );
    for s in steps {
        assert_eq!(s["autotunes"], 0, "every autotune ran in the warm-up: {s}");
    }
    // A new process, no warm-up: its first step compiles kernels again but autotunes nothing.
    let second = run(&["--steps", "1", "--no-warmup"]);
    let step = &second["steps"][0];
    assert!(step["kernels_compiled"].as_u64().unwrap() > 0, "{step}");
    assert_eq!(
        step["autotunes"], 0,
        "autotune results come from the cache: {step}"
    );
}

#[test]
fn ablate_prints_its_table_and_names_a_bad_arm() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let text = crate::pipeline::CONFIG
        .replace("MODEL", model_dir("tiny-qwen2-chatml").to_str().unwrap())
        .replace("RUN", run.to_str().unwrap());
    let good = write(
        dir.path(),
        "ablate.toml",
        &format!("{text}\n[ablation]\nseeds = 1\narms = [\"flat\"]\n"),
    );
    let out = longrl(&["ablate", "--config", &good, "--quiet"]);
    assert!(out.status.success(), "{}", err_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| flat | 1 | 16 |"), "{stdout}");
    assert!(run.join("ablation.json").exists() && run.join("arms/flat/seed5").exists());
    let bad = write(
        dir.path(),
        "bad.toml",
        &format!("{text}\n[ablation]\narms = [\"flat\", \"curiculum\"]\n"),
    );
    let err = err_text(&longrl(&["ablate", "--config", &bad]));
    assert!(
        err.contains("bad.toml") && err.contains("curiculum"),
        "{err}"
    );
}
