//! Request/reply over the bus: `Bus::call` (the caller's side, over direct
//! reply-to, in `caller`) and `Bus::reply` (the responder's side).

mod caller;

use std::time::Duration;

use tokio::time::Instant;

use super::{Bus, Publish};
use crate::auth::{Access, Caller};
use crate::error::Error;
use crate::message::Message;

pub(super) use caller::Rpc;
pub use caller::REPLY_TO;

impl Bus {
    /// Request/reply: publishes `message` to `exchange` with `routing_key`,
    /// a reply-to and a fresh correlation id, and waits for the reply: at
    /// most the sooner of `timeout_ms` (0: the default) and `deadline`,
    /// counted from this call (validation and opening a channel included).
    /// A request no queue is bound for fails at once (calls are mandatory).
    pub async fn call(
        &self,
        caller: &Caller,
        exchange: String,
        routing_key: String,
        message: Message,
        timeout_ms: u32,
        deadline: Option<Duration>,
    ) -> Result<Message, Error> {
        caller.permit(Access::Call(&exchange))?;
        caller.admit_publish()?;
        let timeout = self.rpc.timeout(timeout_ms, deadline)?;
        let until = Instant::now() + timeout;
        let _pass = self.enter_broker()?;
        let request = Publish {
            exchange,
            routing_key,
            message,
            mandatory: true,
            ..Default::default()
        };
        let timed_out =
            || Error::DeadlineExceeded(format!("no reply within {} ms", timeout.as_millis()));
        let request = tokio::time::timeout_at(until, self.prepare(request))
            .await
            .map_err(|_| timed_out())??;
        let reply = self
            .rpc
            .call(request, until, timeout, self.breaker.waiting())
            .await;
        // A call that timed out says nothing about the broker: the responder
        // may be slow. Broker faults count.
        self.breaker.record(&reply);
        reply
    }

    /// Answers a delivered request: publishes `message` to its reply_to with
    /// its correlation id (confirmed), then acks the request.
    pub async fn reply(
        &self,
        caller: &Caller,
        delivery_id: &str,
        mut message: Message,
    ) -> Result<(), Error> {
        let _pass = self.enter_broker()?;
        let (reply_to, correlation_id) =
            self.subscriptions.reply_target(caller, delivery_id).await?;
        message.correlation_id = correlation_id;
        message.reply_to.clear();
        let publish = Publish {
            exchange: String::new(),
            routing_key: reply_to,
            message,
            mandatory: false,
            ..Default::default()
        };
        self.publish_shared(publish).await?;
        self.subscriptions
            .settle(caller, &[delivery_id.to_owned()], super::Action::Ack)
            .await
            .map(|_| ())
    }
}
