//! `longrl eval`, the Table 4 harness: loaders for each benchmark's public format (fixtures in
//! `tests/fixtures/eval/`, a few items per set written for these tests) and their errors, middle
//! truncation at the token level, rule + judge scoring with a scripted responder and judge
//! (judge on every answer, max combination, resume, settings check), and the command end to end:
//! the tiny model with a judge server on loopback, and a served model on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use longrl::data::render_prompt;
use longrl::eval::benchmarks::{load_benchmark, Benchmark};
use longrl::eval::harness::{
    read_records, run_eval, GenJob, GenOutput, HarnessOptions, ItemRecord, JudgePolicy, Responder,
};
use longrl::eval::protocol::{middle_truncate, prepare_prompt};
use longrl::reward::{Judge, JudgeOutcome, JudgeQuery};
use longrl::tokenizer::Tokenizer;
use serde_json::{json, Value};

use crate::common::server::{Reply, TestServer};
use crate::common::{fixture, model_dir};

fn data_dir() -> PathBuf {
    fixture("eval")
}

#[test]
fn loaders_read_each_public_format() {
    let docmath = load_benchmark(Benchmark::DocMath, &data_dir().join("docmath.jsonl")).unwrap();
    assert_eq!(docmath.len(), 3);
    assert_eq!(docmath[0].id, "complong-testmini-0");
    assert_eq!(docmath[0].gold, "1250.5");
    assert_eq!(docmath[1].gold, "25");
    assert_eq!(docmath[2].gold, "True");
    assert_eq!(
        docmath[1].document,
        "Costs were 200 in 2019 and 150 in 2020."
    );
    assert!(docmath[0]
        .document
        .starts_with("The company reported revenue of $1,200 million in 2018.\nIn 2019"));

    let frames = load_benchmark(Benchmark::Frames, &data_dir().join("frames.jsonl")).unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].id, "0");
    assert_eq!(frames[0].gold, "Paris");
    assert_eq!(
        frames[0].document,
        "Eiffel Tower\nThe tower was finished in 1889.\nExposition Universelle (1889)\nThe 1889 world's fair was held in Paris."
    );

    for b in &Benchmark::ALL[2..] {
        let items = load_benchmark(*b, &data_dir().join(format!("{}.jsonl", b.name()))).unwrap();
        assert_eq!(items.len(), 2, "{b}");
        assert_eq!(items[0].id, format!("{}-0000", b.name()));
        assert_eq!(items[0].line, 1);
    }
    let two = load_benchmark(Benchmark::TwoWikiMqa, &data_dir().join("2wikimqa.jsonl")).unwrap();
    assert_eq!(
        two[1].gold, "Lyon",
        "the first of `answers`, as the reference"
    );
    assert!(two[1].document.contains("Jane Roe was born in Lyon."));
}

fn load_error(bench: Benchmark, lines: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{}.jsonl", bench.name()));
    std::fs::write(&path, lines).unwrap();
    load_benchmark(bench, &path).unwrap_err().to_string()
}

#[test]
fn loader_errors_name_the_file_line_and_field() {
    let good = r#"{"_id": "a", "input": "q", "context": "c", "answers": ["x"]}"#;
    let e = load_error(
        Benchmark::HotpotQa,
        &format!("{good}\n\n{{\"_id\": \"b\", \"input\": \"q\", \"answers\": [\"x\"]}}\n"),
    );
    assert!(e.contains("hotpotqa.jsonl:3:"), "{e}");
    assert!(e.contains("missing field \"context\""), "{e}");
    assert!(e.contains("LongBench line has"), "{e}");

    let e = load_error(
        Benchmark::Qasper,
        r#"{"_id": "a", "input": "q", "context": "c", "answers": []}"#,
    );
    assert!(
        e.contains("qasper.jsonl:1:") && e.contains("\"answers\": empty"),
        "{e}"
    );

    let e = load_error(Benchmark::Musique, &format!("{good}\n{good}\n"));
    assert!(
        e.contains("musique.jsonl:2:") && e.contains("duplicate id \"a\" (first on line 1)"),
        "{e}"
    );

    let e = load_error(
        Benchmark::DocMath,
        "{\"question\": \"q\", \"paragraphs\": \"p\", \"ground_truth\": 1}\n",
    );
    assert!(
        e.contains("docmath.jsonl:1:")
            && e.contains("\"paragraphs\": expected an array of strings, got a string"),
        "{e}"
    );
    let e = load_error(
        Benchmark::DocMath,
        "{\"question\": \"q\", \"paragraphs\": [\"p\"], \"ground_truth\": null}\n",
    );
    assert!(
        e.contains("\"ground_truth\": expected a string, number or boolean, got null"),
        "{e}"
    );

    let e = load_error(
        Benchmark::Frames,
        "{\"Prompt\": \"q\", \"Answer\": \"a\", \"wiki_items\": [{\"title\": \"t\"}]}\n",
    );
    assert!(
        e.contains("frames.jsonl:1:") && e.contains("\"wiki_items\"[0]"),
        "{e}"
    );

    let e = load_error(Benchmark::Frames, "{\"Prompt\": \"q\",\n");
    assert!(
        e.contains("frames.jsonl:1:") && e.contains("not a JSON object"),
        "{e}"
    );
    let e = load_error(Benchmark::Frames, "[1, 2]\n");
    assert!(e.contains("expected a JSON object, got an array"), "{e}");
}

