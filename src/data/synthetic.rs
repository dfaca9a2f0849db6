//! The built-in synthetic long-document QA set: the pipeline's embedded default dataset, small
//! enough for a tiny model to learn with SFT then RL on a CPU, yet shaped like DocQA-RL-1.6K.
//!
//! Three families, each graded by the rule verifier of its real counterpart:
//! - `docmath` (`docmath_synth`): the sum or difference of two 2-digit figures stated in the
//!   document ("The Kaven depot shipped 47 crates in March.").
//! - `multiple_choice` (`long_toc_choices_synth`): which of two objects is heavier, taller, ... from
//!   one stated comparison; four `(A)`-`(D)` options, the gold answer is the letter.
//! - `qa` (`musique_synth`): a two-hop question over two facts on separate lines ("The Fosan river
//!   flows through Kaven." + "Kaven is in the province of Litot.").
//!
//! The facts sit among distractor lines (true statements of the same kind about other entities or
//! other figures) until the templated prompt reaches a token length drawn uniformly from the
//! configured range; the two facts of a `docmath` or `qa` question are then placed far apart, one
//! in the first third of the document and one in the last, so a longer document puts more text
//! between the passages the answer needs. A distractor never mentions an asked entity (for `docmath`:
//! never states an asked figure, and no distractor figure equals an asked figure or the answer),
//! so the answer is always determined by the document. Everything is drawn from one
//! [`ChaCha8Rng`] stream per sample, so a seed and options always give the same samples.

use std::io::Write;
use std::path::Path;

use rand::seq::{index, IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{RlSample, SftRecord, TaskKind};
use crate::error::{Error, Result};
use crate::tokenizer::{Message, Tokenizer};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Seed of the generator: the same seed and options give the same samples.
    pub seed: u64,
    /// Number of samples.
    pub count: usize,
    /// Least length of a sample's templated prompt, in tokens of the model's tokenizer.
    pub min_tokens: usize,
    /// Greatest length of a sample's templated prompt, in tokens (each sample's target length is
    /// drawn uniformly from `min_tokens..=max_tokens`).
    pub max_tokens: usize,
    /// Task families to mix, taken in turn (sample `i` is of family `tasks[i % tasks.len()]`).
    pub tasks: Vec<TaskKind>,
}

impl Default for SyntheticConfig {
    /// 1,000 samples of 200-300 tokens, the three families in turn.
    fn default() -> Self {
        Self {
            seed: 0,
            count: 1000,
            min_tokens: 200,
            max_tokens: 300,
            tasks: vec![TaskKind::DocMath, TaskKind::MultipleChoice, TaskKind::Qa],
        }
    }
}

/// One generated sample: the RL sample plus what SFT needs to imitate a correct solution.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSample {
    /// The RL sample (id `synth-<task>-<index>`, `data_source`, document, question, choices,
    /// gold answer; `task` is left to the data source).
    pub sample: RlSample,
    /// A short correct chain of thought: the facts used, then the step that gives the answer.
    pub reasoning: String,
    /// The document lines that determine the answer (each is a whole line of the document).
    pub facts: Vec<String>,
}

impl SyntheticSample {
    /// The verifier of this sample.
    pub fn task_kind(&self) -> TaskKind {
        self.sample
            .task_kind()
            .expect("synthetic samples carry a known data source")
    }

    /// The final answer line, in the form the task's rule verifier parses: `Therefore, the answer
    /// is X.` (QA, DocMath) or `The correct answer is (X).` (multiple choice).
    pub fn answer_line(&self) -> String {
        match self.task_kind() {
            TaskKind::MultipleChoice => format!("The correct answer is ({}).", self.sample.answer),
            TaskKind::Qa | TaskKind::DocMath => {
                format!("Therefore, the answer is {}.", self.sample.answer)
            }
        }
    }

    /// A correct response: with `think`, `<think>\n{reasoning}\n</think>\n\n` then the answer
    /// line (what the rule verifiers require by default); without, the answer line alone.
    pub fn response(&self, think: bool) -> String {
        if think {
            format!(
                "<think>\n{}\n</think>\n\n{}",
                self.reasoning,
                self.answer_line()
            )
        } else {
            self.answer_line()
        }
    }

