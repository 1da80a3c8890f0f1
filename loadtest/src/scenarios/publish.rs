//! Confirmed publishing: `publish-stream`, `publish-unary`, `latency-1`, and
//! the direct peer of `publish-http`.
//!
//! - Warren, stream: one `PublishStream` keeping `--window` requests
//!   outstanding; a request's latency is from sending it to its response.
//! - Direct, stream: one confirm-mode channel keeping `--window` publishes
//!   unconfirmed (pipelined as a good AMQP client does).
//! - Warren, unary: `--concurrency` callers of `Publish`, one call at a time.
//! - Direct, unary: `--concurrency` tasks, each publishing and awaiting its
//!   own confirm, over [`DIRECT_CHANNELS`] channels (Warren's unary publishes
//!   share `amqp.shared_publishers` = 4 channels by default: same shape).

use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::Channel;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{check_warmup, closed_loop_phases, op, Ctx, Spec};
use crate::broker;
use crate::harness::{histogram, Budget, Outcome, Progress};
use crate::procfs::Meter;
use crate::proto::{Message, PublishRequest, PublishResponse};

/// Channels the direct unary peer spreads its callers over.
pub const DIRECT_CHANNELS: usize = 4;

/// A publish request for Warren: default exchange, routing key the queue.
fn request(spec: &Spec, request_id: String) -> PublishRequest {
    PublishRequest {
        exchange: String::new(),
        routing_key: spec.queue.clone(),
        message: Some(Message {
            body: spec.body.clone(),
            ..Default::default()
        }),
        allow_unroutable: false,
        request_id,
        ..Default::default()
    }
}

/// Publishes one persistent, mandatory message and waits for its confirm.
pub async fn publish_confirmed(channel: &Channel, queue: &str, body: &[u8]) -> Result<(), String> {
    broker::publish_stored(channel, "", queue, body, broker::persistent()).await
}

/// `PublishStream` with `--window` outstanding.
pub async fn warren_stream(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let window = ctx.args.window;
    let (tx, rx) = mpsc::channel(window);
    let mut client = ctx.grpc(0);
    let mut responses = client
        .publish_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let base = Instant::now();
    let budget = Budget::new(ctx.args.warmup(), ctx.args.duration());
    let warm = stream_phase(spec, &tx, &mut responses, budget, window, base, progress).await?;
    check_warmup(&warm)?;
    progress.reset();
    meter.start();
    let budget = Budget::new(ctx.args.messages, ctx.args.duration());
    let out = stream_phase(spec, &tx, &mut responses, budget, window, base, progress).await;
    meter.stop();
    drop(tx); // ends the stream
    out
}

/// Sends the budget's requests on the stream, `window` at a time, and reads
/// every response.
async fn stream_phase(
    spec: &Spec,
    tx: &mpsc::Sender<PublishRequest>,
    responses: &mut tonic::Streaming<PublishResponse>,
    budget: std::sync::Arc<Budget>,
    window: usize,
    base: Instant,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let hard = tokio::time::Instant::from_std(budget.hard_deadline());
    let counter = progress.counter();
    let mut out = Outcome::new(true);
    let mut outstanding = 0usize;
    loop {
        while outstanding < window {
            let Some(seq) = budget.take() else { break };
            // The send time travels in the request id, which Warren echoes.
            let id = format!("{seq}:{}", base.elapsed().as_nanos());
            tx.send(request(spec, id))
                .await
                .map_err(|_| anyhow::anyhow!("the publish stream closed"))?;
            outstanding += 1;
        }
        if outstanding == 0 {
            return Ok(out);
        }
        let response = match tokio::time::timeout_at(hard, responses.message()).await {
            Err(_) => anyhow::bail!("{outstanding} publishes unanswered at the hard deadline"),
            Ok(Err(status)) => anyhow::bail!("the publish stream failed: {status}"),
            Ok(Ok(None)) => {
                anyhow::bail!("Warren ended the publish stream with {outstanding} unanswered")
            }
            Ok(Ok(Some(response))) => response,
        };
        outstanding -= 1;
        counter.fetch_add(1, Ordering::Relaxed);
        if response.code != 0 {
            out.error(format!("code {}: {}", response.code, response.error));
            continue;
        }
        let sent_ns = response
            .request_id
            .split_once(':')
            .and_then(|(_, ns)| ns.parse::<u128>().ok());
        let Some(sent_ns) = sent_ns else {
            out.error(format!("unknown request id {:?}", response.request_id));
            continue;
        };
        let micros = base.elapsed().as_nanos().saturating_sub(sent_ns) / 1000;
        out.ok += 1;
        if let Some(h) = out.latency.as_mut() {
            h.saturating_record((micros as u64).max(1));
        }
    }
}

