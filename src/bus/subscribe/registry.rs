//! Opening subscriptions and routing acks and nacks to them by delivery id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::consumer::{Context, Subscriber};
use super::delivery::{Delivery, DeliveryId, Outgoing, SubscribeRequest};
use super::open::{Opened, Opener};
use super::settle::{Action, Settle};
use crate::amqp::Pool;
use crate::auth::{Caller, Held};
use crate::bus::control::Control;
use crate::bus::exchanges::Exchanges;
use crate::bus::ordered::Groups;
use crate::bus::retry::Retrier;
use crate::config;
use crate::error::Error;
use crate::metrics::Metrics;

/// A live subscription: a stream of deliveries. Dropping it ends the
/// subscription and hands unacked deliveries back to the broker.
pub struct Subscription {
    /// Deliveries, then at most one error if the broker ended the subscription.
    pub deliveries: mpsc::Receiver<Outgoing>,
    /// The queue consumed (the generated name for a temporary queue).
    pub queue: String,
    /// Ends the subscription when the stream is dropped.
    _cancel: tokio_util::sync::DropGuard,
    /// Cancelled once the subscription ends (for work that lives beside it).
    ended: CancellationToken,
}

impl Subscription {
    /// Cancelled once the subscription has ended.
    pub fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }
}

impl futures::Stream for Subscription {
    type Item = Result<Delivery, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.deliveries
            .poll_recv(cx)
            .map(|next| next.map(|delivery| delivery.map(|boxed| *boxed)))
    }
}

/// A live subscription as acks find it: whose it is and its settle queue.
struct Live {
    owner: Option<Arc<str>>,
    settle: mpsc::Sender<Settle>,
}

/// What subscriptions use of the rest of the bus.
pub(crate) struct Parts {
    pub pool: Arc<Pool>,
    /// For existence checks whose refusal could cost a connection.
    pub isolated: Arc<Pool>,
    pub metrics: Metrics,
    pub retrier: Arc<Retrier>,
    pub exchanges: Arc<Exchanges>,
    pub control: Arc<Control>,
    /// Ordered groups, and where their subscribers move messages.
    pub groups: Arc<Groups>,
    pub publish_pool: Arc<Pool>,
}

/// A new subscription's plumbing.
struct Wiring {
    key: u128,
    id: u64,
    settle_tx: mpsc::Sender<Settle>,
    settle: mpsc::Receiver<Settle>,
    out: mpsc::Sender<Outgoing>,
    deliveries: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
}

/// Every subscription of the bus.
pub struct Subscriptions {
    pool: Arc<Pool>,
    isolated: Arc<Pool>,
    metrics: Metrics,
    config: config::Subscribe,
    live: Arc<RwLock<HashMap<u128, Live>>>,
    /// Names subscriptions in logs.
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    retrier: Arc<Retrier>,
    exchanges: Arc<Exchanges>,
    control: Arc<Control>,
    groups: Arc<Groups>,
    publish_pool: Arc<Pool>,
}

impl Subscriptions {
    pub(crate) fn new(
        parts: Parts,
        config: config::Subscribe,
        shutdown: CancellationToken,
    ) -> Self {
        let Parts {
            pool,
            isolated,
            metrics,
            retrier,
            exchanges,
            control,
            groups,
            publish_pool,
        } = parts;
        Self {
            slots: Arc::new(Semaphore::new(config.max_subscriptions)),
            pool,
            isolated,
            metrics,
            config,
            next_id: AtomicU64::new(1),
            live: Arc::new(RwLock::new(HashMap::new())),
            tracker: TaskTracker::new(),
            shutdown,
            retrier,
            exchanges,
            control,
            groups,
            publish_pool,
        }
    }

