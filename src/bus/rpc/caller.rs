//! The caller side of request/reply, with RabbitMQ's direct reply-to.
//!
//! The broker requires a request to be published on the channel that
//! consumes the `amq.rabbitmq.reply-to` pseudo-queue, so Warren keeps a small
//! set of RPC channels (each an [`amqp::Slot`]), each with its reply consumer
//! and its table of pending calls keyed by correlation id. No queue is
//! declared per call. Replies are at-most-once: a reply whose caller's
//! channel is gone is dropped by the broker, and a reply that arrives after
//! its caller gave up is dropped and counted here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::Confirmation;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::amqp::{self, codec, Channel, Pool, Slot};
use crate::bus::breaker::Waiting;
use crate::bus::Publish;
use crate::config;
use crate::error::Error;
use crate::message::Message;
use crate::metrics::Metrics;

/// The pseudo-queue of direct reply-to.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// One RPC channel while it lives.
#[derive(Clone)]
struct Live {
    channel: Channel,
    pending: Pending,
}

impl amqp::Live for Live {
    fn is_live(&self) -> bool {
        self.channel.is_open()
    }
}

/// The caller side of RPC.
pub struct Rpc {
    pool: Arc<Pool>,
    metrics: Metrics,
    config: config::Rpc,
    slots: Vec<Slot<Live>>,
    next: AtomicUsize,
    permits: Arc<Semaphore>,
}

impl Rpc {
    pub(crate) fn new(pool: Arc<Pool>, metrics: Metrics, config: config::Rpc) -> Self {
        Self {
            slots: (0..config.channels).map(|_| Slot::default()).collect(),
            permits: Arc::new(Semaphore::new(config.max_pending)),
            next: AtomicUsize::new(0),
            pool,
            metrics,
            config,
        }
    }

    /// The timeout of a call: the sooner of the request's and the default
    /// (or the caller's deadline, whichever the transport passes).
    pub fn timeout(
        &self,
        requested_ms: u32,
        deadline: Option<Duration>,
    ) -> Result<Duration, Error> {
        let requested = match requested_ms {
            0 => self.config.default_timeout,
            ms => Duration::from_millis(u64::from(ms)),
        };
        if requested > self.config.max_timeout {
            return Err(Error::InvalidArgument(format!(
                "timeout_ms {} is above the limit of {} ms (rpc.max_timeout)",
                requested.as_millis(),
                self.config.max_timeout.as_millis()
            )));
        }
        Ok(deadline.map_or(requested, |d| d.min(requested)))
    }

    async fn open(&self) -> Result<Live, Error> {
        let channel = self.pool.open_confirm_channel().await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consume =
            channel.basic_consume(REPLY_TO.into(), "".into(), no_ack, FieldTable::default());
        let consumer = self.pool.op("basic.consume", consume).await?;
        let pending: Pending = Arc::default();
        tokio::spawn(read_replies(
            consumer,
            pending.clone(),
            self.metrics.clone(),
        ));
        Ok(Live { channel, pending })
    }

