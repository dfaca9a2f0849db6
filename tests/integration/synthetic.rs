//! The synthetic long-document QA generator: determinism, token lengths, gradable gold answers,
//! answers grounded in the document, JSONL round trip and speed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use longrl::data::load_rl;
use longrl::data::synthetic::{generate, write_jsonl, SyntheticConfig, SyntheticSample};
use longrl::reward::rule::{self, RuleOptions};
use longrl::reward::TaskKind;
use longrl::tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-qwen2-chatml");
    Tokenizer::from_dir(dir).unwrap()
}

fn config(seed: u64, count: usize, min_tokens: usize, max_tokens: usize) -> SyntheticConfig {
    SyntheticConfig {
        seed,
        count,
        min_tokens,
        max_tokens,
        tasks: vec![TaskKind::DocMath, TaskKind::MultipleChoice, TaskKind::Qa],
    }
}

/// The prompt's length as training and evaluation see it: through the chat template.
fn prompt_tokens(tok: &Tokenizer, s: &SyntheticSample) -> usize {
    longrl::data::prompt_ids(tok, &s.sample.user_prompt().unwrap())
        .unwrap()
        .len()
}

/// A wrong answer of the same shape as the gold one.
fn wrong_answer(s: &SyntheticSample) -> String {
    let gold = &s.sample.answer;
    match s.task_kind() {
        TaskKind::DocMath => (gold.parse::<u32>().unwrap() + 1).to_string(),
        TaskKind::MultipleChoice => if gold == "A" { "B" } else { "A" }.to_string(),
        TaskKind::Qa => {
            // Another name the document states in the same role (the last word of a distractor
            // line of the same form), else a name the document never mentions.
            let doc = s.sample.document.as_deref().unwrap();
            let pattern = if s.sample.question.as_deref().unwrap().contains("province") {
                " is in the province of "
            } else {
                " is based in "
            };
            doc.lines()
                .filter_map(|l| l.split_once(pattern))
                .map(|(_, name)| name.trim_end_matches('.').to_string())
                .find(|name| name != gold)
                .unwrap_or_else(|| "Nowhere".to_string())
        }
    }
}

#[test]
fn same_seed_same_samples_other_seed_other_samples() {
    let tok = tokenizer();
    let a = generate(&config(7, 30, 200, 300), &tok).unwrap();
    let b = generate(&config(7, 30, 200, 300), &tok).unwrap();
    let c = generate(&config(8, 30, 200, 300), &tok).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // A sample does not depend on how many follow it.
    let d = generate(&config(7, 10, 200, 300), &tok).unwrap();
    assert_eq!(&a[..10], &d[..]);
}

#[test]
fn prompt_lengths_lie_in_the_range() {
    let tok = tokenizer();
    for (min, max) in [(200, 300), (800, 1200)] {
        let samples = generate(&config(1, 60, min, max), &tok).unwrap();
        let lens: Vec<usize> = samples.iter().map(|s| prompt_tokens(&tok, s)).collect();
        for (s, &n) in samples.iter().zip(&lens) {
            assert!((min..=max).contains(&n), "{}: {n} tokens", s.sample.id);
        }
        // The targets spread over the range rather than piling up at one end.
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        let mid = (min + max) as f64 / 2.0;
        assert!((mean - mid).abs() < (max - min) as f64 / 4.0, "mean {mean}");
    }
}

#[test]
fn the_two_facts_of_a_question_sit_a_third_of_the_document_apart() {
    let tok = tokenizer();
    let samples = generate(&config(4, 60, 300, 600), &tok).unwrap();
    let mut checked = 0;
    for s in samples.iter().filter(|s| s.facts.len() == 2) {
        let doc = s.sample.document.as_deref().unwrap();
        let lines: Vec<&str> = doc.lines().collect();
        let at: Vec<usize> = s
            .facts
            .iter()
            .map(|f| lines.iter().position(|l| l == f).unwrap())
            .collect();
        let between = at[0].abs_diff(at[1]) - 1;
        let distractors = lines.len() - 2;
        assert!(
            between >= distractors / 3 - 1,
            "{}: facts at lines {at:?} of {}",
            s.sample.id,
            lines.len()
        );
        checked += 1;
    }
    assert!(checked >= 30, "{checked} two-fact samples");
}

#[test]
fn gold_responses_score_one_and_wrong_answers_zero() {
    let tok = tokenizer();
    let samples = generate(&config(2, 300, 200, 400), &tok).unwrap();
    let opts = RuleOptions::default();
    for s in &samples {
        let task = s.sample.task_kind().unwrap();
        assert_eq!(task, s.task_kind());
        let record = s.sft_record(true);
        assert_eq!(record.prompt.len(), 1);
        assert_eq!(record.prompt[0].role, "user");
        assert_eq!(record.prompt[0].content, s.sample.user_prompt().unwrap());
        assert!(record.response.starts_with("<think>\n"));
        let r = rule::score(task, &record.response, &s.sample.answer, &opts);
        assert_eq!(r.score, 1.0, "{}: {}", s.sample.id, record.response);

        let mut wrong = s.clone();
        wrong.sample.answer = wrong_answer(s);
        let bad = wrong.sft_record(true).response;
        let r = rule::score(task, &bad, &s.sample.answer, &opts);
        assert_eq!(
            r.score, 0.0,
            "{}: {bad} against {}",
            s.sample.id, s.sample.answer
        );

        // Without thinking the response is the answer line alone.
        let plain = s.sft_record(false).response;
        assert!(!plain.contains("<think>"));
        let free = RuleOptions {
            require_think: false,
            ..RuleOptions::default()
        };
        assert_eq!(
            rule::score(task, &plain, &s.sample.answer, &free).score,
            1.0
        );
    }
}

