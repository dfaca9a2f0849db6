//! A circuit breaker for one remote server: after `failures` failed attempts in a row it opens and
//! refuses every call for `cooldown`; then it is half-open and lets exactly one probe through,
//! whose success closes it and whose failure opens it again. A hanging or dead server thus costs
//! one round of failed attempts, not every query's retries. Callers pass the current time, so the
//! state machine is tested with explicit instants.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// When a [`Breaker`] opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Failed attempts in a row (transport error, timeout, 429, 5xx) that open the circuit.
    pub failures: u32,
    /// How long an open circuit refuses calls before letting one probe through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    /// 5 failed attempts in a row open the circuit for 30 s.
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    /// The settings from a failure count and a cool-down in seconds, checked; errors name the
    /// fields `failures_name` and `cooldown_name`.
    pub fn from_settings(
        failures: u32,
        cooldown_s: f64,
        failures_name: &str,
        cooldown_name: &str,
    ) -> Result<Self> {
        if failures == 0 {
            return Err(Error::Invalid(format!(
                "{failures_name}: must be at least 1 (failed attempts in a row that open the \
                 judge's circuit breaker)"
            )));
        }
        if !(cooldown_s.is_finite() && cooldown_s > 0.0 && cooldown_s <= 86_400.0) {
            return Err(Error::Invalid(format!(
                "{cooldown_name}: {cooldown_s} must be a number of seconds in (0, 86400]"
            )));
        }
        Ok(Self {
            failures,
            cooldown: Duration::from_secs_f64(cooldown_s),
        })
    }
}

/// Where the circuit stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Calls go through.
    Closed,
    /// Calls are refused until `until`.
    Open { until: Instant },
    /// One probe is in flight; other calls are refused until it reports.
    HalfOpen,
}

/// The breaker's mutable state.
#[derive(Debug)]
struct State {
    phase: Phase,
    /// Failed attempts since the last success.
    consecutive: u32,
    /// When the circuit first opened in the current outage.
    opened_at: Option<Instant>,
    /// The reason of the last failed attempt.
    last_error: String,
}

/// A circuit breaker shared by every thread calling one server; `name` (the URL) is in its logs
/// and refusals.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    config: BreakerConfig,
    state: Mutex<State>,
}

/// The right to send one attempt, given by [`Breaker::admit`]; report its end with
/// [`Permit::success`] or [`Permit::failure`] (dropped unreported, it counts as a failure, so a
/// probe never stays in flight forever).
#[must_use]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl Permit<'_> {
    /// Whether this attempt is the half-open circuit's single probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The server answered (any reply that shows it is up, including a 4xx).
    pub fn success(mut self, now: Instant) {
        self.reported = true;
        self.breaker.on_success(now);
    }

    /// The attempt failed in a way that says the server is unavailable.
    pub fn failure(mut self, now: Instant, reason: &str) {
        self.reported = true;
        self.breaker.on_failure(now, reason, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker
                .on_failure(Instant::now(), "attempt abandoned", self.probe);
        }
    }
}

