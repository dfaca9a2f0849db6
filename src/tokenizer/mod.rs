//! Tokenizer and chat templates.
//!
//! Wraps the `tokenizers` crate on a model folder's `tokenizer.json`, reads the special tokens of
//! `tokenizer_config.json`, and renders the model's own chat template (`chat_template.jinja`, or
//! `chat_template` in `tokenizer_config.json`) as transformers does ([`chat_template`]); the
//! built-in `chatml`, `qwen2.5`, `qwen3` and `r1` templates stand in for folders without one.

pub mod chat_template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use chat_template::{ChatRequest, ChatTemplate, BUILTIN_NAMES};

use crate::error::{Error, Result};

/// One chat message (`{"role": "user", "content": "..."}`); any other field
/// (`reasoning_content`, `tool_calls`, `name`, ...) is kept and reaches the chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
    /// Every other field of the message (nested objects keep their key order).
    #[serde(flatten)]
    pub extra: BTreeMap<String, minijinja::Value>,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            extra: BTreeMap::new(),
        }
    }
}

/// A model folder's tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// The chat template: the folder's own, or one chosen with [`Tokenizer::set_chat_template`].
    pub chat_template: Option<ChatTemplate>,
    /// Why the folder's own template could not be used, reported when a template is needed.
    template_problem: Option<String>,
    /// The templates of a `tokenizer_config.json` that lists several (`[{name, template}]`).
    named_templates: Vec<(String, ChatTemplate)>,
    /// `bos_token`, `eos_token`, ... as text: template variables, as transformers passes them.
    special_tokens: Vec<(String, String)>,
    /// Extra template variables for every rendering (`chat_template_kwargs`).
    template_kwargs: BTreeMap<String, minijinja::Value>,
    /// End-of-sequence token id from `tokenizer_config.json`, if any.
    pub eos_token_id: Option<u32>,
    /// Padding token id, if any.
    pub pad_token_id: Option<u32>,
}

fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The special-token names transformers passes to chat templates (`special_tokens_map`).
const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