#[test]
fn long_prompts_are_middle_truncated_at_the_token_level() {
    let tok = Tokenizer::from_dir(model_dir("tiny-qwen2-chatml")).unwrap();
    let mut item =
        load_benchmark(Benchmark::HotpotQa, &data_dir().join("hotpotqa.jsonl")).unwrap()[0].clone();
    item.document = (0..200)
        .map(|i| format!("Sentence number {i} of the report."))
        .collect::<Vec<_>>()
        .join(" ");
    let full = render_prompt(item.document.trim(), item.question.trim());
    let ids = tok.encode(&full, true).unwrap();
    assert!(ids.len() > 301);

    let p = prepare_prompt(&item, Some(&tok), 301).unwrap();
    assert!(p.truncated);
    assert_eq!(p.input_tokens, ids.len());
    let mut kept = ids[..150].to_vec();
    kept.extend_from_slice(&ids[ids.len() - 151..]);
    assert_eq!(middle_truncate(&ids, 301).0, kept);
    assert_eq!(p.text, tok.decode(&kept, true).unwrap());
    assert!(p.text.starts_with("Please read the following text"));
    assert!(
        p.text.ends_with("(insert answer here)\"."),
        "the question survives at the end"
    );
    assert!(
        !p.text.contains("Sentence number 100 "),
        "the middle is cut"
    );

    let whole = prepare_prompt(&item, Some(&tok), ids.len()).unwrap();
    assert_eq!(
        (whole.truncated, whole.text.as_str()),
        (false, full.as_str())
    );
    let unlimited = prepare_prompt(&item, Some(&tok), 0).unwrap();
    assert!(!unlimited.truncated);
}

/// Answers from a script: the gold for DocMath's and Frames' first item, a paraphrase the rule
/// misses for their second, nothing usable otherwise. Counts the answers it produced.
struct Scripted {
    answered: Arc<Mutex<usize>>,
}

impl Responder for Scripted {
    fn respond(&mut self, jobs: &[GenJob]) -> longrl::Result<Vec<Vec<Result<GenOutput, String>>>> {
        Ok(jobs
            .iter()
            .map(|job| {
                let text = if job.prompt.contains("total revenue in 2019") {
                    "<think>1,250.5</think>Therefore, the answer is 1,250.5."
                } else if job.prompt.contains("costs fall") {
                    "<think>50/200</think>Therefore, the answer is a quarter."
                } else if job.prompt.contains("hosted the games") {
                    "<think>1889</think>Therefore, the answer is Paris."
                } else if job.prompt.contains("designed the bridge") {
                    "<think>..</think>Therefore, the answer is the engineer Eiffel."
                } else {
                    "<think>no idea</think>"
                };
                job.seeds
                    .iter()
                    .map(|_| {
                        *self.answered.lock().unwrap() += 1;
                        Ok(GenOutput {
                            text: text.into(),
                            output_tokens: Some(5),
                            finish_reason: "stop".into(),
                        })
                    })
                    .collect()
            })
            .collect())
    }

    fn describe(&self) -> String {
        "scripted".into()
    }
}

/// Says yes to the paraphrases and to exact matches; records every query.
struct ScriptedJudge {
    seen: Mutex<Vec<JudgeQuery>>,
}

impl Judge for ScriptedJudge {
    fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome> {
        self.seen.lock().unwrap().extend(queries.iter().cloned());
        queries
            .iter()
            .map(|q| {
                let yes = q.answer == q.gold
                    || (q.answer == "a quarter" && q.gold == "25")
                    || (q.answer == "the engineer Eiffel" && q.gold == "Gustave Eiffel");
                JudgeOutcome::from_reply(if yes { "[[YES]]" } else { "[[NO]]" })
            })
            .collect()
    }

