//! Tokenizer and chat-template parity with transformers (`tests/fixtures/tokenizer/cases.json`,
//! written by `scripts/make_parity_fixtures.py`) for both shipped tiny models.

use crate::common;

use common::{fixture, root};
use longrl::tokenizer::{Message, Tokenizer};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenizer_and_chat_templates_match_transformers() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tokenizer/cases.json")).unwrap())
            .unwrap();
    let models = cases["models"].as_object().unwrap();
    assert_eq!(models.len(), 2);
    for (name, m) in models {
        let tok = Tokenizer::from_dir(root().join(m["path"].as_str().unwrap())).unwrap();
        assert_eq!(
            tok.vocab_size() as u64,
            m["vocab_len"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            tok.eos_token_id.map(u64::from),
            m["eos_token_id"].as_u64(),
            "{name} eos"
        );
        assert_eq!(
            tok.pad_token_id.map(u64::from),
            m["pad_token_id"].as_u64(),
            "{name} pad"
        );
        for case in m["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, false).unwrap(),
                ids(&case["ids"]),
                "{name}: {text:?}"
            );
            assert_eq!(
                tok.encode(text, true).unwrap(),
                ids(&case["ids_add_special_tokens"]),
                "{name}: {text:?} with special tokens"
            );
            let plain = ids(&case["ids"]);
            assert_eq!(
                tok.decode(&plain, false).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(
                tok.decode(&plain, true).unwrap(),
                case["decoded_skip_special"].as_str().unwrap(),
                "{name}"
            );
        }
        assert!(
            tok.chat_template.is_some(),
            "tiny models declare a chat template"
        );
        for case in m["chat"].as_array().unwrap() {
            let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            let label = format!("{name}/{} (generation prompt: {gen})", case["name"]);
            assert_eq!(
                tok.apply_chat_template(&msgs, gen).unwrap(),
                case["rendered"].as_str().unwrap(),
                "{label}"
            );
            assert_eq!(
                tok.encode_chat(&msgs, gen).unwrap(),
                ids(&case["ids"]),
                "{label}"
            );
        }
    }
}

#[test]
fn tokenizer_that_does_not_fit_the_model_is_an_error() {
    let tok = Tokenizer::from_dir(common::model_dir("tiny-qwen2-chatml")).unwrap();
    tok.check_fits(1024).unwrap();
    let e = tok.check_fits(256).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("vocab_size is 256"),
        "{e}"
    );
}

#[test]
fn missing_or_broken_tokenizer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_dir(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not found"),
        "{e}"
    );
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let e = Tokenizer::from_dir(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("cannot be loaded"),
        "{e}"
    );
}
