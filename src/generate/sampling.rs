//! Token sampling from one row of logits: temperature, top-k, top-p, and the log-prob the trainer
//! will recompute.
//!
//! The reported log-prob of a sampled token is `log_softmax(logits / temperature)[token]` over the
//! whole vocabulary (top-k/top-p not applied), as verl computes the behaviour policy's log-probs.
//! Sampling runs on the host, in f64 where it sums, with a per-sequence random stream, so a
//! sequence's samples do not depend on the other sequences of its batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Sampling settings shared by every sequence of a generate call (names as in vLLM / HF).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (argmax) decoding.
    pub temperature: f32,
    /// Nucleus sampling: keep the most probable tokens whose mass reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Keep only the `top_k` most probable tokens (0 = off).
    pub top_k: usize,
    /// Most tokens generated per sequence.
    pub max_new_tokens: usize,
    /// Token ids that end a sequence (EOS, `<|im_end|>`, ...); the stop token is kept in the output.
    pub stop_token_ids: Vec<u32>,
    /// Strings that end a sequence; the text is cut before the stop string (as vLLM does).
    pub stop_strings: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: 256,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_new_tokens,
            ..Self::default()
        }
    }

    /// Checks the ranges of the settings, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Invalid(format!(
                "temperature {}: expected a finite number >= 0 (0 is greedy)",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Invalid(format!(
                "top_p {}: expected a number in (0, 1]",
                self.top_p
            )));
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return Err(Error::Invalid("stop strings must not be empty".into()));
        }
        Ok(())
    }

    /// Whether decoding is greedy (temperature 0 or top-k 1).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }
}

/// The random stream of one sequence.
pub type SeqRng = ChaCha8Rng;

