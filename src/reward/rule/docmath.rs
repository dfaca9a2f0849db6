//! Numeric answers (DocMath), as the reference `docmath.py` checks them: the first number after
//! "the answer is", normalised (units, currency, scale words, `=`, `≈` dropped), evaluated like
//! Python's `eval`, then compared with the power-of-ten, x100 / x1000 / x100000 scale, 3-decimal
//! and 0.15% tolerance rules. Booleans must be equal.

use std::sync::LazyLock;

use regex::Regex;

use super::py_strip;
use super::pyexpr::{self, PyValue};

static ANSWER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)the answer is (=?≈?`?%?\$?°?£?€?¥?-?[0-9.,]+)").expect("valid regex")
});

/// The number after the first "the answer is" (any case), with its prefix symbols and sign; `*`
/// removed first, commas and trailing dots dropped. `None` without a match.
pub fn parse_answer(text: &str) -> Option<String> {
    let text = text.replace('*', "");
    let m = ANSWER.captures(&text)?;
    Some(m[1].replace(',', "").trim_end_matches('.').to_string())
}

/// The gold answer as compared: parsed like a response when it carries the phrase, else the bare
/// gold (which [`normalize`] reads: "12.5", "$1,200", "15%", "True"); the reference fails on those.
pub fn parse_gold(gold: &str) -> String {
    parse_answer(gold).unwrap_or_else(|| gold.to_string())
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("valid regex")
}

// The reference's unit patterns; Python's `$` also matches before a final newline.
static UNIT_AFTER: LazyLock<Regex> =
    LazyLock::new(|| re(r"^([-+]?(?:[\d,]*\.*\d+)) [^0-9 ]+\n?\z"));
static UNIT_BEFORE: LazyLock<Regex> =
    LazyLock::new(|| re(r"^[^0-9 ]+ ([-+]?(?:[\d,]*\.*\d+))\n?\z"));
static SUFFIX: LazyLock<Regex> = LazyLock::new(|| re(r"^([-+]?(?:[\d,]*\.*\d+))[^\d]{1,2}\n?\z"));
static PREFIX: LazyLock<Regex> = LazyLock::new(|| re(r"^[^-+\d]{1,2}((?:[\d,]*\.*\d+))\n?\z"));
static POWER_OF_TEN: LazyLock<Regex> = LazyLock::new(|| re(r"10\^(-?\d+)"));
static IS_NUMBER: LazyLock<Regex> =
    LazyLock::new(|| re(r"^[-+]?(\d{1,3}(,\d{3})*|(\d+))(\.\d+)?\n?\z"));
static OPTION: LazyLock<Regex> = LazyLock::new(|| re(r"\([a-d]\)"));

/// The reference's `normalize`: cleans an answer string and evaluates it to a Python value (a
/// failed evaluation is the integer 0, as in the reference).
pub fn normalize(prediction: &str) -> PyValue {
    let mut p = py_strip(prediction).trim_end_matches('.').to_string();
    for word in [
        "£", "€", "¥", "million", "billion", "thousand", "US", "USD", "RMB",
    ] {
        p = p.replace(word, "");
    }
    for sep in ['=', '≈'] {
        if p.contains(sep) {
            p = py_strip(p.rsplit(sep).next().unwrap_or_default()).to_string();
        }
    }
    p.retain(|c| !matches!(c, '`' | '%' | '$' | '°'));
    match p.as_str() {
        "true" | "yes" => p = "True".into(),
        "false" | "no" => p = "False".into(),
        _ => {}
    }
    if p.contains("True") {
        p = "True".into();
    } else if p.contains("False") {
        p = "False".into();
    }
    if p.contains("approximately") {
        p = py_strip(&p.replace("approximately", "")).to_string();
    }
    if let Some(i) = p.find(" or ") {
        p.truncate(i);
    }
    for pattern in [&*UNIT_AFTER, &*UNIT_BEFORE, &*SUFFIX, &*PREFIX] {
        if let Some(c) = pattern.captures(&p) {
            p = c[1].to_string();
        }
    }
    if p.contains("10^") {
        p = POWER_OF_TEN
            .replace_all(&p, "math.pow(10, $1)")
            .into_owned();
    }
    p = p.replace(" x ", "*").replace(" × ", "*");
    if IS_NUMBER.is_match(&p) {
        p = p.replace(',', "");
    }
    if ["(a)", "(b)", "(c)", "(d)"].iter().any(|o| p.contains(o)) {
        if let Some(m) = OPTION.find(&p) {
            p = format!("\"{}\"", m.as_str());
        }
    }
    if p.is_empty() {
        p = "0".into();
    }
    pyexpr::eval(&p).unwrap_or(PyValue::Int(0))
}

