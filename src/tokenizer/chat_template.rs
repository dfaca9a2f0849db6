//! Chat templates rendered as transformers' `apply_chat_template` renders them.
//!
//! A model's template is Jinja source (`chat_template.jinja`, or `chat_template` in
//! `tokenizer_config.json`). It is compiled with minijinja configured like transformers' jinja2
//! sandbox: `trim_blocks` and `lstrip_blocks`, `{% break %}`/`{% continue %}`, Python's string,
//! list and dict methods (`.startswith`, `.split`, `.strip`, `.items()`, ...), `raise_exception`,
//! no auto-escaping, `tojson` as transformers defines it (`json.dumps` with `ensure_ascii=False`)
//! and Python's spelling of printed booleans and `None`. The context holds what transformers
//! passes: `messages`, `tools`, `documents`, `add_generation_prompt`, the tokenizer's special
//! tokens (`bos_token`, `eos_token`, ...) and any `chat_template_kwargs` (e.g. `enable_thinking`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind, Value};

use super::Message;
use crate::error::{Error, Result};

/// The built-in templates: fallbacks for model folders that ship none.
const BUILTINS: [(&str, &str); 4] = [
    ("chatml", include_str!("templates/chatml.jinja")),
    ("qwen2.5", include_str!("templates/qwen2.5.jinja")),
    ("qwen3", include_str!("templates/qwen3.jinja")),
    ("r1", include_str!("templates/r1.jinja")),
];

/// The names `--chat-template` accepts besides files and a folder's own named templates.
pub const BUILTIN_NAMES: &str = "chatml, qwen2.5, qwen3, r1";

/// The one template name every environment holds.
const NAME: &str = "chat_template";

/// A compiled chat template and where it came from (named in every error).
#[derive(Clone)]
pub struct ChatTemplate {
    origin: String,
    source: Arc<str>,
    env: Arc<Environment<'static>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// What one rendering is given, as transformers' `apply_chat_template` arguments.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    /// The conversation: objects with at least `role` and `content`; every other field
    /// (`reasoning_content`, `tool_calls`, ...) reaches the template too.
    pub messages: Vec<Value>,
    /// End with the opening of an assistant turn.
    pub add_generation_prompt: bool,
    /// Tool (function) schemas, if any.
    pub tools: Option<Vec<Value>>,
    /// Extra template variables (`chat_template_kwargs`), e.g. `enable_thinking`.
    pub kwargs: BTreeMap<String, Value>,
}

impl ChatRequest {
    /// A request for `messages` with no tools and no extra variables.
    pub fn new(messages: &[Message], add_generation_prompt: bool) -> Self {
        Self {
            messages: messages.iter().map(|m| Value::from(Serde(m))).collect(),
            add_generation_prompt,
            tools: None,
            kwargs: BTreeMap::new(),
        }
    }
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names it in errors (a file, or a field of a file). A syntax
    /// error names the origin and the line.
    pub fn new(origin: impl Into<String>, source: impl Into<String>) -> Result<Self> {
        let origin = origin.into();
        let source: Arc<str> = without_generation_tags(&source.into()).into();
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("the default delimiters are valid"),
        );
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| template_error(&origin, &e))?;
        Ok(Self {
            origin,
            source,
            env: Arc::new(env),
        })
    }

    /// A built-in template by name (`chatml`, `qwen2.5`, `qwen3`, `r1`; `qwen2_5` and
    /// `r1-distill` are accepted too).
    pub fn builtin(name: &str) -> Option<Self> {
        let name = match name {
            "qwen2_5" => "qwen2.5",
            "r1-distill" => "r1",
            other => other,
        };
        let (_, source) = BUILTINS.iter().find(|(n, _)| *n == name)?;
        Some(Self::new(format!("built-in chat template `{name}`"), *source).expect("compiles"))
    }

    /// Where the template came from, as errors name it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The template text (with transformers' `{% generation %}` markers turned into plain blocks).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `request` with the tokenizer's special tokens (`bos_token`, ...) in the context; a
    /// render failure (an undefined method, `raise_exception`, a type error) names the origin
    /// and the line.
    pub fn render(
        &self,
        request: &ChatRequest,
        special_tokens: &[(String, String)],
    ) -> Result<String> {
        let mut ctx: Vec<(String, Value)> = special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        ctx.extend(request.kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        ctx.push(("messages".into(), Value::from(request.messages.clone())));
        let tools = request
            .tools
            .clone()
            .map(Value::from)
            .unwrap_or(Value::from(()));
        ctx.push(("tools".into(), tools));
        ctx.push(("documents".into(), Value::from(())));
        ctx.push((
            "add_generation_prompt".into(),
            Value::from(request.add_generation_prompt),
        ));
        let template = self.env.get_template(NAME).expect("added in new");
        template
            .render(Value::from_pairs(ctx))
            .map_err(|e| template_error(&self.origin, &e))
    }
}

