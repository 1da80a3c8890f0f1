//! Request/reply over the bus with RabbitMQ's direct reply-to.
//!
//! The broker requires a request to be published on the channel that
//! consumes the `amq.rabbitmq.reply-to` pseudo-queue, so Warren keeps a small
//! set of RPC channels, each with its reply consumer and its table of pending
//! calls keyed by correlation id. No queue is declared per call. Replies are
//! at-most-once: a reply whose caller's channel is gone is dropped by the
//! broker, and a reply that arrives after its caller gave up is dropped and
//! counted here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

use crate::amqp::{self, codec, Pool};
use crate::config;
use crate::error::Error;
use crate::message::Message;
use crate::metrics::Metrics;

/// The pseudo-queue of direct reply-to.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// One RPC channel while it lives.
struct Live {
    channel: Channel,
    pending: Pending,
}

/// A slot that holds a live RPC channel, opened on demand.
#[derive(Default)]
struct Slot {
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
}

/// The caller side of RPC.
pub struct Rpc {
    pool: Arc<Pool>,
    metrics: Metrics,
    config: config::Rpc,
    operation_timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
    permits: Arc<Semaphore>,
}

impl Rpc {
    pub(super) fn new(
        pool: Arc<Pool>,
        metrics: Metrics,
        config: config::Rpc,
        operation_timeout: Duration,
    ) -> Self {
        Self {
            slots: (0..config.channels).map(|_| Slot::default()).collect(),
            permits: Arc::new(Semaphore::new(config.max_pending)),
            next: AtomicUsize::new(0),
            pool,
            metrics,
            config,
            operation_timeout,
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

    async fn live(&self) -> Result<Arc<Live>, Error> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut live = slot.live.lock().await;
        if let Some(l) = live.as_ref().filter(|l| l.channel.status().connected()) {
            return Ok(l.clone());
        }
        let channel = self.pool.open_channel().await?;
        let opened = async {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            let no_ack = BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            };
            channel
                .basic_consume(REPLY_TO.into(), "".into(), no_ack, FieldTable::default())
                .await
        };
        let consumer = match tokio::time::timeout(self.operation_timeout, opened).await {
            Ok(Ok(consumer)) => consumer,
            Ok(Err(e)) => {
                self.pool.close_channel(&channel).await;
                return Err(amqp::classify(&e));
            }
            Err(_) => {
                self.pool.close_channel(&channel).await;
                return Err(Error::unavailable(
                    "the broker did not open an RPC channel in time",
                ));
            }
        };
        let pending: Pending = Arc::default();
        tokio::spawn(read_replies(
            consumer,
            pending.clone(),
            self.metrics.clone(),
        ));
        let l = Arc::new(Live { channel, pending });
        *live = Some(l.clone());
        Ok(l)
    }

    /// Publishes `message` as a request and waits for its reply. The caller
    /// has validated the message and checked the exchange.
    pub async fn call(
        &self,
        exchange: &str,
        routing_key: &str,
        mut message: Message,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let started = Instant::now();
        let _permit = self.permits.clone().try_acquire_owned().map_err(|_| {
            Error::LimitReached(format!(
                "{} calls are pending already (rpc.max_pending)",
                self.config.max_pending
            ))
        })?;
        let live = self.live().await?;
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
        let forget = || {
            live.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&correlation_id);
        };
        let outcome = tokio::time::timeout(timeout, async {
            let options = BasicPublishOptions {
                mandatory: true,
                immediate: false,
            };
            let confirm = live
                .channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &message.body,
                    codec::properties(&message),
                )
                .await
                .map_err(|e| amqp::publish_error(&e, exchange))?
                .await
                .map_err(|e| amqp::publish_error(&e, exchange))?;
            match confirm {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
                    return Err(Error::Unroutable {
                        exchange: exchange.into(),
                        routing_key: routing_key.into(),
                    })
                }
                Confirmation::Nack(None) => return Err(Error::Nacked),
                Confirmation::NotRequested => {
                    return Err(Error::Internal("RPC channel not in confirm mode".into()))
                }
            }
            rx.await
                .map_err(|_| Error::unavailable("the RPC channel closed before the reply arrived"))
        })
        .await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(Error::DeadlineExceeded(format!(
                "no reply within {} ms",
                timeout.as_millis()
            ))),
        };
        if result.is_err() {
            forget();
        }
        self.metrics
            .rpc_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

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