    fn describe(&self) -> String {
        "scripted judge".into()
    }
}

fn options(out: &Path, policy: JudgePolicy, n: usize) -> HarnessOptions {
    HarnessOptions {
        benchmarks: vec![Benchmark::DocMath, Benchmark::Frames, Benchmark::Qasper],
        data_dir: data_dir(),
        out: out.to_path_buf(),
        n,
        max_input_tokens: 0,
        judge_policy: policy,
        limit: None,
        chunk: 2,
        seed: 0,
        fingerprint: [("n".to_string(), json!(n))].into_iter().collect(),
        quiet: true,
    }
}

#[test]
fn scores_are_max_of_rule_and_a_judge_asked_on_every_answer_and_runs_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let answered = Arc::new(Mutex::new(0));
    let judge = Arc::new(ScriptedJudge {
        seen: Mutex::new(Vec::new()),
    });
    let mut responder = Scripted {
        answered: answered.clone(),
    };
    let summary = run_eval(
        &mut responder,
        None,
        Some(judge.clone()),
        &options(&out, JudgePolicy::Every, 2),
    )
    .unwrap();
    assert_eq!(*answered.lock().unwrap(), 2 * (3 + 2 + 2));

    let docmath = read_records(&out.join("docmath.jsonl")).unwrap();
    assert_eq!(docmath.len(), 6);
    let by_id = |rs: &[ItemRecord], id: &str| -> Vec<ItemRecord> {
        rs.iter().filter(|r| r.id == id).cloned().collect()
    };
    for r in by_id(&docmath, "complong-testmini-0") {
        assert_eq!(
            (r.rule, r.judge, r.score),
            (1.0, Some(1.0), 1.0),
            "judged although right"
        );
        assert_eq!(r.prediction.as_deref(), Some("1250.5"));
    }
    for r in by_id(&docmath, "compshort-testmini-7") {
        assert_eq!(
            (r.rule, r.judge, r.score),
            (0.0, Some(1.0), 1.0),
            "the judge rescues"
        );
        assert_eq!(r.prediction, None);
    }
    for r in by_id(&docmath, "simpshort-testmini-3") {
        // "<think>no idea</think>": nothing after </think>, so the whole response is read and
        // the judge sees it without the phrase.
        assert_eq!((r.rule, r.score), (0.0, 0.0));
        assert_eq!(r.judge_verdict.as_deref(), Some("no"));
    }
    let qasper = read_records(&out.join("qasper.jsonl")).unwrap();
    assert!(
        qasper.iter().all(|r| r.judge.is_none() && r.score == 0.0),
        "no answer, no judge call"
    );

    let seen = judge.seen.lock().unwrap().clone();
    assert!(seen.iter().any(
        |q| q.question == "What was the total revenue in 2019, in millions?"
            && q.answer == "1250.5"
            && q.gold == "1250.5"
    ));
    assert!(seen.iter().any(|q| q.question
        == "Which city hosted the games in the year the tower was finished?"
        && q.answer == "Paris"
        && q.gold == "Paris"));
    let calls = seen.len();
    assert_eq!(
        calls,
        6 + 4,
        "every DocMath and Frames answer, no Qasper one"
    );

    let dm = &summary.benchmarks["docmath"];
    assert!((dm.accuracy - 200.0 / 3.0).abs() < 1e-9, "{}", dm.accuracy);
    assert_eq!((dm.items, dm.n, dm.judge_rescued), (3, 6, 2));
    assert!((summary.benchmarks["frames"].accuracy - 100.0).abs() < 1e-9);
    assert_eq!(summary.benchmarks["qasper"].accuracy, 0.0);
    assert!((summary.average - (200.0 / 3.0 + 100.0) / 3.0).abs() < 1e-9);
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["benchmarks"]["docmath"]["n"], 6);
    assert!(std::fs::read_to_string(out.join("summary.md"))
        .unwrap()
        .contains("| this run | 66.7 ±"));

    // A rerun generates nothing and asks the judge nothing.
    let again = run_eval(
        &mut responder,
        None,
        Some(judge.clone()),
        &options(&out, JudgePolicy::Every, 2),
    )
    .unwrap();
    assert_eq!(*answered.lock().unwrap(), 14);
    assert_eq!(judge.seen.lock().unwrap().len(), calls);
    assert_eq!(again.benchmarks, summary.benchmarks);

    // An interrupted write: the torn answer is generated again, and only it.
    let path = out.join("frames.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap() + 1;
    std::fs::write(&path, format!("{}{{\"id\": \"1\", \"sam", &text[..cut])).unwrap();
    run_eval(
        &mut responder,
        None,
        Some(judge.clone()),
        &options(&out, JudgePolicy::Every, 2),
    )
    .unwrap();
    assert_eq!(*answered.lock().unwrap(), 15);
    assert_eq!(read_records(&path).unwrap().len(), 4);

    // Other settings in the same folder are refused, naming what changed.
    let e = run_eval(
        &mut responder,
        None,
        None,
        &options(&out, JudgePolicy::Every, 3),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("n was 2 and is now 3"), "{e}");
}

