//! The length curriculum and difficulty-aware retrospective sampling of QwenLong-L1.
//!
//! Stage k trains on samples whose templated prompt length L satisfies `L(k-1) < L <= L(k)`.
//! While training, every sample keeps the mean correctness of its rollout groups; at a stage
//! transition the hardest samples of earlier stages (difficulty = 1 / mean reward, never solved =
//! hardest) are carried into the next stage's pool, re-filtered by its length limit, with a
//! configurable count or fraction and sampling weight.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One curriculum stage's input bound and how long it trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// Name in logs and the summary (default `stage1`, `stage2`, ...).
    #[serde(default)]
    pub name: Option<String>,
    /// L(k): the longest templated prompt (tokens) of this stage.
    pub max_input_tokens: usize,
    /// Most response tokens in this stage.
    pub max_output_tokens: usize,
    /// Training steps of this stage (0: use `num_epochs`).
    #[serde(default)]
    pub max_steps: usize,
    /// Passes over the stage's pool when `max_steps` is 0.
    #[serde(default)]
    pub num_epochs: Option<f64>,
}

/// Checks that stages exist and their input bounds strictly increase.
pub fn validate_stages(stages: &[StageConfig]) -> Result<()> {
    if stages.is_empty() {
        return Err(Error::Invalid(
            "at least one [[stages]] entry is needed".into(),
        ));
    }
    for (k, w) in stages.windows(2).enumerate() {
        if w[1].max_input_tokens <= w[0].max_input_tokens {
            return Err(Error::Invalid(format!(
                "stages[{}].max_input_tokens = {} must exceed stages[{k}].max_input_tokens = {}",
                k + 1,
                w[1].max_input_tokens,
                w[0].max_input_tokens
            )));
        }
    }
    for (k, s) in stages.iter().enumerate() {
        if s.max_output_tokens == 0 || (s.max_steps == 0 && s.num_epochs.is_none_or(|e| e <= 0.0)) {
            return Err(Error::Invalid(format!(
                "stages[{k}]: max_output_tokens must be >= 1, and max_steps >= 1 or num_epochs > 0"
            )));
        }
    }
    Ok(())
}

/// Which stage a prompt of `len` tokens belongs to (`None`: longer than every stage).
pub fn stage_of(len: usize, stages: &[StageConfig]) -> Option<usize> {
    stages.iter().position(|s| len <= s.max_input_tokens)
}

/// Indices of the samples (by prompt length) that stage `k` draws: `L(k-1) < len <= L(k)`.
pub fn stage_pool(lengths: &[usize], stages: &[StageConfig], k: usize) -> Vec<usize> {
    let lower = if k == 0 {
        0
    } else {
        stages[k - 1].max_input_tokens
    };
    let upper = stages[k].max_input_tokens;
    (0..lengths.len())
        .filter(|&i| lengths[i] > lower && lengths[i] <= upper)
        .collect()
}

/// Running mean correctness of one sample's rollout groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Groups seen.
    pub groups: usize,
    /// Sum of the groups' mean scores.
    pub sum: f64,
}

impl Record {
    /// The mean reward over the sample's groups.
    pub fn mean(&self) -> f64 {
        if self.groups == 0 {
            0.0
        } else {
            self.sum / self.groups as f64
        }
    }

    /// `1 / mean` (infinite for a sample never solved).
    pub fn difficulty(&self) -> f64 {
        let m = self.mean();
        if m <= 0.0 {
            f64::INFINITY
        } else {
            1.0 / m
        }
    }
}

/// Per-sample difficulty records, keyed by sample id (saved in checkpoints).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DifficultyStore {
    /// Records by sample id.
    pub records: BTreeMap<String, Record>,
}

impl DifficultyStore {
    /// Adds one rollout group of sample `id` with its rollouts' scores.
    pub fn update(&mut self, id: &str, scores: &[f64]) {
        if scores.is_empty() {
            return;
        }
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        let r = self.records.entry(id.to_string()).or_default();
        r.groups += 1;
        r.sum += mean;
    }

    /// The record of `id`, if it was ever rolled out.
    pub fn get(&self, id: &str) -> Option<&Record> {
        self.records.get(id)
    }

    /// The ids among `candidates` that were rolled out, hardest first (highest difficulty; ties
    /// broken by id, so the order is deterministic).
    pub fn hardest_first<'a>(&self, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let mut seen: Vec<(f64, &str)> = candidates
            .into_iter()
            .filter_map(|id| self.records.get(id).map(|r| (r.mean(), id)))
            .collect();
        seen.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        seen.dedup_by(|a, b| a.1 == b.1);
        seen.into_iter().map(|(_, id)| id.to_string()).collect()
    }
}

/// `[retrospective]`: how many hard samples of earlier stages are carried forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrospectiveConfig {
    /// On or off.
    pub enabled: bool,
    /// Samples carried at each transition (takes precedence over `fraction` when > 0).
    pub count: usize,
    /// Fraction of the earlier stages' rolled-out samples carried (when `count` is 0).
    pub fraction: f64,
    /// Sampling weight of a carried sample relative to a new one (2.0: drawn twice as often).
    pub weight: f64,
}