    /// The warm-up SFT example of this sample: the templated user prompt and a correct
    /// [`response`](Self::response).
    pub fn sft_record(&self, think: bool) -> SftRecord {
        let prompt = self
            .sample
            .user_prompt()
            .expect("synthetic samples have a document and a question");
        SftRecord {
            prompt: vec![Message::new("user", prompt)],
            response: self.response(think),
        }
    }
}

/// The `data_source` written for a family (it selects the family's rule verifier).
pub fn data_source(task: TaskKind) -> &'static str {
    match task {
        TaskKind::DocMath => "docmath_synth",
        TaskKind::MultipleChoice => "long_toc_choices_synth",
        TaskKind::Qa => "musique_synth",
    }
}

/// Generates `config.count` samples; prompt lengths are measured with `tokenizer` (the templated
/// user prompt of [`RlSample::user_prompt`], encoded without special tokens). Fails when the range
/// is empty, no family is given, or a sample's facts and question alone exceed `max_tokens`.
pub fn generate(config: &SyntheticConfig, tokenizer: &Tokenizer) -> Result<Vec<SyntheticSample>> {
    if config.tasks.is_empty() {
        return Err(Error::Invalid(
            "synthetic data: `tasks` is empty; give at least one of docmath, multiple_choice, qa"
                .into(),
        ));
    }
    if config.min_tokens > config.max_tokens {
        return Err(Error::Invalid(format!(
            "synthetic data: min_tokens ({}) is greater than max_tokens ({})",
            config.min_tokens, config.max_tokens
        )));
    }
    (0..config.count)
        .into_par_iter()
        .map(|i| generate_one(config, tokenizer, i))
        .collect()
}

/// Writes samples as longrl RL JSONL (one [`RlSample`] a line), readable by
/// [`load_rl`](super::load_rl).
pub fn write_jsonl(samples: &[SyntheticSample], path: &Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    for s in samples {
        let line = serde_json::to_string(&s.sample)
            .map_err(|e| Error::Invalid(format!("cannot serialise sample {}: {e}", s.sample.id)))?;
        writeln!(out, "{line}").map_err(|e| Error::io(path, e))?;
    }
    out.flush().map_err(|e| Error::io(path, e))
}

// The vocabulary: invented, alphabetic, 4-5 letters, no name a substring of another (so QA's
// sub-EM never confuses two of them), each used in a single role.

const RIVERS: [&str; 30] = [
    "Fosan", "Gubu", "Buzel", "Dutar", "Keve", "Noba", "Lirom", "Zako", "Fomul", "Nufil", "Numon",
    "Radan", "Silun", "Vuka", "Goru", "Nemit", "Runil", "Zove", "Fenu", "Geka", "Tuku", "Vetil",
    "Luno", "Kezo", "Mepuk", "Bigik", "Pozek", "Lupun", "Pavani", "Logila",
];

const TOWNS: [&str; 50] = [
    "Kaven", "Bavir", "Kanat", "Rebu", "Fibes", "Pekol", "Lakar", "Tegil", "Meba", "Lules", "Pegu",
    "Kafot", "Buso", "Pura", "Dabe", "Nibo", "Sudon", "Niva", "Sokum", "Kodu", "Fuzun", "Gono",
    "Dibi", "Dazi", "Gimuk", "Mekot", "Fedem", "Delur", "Kuga", "Kemo", "Vagen", "Fipo", "Daku",
    "Migus", "Keso", "Nati", "Soga", "Dunur", "Fige", "Mivi", "Vobon", "Nupit", "Zusire", "Lebim",
    "Gegot", "Bobon", "Vapeka", "Mudimi", "Nivor", "Motugo",
];

const PROVINCES: [&str; 20] = [
    "Litot", "Keta", "Liluk", "Katu", "Bedo", "Bize", "Pemen", "Dirat", "Tigor", "Firet", "Gupe",
    "Sobar", "Luzes", "Dutu", "Reza", "Mogal", "Damulo", "Fufam", "Larodu", "Govuvo",
];

const PEOPLE: [&str; 40] = [
    "Sero", "Mider", "Pasim", "Sokut", "Nunem", "Bedi", "Bumen", "Geni", "Sedi", "Firi", "Lages",
    "Mevi", "Zopun", "Potik", "Lival", "Tatas", "Barik", "Zimi", "Sulu", "Vabur", "Kedus", "Zefit",
    "Remu", "Nafa", "Mukuk", "Bubol", "Tubozo", "Litat", "Rele", "Kati", "Nulul", "Tafal",
    "Turoze", "Biper", "Sipim", "Semu", "Tulat", "Loni", "Volet", "Lesim",
];

