//! Opening subscriptions and routing acks and nacks to them by delivery id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consumer::{Context, Subscriber};
use super::delivery::{Delivery, DeliveryId, SubscribeRequest};
use super::open::{Opened, Opener};
use super::settle::{Action, Settle};
use crate::amqp::Pool;
use crate::bus::exchanges::Exchanges;
use crate::bus::retry::Retrier;
use crate::config;
use crate::error::Error;
use crate::message::check_short;
use crate::metrics::Metrics;

/// A live subscription: a stream of deliveries. Dropping it ends the
/// subscription and hands unacked deliveries back to the broker.
pub struct Subscription {
    /// Deliveries, then at most one error if the broker ended the subscription.
    pub deliveries: mpsc::Receiver<Result<Delivery, Error>>,
    /// The queue consumed (the generated name for a temporary queue).
    pub queue: String,
    /// Ends the subscription when the stream is dropped.
    _cancel: tokio_util::sync::DropGuard,
}

impl futures::Stream for Subscription {
    type Item = Result<Delivery, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.deliveries.poll_recv(cx)
    }
}

/// Every subscription of the bus.
pub struct Subscriptions {
    pool: Arc<Pool>,
    isolated: Arc<Pool>,
    metrics: Metrics,
    config: config::Subscribe,
    instance: u64,
    next_id: AtomicU64,
    live: Arc<RwLock<HashMap<u64, mpsc::Sender<Settle>>>>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    retrier: Arc<Retrier>,
    exchanges: Arc<Exchanges>,
}

impl Subscriptions {
    pub(crate) fn new(
        pool: Arc<Pool>,
        isolated: Arc<Pool>,
        metrics: Metrics,
        config: config::Subscribe,
        retrier: Arc<Retrier>,
        exchanges: Arc<Exchanges>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(config.max_subscriptions)),
            pool,
            isolated,
            metrics,
            config,
            // Random per process: ids from before a restart are unknown after it.
            instance: rand::random::<u64>() >> 16,
            next_id: AtomicU64::new(1),
            live: Arc::new(RwLock::new(HashMap::new())),
            tracker: TaskTracker::new(),
            shutdown,
            retrier,
            exchanges,
        }
    }

    fn validate(&self, r: &SubscribeRequest, frame_max: usize) -> Result<u16, Error> {
        check_short("queue", &r.queue)?;
        check_short("exchange", &r.exchange)?;
        if r.queue.is_empty() && r.exchange.is_empty() {
            return Err(Error::InvalidArgument(
                "name a queue, or an exchange to bind a temporary queue to".into(),
            ));
        }
        if r.exchange.is_empty() && (!r.binding_keys.is_empty() || !r.header_match.is_empty()) {
            return Err(Error::InvalidArgument(
                "binding_keys and header_match need an exchange".into(),
            ));
        }
        for key in &r.binding_keys {
            check_short("a binding key", key)?;
        }
        for (name, value) in &r.header_match {
            check_short("a header_match name", name)?;
            check_short("a header_match value", value)?;
        }
        // The match goes to the broker as a binding's arguments, in one
        // frame: over the frame size, the broker closes the connection.
        let size: usize = r
            .header_match
            .iter()
            .map(|(k, v)| 1 + k.len() + 1 + 4 + v.len())
            .sum::<usize>()
            + 4
            + 3 * 256;
        if size > frame_max {
            return Err(Error::TooLarge {
                what: "header_match",
                size,
                limit: frame_max,
            });
        }
        match r.prefetch {
            0 => Ok(self.config.default_prefetch),
            n if n > u32::from(self.config.max_prefetch) => Err(Error::InvalidArgument(format!(
                "prefetch {n} is above the limit of {} (subscribe.max_prefetch)",
                self.config.max_prefetch
            ))),
            n => Ok(n as u16),
        }
    }

    /// Opens a subscription.
    pub async fn open(&self, r: SubscribeRequest, frame_max: usize) -> Result<Subscription, Error> {
        let prefetch = self.validate(&r, frame_max)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Error::LimitReached(format!(
                "all {} subscriptions are in use (subscribe.max_subscriptions)",
                self.config.max_subscriptions
            ))
        })?;
        let opener = Opener {
            pool: self.pool.clone(),
            isolated: self.isolated.clone(),
            exchanges: self.exchanges.clone(),
            request: r.clone(),
            prefetch,
        };
        let Opened {
            channel,
            queue,
            consumer,
        } = opener.open().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (settle_tx, settle) = mpsc::channel(64);
        let (out, deliveries) = mpsc::channel(usize::from(prefetch).clamp(1, 1024));
        let cancel = self.shutdown.child_token();
        self.live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, settle_tx.clone());
        let subscriber = Subscriber {
            id,
            opener,
            queue: queue.clone(),
            channel,
            consumer,
            auto_ack: r.auto_ack,
            ctx: Context {
                pool: self.pool.clone(),
                metrics: self.metrics.clone(),
                instance: self.instance,
                retrier: self.retrier.clone(),
            },
            settle,
            settle_tx,
            out,
            cancel: cancel.clone(),
        };
        let live = self.live.clone();
        self.tracker.spawn(async move {
            subscriber.run().await;
            live.write().unwrap_or_else(|e| e.into_inner()).remove(&id);
            drop(slot);
        });
        Ok(Subscription {
            deliveries,
            queue,
            _cancel: cancel.drop_guard(),
        })
    }

    /// Settles deliveries by id; unknown, settled or orphaned ids are NOT_FOUND.
    pub async fn settle(&self, ids: &[String], action: Action) -> Result<u32, Error> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no delivery_ids given".into()));
        }
        let mut by_subscription: HashMap<u64, Vec<DeliveryId>> = HashMap::new();
        for id in ids {
            let parsed = DeliveryId::parse(id)?;
            if parsed.instance != self.instance {
                return Err(Error::NotFound(format!("delivery {id} is from an earlier Warren process; its message is back in the queue")));
            }
            by_subscription
                .entry(parsed.subscription)
                .or_default()
                .push(parsed);
        }
        let mut senders = Vec::with_capacity(by_subscription.len());
        {
            let live = self.live.read().unwrap_or_else(|e| e.into_inner());
            for (sub, ids) in by_subscription {
                let Some(sender) = live.get(&sub) else {
                    return Err(Error::NotFound(format!(
                        "delivery {} belongs to a subscription that has ended; its message is back in the queue",
                        ids[0]
                    )));
                };
                senders.push((sender.clone(), ids));
            }
        }
        let mut settled = 0;
        for (sender, ids) in senders {
            let (reply, answer) = oneshot::channel();
            let gone = || {
                Error::NotFound("the subscription of these deliveries has ended; their messages are back in the queue".into())
            };
            sender
                .send(Settle::Client { ids, action, reply })
                .await
                .map_err(|_| gone())?;
            settled += answer.await.map_err(|_| gone())??;
        }
        Ok(settled)
    }

    /// The reply_to and correlation_id of an unsettled delivery.
    pub async fn reply_target(&self, id: &str) -> Result<(String, String), Error> {
        let parsed = DeliveryId::parse(id)?;
        let sender = (parsed.instance == self.instance)
            .then(|| {
                self.live
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&parsed.subscription)
                    .cloned()
            })
            .flatten()
            .ok_or_else(|| {
                Error::NotFound(format!("delivery {id} belongs to no live subscription"))
            })?;
        let (reply, answer) = oneshot::channel();
        let gone = || Error::NotFound(format!("delivery {id} belongs to no live subscription"));
        sender
            .send(Settle::Peek { id: parsed, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Waits until every subscription has closed its channel.
    pub async fn closed(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}