impl Breaker {
    /// A closed breaker for the server `name`.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        Self {
            name: name.into(),
            config,
            state: Mutex::new(State {
                phase: Phase::Closed,
                consecutive: 0,
                opened_at: None,
                last_error: String::new(),
            }),
        }
    }

    /// The settings of this breaker.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A permit for one attempt at `now`, or why none is given (the circuit is open, or half-open
    /// with its probe in flight). An open circuit whose cool-down is over becomes half-open and
    /// this caller's attempt is the probe.
    pub fn admit(&self, now: Instant) -> std::result::Result<Permit<'_>, String> {
        let mut state = self.lock();
        let probe = match state.phase {
            Phase::Closed => false,
            Phase::Open { until } if now >= until => {
                state.phase = Phase::HalfOpen;
                log::debug!("{}: circuit half-open, sending one probe", self.name);
                true
            }
            Phase::Open { .. } | Phase::HalfOpen => return Err(self.refusal(&state, now)),
        };
        Ok(Permit {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// Why a call is refused at `now`, while the circuit is open or half-open; `None` while it is
    /// closed or its cool-down is over (the next call may probe).
    pub fn refused(&self, now: Instant) -> Option<String> {
        let state = self.lock();
        match state.phase {
            Phase::Closed => None,
            Phase::Open { until } if now >= until => None,
            _ => Some(self.refusal(&state, now)),
        }
    }

    /// How long until the circuit lets a call through: `None` while closed, zero once the
    /// cool-down is over, the cool-down while a probe is in flight.
    pub fn retry_in(&self, now: Instant) -> Option<Duration> {
        match self.lock().phase {
            Phase::Closed => None,
            Phase::Open { until } => Some(until.saturating_duration_since(now)),
            Phase::HalfOpen => Some(self.config.cooldown),
        }
    }

    /// Whether the circuit is closed (calls go through).
    pub fn is_closed(&self) -> bool {
        self.lock().phase == Phase::Closed
    }

    fn refusal(&self, state: &State, now: Instant) -> String {
        let open_for = state
            .opened_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let next = match state.phase {
            Phase::Open { until } => format!(
                "next probe in {:.1} s",
                until.saturating_duration_since(now).as_secs_f64()
            ),
            _ => "a probe is in flight".into(),
        };
        format!(
            "circuit open for {}: not sent (open since {:.1} s ago after {} failed attempts in a \
             row, {next}); last error: {}",
            self.name,
            open_for.as_secs_f64(),
            self.config.failures,
            state.last_error
        )
    }

    fn on_success(&self, now: Instant) {
        let mut state = self.lock();
        state.consecutive = 0;
        if state.phase != Phase::Closed {
            let down = state
                .opened_at
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
            log::info!(
                "{}: circuit closed, the server answered again after {:.1} s",
                self.name,
                down.as_secs_f64()
            );
            state.phase = Phase::Closed;
            state.opened_at = None;
        }
    }

    fn on_failure(&self, now: Instant, reason: &str, probe: bool) {
        let mut state = self.lock();
        state.consecutive = state.consecutive.saturating_add(1);
        state.last_error = reason.to_string();
        let until = now + self.config.cooldown;
        match state.phase {
            Phase::HalfOpen if probe => {
                log::debug!("{}: probe failed ({reason}); circuit open again", self.name);
                state.phase = Phase::Open { until };
            }
            Phase::Closed if state.consecutive >= self.config.failures => {
                log::warn!(
                    "{}: circuit open after {} failed attempts in a row (last error: {reason}); \
                     calls fail at once for {:.1} s, then one probe is sent",
                    self.name,
                    state.consecutive,
                    self.config.cooldown.as_secs_f64()
                );
                state.phase = Phase::Open { until };
                state.opened_at = Some(now);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(
            "http://judge",
            BreakerConfig {
                failures,
                cooldown: Duration::from_secs(30),
            },
        )
    }

    fn fail(b: &Breaker, now: Instant, reason: &str) {
        b.admit(now).unwrap().failure(now, reason);
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breaker(3);
        let t0 = Instant::now();
        fail(&b, t0, "refused");
        fail(&b, t0, "refused");
        b.admit(t0).unwrap().success(t0);
        fail(&b, t0, "refused");
        fail(&b, t0, "refused");
        assert!(b.is_closed(), "two in a row after a success");
        fail(&b, t0, "HTTP 500");
        assert!(!b.is_closed());
        let why = b.admit(t0 + Duration::from_secs(1)).unwrap_err();
        assert!(why.contains("circuit open for http://judge"), "{why}");
        assert!(why.contains("last error: HTTP 500"), "{why}");
        assert!(why.contains("next probe in 29.0 s"), "{why}");
        assert_eq!(
            b.retry_in(t0 + Duration::from_secs(10)),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn in_flight_failures_of_an_open_circuit_do_not_extend_the_cooldown() {
        let b = breaker(2);
        let t0 = Instant::now();
        let permits: Vec<_> = (0..5).map(|_| b.admit(t0).unwrap()).collect();
        for (k, p) in permits.into_iter().enumerate() {
            p.failure(t0 + Duration::from_secs(k as u64), "timeout");
        }
        // Opened at t0 + 1 s by the second failure; the three later ones leave it as it is.
        assert_eq!(
            b.retry_in(t0 + Duration::from_secs(1)),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_its_result_decides() {
        let b = breaker(1);
        let t0 = Instant::now();
        fail(&b, t0, "refused");
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.refused(t1), None, "cool-down over: the next call probes");
        let probe = b.admit(t1).unwrap();
        assert!(probe.is_probe());
        let why = b.admit(t1).unwrap_err();
        assert!(why.contains("a probe is in flight"), "{why}");
        probe.failure(t1, "still refused");
        let why = b.admit(t1 + Duration::from_secs(29)).unwrap_err();
        assert!(why.contains("still refused"), "{why}");
        assert!(why.contains("open since 59.0 s ago"), "{why}");

        let t2 = t1 + Duration::from_secs(30);
        let probe = b.admit(t2).unwrap();
        assert!(probe.is_probe());
        probe.success(t2);
        assert!(b.is_closed());
        assert_eq!(b.retry_in(t2), None);
        let next = b.admit(t2).unwrap();
        assert!(!next.is_probe());
        next.success(t2);
    }

    #[test]
    fn an_abandoned_probe_counts_as_a_failure() {
        let b = breaker(1);
        let t0 = Instant::now();
        fail(&b, t0, "refused");
        // The dropped probe reports at the real time (about t0): open again for 30 s from then.
        drop(b.admit(t0 + Duration::from_secs(31)).unwrap());
        let why = b
            .admit(Instant::now() + Duration::from_secs(1))
            .unwrap_err();
        assert!(why.contains("attempt abandoned"), "{why}");
    }

    #[test]
    fn settings_are_checked_naming_the_field() {
        let ok = BreakerConfig::from_settings(5, 30.0, "f", "c").unwrap();
        assert_eq!(ok, BreakerConfig::default());
        let e = BreakerConfig::from_settings(0, 30.0, "rl.reward.judge_breaker_failures", "c");
        assert!(e
            .unwrap_err()
            .to_string()
            .starts_with("rl.reward.judge_breaker_failures:"));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = BreakerConfig::from_settings(5, bad, "f", "rl.reward.judge_breaker_cooldown_s");
            assert!(e
                .unwrap_err()
                .to_string()
                .starts_with("rl.reward.judge_breaker_cooldown_s:"));
        }
    }
}
