//! A deterministic sampler over a dataset: each epoch is a permutation drawn from (seed, epoch),
//! so the position (epoch, index) is the whole state and a resumed run draws the same samples.
//! [`TaskBalancedSampler`] keeps one such sampler per task type and draws from the tasks in
//! turn (QwenLong-L1.5's task-balanced sampling).

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Where a sampler stands: saved in checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Current epoch (from 0).
    pub epoch: usize,
    /// Next position within the epoch's permutation.
    pub index: usize,
}

/// Draws indices `0..len` epoch by epoch, each epoch shuffled (or in order).
#[derive(Debug, Clone)]
pub struct EpochSampler {
    len: usize,
    seed: u64,
    shuffle: bool,
    order: Vec<usize>,
    state: SamplerState,
}

impl EpochSampler {
    /// A sampler over `len` items (at least one), positioned at `state`.
    pub fn new(len: usize, seed: u64, shuffle: bool, state: SamplerState) -> Self {
        assert!(len > 0, "a sampler needs at least one item");
        let mut s = Self {
            len,
            seed,
            shuffle,
            order: Vec::new(),
            state,
        };
        s.order = s.permutation(state.epoch);
        s
    }

    fn permutation(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(
                self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            order.shuffle(&mut rng);
        }
        order
    }

    /// The next index, moving to a new epoch when one ends.
    pub fn next_index(&mut self) -> usize {
        if self.state.index >= self.len {
            self.state.epoch += 1;
            self.state.index = 0;
            self.order = self.permutation(self.state.epoch);
        }
        let i = self.order[self.state.index];
        self.state.index += 1;
        i
    }

    /// The next `n` indices.
    pub fn take(&mut self, n: usize) -> Vec<usize> {
        (0..n).map(|_| self.next_index()).collect()
    }

    /// The current position.
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// Epochs completed plus the fraction of the current one.
    pub fn epochs_done(&self) -> f64 {
        self.state.epoch as f64 + self.state.index as f64 / self.len as f64
    }
}

/// Where a [`TaskBalancedSampler`] stands: saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSamplerState {
    /// Indices drawn so far, over all tasks.
    pub drawn: usize,
    /// The task the next draw comes from (its position among the task names, sorted).
    pub next_task: usize,
    /// Each task's own sampler position, by task name (a task absent here starts afresh).
    pub tasks: BTreeMap<String, SamplerState>,
}

/// Draws indices `0..len` balanced over task types (QwenLong-L1.5, §4.2: "this sampler draws an
/// equal number of samples from each of the ... task types" for every batch).
///
/// Task `t` (tasks sorted by name) keeps an [`EpochSampler`] over its own items, seeded by
/// (seed, name); draw `d` comes from task `(next_task + d) mod T`. So any `n` consecutive draws
/// hold `floor(n / T)` or `ceil(n / T)` items of each task, and the task that gets the extra
/// one moves on from batch to batch. A small task repeats (its next epoch) while a large one is
/// still in its first. The whole state is [`TaskSamplerState`]; the same seed gives the same
/// draws, and a sampler rebuilt from a saved state continues the same sequence.
#[derive(Debug, Clone)]
pub struct TaskBalancedSampler {
    /// Per task, sorted by name: its name, its items (indices into `0..len`), its sampler.
    tasks: Vec<(String, Vec<usize>, EpochSampler)>,
    next_task: usize,
    drawn: usize,
    len: usize,
}