/// transformers' `AssistantTracker` extension adds `{% generation %}...{% endgeneration %}`
/// around assistant text (for assistant-only loss masks); rendering ignores it, so the markers
/// become an always-true block with the same whitespace control.
fn without_generation_tags(source: &str) -> String {
    let re = regex::Regex::new(r"\{%(-?)\s*(end)?generation\s*(-?)%\}").expect("valid regex");
    re.replace_all(source, |c: &regex::Captures| {
        let keyword = if c.get(2).is_some() {
            "endif"
        } else {
            "if true"
        };
        format!("{{%{} {keyword} {}%}}", &c[1], &c[3])
    })
    .into_owned()
}

/// A minijinja error as an error naming the template's origin and line.
fn template_error(origin: &str, e: &minijinja::Error) -> Error {
    let line = e.line().map(|l| format!(", line {l}")).unwrap_or_default();
    let what = match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) if d.starts_with("raise_exception: ") => {
            d["raise_exception: ".len()..].to_string()
        }
        (_, Some(d)) => format!("{}: {d}", e.kind()),
        (_, None) => e.kind().to_string(),
    };
    Error::Invalid(format!("chat template {origin}{line}: {what}"))
}

/// `raise_exception(message)`: the template refuses its input (transformers raises a
/// `TemplateError`).
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// Prints values as jinja2 does under Python: `True`/`False`, `None`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool => {
            let text = if value.is_true() { "True" } else { "False" };
            out.write_str(text).map_err(minijinja::Error::from)
        }
        ValueKind::None => out.write_str("None").map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// transformers' `tojson`: `json.dumps(value, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, so `", "` and `": "` between items, not
/// HTML-escaped.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

/// Python `json.dumps` formatting options.
struct JsonStyle {
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn write(
        &self,
        out: &mut String,
        v: &Value,
        depth: usize,
    ) -> std::result::Result<(), minijinja::Error> {
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&python_number(v)),
            ValueKind::String | ValueKind::Bytes => {
                self.write_str(out, v.as_str().unwrap_or_default())
            }
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Plain => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.write_items(out, '[', ']', depth, &items, |s, out, item, d| {
                    s.write(out, item, d)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                let pairs: Vec<(Value, Value)> = keys
                    .into_iter()
                    .map(|k| {
                        let item = v.get_item(&k).unwrap_or_default();
                        (k, item)
                    })
                    .collect();
                self.write_items(out, '{', '}', depth, &pairs, |s, out, (k, item), d| {
                    s.write_str(out, &k.to_string());
                    out.push_str(&s.key);
                    s.write(out, item, d)
                })?;
            }
            _ => self.write_str(out, &v.to_string()),
        }
        Ok(())
    }

    /// Writes a bracketed list of items, one per line when indenting.
    fn write_items<T>(
        &self,
        out: &mut String,
        open: char,
        close: char,
        depth: usize,
        items: &[T],
        mut each: impl FnMut(&Self, &mut String, &T, usize) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item);
            }
            if let Some(n) = self.indent {
                out.push('\n');
                out.push_str(&" ".repeat(n * (depth + 1)));
            }
            each(self, out, item, depth + 1)?;
        }
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
        out.push(close);
        Ok(())
    }

    /// A JSON string literal as Python's `json` module writes it.
    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c if self.ensure_ascii && !c.is_ascii() => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// A number as Python's `json.dumps` writes it (`1.0` for an integral float).
