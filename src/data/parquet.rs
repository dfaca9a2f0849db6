//! RL samples from verl-format parquet files, the format DocQA-RL-1.6K ships in.
//!
//! Each row has `data_source` (string), `prompt` (a list of `{role, content}` messages holding the
//! filled-in QwenLong-L1 template), `ability`, `reward_model` (`{style, ground_truth}`) and
//! `extra_info` (`{index, ...}`). A row becomes an [`RlSample`] whose `prompt` is the single user
//! message, `answer` is `reward_model.ground_truth`, `data_source` selects the verifier, and `id` is
//! `extra_info.index` (`row-N` when absent). Files are read with the parquet crate's record API;
//! uncompressed and snappy (pyarrow's default) column chunks are supported.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use parquet::basic::CompressionCodec;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;

use super::RlSample;
use crate::error::{Error, Result};

/// Top-level columns read from the file; the rest (`ability`, extra columns) are not decoded.
const READ_COLUMNS: [&str; 4] = ["data_source", "prompt", "reward_model", "extra_info"];

/// What a verl row looks like, quoted in file-level errors.
const EXPECTED_SCHEMA: &str = "verl's RL columns: data_source (string), prompt (list of \
    {role, content}), reward_model (struct with ground_truth) and optionally extra_info (struct \
    with index)";

/// Reads a verl-format parquet file (DocQA-RL-1.6K's format) into RL samples; every bad row is an
/// error naming the file, row and field.
pub fn load_verl_parquet(path: &Path) -> Result<Vec<RlSample>> {
    load_verl_parquet_with(path, false).map(|(samples, _)| samples)
}

/// Reads a verl-format parquet file into RL samples and returns them with the number of rows
/// skipped. With `skip_bad`, a row with a missing or mistyped value (or an unsupported prompt) is
/// logged with `log::warn!` (file and row) and counted instead of failing the load; problems with
/// the file itself (not parquet, missing columns, unsupported compression, undecodable data) are
/// errors either way, and so is a file with no usable rows.
pub fn load_verl_parquet_with(path: &Path, skip_bad: bool) -> Result<(Vec<RlSample>, usize)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = guarded(path, 0, || SerializedFileReader::new(file))?.map_err(|e| {
        Error::input(
            path,
            0,
            format!(
                "not a readable parquet file ({}); expected an Apache Parquet file with \
                 {EXPECTED_SCHEMA}",
                short(e)
            ),
        )
    })?;
    let projection = projection(path, reader.metadata().file_metadata().schema())?;
    check_compression(path, &reader)?;
    let mut rows = guarded(path, 0, || reader.get_row_iter(Some(projection)))?
        .map_err(|e| Error::input(path, 0, format!("cannot read the rows: {}", short(e))))?;

    let mut samples = Vec::new();
    let mut skipped = 0;
    loop {
        let n = samples.len() + skipped + 1;
        let Some(row) = guarded(path, n, || rows.next())? else {
            break;
        };
        let row = row.map_err(|e| {
            Error::input(path, n, format!("row {n}: cannot be decoded: {}", short(e)))
        })?;
        match sample(&row, n) {
            Ok(s) => samples.push(s),
            Err(message) if skip_bad => {
                log::warn!("{}: row {n} skipped: {message}", path.display());
                skipped += 1;
            }
            Err(message) => return Err(Error::input(path, n, format!("row {n}: {message}"))),
        }
    }
    if samples.is_empty() {
        let message = if skipped > 0 {
            format!("no usable samples: every row is bad ({skipped} skipped, see the warnings)")
        } else {
            "no samples in the file".to_string()
        };
        return Err(Error::input(path, 0, message));
    }
    Ok((samples, skipped))
}

/// A parquet error cut to a readable length (some quote whole values, e.g. a document's bytes).
fn short(e: impl std::fmt::Display) -> String {
    const LIMIT: usize = 300;
    let text = e.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// Runs `f`, turning a panic inside the parquet crate (corrupt data it does not check) into an
/// input error at `row` (0: the file as a whole).
fn guarded<T>(path: &Path, row: usize, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let place = if row == 0 {
            "the file".to_string()
        } else {
            format!("row {row}")
        };
        Error::input(
            path,
            row,
            format!("corrupt parquet data: the parquet reader failed on {place} ({what})"),
        )
    })
}

