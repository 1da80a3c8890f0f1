//! Command-line options of `warren-loadtest`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::growth::Growth;
use crate::scenarios::{QueueType, Scenario, Target};

/// Load-tests Warren against the broker it bridges to.
///
/// Each scenario runs against Warren (gRPC or HTTP) and, in the same run,
/// against RabbitMQ directly with lapin doing the same work (same queue type,
/// message size, persistence and publisher confirms), then prints one table.
/// Every run is bounded by --messages and --duration, whichever comes first.
/// Only 127.0.0.1 is ever targeted.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
pub struct Args {
    /// Scenario to run; repeatable. `all` runs every one.
    #[arg(long = "scenario", value_enum, default_values_t = [ScenarioArg::All])]
    pub scenarios: Vec<ScenarioArg>,
    /// Targets to run (default: every target of each scenario).
    #[arg(long = "target", value_enum, value_delimiter = ',')]
    pub targets: Vec<Target>,
    /// Queue type(s); a list such as `classic,quorum` runs each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "classic")]
    pub queue_type: Vec<QueueType>,
    /// Message body size(s) in bytes, 64 to 65536; `64,4k,64k` runs each.
    #[arg(long, value_delimiter = ',', default_value = "1024", value_parser = parse_size)]
    pub size: Vec<usize>,
    /// Measured messages per scenario and target (after the warm-up).
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Longest measured phase per scenario and target, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Warm-up messages before measuring (default: 2% of --messages, 50 to 1000).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Concurrent callers / connections (publish-unary, publish-http, rpc).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Outstanding requests on one publish stream (publish-stream).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Consumer prefetch (subscribe).
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// Deliveries per acknowledgement (subscribe).
    #[arg(long, default_value_t = 64)]
    pub ack_batch: usize,
    /// HTTP/2 connections the gRPC callers share.
    #[arg(long, default_value_t = 1)]
    pub grpc_connections: usize,
    /// Warren binary to start (ignored with --warren-url-*).
    #[arg(long, default_value = "target/release/warren")]
    pub warren_bin: PathBuf,
    /// Configuration file for the started Warren (`warren --config FILE`);
    /// default: Warren's own default (config/warren.toml when present).
    #[arg(long)]
    pub warren_config: Option<PathBuf>,
    /// Extra environment for the started Warren (repeatable), applied last:
    /// `--warren-env WARREN__AMQP__POOL_SIZE=1`, `--warren-env TOKIO_WORKER_THREADS=1`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub warren_env: Vec<(String, String)>,
    /// Bearer token sent with every request to Warren (gRPC metadata and HTTP
    /// header `authorization`), for a Warren with `auth.enabled`.
    #[arg(long)]
    pub token: Option<String>,
    /// Where the started Warren's output goes.
    #[arg(long, default_value = "target/warren-loadtest.warren.log")]
    pub warren_log: PathBuf,
    /// Target a running Warren's HTTP listener instead of starting one.
    #[arg(long, requires = "warren_url_grpc")]
    pub warren_url_http: Option<String>,
    /// Target a running Warren's gRPC listener instead of starting one.
    #[arg(long, requires = "warren_url_http")]
    pub warren_url_grpc: Option<String>,
    /// Pid of the running Warren (for CPU and RSS); without it they are not measured.
    #[arg(long, requires = "warren_url_http")]
    pub warren_pid: Option<u32>,
    /// The broker both Warren and the direct client use.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// RabbitMQ's management API (the mgmt-api peer of publish-http).
    #[arg(long, default_value = "http://127.0.0.1:15672")]
    pub mgmt_url: String,
    /// Management API user and password.
    #[arg(long, default_value = "guest:guest")]
    pub mgmt_auth: String,
    /// Before each run, wait up to this many seconds for other processes on
    /// the machine to use less than a fifth of a core.
    #[arg(long, default_value_t = 120)]
    pub quiet_wait: u64,
    /// Runs again (up to this many times) a run during which other processes
    /// used more than a quarter of a core; the least disturbed one is kept.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency distributions as an SVG chart.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Instead of the scenarios, measure scheduled publish: how late
    /// messages published with `delay_ms` arrive (see `--delays`).
    #[arg(long)]
    pub delay_precision: bool,
    /// Delays (whole seconds) that `--delay-precision` measures, all at once.
    #[arg(long, value_delimiter = ',', default_value = "1,10,60")]
    pub delays: Vec<u64>,
    /// Instead of the scenarios, measure an ordered group beside a plain
    /// quorum queue with the same prefetch (Warren started with
    /// `--warren-config loadtest/ordered.toml`).
    #[arg(long)]
    pub ordered_compare: bool,
    /// Instead of the scenarios, measure push delivery beside Subscribe +
    /// Ack (Warren started with `--warren-config loadtest/push.toml`; rounds
    /// from `--ordered-rounds`).
    #[arg(long)]
    pub push_compare: bool,
    /// Instead of the scenarios, measure the spool: unary publishes from
    /// `--concurrency` callers confirmed (broker there), then spooled (the
    /// broker cut off by a relay of this process), then the forwarding rate
    /// once it is back; `--spool-rounds` rounds of `--messages` each. Starts
    /// Warren with the spool on, in a temporary directory.
    #[arg(long)]
    pub spool_compare: bool,
    /// Rounds of `--spool-compare`.
    #[arg(long, default_value_t = 3)]
    pub spool_rounds: usize,
    /// The group `--ordered-compare` measures (in Warren's configuration).
    #[arg(long, default_value = "loadtest.ordered")]
    pub ordered_group: String,
    /// Its partitions (as configured).
    #[arg(long, default_value_t = 8)]
    pub ordered_partitions: u32,
    /// Keys the messages are spread over, round-robin.
    #[arg(long, default_value_t = 1000)]
    pub ordered_keys: u32,
    /// Rounds of both targets (alternating which goes first).
    #[arg(long, default_value_t = 4)]
    pub ordered_rounds: usize,
    /// Messages per delay for `--delay-precision`, spread over one second.
    #[arg(long, default_value_t = 20)]
    pub delay_messages: usize,
    /// Instead of the scenarios, measure how Warren's cost grows with open
    /// `Subscribe` streams, named publishers, or message sizes (see
    /// `--growth-steps`, `--growth-sizes`).
    #[arg(long, value_enum)]
    pub growth: Option<Growth>,
    /// Counts `--growth streams|publishers` steps through (default
    /// 1,10,100,500,1000,2000 streams; 1,10,100,1000,5000 publishers).
    #[arg(long, value_delimiter = ',')]
    pub growth_steps: Vec<usize>,
    /// Queues the streams of `--growth streams` share, round-robin (0: one
    /// queue per stream).
    #[arg(long, default_value_t = 16)]
    pub growth_queues: usize,
    /// Messages per second published over the queues while each step of
    /// `--growth streams` is held (0: idle streams).
    #[arg(long, default_value_t = 0.0)]
    pub growth_trickle: f64,
    /// How long a `--growth streams` step is held (and trickled to) before
    /// it is sampled again, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub growth_hold: f64,
    /// Seconds to wait after releasing everything before the last sample.
    #[arg(long, default_value_t = 5.0)]
    pub growth_settle: f64,
    /// Message sizes of `--growth sizes`, up to 64 MiB: `1k,64k,1m,4m,16m`.
    #[arg(long, value_delimiter = ',', default_value = "1k,64k,1m,4m,16m", value_parser = parse_big_size)]
    pub growth_sizes: Vec<usize>,
    /// Messages in flight at once in `--growth sizes` (callers, stream
    /// window, prefetch); a list runs each.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub growth_in_flight: Vec<usize>,
    /// Instead of the scenarios, send at these fixed rates (messages per
    /// second) through Warren: publish-unary, publish-http, subscribe and rpc
    /// (of those picked with `--scenario`), each for `--duration` seconds or
    /// `--messages`, whichever is fewer.
    #[arg(long, value_delimiter = ',')]
    pub paced: Vec<f64>,
}

