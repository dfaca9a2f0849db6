//! Data files as practitioners have them: verl-format parquet (DocQA-RL-1.6K's format) read into RL
//! samples (the good file, bad rows with and without skipping, file-level errors, the JSONL /
//! parquet dispatcher), extra fields and columns accepted with one warning per file or rejected in
//! strict mode, and verl's fields read the same way from JSONL and parquet. The fixtures are
//! written by scripts/make_parquet_fixtures.py.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use longrl::data::{
    load_parquet_rl, load_rl_any, load_rl_any_with, load_rl_with, load_verl_parquet,
    load_verl_parquet_with, render_prompt, LoadOptions, RlSample,
};
use longrl::error::Error;
use longrl::reward::judge::question_from_prompt;
use longrl::reward::TaskKind;

fn data(name: &str) -> PathBuf {
    common::fixture("data").join(name)
}

/// The row and message of an input error, after checking it names `path`.
fn input_error(err: Error, path: &Path) -> (usize, String) {
    let shown = err.to_string();
    match err {
        Error::Input {
            path: p,
            line,
            message,
        } => {
            assert_eq!(p, path, "{shown}");
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            (line, message)
        }
        other => panic!("expected an input error, got {other:?}"),
    }
}

/// A logger keeping every warning, to check what skipped rows log.
struct Capture;

static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            WARNINGS.lock().unwrap().push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn capture_warnings() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        log::set_logger(&Capture).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

#[test]
fn docqa_rows_load_as_samples() {
    let samples = load_verl_parquet(&data("docqa_verl.parquet")).unwrap();
    let ids: Vec<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["1021", "37", "512", "1599"]);
    let sources: Vec<&str> = samples
        .iter()
        .map(|s| s.data_source.as_deref().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            "long_toc_choices_0_20000",
            "docmath_v1",
            "multihoprag_v1",
            "musique_v1"
        ]
    );
    let answers: Vec<&str> = samples.iter().map(|s| s.answer.as_str()).collect();
    assert_eq!(answers, ["B", "12.5", "Nvidia", "Liverpool Bay"]);
    let kinds: Vec<TaskKind> = samples.iter().map(|s| s.task_kind().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            TaskKind::MultipleChoice,
            TaskKind::DocMath,
            TaskKind::Qa,
            TaskKind::Qa
        ]
    );
    for s in &samples {
        assert_eq!(s.task, None);
        assert_eq!(s.document, None);
        assert_eq!(s.question, None);
        assert_eq!(s.choices, None);
        let prompt = s.prompt.as_deref().unwrap();
        assert_eq!(s.user_prompt().unwrap(), prompt);
        assert!(
            prompt.starts_with(
                "Please read the following text and answer the question below.\n\n<text>\n"
            ),
            "{prompt}"
        );
        assert!(
            prompt.ends_with(
                "\n\nFormat your response as follows: \"Therefore, the answer is (insert answer here)\"."
            ),
            "{prompt}"
        );
    }
    let docmath = &samples[1];
    let question = question_from_prompt(docmath.prompt.as_deref().unwrap()).unwrap();
    assert!(
        question.starts_with("By what percentage did net sales grow from 2022 to 2023?"),
        "{question}"
    );
    let document = docmath
        .prompt
        .as_deref()
        .unwrap()
        .split_once("<text>\n")
        .and_then(|(_, rest)| rest.split_once("\n</text>"))
        .map(|(doc, _)| doc)
        .unwrap();
    assert!(document.contains("| Net sales | 1,250.0 | 1,406.3 |"));
    assert_eq!(
        render_prompt(document, &question),
        docmath.prompt.clone().unwrap(),
        "the fixture's prompts are the recipe template filled in"
    );
    assert!(question_from_prompt(samples[0].prompt.as_deref().unwrap())
        .unwrap()
        .contains("(B) The opening of the Rotterdam terminal"));
}

#[test]
fn bad_rows_are_errors_naming_file_and_row() {
    let path = data("bad_rows.parquet");
    let (row, message) = input_error(load_verl_parquet(&path).unwrap_err(), &path);
    assert_eq!(row, 2, "{message}");
    assert!(message.starts_with("row 2:"), "{message}");
    assert!(message.contains("\"prompt\""), "{message}");
    assert!(message.contains("null"), "{message}");
    assert!(message.contains("\"user\""), "{message}");
}

#[test]
fn bad_rows_are_counted_and_logged_when_skipped() {
    capture_warnings();
    let path = data("bad_rows.parquet");
    let (samples, skipped) = load_verl_parquet_with(&path, true).unwrap();
    assert_eq!(skipped, 4);
    let ids: Vec<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["row-1", "6"],
        "a row without extra_info.index gets row-N"
    );
    assert!(samples
        .iter()
        .all(|s| s.task_kind().unwrap() == TaskKind::Qa && s.answer == "Liverpool Bay"));

    let file = path.display().to_string();
    let warnings: Vec<String> = WARNINGS
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(&file))
        .cloned()
        .collect();
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    let expect = [
        ("row 2 ", "\"prompt\" is missing or null"),
        ("row 3 ", "\"reward_model.ground_truth\" is missing or null"),
        ("row 4 ", "system message"),
        ("row 5 ", "unknown data_source \"wikitext_v1\""),
    ];
    for (w, (row, what)) in warnings.iter().zip(expect) {
        assert!(w.contains(row) && w.contains(what), "{w}");
    }
}