#[test]
fn answers_are_grounded_in_the_document() {
    let tok = tokenizer();
    let samples = generate(&config(3, 300, 300, 600), &tok).unwrap();
    for s in &samples {
        let doc = s.sample.document.as_deref().unwrap();
        let lines: Vec<&str> = doc.lines().collect();
        for fact in &s.facts {
            assert_eq!(
                lines.iter().filter(|l| *l == fact).count(),
                1,
                "{}: {fact}",
                s.sample.id
            );
            assert!(s.reasoning.contains(fact.as_str()));
        }
        match s.task_kind() {
            TaskKind::Qa => {
                assert_eq!(s.facts.len(), 2);
                assert!(doc.contains(&s.sample.answer), "{}", s.sample.id);
                // The answer is stated once: only in the second hop.
                assert_eq!(doc.matches(s.sample.answer.as_str()).count(), 1);
                assert!(s.facts[1].contains(&s.sample.answer));
                assert!(s.sample.choices.is_none());
            }
            TaskKind::DocMath => {
                assert_eq!(s.facts.len(), 2);
                let v: Vec<i64> = s
                    .facts
                    .iter()
                    .map(|f| f.split(' ').nth(4).unwrap().parse().unwrap())
                    .collect();
                let answer: i64 = s.sample.answer.parse().unwrap();
                assert!(answer == v[0] + v[1] || answer == (v[0] - v[1]).abs());
                assert!((10..=99).contains(&v[0]) && (10..=99).contains(&v[1]));
                assert!(s.sample.choices.is_none());
            }
            TaskKind::MultipleChoice => {
                assert_eq!(s.facts.len(), 1);
                let choices = s.sample.choices.as_ref().unwrap();
                assert_eq!(choices.len(), 4);
                assert_eq!(choices.iter().collect::<HashSet<_>>().len(), 4);
                let k = (s.sample.answer.as_bytes()[0] - b'A') as usize;
                // The chosen object is one of the two the fact compares.
                let label = choices[k].rsplit(' ').next().unwrap();
                assert!(
                    s.facts[0].contains(&format!(" {label} "))
                        || s.facts[0].ends_with(&format!(" {label}.")),
                    "{}: {} / {}",
                    s.sample.id,
                    s.facts[0],
                    choices[k]
                );
                let prompt = s.sample.user_prompt().unwrap();
                assert!(prompt.contains(&format!("\n({}) {}", s.sample.answer, choices[k])));
            }
        }
    }
}

#[test]
fn jsonl_round_trips_through_load_rl() {
    let tok = tokenizer();
    let samples = generate(&config(4, 12, 200, 300), &tok).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synth.jsonl");
    write_jsonl(&samples, &path).unwrap();
    let loaded = load_rl(&path).unwrap();
    let original: Vec<_> = samples.iter().map(|s| s.sample.clone()).collect();
    assert_eq!(loaded, original);
}

#[test]
fn families_mix_in_turn_with_their_data_sources() {
    let tok = tokenizer();
    let samples = generate(&config(5, 9, 200, 300), &tok).unwrap();
    let kinds: Vec<TaskKind> = samples.iter().map(|s| s.task_kind()).collect();
    assert_eq!(
        kinds,
        [TaskKind::DocMath, TaskKind::MultipleChoice, TaskKind::Qa].repeat(3)
    );
    for (s, k) in samples.iter().zip(&kinds) {
        assert!(s.sample.task.is_none());
        let (source, id) = match k {
            TaskKind::DocMath => ("docmath_synth", "synth-docmath-"),
            TaskKind::MultipleChoice => ("long_toc_choices_synth", "synth-multiple_choice-"),
            TaskKind::Qa => ("musique_synth", "synth-qa-"),
        };
        assert_eq!(s.sample.data_source.as_deref(), Some(source));
        assert!(s.sample.id.starts_with(id), "{}", s.sample.id);
    }
    assert_eq!(samples[7].sample.id, "synth-multiple_choice-000007");
    // One family alone.
    let only = SyntheticConfig {
        tasks: vec![TaskKind::Qa],
        ..config(5, 4, 200, 300)
    };
    assert!(generate(&only, &tok)
        .unwrap()
        .iter()
        .all(|s| s.task_kind() == TaskKind::Qa));
}

#[test]
fn impossible_ranges_are_errors() {
    let tok = tokenizer();
    let e = generate(&config(6, 3, 10, 20), &tok)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_tokens (20) is too small"), "{e}");
    let e = generate(&config(6, 3, 300, 200), &tok)
        .unwrap_err()
        .to_string();
    assert!(e.contains("greater than max_tokens"), "{e}");
    let none = SyntheticConfig {
        tasks: vec![],
        ..config(6, 3, 200, 300)
    };
    assert!(generate(&none, &tok).is_err());
}

#[test]
fn long_prompts_and_many_samples_are_fast() {
    let tok = tokenizer();
    let start = Instant::now();
    let samples = generate(&config(9, 2000, 900, 1100), &tok).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let lens: Vec<usize> = samples.iter().map(|s| prompt_tokens(&tok, s)).collect();
    let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
    eprintln!(
        "2000 samples of 900-1100 tokens in {secs:.2} s (mean {mean:.0}, min {}, max {})",
        lens.iter().min().unwrap(),
        lens.iter().max().unwrap()
    );
    assert!(lens.iter().all(|n| (900..=1100).contains(n)));
    assert!(secs < 60.0, "{secs} s");
}