/// A `--scenario` value.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioArg {
    All,
    PublishStream,
    PublishUnary,
    PublishHttp,
    Subscribe,
    Rpc,
    #[value(name = "latency-1")]
    Latency1,
}

impl Args {
    /// The scenarios to run, in a fixed order, without repeats.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let all = self.scenarios.contains(&ScenarioArg::All);
        Scenario::ALL
            .into_iter()
            .filter(|s| {
                all || self.scenarios.iter().any(|a| match a {
                    ScenarioArg::All => true,
                    ScenarioArg::PublishStream => *s == Scenario::PublishStream,
                    ScenarioArg::PublishUnary => *s == Scenario::PublishUnary,
                    ScenarioArg::PublishHttp => *s == Scenario::PublishHttp,
                    ScenarioArg::Subscribe => *s == Scenario::Subscribe,
                    ScenarioArg::Rpc => *s == Scenario::Rpc,
                    ScenarioArg::Latency1 => *s == Scenario::Latency1,
                })
            })
            .collect()
    }

    /// Whether `target` was selected.
    pub fn wants(&self, target: Target) -> bool {
        self.targets.is_empty() || self.targets.contains(&target)
    }

    /// Warm-up messages per scenario and target.
    pub fn warmup(&self) -> u64 {
        self.warmup
            .unwrap_or_else(|| (self.messages / 50).clamp(50, 1000))
    }

    /// The longest measured phase.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }

    /// Checks bounds and that every address is this machine.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.messages > 0, "--messages must be at least 1");
        anyhow::ensure!(self.duration > 0.0, "--duration must be positive");
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        anyhow::ensure!(self.window > 0, "--window must be at least 1");
        anyhow::ensure!(self.prefetch > 0, "--prefetch must be at least 1");
        anyhow::ensure!(self.ack_batch > 0, "--ack-batch must be at least 1");
        anyhow::ensure!(
            self.grpc_connections > 0,
            "--grpc-connections must be at least 1"
        );
        anyhow::ensure!(
            self.delays.iter().all(|d| (1..=3600).contains(d)),
            "--delays must be 1 to 3600 seconds each"
        );
        anyhow::ensure!(
            (1..=10_000).contains(&self.delay_messages),
            "--delay-messages must be 1 to 10000"
        );
        anyhow::ensure!(
            self.mgmt_auth.contains(':'),
            "--mgmt-auth must be USER:PASSWORD"
        );
        let modes = [
            self.growth.is_some(),
            !self.paced.is_empty(),
            self.delay_precision,
            self.push_compare,
            self.ordered_compare,
            self.spool_compare,
        ];
        let new_mode = self.growth.is_some() || !self.paced.is_empty();
        anyhow::ensure!(
            !new_mode || modes.iter().filter(|&&m| m).count() == 1,
            "--growth and --paced are modes of their own: not with each other or another mode"
        );
        anyhow::ensure!(
            self.paced.iter().all(|r| *r > 0.0 && *r <= 1_000_000.0),
            "--paced rates must be above 0 and at most 1000000"
        );
        anyhow::ensure!(
            self.growth_steps.iter().all(|&n| (1..=50_000).contains(&n)),
            "--growth-steps must be 1 to 50000 each"
        );
        anyhow::ensure!(
            self.growth_in_flight
                .iter()
                .all(|&n| (1..=256).contains(&n)),
            "--growth-in-flight must be 1 to 256 each"
        );
        anyhow::ensure!(
            self.growth_trickle >= 0.0 && self.growth_hold >= 0.0 && self.growth_settle >= 0.0,
            "--growth-trickle, --growth-hold and --growth-settle must not be negative"
        );
        let urls = [
            Some(&self.amqp_url),
            Some(&self.mgmt_url),
            self.warren_url_http.as_ref(),
            self.warren_url_grpc.as_ref(),
        ];
        for url in urls.into_iter().flatten() {
            loopback_only(url)?;
        }
        Ok(())
    }
}

