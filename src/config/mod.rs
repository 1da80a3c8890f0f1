//! Configuration: typed, documented, validated.
//!
//! Layers, later wins: the defaults in this module's `Default` impls, the TOML
//! file (`--config`, else `config/warren.toml` when present), then environment
//! variables `WARREN__SECTION__KEY` (for example `WARREN__AMQP__URL`).

mod topology;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use topology::{Arguments, Binding, DestinationKind, Exchange, Queue, QueueKind, Topology};

/// The whole configuration of one Warren process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The broker and Warren's connections to it.
    pub amqp: Amqp,
    /// The HTTP listener (REST, Server-Sent Events, metrics, health).
    pub http: Listener,
    /// The gRPC listener.
    pub grpc: GrpcListener,
    /// Publishing.
    pub publish: Publish,
    /// Subscriptions.
    pub subscribe: Subscribe,
    /// Request/reply.
    pub rpc: Rpc,
    /// The circuit breaker in front of the broker.
    pub breaker: Breaker,
    /// Consumer retries (nack with requeue) and dead-lettering.
    pub retry: Retry,
    /// The dead-letter endpoints.
    pub dead_letters: DeadLetters,
    /// Logging.
    pub log: Log,
    /// Graceful shutdown.
    pub shutdown: Shutdown,
    /// Exchanges, queues and bindings declared at start-up.
    pub topology: Topology,
}

/// `[amqp]`: where the broker is and how Warren uses its connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Amqp {
    /// One broker URI, or several separated by commas (tried in order).
    pub url: String,
    /// Connections per role: publishing and consuming each get this many, so
    /// the broker's flow control on publishers never stalls consumers.
    pub pool_size: usize,
    /// Most channels Warren opens for publishers; past it a new publisher is
    /// refused with RESOURCE_EXHAUSTED.
    pub max_channels: usize,
    /// Channels shared by publishes that name no publisher.
    pub shared_publishers: usize,
    /// A named publisher's channel is closed after this long without use.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Limit on establishing one connection (TCP, TLS, AMQP handshake).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit on any other broker round trip (open a channel, declare, ...).
    #[serde(with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Heartbeat interval proposed to the broker, in seconds (0 disables).
    pub heartbeat: u16,
    /// Shown in the management UI as the connection's name prefix.
    pub connection_name: String,
}

impl Default for Amqp {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            pool_size: 2,
            max_channels: 1024,
            shared_publishers: 4,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            heartbeat: 30,
            connection_name: "warren".into(),
        }
    }
}

impl Amqp {
    /// The broker URIs in failover order.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect()
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listener {
    /// Address to listen on (`host:port`; port 0 picks a free port).
    pub listen: String,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5680".into(),
        }
    }
}

/// `[grpc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcListener {
    /// Address to listen on (`host:port`; port 0 picks a free port).
    pub listen: String,
}

impl Default for GrpcListener {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5681".into(),
        }
    }
}

/// `[publish]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Publish {
    /// Largest message body accepted, in bytes (413 / RESOURCE_EXHAUSTED past it).
    pub max_body_bytes: usize,
    /// Unconfirmed messages one publisher channel may have in flight.
    pub max_in_flight: usize,
    /// Requests one `PublishStream` may have awaiting their confirms.
    pub stream_window: usize,
    /// How long to wait for the broker's confirm of one message.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// How long a known exchange is trusted before it is checked again.
    #[serde(with = "humantime_serde")]
    pub exchange_cache_ttl: Duration,
    /// How long a publish caught by a broker fault (connection lost, channel
    /// closed) is retried, with exponential backoff and jitter, before it
    /// fails with UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub retry_budget: Duration,
}

impl Default for Publish {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_in_flight: 4096,
            stream_window: 1024,
            confirm_timeout: Duration::from_secs(30),
            exchange_cache_ttl: Duration::from_secs(30),
            retry_budget: Duration::from_secs(10),
        }
    }
}

/// `[subscribe]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Subscribe {
    /// Prefetch used when a subscription asks for 0.
    pub default_prefetch: u16,
    /// Largest prefetch a subscription may ask for.
    pub max_prefetch: u16,
    /// Interval of keep-alive comments on idle Server-Sent Event streams.
    #[serde(with = "humantime_serde")]
    pub keepalive: Duration,
    /// Most subscriptions open at once (each has a channel); past it a new
    /// one is refused with RESOURCE_EXHAUSTED.
    pub max_subscriptions: usize,
}

