//! Tokenizer and chat templates.
//!
//! Wraps the `tokenizers` crate on a model folder's `tokenizer.json`, reads the special tokens and
//! chat template of `tokenizer_config.json`, and renders the two chat formats the recipe needs:
//! ChatML (Qwen2 / Qwen2.5-Instruct, including their default system prompt) and the
//! DeepSeek-R1-Distill format (`<｜User｜>...<｜Assistant｜><think>\n`).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// One chat message (`{"role": "user", "content": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\ncontent<|im_end|>\n`; `default_system` is inserted when the
    /// conversation has no system message (Qwen2.5-Instruct does this).
    ChatMl {
        /// System prompt used when none is given.
        default_system: Option<String>,
    },
    /// DeepSeek-R1-Distill: `{bos}{system}<｜User｜>q<｜Assistant｜>a<｜end▁of▁sentence｜>`;
    /// the generation prompt opens a thinking block.
    R1Distill {
        /// The BOS text prefixed to every conversation.
        bos: String,
        /// End-of-turn text after assistant messages.
        eos: String,
    },
}

impl FromStr for ChatTemplate {
    type Err = Error;

    /// Parses a configured template name: `chatml`, `qwen2.5` (ChatML with Qwen2.5's default
    /// system prompt) or `r1`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "chatml" => Ok(ChatTemplate::ChatMl {
                default_system: None,
            }),
            "qwen2.5" | "qwen2_5" => Ok(ChatTemplate::ChatMl {
                default_system: Some(QWEN25_SYSTEM.to_string()),
            }),
            "r1" | "r1-distill" => Ok(ChatTemplate::R1Distill {
                bos: R1_BOS.to_string(),
                eos: R1_EOS.to_string(),
            }),
            other => Err(Error::Invalid(format!(
                "unknown chat template `{other}`: expected chatml, qwen2.5 or r1"
            ))),
        }
    }
}

const QWEN25_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
const R1_BOS: &str = "<｜begin▁of▁sentence｜>";
const R1_EOS: &str = "<｜end▁of▁sentence｜>";

impl ChatTemplate {
    /// Recognises the format of a HuggingFace Jinja `chat_template`.
    pub fn detect(jinja: &str, bos: Option<&str>, eos: Option<&str>) -> Option<Self> {
        if jinja.contains("<｜Assistant｜>") {
            return Some(ChatTemplate::R1Distill {
                bos: bos.unwrap_or(R1_BOS).to_string(),
                eos: eos.unwrap_or(R1_EOS).to_string(),
            });
        }
        if jinja.contains("<|im_start|>") {
            return Some(ChatTemplate::ChatMl {
                default_system: default_chatml_system(jinja),
            });
        }
        None
    }

    /// Renders `messages`; with `add_generation_prompt`, ends with the assistant's opening so the
    /// model continues as the assistant.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let has_system = messages.first().is_some_and(|m| m.role == "system");
                if !has_system {
                    if let Some(sys) = default_system {
                        out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                    }
                }
                for m in messages {
                    out.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::R1Distill { bos, eos } => {
                out.push_str(bos);
                if let Some(sys) = messages.iter().rev().find(|m| m.role == "system") {
                    out.push_str(&sys.content);
                }
                for m in messages {
                    match m.role.as_str() {
                        "user" => {
                            out.push_str("<｜User｜>");
                            out.push_str(&m.content);
                        }
                        "assistant" => {
                            let content = match m.content.rsplit_once("</think>") {
                                Some((_, after)) => after,
                                None => &m.content,
                            };
                            out.push_str("<｜Assistant｜>");
                            out.push_str(content);
                            out.push_str(eos);
                        }
                        _ => {}
                    }
                }
                if add_generation_prompt {
                    out.push_str("<｜Assistant｜><think>\n");
                }
            }
        }
        out
    }
}

/// Finds the literal default system prompt of a ChatML Jinja template, if it has one.
fn default_chatml_system(jinja: &str) -> Option<String> {
    for marker in ["<|im_start|>system\\n", "<|im_start|>system\n"] {
        for (pos, _) in jinja.match_indices(marker) {
            let rest = &jinja[pos + marker.len()..];
            let Some(end) = rest.find("<|im_end|>") else {
                continue;
            };
            let text = &rest[..end];
            if !text.is_empty() && !text.contains(['\'', '"', '{', '}']) {
                return Some(text.replace("\\n", "\n"));
            }
        }
    }
    None
}

/// A model folder's tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    /// The chat format, if the folder declares one (or one was configured).
    pub chat_template: Option<ChatTemplate>,
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

impl Tokenizer {
    /// Loads `tokenizer.json` (and `tokenizer_config.json` when present) from a model folder.
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
            eos_token_id: None,
            pad_token_id: None,
        };
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            let cfg: Value = serde_json::from_str(&text)
                .map_err(|e| Error::tokenizer(&cfg_path, format!("not valid JSON: {e}")))?;
            let bos = token_text(cfg.get("bos_token"));
            let eos = token_text(cfg.get("eos_token"));
            let pad = token_text(cfg.get("pad_token"));
            tok.eos_token_id = eos.as_deref().and_then(|t| tok.inner.token_to_id(t));
            tok.pad_token_id = pad.as_deref().and_then(|t| tok.inner.token_to_id(t));
            let jinja = match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
            };
            tok.chat_template = jinja
                .as_deref()
                .and_then(|j| ChatTemplate::detect(j, bos.as_deref(), eos.as_deref()));
        }
        Ok(tok)
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

    /// Renders `messages` with the chat template and encodes them (no extra special tokens: the
    /// template already writes them).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            Error::tokenizer(
                &self.path,
                "no chat template: tokenizer_config.json has no recognised `chat_template`; \
                 configure one (chatml, qwen2.5 or r1)",
            )
        })?;
        self.encode(&template.render(messages, add_generation_prompt), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_qwen25_default_system_prompt() {
        let jinja = "{%- else %}\n        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}";
        let t = ChatTemplate::detect(jinja, None, None).unwrap();
        assert_eq!(
            t,
            ChatTemplate::ChatMl {
                default_system: Some(QWEN25_SYSTEM.into())
            }
        );
        let rendered = t.render(&[Message::new("user", "hi")], true);
        assert_eq!(
            rendered,
            format!("<|im_start|>system\n{QWEN25_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
        );
    }

    #[test]
    fn r1_strips_thinking_from_history() {
        let t: ChatTemplate = "r1".parse().unwrap();
        let msgs = [
            Message::new("user", "q1"),
            Message::new("assistant", "<think>\nhmm</think>a1"),
            Message::new("user", "q2"),
        ];
        assert_eq!(
            t.render(&msgs, true),
            "<｜begin▁of▁sentence｜><｜User｜>q1<｜Assistant｜>a1<｜end▁of▁sentence｜><｜User｜>q2<｜Assistant｜><think>\n"
        );
    }
}
