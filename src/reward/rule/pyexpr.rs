//! The subset of Python's `eval` that the DocMath verifier applies to a normalised answer: number
//! literals (Python's rules, e.g. no leading zeros in integers), `True`/`False`/`None`, string
//! literals, tuples and lists, unary and binary arithmetic (`+ - * / // % **`), and `math.pow`,
//! `math.sqrt`, `math.pi`, `math.e`. Anything else is an evaluation error, which the verifier, like
//! the reference, turns into the integer 0. Complex literals are not supported (an error here).

/// A Python value, as far as the DocMath comparison distinguishes them.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    /// `int` (arbitrary precision in Python; i128 here, floats beyond).
    Int(i128),
    /// `float`.
    Float(f64),
    /// `bool`.
    Bool(bool),
    /// `str`.
    Str(String),
    /// `list` (tuples and lists alike).
    List(Vec<PyValue>),
    /// `None`.
    None,
}

impl PyValue {
    /// The numeric value of an int, float or bool (bool is an int subclass in Python).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PyValue::Int(i) => Some(*i as f64),
            PyValue::Float(f) => Some(*f),
            PyValue::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }
}

/// An evaluation failure (Python would raise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError;

type R<T> = Result<T, EvalError>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(PyValue),
    Str(String),
    Name(String),
    Op(&'static str),
}

const OPS: [&str; 14] = [
    "**", "//", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",", ".", "~",
];

fn tokenize(s: &str) -> R<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == ' ' || c == '\t' || c == '\x0c' {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                // An exponent sign belongs to the literal: 1e-5.
                if (chars[i] == 'e' || chars[i] == 'E')
                    && matches!(chars.get(i + 1), Some('+') | Some('-'))
                {
                    i += 1;
                }
                i += 1;
            }
            let lit: String = chars[start..i].iter().collect();
            toks.push(Tok::Num(number(&lit)?));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            toks.push(Tok::Name(chars[start..i].iter().collect()));
            continue;
        }
        if c == '"' || c == '\'' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or(EvalError)?;
            let body: String = chars[i + 1..i + 1 + end].iter().collect();
            if body.contains('\\') || body.contains('\n') {
                return Err(EvalError);
            }
            toks.push(Tok::Str(body));
            i += end + 2;
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let op = OPS
            .iter()
            .find(|op| rest.starts_with(**op))
            .ok_or(EvalError)?;
        toks.push(Tok::Op(op));
        i += op.chars().count();
    }
    Ok(toks)
}