impl Default for Subscribe {
    fn default() -> Self {
        Self {
            default_prefetch: 100,
            max_prefetch: 10_000,
            keepalive: Duration::from_secs(15),
            max_subscriptions: 1024,
        }
    }
}

/// `[rpc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rpc {
    /// Timeout of a call that sets no `timeout_ms`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Longest timeout a call may ask for.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Most calls awaiting their reply at once (RESOURCE_EXHAUSTED past it).
    pub max_pending: usize,
    /// Channels for calls, each with its direct reply-to consumer.
    pub channels: usize,
}

impl Default for Rpc {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(300),
            max_pending: 10_000,
            channels: 2,
        }
    }
}

/// A queue's retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Deliveries a message gets in all; past it, a requeue dead-letters it.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// `[retry]`: the default policy, per-queue policies, the delay queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retry {
    /// Deliveries a message gets in all (default policy).
    pub max_attempts: u32,
    /// Delay before the second attempt (default policy).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay (default policy).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Policies of single queues: `[retry.queues."orders"]`.
    pub queues: std::collections::BTreeMap<String, RetryPolicy>,
    /// Type of the delay queues: `quorum` (dead-letters back at least once)
    /// or `classic`.
    pub delay_queue_type: QueueKind,
    #[serde(skip)]
    default_policy: RetryPolicy,
}

impl Default for Retry {
    fn default() -> Self {
        let p = RetryPolicy::default();
        Self {
            max_attempts: p.max_attempts,
            initial_backoff: p.initial_backoff,
            max_backoff: p.max_backoff,
            queues: Default::default(),
            delay_queue_type: QueueKind::Quorum,
            default_policy: p,
        }
    }
}

impl Retry {
    /// The policy of `queue`: its own, else the default.
    pub fn policy(&self, queue: &str) -> &RetryPolicy {
        self.queues.get(queue).unwrap_or(&self.default_policy)
    }

    fn settle_default(&mut self) {
        self.default_policy = RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
        };
    }

    fn validate(&self) -> Result<(), Error> {
        let policies = std::iter::once(("retry".to_string(), &self.default_policy)).chain(
            self.queues
                .iter()
                .map(|(q, p)| (format!("retry.queues.{q:?}"), p)),
        );
        for (key, p) in policies {
            if p.max_attempts == 0 {
                return Err(invalid(
                    format!("{key}.max_attempts"),
                    0,
                    "must be at least 1",
                ));
            }
            if p.initial_backoff.is_zero() || p.initial_backoff > p.max_backoff {
                return Err(invalid(
                    format!("{key}.initial_backoff"),
                    humantime::format_duration(p.initial_backoff),
                    "must be above 0 and at most max_backoff",
                ));
            }
        }
        if self.delay_queue_type == QueueKind::Stream {
            return Err(invalid(
                "retry.delay_queue_type",
                "stream",
                "expected quorum or classic",
            ));
        }
        Ok(())
    }
}

/// `[dead_letters]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetters {
    /// Most dead letters one listing may return.
    pub max_list: usize,
    /// Most dead letters one replay or discard looks through.
    pub max_scan: usize,
}

impl Default for DeadLetters {
    fn default() -> Self {
        Self {
            max_list: 1000,
            max_scan: 10_000,
        }
    }
}

/// `[breaker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Breaker {
    /// Whether publishes and calls go through the breaker.
    pub enabled: bool,
    /// Consecutive broker failures that open it.
    pub failures: u32,
    /// First open period (then doubling, jittered, up to `open_max`).
    #[serde(with = "humantime_serde")]
    pub open_min: Duration,
    /// Longest open period.
    #[serde(with = "humantime_serde")]
    pub open_max: Duration,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            enabled: true,
            failures: 5,
            open_min: Duration::from_secs(1),
            open_max: Duration::from_secs(30),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter: `info`, `warren=debug,lapin=warn`, ...
    /// `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info,lapin=off".into(),
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// How long in-flight work may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
        }
    }
}