const COMPANIES: [&str; 24] = [
    "Kilok", "Napun", "Fobu", "Lodo", "Zeten", "Nuva", "Doma", "Giko", "Vufe", "Vitir", "Sesak",
    "Konot", "Sivam", "Dunum", "Kope", "Nefeva", "Nute", "Rasifi", "Dulek", "Ruva", "Gotem",
    "Pakol", "Nubone", "Lomafi",
];

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A kind of site of the `docmath` family: "The {name} {kind} {past} {n} {unit} in {month}."
struct SiteKind {
    kind: &'static str,
    past: &'static str,
    base: &'static str,
    unit: &'static str,
}

const SITE_KINDS: [SiteKind; 5] = [
    SiteKind {
        kind: "depot",
        past: "shipped",
        base: "ship",
        unit: "crates",
    },
    SiteKind {
        kind: "farm",
        past: "harvested",
        base: "harvest",
        unit: "sacks",
    },
    SiteKind {
        kind: "mill",
        past: "produced",
        base: "produce",
        unit: "barrels",
    },
    SiteKind {
        kind: "store",
        past: "sold",
        base: "sell",
        unit: "baskets",
    },
    SiteKind {
        kind: "mine",
        past: "loaded",
        base: "load",
        unit: "wagons",
    },
];

/// A comparison of the `multiple_choice` family: "{Noun} K is {more} than {noun} M."
struct Scale {
    noun: &'static str,
    more: &'static str,
    less: &'static str,
}

const SCALES: [Scale; 6] = [
    Scale {
        noun: "box",
        more: "heavier",
        less: "lighter",
    },
    Scale {
        noun: "tower",
        more: "taller",
        less: "shorter",
    },
    Scale {
        noun: "rope",
        more: "longer",
        less: "shorter",
    },
    Scale {
        noun: "lamp",
        more: "brighter",
        less: "dimmer",
    },
    Scale {
        noun: "cart",
        more: "faster",
        less: "slower",
    },
    Scale {
        noun: "tree",
        more: "older",
        less: "younger",
    },
];

/// Object labels of the `multiple_choice` family (no A-D, which name the options; no I or O).
const LABELS: [char; 20] = [
    'E', 'F', 'G', 'H', 'J', 'K', 'L', 'M', 'N', 'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y',
    'Z',
];

const OPTION_LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Fewest tokens a distractor line takes (with its newline); bounds how many lines a prompt of
/// `max_tokens` can hold.
const MIN_LINE_TOKENS: usize = 4;

/// A sample before padding: its facts, question and answer, and a pool of distractor lines.
struct Draft {
    task: TaskKind,
    facts: Vec<String>,
    question: String,
    choices: Option<Vec<String>>,
    answer: String,
    reasoning: String,
    distractors: Vec<String>,
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn generate_one(
    config: &SyntheticConfig,
    tokenizer: &Tokenizer,
    index: usize,
) -> Result<SyntheticSample> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(index as u64);
    let task = config.tasks[index % config.tasks.len()];
    // Enough distractors for the longest prompt; the pool is cycled if a prompt needs more.
    let want = config.max_tokens / MIN_LINE_TOKENS + 1;
    let draft = match task {
        TaskKind::DocMath => docmath(&mut rng, want),
        TaskKind::MultipleChoice => multiple_choice(&mut rng, want),
        TaskKind::Qa => qa(&mut rng),
    };
    let mut sample = RlSample {
        id: format!("synth-{}-{index:06}", task.name()),
        data_source: Some(data_source(task).to_string()),
        task: None,
        document: None,
        question: Some(draft.question.clone()),
        choices: draft.choices.clone(),
        prompt: None,
        answer: draft.answer.clone(),
    };
    let document = pad(&draft, &mut sample, config, tokenizer, &mut rng)?;
    sample.document = Some(document);
    Ok(SyntheticSample {
        sample,
        reasoning: draft.reasoning,
        facts: draft.facts,
    })
}

/// Token length of the templated prompt of `sample` with `lines` as its document: the user prompt
/// through the chat template with the generation prompt, as training and evaluation see it.
fn prompt_tokens(
    sample: &mut RlSample,
    lines: &[(String, bool)],
    tokenizer: &Tokenizer,
) -> Result<usize> {
    let doc: Vec<&str> = lines.iter().map(|(l, _)| l.as_str()).collect();
    sample.document = Some(doc.join("\n"));
    Ok(super::prompt::prompt_ids(tokenizer, &sample.user_prompt()?)?.len())
}

