//! The scenarios, their targets, and what each run of one gets.
//!
//! Every scenario runs against Warren and against RabbitMQ directly (plain
//! lapin doing the same work), each on a fresh queue. A run is a warm-up
//! phase and a measured phase, each bounded by a message count and a time.

mod http;
mod publish;
mod rpc;
mod subscribe;

pub use http::mgmt_available;
pub use subscribe::ack_as_they_come;

use std::sync::Arc;

use bytes::Bytes;
use clap::ValueEnum;
use serde::Serialize;

use crate::cli::Args;
use crate::harness::{closed_loop, Budget, Op, Outcome, Progress};
use crate::procfs::Meter;
use crate::proto::bus_client::BusClient;

/// A scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    PublishStream,
    PublishUnary,
    PublishHttp,
    Subscribe,
    Rpc,
    #[serde(rename = "latency-1")]
    Latency1,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 6] = [
        Scenario::PublishStream,
        Scenario::PublishUnary,
        Scenario::PublishHttp,
        Scenario::Subscribe,
        Scenario::Rpc,
        Scenario::Latency1,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::PublishStream => "publish-stream",
            Scenario::PublishUnary => "publish-unary",
            Scenario::PublishHttp => "publish-http",
            Scenario::Subscribe => "subscribe",
            Scenario::Rpc => "rpc",
            Scenario::Latency1 => "latency-1",
        }
    }

    /// What it is compared on: the direct client first (the baseline).
    pub fn targets(self) -> &'static [Target] {
        match self {
            Scenario::PublishHttp => &[
                Target::Direct,
                Target::Warren,
                Target::WarrenJson,
                Target::WarrenBatch,
                Target::MgmtApi,
            ],
            Scenario::Subscribe => &[Target::Direct, Target::Warren, Target::WarrenStreaming],
            _ => &[Target::Direct, Target::Warren],
        }
    }
}

/// Who does the work.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Warren, over gRPC (or HTTP for publish-http).
    Warren,
    /// lapin straight to the broker.
    Direct,
    /// RabbitMQ's management HTTP API (publish-http only).
    MgmtApi,
    /// Warren's StreamingSubscribe, acks in the stream (subscribe only).
    WarrenStreaming,
    /// Warren's JSON envelope publish, `POST /v1/publish` (publish-http only).
    WarrenJson,
    /// Warren's batch publish, `POST /v1/publish/batch` (publish-http only).
    WarrenBatch,
}

impl Target {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Warren => "warren",
            Target::Direct => "direct",
            Target::MgmtApi => "mgmt-api",
            Target::WarrenStreaming => "warren-streaming",
            Target::WarrenJson => "warren-json",
            Target::WarrenBatch => "warren-batch",
        }
    }

    /// Whether Warren does the work (its CPU and RSS are measured).
    pub fn is_warren(self) -> bool {
        matches!(
            self,
            Target::Warren | Target::WarrenStreaming | Target::WarrenJson | Target::WarrenBatch
        )
    }
}

/// A RabbitMQ queue type.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// A gRPC client of Warren that sends the `--token`, if any.
pub type Grpc = BusClient<tonic::codegen::InterceptedService<tonic::transport::Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    /// The interceptor for `token` (none: calls go as they are).
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        Ok(Self(
            token
                .map(|t| format!("Bearer {t}").parse())
                .transpose()
                .map_err(|_| anyhow::anyhow!("--token must be visible ASCII"))?,
        ))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// What all runs share.
pub struct Ctx {
    /// The options.
    pub args: Args,
    /// The load test's own broker connection (pre-fill, responders, admin).
    pub amqp: lapin::Connection,
    /// gRPC clients, one per HTTP/2 connection.
    pub grpc: Vec<Grpc>,
    /// Warren's HTTP base URL.
    pub warren_http: String,
}

impl Ctx {
    /// The gRPC client for caller `i`.
    pub fn grpc(&self, i: usize) -> Grpc {
        self.grpc[i % self.grpc.len()].clone()
    }
}

/// One run: a scenario against a target on its own fresh queue.
pub struct Spec {
    pub scenario: Scenario,
    pub target: Target,
    pub queue_type: QueueType,
    /// The queue (for rpc: the responder's request queue).
    pub queue: String,
    /// The message body, `size` bytes.
    pub body: Bytes,
}