#[test]
fn skipping_is_off_by_default_and_counts_nothing_on_good_files() {
    let (samples, skipped) = load_verl_parquet_with(&data("docqa_verl.parquet"), true).unwrap();
    assert_eq!((samples.len(), skipped), (4, 0));
    let path = data("bad_rows.parquet");
    let (row, _) = input_error(load_verl_parquet_with(&path, false).unwrap_err(), &path);
    assert_eq!(row, 2);
}

#[test]
fn wrong_types_name_the_field_and_what_was_found() {
    let path = data("wrong_types.parquet");
    let (row, message) = input_error(load_verl_parquet(&path).unwrap_err(), &path);
    assert_eq!(row, 1);
    assert!(message.contains("\"prompt\""), "{message}");
    assert!(message.contains("found an integer"), "{message}");
    assert!(message.contains("expected a string or a list"), "{message}");

    let (row, message) = input_error(load_verl_parquet_with(&path, true).unwrap_err(), &path);
    assert_eq!(row, 0);
    assert!(
        message.contains("every row is bad (1 skipped"),
        "a file with no usable rows fails even when skipping: {message}"
    );
}

#[test]
fn missing_columns_are_named() {
    let path = data("missing_column.parquet");
    let (row, message) = input_error(load_verl_parquet(&path).unwrap_err(), &path);
    assert_eq!(row, 0);
    assert!(
        message.contains(
            "missing columns data_source (or task), reward_model.ground_truth (or answer)"
        ),
        "{message}"
    );
    assert!(message.contains("found columns: prompt, ability, reward_model, extra_info"));
}

#[test]
fn a_codec_this_build_lacks_is_a_clear_error() {
    let path = data("zstd.parquet");
    let (row, message) = input_error(load_verl_parquet(&path).unwrap_err(), &path);
    assert_eq!(row, 0);
    assert!(message.contains("ZSTD"), "{message}");
    assert!(message.contains("compression=\"snappy\""), "{message}");
}

#[test]
fn non_parquet_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.parquet");
    std::fs::write(
        &path,
        "{\"id\": \"a\", \"task\": \"qa\", \"prompt\": \"Q?\", \"answer\": \"A\"}\n",
    )
    .unwrap();
    let (row, message) = input_error(load_verl_parquet(&path).unwrap_err(), &path);
    assert_eq!(row, 0);
    assert!(message.contains("not a readable parquet file"), "{message}");

    let empty = dir.path().join("empty.parquet");
    std::fs::write(&empty, b"").unwrap();
    let (_, message) = input_error(load_verl_parquet(&empty).unwrap_err(), &empty);
    assert!(message.contains("not a readable parquet file"), "{message}");

    let missing = dir.path().join("absent.parquet");
    assert!(matches!(
        load_verl_parquet(&missing).unwrap_err(),
        Error::Io { path, .. } if path == missing
    ));
}

#[test]
fn truncated_and_corrupted_files_error_without_panicking() {
    let good = std::fs::read(data("docqa_verl.parquet")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let (_, message) = input_error(load_verl_parquet(&truncated).unwrap_err(), &truncated);
    assert!(message.contains("not a readable parquet file"), "{message}");

    // Overwrite 32-byte windows across the whole file (data pages, footer and all): every load
    // must come back as a value, and the ones that fail must name the file.
    let path = dir.path().join("corrupt.parquet");
    let mut failures = 0;
    for start in (4..good.len() - 8).step_by(97) {
        let mut bytes = good.clone();
        let end = (start + 32).min(good.len() - 8);
        bytes[start..end].iter_mut().for_each(|b| *b = !*b);
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = load_verl_parquet(&path) {
            let (_, message) = input_error(e, &path);
            assert!(message.len() < 800, "errors stay short: {message}");
            failures += 1;
        }
    }
    assert!(failures > 0, "some corruption must be detected");
}

#[test]
fn load_rl_any_dispatches_on_extension_or_magic() {
    let from_parquet = load_rl_any(&data("docqa_verl.parquet")).unwrap();
    assert_eq!(
        from_parquet,
        load_verl_parquet(&data("docqa_verl.parquet")).unwrap()
    );

    let dir = tempfile::tempdir().unwrap();
    let upper = dir.path().join("TRAIN.PARQUET");
    std::fs::copy(data("docqa_verl.parquet"), &upper).unwrap();
    assert_eq!(load_rl_any(&upper).unwrap(), from_parquet);

    let jsonl = dir.path().join("train.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": \"q1\", \"data_source\": \"musique_v1\", \"document\": \"D\", \"question\": \"Q?\", \"answer\": \"A\"}\n",
    )
    .unwrap();
    let from_jsonl = load_rl_any(&jsonl).unwrap();
    assert_eq!(
        from_jsonl,
        vec![RlSample {
            id: "q1".into(),
            data_source: Some("musique_v1".into()),
            task: None,
            document: Some("D".into()),
            question: Some("Q?".into()),
            choices: None,
            prompt: None,
            answer: "A".into(),
        }]
    );

    // A parquet file without the extension is recognised by its magic bytes.
    let renamed = dir.path().join("train.data");
    std::fs::copy(data("docqa_verl.parquet"), &renamed).unwrap();
    assert_eq!(load_rl_any(&renamed).unwrap(), from_parquet);

    // Anything else goes to the JSONL reader and its errors.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "PAR\n").unwrap();
    let (row, message) = input_error(load_rl_any(&text).unwrap_err(), &text);
    assert_eq!(row, 1);
    assert!(message.contains("not valid JSON"), "{message}");
    let missing = dir.path().join("absent.jsonl");
    assert!(matches!(
        load_rl_any(&missing).unwrap_err(),
        Error::Io { .. }
    ));
}

/// The warnings logged about `path` so far.
fn warnings_about(path: &Path) -> Vec<String> {
    let file = path.display().to_string();
    WARNINGS
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(&file))
        .cloned()
        .collect()
}

