//! Publishing: validation, then a publisher session (streams, named
//! publishers) or the shared channels.
//!
//! - `budget`: the cap on message bodies in flight, on every path.
//! - `validate`: what a publish must satisfy before it reaches the broker.
//! - `session`: a publisher task owning one confirm channel, in order.
//! - `registry`: named publishers and stream sessions, capped and reaped.
//! - `shared`: the shared channels used by the request's own task.
//! - `verdict`: what the broker's answer means, counted in one place.

mod budget;
mod registry;
mod session;
mod shared;
mod validate;
mod verdict;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::spool::Route;
use super::Bus;
use crate::auth::{Access, Caller};
use crate::error::Error;
use crate::message::Message;

pub(super) use budget::Budget;
pub use registry::Handle as PublisherHandle;
pub(super) use registry::Publishers;
pub(super) use shared::Shared;
pub(super) use verdict::Context;

/// Whether `caller` may publish `publish` now (permission, then rate).
fn admit(caller: &Caller, publish: &Publish) -> Result<(), Error> {
    caller.permit(Access::Publish(&publish.exchange))?;
    caller.admit_publish()
}

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
    /// The ordering key (ordered groups); empty for none.
    pub ordering_key: String,
    /// When to route the message (scheduled publish); now by default.
    pub schedule: Schedule,
    /// Whether it may go into the spool while the broker cannot be reached;
    /// `None` takes `spool.default`.
    pub allow_spool: Option<bool>,
}

/// When a publish asks to be routed: `delay_ms` from now, or at
/// `deliver_at_ms` (Unix epoch ms); both 0 for now. See
/// [`crate::bus::schedule`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    pub delay_ms: u64,
    pub deliver_at_ms: i64,
}

impl Schedule {
    /// Whether a delay or due time is set. After validation, only for a
    /// publish that goes into the delay (one due now is cleared).
    pub fn is_set(&self) -> bool {
        self.delay_ms != 0 || self.deliver_at_ms != 0
    }
}

/// A publish the broker confirmed, or the spool took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The id the message was published with.
    pub message_id: String,
    /// Written to the spool (the broker could not be reached), not yet
    /// confirmed by the broker: it is forwarded once the broker is back.
    pub spooled: bool,
}

/// A pending publish: resolves once the broker confirmed (or refused) it.
pub type Pending = oneshot::Receiver<Result<Confirmed, Error>>;

impl PublisherHandle {
    /// Queues a publish Warren makes itself (a due scheduled message, checked
    /// when first published), `properties` sent as they are, behind the
    /// handle's earlier ones. The returned future resolves with the broker's
    /// verdict; the drain waits for `pass` until then.
    pub(crate) async fn republish(
        &self,
        publish: Publish,
        properties: lapin::BasicProperties,
        pass: crate::bus::drain::Pass,
    ) -> Result<Pending, Error> {
        let (reply, pending) = oneshot::channel();
        let command = Box::new(session::Command {
            publish,
            properties: Some(properties),
            started: Instant::now(),
            reply,
            _pass: pass,
        });
        self.tx
            .send(command)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        Ok(pending)
    }
}

impl Bus {
    /// Publishes one message and waits for the broker's confirm: on the
    /// channel of the publisher named (its messages keep their order), else
    /// on one of the shared channels.
    pub async fn publish_unary(
        self: &Arc<Self>,
        caller: &Caller,
        publisher: Option<&str>,
        publish: Publish,
    ) -> Result<Confirmed, Error> {
        let Some(name) = publisher else {
            let started = Instant::now();
            self.counted(admit(caller, &publish))?;
            let publish = self.counted(self.check(publish))?;
            return match self.counted(self.route(&publish))? {
                Route::Broker(_pass) => {
                    let publish = self.counted(self.resolve(publish).await)?;
                    self.shared.publish(&publish, None, started).await
                }
                Route::Spool(spool, _pass) => {
                    let durable = self.counted(self.spool_in(&spool, &publish).await)?;
                    self.spooled(durable, publish.message.message_id).await
                }
            };
        };
        if name.is_empty() || name.len() > 128 {
            return self.counted(Err(Error::InvalidArgument(
                "a publisher name must be 1 to 128 bytes".into(),
            )));
        }
        // Refused before a publisher (a channel, a share) exists for it.
        self.counted(caller.permit(Access::Publish(&publish.exchange)))?;
        let publisher = self.counted(self.publishers.named(caller, name))?;
        let pending = self.submit(&publisher, publish).await?;
        pending.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Publishes on a shared channel (the caller holds a pass).
    pub(super) async fn publish_shared(&self, publish: Publish) -> Result<Confirmed, Error> {
        let started = Instant::now();
        let publish = self.counted(self.prepare(publish).await)?;
        self.shared.publish(&publish, None, started).await
    }

    /// A publisher of its own, for one publish stream of `caller`; it closes
    /// its channel once the handle is dropped and its messages are settled.
    pub fn session(&self, caller: &Caller) -> Result<PublisherHandle, Error> {
        let _pass = self.enter()?;
        self.publishers.dedicated(caller)
    }

    /// Checks `publish` against its publisher's permissions and rate,
    /// validates it and queues it on `publisher` (or in the spool, see
    /// [`Bus::route`]), in call order.
    /// The returned future resolves with the broker's verdict; the drain
    /// waits for it.
    pub async fn submit(
        self: &Arc<Self>,
        publisher: &PublisherHandle,
        publish: Publish,
    ) -> Result<Pending, Error> {
        let started = Instant::now();
        self.counted(admit(&publisher.caller, &publish))?;
        let publish = self.counted(self.check(publish))?;
        let pass = match self.counted(self.route(&publish))? {
            Route::Broker(pass) => pass,
            Route::Spool(spool, pass) => {
                // Queued in call order; answered once durable.
                let durable = self.counted(self.spool_in(&spool, &publish).await)?;
                let (reply, pending) = oneshot::channel();
                let bus = self.clone();
                tokio::spawn(async move {
                    let _pass = pass;
                    let spooled = bus.spooled(durable, publish.message.message_id).await;
                    let _ = reply.send(spooled);
                });
                return Ok(pending);
            }
        };
        self.send_checked(publisher, publish, started, pass).await
    }

    /// Queues `publish`, which [`Bus::check`] passed, on `publisher`; the
    /// caller holds `pass`, a pass for the broker.
    pub(crate) async fn send_checked(
        &self,
        publisher: &PublisherHandle,
        publish: Publish,
        started: Instant,
        pass: crate::bus::drain::Pass,
    ) -> Result<Pending, Error> {
        let publish = self.counted(self.resolve(publish).await)?;
        let (reply, pending) = oneshot::channel();
        let command = Box::new(session::Command {
            publish,
            properties: None,
            started,
            reply,
            _pass: pass,
        });
        if publisher.tx.send(command).await.is_err() {
            self.metrics.publish(crate::metrics::outcome::UNAVAILABLE);
            return Err(Error::ShuttingDown);
        }
        Ok(pending)
    }

    /// Counts a publish that failed before reaching a channel.
    fn counted<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.inspect_err(|e| self.metrics.publish(verdict::outcome_of(e)))
    }
}
