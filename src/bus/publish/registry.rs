//! Publisher tasks: named ones and those of publish streams, with a cap on
//! how many exist (the shared channels count against it) and idle named
//! ones closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::session::{self, Command};
use super::verdict::Context;
use crate::auth::{Caller, Share};
use crate::error::Error;

/// Channels of the publishing connections kept for Warren's own work
/// (RPC, retries, dead letters, ordered groups, scheduled messages) beside
/// the shared publishers: publishers are refused before they take these.
pub const OWN_CHANNELS: usize = 64;

/// A handle on one publisher task, and whose it is; the task ends when all
/// handles are gone.
#[derive(Clone)]
pub struct Handle {
    pub(in crate::bus) tx: mpsc::Sender<Box<Command>>,
    pub(in crate::bus) caller: Caller,
}

/// A named publisher's owner (none while auth is off) and name.
type NamedKey = (Option<Arc<str>>, String);

struct Named {
    handle: Handle,
    last_used: Instant,
}

/// Every publisher of the bus.
pub struct Publishers {
    ctx: Context,
    permits: Arc<Semaphore>,
    max_channels: usize,
    /// Channels kept out of the publishers' reach: the shared ones and
    /// [`OWN_CHANNELS`].
    reserved: usize,
    /// Whether the operator was told that `max_channels` is out of reach.
    warned: AtomicBool,
    /// By owner (none while auth is off) and name: clients do not share names.
    named: Mutex<HashMap<NamedKey, Named>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Publishers {
    /// Room for `max_channels` channels in all, `reserved` of them taken by
    /// the shared channels.
    pub(crate) fn new(
        ctx: Context,
        max_channels: usize,
        reserved: usize,
        idle_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let permits = Arc::new(Semaphore::new(max_channels.saturating_sub(reserved)));
        let tracker = TaskTracker::new();
        let this = Arc::new(Self {
            ctx,
            permits,
            max_channels,
            reserved,
            warned: AtomicBool::new(false),
            named: Mutex::new(HashMap::new()),
            tracker,
            shutdown,
        });
        tokio::spawn(reap(
            Arc::downgrade(&this),
            idle_timeout,
            this.shutdown.clone(),
        ));
        this
    }

    /// A new publisher of its own (for a publish stream), within the cap
    /// and the caller's share.
    pub fn dedicated(&self, caller: &Caller) -> Result<Handle, Error> {
        let held = caller.hold(Share::Publisher)?;
        self.within_capacity()?;
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Error::LimitReached(format!(
                "all {} publisher channels are in use (amqp.max_channels)",
                self.max_channels
            ))
        })?;
        Ok(Handle {
            tx: session::spawn(
                self.ctx.clone(),
                Some((permit, held)),
                self.shutdown.clone(),
                &self.tracker,
            ),
            caller: caller.clone(),
        })
    }

    /// Refuses a new publisher at once when the broker would not give it a
    /// channel: `amqp.max_channels` may be set above what the publishing
    /// connections hold (`amqp.pool_size` x the broker's `channel_max`),
    /// and a publisher past that would wait out its retry budget and then
    /// leave the shared channels no room to reopen.
    fn within_capacity(&self) -> Result<(), Error> {
        let Some(capacity) = self.ctx.pool.channel_capacity() else {
            return Ok(()); // not connected: opening its channel fails fast
        };
        let in_use = self
            .max_channels
            .saturating_sub(self.reserved)
            .saturating_sub(self.permits.available_permits());
        let room = capacity.saturating_sub(self.reserved + OWN_CHANNELS);
        if self.max_channels > room && !self.warned.swap(true, Ordering::Relaxed) {
            warn!(
                max_channels = self.max_channels,
                room,
                capacity,
                "amqp.max_channels is more than the broker allows on the publishing connections: \
                 publishers past {room} are refused"
            );
        }
        if in_use < room {
            return Ok(());
        }
        Err(Error::LimitReached(format!(
            "all {room} publisher channels the broker allows are in use ({capacity} channels on \
             the publishing connections, {} kept for Warren; raise amqp.pool_size or the \
             broker's channel_max)",
            self.reserved + OWN_CHANNELS
        )))
    }

    /// A publisher of Warren's own (the forwarder of scheduled messages):
    /// one fixed channel outside `amqp.max_channels`, which counts the
    /// channels clients can make Warren open.
    pub(crate) fn internal(&self, caller: &Caller) -> Handle {
        Handle {
            tx: session::spawn(self.ctx.clone(), None, self.shutdown.clone(), &self.tracker),
            caller: caller.clone(),
        }
    }

    /// The caller's publisher named `name`, created on first use.
    pub fn named(&self, caller: &Caller, name: &str) -> Result<Handle, Error> {
        let mut named = self.named.lock().unwrap_or_else(|e| e.into_inner());
        let key = (caller.owner().cloned(), name.to_owned());
        if let Some(entry) = named.get_mut(&key) {
            if !entry.handle.tx.is_closed() {
                entry.last_used = Instant::now();
                return Ok(entry.handle.clone());
            }
        }
        let handle = self.dedicated(caller)?;
        named.insert(
            key,
            Named {
                handle: handle.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(handle)
    }

    /// Waits until every publisher has settled its messages and closed its
    /// channel (after the shutdown token was cancelled).
    pub async fn drained(&self) {
        self.named.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Closes named publishers that have not been used for `idle` (dropping the
/// handle lets the task finish its messages and close its channel).
async fn reap(
    publishers: std::sync::Weak<Publishers>,
    idle: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(idle / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(publishers) = publishers.upgrade() else {
            return;
        };
        let mut named = publishers.named.lock().unwrap_or_else(|e| e.into_inner());
        named.retain(|_, entry| entry.last_used.elapsed() < idle && !entry.handle.tx.is_closed());
    }
}