/// Refuses any URL whose host is not 127.0.0.1 (or localhost).
pub fn loopback_only(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    match parsed.host_str() {
        Some("127.0.0.1" | "localhost") => Ok(()),
        other => anyhow::bail!(
            "{url}: the load test only sends traffic to 127.0.0.1 (host is {other:?})"
        ),
    }
}

/// Parses `KEY=VALUE`.
fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// Parses `4096`, `4k`, `4KiB`, `64k`: 64 bytes to 64 KiB.
fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (digits, factor) = match lower.trim_end_matches("ib").trim_end_matches('b') {
        d if d.ends_with('k') => (d.trim_end_matches('k').to_owned(), 1024),
        d => (d.to_owned(), 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes"))?;
    let n = n * factor;
    if !(64..=65536).contains(&n) {
        return Err(format!("{s:?}: sizes go from 64 B to 64 KiB"));
    }
    Ok(n)
}

/// Parses `512`, `1k`, `64KiB`, `1m`, `16MiB`: 1 byte to 64 MiB.
fn parse_big_size(s: &str) -> Result<usize, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, factor) = match digits.chars().last() {
        Some('k') => (&digits[..digits.len() - 1], 1024),
        Some('m') => (&digits[..digits.len() - 1], 1024 * 1024),
        _ => (digits, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes"))?;
    let n = n.saturating_mul(factor);
    if !(1..=64 * 1024 * 1024).contains(&n) {
        return Err(format!("{s:?}: sizes go from 1 B to 64 MiB"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert!(parse_size("63").is_err());
        assert!(parse_size("65537").is_err());
    }

    #[test]
    fn big_sizes() {
        assert_eq!(parse_big_size("1k"), Ok(1024));
        assert_eq!(parse_big_size("16m"), Ok(16 << 20));
        assert_eq!(parse_big_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_big_size("100"), Ok(100));
        assert!(parse_big_size("0").is_err());
        assert!(parse_big_size("65m").is_err());
        assert!(parse_big_size("x").is_err());
    }

    #[test]
    fn only_loopback() {
        assert!(loopback_only("http://127.0.0.1:5680").is_ok());
        assert!(loopback_only("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(loopback_only("http://10.0.0.1:5680").is_err());
        assert!(loopback_only("http://example.com").is_err());
    }
}
