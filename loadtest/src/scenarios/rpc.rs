//! `rpc`: request/reply round trips with `--concurrency` callers against an
//! echo responder (a plain lapin consumer in this process that publishes each
//! request's body back to its `reply_to` with its `correlation_id`).
//!
//! - Warren: gRPC `Call` (Warren publishes the request persistent and
//!   confirmed, over direct reply-to, and waits for the reply).
//! - Direct: lapin with direct reply-to (`amq.rabbitmq.reply-to`) over
//!   [`DIRECT_CHANNELS`] channels (Warren's `rpc.channels` default), each in
//!   confirm mode with its reply consumer; requests are persistent and
//!   mandatory, and a call waits for the confirm and then the reply, as
//!   Warren does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::oneshot;

use super::{closed_loop_phases, op, Ctx, Spec};
use crate::broker;
use crate::harness::{Outcome, Progress};
use crate::procfs::Meter;
use crate::proto::{CallRequest, Message};

/// Direct reply-to's pseudo-queue.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Channels of the direct RPC client.
const DIRECT_CHANNELS: usize = 2;

/// How long one call may wait for its reply.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The echo responder on its own connection; stops when dropped.
struct Responder {
    conn: Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Responder {
    async fn start(ctx: &Ctx, queue: &str) -> anyhow::Result<Self> {
        let conn = broker::connect(&ctx.args.amqp_url, "warren-loadtest-responder").await?;
        let channel = conn.create_channel().await?;
        let prefetch = u16::try_from(ctx.args.concurrency * 2).unwrap_or(u16::MAX);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut consumer = channel
            .basic_consume(queue.into(), "".into(), no_ack, FieldTable::default())
            .await?;
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Some(reply_to) = delivery.properties.reply_to().clone() else {
                    continue;
                };
                let mut properties = BasicProperties::default();
                if let Some(id) = delivery.properties.correlation_id() {
                    properties = properties.with_correlation_id(id.clone());
                }
                let sent = channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &delivery.data,
                        properties,
                    )
                    .await;
                match sent {
                    Ok(confirm) => drop(confirm.await), // not in confirm mode: ready at once
                    Err(_) => break,
                }
            }
        });
        Ok(Self { conn, task })
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// gRPC `Call` with `--concurrency` callers.
pub async fn warren(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let responder = Responder::start(ctx, &spec.queue).await?;
    let c = ctx.args.concurrency;
    let clients: Vec<_> = (0..c).map(|w| ctx.grpc(w)).collect();
    let request = CallRequest {
        exchange: String::new(),
        routing_key: spec.queue.clone(),
        message: Some(Message {
            body: spec.body.clone(),
            ..Default::default()
        }),
        timeout_ms: CALL_TIMEOUT.as_millis() as u32,
    };
    let size = spec.body.len();
    let call = op(move |w| {
        let mut client = clients[w].clone();
        let request = request.clone();
        async move {
            let reply = client
                .call(request)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            let got = reply.get_ref().message.as_ref().map_or(0, |m| m.body.len());
            if got != size {
                return Err(format!("reply of {got} bytes to a request of {size}"));
            }
            Ok(())
        }
    });
    let out = closed_loop_phases(ctx, meter, progress, c, call).await;
    responder.stop().await;
    out
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<usize>>>>;

/// One direct-reply-to channel and the calls waiting on it.
#[derive(Clone)]
struct RpcChannel {
    channel: Channel,
    pending: Pending,
}

impl RpcChannel {
    async fn open(conn: &Connection) -> anyhow::Result<Self> {
        let channel = broker::confirm_channel(conn).await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut replies = channel
            .basic_consume(REPLY_TO.into(), "".into(), no_ack, FieldTable::default())
            .await?;
        let pending: Pending = Arc::default();
        let waiting = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(reply)) = replies.next().await {
                let id = reply.properties.correlation_id().clone();
                let caller = id.and_then(|id| {
                    let mut waiting = waiting.lock().unwrap_or_else(|e| e.into_inner());
                    waiting.remove(id.as_str())
                });
                if let Some(caller) = caller {
                    let _ = caller.send(reply.data.len());
                }
            }
        });
        Ok(Self { channel, pending })
    }

    async fn call(&self, queue: &str, body: &[u8]) -> Result<(), String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let properties = broker::persistent()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id(id.as_str().into());
        let result = async {
            broker::publish_stored(&self.channel, "", queue, body, properties).await?;
            match tokio::time::timeout(CALL_TIMEOUT, rx).await {
                Ok(Ok(n)) if n == body.len() => Ok(()),
                Ok(Ok(n)) => Err(format!("reply of {n} bytes to a request of {}", body.len())),
                Ok(Err(_)) => Err("the reply channel closed".to_owned()),
                Err(_) => Err(format!("no reply within {CALL_TIMEOUT:?}")),
            }
        }
        .await;
        if result.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        }
        result
    }
}

/// Direct reply-to with `--concurrency` callers.
pub async fn direct(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let responder = Responder::start(ctx, &spec.queue).await?;
    let conn = broker::connect(&ctx.args.amqp_url, "warren-loadtest-direct").await?;
    let mut channels = Vec::new();
    for _ in 0..DIRECT_CHANNELS {
        channels.push(RpcChannel::open(&conn).await?);
    }
    let (queue, body) = (spec.queue.clone(), spec.body.clone());
    let call = op(move |w| {
        let channel = channels[w % channels.len()].clone();
        let (queue, body) = (queue.clone(), body.clone());
        async move { channel.call(&queue, &body).await }
    });
    let out = closed_loop_phases(ctx, meter, progress, ctx.args.concurrency, call).await;
    responder.stop().await;
    let _ = conn.close(200, "done".into()).await;
    out
}
