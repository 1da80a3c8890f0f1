//! `--spool-compare`: the spool beside confirmed publishing, in one run.
//!
//! Warren reaches the broker through a TCP relay of this process, so the
//! broker can go away for Warren alone. Each round: unary gRPC publishes
//! from `--concurrency` callers while the broker is there (confirmed), the
//! same with the relay cut (each answered `spooled`: fsynced into the
//! spool), then the relay restored and the time until the forwarder has
//! emptied the spool (the forwarding rate).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::cli::Args;
use crate::harness::{closed_loop, Budget, Op};
use crate::proto::{Message, PublishRequest};
use crate::scenarios::{Grpc, QueueType};
use crate::warren::Warren;
use crate::{broker, grpc_client, machine, WarrenInfo};

/// The spool on, in a directory of this run, besides `env`.
pub fn env(env: &[(String, String)]) -> Vec<(String, String)> {
    let dir = std::env::temp_dir().join(broker::unique("spool", "dir"));
    let mut env = env.to_vec();
    env.push(("WARREN__SPOOL__ENABLED".into(), "true".into()));
    env.push(("WARREN__SPOOL__DIR".into(), dir.display().to_string()));
    env
}

/// A relay to the broker that can be cut (every connection closed, new ones
/// refused) and restored.
pub struct Relay {
    pub url: String,
    up: Arc<watch::Sender<bool>>,
}

