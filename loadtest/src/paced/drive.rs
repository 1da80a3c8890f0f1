//! The pacer and the four paced scenarios.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::report::{Measured, Row};
use crate::broker;
use crate::cli::Args;
use crate::harness::{histogram, record, Outcome, DRAIN};
use crate::procfs::{self, Meter};
use crate::proto::{CallRequest, Message, PublishRequest, ReplyRequest, SubscribeRequest};
use crate::scenarios::{ack_as_they_come, Grpc, Scenario};
use crate::warren::Warren;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one (scenario, rate) needs.
pub struct Setup<'a> {
    pub args: &'a Args,
    pub warren: &'a Warren,
    pub amqp: &'a lapin::Connection,
    pub grpc: Grpc,
    /// A fresh queue of this run.
    pub queue: String,
    pub body: Bytes,
    pub rate: f64,
}

impl Setup<'_> {
    /// Measured messages: `--messages` or `--duration` at the rate, fewer.
    fn messages(&self) -> u64 {
        let by_time = (self.rate * self.args.duration).ceil() as u64;
        by_time.min(self.args.messages).max(1)
    }

    /// Warm-up messages: half a second's worth, 10 at least.
    fn warmup(&self) -> u64 {
        ((self.rate * 0.5).ceil() as u64).max(10)
    }
}

/// Runs `scenario` at the setup's rate.
pub async fn run(scenario: Scenario, s: &Setup<'_>) -> Row {
    let measured = match scenario {
        Scenario::PublishUnary => requests(s, unary(s)).await,
        Scenario::PublishHttp => match http(s) {
            Ok(op) => requests(s, op).await,
            Err(e) => Err(e),
        },
        Scenario::Subscribe => subscribe(s).await,
        Scenario::Rpc => rpc(s).await,
        other => Err(anyhow::anyhow!("{} has no paced form", other.name())),
    };
    Row::new(scenario, s.body.len(), s.rate, measured)
}

