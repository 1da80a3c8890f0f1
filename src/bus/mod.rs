//! The bus core: every operation the transports offer, over AMQP.
//!
//! [`Bus`] owns the connection pools, the publishers, the subscriptions and
//! the topology. The gRPC and HTTP layers turn requests into calls on it and
//! its [`Error`]s into status codes; nothing else in them knows about AMQP.
//!
//! One folder or file per concern, each `Bus` method beside its concern:
//! - [`publish`]: validation, publisher sessions (one task and channel per
//!   stream or named publisher), their registry, the shared channels, the
//!   confirm verdict.
//! - [`subscribe`]: opening consumers, the consumer loop, settlement state,
//!   delivery ids and attempts; `Bus::subscribe`, `ack`, `nack`.
//! - [`rpc`]: request/reply with direct reply-to; `Bus::call`, `reply`.
//! - [`retry`]: the retry policy and the broker-held delay queues.
//! - [`schedule`]: scheduled publish: the delay chain's topology, the
//!   rewrite of a scheduled publish into it, and the forwarder that routes
//!   due messages to their targets.
//! - [`push`]: push delivery: `[[push]]` queues POSTed to an app.
//! - [`spool`]: the durable local spool: publishes written while the
//!   broker cannot be reached, forwarded in order once it can; the
//!   dead-letter spool.
//! - [`dead_letters`]: list, replay and discard dead letters.
//! - [`ordered`]: ordered groups: per-key FIFO, blocking on failure.
//! - [`control`]: the control channel every Warren listens on; pausing and
//!   resuming queues.
//! - `exchanges`: which exchanges exist, checked before publishing.
//! - `breaker`: the circuit breaker.
//! - `drain` and `lifecycle`: the one gate every call passes, readiness,
//!   topology, and the ordered shutdown.

mod breaker;
pub mod control;
pub mod dead_letters;
mod drain;
mod exchanges;
mod lifecycle;
pub mod ordered;
pub mod publish;
pub mod push;
pub mod retry;
pub mod rpc;
pub mod schedule;
pub mod spool;
pub mod subscribe;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::amqp::{Pool, Role};
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;

use crate::auth::{Caller, Credential};
use breaker::Breaker;
pub use dead_letters::{DeadLetter, Outcome as DeadLetterOutcome, Patch, Selection};
use drain::Gate;
use exchanges::Exchanges;
pub use publish::{Confirmed, Pending, Publish, PublisherHandle, Schedule};
use publish::{Publishers, Shared};
use rpc::Rpc;
use subscribe::Subscriptions;
pub use subscribe::{Action, Delivery, SubscribeRequest, Subscription};

/// The bus core. One per process; share it behind an `Arc`.
pub struct Bus {
    config: Arc<Config>,
    metrics: Metrics,
    publish_pool: Arc<Pool>,
    consume_pool: Arc<Pool>,
    /// One connection for existence checks that could cost a connection.
    probe_pool: Arc<Pool>,
    exchanges: Arc<Exchanges>,
    publishers: Arc<Publishers>,
    shared: Arc<Shared>,
    subscriptions: Subscriptions,
    control: Arc<control::Control>,
    ordered: Arc<ordered::Groups>,
    retrier: Arc<retry::Retrier>,
    rpc: Rpc,
    dead_letters: dead_letters::DeadLetters,
    breaker: Arc<Breaker>,
    auth: crate::auth::Auth,
    /// Every call passes it; shutdown closes it and waits for the passes.
    gate: Arc<Gate>,
    /// Cancelled after the drain: ends subscriptions, publisher tasks and
    /// background work.
    shutdown: CancellationToken,
    topology_declared: AtomicBool,
    /// The delay chain, declared on the first scheduled publish.
    scheduled: schedule::Topology,
    /// The forwarder of due scheduled messages, the pushers and the spool's
    /// forwarder.
    background: TaskTracker,
    /// `[spool]`, when enabled.
    spool: Option<Arc<spool::Spool>>,
    /// Message bodies in flight (`publish.max_bytes_in_flight`).
    bodies: publish::Budget,
}

