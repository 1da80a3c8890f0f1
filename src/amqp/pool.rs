//! A pool of AMQP connections for one role, each kept alive by a supervisor.
//!
//! Publishing and consuming use separate pools: the broker throttles
//! publishing connections under memory or disk alarms, and consumers on them
//! would stall too. Each connection has a supervisor task that connects
//! (trying the configured URLs in order, with exponential backoff and jitter),
//! publishes the live connection on a `watch` channel, and starts over when
//! the connection dies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Channel, Connector, Ledger};
use crate::config;
use crate::error::Error;
use crate::metrics::Metrics;

/// What a pool's connections are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishing (publishers, RPC requests, replies).
    Publish,
    /// Consuming (subscriptions).
    Consume,
    /// One connection of its own for existence checks whose refusal could
    /// cost the connection (see [`super::probe`]).
    Probe,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Consume => "consume",
            Role::Probe => "probe",
        }
    }
}

type Slot = watch::Receiver<Option<Arc<Connection>>>;

/// Connections of one role, spread round-robin.
pub struct Pool {
    slots: Vec<Slot>,
    next: AtomicUsize,
    operation_timeout: Duration,
    close: CancellationToken,
    ledger: Ledger,
    frame_max: usize,
    epoch: Arc<watch::Sender<u64>>,
}

impl Pool {
    /// Starts `amqp.pool_size` supervised connections. Returns at once; use
    /// [`Pool::wait_connected`] to wait for the broker.
    pub fn start(role: Role, amqp: &config::Amqp, metrics: Metrics) -> Arc<Self> {
        let close = CancellationToken::new();
        let epoch = Arc::new(watch::Sender::new(0));
        let size = match role {
            Role::Probe => 1,
            Role::Publish | Role::Consume => amqp.pool_size,
        };
        let shared = Arc::new(amqp.clone());
        let slots = (0..size)
            .map(|index| {
                let (tx, rx) = watch::channel(None);
                let supervisor = Supervisor {
                    name: format!("{}-{}-{index}", amqp.connection_name, role.as_str()),
                    urls: amqp.urls(),
                    amqp: shared.clone(),
                    connect_timeout: amqp.connect_timeout,
                    tx,
                    close: close.clone(),
                    metrics: metrics.clone(),
                    epoch: epoch.clone(),
                };
                tokio::spawn(supervisor.run());
                rx
            })
            .collect();
        Arc::new(Self {
            slots,
            next: AtomicUsize::new(0),
            operation_timeout: amqp.operation_timeout,
            close,
            ledger: metrics.channels.clone(),
            frame_max: amqp.frame_max as usize,
            epoch,
        })
    }

