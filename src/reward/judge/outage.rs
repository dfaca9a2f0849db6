//! What a reward does while its judge is down ([`JudgeFailure`]): under `stop` the failed queries
//! are asked again (after the judge's circuit-breaker cool-down) until the outage has lasted longer
//! than a bound, then the batch is an error; under `rule_only` they are left failed, so the reward
//! scores them with the rule alone. Either way an outage is logged once when it starts and once
//! when it ends, not per query.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Judge, JudgeFailure, JudgeOutcome, JudgeQuery, Verdict};
use crate::error::{Error, Result};

/// Wait between rounds of a judge that does not say when it takes queries again (no breaker).
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The settings an [`OutagePolicy`] comes from, quoted in its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutageNames {
    /// The judge's URL setting (`rl.reward.judge_url`, `--judge-url`).
    pub url: &'static str,
    /// The bound's setting (`rl.reward.judge_max_outage_s`, `--judge-max-outage`).
    pub max_outage: &'static str,
    /// How to switch to scoring with the rule alone.
    pub rule_only: &'static str,
}

impl OutageNames {
    /// The names of `[rl.reward]`.
    pub const RL_REWARD: OutageNames = OutageNames {
        url: "rl.reward.judge_url",
        max_outage: "rl.reward.judge_max_outage_s",
        rule_only: "rl.reward.judge_failure = \"rule_only\"",
    };
    /// The names of the `longrl reward` flags.
    pub const CLI: OutageNames = OutageNames {
        url: "--judge-url",
        max_outage: "--judge-max-outage",
        rule_only: "--judge-failure rule_only",
    };
}

/// What to do while the judge is down, and for how long to wait under `stop`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutagePolicy {
    /// Stop after `max_outage`, or score with the rule alone.
    pub on_failure: JudgeFailure,
    /// Under `stop`: the longest outage waited out before the batch is an error.
    pub max_outage: Duration,
    /// The settings quoted in messages.
    pub names: OutageNames,
}

impl Default for OutagePolicy {
    /// `stop` after a 300 s outage, quoting `[rl.reward]`'s settings.
    fn default() -> Self {
        Self {
            on_failure: JudgeFailure::Stop,
            max_outage: Duration::from_secs(300),
            names: OutageNames::RL_REWARD,
        }
    }
}

impl OutagePolicy {
    /// The policy from its settings, checked (the bound is a number of seconds, 0 to a day).
    pub fn from_settings(
        on_failure: JudgeFailure,
        max_outage_s: f64,
        names: OutageNames,
    ) -> Result<Self> {
        if !(max_outage_s.is_finite() && (0.0..=86_400.0).contains(&max_outage_s)) {
            return Err(Error::Invalid(format!(
                "{}: {max_outage_s} must be a number of seconds in [0, 86400]",
                names.max_outage
            )));
        }
        Ok(Self {
            on_failure,
            max_outage: Duration::from_secs_f64(max_outage_s),
            names,
        })
    }

    /// Sends `judge` its test query ([`Judge::check`]) before any work: a failure is an error
    /// under `stop` (naming the judge, the reason and how to go on without it), a warning under
    /// `rule_only`.
    pub fn check(&self, judge: &dyn Judge) -> Result<()> {
        let names = self.names;
        if self.on_failure == JudgeFailure::Stop {
            let without = format!(
                "set {} to score with the rule alone while it is down",
                names.rule_only
            );
            return check_judge(judge, names.url, &without);
        }
        if let Err(why) = judge.check() {
            log::warn!(
                "{} did not answer a test query ({why}); going on, scoring with the rule alone \
                 while it is down ({})",
                judge.describe(),
                names.rule_only
            );
        }
        Ok(())
    }
}

/// Sends `judge` its test query ([`Judge::check`]) before any work; a failure is an error naming
/// the setting `url` of the judge, the reason, and `without` (how to go on without the judge).
/// The training reward and `longrl eval` refuse a dead judge with it.
pub fn check_judge(judge: &dyn Judge, url: &str, without: &str) -> Result<()> {
    judge.check().map_err(|why| {
        Error::Judge(format!(
            "{url}: {} did not answer a test query: {why}. Start it (or fix {url}), or {without}",
            judge.describe()
        ))
    })
}

/// The outage in progress.
#[derive(Debug)]
struct Outage {
    /// When the first failed round started.
    since: Instant,
    /// Queries scored with the rule alone since (under `rule_only`).
    rule_only: usize,
}

