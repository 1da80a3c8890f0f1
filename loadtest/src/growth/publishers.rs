//! `--growth publishers`: named publishers in steps.
//!
//! At a step of N, one unary `Publish` (64 B, confirmed) for each of the
//! names 0..N with `x-warren-publisher: <name>`, [`CALLERS`] at a time over
//! [`CONNECTIONS`] HTTP/2 connections, to a queue of this run; the names of
//! earlier steps are used again, so none of them idles out mid-run. Warren
//! holds one channel per name until `amqp.idle_timeout` (5 s in this mode)
//! passes unused: after the last step the run waits until the channels are
//! back to what they were before the first step (at most two minutes), then
//! `--growth-settle` seconds, and samples once more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use tonic::metadata::MetadataValue;

use super::{connection, steps, Step};
use crate::broker;
use crate::cli::Args;
use crate::proto::{Message, PublishRequest};
use crate::scenarios::{Grpc, QueueType};
use crate::warren::Warren;

/// Publishes under way at once.
const CALLERS: usize = 64;

/// HTTP/2 connections they share.
const CONNECTIONS: usize = 4;

/// Longest wait for Warren to close the idle channels.
const RELEASE_WITHIN: Duration = Duration::from_secs(120);

pub async fn run(
    args: &Args,
    warren: &Warren,
    amqp: &lapin::Connection,
) -> anyhow::Result<Vec<Step>> {
    let steps = steps(args, super::Growth::Publishers);
    let admin = amqp.create_channel().await?;
    let queue = broker::unique("growth-publishers", "q");
    broker::declare(&admin, &queue, QueueType::Classic).await?;
    let run_id = queue.rsplit('.').next().unwrap_or("run").to_owned();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(connection(args, warren).await?);
    }
    let mut out = vec![Step::sample("idle", 0, warren).await];
    let (idle, idle_channels) = (out[0].rss_kib, out[0].channels);
    eprintln!("growth publishers: steps {steps:?}");
    let template = Arc::new(PublishRequest {
        routing_key: queue.clone(),
        message: Some(Message {
            body: crate::scenarios::body(64),
            ..Default::default()
        }),
        ..Default::default()
    });
    for &n in &steps {
        let started = Instant::now();
        let results: Vec<Result<(), String>> = stream::iter(0..n)
            .map(|i| {
                let client = clients[i % clients.len()].clone();
                let name = format!("growth-{run_id}-{i}");
                publish(client, template.clone(), name)
            })
            .buffer_unordered(CALLERS)
            .collect()
            .await;
        let open_s = started.elapsed().as_secs_f64();
        let mut step = Step::sample("step", n, warren).await.against(idle);
        step.open_s = open_s;
        for e in results.into_iter().filter_map(Result::err) {
            step.failed(e);
        }
        eprintln!(
            "{n} publishers: {open_s:.2} s, RSS {} KiB, {} channels",
            step.rss_kib.map_or("-".into(), |k| k.to_string()),
            step.channels.map_or("-".into(), |c| c.to_string())
        );
        out.push(step);
    }
    let waited = Instant::now();
    eprintln!("waiting for Warren to close the idle publisher channels...");
    let http = reqwest::Client::new();
    while waited.elapsed() < RELEASE_WITHIN {
        let open = warren.metric(&http, "warren_amqp_channels").await.ok();
        if open.zip(idle_channels).is_none_or(|(o, i)| o as u64 <= i) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let released_s = waited.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.growth_settle)).await;
    let mut after = Step::sample("after release", 0, warren).await;
    after.open_s = released_s;
    if after
        .channels
        .zip(idle_channels)
        .is_some_and(|(a, i)| a > i)
    {
        after.failed(format!(
            "channels not back to {} within {RELEASE_WITHIN:?}",
            idle_channels.unwrap_or(0)
        ));
    }
    out.push(after);
    let _ = broker::delete(&admin, &queue).await;
    Ok(out)
}

/// One confirmed publish as the named publisher `name`.
async fn publish(
    mut client: Grpc,
    template: Arc<PublishRequest>,
    name: String,
) -> Result<(), String> {
    let mut request = tonic::Request::new(PublishRequest::clone(&template));
    let value: MetadataValue<_> = name.parse().map_err(|_| format!("bad name {name}"))?;
    request.metadata_mut().insert("x-warren-publisher", value);
    client
        .publish(request)
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}
