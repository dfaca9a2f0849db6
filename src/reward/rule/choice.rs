//! Multiple choice (the synthesised `long_toc_choices` set): "The correct answer is (X)" or "The
//! correct answer is X" with X in A-D, as the reference `long.py` parses it.

use std::sync::LazyLock;

use regex::Regex;

use super::py_strip;

static BRACKETED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"The correct answer is \(([A-D])\)").expect("valid regex"));
static BARE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"The correct answer is ([A-D])").expect("valid regex"));
static BRACKETED_CI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)The correct answer is \(([A-D])\)").expect("valid regex"));
static BARE_CI: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)The correct answer is ([A-D])").expect("valid regex"));

/// The chosen letter: `*` removed, the first bracketed match, else the first bare one
/// (case-sensitive phrase and upper-case letter unless `case_insensitive`).
pub fn parse_answer(text: &str, case_insensitive: bool) -> Option<String> {
    let text = text.replace('*', "");
    let (bracketed, bare) = if case_insensitive {
        (&*BRACKETED_CI, &*BARE_CI)
    } else {
        (&*BRACKETED, &*BARE)
    };
    bracketed
        .captures(&text)
        .or_else(|| bare.captures(&text))
        .map(|c| c[1].to_string())
}

/// The gold letter: parsed like a response, else read as a bare letter ("B" or "(B)"; the
/// reference scores every response 0 against such golds).
pub fn parse_gold(gold: &str, case_insensitive: bool) -> Option<String> {
    parse_answer(gold, case_insensitive)
        .or_else(|| parse_answer(&format!("The correct answer is {}", py_strip(gold)), false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_parsed_as_the_reference_does() {
        assert_eq!(
            parse_answer("The correct answer is (B).", false).as_deref(),
            Some("B")
        );
        assert_eq!(
            parse_answer("**The correct answer is C**", false).as_deref(),
            Some("C")
        );
        assert_eq!(parse_answer("the correct answer is (B)", false), None);
        assert_eq!(
            parse_answer("the correct answer is (b)", true).as_deref(),
            Some("b")
        );
        assert_eq!(parse_answer("The correct answer is E", false), None);
        assert_eq!(parse_gold("(D)", false).as_deref(), Some("D"));
        assert_eq!(parse_gold(" A ", false).as_deref(), Some("A"));
    }
}