/// One confirm-mode channel with `--window` publishes unconfirmed.
pub async fn direct_stream(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let conn = broker::connect(&ctx.args.amqp_url, "warren-loadtest-direct").await?;
    let channel = broker::confirm_channel(&conn).await?;
    let window = ctx.args.window;
    let budget = Budget::new(ctx.args.warmup(), ctx.args.duration());
    check_warmup(&direct_stream_phase(spec, &channel, budget, window, progress).await)?;
    progress.reset();
    meter.start();
    let budget = Budget::new(ctx.args.messages, ctx.args.duration());
    let out = direct_stream_phase(spec, &channel, budget, window, progress).await;
    meter.stop();
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}

async fn direct_stream_phase(
    spec: &Spec,
    channel: &Channel,
    budget: std::sync::Arc<Budget>,
    window: usize,
    progress: &Progress,
) -> Outcome {
    let hard = tokio::time::Instant::from_std(budget.hard_deadline());
    let counter = progress.counter();
    let mut out = Outcome::new(true);
    let mut latency = histogram();
    let mut pending = FuturesUnordered::new();
    loop {
        while pending.len() < window {
            if budget.take().is_none() {
                break;
            }
            let (channel, body, queue) = (channel.clone(), spec.body.clone(), spec.queue.clone());
            // Not polled yet: FuturesUnordered polls new futures in push
            // order, so the publishes go out in order.
            pending.push(async move {
                let started = Instant::now();
                (started, publish_confirmed(&channel, &queue, &body).await)
            });
        }
        match tokio::time::timeout_at(hard, pending.next()).await {
            Ok(None) => break,
            Ok(Some((started, Ok(())))) => {
                out.ok += 1;
                crate::harness::record(&mut latency, started);
            }
            Ok(Some((_, Err(e)))) => out.error(e),
            Err(_) => {
                for _ in 0..pending.len() {
                    out.error("unconfirmed at the hard deadline");
                }
                break;
            }
        }
        counter.fetch_add(1, Ordering::Relaxed);
    }
    out.latency = Some(latency);
    out
}

/// `concurrency` callers of unary `Publish`.
pub async fn warren_unary(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
    concurrency: usize,
) -> anyhow::Result<Outcome> {
    let clients: Vec<_> = (0..concurrency).map(|w| ctx.grpc(w)).collect();
    let template = request(spec, String::new());
    let call = op(move |w| {
        let mut client = clients[w].clone();
        let request = template.clone();
        async move {
            client
                .publish(request)
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
    });
    closed_loop_phases(ctx, meter, progress, concurrency, call).await
}

/// `concurrency` tasks over `channels` confirm-mode channels, each task
/// publishing and awaiting its confirm before the next.
pub async fn direct_unary(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
    concurrency: usize,
    channels: usize,
) -> anyhow::Result<Outcome> {
    let conn = broker::connect(&ctx.args.amqp_url, "warren-loadtest-direct").await?;
    let mut chans = Vec::new();
    for _ in 0..channels.min(concurrency).max(1) {
        chans.push(broker::confirm_channel(&conn).await?);
    }
    let (queue, body) = (spec.queue.clone(), spec.body.clone());
    let call = op(move |w| {
        let channel = chans[w % chans.len()].clone();
        let (queue, body) = (queue.clone(), body.clone());
        async move { publish_confirmed(&channel, &queue, &body).await }
    });
    let out = closed_loop_phases(ctx, meter, progress, concurrency, call).await;
    let _ = conn.close(200, "done".into()).await;
    out
}