/// Applies an [`OutagePolicy`] to a judge's batches and remembers the outage in progress, so that
/// it is logged once; one value is shared by every batch of a reward.
#[derive(Debug)]
pub struct OutageWatch {
    policy: OutagePolicy,
    outage: Mutex<Option<Outage>>,
}

impl OutageWatch {
    /// A watch with no outage in progress.
    pub fn new(policy: OutagePolicy) -> Self {
        Self {
            policy,
            outage: Mutex::new(None),
        }
    }

    /// The policy applied.
    pub fn policy(&self) -> &OutagePolicy {
        &self.policy
    }

    fn lock(&self) -> MutexGuard<'_, Option<Outage>> {
        self.outage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Judges `queries` under the policy: one outcome per query, in order. Under `rule_only`
    /// failed outcomes are returned as they are; under `stop` they are asked again until answered,
    /// or the error once the outage has lasted `max_outage` (checked after each round, so a round
    /// of timeouts may add to it).
    pub fn judge(&self, judge: &dyn Judge, queries: &[JudgeQuery]) -> Result<Vec<JudgeOutcome>> {
        let started = Instant::now();
        let mut outcomes = judge.judge(queries);
        outcomes.resize_with(queries.len(), || {
            JudgeOutcome::failed("the judge returned no outcome")
        });
        let mut progress = false;
        loop {
            let failed: Vec<usize> = (0..outcomes.len())
                .filter(|&k| outcomes[k].verdict == Verdict::Failed)
                .collect();
            let Some(&first) = failed.first() else {
                self.end(judge);
                return Ok(outcomes);
            };
            let last_error = outcomes[first].detail.as_deref().unwrap_or("no detail");
            let down = self.begin(judge, started, last_error, failed.len(), queries.len());
            if self.policy.on_failure == JudgeFailure::RuleOnly {
                return Ok(outcomes);
            }
            if down >= self.policy.max_outage {
                *self.lock() = None;
                return Err(self.gave_up(judge, down, last_error, failed.len(), queries.len()));
            }
            if !progress {
                let left = self.policy.max_outage - down;
                std::thread::sleep(judge.retry_in().unwrap_or(RETRY_PAUSE).min(left));
            }
            let again: Vec<JudgeQuery> = failed.iter().map(|&k| queries[k].clone()).collect();
            let answers = judge.judge(&again);
            progress = answers.iter().any(|o| o.verdict != Verdict::Failed);
            for (&k, outcome) in failed.iter().zip(answers) {
                outcomes[k] = outcome;
            }
        }
    }

    /// Notes a round with `failed` of `total` queries failed: starts the outage (with one warning)
    /// when none is in progress; returns how long it has lasted.
    fn begin(
        &self,
        judge: &dyn Judge,
        started: Instant,
        last_error: &str,
        failed: usize,
        total: usize,
    ) -> Duration {
        let mut outage = self.lock();
        let current = outage.get_or_insert_with(|| {
            let then = match self.policy.on_failure {
                JudgeFailure::Stop => format!(
                    "asking again for up to {:.0} s ({}) before stopping",
                    self.policy.max_outage.as_secs_f64(),
                    self.policy.names.max_outage
                ),
                JudgeFailure::RuleOnly => "scoring them with the rule alone until it answers \
                                           (counted in reward/judge_failures)"
                    .into(),
            };
            log::warn!(
                "{} is failing: {failed} of {total} queries got no verdict (last error: \
                 {last_error}); {then}",
                judge.describe()
            );
            Outage {
                since: started,
                rule_only: 0,
            }
        });
        if self.policy.on_failure == JudgeFailure::RuleOnly {
            current.rule_only += failed;
        }
        current.since.elapsed()
    }

    /// Notes a round with every query answered: ends the outage in progress, with one message.
    fn end(&self, judge: &dyn Judge) {
        if let Some(outage) = self.lock().take() {
            let scored = match outage.rule_only {
                0 => String::new(),
                n => format!("; {n} queries were scored with the rule alone meanwhile"),
            };
            log::info!(
                "{} answers again after {:.1} s{scored}",
                judge.describe(),
                outage.since.elapsed().as_secs_f64()
            );
        }
    }