impl Tokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json` and `chat_template.jinja` when
    /// present) from a model folder.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::tokenizer(
                &path,
                "file not found (a model folder needs tokenizer.json)",
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::tokenizer(&path, format!("cannot be loaded: {e}")))?;
        let mut tok = Self {
            inner,
            path: path.clone(),
            chat_template: None,
            template_problem: None,
            named_templates: Vec::new(),
            special_tokens: Vec::new(),
            template_kwargs: BTreeMap::new(),
            eos_token_id: None,
            pad_token_id: None,
        };
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text)
                .map_err(|e| Error::tokenizer(&cfg_path, format!("not valid JSON: {e}")))?
        } else {
            Value::Null
        };
        for name in SPECIAL_TOKEN_NAMES {
            if let Some(text) = token_text(cfg.get(name)) {
                tok.special_tokens.push((name.to_string(), text));
            }
        }
        let eos = token_text(cfg.get("eos_token"));
        let pad = token_text(cfg.get("pad_token"));
        tok.eos_token_id = eos.as_deref().and_then(|t| tok.inner.token_to_id(t));
        tok.pad_token_id = pad.as_deref().and_then(|t| tok.inner.token_to_id(t));
        if let Err(e) = tok.load_own_template(dir, &cfg_path, cfg.get("chat_template")) {
            tok.template_problem = Some(e.to_string());
        }
        Ok(tok)
    }

    /// The folder's own template, as transformers finds it: `chat_template.jinja` first, then
    /// `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of
    /// which `default` is used).
    fn load_own_template(
        &mut self,
        dir: &Path,
        cfg_path: &Path,
        field: Option<&Value>,
    ) -> Result<()> {
        let file = dir.join("chat_template.jinja");
        if file.exists() {
            let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
            self.chat_template = Some(ChatTemplate::new(file.display().to_string(), text)?);
            return Ok(());
        }
        let origin = format!("{} (field `chat_template`)", cfg_path.display());
        match field {
            None | Some(Value::Null) => Ok(()),
            Some(Value::String(s)) => {
                self.chat_template = Some(ChatTemplate::new(origin, s.as_str())?);
                Ok(())
            }
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let name = item.get("name").and_then(Value::as_str);
                    let text = item.get("template").and_then(Value::as_str);
                    let (Some(name), Some(text)) = (name, text) else {
                        return Err(Error::Invalid(format!(
                            "{origin}: item {i}: expected {{\"name\": string, \"template\": string}}"
                        )));
                    };
                    let origin = format!("{} (chat template `{name}`)", cfg_path.display());
                    self.named_templates
                        .push((name.to_string(), ChatTemplate::new(origin, text)?));
                }
                self.chat_template = self
                    .named_templates
                    .iter()
                    .find(|(n, _)| n == "default")
                    .map(|(_, t)| t.clone());
                Ok(())
            }
            Some(_) => Err(Error::Invalid(format!(
                "{origin}: expected a string or a list of {{\"name\", \"template\"}}"
            ))),
        }
    }

    /// Chooses the chat template: a Jinja file at `spec`, else a template the folder names
    /// `spec` (`tokenizer_config.json` lists), else a built-in (`chatml`, `qwen2.5`, `qwen3`,
    /// `r1`).
    pub fn set_chat_template(&mut self, spec: &str) -> Result<()> {
        let file = Path::new(spec);
        let template = if file.is_file() {
            let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
            ChatTemplate::new(file.display().to_string(), text)?
        } else if let Some((_, t)) = self.named_templates.iter().find(|(n, _)| n == spec) {
            t.clone()
        } else if let Some(t) = ChatTemplate::builtin(spec) {
            t
        } else {
            let named: Vec<&str> = self
                .named_templates
                .iter()
                .map(|(n, _)| n.as_str())
                .collect();
            let named = if named.is_empty() {
                String::new()
            } else {
                format!(", the model's own ({})", named.join(", "))
            };
            return Err(Error::Invalid(format!(
                "chat template `{spec}`: no such file, and not a template name: expected a \
                 .jinja file{named} or a built-in ({BUILTIN_NAMES})"
            )));
        };
        self.chat_template = Some(template);
        self.template_problem = None;
        Ok(())
    }

    /// Sets template variables passed to every rendering (transformers' `chat_template_kwargs`,
    /// e.g. `{"enable_thinking": false}`), added to those set before.
    pub fn set_chat_template_kwargs(&mut self, kwargs: &serde_json::Map<String, Value>) {
        for (k, v) in kwargs {
            self.template_kwargs.insert(
                k.clone(),
                minijinja::Value::from(minijinja::value::Serde(v)),
            );
        }
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Largest token id the tokenizer can produce, plus one.
    pub fn id_bound(&self) -> usize {
        let vocab = self.inner.get_vocab(true);
        vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0)
    }

    /// Checks that every token id the tokenizer produces exists in a model of `model_vocab` rows.
    pub fn check_fits(&self, model_vocab: usize) -> Result<()> {
        let bound = self.id_bound();
        if bound > model_vocab {
            return Err(Error::tokenizer(
                &self.path,
                format!(
                    "does not fit the model: it has token ids up to {} but the model's vocab_size is {model_vocab}",
                    bound - 1
                ),
            ));
        }
        Ok(())
    }

    /// Encodes text; `add_special_tokens` applies the tokenizer's post-processor (e.g. R1's BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::tokenizer(&self.path, format!("encoding failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text; `skip_special_tokens` drops special tokens such as EOS.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(&self.path, format!("decoding failed: {e}")))
    }

    /// The id of a token's exact text, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat template, or an error saying why there is none and how to choose one.
    pub fn template(&self) -> Result<&ChatTemplate> {
        if let Some(t) = &self.chat_template {
            return Ok(t);
        }
        let why = self.template_problem.clone().unwrap_or_else(|| {
            "the model folder has no chat template (no chat_template.jinja, no `chat_template` \
             in tokenizer_config.json)"
                .to_string()
        });
        Err(Error::tokenizer(
            &self.path,
            format!(
                "{why}; choose one with --chat-template (or `[model] chat_template`): a .jinja \
                 file or a built-in ({BUILTIN_NAMES})"
            ),
        ))
    }

    /// Renders a conversation with the chat template, as `apply_chat_template(..,
    /// tokenize=False)`; the tokenizer's `chat_template_kwargs` apply under the request's own.
    pub fn render_chat(&self, request: &ChatRequest) -> Result<String> {
        let template = self.template()?;
        if self.template_kwargs.is_empty() {
            return template.render(request, &self.special_tokens);
        }
        let mut request = request.clone();
        for (k, v) in &self.template_kwargs {
            request.kwargs.entry(k.clone()).or_insert_with(|| v.clone());
        }
        template.render(&request, &self.special_tokens)
    }

    /// Renders `messages` with the chat template (with the assistant's opening when
    /// `add_generation_prompt`).
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_chat(&ChatRequest::new(messages, add_generation_prompt))
    }

    /// Renders `messages` with the chat template and encodes them (no extra special tokens: the
    /// template already writes them), as `apply_chat_template(.., tokenize=True)`.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        self.encode(
            &self.apply_chat_template(messages, add_generation_prompt)?,
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(name: &str) -> Tokenizer {
        Tokenizer::from_dir(format!("{}/models/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn qwen25_template_adds_its_default_system_prompt() {
        let t = tiny("tiny-qwen2-chatml");
        let text = t
            .apply_chat_template(&[Message::new("user", "hi")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn r1_template_writes_bos_and_strips_earlier_thinking() {
        let t = tiny("tiny-r1-distill");
        let msgs = [
            Message::new("user", "q1"),
            Message::new("assistant", "<think>\nhmm</think>a1"),
            Message::new("user", "q2"),
        ];
        assert_eq!(
            t.apply_chat_template(&msgs, true).unwrap(),
            "<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜>a1<｜end▁of▁sentence｜><｜User｜>q2<｜Assistant｜><think>\n"
        );
    }

    #[test]
    fn chat_template_choice_and_kwargs() {
        let mut t = tiny("tiny-qwen2-chatml");
        t.set_chat_template("qwen3").unwrap();
        t.set_chat_template_kwargs(&serde_json::from_str(r#"{"enable_thinking": false}"#).unwrap());
        let text = t
            .apply_chat_template(&[Message::new("user", "hi")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        let e = t.set_chat_template("nope").unwrap_err().to_string();
        assert!(e.contains("`nope`") && e.contains(BUILTIN_NAMES), "{e}");
    }

    /// A folder holding only the tiny model's tokenizer.json.
    fn bare_tokenizer_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let src = format!("{}/models/tiny-qwen2-chatml", env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(
            format!("{src}/tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_folder_without_template_says_how_to_choose_one() {
        let dir = bare_tokenizer_dir();
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        let e = t
            .encode_chat(&[Message::new("user", "hi")], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--chat-template"), "{e}");
    }

    #[test]
    fn named_templates_use_default_and_can_be_chosen() {
        let dir = bare_tokenizer_dir();
        let cfg = r#"{"chat_template": [{"name": "default", "template": "D{{ messages[0].content }}"},
                                        {"name": "tool_use", "template": "T{% if %}"}]}"#;
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg).unwrap();
        let t = Tokenizer::from_dir(dir.path()).unwrap();
        let e = t
            .apply_chat_template(&[Message::new("user", "x")], false)
            .unwrap_err();
        assert!(e.to_string().contains("chat template `tool_use`"), "{e}");
        let cfg = cfg.replace("T{% if %}", "T{{ messages[0].content }}");
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg).unwrap();
        let mut t = Tokenizer::from_dir(dir.path()).unwrap();
        assert_eq!(
            t.apply_chat_template(&[Message::new("user", "x")], false)
                .unwrap(),
            "Dx"
        );
        t.set_chat_template("tool_use").unwrap();
        assert_eq!(
            t.apply_chat_template(&[Message::new("user", "x")], false)
                .unwrap(),
            "Tx"
        );
    }
}