/// FNV-1a of a task name: a seed offset that does not depend on which other tasks exist.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl TaskBalancedSampler {
    /// A sampler over items `0..tasks.len()` (at least one), item `i` of task `tasks[i]`,
    /// positioned at `state`.
    pub fn new(tasks: &[&str], seed: u64, shuffle: bool, state: &TaskSamplerState) -> Self {
        assert!(!tasks.is_empty(), "a sampler needs at least one item");
        let names: BTreeSet<&str> = tasks.iter().copied().collect();
        let tasks_out: Vec<(String, Vec<usize>, EpochSampler)> = names
            .into_iter()
            .map(|name| {
                let items: Vec<usize> = (0..tasks.len()).filter(|&i| tasks[i] == name).collect();
                let at = state.tasks.get(name).copied().unwrap_or_default();
                let sampler = EpochSampler::new(items.len(), seed ^ name_hash(name), shuffle, at);
                (name.to_string(), items, sampler)
            })
            .collect();
        Self {
            next_task: state.next_task % tasks_out.len(),
            tasks: tasks_out,
            drawn: state.drawn,
            len: tasks.len(),
        }
    }

    /// The next index: from the task whose turn it is.
    pub fn next_index(&mut self) -> usize {
        let (_, items, sampler) = &mut self.tasks[self.next_task];
        let i = items[sampler.next_index()];
        self.next_task = (self.next_task + 1) % self.tasks.len();
        self.drawn += 1;
        i
    }

    /// The next `n` indices.
    pub fn take(&mut self, n: usize) -> Vec<usize> {
        (0..n).map(|_| self.next_index()).collect()
    }

    /// The current position.
    pub fn state(&self) -> TaskSamplerState {
        TaskSamplerState {
            drawn: self.drawn,
            next_task: self.next_task,
            tasks: self
                .tasks
                .iter()
                .map(|(name, _, s)| (name.clone(), s.state()))
                .collect(),
        }
    }

    /// Items drawn over the dataset's size (the epochs an unbalanced sampler would have done).
    pub fn epochs_done(&self) -> f64 {
        self.drawn as f64 / self.len as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_from_a_state_continues_the_same_sequence() {
        let mut a = EpochSampler::new(5, 7, true, SamplerState::default());
        let first: Vec<usize> = a.take(7);
        let saved = a.state();
        let rest: Vec<usize> = a.take(6);
        let mut b = EpochSampler::new(5, 7, true, saved);
        assert_eq!(b.take(6), rest);
        let mut sorted = first[..5].to_vec();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3, 4], "an epoch is a permutation");
        assert_eq!(saved, SamplerState { epoch: 1, index: 2 });
        let mut c = EpochSampler::new(3, 0, false, SamplerState::default());
        assert_eq!(c.take(4), vec![0, 1, 2, 0]);
    }

    #[test]
    fn task_balanced_batches_take_each_task_in_turn_and_resume_exactly() {
        // Items 0..7: task "a" = {0, 1, 2, 3, 4}, "b" = {5}, "c" = {6}.
        let tasks = ["a", "a", "a", "a", "a", "b", "c"];
        let task_of = |i: usize| tasks[i];
        let mut s = TaskBalancedSampler::new(&tasks, 3, true, &TaskSamplerState::default());
        let first = s.take(4);
        // Tasks in name order, one draw each: a, b, c, then a again (the extra one).
        assert_eq!(
            first.iter().map(|&i| task_of(i)).collect::<Vec<_>>(),
            ["a", "b", "c", "a"]
        );
        let saved = s.state();
        assert_eq!((saved.drawn, saved.next_task), (4, 1));
        assert_eq!(saved.tasks["a"], SamplerState { epoch: 0, index: 2 });
        assert_eq!(saved.tasks["b"], SamplerState { epoch: 0, index: 1 });
        let rest = s.take(11);
        // The next batch starts at b: the task with the extra draw moves on.
        assert_eq!(
            rest[..4].iter().map(|&i| task_of(i)).collect::<Vec<_>>(),
            ["b", "c", "a", "b"]
        );
        // Over 15 draws every task is drawn 5 times; "a" goes through a permutation of its items.
        for t in ["a", "b", "c"] {
            let n = first
                .iter()
                .chain(&rest)
                .filter(|&&i| task_of(i) == t)
                .count();
            assert_eq!(n, 5, "task {t}");
        }
        let mut a: Vec<usize> = first
            .iter()
            .chain(&rest)
            .copied()
            .filter(|&i| i < 5)
            .collect();
        a.sort();
        assert_eq!(a, vec![0, 1, 2, 3, 4]);
        // Resuming (also through JSON, as checkpoints keep it) continues the same sequence; the
        // same seed draws the same items.
        let json = serde_json::to_string(&saved).unwrap();
        let back: TaskSamplerState = serde_json::from_str(&json).unwrap();
        let mut r = TaskBalancedSampler::new(&tasks, 3, true, &back);
        assert_eq!(r.take(11), rest);
        let mut again = TaskBalancedSampler::new(&tasks, 3, true, &TaskSamplerState::default());
        assert_eq!(again.take(4), first);
        assert!((s.epochs_done() - 15.0 / 7.0).abs() < 1e-12);
        // Unshuffled, one task: the plain epoch order.
        let mut one = TaskBalancedSampler::new(&["x"; 3], 0, false, &TaskSamplerState::default());
        assert_eq!(one.take(4), vec![0, 1, 2, 0]);
    }

    #[test]
    fn task_balanced_counts_differ_by_at_most_one_in_every_batch() {
        let tasks: Vec<&str> = (0..40).map(|i| ["p", "q", "r"][i % 7 % 3]).collect();
        let mut s = TaskBalancedSampler::new(&tasks, 11, true, &TaskSamplerState::default());
        for _ in 0..9 {
            let batch = s.take(8);
            let counts: Vec<usize> = ["p", "q", "r"]
                .iter()
                .map(|t| batch.iter().filter(|&&i| tasks[i] == *t).count())
                .collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= 1, "{counts:?}");
        }
    }
}
