//! The one JSONL reader: every loader of longrl's line-per-record files (datasets, benchmarks,
//! metrics logs, evaluation records, CLI inputs) reads through it, so a bad line is always an error
//! `FILE:LINE: what is wrong; what was expected`, blank lines are skipped the same way, and line
//! numbers count every line of the file.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// One line of a JSONL file as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonlLine {
    /// 1-based line number.
    pub number: usize,
    /// Byte offset of the line's start in the file (where to cut an unfinished last line).
    pub offset: u64,
    /// The text without its line ending (`\n` or `\r\n`).
    pub text: String,
    /// Whether the line ended with a newline; a last line without one may be cut short by an
    /// interrupted write.
    pub complete: bool,
}

impl JsonlLine {
    /// Whether the line holds only whitespace (such lines are skipped, never parsed).
    pub fn is_blank(&self) -> bool {
        self.text.trim().is_empty()
    }
}

/// The lines of an open JSONL file, blank ones included; a read error names the file.
pub struct JsonlLines<'a> {
    path: &'a Path,
    reader: BufReader<std::fs::File>,
    number: usize,
    offset: u64,
}

impl Iterator for JsonlLines<'_> {
    type Item = Result<JsonlLine>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut bytes = Vec::new();
        match self.reader.read_until(b'\n', &mut bytes) {
            Ok(0) => None,
            Ok(n) => {
                self.number += 1;
                let offset = self.offset;
                self.offset += n as u64;
                let mut text = match String::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(e) => {
                        let at = e.utf8_error().valid_up_to();
                        return Some(Err(Error::input(
                            self.path,
                            self.number,
                            format!(
                                "not valid UTF-8 (byte {} of the line); expected UTF-8 text \
                                 (re-encode the file, e.g. with iconv -t UTF-8)",
                                at + 1
                            ),
                        )));
                    }
                };
                let complete = text.ends_with('\n');
                if complete {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Some(Ok(JsonlLine {
                    number: self.number,
                    offset,
                    text,
                    complete,
                }))
            }
            Err(e) => Some(Err(Error::io(self.path, e))),
        }
    }
}

/// Message for a line that does not parse, given the parser's error.
type Describe<'a> = Box<dyn Fn(&serde_json::Error) -> String + 'a>;

/// Reads a JSONL file as records of a type, one per non-blank line. A line that does not parse is
/// an error naming the file and line with the loader's description of what was expected (by
/// default `not valid JSON: ...`).
pub struct JsonlReader<'a> {
    path: &'a Path,
    describe: Describe<'a>,
}

impl<'a> JsonlReader<'a> {
    /// A reader of `path` whose parse errors read `not valid JSON: {error}`.
    pub fn new(path: &'a Path) -> Self {
        Self {
            path,
            describe: Box::new(|e| format!("not valid JSON: {e}")),
        }
    }

    /// Words the error of a line that does not parse: `describe` gets the parser's error and says
    /// what is wrong and what the line should hold (the file and line are added).
    pub fn on_bad_line(mut self, describe: impl Fn(&serde_json::Error) -> String + 'a) -> Self {
        self.describe = Box::new(describe);
        self
    }