    /// Publishes `request` with a reply-to and waits for its reply until
    /// `until`, the end of the call's `timeout`. The caller has validated it
    /// and checked the exchange. `waiting` watches the request until the
    /// broker confirms it (the wait for the reply is the responder's).
    pub async fn call(
        &self,
        request: Publish,
        until: Instant,
        timeout: Duration,
        waiting: Waiting<'_>,
    ) -> Result<Message, Error> {
        let started = Instant::now();
        let _permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Error::LimitReached(format!(
                "{} calls are pending already (rpc.max_pending)",
                self.config.max_pending
            ))
        })?;
        let result = tokio::time::timeout_at(until, self.exchange(request, timeout, waiting)).await;
        self.metrics
            .rpc_duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(result) => result,
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "no reply within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// Publishes the request and waits for its reply. A request the broker
    /// nacks is sent again on a fresh channel (the nacking one is replaced,
    /// as publishers do: after a cluster node dies, RabbitMQ nacks every
    /// publish of a channel that published to a quorum queue before its new
    /// leader was elected), up to [`NACK_RETRIES`] times within the call's
    /// timeout.
    async fn exchange(
        &self,
        request: Publish,
        timeout: Duration,
        waiting: Waiting<'_>,
    ) -> Result<Message, Error> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut tries = 0;
        loop {
            let (live, generation) = slot.get(async || self.open().await).await?;
            match self.attempt(&live, &request, timeout).await {
                Err(Error::Nacked) if tries < NACK_RETRIES => {
                    tries += 1;
                    // Other calls on it keep their channel until they end.
                    slot.invalidate(generation);
                    tokio::time::sleep(Duration::from_millis(50 << tries)).await;
                }
                Err(e) => {
                    waiting.settled();
                    return Err(e);
                }
                Ok(reply) => {
                    waiting.settled();
                    return reply.rx.await.map_err(|_| {
                        Error::unavailable("the RPC channel closed before the reply arrived")
                    });
                }
            }
        }
    }

    /// Publishes the request once on `live`; the reply's receiver once the
    /// broker confirmed it.
    async fn attempt(
        &self,
        live: &Live,
        request: &Publish,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        let Publish {
            exchange,
            routing_key,
            message,
            mandatory,
            ..
        } = request;
        let mut message = message.clone();
        let correlation_id = uuid::Uuid::new_v4().to_string();
        message.correlation_id = correlation_id.clone();
        message.reply_to = REPLY_TO.into();
        // A responder that comes back later must not work on a stale request.
        let ttl = timeout.as_millis().max(1) as u64;
        message.expiration_ms = if message.expiration_ms == 0 {
            ttl
        } else {
            message.expiration_ms.min(ttl)
        };
        let (tx, rx) = oneshot::channel();
        live.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(correlation_id.clone(), tx);
        // Forgets the call however it ends (answered, failed, timed out).
        let forget = Forget {
            pending: live.pending.clone(),
            id: correlation_id,
        };
        let options = BasicPublishOptions {
            mandatory: *mandatory,
            immediate: false,
        };
        let confirm = async {
            live.channel
                .basic_publish(
                    exchange.as_str().into(),
                    routing_key.as_str().into(),
                    options,
                    &message.body,
                    codec::properties(&message),
                )
                .await?
                .await
        }
        .await;
        match confirm.map_err(|e| amqp::publish_error(e, exchange))? {
            Confirmation::Ack(None) => Ok(Reply {
                rx,
                _forget: forget,
            }),
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Err(Error::Unroutable {
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
            }),
            Confirmation::Nack(None) => Err(Error::Nacked),
            Confirmation::NotRequested => {
                Err(Error::Internal("RPC channel not in confirm mode".into()))
            }
        }
    }

    /// Closes the RPC channels (after the drain).
    pub async fn close(&self, timeout: Duration) {
        for slot in &self.slots {
            if let Some(live) = slot.take() {
                live.channel.close(timeout).await;
            }
        }
    }
}

struct Forget {
    pending: Pending,
    id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// A confirmed request's reply to come; the call is forgotten when dropped.
struct Reply {
    rx: oneshot::Receiver<Message>,
    _forget: Forget,
}

/// Times a nacked request is sent again on a fresh channel.
const NACK_RETRIES: u32 = 3;

/// Hands each reply to its pending call; replies nobody waits for are dropped.
async fn read_replies(mut consumer: lapin::Consumer, pending: Pending, metrics: Metrics) {
    while let Some(next) = consumer.next().await {
        let Ok(delivery) = next else { break };
        let message = codec::message(delivery.data.into(), &delivery.properties);
        let waiting = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&message.correlation_id);
        let delivered = waiting.is_some_and(|caller| caller.send(message).is_ok());
        if !delivered {
            metrics.rpc_late_replies_total.inc();
            debug!("dropped a reply that no caller waits for");
        }
    }
    // The channel is gone: every call on it fails now rather than at its timeout.
    let orphans = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
    if !orphans.is_empty() {
        warn!(
            calls = orphans.len(),
            "RPC channel closed with calls pending"
        );
    }
}