/// The file schema cut down to [`READ_COLUMNS`], after checking the required columns are there.
fn projection(path: &Path, schema: &Type) -> Result<Type> {
    let top = |name: &str| schema.get_fields().iter().find(|f| f.name() == name);
    let mut missing = Vec::new();
    if top("data_source").is_none() {
        missing.push("data_source");
    }
    if top("prompt").is_none() {
        missing.push("prompt");
    }
    match top("reward_model") {
        None => missing.push("reward_model.ground_truth"),
        Some(rm) => {
            if !rm.is_group() || !rm.get_fields().iter().any(|f| f.name() == "ground_truth") {
                missing.push("reward_model.ground_truth");
            }
        }
    }
    if !missing.is_empty() {
        let found: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        return Err(Error::input(
            path,
            0,
            format!(
                "missing column{} {}; expected {EXPECTED_SCHEMA} (found columns: {})",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                found.join(", ")
            ),
        ));
    }
    let fields: Vec<Arc<Type>> = schema
        .get_fields()
        .iter()
        .filter(|f| READ_COLUMNS.contains(&f.name()))
        .cloned()
        .collect();
    Type::group_type_builder(schema.name())
        .with_fields(fields)
        .build()
        .map_err(|e| {
            Error::input(
                path,
                0,
                format!("cannot select the columns to read: {}", short(e)),
            )
        })
}

/// Fails with a clear message when a column that is read uses a codec this build lacks.
fn check_compression(path: &Path, reader: &SerializedFileReader<File>) -> Result<()> {
    for group in reader.metadata().row_groups() {
        for column in group.columns() {
            let parts = column.column_path().parts();
            if !parts
                .first()
                .is_some_and(|c| READ_COLUMNS.contains(&c.as_str()))
            {
                continue;
            }
            let codec = column.compression_codec();
            if !matches!(
                codec,
                CompressionCodec::UNCOMPRESSED | CompressionCodec::SNAPPY
            ) {
                return Err(Error::input(
                    path,
                    0,
                    format!(
                        "column {:?} is compressed with {codec:?}; longrl reads uncompressed and \
                         snappy parquet (pyarrow's default): rewrite the file with \
                         pyarrow.parquet.write_table(table, path, compression=\"snappy\")",
                        parts.join(".")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The value of the field `name` of a row or struct, if the column exists.
fn field<'a>(row: &'a Row, name: &str) -> Option<&'a Field> {
    row.get_column_iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, f)| f)
}

/// A value's kind, for messages.
fn kind(f: &Field) -> &'static str {
    match f {
        Field::Null => "null",
        Field::Bool(_) => "a boolean",
        Field::Byte(_)
        | Field::Short(_)
        | Field::Int(_)
        | Field::Long(_)
        | Field::UByte(_)
        | Field::UShort(_)
        | Field::UInt(_)
        | Field::ULong(_) => "an integer",
        Field::Float(_) | Field::Double(_) | Field::Decimal(_) => "a number",
        Field::Str(_) => "a string",
        Field::Bytes(_) => "binary data",
        Field::Group(_) => "a struct",
        Field::ListInternal(_) => "a list",
        Field::MapInternal(_) => "a map",
        _ => "a date or time",
    }
}

/// A required string field; `what` names it in messages.
fn string<'a>(f: Option<&'a Field>, what: &str, expected: &str) -> Result<&'a str, String> {
    match f {
        Some(Field::Str(s)) => Ok(s),
        None | Some(Field::Null) => Err(format!(
            "field {what:?} is missing or null; expected {expected}"
        )),
        Some(other) => Err(format!(
            "field {what:?}: expected {expected}, found {}",
            kind(other)
        )),
    }
}

/// The content of the prompt's single user message.
fn user_prompt(f: Option<&Field>) -> Result<String, String> {
    const EXPECTED: &str = "a list with one {\"role\": \"user\", \"content\": string} message";
    let messages = match f {
        Some(Field::ListInternal(list)) => list.elements(),
        None | Some(Field::Null) => {
            return Err(format!(
                "field \"prompt\" is missing or null; expected {EXPECTED}"
            ))
        }
        Some(other) => {
            return Err(format!(
                "field \"prompt\": expected {EXPECTED}, found {}",
                kind(other)
            ))
        }
    };
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Field::Group(m) = m else {
            return Err(format!(
                "field \"prompt\", message {}: expected {{\"role\": string, \"content\": string}}, found {}",
                i + 1,
                kind(m)
            ));
        };
        let role = string(field(m, "role"), "prompt.role", "a string role")?;
        let content = string(field(m, "content"), "prompt.content", "the message text")?;
        turns.push((role, content));
    }
    let roles: Vec<&str> = turns.iter().map(|(r, _)| *r).collect();
    if roles.contains(&"system") {
        return Err(format!(
            "field \"prompt\" has a system message (roles: {}); RL samples hold a single user \
             prompt, as in the QwenLong-L1 recipe: fold the system text into the user message",
            roles.join(", ")
        ));
    }
    match turns.as_slice() {
        [] => Err(format!(
            "field \"prompt\" is an empty list; expected {EXPECTED}"
        )),
        [("user", content)] if content.trim().is_empty() => {
            Err("field \"prompt\": the user message is empty".to_string())
        }
        [("user", content)] => Ok(content.to_string()),
        _ => Err(format!(
            "field \"prompt\" has {} messages (roles: {}); expected {EXPECTED}",
            turns.len(),
            roles.join(", ")
        )),
    }
}

