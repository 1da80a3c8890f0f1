//! Subscriptions, acks and nacks, request/reply and the dead-letter
//! operations, as calls on the bus.

use super::dead_letters::{DeadLetter, Outcome as DeadLetterOutcome, Patch, Selection};
use super::delivery::SubscribeRequest;
use super::subscriber::Action;
use super::subscriptions::Subscription;
use super::{Bus, Publish};
use crate::error::Error;
use crate::message::{check_short, Message};

impl Bus {
    /// Request/reply: publishes `request` with a reply-to and a fresh
    /// correlation id and waits for the reply, at most the sooner of
    /// `timeout_ms` (0: the default) and `deadline`.
    pub async fn call(
        &self,
        request: Publish,
        timeout_ms: u32,
        deadline: Option<std::time::Duration>,
    ) -> Result<Message, Error> {
        let timeout = self.rpc.timeout(timeout_ms, deadline)?;
        let mut request = self.prepare(request).await?;
        // Call sets these itself; a client's values would be overwritten.
        request.message.reply_to.clear();
        let (exchange, key) = (&request.exchange, &request.routing_key);
        let reply = self.rpc.call(exchange, key, request.message, timeout).await;
        // A call that timed out says nothing about the broker: the responder
        // may be slow. Broker faults count.
        self.breaker.record(&reply);
        reply
    }

    /// Answers a delivered request: publishes `message` to its reply_to with
    /// its correlation id (confirmed), then acks the request.
    pub async fn reply(&self, delivery_id: &str, mut message: Message) -> Result<(), Error> {
        self.check_open()?;
        let (reply_to, correlation_id) = self.subscriptions.reply_target(delivery_id).await?;
        message.correlation_id = correlation_id;
        message.reply_to.clear();
        let publish = Publish {
            exchange: String::new(),
            routing_key: reply_to,
            message,
            mandatory: false,
        };
        self.publish_shared(publish).await?;
        self.ack(&[delivery_id.to_owned()]).await.map(|_| ())
    }

    /// Up to `limit` dead letters of `dlq`, left in place.
    pub async fn dead_letters(&self, dlq: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.check_open()?;
        let max = self.config.dead_letters.max_list;
        if limit > max {
            return Err(Error::InvalidArgument(format!(
                "limit {limit} is above {max} (dead_letters.max_list)"
            )));
        }
        self.dead_letters.list(dlq, limit).await
    }

    /// Replays the selected dead letters of `dlq` to their original queues.
    pub async fn replay(
        &self,
        dlq: &str,
        selection: &Selection,
        patch: &Patch,
    ) -> Result<DeadLetterOutcome, Error> {
        self.check_open()?;
        self.breaker.check()?;
        if let Some(body) = &patch.body {
            if body.len() > self.config.publish.max_body_bytes {
                return Err(Error::TooLarge {
                    size: body.len(),
                    limit: self.config.publish.max_body_bytes,
                });
            }
        }
        if let Some(headers) = &patch.headers {
            crate::amqp::codec::check_headers(headers)?;
        }
        for (what, value) in [
            ("content_type", &patch.content_type),
            ("content_encoding", &patch.content_encoding),
        ] {
            if let Some(v) = value {
                check_short(what, v)?;
            }
        }
        self.dead_letters.replay(dlq, selection, patch).await
    }

    /// Removes the selected dead letters of `dlq` for good.
    pub async fn discard(
        &self,
        dlq: &str,
        selection: &Selection,
    ) -> Result<DeadLetterOutcome, Error> {
        self.check_open()?;
        self.dead_letters.discard(dlq, selection).await
    }

    /// Opens a subscription; deliveries flow until it is dropped.
    pub async fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription, Error> {
        self.check_open()?;
        self.subscriptions.open(request).await
    }

    /// Acks deliveries by id (all or none of one stream's ids).
    pub async fn ack(&self, ids: &[String]) -> Result<u32, Error> {
        self.subscriptions.settle(ids, Action::Ack).await
    }

    /// Nacks deliveries: `requeue` retries them under the queue's retry
    /// policy (after `delay_ms`, or the policy's backoff when 0; dead-lettered
    /// once the policy's attempts are used), else they are dead-lettered.
    pub async fn nack(&self, ids: &[String], requeue: bool, delay_ms: u32) -> Result<u32, Error> {
        let action = if requeue {
            Action::Retry { delay_ms }
        } else {
            Action::DeadLetter
        };
        self.subscriptions.settle(ids, action).await
    }
}