    /// Every line of the file as written, blank ones included (for loaders with their own
    /// tolerance, e.g. of an unfinished last line). Opening a missing file is an I/O error
    /// ([`Error::is_not_found`]).
    pub fn lines(&self) -> Result<JsonlLines<'a>> {
        let file = std::fs::File::open(self.path).map_err(|e| Error::io(self.path, e))?;
        Ok(JsonlLines {
            path: self.path,
            reader: BufReader::new(file),
            number: 0,
            offset: 0,
        })
    }

    /// Parses one line as a `T`; the error names the file and line.
    pub fn parse<T: DeserializeOwned>(&self, line: &JsonlLine) -> Result<T> {
        serde_json::from_str(&line.text)
            .map_err(|e| Error::input(self.path, line.number, (self.describe)(&e)))
    }

    /// Hands every non-blank line, parsed as a `T`, to `f` with its line number (for errors `f`
    /// raises about the record's content); stops at the first error.
    pub fn for_each<T: DeserializeOwned>(
        &self,
        mut f: impl FnMut(usize, T) -> Result<()>,
    ) -> Result<()> {
        for line in self.lines()? {
            let line = line?;
            if line.is_blank() {
                continue;
            }
            f(line.number, self.parse(&line)?)?;
        }
        Ok(())
    }

    /// Every non-blank line parsed as a `T`, in file order.
    pub fn read<T: DeserializeOwned>(&self) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.for_each(|_, v| {
            out.push(v);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Reads every non-blank line of `path` as a `T`; a line that is not JSON, or not a `T`, is an
/// error `path:line: not valid JSON: ...`.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    JsonlReader::new(path).read()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct Rec {
        a: u32,
    }

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recs.jsonl");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn good_files_parse_with_blank_lines_skipped() {
        let (_d, path) = file("{\"a\": 1}\n\n   \n{\"a\": 2}\r\n{\"a\": 3}");
        let recs: Vec<Rec> = read_jsonl(&path).unwrap();
        assert_eq!(recs, vec![Rec { a: 1 }, Rec { a: 2 }, Rec { a: 3 }]);
        let mut numbers = Vec::new();
        JsonlReader::new(&path)
            .for_each(|n, _: Rec| {
                numbers.push(n);
                Ok(())
            })
            .unwrap();
        assert_eq!(numbers, vec![1, 4, 5]);
        let (_d, empty) = file("");
        assert!(read_jsonl::<Rec>(&empty).unwrap().is_empty());
    }

    #[test]
    fn bad_lines_name_the_file_and_the_line_counting_blank_ones() {
        let (_d, path) = file("{\"a\": 1}\n\n{\"a\": \"x\"}\n");
        let e = read_jsonl::<Rec>(&path).unwrap_err().to_string();
        assert!(
            e.contains("recs.jsonl:3: not valid JSON: invalid type"),
            "{e}"
        );
        let (_d, path) = file("{\"a\": 1}\nnot json\n");
        let e = JsonlReader::new(&path)
            .on_bad_line(|e| format!("broken ({e}); expected {{\"a\": number}}"))
            .read::<Rec>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("recs.jsonl:2: broken (") && e.ends_with("expected {\"a\": number}"),
            "{e}"
        );
        let e = JsonlReader::new(&path)
            .for_each(|n, r: Rec| Err(Error::input(&path, n, format!("a = {} is odd", r.a))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("recs.jsonl:1: a = 1 is odd"), "{e}");
        // Bytes that are not UTF-8 (a Latin-1 file) name their line too.
        std::fs::write(&path, b"{\"a\": 1}\n{\"a\": \"caf\xe9\"}\n").unwrap();
        let e = read_jsonl::<Rec>(&path).unwrap_err().to_string();
        assert!(
            e.contains("recs.jsonl:2: not valid UTF-8 (byte 11 of the line)"),
            "{e}"
        );
        let missing = path.with_file_name("none.jsonl");
        let e = read_jsonl::<Rec>(&missing).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(e.to_string().contains("none.jsonl"), "{e}");
    }

    #[test]
    fn raw_lines_keep_offsets_and_an_unfinished_last_line() {
        let (_d, path) = file("{\"a\": 1}\r\n\n{\"a\": 2");
        let lines: Vec<JsonlLine> = JsonlReader::new(&path)
            .lines()
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        let summary: Vec<(usize, u64, &str, bool)> = lines
            .iter()
            .map(|l| (l.number, l.offset, l.text.as_str(), l.complete))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, 0, "{\"a\": 1}", true),
                (2, 10, "", true),
                (3, 11, "{\"a\": 2", false)
            ]
        );
        assert!(lines[1].is_blank());
    }
}
