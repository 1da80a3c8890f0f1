//! The circuit breaker in front of the broker.
//!
//! Closed, it counts consecutive broker failures (requests that ended
//! UNAVAILABLE or nacked after their retries); after `breaker.failures` of
//! them, or at once when the pool knows no connection is live ([`Breaker::trip`]),
//! it opens: publishes and calls fail at once with UNAVAILABLE (HTTP 503)
//! and a `Retry-After` of the time left in the open period. When the period
//! is over it lets requests through (half-open): the first success closes
//! it, a failure opens it again for twice as long (jittered, at most
//! `open_max`). Only the broker's faults count; failures of the client's
//! making (bad input, missing exchanges, deadlines) and Warren's own count
//! neither way, so bad requests can neither trip nor close it.
//!
//! A request the client gives up on (its deadline, or it went away) while
//! Warren has been waiting on the broker for [`STALLED`] or longer counts as
//! a failure too ([`Breaker::waiting`]): a broker that keeps its connections
//! but takes nothing (a memory or disk alarm blocks publishers) otherwise
//! never opens it, and every caller waits out its own deadline.
//!
//! The state machine is Warren's own (it was on `failsafe` before): it reads
//! tokio's clock, so tests run it on paused time, and it can be tripped by
//! what the pool knows rather than only by failed requests.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config;
use crate::error::{Error, Origin};

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, period: Duration },
    HalfOpen { period: Duration },
}

/// How long a request waits on the broker before its cancellation counts
/// as a broker failure. A healthy broker confirms within milliseconds, a
/// busy quorum queue within a few hundred.
pub const STALLED: Duration = Duration::from_millis(500);

/// Watches a request while it waits on the broker: dropped before
/// [`Waiting::settled`] after [`STALLED`] or more, it records a failure.
pub struct Waiting<'a> {
    breaker: &'a Breaker,
    since: Instant,
    settled: bool,
}

impl Waiting<'_> {
    /// The broker answered (whatever the answer): nothing to record here.
    pub fn settled(mut self) {
        self.settled = true;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let waited = self.since.elapsed();
        if !self.settled && waited >= STALLED {
            warn!(
                ?waited,
                "a request was given up while waiting on the broker"
            );
            self.breaker.observe(Verdict::Failure);
        }
    }
}

/// How a request ended, as far as the breaker is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The broker took it.
    Success,
    /// The broker failed it.
    Failure,
    /// Says nothing about the broker.
    Neutral,
}

impl Verdict {
    /// The verdict on a request's result.
    pub fn of<T>(result: &Result<T, Error>) -> Self {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) => match e.origin() {
                Origin::Broker => Verdict::Failure,
                Origin::Client | Origin::Warren => Verdict::Neutral,
            },
        }
    }
}

/// The breaker, or a pass-through when disabled.
pub struct Breaker {
    config: config::Breaker,
    state: Mutex<State>,
    gauge: IntGauge,
}

impl Breaker {
    /// A closed breaker as configured.
    pub fn new(config: &config::Breaker, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            config: config.clone(),
            state: Mutex::new(State::Closed { failures: 0 }),
            gauge,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, state: &mut State, new: State) {
        match new {
            State::Open { period, .. } if !matches!(state, State::Open { .. }) => {
                warn!(open_for = ?period, "circuit breaker opened: failing publishes and calls fast while the broker is unavailable");
                self.gauge.set(2);
            }
            State::HalfOpen { .. } => {
                info!("circuit breaker half-open: letting requests probe the broker");
                self.gauge.set(1);
            }
            State::Closed { .. } if !matches!(state, State::Closed { .. }) => {
                info!("circuit breaker closed");
                self.gauge.set(0);
            }
            _ => {}
        }
        *state = new;
    }

    fn jittered(period: Duration) -> Duration {
        let half = period / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    fn open(&self, state: &mut State, period: Duration) {
        let until = Instant::now() + Self::jittered(period);
        self.set(state, State::Open { until, period });
    }

    fn unavailable(until: Instant) -> Error {
        let left = until.saturating_duration_since(Instant::now());
        Error::Unavailable {
            reason: "the circuit breaker is open: the broker is unavailable".into(),
            retry_after: Some(left.max(Duration::from_millis(1))),
            cause: None,
        }
    }

    /// Ok while requests may go to the broker; UNAVAILABLE while open.
    pub fn check(&self) -> Result<(), Error> {
        if !self.config.enabled {
            return Ok(());
        }
        let mut state = self.state();
        match *state {
            State::Open { until, .. } if Instant::now() < until => Err(Self::unavailable(until)),
            State::Open { period, .. } => {
                self.set(&mut state, State::HalfOpen { period });
                Ok(())
            }
            State::Closed { .. } | State::HalfOpen { .. } => Ok(()),
        }
    }

    /// Opens the breaker now (no live connection) unless it is open already,
    /// and answers UNAVAILABLE with the time left.
    pub fn trip(&self) -> Error {
        let mut state = self.state();
        if !self.config.enabled {
            return Error::unavailable("not connected to the broker");
        }
        match *state {
            State::Open { until, .. } if Instant::now() < until => {}
            State::HalfOpen { period } | State::Open { period, .. } => {
                let next = (period * 2).min(self.config.open_max);
                self.open(&mut state, next);
            }
            State::Closed { .. } => self.open(&mut state, self.config.open_min),
        }
        match *state {
            State::Open { until, .. } => Self::unavailable(until),
            _ => Error::unavailable("not connected to the broker"),
        }
    }

    /// Starts watching a request that now waits on the broker.
    pub fn waiting(&self) -> Waiting<'_> {
        Waiting {
            breaker: self,
            since: Instant::now(),
            settled: false,
        }
    }