/// `extra_info.index` as an id, if present.
fn index(extra_info: Option<&Field>) -> Result<Option<String>, String> {
    let info = match extra_info {
        None | Some(Field::Null) => return Ok(None),
        Some(Field::Group(info)) => info,
        Some(other) => {
            return Err(format!(
                "field \"extra_info\": expected a struct, found {}",
                kind(other)
            ))
        }
    };
    let id = match field(info, "index") {
        None | Some(Field::Null) => return Ok(None),
        Some(Field::Str(s)) if s.is_empty() => return Ok(None),
        Some(Field::Str(s)) => s.clone(),
        Some(Field::Byte(v)) => v.to_string(),
        Some(Field::Short(v)) => v.to_string(),
        Some(Field::Int(v)) => v.to_string(),
        Some(Field::Long(v)) => v.to_string(),
        Some(Field::UByte(v)) => v.to_string(),
        Some(Field::UShort(v)) => v.to_string(),
        Some(Field::UInt(v)) => v.to_string(),
        Some(Field::ULong(v)) => v.to_string(),
        Some(Field::Double(v)) if v.fract() == 0.0 && v.abs() < 9.0e15 => (*v as i64).to_string(),
        Some(other) => {
            return Err(format!(
                "field \"extra_info.index\": expected an integer or a string, found {}",
                kind(other)
            ))
        }
    };
    Ok(Some(id))
}

/// One row as a sample, or what is wrong with it.
fn sample(row: &Row, n: usize) -> Result<RlSample, String> {
    let data_source = string(
        field(row, "data_source"),
        "data_source",
        "a string such as \"docmath_v1\"",
    )?;
    let prompt = user_prompt(field(row, "prompt"))?;
    let answer =
        match field(row, "reward_model") {
            Some(Field::Group(rm)) => string(
                field(rm, "ground_truth"),
                "reward_model.ground_truth",
                "the gold answer as a string",
            )?,
            None | Some(Field::Null) => return Err(
                "field \"reward_model\" is missing or null; expected {\"style\", \"ground_truth\"}"
                    .to_string(),
            ),
            Some(other) => {
                return Err(format!(
                    "field \"reward_model\": expected a struct with \"ground_truth\", found {}",
                    kind(other)
                ))
            }
        };
    let id = index(field(row, "extra_info"))?.unwrap_or_else(|| format!("row-{n}"));
    let s = RlSample {
        id,
        data_source: Some(data_source.to_string()),
        task: None,
        document: None,
        question: None,
        choices: None,
        prompt: Some(prompt),
        answer: answer.to_string(),
    };
    s.task_kind().map_err(|e| e.to_string())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_in_the_reader_become_input_errors() {
        let path = Path::new("data/train.parquet");
        let err = guarded(path, 3, || -> usize { panic!("index out of bounds") }).unwrap_err();
        let shown = err.to_string();
        assert!(matches!(err, Error::Input { line: 3, .. }), "{shown}");
        assert_eq!(
            shown,
            "data/train.parquet:3: corrupt parquet data: the parquet reader failed on row 3 \
             (index out of bounds)"
        );
        let err = guarded(path, 0, || -> usize {
            panic!("{}", String::from("bad footer"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("failed on the file (bad footer)"));
        assert_eq!(guarded(path, 1, || 7).unwrap(), 7);
    }

    #[test]
    fn long_parquet_errors_are_cut() {
        assert_eq!(short("abc"), "abc");
        let long = "é".repeat(1000);
        let cut = short(&long);
        assert_eq!(cut.chars().count(), 303);
        assert!(cut.ends_with("..."));
    }
}
