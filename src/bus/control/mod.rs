//! The control channel: operators' commands every Warren on the vhost obeys,
//! carried by the bus itself.
//!
//! State lives on the broker, so that it outlasts every Warren: a paused
//! queue `q` has a durable marker queue `warren.paused.<q>` (empty; its
//! existence is the state). Changes are announced on the fanout exchange
//! `warren.control`, to which every Warren binds a queue of its own; a Warren
//! that (re)connects reads the markers of every queue it serves again, so a
//! missed announcement costs nothing but its latency.
//!
//! - this file: the announcements and the listener.
//! - `pause`: pausing and resuming queues (`Bus::pause`, `resume`, `queue`).
//! - `queues`: the queues Warren knows, for operators (`Bus::queues`).

mod pause;
mod queues;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::amqp::probe;
use crate::amqp::Pool;
use crate::error::Error;

pub use pause::QueueInfo;
pub use queues::{Kind as ListedKind, Listed};

/// The exchange every Warren listens on.
pub const EXCHANGE: &str = "warren.control";

/// One announcement on the control exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Read `queue`'s paused state again (it was paused or resumed).
    Paused { queue: String },
    /// An ordered group's partition changed (a blocked key was released).
    Ordered { group: String, partition: u32 },
}

/// A watched flag and how many announcements touched it (a check started
/// before an announcement must not overwrite what it said).
struct Watched {
    paused: watch::Sender<bool>,
    version: u64,
    /// Whether the flag was read from the broker since the entry was made:
    /// from then on announcements (and the listener's refresh after a
    /// reconnect) keep it current, and a new watcher takes it as it is.
    known: bool,
}

/// What this Warren knows of the control state, and whom it tells.
pub struct Control {
    pool: Arc<Pool>,
    isolated: Arc<Pool>,
    paused: Mutex<HashMap<String, Watched>>,
    ordered: watch::Sender<Option<(String, u32)>>,
}

/// Declares the control exchange (durable fanout).
pub(crate) async fn declare_exchange(
    pool: &Pool,
    channel: &crate::amqp::Channel,
) -> Result<(), Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let declare = channel.exchange_declare(
        EXCHANGE.into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    );
    pool.op("exchange.declare", declare).await
}

/// The marker queue whose existence means `queue` is paused.
pub fn marker(queue: &str) -> String {
    let name = format!("warren.paused.{queue}");
    if name.len() <= 255 {
        return name;
    }
    let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, queue.as_bytes()).simple();
    format!("warren.paused.{digest}")
}

impl Control {
    pub fn new(pool: Arc<Pool>, isolated: Arc<Pool>) -> Arc<Self> {
        Arc::new(Self {
            pool,
            isolated,
            paused: Mutex::new(HashMap::new()),
            ordered: watch::Sender::new(None),
        })
    }

    /// Whether `queue` is paused, as the broker says now.
    pub async fn is_paused(&self, queue: &str) -> Result<bool, Error> {
        probe::exists(
            &self.pool,
            &self.isolated,
            probe::Kind::Queue,
            &marker(queue),
        )
        .await
    }

    /// `queue`'s paused flag, kept current while the receiver lives. Its
    /// first value is read from the broker, unless another subscription
    /// already watches the queue: a thousand streams on one queue cost one
    /// read (a missing marker's passive declare costs a channel), not a
    /// thousand.
    pub async fn watch(&self, queue: &str) -> Result<watch::Receiver<bool>, Error> {
        let (receiver, version) = {
            let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
            paused.retain(|_, w| w.paused.receiver_count() > 0);
            let watched = paused.entry(queue.to_owned()).or_insert_with(|| Watched {
                paused: watch::Sender::new(false),
                version: 0,
                known: false,
            });
            if watched.known {
                return Ok(watched.paused.subscribe());
            }
            (watched.paused.subscribe(), watched.version)
        };
        let now = self.is_paused(queue).await?;
        self.set(queue, now, Some(version));
        Ok(receiver)
    }

    /// Announcements of changed ordered partitions.
    pub fn ordered(&self) -> watch::Receiver<Option<(String, u32)>> {
        self.ordered.subscribe()
    }

    /// Sets `queue`'s flag, unless `since` is given and an announcement
    /// came after it.
    fn set(&self, queue: &str, value: bool, since: Option<u64>) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(watched) = paused.get_mut(queue) {
            if since.is_some_and(|v| v != watched.version) {
                return;
            }
            if since.is_none() {
                watched.version += 1;
            }
            watched.known = true;
            watched
                .paused
                .send_if_modified(|p| std::mem::replace(p, value) != value);
        }
    }

    /// Reads the state of every watched queue again (after a reconnect).
    async fn refresh(&self) {
        let queues: Vec<(String, u64)> = self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(q, w)| (q.clone(), w.version))
            .collect();
        for (queue, version) in queues {
            match self.is_paused(&queue).await {
                Ok(now) => self.set(&queue, now, Some(version)),
                Err(e) => debug!(%queue, error = %e, "could not read a queue's paused state"),
            }
        }
    }

    async fn obey(&self, command: Command) {
        match command {
            Command::Paused { queue } => {
                let watched = self
                    .paused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&queue);
                if !watched {
                    return;
                }
                match self.is_paused(&queue).await {
                    Ok(now) => {
                        info!(%queue, paused = now, "queue paused state changed");
                        self.set(&queue, now, None);
                    }
                    Err(e) => warn!(%queue, error = %e, "could not read a queue's paused state"),
                }
            }
            Command::Ordered { group, partition } => {
                self.ordered.send_replace(Some((group, partition)));
            }
        }
    }

    /// Listens on the control exchange until `shutdown`, reconnecting.
    pub async fn listen(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = crate::amqp::reconnect_backoff();
        loop {
            let run = async {
                let result = self.listen_once().await;
                if let Err(e) = &result {
                    debug!(error = %e, "control channel lost");
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = run => {}
            }
            let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(5));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn listen_once(&self) -> Result<(), Error> {
        self.pool.wait_connected().await;
        let channel = self.pool.open_channel().await?;
        declare_exchange(&self.pool, &channel).await?;
        let own = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel.queue_declare("".into(), own, FieldTable::default());
        let queue = self.pool.op("queue.declare", queue).await?;
        let bind = channel.queue_bind(
            queue.name().as_str().into(),
            EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        );
        self.pool.op("queue.bind", bind).await?;
        let consume = channel.basic_consume(
            queue.name().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let mut consumer = self.pool.op("basic.consume", consume).await?;
        // Whatever was announced while this Warren was not listening.
        self.refresh().await;
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.map_err(crate::amqp::classify)?;
            match serde_json::from_slice::<Command>(&delivery.data) {
                Ok(command) => self.obey(command).await,
                Err(e) => warn!(error = %e, "ignoring a malformed control message"),
            }
            delivery
                .ack(BasicAckOptions::default())
                .await
                .map_err(crate::amqp::classify)?;
        }
        Err(Error::unavailable("the control consumer ended"))
    }
}