impl Relay {
    /// Relays to the broker of `amqp_url` (on 127.0.0.1).
    pub async fn start(amqp_url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(amqp_url)?;
        let target = format!("127.0.0.1:{}", parsed.port().unwrap_or(5672));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut url = parsed.clone();
        url.set_port(Some(addr.port()))
            .map_err(|_| anyhow::anyhow!("cannot set the relay's port in {amqp_url}"))?;
        let (up, _) = watch::channel(true);
        let up = Arc::new(up);
        let relay = up.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = relay.subscribe();
                if !*state.borrow() {
                    continue; // dropped: refused while cut
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Ok(Self {
            url: url.to_string(),
            up,
        })
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// One round's figures.
#[derive(Serialize)]
pub struct Round {
    confirmed_per_s: f64,
    spooled_per_s: f64,
    /// spooled / confirmed.
    ratio: f64,
    /// Messages forwarded per second once Warren was ready again.
    forwarded_per_s: f64,
    spooled: u64,
    /// Spooled messages per durable commit (fsync).
    per_commit: f64,
    /// From the relay restored to Warren ready again, in seconds.
    reconnect_s: f64,
    errors: Vec<String>,
}

/// Runs `--spool-rounds` rounds; whether they went through.
pub async fn run(
    args: &Args,
    warren: &mut Warren,
    info: &mut WarrenInfo,
    amqp: &lapin::Connection,
    relay: &Relay,
) -> anyhow::Result<bool> {
    let measured = rounds(args, warren, amqp, relay);
    let measured = tokio::select! {
        rows = measured => rows,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    info.exit = warren.stop().await;
    let rows = measured?;
    println!("{}", table(&rows));
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "machine": machine(),
            "command": std::env::args().collect::<Vec<_>>(),
            "spool_compare": rows,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(rows.iter().all(|r| r.errors.is_empty()))
}

async fn rounds(
    args: &Args,
    warren: &Warren,
    amqp: &lapin::Connection,
    relay: &Relay,
) -> anyhow::Result<Vec<Round>> {
    let channel = amqp.create_channel().await?;
    let queue = broker::unique("spool", "warren");
    let kind = args
        .queue_type
        .first()
        .copied()
        .unwrap_or(QueueType::Classic);
    broker::declare(&channel, &queue, kind).await?;
    let grpc = grpc_client(args, warren).await?;
    let http = reqwest::Client::new();
    let concurrency = args.concurrency;
    let size = args.size.first().copied().unwrap_or(256);
    let mut rows = Vec::new();
    for round in 0..args.spool_rounds {
        eprintln!("spool round {}/{}", round + 1, args.spool_rounds);
        relay.set(true);
        ready(&http, warren, true).await?;
        let (confirmed, mut errors) = publish(&grpc, &queue, size, concurrency, args, false).await;
        relay.set(false);
        ready(&http, warren, false).await?;
        let commits = warren.metric(&http, "warren_spool_commits").await?;
        let (spooled, spool_errors) = publish(&grpc, &queue, size, concurrency, args, true).await;
        errors.extend(spool_errors);
        let commits = warren.metric(&http, "warren_spool_commits").await? - commits;
        let waiting = depth(&http, warren).await?;
        relay.set(true);
        let restored = Instant::now();
        // Warren reconnects on its own backoff (up to 5 s after a long
        // outage); forwarding is timed from when it is ready again.
        ready(&http, warren, true).await?;
        let reconnect_s = restored.elapsed().as_secs_f64();
        let back = Instant::now();
        loop {
            if depth(&http, warren).await? == 0 {
                break;
            }
            if back.elapsed() > Duration::from_secs(600) {
                bail!("the spool did not drain in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let forwarded_per_s = waiting as f64 / back.elapsed().as_secs_f64();
        rows.push(Round {
            confirmed_per_s: confirmed,
            spooled_per_s: spooled,
            ratio: spooled / confirmed,
            forwarded_per_s,
            spooled: waiting,
            reconnect_s,
            per_commit: waiting as f64 / commits.max(1.0),
            errors,
        });
        channel
            .queue_purge(queue.as_str().into(), Default::default())
            .await?;
    }
    broker::delete(&channel, &queue).await?;
    Ok(rows)
}

/// `--messages` unary publishes from `concurrency` callers; their rate, and
/// the errors (a publish answered other than expected is one).
async fn publish(
    grpc: &Grpc,
    queue: &str,
    size: usize,
    concurrency: usize,
    args: &Args,
    spool: bool,
) -> (f64, Vec<String>) {
    let template = PublishRequest {
        routing_key: queue.to_owned(),
        message: Some(Message {
            body: vec![b'x'; size].into(),
            ..Default::default()
        }),
        allow_spool: Some(spool),
        ..Default::default()
    };
    let clients: Vec<Grpc> = (0..concurrency).map(|_| grpc.clone()).collect();
    let call: Op = Arc::new(move |w| {
        let mut client = clients[w].clone();
        let request = template.clone();
        Box::pin(async move {
            let answer = client
                .publish(request)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            if answer.spooled != spool {
                return Err(format!("spooled = {}, expected {spool}", answer.spooled));
            }
            Ok(())
        })
    });
    let budget = Budget::new(args.messages, Duration::from_secs(600));
    let started = Instant::now();
    let outcome = closed_loop(concurrency, budget, Arc::new(AtomicU64::new(0)), call).await;
    let rate = outcome.ok as f64 / started.elapsed().as_secs_f64();
    let errors = match outcome.first_error {
        Some(first) => vec![format!("{} failed, the first: {first}", outcome.errors)],
        None => Vec::new(),
    };
    (rate, errors)
}

/// Waits until `/readyz` says `up` (the broker there or not).
async fn ready(http: &reqwest::Client, warren: &Warren, up: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let status = http
            .get(format!("{}/readyz", warren.http))
            .send()
            .await?
            .status();
        if status.is_success() == up {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "/readyz did not become {} in 60 s",
                if up { "200" } else { "503" }
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn depth(http: &reqwest::Client, warren: &Warren) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{}/v1/spool", warren.http))
        .send()
        .await?
        .text()
        .await?;
    let state: serde_json::Value = serde_json::from_str(&text)?;
    state["messages"]
        .as_u64()
        .context("GET /v1/spool: is Warren's spool on?")
}

fn table(rows: &[Round]) -> String {
    let mut out = String::from(
        "round  confirmed/s  spooled/s  spooled/confirmed  per fsync  reconnect s  forwarded/s\n",
    );
    for (i, r) in rows.iter().enumerate() {
        out += &format!(
            "{:>5}  {:>11.0}  {:>9.0}  {:>17.2}  {:>9.1}  {:>11.1}  {:>11.0}\n",
            i + 1,
            r.confirmed_per_s,
            r.spooled_per_s,
            r.ratio,
            r.per_commit,
            r.reconnect_s,
            r.forwarded_per_s,
        );
        for e in &r.errors {
            out += &format!("       error: {e}\n");
        }
    }
    let mut ratios: Vec<f64> = rows.iter().map(|r| r.ratio).collect();
    ratios.sort_by(f64::total_cmp);
    if let Some(median) = ratios.get(ratios.len() / 2) {
        out += &format!("median spooled/confirmed: {median:.2}\n");
    }
    out
}