impl Default for RetrospectiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            count: 0,
            fraction: 0.25,
            weight: 1.0,
        }
    }
}

impl RetrospectiveConfig {
    /// The number of samples to carry out of `available` rolled-out candidates.
    pub fn how_many(&self, available: usize) -> usize {
        if !self.enabled {
            return 0;
        }
        let n = if self.count > 0 {
            self.count
        } else {
            (self.fraction * available as f64).round() as usize
        };
        n.min(available)
    }

    /// Copies of a carried sample in the pool: `weight` rounded, at least one.
    pub fn copies(&self) -> usize {
        self.weight.round().max(1.0) as usize
    }
}

/// The samples carried into stage `k`: the hardest of those rolled out in earlier stages whose
/// prompt fits stage `k`'s input limit. `ids[i]` and `lengths[i]` describe sample i.
pub fn carry_over(
    store: &DifficultyStore,
    ids: &[String],
    lengths: &[usize],
    stages: &[StageConfig],
    k: usize,
    config: &RetrospectiveConfig,
) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let limit = stages[k].max_input_tokens;
    let earlier_bound = stages[k - 1].max_input_tokens;
    let by_id: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let candidates = (0..ids.len())
        .filter(|&i| lengths[i] <= earlier_bound && lengths[i] <= limit)
        .map(|i| ids[i].as_str());
    let ranked = store.hardest_first(candidates);
    let n = config.how_many(ranked.len());
    ranked[..n].iter().map(|id| by_id[id.as_str()]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages() -> Vec<StageConfig> {
        [100, 400]
            .iter()
            .map(|&m| StageConfig {
                name: None,
                max_input_tokens: m,
                max_output_tokens: 8,
                max_steps: 1,
                num_epochs: None,
            })
            .collect()
    }

    #[test]
    fn stages_take_their_length_band_only() {
        let lengths = [50, 100, 101, 400, 401, 1];
        let s = stages();
        assert_eq!(stage_pool(&lengths, &s, 0), vec![0, 1, 5]);
        assert_eq!(stage_pool(&lengths, &s, 1), vec![2, 3]);
        assert_eq!(stage_of(401, &s), None);
        assert_eq!(stage_of(100, &s), Some(0));
        validate_stages(&s).unwrap();
        let mut bad = s.clone();
        bad[1].max_input_tokens = 100;
        assert!(validate_stages(&bad)
            .unwrap_err()
            .to_string()
            .contains("stages[1].max_input_tokens"));
    }

    #[test]
    fn hardest_samples_are_carried_first_never_solved_hardest() {
        let mut store = DifficultyStore::default();
        store.update("a", &[1.0, 1.0]); // mean 1
        store.update("b", &[0.0, 0.0]); // never solved
        store.update("c", &[1.0, 0.0]); // 0.5
        store.update("c", &[0.0, 0.0]); // groups 2, mean 0.25
        store.update("d", &[1.0, 0.0, 0.0, 0.0]); // 0.25 (ties with c: by id)
        assert_eq!(store.get("c").unwrap().groups, 2);
        assert_eq!(store.get("c").unwrap().mean(), 0.25);
        assert_eq!(store.get("b").unwrap().difficulty(), f64::INFINITY);
        let ids: Vec<String> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let lengths = [10, 20, 30, 90, 50]; // "e" was never rolled out
        let cfg = RetrospectiveConfig {
            count: 3,
            ..RetrospectiveConfig::default()
        };
        assert_eq!(
            carry_over(&store, &ids, &lengths, &stages(), 1, &cfg),
            vec![1, 2, 3]
        );
        let frac = RetrospectiveConfig {
            fraction: 0.5,
            ..RetrospectiveConfig::default()
        };
        assert_eq!(
            carry_over(&store, &ids, &lengths, &stages(), 1, &frac),
            vec![1, 2]
        );
        assert!(carry_over(&store, &ids, &lengths, &stages(), 0, &cfg).is_empty());
        let off = RetrospectiveConfig {
            enabled: false,
            ..cfg
        };
        assert!(carry_over(&store, &ids, &lengths, &stages(), 1, &off).is_empty());
    }

    #[test]
    fn carried_samples_are_refiltered_by_the_next_limit() {
        let mut store = DifficultyStore::default();
        for id in ["x", "y"] {
            store.update(id, &[0.0]);
        }
        let ids: Vec<String> = vec!["x".into(), "y".into()];
        let mut s = stages();
        s[0].max_input_tokens = 100;
        s[1].max_input_tokens = 150;
        // "y" is 120 tokens: a stage-2 sample, not an earlier one, so it is not carried.
        let cfg = RetrospectiveConfig {
            count: 5,
            ..RetrospectiveConfig::default()
        };
        assert_eq!(carry_over(&store, &ids, &[80, 120], &s, 1, &cfg), vec![0]);
    }
}
