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
        let config: Config = builder.add_source(environment).build()?.try_deserialize()?;
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
        self.topology.validate()
    }
}

#[cfg(test)]
mod tests;
