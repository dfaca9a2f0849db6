//! Shape buckets for the JIT backends.
//!
//! burn's `wgpu` and `cuda` backends compile every kernel just in time (cubecl) and autotune
//! matmuls per shape: RL changes shapes at every step (prompt and response lengths, finished
//! samples leaving the decode batch, a KV cache one token longer per step), so compilation never
//! amortises. Under a bucketed [`Shapes`], every tensor the model sees has a length from a small
//! set: sequence lengths are padded up to [`Shapes::seq`] (powers of two up to
//! `seq_multiple`, then multiples of it up to `seq_linear_until`, then powers of two again) and
//! batches up to [`Shapes::batch`]. Padding is masked exactly: padded rows and columns are never
//! attended to and carry no loss, so results equal the exact shapes' up to float reassociation.
//!
//! The CPU backends (`flex`, `ndarray`) compile nothing and pay for every padded element, so
//! `policy = "auto"` keeps their exact shapes and buckets only on JIT backends
//! ([`crate::model::ModelBackend::JIT`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ModelBackend;

/// Whether shapes are bucketed (`[rl.shapes] policy`, `[sft.shapes] policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShapePolicy {
    /// Bucketed on JIT backends (`wgpu`, `cuda`), exact on the CPU backends.
    #[default]
    Auto,
    /// Always bucketed (also on the CPU: for tests and for comparing).
    Bucketed,
    /// Always the exact shapes of the data.
    Exact,
}

/// The buckets, as configs write them (`[rl.shapes]`, `[sft.shapes]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShapeConfig {
    /// When to bucket.
    pub policy: ShapePolicy,
    /// Lengths up to this are padded to powers of two (at least 16), longer ones to multiples of
    /// it.
    pub seq_multiple: usize,
    /// Lengths above this are padded to powers of two.
    pub seq_linear_until: usize,
    /// Batch sizes a batch is padded up to, ascending; beyond the largest, multiples of it.
    pub batch_buckets: Vec<usize>,
    /// At the start of an RL stage, run every bucketed shape it can produce (forward and
    /// backward) once, so that kernels are compiled and autotuned before the first real step.
    /// SFT does not warm up yet: under `[sft.shapes]` this key has no effect.
    pub warmup: bool,
}

impl Default for ShapeConfig {
    fn default() -> Self {
        Self {
            policy: ShapePolicy::Auto,
            seq_multiple: 128,
            seq_linear_until: 1024,
            batch_buckets: vec![1, 2, 4, 8, 16, 32, 64],
            warmup: true,
        }
    }
}

impl ShapeConfig {
    /// Checks the buckets, naming the bad field of `section` (e.g. `rl.shapes`).
    pub fn validate(&self, section: &str) -> Result<()> {
        if self.seq_multiple == 0 {
            return Err(Error::Invalid(format!(
                "{section}.seq_multiple must be at least 1"
            )));
        }
        if self.seq_linear_until < self.seq_multiple {
            return Err(Error::Invalid(format!(
                "{section}.seq_linear_until ({}) must be at least seq_multiple ({})",
                self.seq_linear_until, self.seq_multiple
            )));
        }
        let b = &self.batch_buckets;
        if b.is_empty() || b[0] == 0 || b.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Invalid(format!(
                "{section}.batch_buckets must be non-empty, positive and strictly ascending, got {b:?}"
            )));
        }
        Ok(())
    }

    /// The shapes to use on backend `B`: bucketed under `bucketed`, or under `auto` when `B`
    /// compiles kernels per shape.
    pub fn resolve<B: ModelBackend>(&self) -> Shapes {
        let bucketed = match self.policy {
            ShapePolicy::Auto => B::JIT,
            ShapePolicy::Bucketed => true,
            ShapePolicy::Exact => false,
        };
        Shapes {
            bucketed,
            config: self.clone(),
        }
    }
}

/// The resolved shape rule of one run on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shapes {
    bucketed: bool,
    config: ShapeConfig,
}

impl Default for Shapes {
    fn default() -> Self {
        Self::exact()
    }
}

/// Shortest bucketed length: shorter sequences are padded to it.
const MIN_SEQ_BUCKET: usize = 16;