#[test]
fn on_failure_policy_skips_answers_the_rule_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let judge = Arc::new(ScriptedJudge {
        seen: Mutex::new(Vec::new()),
    });
    let mut responder = Scripted {
        answered: Arc::new(Mutex::new(0)),
    };
    let summary = run_eval(
        &mut responder,
        None,
        Some(judge.clone()),
        &options(dir.path(), JudgePolicy::OnFailure, 1),
    )
    .unwrap();
    let seen = judge.seen.lock().unwrap();
    assert!(seen
        .iter()
        .all(|q| q.answer != "1250.5" && q.answer != "Paris"));
    assert_eq!(
        seen.len(),
        3,
        "two paraphrases and one unanswered DocMath item"
    );
    assert!((summary.benchmarks["docmath"].accuracy - 200.0 / 3.0).abs() < 1e-9);
}

/// A judge whose server is down: its test query and every query fail.
struct DeadJudge;

impl Judge for DeadJudge {
    fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome> {
        queries
            .iter()
            .map(|_| JudgeOutcome::failed("connection refused"))
            .collect()
    }

    fn describe(&self) -> String {
        "judge at http://127.0.0.1:9".into()
    }

    fn check(&self) -> Result<(), String> {
        Err("connection refused".into())
    }
}

#[test]
fn a_dead_judge_is_refused_before_any_generation() {
    let dir = tempfile::tempdir().unwrap();
    let answered = Arc::new(Mutex::new(0));
    let mut responder = Scripted {
        answered: answered.clone(),
    };
    let opts = options(dir.path(), JudgePolicy::Every, 1);
    let e = run_eval(&mut responder, None, Some(Arc::new(DeadJudge)), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("judge at http://127.0.0.1:9 did not answer a test query: connection refused")
            && e.contains("--judge-policy off"),
        "{e}"
    );
    assert_eq!(*answered.lock().unwrap(), 0);
    assert!(!dir.path().join("docmath.jsonl").exists());
    // Without the judge's policy, nothing asks it.
    let off = options(dir.path(), JudgePolicy::Off, 1);
    run_eval(&mut responder, None, Some(Arc::new(DeadJudge)), &off).unwrap();
    // A finished evaluation with nothing left to judge is summarised again without the judge.
    let done = tempfile::tempdir().unwrap();
    let opts = options(done.path(), JudgePolicy::Every, 1);
    let judge = Arc::new(ScriptedJudge {
        seen: Mutex::new(Vec::new()),
    });
    let first = run_eval(&mut responder, None, Some(judge), &opts).unwrap();
    let again = run_eval(&mut responder, None, Some(Arc::new(DeadJudge)), &opts).unwrap();
    assert_eq!(again.benchmarks, first.benchmarks);
}