/// Places the facts among distractors until the prompt's length reaches a target drawn from
/// `min_tokens..=max_tokens`; returns the document. Each round adds lines while their estimated
/// costs (a line encoded alone, plus one for its newline) fit the gap to the target, then measures
/// the whole prompt; the estimate errs high, so the rounds close in on the target from below in two
/// or three measurements. Should the range still be missed, lines are added or removed one at a
/// time. The facts are then spread apart ([`spread`]).
fn pad(
    draft: &Draft,
    sample: &mut RlSample,
    config: &SyntheticConfig,
    tokenizer: &Tokenizer,
    rng: &mut ChaCha8Rng,
) -> Result<String> {
    let (min, max) = (config.min_tokens, config.max_tokens);
    // Lines with a flag: true for a fact (never removed).
    let mut lines: Vec<(String, bool)> = draft.facts.iter().map(|f| (f.clone(), true)).collect();
    lines.shuffle(rng);
    let mut tokens = prompt_tokens(sample, &lines, tokenizer)?;
    if tokens > max {
        return Err(Error::Invalid(format!(
            "synthetic data: max_tokens ({max}) is too small: a {} sample's facts and question \
             alone take {tokens} tokens",
            draft.task
        )));
    }
    let target = rng.random_range(min..=max);
    let pool = &draft.distractors;
    let mut next = 0usize;
    let mut next_cost = None;
    while tokens < target {
        let mut estimate = tokens;
        let mut added = false;
        loop {
            let line = &pool[next % pool.len()];
            let cost = match next_cost.take() {
                Some(cost) => cost,
                None => tokenizer.encode(line, false)?.len() + 1,
            };
            if estimate + cost > target {
                next_cost = Some(cost);
                break;
            }
            let at = rng.random_range(0..=lines.len());
            lines.insert(at, (line.clone(), false));
            estimate += cost;
            next += 1;
            added = true;
        }
        if !added {
            break;
        }
        tokens = prompt_tokens(sample, &lines, tokenizer)?;
    }
    // `sample.document` holds the last measured document; a range narrower than a line may not be
    // reachable.
    for _ in 0..64 {
        if (min..=max).contains(&tokens) {
            return spread(lines, sample, config, tokenizer, rng);
        }
        if tokens > max {
            let removable: Vec<usize> = (0..lines.len()).filter(|&i| !lines[i].1).collect();
            match removable.choose(rng) {
                Some(&i) => {
                    lines.remove(i);
                }
                None => break,
            }
        } else {
            let line = pool[next % pool.len()].clone();
            next += 1;
            let at = rng.random_range(0..=lines.len());
            lines.insert(at, (line, false));
        }
        tokens = prompt_tokens(sample, &lines, tokenizer)?;
    }
    Err(Error::Invalid(format!(
        "synthetic data: could not fit a {} sample between {min} and {max} tokens; widen the range",
        draft.task
    )))
}

/// Moves the facts of a padded document far apart: with `k` facts and `n` distractor lines, fact
/// `j` (in random order) goes to a random place in the `2j`-th of `2k - 1` equal slices of the
/// distractors, so consecutive facts sit at least `n / (2k - 1)` lines apart, as evidence spread
/// across a long document is. Keeps the padded order should the move take the prompt out of the
/// length range (a different line break merging into a token); returns the document.
fn spread(
    lines: Vec<(String, bool)>,
    sample: &mut RlSample,
    config: &SyntheticConfig,
    tokenizer: &Tokenizer,
    rng: &mut ChaCha8Rng,
) -> Result<String> {
    let mut facts: Vec<String> = lines.iter().filter(|l| l.1).map(|l| l.0.clone()).collect();
    let padded = sample.document.take().unwrap_or_default();
    if facts.len() < 2 {
        return Ok(padded);
    }
    facts.shuffle(rng);
    let mut moved: Vec<(String, bool)> = lines.into_iter().filter(|l| !l.1).collect();
    let (n, slices) = (moved.len(), 2 * facts.len() - 1);
    // Last slice first, so the places drawn for earlier slices stay where they were drawn.
    for (j, fact) in facts.into_iter().enumerate().rev() {
        let at = rng.random_range(2 * j * n / slices..=(2 * j + 1) * n / slices);
        moved.insert(at, (fact, true));
    }
    let tokens = prompt_tokens(sample, &moved, tokenizer)?;
    if (config.min_tokens..=config.max_tokens).contains(&tokens) {
        Ok(sample.document.take().unwrap_or_default())
    } else {
        Ok(padded)
    }
}