const STRICT: LoadOptions = LoadOptions { strict: true };

#[test]
fn jsonl_extra_fields_load_with_one_warning_and_strict_names_file_line_and_field() {
    capture_warnings();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.jsonl");
    std::fs::write(
        &path,
        "{\"task\": \"qa\", \"prompt\": \"Q1\", \"answer\": \"A\"}\n\
         \n\
         {\"task\": \"qa\", \"prompt\": \"Q2\", \"answer\": \"A\", \"foo\": 1, \"extra_info\": {\"split\": \"train\"}}\n\
         {\"task\": \"qa\", \"prompt\": \"Q3\", \"answer\": \"A\", \"foo\": 2, \"reward_model\": {\"ground_truth\": \"A\", \"score\": 1}, \"bar\": null}\n",
    )
    .unwrap();
    let samples = load_rl_any(&path).unwrap();
    assert_eq!(samples.len(), 3);
    assert_eq!(
        warnings_about(&path),
        [format!(
            "{}: ignoring unknown fields bar, foo, reward_model.score (first at line 3); \
             --strict makes them errors",
            path.display()
        )]
    );
    let (line, message) = input_error(load_rl_any_with(&path, STRICT).unwrap_err(), &path);
    assert_eq!(line, 3, "{message}");
    assert!(message.starts_with("unknown field \"foo\"; "), "{message}");
    assert!(
        message.contains("answer, reward_model, extra_info"),
        "{message}"
    );
    assert_eq!(
        warnings_about(&path).len(),
        1,
        "strict mode warns about nothing"
    );
}

#[test]
fn verl_jsonl_rows_equal_the_verl_parquet_rows() {
    let parquet = load_verl_parquet(&data("docqa_verl.parquet")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verl.jsonl");
    let mut text = String::new();
    for s in &parquet {
        let index: i64 = s.id.parse().unwrap();
        let row = serde_json::json!({
            "data_source": s.data_source,
            "prompt": [{"role": "user", "content": s.prompt}],
            "ability": "doc-qa",
            "reward_model": {"style": "rule", "ground_truth": s.answer},
            "extra_info": {"index": index, "split": "train"},
        });
        text.push_str(&format!("{row}\n"));
    }
    std::fs::write(&path, text).unwrap();
    assert_eq!(load_rl_with(&path, STRICT).unwrap(), parquet);
}

#[test]
fn parquet_extra_columns_load_with_one_warning_and_strict_rejects_them() {
    capture_warnings();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.parquet");
    std::fs::copy(data("extra_columns.parquet"), &path).unwrap();
    let samples = load_verl_parquet(&path).unwrap();
    let good = load_verl_parquet(&data("docqa_verl.parquet")).unwrap();
    assert_eq!(samples, good[1..3]);
    assert_eq!(
        warnings_about(&path),
        [format!(
            "{}: ignoring unknown columns quality, reward_model.difficulty; --strict makes them \
             errors",
            path.display()
        )]
    );
    let (row, message) = input_error(load_parquet_rl(&path, false, STRICT).unwrap_err(), &path);
    assert_eq!(row, 0, "a column is the whole file's: {message}");
    assert!(
        message.starts_with("unknown column \"quality\"; "),
        "{message}"
    );
    assert!(load_parquet_rl(&data("docqa_verl.parquet"), false, STRICT).is_ok());
}

#[test]
fn parquet_with_longrl_columns_reads_like_jsonl() {
    let samples = load_rl_any_with(&data("longrl_columns.parquet"), STRICT).unwrap();
    let verl = &load_verl_parquet(&data("docqa_verl.parquet")).unwrap()[1];
    assert_eq!(samples.len(), 1);
    let s = &samples[0];
    assert_eq!((s.id.as_str(), s.answer.as_str()), ("37", "12.5"));
    assert_eq!(s.task_kind().unwrap(), verl.task_kind().unwrap());
    assert_eq!(s.user_prompt().unwrap(), verl.user_prompt().unwrap());
}
