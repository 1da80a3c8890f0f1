//! Subscriptions, acks and nacks.
//!
//! - `open`: setting up a consumer (queue, bindings, qos, basic.consume).
//! - `consumer`: the task that owns one subscription's channel.
//! - `settle`: what a subscription holds and how acks and nacks reach the
//!   broker.
//! - `delivery`: delivery ids and the attempt count.
//! - `registry`: every subscription, and routing acks to them by id.

mod consumer;
mod deadline;
mod delivery;
mod open;
mod registry;
mod settle;

use super::Bus;
use crate::auth::{Access, Caller, Share};
use crate::error::Error;

pub(crate) use deadline::Deadlines;
pub use deadline::MAX_ACK_DEADLINE_MS;
pub(crate) use delivery::Outgoing;
pub(crate) use delivery::{attempt, DeliveryId};
pub use delivery::{Delivery, SubscribeRequest, ATTEMPT_HEADER};
pub use registry::Subscription;
pub(super) use registry::{Parts, Subscriptions};
pub use settle::Action;
pub(crate) use settle::{refuse, reply_target, Settle};

/// The longest delay a nack may ask for.
pub const MAX_NACK_DELAY_MS: u32 = 30 * 24 * 3600 * 1000;

impl Bus {
    /// Opens a subscription of `caller`'s; deliveries flow until it is
    /// dropped. It needs `consume` on the queue (a temporary queue: on the
    /// exchange it is bound to), checked before anything is declared.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        request: SubscribeRequest,
    ) -> Result<Subscription, Error> {
        let _pass = self.enter()?;
        let consumed = if request.queue.is_empty() {
            &request.exchange
        } else {
            &request.queue
        };
        caller.permit(Access::Consume(consumed))?;
        let held = caller.hold(Share::Subscription)?;
        self.subscriptions
            .open(caller, held, request, self.publish_pool.frame_max())
            .await
    }

    /// Acks deliveries by id (all or none of one stream's ids). Answers once
    /// the ack was sent to the broker. Another client's ids are NOT_FOUND.
    pub async fn ack(&self, caller: &Caller, ids: &[String]) -> Result<u32, Error> {
        let _pass = self.enter()?;
        self.subscriptions.settle(caller, ids, Action::Ack).await
    }

    /// Pushes the ack deadlines of deliveries out by the subscription's
    /// `ack_deadline_ms` again (all or none of one stream's ids).
    pub async fn extend(&self, caller: &Caller, ids: &[String]) -> Result<u32, Error> {
        let _pass = self.enter()?;
        self.subscriptions.settle(caller, ids, Action::Extend).await
    }

    /// Nacks deliveries: `requeue` retries them under the queue's retry
    /// policy (after `delay_ms`, or the policy's backoff when 0; dead-lettered
    /// once the policy's attempts are used), else they are dead-lettered.
    pub async fn nack(
        &self,
        caller: &Caller,
        ids: &[String],
        requeue: bool,
        delay_ms: u32,
    ) -> Result<u32, Error> {
        let _pass = self.enter()?;
        if delay_ms > MAX_NACK_DELAY_MS {
            return Err(Error::InvalidArgument(format!(
                "delay_ms {delay_ms} is above the limit of {MAX_NACK_DELAY_MS} (30 days)"
            )));
        }
        let action = if requeue {
            Action::Retry { delay_ms }
        } else {
            Action::DeadLetter
        };
        self.subscriptions.settle(caller, ids, action).await
    }
}