impl Shapes {
    /// The data's own shapes.
    pub fn exact() -> Self {
        Self {
            bucketed: false,
            config: ShapeConfig::default(),
        }
    }

    /// The default buckets, always on.
    pub fn bucketed() -> Self {
        Self {
            bucketed: true,
            config: ShapeConfig::default(),
        }
    }

    /// The default rule for backend `B` (bucketed on JIT backends).
    pub fn auto<B: ModelBackend>() -> Self {
        ShapeConfig::default().resolve::<B>()
    }

    /// Whether lengths and batches are padded to buckets.
    pub fn is_bucketed(&self) -> bool {
        self.bucketed
    }

    /// Whether stages warm their shapes up first (bucketed runs only).
    pub fn warmup(&self) -> bool {
        self.bucketed && self.config.warmup
    }

    /// The padded length of a sequence of `n` tokens (`n` itself when exact).
    pub fn seq(&self, n: usize) -> usize {
        if !self.bucketed || n == 0 {
            return n;
        }
        let m = self.config.seq_multiple;
        if n <= m {
            n.next_power_of_two().clamp(MIN_SEQ_BUCKET.min(m), m)
        } else if n <= self.config.seq_linear_until {
            n.div_ceil(m) * m
        } else {
            n.next_power_of_two()
        }
    }

    /// The padded size of a batch of `n` rows (`n` itself when exact).
    pub fn batch(&self, n: usize) -> usize {
        if !self.bucketed || n == 0 {
            return n;
        }
        let buckets = &self.config.batch_buckets;
        match buckets.iter().find(|&&b| b >= n) {
            Some(&b) => b,
            None => {
                let top = *buckets.last().expect("validated non-empty");
                n.div_ceil(top) * top
            }
        }
    }

    /// Every length bucket for sequences of 1 to `max` tokens, ascending.
    pub fn seq_buckets(&self, max: usize) -> Vec<usize> {
        buckets_of(max, |n| self.seq(n))
    }

    /// Every batch bucket for 1 to `max` rows, ascending.
    pub fn batch_buckets(&self, max: usize) -> Vec<usize> {
        buckets_of(max, |n| self.batch(n))
    }
}

/// The distinct values of `f(1..=max)` for a monotone `f` with `f(n) >= n`, ascending.
fn buckets_of(max: usize, f: impl Fn(usize) -> usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut n = 1;
    while n <= max {
        let b = f(n);
        out.push(b);
        n = b + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_buckets_are_powers_of_two_then_multiples_then_powers_of_two() {
        let s = Shapes::bucketed();
        let got: Vec<usize> = [1, 16, 17, 100, 128, 129, 1000, 1024, 1025, 5000]
            .iter()
            .map(|&n| s.seq(n))
            .collect();
        assert_eq!(got, [16, 16, 32, 128, 128, 256, 1024, 1024, 2048, 8192]);
        assert_eq!(
            s.seq_buckets(1100),
            [16, 32, 64, 128, 256, 384, 512, 640, 768, 896, 1024, 2048]
        );
        assert_eq!(Shapes::exact().seq(1000), 1000);
    }

    #[test]
    fn batch_buckets_round_up_then_take_multiples_of_the_largest() {
        let s = Shapes::bucketed();
        let got: Vec<usize> = [1, 3, 5, 64, 65, 130].iter().map(|&n| s.batch(n)).collect();
        assert_eq!(got, [1, 4, 8, 64, 128, 192]);
        assert_eq!(s.batch_buckets(12), [1, 2, 4, 8, 16]);
        assert_eq!(Shapes::exact().batch(5), 5);
    }

    #[test]
    fn bad_buckets_are_named() {
        let c = ShapeConfig {
            batch_buckets: vec![4, 2],
            ..ShapeConfig::default()
        };
        let e = c.validate("rl.shapes").unwrap_err().to_string();
        assert!(e.contains("rl.shapes.batch_buckets"), "{e}");
        let c = ShapeConfig {
            seq_linear_until: 64,
            ..ShapeConfig::default()
        };
        assert!(c.validate("sft.shapes").is_err());
    }
}