/// `docmath`: the sum or difference of two figures of the same kind and month at two sites.
fn docmath(rng: &mut ChaCha8Rng, want: usize) -> Draft {
    let kind_index = rng.random_range(0..SITE_KINDS.len());
    let kind = &SITE_KINDS[kind_index];
    let month_index = rng.random_range(0..MONTHS.len());
    let month = MONTHS[month_index];
    let picked = index::sample(rng, TOWNS.len(), 2);
    let (site_a, site_b) = (picked.index(0), picked.index(1));
    let a = rng.random_range(10..=99u32);
    let b = loop {
        let b = rng.random_range(10..=99u32);
        if b != a {
            break b;
        }
    };
    let fact = |site: usize, v: u32, month: &str, kind: &SiteKind| {
        format!(
            "The {} {} {} {v} {} in {month}.",
            TOWNS[site], kind.kind, kind.past, kind.unit
        )
    };
    let (fa, fb) = (fact(site_a, a, month, kind), fact(site_b, b, month, kind));
    let sum = rng.random_bool(0.5);
    let (question, answer, step) = if sum {
        (
            format!(
                "How many {} did the {} and {} {}s {} in {month} in total?",
                kind.unit, TOWNS[site_a], TOWNS[site_b], kind.kind, kind.base
            ),
            a + b,
            format!("{a} + {b} = {}", a + b),
        )
    } else {
        let ((hi, vh), (lo, vl)) = if a > b {
            ((site_a, a), (site_b, b))
        } else {
            ((site_b, b), (site_a, a))
        };
        (
            format!(
                "How many more {} did the {} {} {} than the {} {} in {month}?",
                kind.unit, TOWNS[hi], kind.kind, kind.base, TOWNS[lo], kind.kind
            ),
            vh - vl,
            format!("{vh} - {vl} = {}", vh - vl),
        )
    };
    // Distractors: other (site, kind, month) figures, never an asked one, never an asked value.
    let keys = TOWNS.len() * SITE_KINDS.len() * MONTHS.len();
    let key = |site: usize| (site * SITE_KINDS.len() + kind_index) * MONTHS.len() + month_index;
    let asked = [key(site_a), key(site_b)];
    let taken = [a, b, answer];
    let amount = (want + asked.len()).min(keys);
    let distractors = index::sample(rng, keys, amount)
        .into_iter()
        .filter(|k| !asked.contains(k))
        .take(want)
        .map(|k| {
            let month = MONTHS[k % MONTHS.len()];
            let kind = &SITE_KINDS[(k / MONTHS.len()) % SITE_KINDS.len()];
            let site = k / (MONTHS.len() * SITE_KINDS.len());
            let v = loop {
                let v = rng.random_range(10..=99u32);
                if !taken.contains(&v) {
                    break v;
                }
            };
            fact(site, v, month, kind)
        })
        .collect();
    Draft {
        task: TaskKind::DocMath,
        reasoning: format!("{fa}\n{fb}\n{step}."),
        facts: vec![fa, fb],
        question,
        choices: None,
        answer: answer.to_string(),
        distractors,
    }
}

