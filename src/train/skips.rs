//! Stops a run that has stopped learning: an update whose loss or gradient norm is not finite is
//! skipped (it never reaches the weights), but a run of them, or a run in which every update was
//! skipped, ends with an error naming the first bad step instead of exiting 0 with the initial
//! weights (as `rl.temperature = 0` once did).

use crate::error::{Error, Result};

/// Counts skipped updates of a run; `section` names the trainer's option in errors.
#[derive(Debug, Clone)]
pub struct SkipGuard {
    section: &'static str,
    /// Skipped updates in a row that end the run (0: never).
    limit: usize,
    in_a_row: usize,
    /// The 1-based step of the first skipped update of the current run of them.
    first_bad_step: Option<usize>,
    applied: usize,
    skipped: usize,
}

impl SkipGuard {
    /// A guard stopping after `limit` skipped updates in a row (`section.optim.max_skipped_updates`).
    pub fn new(section: &'static str, limit: usize) -> Self {
        Self {
            section,
            limit,
            in_a_row: 0,
            first_bad_step: None,
            applied: 0,
            skipped: 0,
        }
    }

    /// Records the updates of 1-based `step`: an error once `limit` skipped updates follow one
    /// another (an applied update starts the count again).
    pub fn record(&mut self, step: usize, applied: usize, skipped: usize) -> Result<()> {
        self.applied += applied;
        self.skipped += skipped;
        if applied > 0 {
            self.in_a_row = 0;
            self.first_bad_step = None;
        }
        if skipped > 0 && applied == 0 {
            self.in_a_row += skipped;
            self.first_bad_step.get_or_insert(step);
        }
        if self.limit > 0 && self.in_a_row >= self.limit {
            return Err(self.error(format!("{} updates in a row were skipped", self.in_a_row)));
        }
        Ok(())
    }

    /// At the end of a run: an error when updates were skipped and none was applied.
    pub fn finish(&self) -> Result<()> {
        if self.applied == 0 && self.skipped > 0 {
            return Err(self.error(format!(
                "all {} updates since the run started (or resumed) were skipped",
                self.skipped
            )));
        }
        Ok(())
    }

    fn error(&self, what: String) -> Error {
        let first = self.first_bad_step.unwrap_or_default();
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
        let mut g = SkipGuard::new("rl", 3);
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
        let mut g = SkipGuard::new("sft", 0);
        for step in 1..=20 {
            g.record(step, 0, 1).unwrap();
        }
        let e = g.finish().unwrap_err().to_string();
        assert!(e.contains("all 20 updates since the run started"), "{e}");
        assert!(e.contains("the first at step 1"), "{e}");
        SkipGuard::new("sft", 5).finish().unwrap();
    }
}
