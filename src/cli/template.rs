//! `longrl template`: what the model sees. Each input line is rendered with the model's chat
//! template and tokenised exactly as transformers'
//! `tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=..., **chat_template_kwargs)`
//! followed by `tokenizer(text, add_special_tokens=False)`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;
use serde_json::json;

use super::ChatTemplateArgs;
use crate::error::{Error, Result};
use crate::io::JsonlReader;
use crate::tokenizer::{ChatRequest, Tokenizer};

/// Arguments of `longrl template`.
#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// HuggingFace model folder (tokenizer.json; tokenizer_config.json and chat_template.jinja).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL file: each line `{"messages": [..], "add_generation_prompt": bool,
    /// "chat_template_kwargs": {..}, "tools": [..]}`; all but `messages` optional
    /// (`add_generation_prompt` defaults to false, as in transformers).
    #[arg(long)]
    pub input: PathBuf,
    /// The chat template to render with.
    #[command(flatten)]
    pub template: ChatTemplateArgs,
}

/// One input line. Messages and tools stay template values, so every field and its key order
/// reach the template (and `tojson`) as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateLine {
    messages: Vec<minijinja::Value>,
    #[serde(default)]
    add_generation_prompt: bool,
    #[serde(default)]
    chat_template_kwargs: BTreeMap<String, minijinja::Value>,
    #[serde(default)]
    tools: Option<Vec<minijinja::Value>>,
}

/// Runs `longrl template`: one `{"text", "input_ids"}` line on stdout per input line.
pub fn run(args: &TemplateArgs) -> Result<()> {
    let mut tokenizer = Tokenizer::from_dir(&args.model)?;
    args.template.apply(&mut tokenizer)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in render_file(&tokenizer, &args.input)? {
        writeln!(out, "{line}").map_err(|e| Error::io("<stdout>", e))?;
    }
    Ok(())
}

/// Renders and tokenises every line of `path`; a bad line or a failed rendering names the line.
pub fn render_file(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    JsonlReader::new(path)
        .on_bad_line(|e| {
            format!(
                "{e}; expected {{\"messages\": [{{\"role\", \"content\", ..}}], \
                 \"add_generation_prompt\": bool, \"chat_template_kwargs\": {{..}}, \"tools\": [..]}}"
            )
        })
        .for_each(|n, line: TemplateLine| {
            let has_role = |m: &minijinja::Value| {
                m.get_attr("role").is_ok_and(|r| r.as_str().is_some())
            };
            if let Some(i) = line.messages.iter().position(|m| !has_role(m)) {
                return Err(Error::input(
                    path,
                    n,
                    format!("messages[{i}]: expected an object with a \"role\" string"),
                ));
            }
            let request = ChatRequest {
                messages: line.messages,
                add_generation_prompt: line.add_generation_prompt,
                tools: line.tools,
                kwargs: line.chat_template_kwargs,
            };
            let text = tokenizer
                .render_chat(&request)
                .map_err(|e| Error::input(path, n, e.to_string()))?;
            let ids = tokenizer.encode(&text, false)?;
            out.push(json!({"text": text, "input_ids": ids}));
            Ok(())
        })?;
    Ok(out)
}
