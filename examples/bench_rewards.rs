//! Benchmark of the rule rewards: responses per second on long synthetic responses (default 10K
//! responses of about 10K tokens each, the three task types in turn), on one thread and on all.
//!
//! ```text
//! cargo run --release --example bench_rewards -- --responses 10000 --tokens 10000 \
//!     [--write-input /tmp/rewards.jsonl]
//! ```
//! `--write-input` also writes the generated lines as `longrl reward` input, which
//! `scripts/bench_reward_rules.py` scores with the QwenLong-L1 reference for comparison.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use longrl::reward::{HybridConfig, HybridReward, RewardItem, TaskKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rule-reward throughput on long responses.
#[derive(Debug, Parser)]
struct Args {
    /// Responses scored.
    #[arg(long, default_value_t = 10_000)]
    responses: usize,
    /// Approximate length of each response in tokens (4 characters per token).
    #[arg(long, default_value_t = 10_000)]
    tokens: usize,
    /// Seed of the generated text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the responses as JSONL (`longrl reward` input) to this file.
    #[arg(long)]
    write_input: Option<PathBuf>,
}

const WORDS: [&str; 24] = [
    "the",
    "revenue",
    "of",
    "segment",
    "increased",
    "by",
    "percent",
    "in",
    "2023",
    "compared",
    "with",
    "passage",
    "3",
    "states",
    "that",
    "million",
    "so",
    "we",
    "need",
    "to",
    "subtract",
    "1,250.5",
    "answer",
    "wait",
];

struct Line {
    data_source: &'static str,
    response: String,
    gold: String,
}

fn generate(args: &Args) -> Vec<Line> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let chars = args.tokens * 4;
    (0..args.responses)
        .map(|i| {
            let mut text = String::with_capacity(chars + 200);
            text.push_str("<think>\n");
            while text.len() < chars {
                text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
                text.push(if rng.random_range(0..12) == 0 {
                    '\n'
                } else {
                    ' '
                });
            }
            text.push_str("\n</think>\n\n");
            let x: u32 = rng.random_range(0..1000);
            let (data_source, answer, gold) = match i % 3 {
                0 => (
                    "docmath_v1",
                    format!("Therefore, the answer is {}.{}", x, x % 10),
                    format!("{}.{}", x, (x + i as u32 % 2) % 10),
                ),
                1 => (
                    "musique_v1",
                    format!("Therefore, the answer is **the {} Company**.", x),
                    format!("{} company", x + (i as u32 % 2)),
                ),
                _ => {
                    let letter = ["A", "B", "C", "D"][x as usize % 4];
                    (
                        "long_toc_choices_0_20000",
                        format!("The correct answer is ({letter})"),
                        ["A", "B", "C", "D"][(x as usize + i % 2) % 4].to_string(),
                    )
                }
            };
            text.push_str(&answer);
            Line {
                data_source,
                response: text,
                gold,
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let t = Instant::now();
    let lines = generate(&args);
    let bytes: usize = lines.iter().map(|l| l.response.len()).sum();
    eprintln!(
        "generated {} responses, {:.1} MB, in {:.1} s",
        lines.len(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.write_input {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for l in &lines {
            let v = serde_json::json!({
                "data_source": l.data_source,
                "response": l.response,
                "ground_truth": l.gold,
            });
            writeln!(f, "{v}")?;
        }
        f.flush()?;
    }
    let items: Vec<RewardItem<'_>> = lines
        .iter()
        .map(|l| RewardItem {
            task: TaskKind::from_data_source(l.data_source).expect("known source"),
            response: &l.response,
            ground_truth: &l.gold,
            question: None,
            prompt: None,
            response_tokens: None,
            response_ids: &[],
        })
        .collect();
    let reward = HybridReward::new(HybridConfig::default(), None);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = Vec::new();
    for n in [1, threads] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(n).build()?;
        let t = Instant::now();
        let (out, _) = pool.install(|| reward.score_batch(&items))?;
        let s = t.elapsed().as_secs_f64();
        let correct = out.iter().filter(|o| o.acc).count();
        counts.push(correct);
        println!(
            "{n} thread(s): {} responses in {s:.3} s = {:.0} responses/s ({:.0} MB/s); {correct} correct",
            items.len(),
            items.len() as f64 / s,
            bytes as f64 / 1e6 / s
        );
    }
    anyhow::ensure!(
        counts.windows(2).all(|w| w[0] == w[1]),
        "thread counts disagree"
    );
    Ok(())
}
