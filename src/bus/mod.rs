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
mod publish;
mod publisher;
mod publishers;
mod retry;
mod rpc;
mod shared;
mod subscribe;
mod subscriber;
mod subscriptions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::amqp::{self, topology, Pool, Role};
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;

use breaker::Breaker;
pub use dead_letters::{DeadLetter, Outcome as DeadLetterOutcome, Patch, Selection};
pub use delivery::{Delivery, SubscribeRequest};
use exchanges::Exchanges;
use publish::outcome_of;
pub use publish::{Confirmed, Pending, Publish};
pub use publishers::Handle as PublisherHandle;
use publishers::Publishers;
use rpc::Rpc;
pub use subscriptions::Subscription;
use subscriptions::Subscriptions;

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
            exchanges.clone(),
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

    fn check_open(&self) -> Result<(), Error> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(())
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