    /// Records how a request ended.
    pub fn record<T>(&self, result: &Result<T, Error>) {
        self.observe(Verdict::of(result));
    }

    /// Records a verdict.
    pub fn observe(&self, verdict: Verdict) {
        if !self.config.enabled {
            return;
        }
        let mut state = self.state();
        match (verdict, *state) {
            (Verdict::Neutral, _) => {}
            (Verdict::Success, State::Closed { .. } | State::HalfOpen { .. }) => {
                self.set(&mut state, State::Closed { failures: 0 });
            }
            // A request that began before the breaker opened says nothing new.
            (Verdict::Success | Verdict::Failure, State::Open { .. }) => {}
            (Verdict::Failure, State::Closed { failures }) => {
                if failures + 1 >= self.config.failures {
                    self.open(&mut state, self.config.open_min);
                } else {
                    self.set(
                        &mut state,
                        State::Closed {
                            failures: failures + 1,
                        },
                    );
                }
            }
            (Verdict::Failure, State::HalfOpen { period }) => {
                let next = (period * 2).min(self.config.open_max);
                self.open(&mut state, next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32) -> (Breaker, IntGauge) {
        let gauge = IntGauge::new("g", "g").unwrap();
        let config = config::Breaker {
            enabled: true,
            failures,
            open_min: Duration::from_secs(1),
            open_max: Duration::from_secs(4),
        };
        (Breaker::new(&config, gauge.clone()), gauge)
    }

    fn down() -> Result<(), Error> {
        Err(Error::unavailable("down"))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_a_run_of_failures_and_closes_on_success() {
        let (b, gauge) = breaker(3);
        for _ in 0..2 {
            b.record(&down());
            assert!(b.check().is_ok());
        }
        b.record(&down());
        assert_eq!(gauge.get(), 2);
        let err = b.check().unwrap_err();
        assert_eq!(err.code(), crate::error::code::UNAVAILABLE);
        let after = err.retry_after().unwrap();
        assert!(
            after >= Duration::from_millis(500) && after <= Duration::from_secs(1),
            "{after:?}"
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(b.check().is_ok(), "half-open after the open period");
        assert_eq!(gauge.get(), 1);
        b.record(&Ok(()));
        assert_eq!(gauge.get(), 0);
        assert!(b.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_the_time_left() {
        let (b, _) = breaker(1);
        b.record(&down());
        let first = b.check().unwrap_err().retry_after().unwrap();
        tokio::time::advance(Duration::from_millis(300)).await;
        let later = b.check().unwrap_err().retry_after().unwrap();
        assert_eq!(first - later, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn client_and_warren_errors_count_neither_way() {
        let (b, gauge) = breaker(2);
        for _ in 0..10 {
            b.record::<()>(&Err(Error::NotFound("x".into())));
            b.record::<()>(&Err(Error::InvalidArgument("x".into())));
            b.record::<()>(&Err(Error::DeadlineExceeded("x".into())));
            b.record::<()>(&Err(Error::Internal("x".into())));
        }
        assert!(b.check().is_ok());
        assert_eq!(gauge.get(), 0);
        // Nor do they close it when half-open.
        b.record(&down());
        b.record(&down());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.check().is_ok());
        b.record::<()>(&Err(Error::InvalidArgument("x".into())));
        assert_eq!(gauge.get(), 1, "still half-open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again_for_longer() {
        let (b, gauge) = breaker(1);
        b.record(&down());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.check().is_ok());
        b.record(&down());
        assert_eq!(gauge.get(), 2);
        let after = b.check().unwrap_err().retry_after().unwrap();
        assert!(after >= Duration::from_secs(1), "doubled: {after:?}");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn trip_opens_at_once_and_keeps_the_period() {
        let (b, gauge) = breaker(5);
        let e = b.trip();
        assert_eq!(gauge.get(), 2);
        assert!(e.retry_after().unwrap() <= Duration::from_secs(1));
        let again = b.trip().retry_after().unwrap();
        assert!(again <= e.retry_after().unwrap(), "not extended while open");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_given_up_while_the_broker_stalls_are_failures() {
        let (b, gauge) = breaker(2);
        // Answered, or given up quickly: nothing.
        for _ in 0..5 {
            let waiting = b.waiting();
            tokio::time::advance(STALLED * 2).await;
            waiting.settled();
            let quick = b.waiting();
            tokio::time::advance(STALLED / 2).await;
            drop(quick);
        }
        assert!(b.check().is_ok());
        // Given up after waiting STALLED: failures.
        for _ in 0..2 {
            let stalled = b.waiting();
            tokio::time::advance(STALLED).await;
            drop(stalled);
        }
        assert_eq!(gauge.get(), 2, "open");
        assert!(b.check().is_err());
    }

    #[test]
    fn disabled_is_a_pass_through() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let config = config::Breaker {
            enabled: false,
            ..Default::default()
        };
        let b = Breaker::new(&config, gauge);
        for _ in 0..100 {
            b.record(&down());
        }
        assert!(b.check().is_ok());
    }
}