fn within_eps(pred: f64, gt: f64) -> bool {
    let eps = gt.abs() * 0.0015;
    pred >= gt - eps && pred <= gt + eps
}

fn round_up_to_decimal(x: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (x * factor).ceil() / factor
}

/// The reference's `compare_two_numbers`: a pure power-of-ten ratio of the magnitudes (the sign is
/// ignored, and 5 equals 50: reference behaviour), a x100 / x1000 / x100000 scale, equality after
/// rounding up to 3 decimals, or a relative error of at most 0.15%.
pub fn compare_two_numbers(p: f64, gt: f64) -> bool {
    let (v1, v2) = (gt.abs().max(p.abs()), gt.abs().min(p.abs()));
    if v1 != 0.0 && v2 != 0.0 {
        let d = v1.log10() - v2.log10();
        if !d.is_finite() {
            return false;
        }
        if d.trunc() == d {
            return true;
        }
    }
    if (v2 <= v1 / 50.0 && within_eps(v2 * 100.0, v1))
        || (v2 <= v1 / 500.0 && within_eps(v2 * 1000.0, v1))
        || (v2 <= v1 / 50000.0 && within_eps(v2 * 100000.0, v1))
    {
        return true;
    }
    let (r1, r2) = (round_up_to_decimal(v1, 3), round_up_to_decimal(v2, 3));
    if !r1.is_finite() || !r2.is_finite() {
        return false;
    }
    if r1 == r2 {
        return true;
    }
    within_eps(p, gt)
}

/// Python's `==` between a value and a bool (True == 1, True == 1.0).
fn py_eq_bool(v: &PyValue, b: bool) -> bool {
    match v {
        PyValue::Bool(x) => *x == b,
        PyValue::Int(_) | PyValue::Float(_) => v.as_f64() == Some(if b { 1.0 } else { 0.0 }),
        _ => false,
    }
}

/// The reference's `get_acc`: 1.0 when the prediction matches the gold, else 0.0. A gold that does
/// not normalise to a number or bool scores 0 (the reference stops with an assertion).
pub fn get_acc(prediction: &str, gold: &str) -> f64 {
    let p = normalize(prediction);
    let g = normalize(gold);
    let hit = match &g {
        PyValue::Bool(b) => py_eq_bool(&p, *b),
        PyValue::Int(_) | PyValue::Float(_) => match (&p, g.as_f64()) {
            (PyValue::Int(_) | PyValue::Float(_) | PyValue::Bool(_), Some(gv)) => {
                compare_two_numbers(p.as_f64().unwrap_or_default(), gv)
            }
            _ => false,
        },
        _ => {
            log::debug!("docmath gold {gold:?} is not a number or bool: scored 0");
            false
        }
    };
    if hit {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_first_number() {
        assert_eq!(
            parse_answer("the answer is 1,234.5. The answer is 7").as_deref(),
            Some("1234.5")
        );
        assert_eq!(parse_answer("The answer is $-5").as_deref(), Some("$-5"));
        assert_eq!(parse_answer("The answer is -$5"), None);
        assert_eq!(parse_answer("no number"), None);
    }

    #[test]
    fn normalises_units_and_words() {
        assert_eq!(normalize("12 kg"), PyValue::Int(12));
        assert_eq!(normalize("$1,200"), PyValue::Int(1200));
        assert_eq!(normalize("15%"), PyValue::Int(15));
        assert_eq!(normalize("approximately 3.5 million"), PyValue::Float(3.5));
        assert_eq!(normalize("yes"), PyValue::Bool(true));
        assert_eq!(normalize("3 x 10^5"), PyValue::Float(300000.0));
        assert_eq!(normalize("007"), PyValue::Int(0));
        assert_eq!(normalize("x = 4"), PyValue::Int(4));
    }

    #[test]
    fn compares_with_the_reference_rules() {
        assert_eq!(get_acc("0.15", "15"), 1.0);
        assert_eq!(get_acc("3", "30"), 1.0);
        assert_eq!(get_acc("5", "50"), 0.0); // log10(50) - log10(5) is 0.9999999999999999 in f64
        assert_eq!(get_acc("-5", "5"), 1.0);
        assert_eq!(get_acc("100.1", "100"), 1.0);
        assert_eq!(get_acc("100.2", "100"), 0.0);
        assert_eq!(get_acc("1.2.3", "0"), 1.0);
        assert_eq!(get_acc("1", "True"), 1.0);
        assert_eq!(get_acc("2", "True"), 0.0);
        assert_eq!(get_acc("3", "(a)"), 0.0);
    }
}
