//! What data-parallel workers sum within a step. Each exchanged struct lays its fields out in a
//! fixed order here, in one place, so no caller handles positional vectors.

use burn::tensor::backend::Backend;

use super::loss::PolicyLossStats;
use crate::distributed::Worker;
use crate::error::{Error, Result};
use crate::reward::RewardStats;

/// A struct of numbers that workers sum field by field.
pub(crate) trait Exchanged: Sized {
    /// Numbers per value.
    const LEN: usize;
    /// The fields, in exchange order.
    fn to_array(&self) -> Vec<f64>;
    /// The value from its fields in exchange order (`v.len() == LEN`).
    fn from_array(v: &[f64]) -> Self;
}

/// Sums `slots` over all workers, field by field: a worker leaves the slots it does not own
/// `None` (zeros), so after the sum every worker holds every slot's value. `what` names the
/// operation in errors.
pub(crate) fn sum_slots<T: Exchanged, B: Backend>(
    worker: &Worker,
    what: &str,
    slots: &[Option<&T>],
    device: &B::Device,
) -> Result<Vec<T>> {
    let mut flat = vec![0f64; slots.len() * T::LEN];
    for (slot, value) in flat.chunks_mut(T::LEN).zip(slots) {
        if let Some(v) = value {
            slot.copy_from_slice(&v.to_array());
        }
    }
    let summed = worker.sum_f64::<B>(what, flat, device)?;
    if summed.len() != slots.len() * T::LEN {
        return Err(Error::Distributed(format!(
            "{what}: expected {} numbers back, got {}",
            slots.len() * T::LEN,
            summed.len()
        )));
    }
    Ok(summed.chunks(T::LEN).map(T::from_array).collect())
}

/// Sums one value over all workers.
pub(crate) fn sum_one<T: Exchanged, B: Backend>(
    worker: &Worker,
    what: &str,
    value: &T,
    device: &B::Device,
) -> Result<T> {
    let mut summed = sum_slots::<T, B>(worker, what, &[Some(value)], device)?;
    Ok(summed.pop().expect("sum_slots returns one value per slot"))
}

impl Exchanged for PolicyLossStats {
    const LEN: usize = 9;

    fn to_array(&self) -> Vec<f64> {
        vec![
            self.tokens,
            self.pg_loss,
            self.clipped,
            self.clipped_low,
            self.clipped_high,
            self.ppo_kl,
            self.kl,
            self.kl_loss,
            self.entropy,
        ]
    }

    fn from_array(v: &[f64]) -> Self {
        PolicyLossStats {
            tokens: v[0],
            pg_loss: v[1],
            clipped: v[2],
            clipped_low: v[3],
            clipped_high: v[4],
            ppo_kl: v[5],
            kl: v[6],
            kl_loss: v[7],
            entropy: v[8],
        }
    }
}

impl Exchanged for RewardStats {
    const LEN: usize = 8;

    fn to_array(&self) -> Vec<f64> {
        [
            self.items,
            self.correct,
            self.judge_calls,
            self.judge_cache_hits,
            self.judge_flips,
            self.judge_failures,
            self.judge_unparsed,
            self.overlong_penalised,
        ]
        .iter()
        .map(|&x| x as f64)
        .collect()
    }

    fn from_array(v: &[f64]) -> Self {
        let u = |i: usize| v[i].round() as usize;
        RewardStats {
            items: u(0),
            correct: u(1),
            judge_calls: u(2),
            judge_cache_hits: u(3),
            judge_flips: u(4),
            judge_failures: u(5),
            judge_unparsed: u(6),
            overlong_penalised: u(7),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_field_by_field() {
        let loss = PolicyLossStats {
            tokens: 1.0,
            pg_loss: 2.0,
            clipped: 3.0,
            clipped_low: 4.0,
            clipped_high: 5.0,
            ppo_kl: 6.0,
            kl: 7.0,
            kl_loss: 8.0,
            entropy: 9.0,
        };
        assert_eq!(loss.to_array().len(), PolicyLossStats::LEN);
        assert_eq!(PolicyLossStats::from_array(&loss.to_array()), loss);
        let reward = RewardStats {
            items: 1,
            correct: 2,
            judge_calls: 3,
            judge_cache_hits: 4,
            judge_flips: 5,
            judge_failures: 6,
            judge_unparsed: 7,
            overlong_penalised: 8,
        };
        assert_eq!(reward.to_array().len(), RewardStats::LEN);
        assert_eq!(RewardStats::from_array(&reward.to_array()), reward);
    }

    #[test]
    fn a_single_worker_keeps_its_slots_and_zeros_the_others() {
        let w = Worker::single(crate::DeviceSpec::best_available());
        let s = PolicyLossStats {
            tokens: 3.0,
            entropy: 0.5,
            ..PolicyLossStats::default()
        };
        let out = sum_slots::<PolicyLossStats, burn::backend::Flex>(
            &w,
            "test",
            &[None, Some(&s)],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(out, vec![PolicyLossStats::default(), s]);
    }
}
