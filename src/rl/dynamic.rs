//! DAPO's dynamic sampling: groups whose rollouts are all right or all wrong carry no learning
//! signal (every advantage is 0), so they are dropped and more prompts are rolled out until the
//! training batch is full, within a cap on generation batches.

use serde::Serialize;

/// Why a group was kept or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupVerdict {
    /// Mixed accuracy: kept.
    Kept,
    /// Every rollout wrong.
    AllWrong,
    /// Every rollout right.
    AllRight,
}

/// Classifies a group by its rollouts' accuracies (verl's `filter_groups.metric = acc`). A group
/// of one rollout has no spread and is dropped.
pub fn classify(accs: &[bool]) -> GroupVerdict {
    if accs.iter().all(|&a| a) {
        GroupVerdict::AllRight
    } else if accs.iter().all(|&a| !a) {
        GroupVerdict::AllWrong
    } else {
        GroupVerdict::Kept
    }
}

/// What the filter did over one training step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FilterReport {
    /// Generation batches used.
    pub gen_batches: usize,
    /// Groups offered.
    pub groups_seen: usize,
    /// Groups kept (before truncation to the batch size).
    pub groups_kept: usize,
    /// Groups dropped because every rollout was wrong.
    pub dropped_all_wrong: usize,
    /// Groups dropped because every rollout was right.
    pub dropped_all_right: usize,
    /// Kept groups beyond the batch size, left unused.
    pub truncated: usize,
}

impl FilterReport {
    /// Fraction of offered groups that were dropped.
    pub fn filtered_fraction(&self) -> f64 {
        if self.groups_seen == 0 {
            0.0
        } else {
            (self.dropped_all_wrong + self.dropped_all_right) as f64 / self.groups_seen as f64
        }
    }
}

/// Collects groups over generation batches until `target` are kept (or filtering is off).
#[derive(Debug)]
pub struct GroupFilter<G> {
    enabled: bool,
    target: usize,
    max_gen_batches: usize,
    kept: Vec<G>,
    report: FilterReport,
}

impl<G> GroupFilter<G> {
    /// A filter for a batch of `target` groups using at most `max_gen_batches` generation
    /// batches; `enabled = false` keeps every group of the first batch (plain GRPO).
    pub fn new(enabled: bool, target: usize, max_gen_batches: usize) -> Self {
        Self {
            enabled,
            target,
            max_gen_batches: max_gen_batches.max(1),
            kept: Vec::new(),
            report: FilterReport::default(),
        }
    }

    /// Records the start of a generation batch.
    pub fn start_batch(&mut self) {
        self.report.gen_batches += 1;
    }

    /// Offers a group with its rollouts' accuracies; returns what became of it.
    pub fn offer(&mut self, group: G, accs: &[bool]) -> GroupVerdict {
        self.report.groups_seen += 1;
        let verdict = if self.enabled {
            classify(accs)
        } else {
            GroupVerdict::Kept
        };
        match verdict {
            GroupVerdict::Kept => {
                self.report.groups_kept += 1;
                self.kept.push(group);
            }
            GroupVerdict::AllWrong => self.report.dropped_all_wrong += 1,
            GroupVerdict::AllRight => self.report.dropped_all_right += 1,
        }
        verdict
    }

    /// True when the batch is full.
    pub fn is_full(&self) -> bool {
        self.kept.len() >= self.target
    }

    /// True when another generation batch should run: filtering is on, the batch is not full and
    /// the cap is not reached.
    pub fn wants_more(&self) -> bool {
        self.enabled && !self.is_full() && self.report.gen_batches < self.max_gen_batches
    }

    /// Kept groups so far.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// The kept groups, truncated to the target, and the report. The batch may be short (or
    /// empty) when the cap was reached first; the caller decides what to do with it.
    pub fn finish(mut self) -> (Vec<G>, FilterReport) {
        if self.kept.len() > self.target {
            self.report.truncated = self.kept.len() - self.target;
            self.kept.truncate(self.target);
        }
        (self.kept, self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_groups_are_dropped_and_the_batch_refilled() {
        let mut f = GroupFilter::new(true, 3, 10);
        let batches = [
            vec![vec![true, true], vec![false, false], vec![true, false]],
            vec![vec![false, true], vec![true, true]],
            vec![vec![true, false], vec![false, true], vec![false, false]],
        ];
        let mut id = 0;
        for b in &batches {
            assert!(f.wants_more() || f.report.gen_batches == 0);
            f.start_batch();
            for g in b {
                f.offer(id, g);
                id += 1;
            }
            if f.is_full() {
                break;
            }
        }
        assert!(!f.wants_more());
        let (kept, r) = f.finish();
        assert_eq!(kept, vec![2, 3, 5]);
        assert_eq!(r.gen_batches, 3);
        assert_eq!((r.dropped_all_right, r.dropped_all_wrong), (2, 2));
        assert_eq!((r.groups_kept, r.truncated), (4, 1));
        assert!((r.filtered_fraction() - 4.0 / 8.0).abs() < 1e-12);
    }

    #[test]
    fn the_cap_is_respected_and_a_short_batch_returned() {
        let mut f = GroupFilter::new(true, 4, 2);
        let mut batches = 0;
        while f.wants_more() {
            f.start_batch();
            batches += 1;
            f.offer(batches, &[true, true]);
            f.offer(batches + 10, &[true, false]);
        }
        assert_eq!(batches, 2);
        let (kept, r) = f.finish();
        assert_eq!(kept, vec![11, 12]);
        assert_eq!(r.gen_batches, 2);
    }

    #[test]
    fn disabled_keeps_everything_of_one_batch() {
        let mut f = GroupFilter::new(false, 2, 10);
        f.start_batch();
        assert_eq!(f.offer("a", &[true, true]), GroupVerdict::Kept);
        assert_eq!(f.offer("b", &[false]), GroupVerdict::Kept);
        assert!(!f.wants_more());
        assert_eq!(f.finish().0, vec!["a", "b"]);
    }
}