/// A body of `size` bytes (not all one value, not compressible to nothing).
pub fn body(size: usize) -> Bytes {
    (0..size)
        .map(|i| b"warren-loadtest-"[i % 16] ^ (i / 16 % 7) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Runs `spec`: warm-up, then the measured phase between `meter.start()` and
/// `meter.stop()`.
pub async fn run(
    ctx: &Ctx,
    spec: &Spec,
    meter: &mut Meter,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let c = ctx.args.concurrency;
    match (spec.scenario, spec.target) {
        (Scenario::PublishStream, Target::Warren) => {
            publish::warren_stream(ctx, spec, meter, progress).await
        }
        (Scenario::PublishStream, Target::Direct) => {
            publish::direct_stream(ctx, spec, meter, progress).await
        }
        (Scenario::PublishUnary, Target::Warren) => {
            publish::warren_unary(ctx, spec, meter, progress, c).await
        }
        (Scenario::PublishUnary | Scenario::PublishHttp, Target::Direct) => {
            publish::direct_unary(ctx, spec, meter, progress, c, publish::DIRECT_CHANNELS).await
        }
        (Scenario::PublishHttp, Target::Warren) => http::warren(ctx, spec, meter, progress).await,
        (Scenario::PublishHttp, Target::WarrenJson) => {
            http::warren_json(ctx, spec, meter, progress).await
        }
        (Scenario::PublishHttp, Target::WarrenBatch) => {
            http::warren_batch(ctx, spec, meter, progress).await
        }
        (Scenario::PublishHttp, Target::MgmtApi) => http::mgmt(ctx, spec, meter, progress).await,
        (Scenario::Subscribe, Target::Warren) => {
            subscribe::warren(ctx, spec, meter, progress).await
        }
        (Scenario::Subscribe, Target::WarrenStreaming) => {
            subscribe::warren_streaming(ctx, spec, meter, progress).await
        }
        (Scenario::Subscribe, Target::Direct) => {
            subscribe::direct(ctx, spec, meter, progress).await
        }
        (Scenario::Rpc, Target::Warren) => rpc::warren(ctx, spec, meter, progress).await,
        (Scenario::Rpc, Target::Direct) => rpc::direct(ctx, spec, meter, progress).await,
        (Scenario::Latency1, Target::Warren) => {
            publish::warren_unary(ctx, spec, meter, progress, 1).await
        }
        (Scenario::Latency1, Target::Direct) => {
            publish::direct_unary(ctx, spec, meter, progress, 1, 1).await
        }
        (s, t) => anyhow::bail!("{} has no {} target", s.name(), t.name()),
    }
}

/// Warm-up then measurement of `workers` closed-loop callers doing `op`.
pub async fn closed_loop_phases(
    ctx: &Ctx,
    meter: &mut Meter,
    progress: &Progress,
    workers: usize,
    op: Op,
) -> anyhow::Result<Outcome> {
    phases(ctx, meter, progress, |budget| {
        closed_loop(workers, budget, progress.counter(), op.clone())
    })
    .await
}

/// A warm-up of `run` (when `--warmup` asks for one), then `run` measured
/// between `meter.start()` and `meter.stop()`, each with its own budget.
pub async fn phases<F, Fut>(
    ctx: &Ctx,
    meter: &mut Meter,
    progress: &Progress,
    run: F,
) -> anyhow::Result<Outcome>
where
    F: Fn(Arc<Budget>) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let warmup = ctx.args.warmup();
    if warmup > 0 {
        check_warmup(&run(Budget::new(warmup, ctx.args.duration())).await)?;
    }
    progress.reset();
    meter.start();
    let out = run(Budget::new(ctx.args.messages, ctx.args.duration())).await;
    meter.stop();
    Ok(out)
}

/// Stops a run whose warm-up got nothing through (a warm-up of 0 messages
/// is fine).
pub fn check_warmup(warm: &Outcome) -> anyhow::Result<()> {
    if warm.ok == 0 && warm.errors > 0 {
        anyhow::bail!(
            "the warm-up got nothing through: {}",
            warm.first_error
                .as_deref()
                .unwrap_or("no message completed in time")
        );
    }
    Ok(())
}

/// A closed-loop op from a closure, boxed.
pub fn op<F, Fut>(f: F) -> Op
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |w| Box::pin(f(w)))
}