    /// Counts connections made: changes whenever one (re)connects, so that
    /// what lives on the broker can be declared again.
    pub fn connections_made(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Whether every connection of the pool is up.
    pub fn is_connected(&self) -> bool {
        self.slots.iter().all(|slot| {
            slot.borrow()
                .as_ref()
                .is_some_and(|c| c.status().connected())
        })
    }

    /// Waits until every connection is up, without limit (cancel by dropping).
    pub async fn wait_connected(&self) {
        for slot in &self.slots {
            let mut slot = slot.clone();
            let _ = slot
                .wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()))
                .await;
        }
    }

    /// A live connection, the next in turn, and its slot; waits for a
    /// reconnect at most `amqp.operation_timeout`.
    async fn connection(&self) -> Result<(usize, Arc<Connection>), Error> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.slots.len() {
            let index = (start + i) % self.slots.len();
            if let Some(c) = self.slots[index]
                .borrow()
                .as_ref()
                .filter(|c| c.status().connected())
            {
                return Ok((index, c.clone()));
            }
        }
        let index = start % self.slots.len();
        let mut slot = self.slots[index].clone();
        let wait = async {
            slot.wait_for(|c| c.as_ref().is_some_and(|c| c.status().connected()))
                .await
                .ok()
                .and_then(|c| c.clone())
        };
        match tokio::time::timeout(self.operation_timeout, wait).await {
            Ok(Some(c)) => Ok((index, c)),
            _ => Err(Error::unavailable("not connected to the broker")),
        }
    }

    /// Whether no connection of the pool is up: the broker is away (or
    /// Warren has not reached it yet). New work fails fast while it is.
    pub fn is_down(&self) -> bool {
        !self.slots.iter().any(|slot| {
            slot.borrow()
                .as_ref()
                .is_some_and(|c| c.status().connected())
        })
    }

    /// Opens a channel on the next live connection, or on the one after it
    /// when that one has as many channels as the broker allows (its
    /// `channel_max`): RESOURCE_EXHAUSTED only once every live connection is
    /// full. If a connection turns out to be dead (its supervisor notices
    /// while the channel is being opened), this fails at once, UNAVAILABLE
    /// and retryable, instead of waiting out `amqp.operation_timeout` on a
    /// socket nobody answers.
    pub async fn open_channel(&self) -> Result<Channel, Error> {
        let (first, connection) = self.connection().await?;
        let mut full = match self.open_on(first, connection).await {
            Err(Error::LimitReached(why)) => why,
            opened => return opened,
        };
        for i in 1..self.slots.len() {
            let index = (first + i) % self.slots.len();
            let Some(connection) = self.live(index) else {
                continue;
            };
            match self.open_on(index, connection).await {
                Err(Error::LimitReached(why)) => full = why,
                opened => return opened,
            }
        }
        Err(Error::LimitReached(format!(
            "{full}, and on every other connection (raise amqp.pool_size or the broker's channel_max)"
        )))
    }

    /// The connection of slot `index`, if it is up.
    fn live(&self, index: usize) -> Option<Arc<Connection>> {
        self.slots[index]
            .borrow()
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    async fn open_on(&self, index: usize, connection: Arc<Connection>) -> Result<Channel, Error> {
        let mut slot = self.slots[index].clone();
        let replaced = async {
            let _ = slot
                .wait_for(|c| !c.as_ref().is_some_and(|c| Arc::ptr_eq(c, &connection)))
                .await;
        };
        let open = super::op(
            "channel.open",
            self.operation_timeout,
            connection.create_channel(),
        );
        tokio::select! {
            raw = open => Ok(Channel::new(raw?, &self.ledger)),
            _ = replaced => Err(Error::unavailable(
                "the connection died while a channel was being opened on it",
            )),
        }
    }

    /// How many channels the broker lets Warren open on this pool's live
    /// connections in all (each one's negotiated `channel_max`), or None
    /// while none is up.
    pub fn channel_capacity(&self) -> Option<usize> {
        let mut live = (0..self.slots.len())
            .filter_map(|i| self.live(i))
            .peekable();
        live.peek()?;
        Some(
            live.map(|c| match c.configuration().channel_max() {
                0 => usize::from(u16::MAX), // no limit: the protocol's
                n => usize::from(n),
            })
            .sum(),
        )
    }

    /// Opens a channel in confirm mode.
    pub async fn open_confirm_channel(&self) -> Result<Channel, Error> {
        let channel = self.open_channel().await?;
        let select = channel.confirm_select(ConfirmSelectOptions::default());
        super::op("confirm.select", self.operation_timeout, select).await?;
        Ok(channel)
    }

    /// Runs one broker operation within `amqp.operation_timeout` (see
    /// [`super::op`]).
    pub async fn op<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T, Error> {
        super::op(what, self.operation_timeout, f).await
    }

    /// How long one broker operation may take (`amqp.operation_timeout`).
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// The frame size negotiated with the broker (the proposed one until
    /// connected): properties and headers must fit in one frame.
    pub fn frame_max(&self) -> usize {
        self.slots
            .iter()
            .find_map(|slot| {
                slot.borrow()
                    .as_ref()
                    .map(|c| c.configuration().frame_max() as usize)
            })
            .filter(|&n| n > 0)
            .unwrap_or(self.frame_max)
    }

    /// The user name the broker authenticated, once connected.
    pub fn username(&self) -> Option<String> {
        self.slots
            .iter()
            .find_map(|slot| slot.borrow().as_ref().map(|c| c.status().username()))
    }

    /// Closes every connection and stops reconnecting.
    pub async fn close(&self) {
        self.close.cancel();
        for slot in &self.slots {
            let mut slot = slot.clone();
            let _ =
                tokio::time::timeout(self.operation_timeout, slot.wait_for(Option::is_none)).await;
        }
    }
}

