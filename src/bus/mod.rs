//! The bus core: every operation the transports offer, over AMQP.
//!
//! [`Bus`] owns the connection pools, the publishers and the topology. The
//! gRPC and HTTP layers turn requests into calls on it and its [`Error`]s into
//! status codes; nothing else in them knows about AMQP.

mod breaker;
mod consume;
mod dead_letters;
mod delivery;
mod exchanges;
mod publisher;
mod publishers;
mod retry;
mod rpc;
mod shared;
mod subscriber;
mod subscriptions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::amqp::{self, topology, Pool, Role};
use crate::config::Config;
use crate::error::Error;
use crate::message::{check_short, Message};
use crate::metrics::{outcome, Metrics};

use breaker::Breaker;
pub use dead_letters::{DeadLetter, Outcome as DeadLetterOutcome, Patch, Selection};
pub use delivery::{Delivery, SubscribeRequest};
use exchanges::Exchanges;
pub use publishers::Handle as PublisherHandle;
use publishers::Publishers;
use rpc::Rpc;
use subscriber::Action;
pub use subscriptions::Subscription;
use subscriptions::Subscriptions;

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
}

/// A publish the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The id the message was published with.
    pub message_id: String,
}

/// A pending publish: resolves once the broker confirmed (or refused) it.
pub type Pending = oneshot::Receiver<Result<Confirmed, Error>>;

/// The `warren_publish_total` outcome for a failed publish.
fn outcome_of(error: &Error) -> usize {
    match error {
        Error::Unroutable { .. } => outcome::UNROUTABLE,
        Error::NotFound(_) => outcome::NOT_FOUND,
        Error::Nacked => outcome::NACKED,
        Error::InvalidArgument(_)
        | Error::TooLarge { .. }
        | Error::FailedPrecondition(_)
        | Error::PermissionDenied(_) => outcome::INVALID,
        _ => outcome::UNAVAILABLE,
    }
}

/// The bus core. One per process; share it behind an `Arc`.
pub struct Bus {
    config: Arc<Config>,
    metrics: Metrics,
    publish_pool: Arc<Pool>,
    consume_pool: Arc<Pool>,
    exchanges: Arc<Exchanges>,
    publishers: Arc<Publishers>,
    shared: Arc<shared::Shared>,
    subscriptions: Subscriptions,
    rpc: Rpc,
    dead_letters: dead_letters::DeadLetters,
    breaker: Arc<Breaker>,
    shutdown: CancellationToken,
    closing: AtomicBool,
    topology_declared: AtomicBool,
}

impl Bus {
    /// Starts the connection pools (connecting in the background) and the
    /// shared publishers.
    pub fn start(config: Arc<Config>, metrics: Metrics) -> Arc<Self> {
        let publish_pool = Pool::start(Role::Publish, &config.amqp, metrics.clone());
        let consume_pool = Pool::start(Role::Consume, &config.amqp, metrics.clone());
        let exchanges = Arc::new(Exchanges::new(
            publish_pool.clone(),
            config.publish.exchange_cache_ttl,
            config.amqp.operation_timeout,
        ));
        let shutdown = CancellationToken::new();
        let breaker = Arc::new(Breaker::new(
            &config.breaker,
            metrics.circuit_breaker_state.clone(),
        ));
        let ctx = publisher::Context {
            breaker: breaker.clone(),
            pool: publish_pool.clone(),
            exchanges: exchanges.clone(),
            metrics: metrics.clone(),
            max_in_flight: config.publish.max_in_flight,
            confirm_timeout: config.publish.confirm_timeout,
            retry_budget: config.publish.retry_budget,
        };
        let shared = Arc::new(shared::Shared::new(
            ctx.clone(),
            config.amqp.shared_publishers,
        ));
        let publishers = Publishers::new(
            ctx,
            config.amqp.max_channels,
            config.amqp.shared_publishers,
            config.amqp.idle_timeout,
            shutdown.clone(),
        );
        let retrier = Arc::new(retry::Retrier::new(
            config.retry.clone(),
            publish_pool.clone(),
            shared.clone(),
            config.amqp.operation_timeout,
        ));
        let dead_letters = dead_letters::DeadLetters {
            pool: publish_pool.clone(),
            retrier: retrier.clone(),
            timeout: config.amqp.operation_timeout,
            max_scan: config.dead_letters.max_scan,
        };
        let subscriptions = Subscriptions::new(
            consume_pool.clone(),
            metrics.clone(),
            config.subscribe.clone(),
            config.amqp.operation_timeout,
            retrier,
            shutdown.clone(),
        );
        let rpc = Rpc::new(
            publish_pool.clone(),
            metrics.clone(),
            config.rpc.clone(),
            config.amqp.operation_timeout,
        );
        Arc::new(Self {
            rpc,
            dead_letters,
            breaker,
            config,
            metrics,
            publish_pool,
            consume_pool,
            exchanges,
            publishers,
            shared,
            subscriptions,
            shutdown,
            closing: AtomicBool::new(false),
            topology_declared: AtomicBool::new(false),
        })
    }

