//! What a publish must satisfy before anything reaches the broker: every
//! refusal the broker would answer by closing a channel (or the connection)
//! is made here instead, for this request alone.

use super::{Publish, Schedule};
use crate::bus::{schedule, Bus};
use crate::error::Error;
use crate::message::check_short;

/// The largest per-message TTL the broker takes (ten years, in ms); above
/// it, the broker closes the channel.
pub const MAX_EXPIRATION_MS: u64 = 315_360_000_000;

/// Room in a content-header frame kept for the frame's own fields and the
/// fixed properties, beyond what [`crate::amqp::codec::properties_size`]
/// counts.
const HEADER_FRAME_SLACK: usize = 64;

impl Bus {
    /// [`Bus::check`], then [`Bus::resolve`]: ready to go to the broker.
    pub(crate) async fn prepare(&self, publish: Publish) -> Result<Publish, Error> {
        let publish = self.check(publish)?;
        self.resolve(publish).await
    }

    /// What can be checked without the broker: validates `publish`, routes
    /// an ordered group's key, makes a schedule absolute (`deliver_at_ms`,
    /// so a delay counts from now even when the publish waits in the spool)
    /// and gives the message an id. The caller was authorized on the
    /// publish's own exchange.
    pub(crate) fn check(&self, mut publish: Publish) -> Result<Publish, Error> {
        check_short("exchange", &publish.exchange)?;
        check_short("routing_key", &publish.routing_key)?;
        publish
            .message
            .validate(self.config.publish.max_body_bytes)?;
        // Adds the ordering key's header: before the frame size is checked.
        self.ordered.route(&mut publish)?;
        let now = schedule::now_ms();
        let delay = schedule::plan(publish.schedule, now)?;
        publish.schedule = match &delay {
            Some(delay) => Schedule {
                delay_ms: 0,
                deliver_at_ms: delay.due_ms,
            },
            None => Schedule::default(), // routed now
        };
        let message = &publish.message;
        if message.expiration_ms > MAX_EXPIRATION_MS {
            return Err(Error::InvalidArgument(format!(
                "expiration_ms {} is above the broker's limit of {MAX_EXPIRATION_MS}",
                message.expiration_ms
            )));
        }
        // Properties and headers travel in one frame: over the negotiated
        // frame size, the broker closes the whole connection. A scheduled
        // message gathers headers on its way through the delay.
        let headroom = if delay.is_some() {
            schedule::CHAIN_HEADROOM
        } else {
            0
        };
        let size = crate::amqp::codec::properties_size(message) + HEADER_FRAME_SLACK + headroom;
        let limit = self.publish_pool.frame_max();
        if size > limit {
            return Err(Error::TooLarge {
                what: "the properties and headers frame",
                size,
                limit,
            });
        }
        if !message.user_id.is_empty() {
            // The broker closes the channel on a user_id that is not the
            // connection's user: refuse it here instead.
            let user = self.publish_pool.username();
            if user.as_deref() != Some(message.user_id.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "user_id must be empty or the broker user Warren connects as ({})",
                    user.unwrap_or_default()
                )));
            }
        }
        publish.message.ensure_id();
        Ok(publish)
    }

    /// What needs the broker, for a publish [`Bus::check`] passed: checks
    /// that its exchange exists; a scheduled one still due later is
    /// rewritten into the delay (see [`crate::bus::schedule`]), one due by
    /// now is routed at once. The caller holds a pass.
    pub(crate) async fn resolve(&self, mut publish: Publish) -> Result<Publish, Error> {
        self.exchanges.check(&publish.exchange).await?;
        match schedule::plan(publish.schedule, schedule::now_ms())? {
            // The caller was authorized on this exchange, not on the chain.
            Some(delay) => self.schedule(&mut publish, delay).await?,
            None => publish.schedule = Schedule::default(),
        }
        Ok(publish)
    }
}