impl Bus {
    /// Starts the connection pools (connecting in the background), the
    /// shared publishers, the forwarder of scheduled messages and the pushers
    /// (`[[push]]`), and with `spool` (opened from `[spool]`) its forwarder.
    /// Fails only when `[auth]`'s key material cannot be read.
    pub fn start(
        config: Arc<Config>,
        metrics: Metrics,
        spool: Option<spool::Spool>,
    ) -> Result<Arc<Self>, crate::auth::Invalid> {
        let auth = crate::auth::Auth::new(&config.auth, &metrics)?;
        let publish_pool = Pool::start(Role::Publish, &config.amqp, metrics.clone());
        let consume_pool = Pool::start(Role::Consume, &config.amqp, metrics.clone());
        let probe_pool = Pool::start(Role::Probe, &config.amqp, metrics.clone());
        let exchanges = Arc::new(Exchanges::new(
            publish_pool.clone(),
            probe_pool.clone(),
            config.publish.exchange_cache_ttl,
        ));
        let shutdown = CancellationToken::new();
        let breaker = Arc::new(Breaker::new(
            &config.breaker,
            metrics.circuit_breaker_state.clone(),
        ));
        let ctx = publish::Context {
            breaker: breaker.clone(),
            pool: publish_pool.clone(),
            exchanges: exchanges.clone(),
            metrics: metrics.clone(),
            max_in_flight: config.publish.max_in_flight,
            confirm_timeout: config.publish.confirm_timeout,
            retry_budget: config.publish.retry_budget,
        };
        let shared = Arc::new(Shared::new(ctx.clone(), config.amqp.shared_publishers));
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
        ));
        let dead_letters = dead_letters::DeadLetters {
            pool: publish_pool.clone(),
            isolated: probe_pool.clone(),
            retrier: retrier.clone(),
            max_scan: config.dead_letters.max_scan,
        };
        let control = control::Control::new(consume_pool.clone(), probe_pool.clone());
        tokio::spawn(control.clone().listen(shutdown.clone()));
        let ordered = Arc::new(ordered::Groups::new(&config.ordered));
        let parts = subscribe::Parts {
            groups: ordered.clone(),
            publish_pool: publish_pool.clone(),
            pool: consume_pool.clone(),
            isolated: probe_pool.clone(),
            metrics: metrics.clone(),
            retrier: retrier.clone(),
            exchanges: exchanges.clone(),
            control: control.clone(),
        };
        let subscriptions = Subscriptions::new(parts, config.subscribe.clone(), shutdown.clone());
        let rpc = Rpc::new(publish_pool.clone(), metrics.clone(), config.rpc.clone());
        let up = [publish_pool.clone(), consume_pool.clone()].map(|p| Arc::downgrade(&p));
        metrics.computed(
            "warren_broker_up",
            "1 while connected to the broker, else 0.",
            move || {
                let connected = up
                    .iter()
                    .all(|p| p.upgrade().is_some_and(|p| p.is_connected()));
                i64::from(connected)
            },
        );
        let gate = Arc::new(Gate::default());
        let bodies = publish::Budget::new(config.publish.max_bytes_in_flight, &metrics);
        let forwarder = schedule::Forwarder {
            pool: consume_pool.clone(),
            exchanges: exchanges.clone(),
            publishers: publishers.clone(),
            caller: auth.internal(),
            retrier: retrier.clone(),
            gate: gate.clone(),
            metrics: metrics.clone(),
            kind: config.retry.delay_queue_type,
            shutdown: shutdown.clone(),
            failures: Default::default(),
        };
        let background = TaskTracker::new();
        background.spawn(forwarder.run());
        let scheduled =
            schedule::Topology::new(publish_pool.clone(), config.retry.delay_queue_type);
        let bus = Arc::new(Self {
            ordered,
            auth,
            rpc,
            dead_letters,
            breaker,
            config,
            metrics,
            publish_pool,
            consume_pool,
            probe_pool,
            exchanges,
            publishers,
            shared,
            subscriptions,
            control,
            retrier,
            gate,
            shutdown,
            topology_declared: AtomicBool::new(false),
            scheduled,
            background,
            spool: spool.map(Arc::new),
            bodies,
        });
        bus.start_push();
        bus.start_spool();
        Ok(bus)
    }

    /// The caller a credential proves (the anonymous caller, allowed
    /// everything, while auth is off); UNAUTHENTICATED otherwise.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Caller, Error> {
        self.auth.authenticate(credential).await
    }

    /// The authenticator.
    pub fn auth(&self) -> &crate::auth::Auth {
        &self.auth
    }

    /// The configuration the bus runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The metrics the bus records.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A pass for a call that needs nothing from the broker up front.
    fn enter(&self) -> Result<drain::Pass, Error> {
        self.gate.enter()
    }

    /// A pass for a new publish or call: refused at once while the breaker is
    /// open or the pool knows no connection is live (which opens the breaker),
    /// so that no new request waits for a broker that is away.
    fn enter_broker(&self) -> Result<drain::Pass, Error> {
        let pass = self.gate.enter()?;
        self.breaker.check()?;
        if self.publish_pool.is_down() {
            return Err(self.breaker.trip());
        }
        Ok(pass)
    }
}