    /// The configuration the bus runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metrics the bus records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Waits for the broker, then declares the configured topology. A refusal
    /// is returned (and should stop start-up).
    pub async fn declare_topology(self: &Arc<Self>) -> Result<(), topology::Refused> {
        let mut reconnects = self.publish_pool.connections_made();
        self.publish_pool.wait_connected().await;
        reconnects.mark_unchanged();
        self.declare_once().await?;
        self.topology_declared.store(true, Ordering::Release);
        // After the broker comes back (a restart may have lost non-durable
        // parts), declare it all again.
        let bus = Arc::downgrade(self);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = reconnects.changed() => if changed.is_err() { return },
                }
                let Some(bus) = bus.upgrade() else { return };
                match bus.declare_once().await {
                    Ok(()) => info!("topology declared again after a reconnect"),
                    Err(e) => {
                        warn!(error = %e, "could not declare the topology again after a reconnect")
                    }
                }
            }
        });
        Ok(())
    }

    async fn declare_once(&self) -> Result<(), topology::Refused> {
        let refused = |reason: String| topology::Refused {
            what: "the topology".into(),
            reason,
        };
        let channel = self
            .publish_pool
            .open_channel()
            .await
            .map_err(|e| refused(e.to_string()))?;
        let topology = &self.config.topology;
        let items = topology.exchanges.len() + topology.queues.len() * 2 + topology.bindings.len();
        let limit = self.config.amqp.operation_timeout * (items as u32 + 1);
        let result = match tokio::time::timeout(limit, topology::declare(&channel, topology)).await
        {
            Ok(result) => result,
            Err(_) => Err(refused(format!(
                "the broker did not answer within {limit:?}"
            ))),
        };
        self.publish_pool.close_channel(&channel).await;
        result
    }

    /// Whether Warren can serve: connected to the broker, topology declared,
    /// not shutting down.
    pub fn is_ready(&self) -> bool {
        let up = self.publish_pool.is_connected() && self.consume_pool.is_connected();
        self.metrics.broker_up.set(i64::from(up));
        up && self.topology_declared.load(Ordering::Acquire)
            && !self.closing.load(Ordering::Acquire)
    }

    /// Publishes one message and waits for the broker's confirm: on the
    /// channel of the publisher named (its messages keep their order), else
    /// on one of the shared channels.
    pub async fn publish_unary(
        &self,
        publisher: Option<&str>,
        publish: Publish,
    ) -> Result<Confirmed, Error> {
        let Some(name) = publisher else {
            return self.publish_shared(publish).await;
        };
        if name.is_empty() || name.len() > 128 {
            return Err(Error::InvalidArgument(
                "a publisher name must be 1 to 128 bytes".into(),
            ));
        }
        let publisher = self.publishers.named(name)?;
        self.publish(&publisher, publish).await
    }

    async fn publish_shared(&self, publish: Publish) -> Result<Confirmed, Error> {
        let started = Instant::now();
        let result = self.prepare(publish).await;
        let publish = result.inspect_err(|e| self.metrics.publish(outcome_of(e)))?;
        self.shared.publish(&publish, None, started).await
    }

    /// A publisher of its own, for one publish stream; it closes its channel
    /// once the handle is dropped and its messages are settled.
    pub fn session(&self) -> Result<PublisherHandle, Error> {
        self.check_open()?;
        self.publishers.dedicated()
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Validates `publish` and queues it on `publisher`, in call order.
    /// The returned future resolves with the broker's verdict.
    pub async fn submit(
        &self,
        publisher: &PublisherHandle,
        publish: Publish,
    ) -> Result<Pending, Error> {
        let started = Instant::now();
        let result = self.prepare(publish).await;
        let publish = result.inspect_err(|e| self.metrics.publish(outcome_of(e)))?;
        let (reply, pending) = oneshot::channel();
        let command = publisher::Command {
            publish,
            properties: None,
            started,
            reply,
        };
        if publisher.0.send(command).await.is_err() {
            self.metrics.publish(outcome::UNAVAILABLE);
            return Err(Error::ShuttingDown);
        }
        Ok(pending)
    }

    /// Publishes and waits for the broker's confirm.
    pub async fn publish(
        &self,
        publisher: &PublisherHandle,
        publish: Publish,
    ) -> Result<Confirmed, Error> {
        let pending = self.submit(publisher, publish).await?;
        pending.await.unwrap_or(Err(Error::ShuttingDown))
    }

    async fn prepare(&self, mut publish: Publish) -> Result<Publish, Error> {
        self.check_open()?;
        self.breaker.check()?;
        check_short("exchange", &publish.exchange)?;
        check_short("routing_key", &publish.routing_key)?;
        publish
            .message
            .validate(self.config.publish.max_body_bytes)?;
        if !publish.message.user_id.is_empty() {
            // The broker closes the channel on a user_id that is not the
            // connection's user: refuse it here instead.
            let user = self.publish_pool.username();
            if user.as_deref() != Some(publish.message.user_id.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "user_id must be empty or the broker user Warren connects as ({})",
                    user.unwrap_or_default()
                )));
            }
        }
        publish.message.ensure_id();
        self.exchanges.check(&publish.exchange).await?;
        Ok(publish)
    }

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

    /// Graceful stop: refuse new work, let publishers settle what they hold
    /// (their confirms), close channels and connections.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::Release);
        self.shutdown.cancel();
        info!("draining publishers and closing subscriptions");
        tokio::join!(
            self.publishers.drained(),
            self.subscriptions.closed(),
            self.shared.close()
        );
        self.publish_pool.close().await;
        self.consume_pool.close().await;
        self.metrics.broker_up.set(0);
        info!("bus closed");
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

    /// The masked broker URLs (for logs).
    pub fn brokers(&self) -> Vec<String> {
        self.config
            .amqp
            .urls()
            .iter()
            .map(|u| amqp::mask(u))
            .collect()
    }
}