fn python_number(v: &Value) -> String {
    if let Ok(i) = i64::try_from(v.clone()) {
        if !v.to_string().contains(['.', 'e', 'E']) {
            return i.to_string();
        }
    }
    match f64::try_from(v.clone()) {
        Ok(f) if f.is_nan() => "NaN".into(),
        Ok(f) if f.is_infinite() => if f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        Ok(f) if f == f.trunc() && f.abs() < 1e16 => format!("{f:.1}"),
        Ok(f) => format!("{f:?}"),
        Err(_) => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: &str) -> String {
        let t = ChatTemplate::new("test.jinja", source).unwrap();
        // Parsed straight into template values, so nested objects keep their key order.
        let req = ChatRequest {
            kwargs: serde_json::from_str(ctx).unwrap(),
            ..ChatRequest::default()
        };
        t.render(&req, &[]).unwrap()
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let ctx = r#"{"x": {"b": 1, "a": [1.0, 2.5, "é\"\n", null, true], "c": {}}}"#;
        assert_eq!(
            render("{{ x | tojson }}", ctx),
            r#"{"b": 1, "a": [1.0, 2.5, "é\"\n", null, true], "c": {}}"#
        );
        assert_eq!(
            render(
                "{{ x | tojson(indent=2, sort_keys=true) }}",
                r#"{"x": {"b": [1], "a": 2}}"#
            ),
            "{\n  \"a\": 2,\n  \"b\": [\n    1\n  ]\n}"
        );
        assert_eq!(render("{{ '<&>' | tojson }}", "{}"), r#""<&>""#);
    }

    #[test]
    fn python_idioms_render_as_jinja2_does() {
        let src = "{%- set ns = namespace(n=0) %}{% for w in s.split(',')[::-1] %}{% if w.strip().startswith('a') %}{% set ns.n = ns.n + 1 %}{% endif %}{% endfor %}{{ ns.n }} {{ flag }} {{ nothing }}";
        assert_eq!(
            render(src, r#"{"s": " ab, b ,ac", "flag": true, "nothing": null}"#),
            "2 True None"
        );
    }

    #[test]
    fn errors_name_the_template_and_the_line() {
        let e = ChatTemplate::new("models/x/chat_template.jinja", "ok\n{% if %}").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("models/x/chat_template.jinja, line 2"),
            "{msg}"
        );
        let t = ChatTemplate::new(
            "t.jinja",
            "a\nb\n{{ raise_exception('Roles must alternate') }}",
        )
        .unwrap();
        let msg = t
            .render(&ChatRequest::default(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("t.jinja, line 3: Roles must alternate"),
            "{msg}"
        );
    }

    #[test]
    fn generation_markers_render_their_content() {
        let src =
            "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}";
        let t = ChatTemplate::new("t", src).unwrap();
        let out = t.render(&ChatRequest::new(&[Message::new("user", "hi")], false), &[]);
        assert_eq!(out.unwrap(), "hi");
    }

    #[test]
    fn builtins_are_the_published_templates() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/chat_templates/"
        );
        for (name, file) in [
            ("qwen2.5", "Qwen2.5-Instruct.jinja"),
            ("qwen3", "Qwen3.jinja"),
            ("r1", "DeepSeek-R1-Distill-Qwen.jinja"),
        ] {
            let published = std::fs::read_to_string(format!("{dir}{file}")).unwrap();
            assert_eq!(
                ChatTemplate::builtin(name).unwrap().source(),
                published,
                "{name}"
            );
        }
        let chatml = ChatTemplate::builtin("chatml").unwrap();
        let out = chatml.render(&ChatRequest::new(&[Message::new("user", "hi")], true), &[]);
        assert_eq!(
            out.unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
