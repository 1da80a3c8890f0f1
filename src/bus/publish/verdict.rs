//! What the broker's answer means for a publish, shared by publisher
//! sessions and the shared channels: the verdict on a confirm, what a channel
//! close means for a message caught on it, and the one place a finished
//! publish is counted (metrics and breaker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::Confirmation;

use super::{Confirmed, Publish};
use crate::amqp::{self, Pool};
use crate::bus::breaker::Breaker;
use crate::bus::exchanges::Exchanges;
use crate::error::Error;
use crate::metrics::{outcome, Metrics};

/// How many channel closes with no named culprit a message goes through
/// before it fails.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// How the broker answered one publish.
pub(crate) enum Outcome {
    Acked,
    /// Returned by the broker: no queue was bound for it.
    Returned,
    Nacked,
    NotConfirmMode,
    Failed(lapin::Error),
    TimedOut,
}

impl From<Confirmation> for Outcome {
    fn from(confirmation: Confirmation) -> Self {
        match confirmation {
            Confirmation::Ack(None) => Outcome::Acked,
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Outcome::Returned,
            Confirmation::Nack(None) => Outcome::Nacked,
            Confirmation::NotRequested => Outcome::NotConfirmMode,
        }
    }
}

/// What a publisher task needs from the bus.
#[derive(Clone)]
pub(crate) struct Context {
    pub breaker: Arc<Breaker>,
    pub pool: Arc<Pool>,
    pub exchanges: Arc<Exchanges>,
    pub metrics: Metrics,
    pub max_in_flight: usize,
    pub confirm_timeout: Duration,
    pub retry_budget: Duration,
}

/// Backoff between attempts to get a channel back: 50 ms doubling to 2 s,
/// with jitter so that many publishers do not retry in step.
pub(crate) fn retry_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Context {
    /// What a channel closed by the broker (a soft error) means for a message
    /// that was on it: `Some(error)` when it fails now, `None` to publish it
    /// again. A close naming another message's exchange says nothing against
    /// this one; only closes that name no culprit count towards giving up.
    pub(crate) fn caught(
        &self,
        error: &lapin::Error,
        exchange: &str,
        unexplained: &mut u32,
    ) -> Option<Error> {
        if !amqp::is_channel_error(error) {
            return None;
        }
        let culprit = amqp::exchange_in(&error.to_string());
        if culprit.is_none() {
            *unexplained += 1;
        }
        if culprit.as_deref() != Some(exchange) && *unexplained < MAX_ATTEMPTS {
            return None;
        }
        let e = amqp::publish_error(error.clone(), exchange);
        if matches!(e, Error::NotFound(_)) {
            self.exchanges.forget(exchange);
        }
        Some(e)
    }

    /// Counts a finished publish in the metrics and the breaker.
    pub(crate) fn record(
        &self,
        started: Instant,
        publish: &Publish,
        result: &Result<Confirmed, Error>,
    ) {
        self.breaker.record(result);
        match result {
            Ok(_) => {
                self.metrics.publish(outcome::CONFIRMED);
                if publish.schedule.is_set() {
                    self.metrics.scheduled(crate::metrics::scheduled::SCHEDULED);
                }
                self.metrics
                    .publish_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => self.metrics.publish(outcome_of(e)),
        }
    }
}

/// The verdict of the broker's answer on `publish`.
pub(crate) fn verdict(outcome: Outcome, publish: &Publish) -> Result<Confirmed, Error> {
    match outcome {
        Outcome::Acked => Ok(Confirmed {
            spooled: false,
            message_id: publish.message.message_id.clone(),
        }),
        Outcome::Returned => Err(Error::Unroutable {
            exchange: publish.exchange.clone(),
            routing_key: publish.routing_key.clone(),
        }),
        Outcome::Nacked => Err(Error::Nacked),
        Outcome::NotConfirmMode => Err(Error::Internal("channel is not in confirm mode".into())),
        Outcome::Failed(e) => Err(amqp::publish_error(e, &publish.exchange)),
        Outcome::TimedOut => Err(Error::unavailable(
            "the broker did not confirm the message in time",
        )),
    }
}

/// The `warren_publish_total` outcome for a failed publish.
pub(crate) fn outcome_of(error: &Error) -> usize {
    match error {
        Error::Unroutable { .. } => outcome::UNROUTABLE,
        Error::NotFound(_) => outcome::NOT_FOUND,
        Error::Nacked => outcome::NACKED,
        Error::InvalidArgument(_)
        | Error::TooLarge { .. }
        | Error::FailedPrecondition(_)
        | Error::PermissionDenied(_)
        | Error::Unauthenticated(_)
        | Error::RateLimited { .. }
        | Error::LimitReached(_) => outcome::INVALID,
        Error::SpoolFull { .. } => outcome::SPOOL_FULL,
        Error::Unavailable { .. }
        | Error::Overloaded { .. }
        | Error::DeadlineExceeded(_)
        | Error::ShuttingDown
        | Error::Internal(_) => outcome::UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use crate::amqp::exchange_in;

    #[test]
    fn finds_the_exchange_in_close_reasons() {
        assert_eq!(
            exchange_in("NOT_FOUND - no exchange 'missing.x' in vhost '/'").as_deref(),
            Some("missing.x")
        );
        assert_eq!(
            exchange_in("ACCESS_REFUSED - cannot publish to internal exchange 'it's' in vhost 'v'")
                .as_deref(),
            Some("it's")
        );
        assert_eq!(exchange_in("PRECONDITION_FAILED - something else"), None);
    }
}