    /// Opens a subscription of `caller`'s, holding its share `held`.
    pub async fn open(
        &self,
        caller: &Caller,
        held: Held,
        r: SubscribeRequest,
        frame_max: usize,
    ) -> Result<Subscription, Error> {
        let prefetch = r.validate(&self.config, frame_max)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Error::LimitReached(format!(
                "all {} subscriptions are in use (subscribe.max_subscriptions)",
                self.config.max_subscriptions
            ))
        })?;
        if let Some(group) = self.groups.get(&r.queue).filter(|_| r.exchange.is_empty()) {
            if r.auto_ack {
                return Err(Error::InvalidArgument(format!(
                    "{:?} is an ordered group: its deliveries must be acked (auto_ack is not allowed)",
                    r.queue
                )));
            }
            let group = group.clone();
            return self
                .open_ordered(caller, (slot, held), r, prefetch, group)
                .await;
        }
        let opener = Opener {
            pool: self.pool.clone(),
            isolated: self.isolated.clone(),
            exchanges: self.exchanges.clone(),
            request: r.clone(),
            prefetch,
        };
        // A temporary queue is this subscription's alone: nobody pauses it.
        let mut paused = match r.queue.is_empty() {
            true => None,
            false => Some(self.control.watch(&r.queue).await?),
        };
        let now = paused.as_mut().is_some_and(|p| *p.borrow_and_update());
        let Opened {
            channel,
            queue,
            consumer,
        } = opener.open(now).await?;
        let Wiring {
            key,
            id,
            settle_tx,
            settle,
            out,
            deliveries,
            cancel,
        } = self.wire(caller, prefetch);
        let subscriber = Subscriber {
            id,
            key,
            opener,
            queue: queue.clone(),
            channel,
            consumer,
            paused,
            auto_ack: r.auto_ack,
            ctx: Context {
                pool: self.pool.clone(),
                metrics: self.metrics.clone(),
                retrier: self.retrier.clone(),
            },
            settle,
            settle_tx,
            out,
            cancel: cancel.clone(),
        };
        self.spawn(key, subscriber.run(), (slot, held));
        Ok(Subscription {
            deliveries,
            queue,
            ended: cancel.clone(),
            _cancel: cancel.drop_guard(),
        })
    }

    /// A subscription of an ordered group.
    async fn open_ordered(
        &self,
        caller: &Caller,
        shares: (OwnedSemaphorePermit, Held),
        r: SubscribeRequest,
        prefetch: u16,
        group: Arc<crate::bus::ordered::Group>,
    ) -> Result<Subscription, Error> {
        let paused = self.control.watch(&r.queue).await?;
        let Wiring {
            key,
            id,
            settle_tx,
            settle,
            out,
            deliveries,
            cancel,
        } = self.wire(caller, prefetch);
        let subscriber = crate::bus::ordered::Subscriber {
            id,
            key,
            group,
            pool: self.pool.clone(),
            publish_pool: self.publish_pool.clone(),
            retrier: self.retrier.clone(),
            metrics: self.metrics.clone(),
            prefetch: usize::from(prefetch),
            settle,
            out,
            cancel: cancel.clone(),
            paused,
            notices: self.control.ordered(),
            ack_deadline_ms: r.ack_deadline_ms,
        };
        let task = match subscriber.start().await {
            Ok(task) => task,
            Err(e) => {
                self.live
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                return Err(e);
            }
        };
        drop(settle_tx);
        self.spawn(key, task.run(), shares);
        Ok(Subscription {
            deliveries,
            queue: r.queue,
            ended: cancel.clone(),
            _cancel: cancel.drop_guard(),
        })
    }

    /// A new subscription's id, channels and cancellation, registered for
    /// acks by delivery id.
    fn wire(&self, caller: &Caller, prefetch: u16) -> Wiring {
        // 128 random bits (a CSPRNG's): delivery ids cannot be guessed,
        // and ids from before a restart are unknown after it.
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let key = loop {
            let key = rand::random::<u128>();
            if !live.contains_key(&key) {
                break key;
            }
        };
        let (settle_tx, settle) = mpsc::channel(64);
        let (out, deliveries) = mpsc::channel(usize::from(prefetch).clamp(1, 1024));
        live.insert(
            key,
            Live {
                owner: caller.owner().cloned(),
                settle: settle_tx.clone(),
            },
        );
        Wiring {
            key,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            settle_tx,
            settle,
            out,
            deliveries,
            cancel: self.shutdown.child_token(),
        }
    }

    /// Runs a subscription's task; it is unregistered when it ends.
    fn spawn(
        &self,
        key: u128,
        task: impl std::future::Future<Output = ()> + Send + 'static,
        shares: (OwnedSemaphorePermit, Held),
    ) {
        let live = self.live.clone();
        self.tracker.spawn(async move {
            task.await;
            live.write().unwrap_or_else(|e| e.into_inner()).remove(&key);
            drop(shares);
        });
    }

    /// The settle queue of the subscription `id` belongs to, when it is
    /// live and `caller`'s; NOT_FOUND otherwise, the same answer either way
    /// (another client's ids are not told apart from unknown ones).
    fn route(&self, caller: &Caller, id: &DeliveryId) -> Result<mpsc::Sender<Settle>, Error> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.get(&id.subscription)
            .filter(|l| l.owner.as_ref() == caller.owner())
            .map(|l| l.settle.clone())
            .ok_or_else(|| gone(id))
    }

    /// Settles `caller`'s deliveries by id; unknown, settled, orphaned or
    /// other clients' ids are NOT_FOUND.
    pub async fn settle(
        &self,
        caller: &Caller,
        ids: &[String],
        action: Action,
    ) -> Result<u32, Error> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("no delivery_ids given".into()));
        }
        let mut by_subscription: HashMap<u128, Vec<DeliveryId>> = HashMap::new();
        for id in ids {
            let parsed = DeliveryId::parse(id)?;
            by_subscription
                .entry(parsed.subscription)
                .or_default()
                .push(parsed);
        }
        let mut senders = Vec::with_capacity(by_subscription.len());
        for ids in by_subscription.into_values() {
            senders.push((self.route(caller, &ids[0])?, ids));
        }
        let mut settled = 0;
        for (sender, ids) in senders {
            let (reply, answer) = oneshot::channel();
            let first = ids[0];
            sender
                .send(Settle::Client { ids, action, reply })
                .await
                .map_err(|_| gone(&first))?;
            settled += answer.await.map_err(|_| gone(&first))??;
        }
        Ok(settled)
    }

    /// The reply_to and correlation_id of `caller`'s unsettled delivery.
    pub async fn reply_target(&self, caller: &Caller, id: &str) -> Result<(String, String), Error> {
        let parsed = DeliveryId::parse(id)?;
        let sender = self.route(caller, &parsed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Settle::Peek { id: parsed, reply })
            .await
            .map_err(|_| gone(&parsed))?;
        answer.await.map_err(|_| gone(&parsed))?
    }

    /// Waits until every subscription has closed its channel.
    pub async fn closed(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn gone(id: &DeliveryId) -> Error {
    Error::NotFound(format!(
        "delivery {id} belongs to no live subscription of this client (it ended, or Warren restarted): its message is back in the queue"
    ))
}
