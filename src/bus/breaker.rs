//! The circuit breaker in front of the broker.
//!
//! Built on the `failsafe` crate's state machine: after `breaker.failures`
//! consecutive broker failures (requests that ended UNAVAILABLE after their
//! retries) it opens (the crate was chosen over writing the state machine
//! again: it is small, widely used and has the half-open logic right), and publishes and calls fail at once with UNAVAILABLE
//! (HTTP 503 with `Retry-After`) instead of waiting out retries. After a
//! jittered backoff it lets requests through again (half-open); the first
//! success closes it, a failure opens it again for longer.

use std::time::Duration;

use failsafe::failure_policy::{consecutive_failures, ConsecutiveFailures};
use failsafe::{Instrument, StateMachine};
use prometheus::IntGauge;
use tracing::{info, warn};

use crate::config;
use crate::error::Error;

/// Keeps `warren_circuit_breaker_state` and the log in step with the breaker.
pub struct Observer {
    gauge: IntGauge,
}

impl Instrument for Observer {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        self.gauge.set(2);
        warn!("circuit breaker opened: failing publishes and calls fast while the broker is unavailable");
    }

    fn on_half_open(&self) {
        self.gauge.set(1);
        info!("circuit breaker half-open: letting requests probe the broker");
    }

    fn on_closed(&self) {
        if self.gauge.get() != 0 {
            info!("circuit breaker closed");
        }
        self.gauge.set(0);
    }
}

/// Open periods: doubling from `open_min` to `open_max`, with equal jitter.
/// (failsafe's own jittered backoffs insist on whole seconds.)
#[derive(Clone)]
pub struct OpenPeriods {
    next: Duration,
    max: Duration,
}

impl Iterator for OpenPeriods {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        Some(half + half.mul_f64(rand::random::<f64>()))
    }
}

/// The breaker, or a pass-through when disabled.
pub struct Breaker {
    machine: Option<StateMachine<ConsecutiveFailures<OpenPeriods>, Observer>>,
    retry_after: Duration,
}

impl Breaker {
    /// A closed breaker as configured.
    pub fn new(config: &config::Breaker, gauge: IntGauge) -> Self {
        let machine = config.enabled.then(|| {
            let backoff = OpenPeriods {
                next: config.open_min,
                max: config.open_max,
            };
            let policy = consecutive_failures(config.failures, backoff);
            StateMachine::new(policy, Observer { gauge })
        });
        Self {
            machine,
            retry_after: config.open_min,
        }
    }

    /// Ok while requests may go to the broker; UNAVAILABLE while open.
    pub fn check(&self) -> Result<(), Error> {
        match &self.machine {
            Some(m) if !m.is_call_permitted() => Err(Error::Unavailable {
                reason: "the circuit breaker is open after repeated broker failures".into(),
                retry_after: Some(self.retry_after),
            }),
            _ => Ok(()),
        }
    }

    /// Records how a request ended: broker faults count against the broker;
    /// any answer from it (a confirm, or a refusal such as NOT_FOUND) counts
    /// as the broker being there.
    pub fn record<T>(&self, result: &Result<T, Error>) {
        let Some(m) = &self.machine else { return };
        match result {
            Err(Error::Unavailable { .. } | Error::Nacked) => m.on_error(),
            Err(Error::ShuttingDown | Error::DeadlineExceeded(_) | Error::LimitReached(_)) => {}
            _ => m.on_success(),
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
            open_min: Duration::from_millis(50),
            open_max: Duration::from_millis(100),
        };
        (Breaker::new(&config, gauge.clone()), gauge)
    }

    #[test]
    fn opens_after_a_run_of_failures_and_closes_on_success() {
        let (b, gauge) = breaker(3);
        let down: Result<(), Error> = Err(Error::unavailable("down"));
        for _ in 0..2 {
            b.record(&down);
            assert!(b.check().is_ok());
        }
        b.record(&down);
        assert_eq!(gauge.get(), 2);
        let err = b.check().unwrap_err();
        assert_eq!(err.code(), crate::error::code::UNAVAILABLE);
        assert!(err.retry_after().is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert!(b.check().is_ok(), "half-open after the backoff");
        assert_eq!(gauge.get(), 1);
        b.record(&Ok(()));
        assert_eq!(gauge.get(), 0);
        assert!(b.check().is_ok());
    }

    #[test]
    fn client_errors_do_not_open_it() {
        let (b, gauge) = breaker(2);
        for _ in 0..10 {
            b.record::<()>(&Err(Error::NotFound("x".into())));
            b.record::<()>(&Err(Error::InvalidArgument("x".into())));
        }
        assert!(b.check().is_ok());
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let (b, gauge) = breaker(1);
        b.record::<()>(&Err(Error::unavailable("down")));
        assert!(b.check().is_err());
        std::thread::sleep(Duration::from_millis(120));
        assert!(b.check().is_ok());
        b.record::<()>(&Err(Error::unavailable("still down")));
        assert_eq!(gauge.get(), 2);
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
            b.record::<()>(&Err(Error::unavailable("down")));
        }
        assert!(b.check().is_ok());
    }
}
