//! A deterministic sampler over a dataset: each epoch is a permutation drawn from (seed, epoch),
//! so the position (epoch, index) is the whole state and a resumed run draws the same samples.

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
}
