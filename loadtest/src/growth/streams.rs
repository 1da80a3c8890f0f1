//! `--growth streams`: gRPC `Subscribe` streams opened in steps.
//!
//! The streams go over one HTTP/2 connection per [`PER_CONNECTION`] (as
//! many clients would), on `--growth-queues` queues of this run shared
//! round-robin (or one queue each), declared here and deleted afterwards.
//! Each step is held `--growth-hold` seconds, during which
//! `--growth-trickle` messages per second are published directly (lapin)
//! over the queues in use and acked through Warren as they arrive; then
//! Warren is sampled. At the end every stream is closed and, after
//! `--growth-settle` seconds, Warren is sampled once more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{connection, steps, Step};
use crate::cli::Args;
use crate::proto::SubscribeRequest;
use crate::scenarios::{Grpc, QueueType};
use crate::warren::Warren;
use crate::{broker, procfs};

/// Streams per gRPC connection.
pub const PER_CONNECTION: usize = 100;

/// Streams opened at once.
const OPENING: usize = 32;

/// Prefetch of every stream.
const PREFETCH: u32 = 10;

/// What the stream tasks share: deliveries counted, ids to ack.
struct Shared {
    delivered: AtomicU64,
    acks: mpsc::UnboundedSender<String>,
}

pub async fn run(
    args: &Args,
    warren: &Warren,
    amqp: &lapin::Connection,
) -> anyhow::Result<Vec<Step>> {
    let steps = steps(args, super::Growth::Streams);
    let most = steps.last().copied().unwrap_or(1);
    let queues = match args.growth_queues {
        0 => most,
        n => n.min(most),
    };
    let admin = amqp.create_channel().await?;
    let base = broker::unique("growth-streams", "q");
    let names: Vec<String> = (0..queues).map(|i| format!("{base}.{i}")).collect();
    let mut declared = 0;
    let mut out = vec![Step::sample("idle", 0, warren).await];
    let idle = out[0].rss_kib;
    eprintln!(
        "growth streams: steps {steps:?} over {queues} queue(s), trickle {} msg/s",
        args.growth_trickle
    );
    let acker = connection(args, warren).await?;
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acks = tokio::spawn(crate::scenarios::ack_as_they_come(acker, ack_rx));
    let shared = Arc::new(Shared {
        delivered: AtomicU64::new(0),
        acks: ack_tx,
    });
    let mut clients: Vec<Grpc> = Vec::new();
    let mut streams: Vec<JoinHandle<()>> = Vec::new();
    let publisher = amqp.create_channel().await?;
    let result = async {
        for &n in &steps {
            let used = n.min(queues);
            while declared < used {
                broker::declare(&admin, &names[declared], QueueType::Classic).await?;
                declared += 1;
            }
            while clients.len() < n.div_ceil(PER_CONNECTION) {
                clients.push(connection(args, warren).await?);
            }
            let started = Instant::now();
            let mut step = Step::default();
            let mut opening = FuturesUnordered::new();
            for i in streams.len()..n {
                let mut client = clients[i / PER_CONNECTION].clone();
                let request = SubscribeRequest {
                    queue: names[i % queues].clone(),
                    prefetch: PREFETCH,
                    ..Default::default()
                };
                opening.push(async move { client.subscribe(request).await });
                if opening.len() >= OPENING {
                    if let Some(opened) = opening.next().await {
                        keep(opened, &shared, &mut streams, &mut step);
                    }
                }
            }
            while let Some(opened) = opening.next().await {
                keep(opened, &shared, &mut streams, &mut step);
            }
            let open_s = started.elapsed().as_secs_f64();
            let consumers = consumers(&admin, &names[..used], n as u64).await;
            let before = (shared.delivered.load(Ordering::Relaxed), ticks(warren));
            let hold = Duration::from_secs_f64(args.growth_hold);
            trickle(&publisher, &names[..used], args.growth_trickle, hold).await;
            // The last deliveries of the trickle arrive just after it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let deliveries = shared.delivered.load(Ordering::Relaxed) - before.0;
            let cpu_s = match (before.1, ticks(warren)) {
                (Some(b), Some(a)) => Some((a - b) as f64 / procfs::clk_tck()),
                _ => None,
            };
            let mut sampled = Step::sample("step", streams.len(), warren)
                .await
                .against(idle);
            sampled.open_s = open_s;
            sampled.consumers = consumers;
            sampled.deliveries = deliveries;
            sampled.cpu_us_per_delivery = cpu_s
                .filter(|_| deliveries > 0)
                .map(|s| s * 1e6 / deliveries as f64);
            (sampled.errors, sampled.error) = (step.errors, step.error);
            eprintln!(
                "{n} streams: open in {open_s:.2} s, RSS {} KiB, {deliveries} deliveries",
                crate::report::count(sampled.rss_kib)
            );
            let failed = sampled.error.is_some();
            out.push(sampled);
            if failed {
                break;
            }
        }
        anyhow::Ok(())
    }
    .await;
    for stream in streams.drain(..) {
        stream.abort();
    }
    drop(clients);
    drop(shared);
    tokio::time::sleep(Duration::from_secs_f64(args.growth_settle)).await;
    out.push(Step::sample("after release", 0, warren).await.against(None));
    acks.abort();
    for name in &names[..declared] {
        let _ = broker::delete(&admin, name).await;
    }
    result?;
    Ok(out)
}

fn ticks(warren: &Warren) -> Option<u64> {
    warren.pid.and_then(procfs::cpu_ticks)
}

/// Keeps an opened stream reading (counting and acking) in a task of its own.
fn keep(
    opened: Result<tonic::Response<tonic::Streaming<crate::proto::Delivery>>, tonic::Status>,
    shared: &Arc<Shared>,
    streams: &mut Vec<JoinHandle<()>>,
    step: &mut Step,
) {
    let mut stream = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            step.failed(format!(
                "Subscribe: {:?}: {}",
                status.code(),
                status.message()
            ));
            return;
        }
    };
    let shared = shared.clone();
    streams.push(tokio::spawn(async move {
        while let Ok(Some(delivery)) = stream.message().await {
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            if shared.acks.send(delivery.delivery_id).is_err() {
                break;
            }
        }
    }));
}

/// Publishes `rate` messages per second for `hold`, round-robin over
/// `queues` (none: only waits).
async fn trickle(channel: &lapin::Channel, queues: &[String], rate: f64, hold: Duration) {
    if rate <= 0.0 || queues.is_empty() {
        tokio::time::sleep(hold).await;
        return;
    }
    let body = crate::scenarios::body(256);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = tokio::time::Instant::now() + hold;
    let mut i = 0usize;
    loop {
        let at = tick.tick().await;
        if at >= end {
            break;
        }
        let queue = queues[i % queues.len()].as_str();
        i += 1;
        // Not confirmed: the trickle only feeds the streams.
        let _ = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                Default::default(),
            )
            .await;
    }
}

/// Waits (up to 10 s) until the broker shows `expected` consumers on
/// `queues`; what it shows then.
async fn consumers(admin: &lapin::Channel, queues: &[String], expected: u64) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    loop {
        let mut total = 0u64;
        for name in queues {
            let q = admin
                .queue_declare(name.as_str().into(), passive, FieldTable::default())
                .await
                .ok()?;
            total += u64::from(q.consumer_count());
        }
        if total >= expected || Instant::now() >= deadline {
            return Some(total);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
