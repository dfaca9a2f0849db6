//! The published chat templates (Qwen2.5-Instruct, Qwen3 with thinking on and off, QwQ,
//! DeepSeek-R1-Distill-Qwen) rendered and tokenised byte-identically to transformers'
//! `apply_chat_template` (`tests/fixtures/chat_templates/cases.jsonl`, written by
//! `scripts/make_chat_template_fixtures.py`), through the library and through `longrl template`.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{fixture, root};
use longrl::tokenizer::{ChatRequest, Tokenizer};
use serde::Deserialize;

/// One fixture line; template values are parsed straight from the text so that object keys keep
/// their order (tool schemas go through `tojson`).
#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    model: String,
    messages: Vec<minijinja::Value>,
    add_generation_prompt: bool,
    chat_template_kwargs: BTreeMap<String, minijinja::Value>,
    tools: Option<Vec<minijinja::Value>>,
    text: String,
    input_ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("chat_templates/cases.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn template_file(case: &Case) -> String {
    fixture(&format!("chat_templates/{}", case.template))
        .display()
        .to_string()
}

#[test]
fn published_templates_render_as_transformers_does() {
    let cases = cases();
    assert!(cases.len() >= 16, "{} cases", cases.len());
    for case in &cases {
        let mut tok = Tokenizer::from_dir(root().join(&case.model)).unwrap();
        tok.set_chat_template(&template_file(case)).unwrap();
        let request = ChatRequest {
            messages: case.messages.clone(),
            add_generation_prompt: case.add_generation_prompt,
            tools: case.tools.clone(),
            kwargs: case.chat_template_kwargs.clone(),
        };
        let text = tok.render_chat(&request).unwrap();
        assert_eq!(text, case.text, "{}", case.name);
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            case.input_ids,
            "{}",
            case.name
        );
    }
}

#[test]
fn template_command_prints_what_the_model_sees() {
    let dir = tempfile::tempdir().unwrap();
    // Every Qwen3 case, given to `longrl template` with the template file as --chat-template.
    let qwen3: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.template == "Qwen3.jinja")
        .collect();
    let input: String = qwen3
        .iter()
        .map(|c| {
            format!(
                "{{\"messages\": {}, \"add_generation_prompt\": {}, \"chat_template_kwargs\": {}, \"tools\": {}}}\n",
                serde_json::to_string(&c.messages).unwrap(),
                c.add_generation_prompt,
                serde_json::to_string(&c.chat_template_kwargs).unwrap(),
                serde_json::to_string(&c.tools).unwrap(),
            )
        })
        .collect();
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_longrl"))
        .args(["template", "--model"])
        .arg(root().join(&qwen3[0].model))
        .arg("--input")
        .arg(&path)
        .arg("--chat-template")
        .arg(template_file(&qwen3[0]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), qwen3.len());
    for (line, case) in lines.iter().zip(&qwen3) {
        assert_eq!(line["text"].as_str().unwrap(), case.text, "{}", case.name);
        let ids: Vec<u32> = serde_json::from_value(line["input_ids"].clone()).unwrap();
        assert_eq!(ids, case.input_ids, "{}", case.name);
    }
}

#[test]
fn template_command_defaults_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("models/tiny-r1-distill");
    let run = |input: &str| {
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, input).unwrap();
        Command::new(env!("CARGO_BIN_EXE_longrl"))
            .args(["template", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&path)
            .output()
            .unwrap()
    };
    // add_generation_prompt defaults to false, as in transformers; the folder's own template.
    let out = run("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(line["text"], "<｜begin▁of▁sentence｜><｜User｜>hi");
    // A bad line names the file and the line.
    let out = run("{\"messages\": []}\n{\"messages\": [{\"content\": \"no role\"}]}\n");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(e.contains("in.jsonl:2") && e.contains("role"), "{e}");
}

#[test]
fn a_template_that_fails_names_its_file_and_line() {
    let dir = common::copy_dir(&root().join("models/tiny-qwen2-chatml"));
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(dir.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{%- for m in messages %}\n{{ m.content }}\n{%- endfor %}\n{{ raise_exception('only user turns') }}\n",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    let e = tok
        .encode_chat(&[longrl::tokenizer::Message::new("user", "x")], true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("chat_template.jinja, line 4: only user turns"),
        "{e}"
    );
}