fn longrl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_longrl"));
    c.arg("--device").arg("flex");
    c
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn cli_evaluates_the_tiny_model_with_a_loopback_judge_and_resumes() {
    let judge = TestServer::start(4, |_, _| Reply::completion("They differ. [[NO]]"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("eval");
    let run = || {
        longrl()
            .args(["eval", "--model"])
            .arg(model_dir("tiny-qwen2-chatml"))
            .arg("--data-dir")
            .arg(data_dir())
            .arg("--out")
            .arg(&out)
            .args([
                "--benchmarks",
                "all",
                "--n",
                "2",
                "--max-new-tokens",
                "6",
                "--max-input-tokens",
                "96",
                "--batch-size",
                "4",
                "--judge-model",
                "judge",
                "--judge-timeout",
                "3",
                "--quiet",
                "--judge-url",
            ])
            .arg(&judge.url)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let mut records = 0;
    let mut judged = 0;
    for b in Benchmark::ALL {
        let s = &summary["benchmarks"][b.name()];
        let items = if b == Benchmark::DocMath { 3 } else { 2 };
        assert_eq!(s["items"], items, "{b}");
        assert_eq!(s["n"], 2 * items, "{b}");
        let rs = lines(&out.join(format!("{}.jsonl", b.name())));
        assert_eq!(rs.len(), 2 * items as usize);
        for r in &rs {
            assert!(r["output_tokens"].as_u64().unwrap() <= 6);
            assert!(r["input_tokens"].as_u64().unwrap() > 0);
            let score = r["score"].as_f64().unwrap();
            let best = r["rule"]
                .as_f64()
                .unwrap()
                .max(r["judge"].as_f64().unwrap_or(0.0));
            assert_eq!(score, best);
            judged += usize::from(r["judge_verdict"] == "no");
        }
        records += rs.len();
    }
    assert_eq!(records, 2 * 15);
    // DocMath's prompts are longer than 96 tokens with the table: they were middle-truncated.
    assert!(
        summary["benchmarks"]["docmath"]["truncated"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(judged > 0);
    // One call per judged answer; now and then the loopback server leaves a request unanswered
    // until the client's timeout, which retries it (the exact count is checked with a scripted
    // judge above).
    let calls = judge.requests();
    assert!(
        (judged..=judged + 2).contains(&calls),
        "{calls} calls for {judged} judged answers"
    );
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains(
            "| QwenLong-L1-32B (paper) | 67.5 | 70.1 | 90.5 | 83.0 | 69.0 | 56.0 | 58.5 | 70.7 |"
        ),
        "{md}"
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("average"), "{stdout}");

    let second = run();
    assert!(second.status.success());
    assert_eq!(judge.requests(), calls, "nothing judged again");
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(again["benchmarks"], summary["benchmarks"]);
    assert_eq!(lines(&out.join("qasper.jsonl")).len(), 4);
}

#[test]
fn cli_evaluates_a_served_model_with_the_same_prompts() {
    // One loopback server plays the served model (answers "Paris") and the judge (exact match).
    let server = TestServer::start(4, |body, _| {
        if body["model"] == "served" {
            Reply::completion("<think>hmm</think>Therefore, the answer is Paris.")
        } else {
            let user = body["messages"][1]["content"].as_str().unwrap_or("");
            let field = |l: &str| {
                user.lines()
                    .find_map(|x| x.strip_prefix(l))
                    .unwrap_or("")
                    .to_string()
            };
            if field("Answer 1: ") == field("Answer 2: ") {
                Reply::completion("[[YES]]")
            } else {
                Reply::completion("[[NO]]")
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("served");
    let output = longrl()
        .args(["eval", "--endpoint"])
        .arg(&server.url)
        .args([
            "--served-model",
            "served",
            "--benchmarks",
            "frames,hotpotqa",
        ])
        .args([
            "--max-input-tokens",
            "0",
            "--max-new-tokens",
            "64",
            "--quiet",
        ])
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--out")
        .arg(&out)
        .args(["--judge-model", "judge", "--judge-url"])
        .arg(&server.url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen = server.seen();
    let served: Vec<&Value> = seen
        .iter()
        .map(|s| &s.body)
        .filter(|b| b["model"] == "served")
        .collect();
    assert_eq!(served.len(), 4);
    let frames = load_benchmark(Benchmark::Frames, &data_dir().join("frames.jsonl")).unwrap();
    let expected = render_prompt(frames[0].document.trim(), frames[0].question.trim());
    let sent: Vec<&str> = served
        .iter()
        .map(|b| b["messages"][0]["content"].as_str().unwrap())
        .collect();
    assert!(sent.contains(&expected.as_str()));
    for b in &served {
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert_eq!(b["messages"][0]["role"], "user");
        assert!((b["temperature"].as_f64().unwrap() - 0.7).abs() < 1e-6);
        assert!((b["top_p"].as_f64().unwrap() - 0.95).abs() < 1e-6);
        assert_eq!(b["max_tokens"], 64);
        assert!(b["seed"].is_u64());
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["benchmarks"]["frames"]["accuracy"], 50.0);
    assert_eq!(summary["benchmarks"]["hotpotqa"]["accuracy"], 0.0);
    assert_eq!(summary["average"], 25.0);
    assert!(summary["model"]
        .as_str()
        .unwrap()
        .starts_with("served at http://127.0.0.1:"));

    // Middle truncation needs a tokenizer to count with.
    let output = longrl()
        .args(["eval", "--endpoint"])
        .arg(&server.url)
        .args(["--served-model", "served", "--benchmarks", "frames"])
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--out")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--tokenizer"), "{err}");

    let output = longrl()
        .args(["eval", "--model"])
        .arg(model_dir("tiny-qwen2-chatml"))
        .args(["--benchmarks", "frames,trivia"])
        .arg("--data-dir")
        .arg(data_dir())
        .arg("--out")
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("unknown benchmark `trivia`"), "{err}");
}