/// Keeps one connection alive.
struct Supervisor {
    name: String,
    urls: Vec<String>,
    /// Read again for every round of attempts (see [`Connector`]).
    amqp: Arc<config::Amqp>,
    connect_timeout: Duration,
    tx: watch::Sender<Option<Arc<Connection>>>,
    close: CancellationToken,
    metrics: Metrics,
    epoch: Arc<watch::Sender<u64>>,
}

/// Backoff between rounds of connection attempts: 100 ms doubling to 5 s,
/// with jitter.
pub fn reconnect_backoff() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = reconnect_backoff();
        loop {
            let connected = tokio::select! {
                _ = self.close.cancelled() => return,
                c = self.connect_any() => c,
            };
            let Some(connection) = connected else {
                let delay = backoff.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    _ = self.close.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            };
            backoff = reconnect_backoff();
            let connection = Arc::new(connection);
            self.metrics.amqp_connections.inc();
            self.tx.send_replace(Some(connection.clone()));
            self.epoch.send_modify(|n| *n += 1);
            let closing = self.watch(&connection).await;
            self.tx.send_replace(None);
            self.metrics.amqp_connections.dec();
            if closing {
                let _ = tokio::time::timeout(
                    self.connect_timeout,
                    connection.close(200, "warren shutting down".into()),
                )
                .await;
                return;
            }
        }
    }

    /// Tries every URL once, in order.
    async fn connect_any(&self) -> Option<Connection> {
        // The secrets' files are read afresh (off the runtime's threads): a
        // rotated password or certificate is used from the next reconnect on.
        let amqp = self.amqp.clone();
        let read =
            tokio::task::spawn_blocking(move || Connector::new(&amqp).map_err(|e| e.to_string()));
        let connector = match read.await.unwrap_or_else(|e| Err(e.to_string())) {
            Ok(connector) => connector,
            Err(error) => {
                warn!(connection = %self.name, %error, "could not connect to the broker");
                return None;
            }
        };
        for url in &self.urls {
            let masked = crate::amqp::mask(url);
            let Some(uri) = connector.uri(url) else {
                continue; // config validation refuses these
            };
            let properties =
                ConnectionProperties::default().with_connection_name(self.name.clone().into());
            let connect = connector.connect(uri, properties);
            match tokio::time::timeout(self.connect_timeout, connect).await {
                Ok(Ok(connection)) => {
                    info!(connection = %self.name, broker = %masked, "connected to the broker");
                    return Some(connection);
                }
                Ok(Err(error)) => {
                    warn!(connection = %self.name, broker = %masked, %error, "could not connect to the broker")
                }
                Err(_) => {
                    warn!(connection = %self.name, broker = %masked, "timed out connecting to the broker")
                }
            }
        }
        None
    }

    /// Waits until the connection dies (false) or Warren closes it (true).
    async fn watch(&self, connection: &Connection) -> bool {
        let mut events = connection.events_listener();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = self.close.cancelled() => return true,
                event = events.next() => match event {
                    // A channel-level (soft) error closes one channel, not the connection.
                    Some(Event::Error(error)) if !error.is_amqp_soft_error() => {
                        warn!(connection = %self.name, %error, "lost the broker connection");
                        return false;
                    }
                    Some(Event::ConnectionBlocked(reason)) => {
                        warn!(connection = %self.name, %reason, "the broker blocked publishing");
                    }
                    Some(Event::ConnectionUnblocked) => {
                        info!(connection = %self.name, "the broker unblocked publishing");
                    }
                    Some(_) => {}
                    None => return false,
                },
                _ = tick.tick() => {
                    if !connection.status().connected() {
                        warn!(connection = %self.name, "the broker connection is closed");
                        return false;
                    }
                }
            }
        }
    }
}