/// One paced request: its sequence number and the instant it was due.
type Op = Arc<dyn Fn(u64, Instant) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Starts `op` once per tick at `rate`, `n` times, at most `concurrency`
/// outstanding (a tick past that waits, and the next ones burst to catch
/// up); with `latency`, records each from its due instant to its end.
async fn pace(rate: f64, n: u64, concurrency: usize, op: Op, latency: bool) -> Outcome {
    let total = Arc::new(Mutex::new(Outcome::new(latency)));
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    for seq in 0..n {
        let due = tick.tick().await.into_std();
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (op, total) = (op.clone(), total.clone());
        tasks.spawn(async move {
            let result = tokio::time::timeout(REQUEST_TIMEOUT, op(seq, due)).await;
            let mut t = total.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(Ok(())) => {
                    t.ok += 1;
                    if let Some(h) = t.latency.as_mut() {
                        record(h, due);
                    }
                }
                Ok(Err(e)) => t.error(e),
                Err(_) => t.error(format!("no answer within {REQUEST_TIMEOUT:?}")),
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut t = total.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::replace(&mut *t, Outcome::new(false))
}

/// Warren's CPU ticks and context switches now.
fn counters(warren: &Warren) -> (Option<u64>, Option<u64>) {
    let pid = warren.pid;
    (
        pid.and_then(procfs::cpu_ticks),
        pid.and_then(procfs::context_switches),
    )
}

/// Measures from `before` to now.
fn measured(
    warren: &Warren,
    meter: &Meter,
    before: (Option<u64>, Option<u64>),
    out: Outcome,
) -> Measured {
    let after = counters(warren);
    Measured {
        out,
        seconds: meter.elapsed.as_secs_f64(),
        cpu_s: meter.cpu[0],
        switches: before.1.zip(after.1).map(|(b, a)| a.saturating_sub(b)),
    }
}

/// A scenario whose request ends when Warren answers: warm-up, then the
/// measured phase.
async fn requests(s: &Setup<'_>, op: Op) -> anyhow::Result<Measured> {
    let c = s.args.concurrency;
    let warm = pace(s.rate, s.warmup(), c, op.clone(), true).await;
    crate::scenarios::check_warmup(&warm)?;
    let mut meter = Meter::new(s.warren.pid, None);
    let before = counters(s.warren);
    meter.start();
    let out = pace(s.rate, s.messages(), c, op, true).await;
    meter.stop();
    Ok(measured(s.warren, &meter, before, out))
}

fn status(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// gRPC `Publish` to the queue.
fn unary(s: &Setup<'_>) -> Op {
    let client = s.grpc.clone();
    let request = PublishRequest {
        routing_key: s.queue.clone(),
        message: Some(Message {
            body: s.body.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Arc::new(move |_, _| {
        let (mut client, request) = (client.clone(), request.clone());
        Box::pin(async move { client.publish(request).await.map(|_| ()).map_err(status) })
    })
}

/// `POST /v1/publish/amq.default/<queue>` with the raw body.
fn http(s: &Setup<'_>) -> anyhow::Result<Op> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(s.args.concurrency)
        .tcp_nodelay(true)
        .build()?;
    let url = format!("{}/v1/publish/amq.default/{}", s.warren.http, s.queue);
    let (body, token) = (s.body.clone(), s.args.token.clone());
    Ok(Arc::new(move |_, _| {
        let mut request = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body.clone());
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        Box::pin(async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            let answer = response.bytes().await.map_err(|e| e.to_string())?;
            if status != reqwest::StatusCode::OK {
                return Err(format!("{status}: {}", String::from_utf8_lossy(&answer)));
            }
            Ok(())
        })
    }))
}

/// Deliveries received over a Subscribe: count and latency (from the due
/// instant in each message id).
struct Received {
    count: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

impl Received {
    /// Waits until `n` have arrived, at most [`DRAIN`].
    async fn wait_for(&self, n: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + DRAIN;
        while self.count.load(Ordering::Relaxed) < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {n} deliveries within {DRAIN:?}",
                self.count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// Published directly at the rate, delivered by Warren over `Subscribe`,
/// acked through Warren.
async fn subscribe(s: &Setup<'_>) -> anyhow::Result<Measured> {
    let mut client = s.grpc.clone();
    let request = SubscribeRequest {
        queue: s.queue.clone(),
        prefetch: u32::from(s.args.prefetch),
        ..Default::default()
    };
    let mut stream = client
        .subscribe(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_as_they_come(s.grpc.clone(), ack_rx));
    let base = Instant::now();
    let received = Arc::new(Received {
        count: AtomicU64::new(0),
        latency: Mutex::new(histogram()),
    });
    let reader = tokio::spawn({
        let received = received.clone();
        async move {
            while let Ok(Some(d)) = stream.message().await {
                let due = d
                    .message
                    .as_ref()
                    .and_then(|m| m.message_id.parse::<u128>().ok());
                if let Some(due) = due {
                    let us = base.elapsed().as_nanos().saturating_sub(due) / 1000;
                    let mut h = received.latency.lock().unwrap_or_else(|e| e.into_inner());
                    h.saturating_record((us as u64).max(1));
                }
                received.count.fetch_add(1, Ordering::Relaxed);
                if ack_tx.send(d.delivery_id).is_err() {
                    break;
                }
            }
        }
    });
    let channel = broker::confirm_channel(s.amqp).await?;
    let (queue, body) = (s.queue.clone(), s.body.clone());
    let op: Op = Arc::new(move |_, due| {
        let (channel, queue, body) = (channel.clone(), queue.clone(), body.clone());
        let id = due.saturating_duration_since(base).as_nanos().to_string();
        Box::pin(async move {
            let properties = broker::persistent().with_message_id(id.into());
            broker::publish_stored(&channel, "", &queue, &body, properties).await
        })
    });
    let c = s.args.concurrency;
    let result = async {
        let (warmup, n) = (s.warmup(), s.messages());
        let warm = pace(s.rate, warmup, c, op.clone(), false).await;
        crate::scenarios::check_warmup(&warm)?;
        received.wait_for(warmup).await?;
        received
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reset();
        let mut meter = Meter::new(s.warren.pid, None);
        let before = counters(s.warren);
        meter.start();
        let mut out = pace(s.rate, n, c, op, false).await;
        let arrived = received.wait_for(warmup + out.ok).await;
        meter.stop();
        let got = received
            .count
            .load(Ordering::Relaxed)
            .saturating_sub(warmup);
        if let Err(e) = arrived {
            out.error(e);
        }
        out.ok = got.min(out.ok);
        out.latency = Some(
            received
                .latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        );
        anyhow::Ok(measured(s.warren, &meter, before, out))
    }
    .await;
    reader.abort();
    let _ = reader.await;
    // The reader held the ack sender: the acker ends once it has sent the rest.
    let acks = tokio::time::timeout(Duration::from_secs(5), acker).await;
    let mut m = result?;
    if let Ok(Ok(acks)) = acks {
        if let Some(e) = acks.first_error {
            m.out.error(e);
        }
    }
    Ok(m)
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(status(s))
}

/// gRPC `Call`, answered by a responder of this process on `Subscribe` +
/// `Reply` through Warren.
async fn rpc(s: &Setup<'_>) -> anyhow::Result<Measured> {
    let mut client = s.grpc.clone();
    let prefetch = (s.args.concurrency * 2).clamp(1, 10_000) as u32;
    let request = SubscribeRequest {
        queue: s.queue.clone(),
        prefetch,
        ..Default::default()
    };
    let mut requests_in = client
        .subscribe(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let replier = s.grpc.clone();
    let responder = tokio::spawn(async move {
        while let Ok(Some(d)) = requests_in.message().await {
            let mut replier = replier.clone();
            tokio::spawn(async move {
                let body = d.message.map(|m| m.body).unwrap_or_default();
                let reply = ReplyRequest {
                    delivery_id: d.delivery_id,
                    message: Some(Message {
                        body,
                        ..Default::default()
                    }),
                };
                if let Err(e) = replier.reply(reply).await {
                    eprintln!("note: reply failed: {}", status(e));
                }
            });
        }
    });
    let client = s.grpc.clone();
    let request = CallRequest {
        timeout_ms: REQUEST_TIMEOUT.as_millis() as u32,
        routing_key: s.queue.clone(),
        message: Some(Message {
            body: s.body.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let size = s.body.len();
    let op: Op = Arc::new(move |_, _| {
        let (mut client, request) = (client.clone(), request.clone());
        Box::pin(async move {
            let reply = client.call(request).await.map_err(status)?;
            let got = reply.get_ref().message.as_ref().map_or(0, |m| m.body.len());
            if got != size {
                return Err(format!("reply of {got} bytes to a request of {size}"));
            }
            Ok(())
        })
    });
    let result = requests(s, op).await;
    responder.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paces_every_message_at_the_rate() {
        let op: Op = Arc::new(|_, _| Box::pin(async { Ok(()) }));
        let started = tokio::time::Instant::now();
        let out = pace(100.0, 50, 4, op, true).await;
        assert_eq!((out.ok, out.errors), (50, 0));
        // 50 ticks 10 ms apart, the first at once.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(490) && took < Duration::from_millis(900),
            "{took:?}"
        );
    }
}
