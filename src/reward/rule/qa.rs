//! Free-form QA (MultiHopRAG, MuSiQue): the text after the last "the answer is", then sub-EM after
//! SQuAD normalisation, as the reference `docqa.py` does.

use std::sync::LazyLock;

use regex::Regex;

use super::{is_py_space, py_strip};

const PHRASE: &str = "the answer is";

/// The answer after the last "the answer is" (case-sensitive unless `case_insensitive`): `*`
/// removed, the R1 turn markers removed, surrounding spaces and dots stripped. `None` without the
/// phrase.
pub fn parse_answer(text: &str, case_insensitive: bool) -> Option<String> {
    let text = text.replace('*', "");
    let start = if case_insensitive {
        // ASCII lower-casing keeps byte offsets, so the index is valid in `text`.
        text.to_ascii_lowercase().rfind(PHRASE)?
    } else {
        text.rfind(PHRASE)?
    };
    let rest = py_strip(&text[start + PHRASE.len()..])
        .replace("<｜Assistant｜>", "")
        .replace("<｜end▁of▁sentence｜>", "");
    Some(py_strip(py_strip(&rest).trim_matches('.')).to_string())
}

/// The gold answer: parsed like a response when it carries the phrase, else read as if it followed
/// it (the reference fails on such golds).
pub fn parse_gold(gold: &str, case_insensitive: bool) -> String {
    parse_answer(gold, case_insensitive)
        .or_else(|| parse_answer(&format!("{PHRASE} {gold}"), false))
        .unwrap_or_default()
}

static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("valid regex"));

/// SQuAD normalisation: lower-case, ASCII punctuation removed, articles removed, white space
/// collapsed.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punc, " ");
    no_articles
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sub-exact-match: after normalisation, the gold is contained in the prediction or the prediction
/// in the gold (an empty normalised prediction therefore matches: a quirk kept from the reference).
pub fn sub_em(prediction: &str, gold: &str) -> bool {
    let (p, g) = (normalize_answer(prediction), normalize_answer(gold));
    p.contains(&g) || g.contains(&p)
}

/// Whether a parsed prediction matches the parsed gold under `how` (see [`super::QaMatch`]).
pub fn matches(prediction: &str, gold: &str, how: super::QaMatch) -> bool {
    let (p, g) = (normalize_answer(prediction), normalize_answer(gold));
    match how {
        super::QaMatch::SubEm => p.contains(&g) || g.contains(&p),
        super::QaMatch::GoldInAnswer => !g.is_empty() && p.contains(&g),
        super::QaMatch::Exact => !g.is_empty() && p == g,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_after_the_last_phrase() {
        assert_eq!(
            parse_answer(
                "so the answer is x. Therefore, the answer is **Paris**.",
                false
            )
            .as_deref(),
            Some("Paris")
        );
        assert_eq!(parse_answer("The answer is Paris", false), None);
        assert_eq!(
            parse_answer("The answer is Paris", true).as_deref(),
            Some("Paris")
        );
        assert_eq!(
            parse_answer("the answer is ..Rome..<｜end▁of▁sentence｜>", false).as_deref(),
            Some("Rome")
        );
    }

    #[test]
    fn normalises_like_squad() {
        assert_eq!(normalize_answer("The  Eiffel-Tower!"), "eiffeltower");
        assert_eq!(normalize_answer("an apple a day"), "apple day");
        assert!(sub_em("the city of Paris", "Paris"));
        assert!(sub_em("Paris", "Paris, France"));
        assert!(!sub_em("Rome", "Paris"));
        assert!(sub_em("the", "anything"));
        assert_eq!(parse_gold("Paris.", false), "Paris");
    }
}