/// The seed of sample `sample` of input `index` in a run seeded with `seed` (SplitMix64 mixing, so
/// nearby indices give unrelated streams). Independent runs that pass these seeds reproduce the
/// samples of a grouped run.
pub fn sample_seed(seed: u64, index: u64, sample: u64) -> u64 {
    let mut z = seed;
    for v in [index, sample] {
        z = splitmix64(z ^ splitmix64(v.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    }
    z
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random stream for one sequence.
pub fn seq_rng(seed: u64) -> SeqRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A sort key that orders tokens by descending value, ties broken by the lower index: the
/// f32's bits mapped to an order-preserving u32, inverted, above the index. Sorting plain u64 keys
/// is several times faster than sorting indices with a comparator that reads the logits.
fn desc_key(value: f32, index: u32) -> u64 {
    let bits = value.to_bits();
    let ordered = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    ((!ordered as u64) << 32) | index as u64
}

/// The token index of a [`desc_key`].
fn key_index(key: u64) -> u32 {
    key as u32
}

/// Index of the largest entry (the first one on ties), as `argmax` does.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Reusable buffers of [`sample_row`], so that no vocabulary-sized buffer is allocated per token.
#[derive(Debug, Clone, Default)]
pub struct SampleScratch {
    /// Sort keys of the candidate tokens ([`desc_key`]).
    keys: Vec<u64>,
    /// `exp(logit / temperature - max)` of every token.
    weights: Vec<f64>,
}

/// Partially orders `keys` (ascending, i.e. most probable first) so that its first `m` entries are
/// the `m` smallest keys, where `m` is the smallest count whose weight sum reaches `target`
/// (`> target` when `strict`, else `>= target`); returns `m` and that sum, or `keys.len()` and the
/// total when no prefix reaches it. Expected linear time: a quickselect that keeps the weight of
/// the part it has passed, instead of a sort of the whole vocabulary (the nucleus of a flat
/// distribution is most of it).
fn prefix_reaching(keys: &mut [u64], weights: &[f64], target: f64, strict: bool) -> (usize, f64) {
    let reached = |m: f64| if strict { m > target } else { m >= target };
    let weight = |k: &u64| weights[key_index(*k) as usize];
    let (mut lo, mut hi) = (0, keys.len());
    let mut before = 0.0;
    while hi - lo > 64 {
        let mid = lo + (hi - lo) / 2;
        keys[lo..hi].select_nth_unstable(mid - lo);
        let left: f64 = keys[lo..mid].iter().map(weight).sum();
        if reached(before + left) {
            hi = mid;
        } else {
            before += left;
            lo = mid;
        }
    }
    keys[lo..hi].sort_unstable();
    for (i, k) in keys.iter().enumerate().take(hi).skip(lo) {
        before += weight(k);
        if reached(before) {
            return (i + 1, before);
        }
    }
    let rest: f64 = keys[hi..].iter().map(weight).sum();
    (keys.len(), before + rest)
}

/// Picks the next token from `row` (the logits over the vocabulary) and returns it with its
/// log-prob under `log_softmax(row / temperature)` (temperature 1 when greedy).
///
/// Top-k keeps the `top_k` most probable tokens (ties: lower index first); top-p then keeps the
/// shortest most-probable prefix of them whose mass reaches `top_p` of theirs; the token is drawn
/// from what is kept in proportion to its probability.
pub fn sample_row(
    row: &[f32],
    p: &SamplingParams,
    rng: &mut SeqRng,
    scratch: &mut SampleScratch,
) -> (u32, f32) {
    let n = row.len();
    let inv_t = if p.temperature > 0.0 {
        1.0 / p.temperature as f64
    } else {
        1.0
    };
    let best = argmax(row);
    let max = row[best] as f64 * inv_t;
    let weights = &mut scratch.weights;
    weights.clear();
    weights.extend(row.iter().map(|&x| (x as f64 * inv_t - max).exp()));
    let total: f64 = weights.iter().sum();
    let lse = max + total.ln();
    let logprob = |i: usize| (row[i] as f64 * inv_t - lse) as f32;
    if p.is_greedy() {
        return (best as u32, logprob(best));
    }
    let k = if p.top_k == 0 { n } else { p.top_k.min(n) };
    if k == n && p.top_p >= 1.0 {
        // Plain sampling: one pass over the vocabulary.
        let u = rng.random::<f64>() * total;
        let mut acc = 0.0;
        for (i, w) in weights.iter().enumerate() {
            acc += w;
            if acc > u {
                return (i as u32, logprob(i));
            }
        }
        return (best as u32, logprob(best));
    }
    let keys = &mut scratch.keys;
    keys.clear();
    keys.extend(row.iter().enumerate().map(|(i, &v)| desc_key(v, i as u32)));
    // The top-k candidates (unordered).
    if k < n {
        keys.select_nth_unstable(k - 1);
        keys.truncate(k);
    }
    // The nucleus: the shortest most-probable prefix whose mass reaches top_p of the candidates'.
    let (keep, mass) = if p.top_p < 1.0 {
        let cand_mass: f64 = if k < n {
            keys.iter()
                .map(|&key| weights[key_index(key) as usize])
                .sum()
        } else {
            total
        };
        prefix_reaching(keys, weights, p.top_p as f64 * cand_mass, false)
    } else {
        let mass = keys
            .iter()
            .map(|&key| weights[key_index(key) as usize])
            .sum();
        (keys.len(), mass)
    };
    // The draw: walk the nucleus in its (partial) order until the running mass passes u; any fixed
    // order draws each kept token with its probability, so no further sorting is needed.
    let u = rng.random::<f64>() * mass;
    let nucleus = &keys[..keep];
    let mut acc = 0.0;
    let mut key = nucleus[keep - 1];
    for &k in nucleus {
        acc += weights[key_index(k) as usize];
        if acc > u {
            key = k;
            break;
        }
    }
    let i = key_index(key);
    (i, logprob(i as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, top_k: usize) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            top_k,
            ..SamplingParams::default()
        }
    }

    fn counts(row: &[f32], p: &SamplingParams, draws: usize) -> Vec<usize> {
        let mut rng = seq_rng(7);
        let mut scratch = SampleScratch::default();
        let mut c = vec![0; row.len()];
        for _ in 0..draws {
            c[sample_row(row, p, &mut rng, &mut scratch).0 as usize] += 1;
        }
        c
    }

    #[test]
    fn prefix_selection_equals_the_sorted_walk() {
        let mut rng = seq_rng(11);
        for case in 0..200 {
            let n = [1, 2, 63, 64, 65, 300, 5000][case % 7];
            let row: Vec<f32> = (0..n)
                .map(|_| (rng.random::<f32>() * 8.0).floor() - 4.0)
                .collect();
            let weights: Vec<f64> = row.iter().map(|&x| (x as f64).exp()).collect();
            let mut sorted: Vec<u64> = row
                .iter()
                .enumerate()
                .map(|(i, &v)| desc_key(v, i as u32))
                .collect();
            sorted.sort_unstable();
            let total: f64 = weights.iter().sum();
            let target = rng.random::<f64>() * total * 1.05;
            for strict in [false, true] {
                let mut acc = 0.0;
                let mut expected = n;
                for (i, k) in sorted.iter().enumerate() {
                    acc += weights[key_index(*k) as usize];
                    if (strict && acc > target) || (!strict && acc >= target) {
                        expected = i + 1;
                        break;
                    }
                }
                let mut keys = sorted.clone();
                keys.reverse();
                let (m, mass) = prefix_reaching(&mut keys, &weights, target, strict);
                assert_eq!(m, expected, "n {n}, target {target}, strict {strict}");
                let mut head = keys[..m].to_vec();
                head.sort_unstable();
                assert_eq!(head, sorted[..m], "the first m keys are the m smallest");
                if m < n {
                    assert_eq!(keys[m - 1], sorted[m - 1], "the m-th key sits at m - 1");
                }
                let want: f64 = sorted[..m]
                    .iter()
                    .map(|k| weights[key_index(*k) as usize])
                    .sum();
                assert!((mass - want).abs() < 1e-9 * want.max(1.0));
            }
        }
    }

    #[test]
    fn greedy_picks_argmax_with_full_logprob() {
        let row = [0.1f32, 2.0, -1.0, 2.0];
        let (tok, lp) = sample_row(
            &row,
            &params(0.0, 1.0, 0),
            &mut seq_rng(1),
            &mut SampleScratch::default(),
        );
        assert_eq!(tok, 1, "first of the tied maxima");
        let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((lp as f64 - (2.0 - lse)).abs() < 1e-6);
    }

    #[test]
    fn logprob_ignores_top_k_and_top_p() {
        let row: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let p = params(0.7, 0.5, 5);
        let (tok, lp) = sample_row(&row, &p, &mut seq_rng(3), &mut SampleScratch::default());
        let z: Vec<f64> = row.iter().map(|&x| x as f64 / 0.7).collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        assert!((lp as f64 - (z[tok as usize] - lse)).abs() < 1e-5);
    }

    #[test]
    fn top_k_restricts_support_and_matches_softmax() {
        let row = [1.0f32, 3.0, 2.0, 0.5, 2.5];
        let draws = 40_000;
        let c = counts(&row, &params(1.0, 1.0, 3), draws);
        assert_eq!(c[0] + c[3], 0, "outside the top 3: {c:?}");
        // Within the top 3, frequencies follow the renormalised softmax (5 sigma bounds).
        let w: Vec<f64> = [3.0f64, 2.0, 2.5].iter().map(|x| x.exp()).collect();
        let s: f64 = w.iter().sum();
        for (idx, wi) in [1usize, 2, 4].iter().zip(&w) {
            let p = wi / s;
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            let f = c[*idx] as f64 / draws as f64;
            assert!((f - p).abs() < 5.0 * sd, "token {idx}: freq {f} vs p {p}");
        }
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps exactly the first two (the mass
        // before the third is 0.8), renormalised to 0.625 / 0.375.
        let probs = [0.5f64, 0.3, 0.15, 0.05];
        let row: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
        let draws = 40_000;
        let c = counts(&row, &params(1.0, 0.75, 0), draws);
        assert_eq!(c[2] + c[3], 0, "tail sampled: {c:?}");
        let f = c[0] as f64 / draws as f64;
        let sd = (0.625f64 * 0.375 / draws as f64).sqrt();
        assert!((f - 0.625).abs() < 5.0 * sd, "freq of the top token {f}");
        // top_p 0.85 takes the third token in too.
        let c = counts(&row, &params(1.0, 0.85, 0), draws);
        assert!(c[2] > 0 && c[3] == 0, "{c:?}");
    }

    #[test]
    fn top_p_on_a_large_vocabulary_grows_its_prefix() {
        // A flat distribution over 1000 tokens: top_p 0.5 keeps 500 of them (the lazy sort must
        // grow past its first 64).
        let row = vec![0.0f32; 1000];
        let c = counts(&row, &params(1.0, 0.5, 0), 20_000);
        let used = c.iter().filter(|&&x| x > 0).count();
        assert!(
            c[500..].iter().all(|&x| x == 0),
            "tokens past the nucleus were drawn"
        );
        assert!(used > 450, "only {used} of the 500 nucleus tokens drawn");
    }

    #[test]
    fn plain_sampling_matches_softmax() {
        let row = [0.0f32, 1.0, 2.0];
        let draws = 60_000;
        let c = counts(&row, &params(0.5, 1.0, 0), draws);
        let w: Vec<f64> = row.iter().map(|&x| (x as f64 / 0.5).exp()).collect();
        let s: f64 = w.iter().sum();
        for i in 0..3 {
            let p = w[i] / s;
            let sd = (p * (1.0 - p) / draws as f64).sqrt();
            let f = c[i] as f64 / draws as f64;
            assert!((f - p).abs() < 5.0 * sd + 1e-4, "token {i}: {f} vs {p}");
        }
    }

    #[test]
    fn sort_keys_order_by_descending_value_then_index() {
        let vals = [1.5f32, -0.0, 0.0, -3.0, 1.5, f32::MAX, -f32::MAX, 2e-30];
        let mut keys: Vec<u64> = vals
            .iter()
            .enumerate()
            .map(|(i, &v)| desc_key(v, i as u32))
            .collect();
        keys.sort_unstable();
        let order: Vec<u32> = keys.into_iter().map(key_index).collect();
        assert_eq!(order, vec![5, 0, 4, 7, 2, 1, 3, 6]);
    }

    #[test]
    fn seeds_are_distinct_and_stable() {
        let a = sample_seed(1, 0, 0);
        assert_eq!(a, sample_seed(1, 0, 0));
        assert_ne!(a, sample_seed(1, 0, 1));
        assert_ne!(a, sample_seed(1, 1, 0));
        assert_ne!(sample_seed(1, 0, 1), sample_seed(1, 1, 0));
    }

    #[test]
    fn validate_names_the_setting() {
        assert!(params(-1.0, 1.0, 0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        assert!(params(1.0, 0.0, 0)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("top_p"));
    }
}