/// A configuration that cannot be used: names the key and the value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file, the environment or a value's type is wrong.
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("invalid configuration: {key} = {value:?}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `amqp.url`.
        key: String,
        /// The value as given (credentials masked).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Error {
    Error::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// Loads defaults < `file` (when given) < environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self, Error> {
        Self::load_with_env(file, None)
    }

    /// Like [`Config::load`], with the environment given as a map (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, Error> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let environment = config::Environment::with_prefix("WARREN")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let mut config: Config = builder.add_source(environment).build()?.try_deserialize()?;
        config.retry.settle_default();
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule that types alone do not express.
    pub fn validate(&self) -> Result<(), Error> {
        let urls = self.amqp.urls();
        if urls.is_empty() {
            return Err(invalid("amqp.url", &self.amqp.url, "no broker URI given"));
        }
        for url in &urls {
            if let Err(reason) = url.parse::<lapin::uri::AMQPUri>() {
                return Err(invalid("amqp.url", crate::amqp::mask(url), reason));
            }
        }
        for (key, value) in [
            ("http.listen", &self.http.listen),
            ("grpc.listen", &self.grpc.listen),
        ] {
            if value.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    value,
                    "expected host:port, e.g. 127.0.0.1:5680",
                ));
            }
        }
        let positive = [
            ("amqp.pool_size", self.amqp.pool_size),
            ("amqp.max_channels", self.amqp.max_channels),
            ("amqp.shared_publishers", self.amqp.shared_publishers),
            ("publish.max_body_bytes", self.publish.max_body_bytes),
            ("publish.max_in_flight", self.publish.max_in_flight),
            ("publish.stream_window", self.publish.stream_window),
            (
                "subscribe.max_subscriptions",
                self.subscribe.max_subscriptions,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, value, "must be at least 1"));
            }
        }
        if self.amqp.shared_publishers >= self.amqp.max_channels {
            return Err(invalid(
                "amqp.shared_publishers",
                self.amqp.shared_publishers,
                "must be below amqp.max_channels",
            ));
        }
        // RabbitMQ's own ceiling on a message (max_message_size) is 512 MiB.
        if self.publish.max_body_bytes > 512 * 1024 * 1024 {
            return Err(invalid(
                "publish.max_body_bytes",
                self.publish.max_body_bytes,
                "must be at most 536870912 (RabbitMQ's limit)",
            ));
        }
        let durations = [
            ("amqp.connect_timeout", self.amqp.connect_timeout),
            ("amqp.operation_timeout", self.amqp.operation_timeout),
            ("publish.confirm_timeout", self.publish.confirm_timeout),
            ("subscribe.keepalive", self.subscribe.keepalive),
            ("rpc.default_timeout", self.rpc.default_timeout),
        ];
        for (key, value) in durations {
            if value.is_zero() {
                return Err(invalid(
                    key,
                    humantime::format_duration(value),
                    "must be above 0",
                ));
            }
        }
        if self.subscribe.default_prefetch == 0 {
            return Err(invalid(
                "subscribe.default_prefetch",
                0,
                "must be at least 1",
            ));
        }
        if self.subscribe.default_prefetch > self.subscribe.max_prefetch {
            return Err(invalid(
                "subscribe.default_prefetch",
                self.subscribe.default_prefetch,
                "must not exceed subscribe.max_prefetch",
            ));
        }
        if self.breaker.failures == 0 {
            return Err(invalid("breaker.failures", 0, "must be at least 1"));
        }
        if self.breaker.open_min.is_zero() || self.breaker.open_min > self.breaker.open_max {
            return Err(invalid(
                "breaker.open_min",
                humantime::format_duration(self.breaker.open_min),
                "must be above 0 and at most breaker.open_max",
            ));
        }
        if self.rpc.default_timeout > self.rpc.max_timeout {
            return Err(invalid(
                "rpc.default_timeout",
                humantime::format_duration(self.rpc.default_timeout),
                "must not exceed rpc.max_timeout",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                &self.log.level,
                "not a tracing filter",
            ));
        }
        self.retry.validate()?;
        self.topology.validate()
    }
}

#[cfg(test)]
mod tests;
