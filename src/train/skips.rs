//! Stops a run that has stopped learning: an update whose loss or gradient norm is not finite is
//! skipped (it never reaches the weights), but a run of them, or a run in which every update was
//! skipped, ends with an error naming the first bad step instead of exiting 0 with the initial
//! weights (as `rl.temperature = 0` once did).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The counts of a [`SkipGuard`], saved in a run's checkpoints so that a resumed run goes on
/// counting (a streak of skipped updates cut by a kill is not forgotten).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkipCounts {
    /// Skipped updates since the last applied one.
    pub in_a_row: usize,
    /// The 1-based step of the first skipped update of the current run of them.
    pub first_bad_step: Option<usize>,
    /// Updates applied since the run started.
    pub applied: usize,
    /// Updates skipped since the run started.
    pub skipped: usize,
}

/// Counts skipped updates of a run; `section` names the trainer's option in errors.
#[derive(Debug, Clone)]
pub struct SkipGuard {
    section: &'static str,
    /// Skipped updates in a row that end the run (0: never).
    limit: usize,
    counts: SkipCounts,
}

impl SkipGuard {
    /// A guard stopping after `limit` skipped updates in a row (`section.optim.max_skipped_updates`),
    /// going on from `counts` (those of the checkpoint a run resumes from; default when fresh).
    pub fn new(section: &'static str, limit: usize, counts: SkipCounts) -> Self {
        Self {
            section,
            limit,
            counts,
        }
    }

    /// The counts so far, to save in a checkpoint.
    pub fn counts(&self) -> SkipCounts {
        self.counts
    }

    /// Records the updates of 1-based `step`: an error once `limit` skipped updates follow one
    /// another (an applied update starts the count again).
    pub fn record(&mut self, step: usize, applied: usize, skipped: usize) -> Result<()> {
        let c = &mut self.counts;
        c.applied += applied;
        c.skipped += skipped;
        if applied > 0 {
            c.in_a_row = 0;
            c.first_bad_step = None;
        }
        if skipped > 0 && applied == 0 {
            c.in_a_row += skipped;
            c.first_bad_step.get_or_insert(step);
        }
        let in_a_row = c.in_a_row;
        if self.limit > 0 && in_a_row >= self.limit {
            return Err(self.error(format!("{in_a_row} updates in a row were skipped")));
        }
        Ok(())
    }

    /// At the end of a run: an error when updates were skipped and none was applied.
    pub fn finish(&self) -> Result<()> {
        if self.counts.applied == 0 && self.counts.skipped > 0 {
            return Err(self.error(format!(
                "all {} updates of the run were skipped",
                self.counts.skipped
            )));
        }
        Ok(())
    }

    fn error(&self, what: String) -> Error {
        let first = self.counts.first_bad_step.unwrap_or_default();
        Error::Invalid(format!(
            "{}: {what} for a non-finite loss or gradient norm, the first at step {first} \
             ({}.optim.max_skipped_updates = {}); the run learns nothing, so it stops. The \
             checkpoints written so far are intact (the skipped updates never reached the \
             weights). Usual causes: a learning rate too high, bf16 overflow, a sampling \
             temperature near 0",
            self.section, self.section, self.limit
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_skipped_updates_stops_naming_its_first_step() {
        let mut g = SkipGuard::new("rl", 3, SkipCounts::default());
        g.record(1, 2, 0).unwrap();
        g.record(2, 0, 1).unwrap();
        // An applied update starts the count again.
        g.record(3, 1, 1).unwrap();
        g.record(4, 0, 2).unwrap();
        let e = g.record(5, 0, 1).unwrap_err().to_string();
        assert!(e.contains("3 updates in a row"), "{e}");
        assert!(e.contains("the first at step 4"), "{e}");
        assert!(e.contains("rl.optim.max_skipped_updates = 3"), "{e}");
        g.finish().unwrap();
    }

    #[test]
    fn a_run_without_an_applied_update_fails_at_the_end() {
        let mut g = SkipGuard::new("sft", 0, SkipCounts::default());
        for step in 1..=20 {
            g.record(step, 0, 1).unwrap();
        }
        let e = g.finish().unwrap_err().to_string();
        assert!(e.contains("all 20 updates of the run were skipped"), "{e}");
        assert!(e.contains("the first at step 1"), "{e}");
        SkipGuard::new("sft", 5, SkipCounts::default())
            .finish()
            .unwrap();
    }

    #[test]
    fn a_resumed_guard_goes_on_counting() {
        let mut g = SkipGuard::new("rl", 3, SkipCounts::default());
        g.record(1, 0, 1).unwrap();
        g.record(2, 0, 1).unwrap();
        let saved = serde_json::to_value(g.counts()).unwrap();
        let counts: SkipCounts = serde_json::from_value(saved).unwrap();
        let mut resumed = SkipGuard::new("rl", 3, counts);
        let e = resumed.record(3, 0, 1).unwrap_err().to_string();
        assert!(
            e.contains("3 updates in a row") && e.contains("the first at step 1"),
            "{e}"
        );
    }
}
