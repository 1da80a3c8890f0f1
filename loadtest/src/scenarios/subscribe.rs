//! `subscribe`: drain a pre-filled queue with a prefetch and batched acks.
//!
//! The queue is filled first (direct lapin, confirmed, not timed) with the
//! warm-up plus the measured messages. The clock starts at the delivery that
//! ends the warm-up and stops once the last delivery is received and acked.
//!
//! - Warren: gRPC `Subscribe` with `--prefetch`; every `--ack-batch`
//!   deliveries, one `Ack` with all their ids, sent by a separate task so the
//!   stream keeps flowing.
//! - Direct: a lapin consumer with the same prefetch, acking with
//!   `multiple=true` every `--ack-batch` deliveries.
//!
//! Per-message latency is not reported: from a pre-filled queue it is time
//! spent waiting in the queue, not anything either client does.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::mpsc;

use super::{Ctx, Grpc, Spec};
use crate::broker;
use crate::harness::{Outcome, Progress, DRAIN};
use crate::procfs::Meter;
use crate::proto::{AckRequest, StreamingSubscribeRequest, SubscribeRequest};

/// Fills the queue with the warm-up plus the measured messages.
async fn fill(ctx: &Ctx, spec: &Spec) -> anyhow::Result<u64> {
    let total = ctx.args.warmup() + ctx.args.messages;
    let deadline = Instant::now() + Duration::from_secs(60).max(ctx.args.duration() * 4);
    broker::fill(&ctx.amqp, &spec.queue, total, &spec.body, deadline).await?;
    Ok(total)
}

/// Where a drain is: counts the warm-up, then starts the meter and counts
/// the measured deliveries, each phase bounded by `--duration`.
struct Drain<'a> {
    warmup: u64,
    total: u64,
    received: u64,
    deadline: Instant,
    duration: Duration,
    meter: &'a mut Meter,
    progress: &'a Progress,
    out: Outcome,
}

impl<'a> Drain<'a> {
    fn new(ctx: &Ctx, total: u64, meter: &'a mut Meter, progress: &'a Progress) -> Self {
        let mut drain = Self {
            warmup: ctx.args.warmup(),
            total,
            received: 0,
            deadline: Instant::now() + ctx.args.duration(),
            duration: ctx.args.duration(),
            meter,
            progress,
            out: Outcome::new(false),
        };
        drain.maybe_start();
        drain
    }

    fn maybe_start(&mut self) {
        if self.received == self.warmup && !self.meter.running() {
            self.progress.reset();
            self.meter.start();
            self.deadline = Instant::now() + self.duration;
        }
    }

    /// Whether to wait for another delivery.
    fn more(&self) -> bool {
        self.received < self.total && Instant::now() < self.deadline
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.deadline)
    }

    fn delivered(&mut self) {
        self.received += 1;
        if self.meter.running() {
            self.out.ok += 1;
        }
        self.progress.counter().fetch_add(1, Ordering::Relaxed);
        self.maybe_start();
    }

    fn finish(self) -> anyhow::Result<Outcome> {
        if !self.meter.running() {
            anyhow::bail!(
                "the warm-up ({} deliveries) did not finish in time: {} received",
                self.warmup,
                self.received
            );
        }
        self.meter.stop();
        Ok(self.out)
    }
}

/// gRPC `Subscribe` with batched `Ack`s from a separate task.
pub async fn warren(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let total = fill(ctx, spec).await?;
    let mut client = ctx.grpc(0);
    let request = SubscribeRequest {
        queue: spec.queue.clone(),
        prefetch: u32::from(ctx.args.prefetch),
        auto_ack: false,
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await?.into_inner();
    let (ack_tx, mut ack_rx) = mpsc::channel::<Vec<String>>(1024);
    let mut acker_client = ctx.grpc(1);
    let acker = tokio::spawn(async move {
        let mut out = Outcome::new(false);
        while let Some(ids) = ack_rx.recv().await {
            let n = ids.len();
            match acker_client.ack(AckRequest { delivery_ids: ids }).await {
                Ok(r) if r.get_ref().acked as usize == n => {}
                Ok(r) => out.error(format!("acked {} of {n}", r.get_ref().acked)),
                Err(s) => out.error(format!("ack: {:?}: {}", s.code(), s.message())),
            }
        }
        out
    });
    let batch_size = ctx.args.ack_batch;
    let mut batch = Vec::with_capacity(batch_size);
    let mut drain = Drain::new(ctx, total, meter, progress);
    while drain.more() {
        let delivery = match tokio::time::timeout_at(drain.deadline(), stream.message()).await {
            Err(_) => break,
            Ok(Err(status)) => anyhow::bail!("the subscription failed: {status}"),
            Ok(Ok(None)) => anyhow::bail!(
                "Warren ended the subscription after {} deliveries",
                drain.received
            ),
            Ok(Ok(Some(delivery))) => delivery,
        };
        drain.delivered();
        batch.push(delivery.delivery_id);
        if batch.len() >= batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            ack_tx.send(full).await?;
        }
    }
    if !batch.is_empty() {
        ack_tx.send(batch).await?;
    }
    drop(ack_tx);
    let acks = tokio::time::timeout(DRAIN, acker)
        .await
        .map_err(|_| anyhow::anyhow!("the acks did not finish within {DRAIN:?}"))??;
    let mut out = drain.finish()?;
    out.merge(acks);
    drop(stream);
    Ok(out)
}

