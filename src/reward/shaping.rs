//! DAPO's overlong soft punishment: a response that runs into the last `buffer_length` tokens before
//! the limit loses reward linearly, down to `-penalty_factor` at the limit.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Overlong shaping settings (verl's `overlong_buffer`; QwenLong-L1: 10000 / 1000 / 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlongConfig {
    /// L_max: the response limit in tokens (the rollout's `max_new_tokens`).
    pub max_response_length: usize,
    /// L_cache: the buffer before the limit in which the penalty grows.
    pub buffer_length: usize,
    /// Penalty at the limit.
    #[serde(default = "default_factor")]
    pub penalty_factor: f64,
}

fn default_factor() -> f64 {
    1.0
}

impl OverlongConfig {
    /// Checks that the buffer is non-empty and fits in the response limit.
    pub fn validate(&self) -> Result<()> {
        if self.buffer_length == 0 || self.buffer_length > self.max_response_length {
            return Err(Error::Invalid(format!(
                "overlong buffer_length must be in 1..={} (max_response_length), got {}",
                self.max_response_length, self.buffer_length
            )));
        }
        if !(self.penalty_factor >= 0.0 && self.penalty_factor.is_finite()) {
            return Err(Error::Invalid(format!(
                "overlong penalty_factor must be a finite number >= 0, got {}",
                self.penalty_factor
            )));
        }
        Ok(())
    }

    /// The (non-positive) reward added to a response of `len` tokens: 0 up to
    /// `max - buffer`, then `-(len - (max - buffer)) / buffer * factor`, at most `-factor`.
    pub fn penalty(&self, len: usize) -> f64 {
        let expected = self.max_response_length.saturating_sub(self.buffer_length);
        if len <= expected {
            return 0.0;
        }
        let exceed = (len - expected) as f64 / self.buffer_length as f64;
        -(exceed.min(1.0) * self.penalty_factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalty_is_linear_in_the_buffer() {
        let c = OverlongConfig {
            max_response_length: 10000,
            buffer_length: 1000,
            penalty_factor: 1.0,
        };
        c.validate().unwrap();
        assert_eq!(c.penalty(0), 0.0);
        assert_eq!(c.penalty(9000), 0.0);
        assert!((c.penalty(9500) + 0.5).abs() < 1e-12);
        assert_eq!(c.penalty(10000), -1.0);
        assert_eq!(c.penalty(12000), -1.0);
        let half = OverlongConfig {
            penalty_factor: 0.5,
            ..c
        };
        assert!((half.penalty(9100) + 0.05).abs() < 1e-12);
        assert!(OverlongConfig {
            buffer_length: 0,
            ..c
        }
        .validate()
        .is_err());
    }
}
