//! Publishing: validation, then a publisher task (streams, named publishers)
//! or the shared channels.

use std::time::Instant;

use tokio::sync::oneshot;

use super::publisher;
use super::{Bus, PublisherHandle};
use crate::error::Error;
use crate::message::{check_short, Message};
use crate::metrics::outcome;

/// A message to publish and where to.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// `""` is the default exchange.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// The message.
    pub message: Message,
    /// Return (and fail) the message when no queue is bound for it.
    pub mandatory: bool,
}

/// A publish the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The id the message was published with.
    pub message_id: String,
}

/// A pending publish: resolves once the broker confirmed (or refused) it.
pub type Pending = oneshot::Receiver<Result<Confirmed, Error>>;

/// The `warren_publish_total` outcome for a failed publish.
pub(super) fn outcome_of(error: &Error) -> usize {
    match error {
        Error::Unroutable { .. } => outcome::UNROUTABLE,
        Error::NotFound(_) => outcome::NOT_FOUND,
        Error::Nacked => outcome::NACKED,
        Error::InvalidArgument(_)
        | Error::TooLarge { .. }
        | Error::FailedPrecondition(_)
        | Error::PermissionDenied(_) => outcome::INVALID,
        _ => outcome::UNAVAILABLE,
    }
}

impl Bus {
    /// Publishes one message and waits for the broker's confirm: on the
    /// channel of the publisher named (its messages keep their order), else
    /// on one of the shared channels.
    pub async fn publish_unary(
        &self,
        publisher: Option<&str>,
        publish: Publish,
    ) -> Result<Confirmed, Error> {
        let Some(name) = publisher else {
            return self.publish_shared(publish).await;
        };
        if name.is_empty() || name.len() > 128 {
            return Err(Error::InvalidArgument(
                "a publisher name must be 1 to 128 bytes".into(),
            ));
        }
        let publisher = self.publishers.named(name)?;
        self.publish(&publisher, publish).await
    }

    pub(super) async fn publish_shared(&self, publish: Publish) -> Result<Confirmed, Error> {
        let started = Instant::now();
        let result = self.prepare(publish).await;
        let publish = result.inspect_err(|e| self.metrics.publish(outcome_of(e)))?;
        self.shared.publish(&publish, None, started).await
    }

    /// A publisher of its own, for one publish stream; it closes its channel
    /// once the handle is dropped and its messages are settled.
    pub fn session(&self) -> Result<PublisherHandle, Error> {
        self.check_open()?;
        self.publishers.dedicated()
    }

    /// Validates `publish` and queues it on `publisher`, in call order.
    /// The returned future resolves with the broker's verdict.
    pub async fn submit(
        &self,
        publisher: &PublisherHandle,
        publish: Publish,
    ) -> Result<Pending, Error> {
        let started = Instant::now();
        let result = self.prepare(publish).await;
        let publish = result.inspect_err(|e| self.metrics.publish(outcome_of(e)))?;
        let (reply, pending) = oneshot::channel();
        let command = publisher::Command {
            publish,
            properties: None,
            started,
            reply,
        };
        if publisher.0.send(command).await.is_err() {
            self.metrics.publish(outcome::UNAVAILABLE);
            return Err(Error::ShuttingDown);
        }
        Ok(pending)
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        publisher: &PublisherHandle,
        publish: Publish,
    ) -> Result<Confirmed, Error> {
        let pending = self.submit(publisher, publish).await?;
        pending.await.unwrap_or(Err(Error::ShuttingDown))
    }

    pub(super) async fn prepare(&self, mut publish: Publish) -> Result<Publish, Error> {
        self.check_open()?;
        self.breaker.check()?;
        check_short("exchange", &publish.exchange)?;
        check_short("routing_key", &publish.routing_key)?;
        publish
            .message
            .validate(self.config.publish.max_body_bytes)?;
        if !publish.message.user_id.is_empty() {
            // The broker closes the channel on a user_id that is not the
            // connection's user: refuse it here instead.
            let user = self.publish_pool.username();
            if user.as_deref() != Some(publish.message.user_id.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "user_id must be empty or the broker user Warren connects as ({})",
                    user.unwrap_or_default()
                )));
            }
        }
        publish.message.ensure_id();
        self.exchanges.check(&publish.exchange).await?;
        Ok(publish)
    }
}