/// `multiple_choice`: which of two objects is heavier (lighter, taller, ...), from one stated
/// comparison; the other two options are objects of the same kind.
fn multiple_choice(rng: &mut ChaCha8Rng, want: usize) -> Draft {
    let scale = SCALES.choose(rng).expect("scales are not empty");
    let picked = index::sample(rng, LABELS.len(), 4);
    let (hi, lo) = (LABELS[picked.index(0)], LABELS[picked.index(1)]);
    let others = [LABELS[picked.index(2)], LABELS[picked.index(3)]];
    let noun = scale.noun;
    let compare = |s: &Scale, x: char, y: char, more_first: bool| {
        if more_first {
            format!(
                "{} {x} is {} than {} {y}.",
                capitalise(s.noun),
                s.more,
                s.noun
            )
        } else {
            format!(
                "{} {y} is {} than {} {x}.",
                capitalise(s.noun),
                s.less,
                s.noun
            )
        }
    };
    let fact = compare(scale, hi, lo, rng.random_bool(0.5));
    let ask_more = rng.random_bool(0.5);
    let (cmp, pick, other) = if ask_more {
        (scale.more, hi, lo)
    } else {
        (scale.less, lo, hi)
    };
    let (x, y) = if rng.random_bool(0.5) {
        (hi, lo)
    } else {
        (lo, hi)
    };
    let mut options = [hi, lo, others[0], others[1]];
    options.shuffle(rng);
    let letter = OPTION_LETTERS[options
        .iter()
        .position(|&o| o == pick)
        .expect("the answer is an option")];
    // Distractors: comparisons between other objects, consistent with one hidden order per kind.
    let free: Vec<char> = LABELS
        .iter()
        .copied()
        .filter(|&l| l != hi && l != lo)
        .collect();
    let mut pairs = Vec::new();
    for s in 0..SCALES.len() {
        for i in 0..free.len() {
            for j in i + 1..free.len() {
                pairs.push((s, i, j));
            }
        }
    }
    let ranks: Vec<Vec<usize>> = SCALES
        .iter()
        .map(|_| {
            let mut r: Vec<usize> = (0..free.len()).collect();
            r.shuffle(rng);
            r
        })
        .collect();
    let distractors = index::sample(rng, pairs.len(), want.min(pairs.len()))
        .into_iter()
        .map(|p| {
            let (s, i, j) = pairs[p];
            let (big, small) = if ranks[s][i] > ranks[s][j] {
                (free[i], free[j])
            } else {
                (free[j], free[i])
            };
            compare(&SCALES[s], big, small, rng.random_bool(0.5))
        })
        .collect();
    Draft {
        task: TaskKind::MultipleChoice,
        reasoning: format!(
            "{fact}\nSo the {cmp} {noun} is {noun} {pick}, not {noun} {other}.\n{} {pick} is option ({letter}).",
            capitalise(noun)
        ),
        facts: vec![fact],
        question: format!("Which {noun} is {cmp}, {noun} {x} or {noun} {y}?"),
        choices: Some(options.iter().map(|o| format!("{noun} {o}")).collect()),
        answer: letter.to_string(),
        distractors,
    }
}