/// A Python number literal: decimal ints (underscores between digits, no leading zeros unless all
/// zeros), floats with optional exponent.
fn number(lit: &str) -> R<PyValue> {
    let valid_underscores = |s: &str| {
        !s.starts_with('_')
            && !s.ends_with('_')
            && !s.contains("__")
            && !s.contains("_.")
            && !s.contains("._")
    };
    if !valid_underscores(lit) {
        return Err(EvalError);
    }
    let plain = lit.replace('_', "");
    if plain.bytes().all(|b| b.is_ascii_digit()) {
        if plain.len() > 1 && plain.starts_with('0') && plain.bytes().any(|b| b != b'0') {
            return Err(EvalError);
        }
        return Ok(match plain.parse::<i128>() {
            Ok(i) => PyValue::Int(i),
            Err(_) => PyValue::Float(plain.parse::<f64>().map_err(|_| EvalError)?),
        });
    }
    // Floats: digits, at most one '.', optional exponent with digits.
    let (mantissa, exponent) = match plain.find(['e', 'E']) {
        Some(k) => (&plain[..k], Some(&plain[k + 1..])),
        None => (&plain[..], None),
    };
    let mantissa_ok = mantissa.matches('.').count() <= 1
        && mantissa.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && mantissa.bytes().any(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if !mantissa_ok || !exponent_ok {
        return Err(EvalError);
    }
    plain
        .parse::<f64>()
        .map(PyValue::Float)
        .map_err(|_| EvalError)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

/// Evaluates `src` as Python's `eval` would for the supported subset.
pub fn eval(src: &str) -> R<PyValue> {
    let toks = tokenize(src)?;
    if toks.is_empty() {
        return Err(EvalError);
    }
    let mut p = Parser { toks, pos: 0 };
    let v = p.tuple()?;
    if p.pos != p.toks.len() {
        return Err(EvalError);
    }
    Ok(v)
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> R<()> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(EvalError)
        }
    }

    fn at_end_of_items(&self) -> bool {
        matches!(self.peek(), None | Some(Tok::Op(")")) | Some(Tok::Op("]")))
    }

    /// `a, b, c` (a tuple when a comma appears).
    fn tuple(&mut self) -> R<PyValue> {
        let first = self.expr()?;
        if !matches!(self.peek(), Some(Tok::Op(","))) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat(",") {
            if self.at_end_of_items() {
                break;
            }
            items.push(self.expr()?);
        }
        Ok(PyValue::List(items))
    }

    fn expr(&mut self) -> R<PyValue> {
        let mut left = self.term()?;
        loop {
            if self.eat("+") {
                left = arith("+", left, self.term()?)?;
            } else if self.eat("-") {
                left = arith("-", left, self.term()?)?;
            } else {
                return Ok(left);
            }
        }
    }

    fn term(&mut self) -> R<PyValue> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op(o)) if matches!(*o, "*" | "/" | "//" | "%") => *o,
                _ => return Ok(left),
            };
            self.pos += 1;
            left = arith(op, left, self.unary()?)?;
        }
    }

    fn unary(&mut self) -> R<PyValue> {
        if self.eat("-") {
            let v = self.unary()?;
            return arith("-", PyValue::Int(0), numeric(v)?);
        }
        if self.eat("+") {
            return numeric(self.unary()?);
        }
        if self.eat("~") {
            return match self.unary()? {
                PyValue::Int(i) => Ok(PyValue::Int(!i)),
                PyValue::Bool(b) => Ok(PyValue::Int(!(b as i128))),
                _ => Err(EvalError),
            };
        }
        self.power()
    }

    /// `a ** b`: binds tighter than a unary minus on its left, right-associative.
    fn power(&mut self) -> R<PyValue> {
        let base = self.atom()?;
        if self.eat("**") {
            let exp = self.unary()?;
            return arith("**", base, exp);
        }
        Ok(base)
    }

    fn atom(&mut self) -> R<PyValue> {
        let tok = self.peek().cloned().ok_or(EvalError)?;
        self.pos += 1;
        match tok {
            Tok::Num(v) => Ok(v),
            Tok::Str(mut s) => {
                // Adjacent literals concatenate.
                while let Some(Tok::Str(t)) = self.peek().cloned() {
                    s.push_str(&t);
                    self.pos += 1;
                }
                Ok(PyValue::Str(s))
            }
            Tok::Op("(") => {
                if self.eat(")") {
                    return Ok(PyValue::List(Vec::new()));
                }
                let v = self.tuple()?;
                self.expect(")")?;
                Ok(v)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                while !self.eat("]") {
                    items.push(self.expr()?);
                    if !self.eat(",") {
                        self.expect("]")?;
                        break;
                    }
                }
                Ok(PyValue::List(items))
            }
            Tok::Name(n) => match n.as_str() {
                "True" => Ok(PyValue::Bool(true)),
                "False" => Ok(PyValue::Bool(false)),
                "None" => Ok(PyValue::None),
                "math" => self.math(),
                _ => Err(EvalError),
            },
            Tok::Op(_) => Err(EvalError),
        }
    }

    fn math(&mut self) -> R<PyValue> {
        self.expect(".")?;
        let name = match self.peek().cloned() {
            Some(Tok::Name(n)) => n,
            _ => return Err(EvalError),
        };
        self.pos += 1;
        match name.as_str() {
            "pi" => Ok(PyValue::Float(std::f64::consts::PI)),
            "e" => Ok(PyValue::Float(std::f64::consts::E)),
            "pow" | "sqrt" => {
                self.expect("(")?;
                let mut args = vec![self.expr()?];
                while self.eat(",") {
                    if self.at_end_of_items() {
                        break;
                    }
                    args.push(self.expr()?);
                }
                self.expect(")")?;
                let nums: Vec<f64> = args
                    .iter()
                    .map(|a| a.as_f64().ok_or(EvalError))
                    .collect::<R<_>>()?;
                let v = match (name.as_str(), nums.as_slice()) {
                    ("pow", [a, b]) => a.powf(*b),
                    ("sqrt", [a]) if *a >= 0.0 => a.sqrt(),
                    _ => return Err(EvalError),
                };
                // Python raises OverflowError / ValueError where C gives inf / nan.
                if v.is_finite() {
                    Ok(PyValue::Float(v))
                } else {
                    Err(EvalError)
                }
            }
            _ => Err(EvalError),
        }
    }
}