    /// The error that ends a batch under `stop`.
    fn gave_up(
        &self,
        judge: &dyn Judge,
        down: Duration,
        last_error: &str,
        failed: usize,
        total: usize,
    ) -> Error {
        let names = self.policy.names;
        Error::Judge(format!(
            "{} has been failing for {:.1} s, longer than the {:.0} s allowed ({}): {failed} of \
             {total} queries got no verdict; last error: {last_error}. Nothing was learnt from this \
             batch. Restart the judge (a run resumes from its last checkpoint with --resume), \
             raise {}, or set {} to score with the rule alone while it is down",
            judge.describe(),
            down.as_secs_f64(),
            self.policy.max_outage.as_secs_f64(),
            names.max_outage,
            names.max_outage,
            names.rule_only
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails its first `failures` queries (counted over calls), then answers `[[YES]]`.
    struct Flaky {
        failures: usize,
        asked: AtomicUsize,
    }

    impl Judge for Flaky {
        fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome> {
            queries
                .iter()
                .map(|_| {
                    if self.asked.fetch_add(1, Ordering::SeqCst) < self.failures {
                        JudgeOutcome::failed("connection refused")
                    } else {
                        JudgeOutcome::from_reply("[[YES]]")
                    }
                })
                .collect()
        }
        fn describe(&self) -> String {
            "judge at http://judge".into()
        }
        fn retry_in(&self) -> Option<Duration> {
            Some(Duration::from_millis(1))
        }
    }

    fn flaky(failures: usize) -> Flaky {
        Flaky {
            failures,
            asked: AtomicUsize::new(0),
        }
    }

    fn queries(n: usize) -> Vec<JudgeQuery> {
        (0..n)
            .map(|i| JudgeQuery {
                question: format!("q{i}"),
                answer: "a".into(),
                gold: "a".into(),
            })
            .collect()
    }

    fn policy(on_failure: JudgeFailure, max_outage: Duration) -> OutagePolicy {
        OutagePolicy {
            on_failure,
            max_outage,
            ..OutagePolicy::default()
        }
    }

    #[test]
    fn stop_asks_failed_queries_again_until_answered() {
        let watch = OutageWatch::new(policy(JudgeFailure::Stop, Duration::from_secs(60)));
        let judge = flaky(5);
        let out = watch.judge(&judge, &queries(3)).unwrap();
        assert!(out.iter().all(|o| o.verdict == Verdict::Yes), "{out:?}");
        // All 3 fail; asked again, 2 of them fail; asked again, those 2 are answered: 3 + 3 + 2.
        assert_eq!(judge.asked.load(Ordering::SeqCst), 8);
        assert!(watch.lock().is_none(), "the outage is over");
    }

    #[test]
    fn stop_gives_up_after_the_bound_naming_the_judge_and_the_setting() {
        let watch = OutageWatch::new(policy(JudgeFailure::Stop, Duration::from_millis(20)));
        let judge = flaky(usize::MAX);
        let e = watch.judge(&judge, &queries(2)).unwrap_err();
        assert!(matches!(e, Error::Judge(_)), "{e}");
        let e = e.to_string();
        for part in [
            "judge at http://judge has been failing for",
            "rl.reward.judge_max_outage_s",
            "last error: connection refused",
            "rl.reward.judge_failure = \"rule_only\"",
            "2 of 2 queries",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        // A zero bound gives up after the first round.
        let watch = OutageWatch::new(policy(JudgeFailure::Stop, Duration::ZERO));
        let judge = flaky(usize::MAX);
        assert!(watch.judge(&judge, &queries(4)).is_err());
        assert_eq!(judge.asked.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn rule_only_returns_failures_at_once_and_the_outage_spans_batches() {
        let watch = OutageWatch::new(policy(JudgeFailure::RuleOnly, Duration::ZERO));
        let judge = flaky(3);
        let out = watch.judge(&judge, &queries(2)).unwrap();
        assert!(out.iter().all(|o| o.verdict == Verdict::Failed));
        let out = watch.judge(&judge, &queries(2)).unwrap();
        assert_eq!(out[0].verdict, Verdict::Failed);
        assert_eq!(out[1].verdict, Verdict::Yes);
        assert_eq!(watch.lock().as_ref().map(|o| o.rule_only), Some(3));
        let out = watch.judge(&judge, &queries(2)).unwrap();
        assert!(out.iter().all(|o| o.verdict == Verdict::Yes));
        assert!(watch.lock().is_none());
        assert_eq!(judge.asked.load(Ordering::SeqCst), 6);
    }

    #[test]
    fn the_bound_is_checked() {
        let names = OutageNames::CLI;
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e9] {
            let e = OutagePolicy::from_settings(JudgeFailure::Stop, bad, names).unwrap_err();
            assert!(e.to_string().starts_with("--judge-max-outage:"), "{e}");
        }
        let p = OutagePolicy::from_settings(JudgeFailure::RuleOnly, 0.5, names).unwrap();
        assert_eq!(p.max_outage, Duration::from_millis(500));
    }
}