/// `qa`: a two-hop question over a small random world (rivers flow through towns, towns lie in
/// provinces, people work for companies based in towns and were born in towns).
fn qa(rng: &mut ChaCha8Rng) -> Draft {
    let river_town: Vec<usize> = RIVERS
        .iter()
        .map(|_| rng.random_range(0..TOWNS.len()))
        .collect();
    let town_province: Vec<usize> = TOWNS
        .iter()
        .map(|_| rng.random_range(0..PROVINCES.len()))
        .collect();
    let person_company: Vec<usize> = PEOPLE
        .iter()
        .map(|_| rng.random_range(0..COMPANIES.len()))
        .collect();
    let person_town: Vec<usize> = PEOPLE
        .iter()
        .map(|_| rng.random_range(0..TOWNS.len()))
        .collect();
    let company_town: Vec<usize> = COMPANIES
        .iter()
        .map(|_| rng.random_range(0..TOWNS.len()))
        .collect();
    let flows = |r: usize| {
        format!(
            "The {} river flows through {}.",
            RIVERS[r], TOWNS[river_town[r]]
        )
    };
    let lies = |t: usize| {
        format!(
            "{} is in the province of {}.",
            TOWNS[t], PROVINCES[town_province[t]]
        )
    };
    let works = |p: usize| format!("{} works for {}.", PEOPLE[p], COMPANIES[person_company[p]]);
    let born = |p: usize| format!("{} was born in {}.", PEOPLE[p], TOWNS[person_town[p]]);
    let based = |c: usize| format!("{} is based in {}.", COMPANIES[c], TOWNS[company_town[c]]);

    let (facts, question, answer, conclusion, asked) = match rng.random_range(0..3) {
        0 => {
            let r = rng.random_range(0..RIVERS.len());
            let t = river_town[r];
            let p = PROVINCES[town_province[t]];
            (
                vec![flows(r), lies(t)],
                format!("Which province does the {} river flow through?", RIVERS[r]),
                p,
                format!(
                    "So the {} river flows through the province of {p}.",
                    RIVERS[r]
                ),
                [RIVERS[r], TOWNS[t], p],
            )
        }
        1 => {
            let n = rng.random_range(0..PEOPLE.len());
            let c = person_company[n];
            let t = TOWNS[company_town[c]];
            (
                vec![works(n), based(c)],
                format!(
                    "In which town is the company that {} works for based?",
                    PEOPLE[n]
                ),
                t,
                format!(
                    "So the company that {} works for is based in {t}.",
                    PEOPLE[n]
                ),
                [PEOPLE[n], COMPANIES[c], t],
            )
        }
        _ => {
            let n = rng.random_range(0..PEOPLE.len());
            let t = person_town[n];
            let p = PROVINCES[town_province[t]];
            (
                vec![born(n), lies(t)],
                format!("In which province was {} born?", PEOPLE[n]),
                p,
                format!("So {} was born in the province of {p}.", PEOPLE[n]),
                [PEOPLE[n], TOWNS[t], p],
            )
        }
    };
    // Distractors: every other fact of the world that mentions none of the asked entities.
    let world = (0..RIVERS.len())
        .map(flows)
        .chain((0..TOWNS.len()).map(lies))
        .chain((0..PEOPLE.len()).map(works))
        .chain((0..PEOPLE.len()).map(born))
        .chain((0..COMPANIES.len()).map(based));
    let mentions = |line: &str, name: &str| {
        line.split(|c: char| !c.is_ascii_alphabetic())
            .any(|w| w == name)
    };
    let mut distractors: Vec<String> = world
        .filter(|line| !asked.iter().any(|name| mentions(line, name)))
        .collect();
    distractors.shuffle(rng);
    let reasoning = format!("{}\n{}\n{conclusion}", facts[0], facts[1]);
    Draft {
        task: TaskKind::Qa,
        facts,
        question,
        choices: None,
        answer: answer.to_string(),
        reasoning,
        distractors,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_distinct_and_never_inside_one_another() {
        let all: Vec<&str> = RIVERS
            .iter()
            .chain(&TOWNS)
            .chain(&PROVINCES)
            .chain(&PEOPLE)
            .chain(&COMPANIES)
            .copied()
            .collect();
        let words: HashSet<String> = MONTHS
            .iter()
            .map(|m| m.to_lowercase())
            .chain(["the", "river", "province", "town", "company"].map(String::from))
            .collect();
        for (i, a) in all.iter().enumerate() {
            assert!(a.chars().all(|c| c.is_ascii_alphabetic()), "{a}");
            assert!((4..=6).contains(&a.len()), "{a}");
            assert!(!words.contains(&a.to_lowercase()), "{a}");
            for b in &all[i + 1..] {
                let (la, lb) = (a.to_lowercase(), b.to_lowercase());
                assert!(!la.contains(&lb) && !lb.contains(&la), "{a} / {b}");
            }
        }
    }

    #[test]
    fn docmath_distractors_never_restate_an_asked_figure() {
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let d = docmath(&mut rng, 400);
            let head = |f: &str| f.split(' ').take(3).collect::<Vec<_>>().join(" ");
            let month = |f: &str| f.rsplit(' ').next().unwrap().to_string();
            for fact in &d.facts {
                for line in &d.distractors {
                    assert!(
                        !(head(line) == head(fact) && month(line) == month(fact)),
                        "{line} / {fact}"
                    );
                }
            }
            let values: HashSet<&str> = d
                .facts
                .iter()
                .map(|f| f.split(' ').nth(4).unwrap())
                .chain([d.answer.as_str()])
                .collect();
            for line in &d.distractors {
                assert!(!values.contains(line.split(' ').nth(4).unwrap()), "{line}");
            }
        }
    }

    #[test]
    fn distractors_avoid_the_asked_entities() {
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let d = qa(&mut rng);
            assert!(!d.distractors.iter().any(|l| l.contains(&d.answer)));
            for fact in &d.facts {
                assert!(!d.distractors.contains(fact));
            }
            let d = multiple_choice(&mut rng, 400);
            let labels: Vec<char> = d.facts[0]
                .split(' ')
                .filter_map(|w| w.trim_end_matches('.').parse::<char>().ok())
                .collect();
            assert_eq!(labels.len(), 2, "{}", d.facts[0]);
            for line in &d.distractors {
                for l in &labels {
                    assert!(!line.contains(&format!(" {l} ")), "{line}");
                    assert!(!line.contains(&format!(" {l}.")), "{line}");
                }
            }
        }
    }
}