fn numeric(v: PyValue) -> R<PyValue> {
    match v {
        PyValue::Bool(b) => Ok(PyValue::Int(b as i128)),
        PyValue::Int(_) | PyValue::Float(_) => Ok(v),
        _ => Err(EvalError),
    }
}

fn py_floor_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

fn py_mod_f(a: f64, b: f64) -> f64 {
    let r = a % b;
    if r != 0.0 && ((r < 0.0) != (b < 0.0)) {
        r + b
    } else {
        r
    }
}

/// Python arithmetic on ints, floats and bools; ints overflowing i128 continue as floats.
fn arith(op: &str, a: PyValue, b: PyValue) -> R<PyValue> {
    let (a, b) = (numeric(a)?, numeric(b)?);
    if let (PyValue::Int(x), PyValue::Int(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        let exact = match op {
            "+" => x.checked_add(y),
            "-" => x.checked_sub(y),
            "*" => x.checked_mul(y),
            "//" | "%" if y == 0 => return Err(EvalError),
            "//" => Some(py_floor_div(x, y)),
            "%" => Some(x - py_floor_div(x, y) * y),
            "**" if y >= 0 => u32::try_from(y).ok().and_then(|e| x.checked_pow(e)),
            _ => None,
        };
        if let Some(v) = exact {
            return Ok(PyValue::Int(v));
        }
    }
    let (x, y) = (a.as_f64().ok_or(EvalError)?, b.as_f64().ok_or(EvalError)?);
    let v = match op {
        "+" => x + y,
        "-" => x - y,
        "*" => x * y,
        "/" | "//" | "%" if y == 0.0 => return Err(EvalError),
        "/" => x / y,
        "//" => (x / y).floor(),
        "%" => py_mod_f(x, y),
        "**" => {
            if x == 0.0 && y < 0.0 {
                return Err(EvalError);
            }
            if x < 0.0 && y.fract() != 0.0 {
                // Python returns a complex number here.
                return Err(EvalError);
            }
            x.powf(y)
        }
        _ => return Err(EvalError),
    };
    if v.is_infinite() && x.is_finite() && y.is_finite() {
        return Err(EvalError);
    }
    Ok(PyValue::Float(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use PyValue::*;

    #[test]
    fn literals_follow_python() {
        assert_eq!(eval("12"), Ok(Int(12)));
        assert_eq!(eval("-12.5"), Ok(Float(-12.5)));
        assert_eq!(eval(".5"), Ok(Float(0.5)));
        assert_eq!(eval("1."), Ok(Float(1.0)));
        assert_eq!(eval("00.5"), Ok(Float(0.5)));
        assert_eq!(eval("007"), Err(EvalError));
        assert_eq!(eval("000"), Ok(Int(0)));
        assert_eq!(eval("1_000"), Ok(Int(1000)));
        assert_eq!(eval("1e-3"), Ok(Float(0.001)));
        assert_eq!(eval("1.2.3"), Err(EvalError));
        assert_eq!(eval("True"), Ok(Bool(true)));
        assert_eq!(eval("\"(a)\""), Ok(Str("(a)".into())));
        assert_eq!(eval("1,23"), Ok(List(vec![Int(1), Int(23)])));
        assert_eq!(eval("abc"), Err(EvalError));
        assert_eq!(eval(""), Err(EvalError));
    }

    #[test]
    fn arithmetic_follows_python() {
        assert_eq!(eval("1/4"), Ok(Float(0.25)));
        assert_eq!(eval("7//2"), Ok(Int(3)));
        assert_eq!(eval("-7//2"), Ok(Int(-4)));
        assert_eq!(eval("-7%3"), Ok(Int(2)));
        assert_eq!(eval("-2**2"), Ok(Int(-4)));
        assert_eq!(eval("2**-1"), Ok(Float(0.5)));
        assert_eq!(eval("2**3**2"), Ok(Int(512)));
        assert_eq!(eval("3*math.pow(10, 5)"), Ok(Float(300000.0)));
        assert_eq!(eval("math.pow(10, -2)"), Ok(Float(0.01)));
        assert_eq!(eval("(1+2)*3"), Ok(Int(9)));
        assert_eq!(eval("1/0"), Err(EvalError));
        assert_eq!(eval("True+1"), Ok(Int(2)));
    }
}
