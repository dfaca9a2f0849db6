//! RL samples from parquet files, the format DocQA-RL-1.6K and other verl datasets ship in.
//!
//! A verl row has `data_source` (string), `prompt` (a list of `{role, content}` messages holding
//! the filled-in QwenLong-L1 template), `ability`, `reward_model` (`{style, ground_truth}`) and
//! `extra_info` (`{index, ...}`). Each row is turned into a JSON object and read by the same
//! mapper as a JSONL line ([`record::rl_sample`]): the prompt is the single user message, the
//! answer `reward_model.ground_truth`, the verifier `data_source`, the id `extra_info.index`
//! (`row-N` when absent); longrl's own columns (`id`, `task`, `document`, `question`, `choices`,
//! `answer`, `prompt` as a string) are read too. Columns no loader knows are never decoded: they
//! are named in one warning per file, or are an error in strict mode. Files are read with the
//! parquet crate's record API; uncompressed and snappy (pyarrow's default) column chunks are
//! supported.

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use parquet::basic::{CompressionCodec, ConvertedType, LogicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Value};

use super::record::{self, LoadOptions, UnknownFields, RL_FIELDS};
use super::RlSample;
use crate::error::{Error, Result};

/// What a row looks like, quoted in file-level errors.
const EXPECTED_SCHEMA: &str = "verl's RL columns: data_source (string), prompt (list of \
    {role, content}), reward_model (struct with ground_truth) and optionally extra_info (struct \
    with index); or longrl's: task or data_source, prompt or document + question, answer";

/// Reads a parquet file of RL samples (DocQA-RL-1.6K's format); unknown columns are ignored with
/// one warning; every bad row is an error naming the file, row and field.
pub fn load_verl_parquet(path: &Path) -> Result<Vec<RlSample>> {
    load_parquet_rl(path, false, LoadOptions::default()).map(|(samples, _)| samples)
}

/// [`load_parquet_rl`] with unknown columns ignored with one warning.
pub fn load_verl_parquet_with(path: &Path, skip_bad: bool) -> Result<(Vec<RlSample>, usize)> {
    load_parquet_rl(path, skip_bad, LoadOptions::default())
}

/// Reads a parquet file of RL samples and returns them with the number of rows skipped. With
/// `skip_bad`, a row with a missing or mistyped value (or an unsupported prompt) is logged with
/// `log::warn!` (file and row) and counted instead of failing the load; problems with the file
/// itself (not parquet, missing columns, unsupported compression, undecodable data) are errors
/// either way, and so is a file with no usable rows. Columns no loader knows are named in one
/// warning, or with `options.strict` the first is an error.
pub fn load_parquet_rl(
    path: &Path,
    skip_bad: bool,
    options: LoadOptions,
) -> Result<(Vec<RlSample>, usize)> {
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
    let schema = reader.metadata().file_metadata().schema();
    let mut unknown = UnknownFields::new(path, RL_FIELDS, options).columns();
    if let Value::Object(columns) = skeleton(schema) {
        unknown.check(&columns, 0)?;
    }
    let (projection, read) = projection(path, schema)?;
    check_compression(path, &reader, &read)?;
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
        match record::rl_sample(&row_json(&row), || format!("row-{n}")) {
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
    unknown.finish();
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

/// The file schema cut down to the known columns a row is read from (never `ability` or unknown
/// ones), with their names, after checking each part of a sample has a column to come from.
fn projection(path: &Path, schema: &Type) -> Result<(Type, Vec<String>)> {
    let top = |name: &str| schema.get_fields().iter().find(|f| f.name() == name);
    let has = |name: &str| top(name).is_some();
    let mut missing = Vec::new();
    if !has("data_source") && !has("task") {
        missing.push("data_source (or task)");
    }
    if !(has("prompt") || (has("document") && has("question"))) {
        missing.push("prompt (or document and question)");
    }
    let ground_truth = top("reward_model").is_some_and(|rm| {
        rm.is_group() && rm.get_fields().iter().any(|f| f.name() == "ground_truth")
    });
    if !ground_truth && !has("answer") {
        missing.push("reward_model.ground_truth (or answer)");
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
        .filter(|f| f.name() != "ability" && RL_FIELDS.top.contains(&f.name()))
        .cloned()
        .collect();
    let names = fields.iter().map(|f| f.name().to_string()).collect();
    let projection = Type::group_type_builder(schema.name())
        .with_fields(fields)
        .build()
        .map_err(|e| {
            Error::input(
                path,
                0,
                format!("cannot select the columns to read: {}", short(e)),
            )
        })?;
    Ok((projection, names))
}

/// The shape of a schema as JSON (structs as objects, lists as one-element arrays, values as
/// null), so that [`RowFields::unknown`](record::RowFields::unknown) names unknown columns and
/// nested fields as it does for a JSONL line.
fn skeleton(t: &Type) -> Value {
    if !t.is_group() {
        return Value::Null;
    }
    let info = t.get_basic_info();
    let fields = t.get_fields();
    let is_list = matches!(info.logical_type_ref(), Some(LogicalType::List))
        || info.converted_type() == ConvertedType::LIST;
    let is_map = matches!(info.logical_type_ref(), Some(LogicalType::Map))
        || matches!(
            info.converted_type(),
            ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE
        );
    if is_map {
        return Value::Null;
    }
    if is_list {
        // Three-level lists: LIST -> repeated group -> element; legacy ones repeat the element.
        let element = match fields.first() {
            Some(rep) if rep.is_group() && rep.get_fields().len() == 1 => {
                skeleton(&rep.get_fields()[0])
            }
            Some(rep) => skeleton(rep),
            None => Value::Null,
        };
        return Value::Array(vec![element]);
    }
    Value::Object(
        fields
            .iter()
            .map(|f| (f.name().to_string(), skeleton(f)))
            .collect(),
    )
}

/// A row (or struct) as a JSON object.
fn row_json(row: &Row) -> Map<String, Value> {
    row.get_column_iter()
        .map(|(name, f)| (name.clone(), field_json(f)))
        .collect()
}

/// A value as JSON: strings and binary as strings, numbers as numbers (NaN as null), structs as
/// objects, lists as arrays, maps as objects, dates, times and decimals as their text.
fn field_json(f: &Field) -> Value {
    let float = |x: f64| {
        serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    };
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => (*v).into(),
        Field::Short(v) => (*v).into(),
        Field::Int(v) => (*v).into(),
        Field::Long(v) => (*v).into(),
        Field::UByte(v) => (*v).into(),
        Field::UShort(v) => (*v).into(),
        Field::UInt(v) => (*v).into(),
        Field::ULong(v) => (*v).into(),
        Field::Float(v) => float(f64::from(*v)),
        Field::Double(v) => float(*v),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => Value::String(String::from_utf8_lossy(b.data()).into_owned()),
        Field::Group(row) => Value::Object(row_json(row)),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, field_json(v))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

/// Fails with a clear message when a column that is read uses a codec this build lacks.
fn check_compression(
    path: &Path,
    reader: &SerializedFileReader<File>,
    read: &[String],
) -> Result<()> {
    for group in reader.metadata().row_groups() {
        for column in group.columns() {
            let parts = column.column_path().parts();
            if !parts.first().is_some_and(|c| read.iter().any(|r| r == c)) {
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
