//! Setting up a consumer: channel, prefetch, the subscription's own queue and
//! bindings, `basic.consume`. Done when a subscription opens and again after
//! the broker connection comes back.

use std::sync::Arc;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Consumer;

use super::delivery::SubscribeRequest;
use crate::amqp::probe::{self, Kind};
use crate::amqp::{self, Channel, Pool};
use crate::bus::exchanges::Exchanges;
use crate::error::Error;

/// A consumer ready to deliver.
pub struct Opened {
    pub channel: Channel,
    /// The queue consumed (a temporary queue's generated name).
    pub queue: String,
    /// None when opened paused.
    pub consumer: Option<Consumer>,
}

/// Everything needed to (re)open one subscription's consumer.
pub struct Opener {
    pub pool: Arc<Pool>,
    /// For existence checks whose refusal could cost a connection.
    pub isolated: Arc<Pool>,
    /// Which exchanges exist (shared with publishing, and its cache).
    pub exchanges: Arc<Exchanges>,
    pub request: SubscribeRequest,
    pub prefetch: u16,
}

impl Opener {
    /// Whether `queue` exists.
    async fn exists(&self, queue: &str) -> Result<bool, Error> {
        probe::exists(&self.pool, &self.isolated, Kind::Queue, queue).await
    }

    /// Opens a channel and (unless `paused`) a consumer on it; closes the
    /// channel on failure.
    pub async fn open(&self, paused: bool) -> Result<Opened, Error> {
        let channel = self.pool.open_channel().await?;
        match self.start(&channel, paused).await {
            Ok((queue, consumer)) => Ok(Opened {
                channel,
                queue,
                consumer,
            }),
            Err(e) => {
                channel.close(self.pool.operation_timeout()).await;
                Err(e)
            }
        }
    }

    /// Declares and binds the subscription's own queue when it names an exchange.
    async fn prepare_queue(&self, channel: &Channel) -> Result<String, Error> {
        let r = &self.request;
        if r.exchange.is_empty() {
            // basic.consume on a missing queue closes the channel with a
            // reason naming it; for a name whose reason could not be parsed
            // that would cost the consuming connection: ask first.
            if probe::is_risky(&r.queue) && !self.exists(&r.queue).await? {
                return Err(Error::NotFound(format!(
                    "queue {:?} does not exist",
                    r.queue
                )));
            }
            return Ok(r.queue.clone());
        }
        let temporary = r.queue.is_empty();
        let options = QueueDeclareOptions {
            durable: !temporary,
            exclusive: temporary,
            auto_delete: temporary,
            ..Default::default()
        };
        let mut args = FieldTable::default();
        // Check the exchange first: a refused subscription leaves no queue behind.
        self.exchanges.check(&r.exchange).await?;
        let exists = !temporary && self.exists(&r.queue).await?;
        if !temporary && !exists {
            // A durable queue Warren creates gets its dead-letter queue.
            let dlq = format!("{}.dlq", r.queue);
            if dlq.len() <= 255 {
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                let declare =
                    channel.queue_declare(dlq.as_str().into(), durable, FieldTable::default());
                self.pool.op("queue.declare", declare).await?;
                amqp::args::dead_letter_to(&mut args, &dlq, crate::config::QueueKind::Classic);
            }
        }
        let queue = if exists {
            r.queue.clone()
        } else {
            let declare = channel.queue_declare(r.queue.as_str().into(), options, args);
            self.pool
                .op("queue.declare", declare)
                .await?
                .name()
                .as_str()
                .to_owned()
        };
        let mut bindings: Vec<(String, FieldTable)> = Vec::new();
        if !r.header_match.is_empty() {
            let mut args = FieldTable::default();
            let x_match = if r.match_all { "all" } else { "any" };
            args.insert(
                "x-match".into(),
                AMQPValue::LongString(LongString::from(x_match)),
            );
            for (k, v) in &r.header_match {
                args.insert(
                    k.as_str().into(),
                    AMQPValue::LongString(LongString::from(v.as_bytes())),
                );
            }
            bindings.push((String::new(), args));
        }
        if r.binding_keys.is_empty() && bindings.is_empty() {
            // The usual convention: a named queue is bound with its own name
            // (a fanout exchange ignores the key anyway).
            bindings.push((r.queue.clone(), FieldTable::default()));
        }
        bindings.extend(
            r.binding_keys
                .iter()
                .map(|k| (k.clone(), FieldTable::default())),
        );
        for (key, args) in bindings {
            let bind = channel.queue_bind(
                queue.as_str().into(),
                r.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                args,
            );
            self.pool
                .op("queue.bind", bind)
                .await
                .map_err(|e| match e {
                    Error::NotFound(_) => {
                        Error::NotFound(format!("exchange {:?} does not exist", r.exchange))
                    }
                    e => e,
                })?;
        }
        Ok(queue)
    }

    async fn start(
        &self,
        channel: &Channel,
        paused: bool,
    ) -> Result<(String, Option<Consumer>), Error> {
        self.pool
            .op(
                "basic.qos",
                channel.basic_qos(self.prefetch, BasicQosOptions::default()),
            )
            .await?;
        let queue = self.prepare_queue(channel).await?;
        if paused {
            return Ok((queue, None));
        }
        let consumer = self.consume(channel, &queue).await?;
        Ok((queue, Some(consumer)))
    }

    /// Starts consuming `queue` on `channel`.
    pub async fn consume(&self, channel: &Channel, queue: &str) -> Result<Consumer, Error> {
        let r = &self.request;
        let mut args = FieldTable::default();
        if r.consumer_priority != 0 {
            args.insert("x-priority".into(), AMQPValue::LongInt(r.consumer_priority));
        }
        let consume = channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        );
        self.pool
            .op("basic.consume", consume)
            .await
            .map_err(|e| match e {
                Error::NotFound(_) => Error::NotFound(format!("queue {queue:?} does not exist")),
                e => e,
            })
    }
}