/// gRPC `StreamingSubscribe`: every `--ack-batch` deliveries, their ids go
/// back in the same stream.
pub async fn warren_streaming(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let total = fill(ctx, spec).await?;
    let mut client = ctx.grpc(0);
    let (tx, rx) = mpsc::channel::<StreamingSubscribeRequest>(1024);
    tx.send(StreamingSubscribeRequest {
        subscription: Some(SubscribeRequest {
            queue: spec.queue.clone(),
            prefetch: u32::from(ctx.args.prefetch),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    let mut stream = client
        .streaming_subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let batch_size = ctx.args.ack_batch;
    let mut batch = Vec::with_capacity(batch_size);
    let mut drain = Drain::new(ctx, total, meter, progress);
    while drain.more() {
        let delivery = match tokio::time::timeout_at(drain.deadline(), stream.message()).await {
            Err(_) => break,
            Ok(Err(status)) => anyhow::bail!("the subscription failed: {status}"),
            Ok(Ok(None)) => anyhow::bail!(
                "Warren ended the subscription after {} deliveries",
                drain.received
            ),
            Ok(Ok(Some(delivery))) => delivery,
        };
        drain.delivered();
        batch.push(delivery.delivery_id);
        if batch.len() >= batch_size {
            let ack_ids = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            tx.send(StreamingSubscribeRequest {
                ack_ids,
                ..Default::default()
            })
            .await?;
        }
    }
    if !batch.is_empty() {
        tx.send(StreamingSubscribeRequest {
            ack_ids: batch,
            ..Default::default()
        })
        .await?;
    }
    let out = drain.finish()?;
    // Give the last acks a moment to reach Warren before the stream closes
    // (unacked deliveries would go back to the queue, which is deleted).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(tx);
    drop(stream);
    Ok(out)
}

/// A lapin consumer acking with `multiple` every `--ack-batch`.
pub async fn direct(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let total = fill(ctx, spec).await?;
    let conn = broker::connect(&ctx.args.amqp_url, "warren-loadtest-direct").await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(ctx.args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            spec.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let batch_size = ctx.args.ack_batch as u64;
    let (mut unacked, mut last_tag) = (0u64, 0u64);
    let multiple = BasicAckOptions { multiple: true };
    let mut drain = Drain::new(ctx, total, meter, progress);
    while drain.more() {
        let delivery = match tokio::time::timeout_at(drain.deadline(), consumer.next()).await {
            Err(_) => break,
            Ok(None) => anyhow::bail!("the broker cancelled the consumer"),
            Ok(Some(Err(e))) => anyhow::bail!("the consumer failed: {e}"),
            Ok(Some(Ok(delivery))) => delivery,
        };
        drain.delivered();
        last_tag = delivery.delivery_tag;
        unacked += 1;
        if unacked >= batch_size {
            channel.basic_ack(last_tag, multiple).await?;
            unacked = 0;
        }
    }
    if unacked > 0 {
        channel.basic_ack(last_tag, multiple).await?;
    }
    let out = drain.finish()?;
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

/// Acks the delivery ids that arrive on `ids`, every id waiting at the time
/// in one `Ack` (up to 256): one per delivery when they come slowly, fewer
/// under load. Failures are counted; ends when `ids` closes.
pub async fn ack_as_they_come(
    mut client: Grpc,
    mut ids: mpsc::UnboundedReceiver<String>,
) -> Outcome {
    let mut out = Outcome::new(false);
    while let Some(first) = ids.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match ids.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let request = AckRequest {
            delivery_ids: batch,
        };
        match client.ack(request).await {
            Ok(r) if r.get_ref().acked as usize == n => out.ok += n as u64,
            Ok(r) => out.error(format!("acked {} of {n}", r.get_ref().acked)),
            Err(s) => out.error(format!("ack: {:?}: {}", s.code(), s.message())),
        }
    }
    out
}
