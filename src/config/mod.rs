//! Configuration: typed, documented, validated.
//!
//! Layers, later wins: the defaults in this module's `Default` impls, the TOML
//! file (`--config`, else `config/warren.toml` when present), then environment
//! variables `WARREN__SECTION__KEY` (for example `WARREN__AMQP__URL`).

mod amqp_tls;
mod auth;
mod ordered;
mod push;
mod retry;
mod sections;
mod spool;
mod topology;

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

pub use amqp_tls::{AmqpTls, Password, Secrets};
pub use auth::{Auth, Client, Hashes, Jwt};
pub use ordered::Ordered;
pub use push::Push;
pub use retry::{Retry, RetryPolicy};
pub use sections::{
    Amqp, Breaker, DeadLetters, GrpcListener, Listener, ListenerTls, Log, LogFormat, Publish, Rpc,
    Shutdown, Subscribe,
};
pub use spool::Spool;
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
    /// Authentication and authorization.
    pub auth: Auth,
    /// `[[ordered]]`: ordered groups.
    pub ordered: Vec<Ordered>,
    /// `[[push]]`: queues Warren pushes to an app over HTTP.
    pub push: Vec<Push>,
    /// The durable local spool.
    pub spool: Spool,
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
            .list_separator(",")
            .with_list_parse_key("http.allowed_hosts")
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
        crate::amqp::Connector::new(&self.amqp)?;
        Ordered::validate(&self.ordered)?;
        Push::validate(&self.push)?;
        self.spool.validate()?;
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
                "publish.max_batch_messages",
                self.publish.max_batch_messages,
            ),
            ("publish.max_batch_bytes", self.publish.max_batch_bytes),
            (
                "subscribe.max_subscriptions",
                self.subscribe.max_subscriptions,
            ),
            ("rpc.max_pending", self.rpc.max_pending),
            ("http.max_connections", self.http.max_connections),
            ("grpc.max_connections", self.grpc.max_connections),
            ("http.max_buffered_bytes", self.http.max_buffered_bytes),
            ("rpc.channels", self.rpc.channels),
            ("dead_letters.max_list", self.dead_letters.max_list),
            ("dead_letters.max_scan", self.dead_letters.max_scan),
            (
                "subscribe.max_prefetch",
                usize::from(self.subscribe.max_prefetch),
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, value, "must be at least 1"));
            }
        }
        // Room for the largest request (a JSON body may be twice the
        // message body, base64 and escapes).
        let largest = self.publish.max_body_bytes.saturating_mul(2) + 64 * 1024;
        if self.http.max_buffered_bytes < largest {
            return Err(invalid(
                "http.max_buffered_bytes",
                self.http.max_buffered_bytes,
                format!("must be at least {largest} (2 x publish.max_body_bytes + 64 KiB: room for the largest request)"),
            ));
        }
        if self.publish.max_bytes_in_flight < self.publish.max_body_bytes {
            return Err(invalid(
                "publish.max_bytes_in_flight",
                self.publish.max_bytes_in_flight,
                format!(
                    "must be at least publish.max_body_bytes ({}): room for the largest message",
                    self.publish.max_body_bytes
                ),
            ));
        }
        if self.http.allowed_hosts.is_empty() {
            return Err(invalid(
                "http.allowed_hosts",
                "[]",
                "name at least one host, or \"*\" for any",
            ));
        }
        if !(4096..=1_048_576).contains(&self.amqp.frame_max) {
            return Err(invalid(
                "amqp.frame_max",
                self.amqp.frame_max,
                "must be 4096 to 1048576",
            ));
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
        // Every duration that paces or bounds something; below a
        // millisecond it would spin (a halved idle timeout of 0 panics
        // tokio's interval) or fail every request.
        let durations = [
            ("amqp.idle_timeout", self.amqp.idle_timeout),
            ("amqp.connect_timeout", self.amqp.connect_timeout),
            ("amqp.operation_timeout", self.amqp.operation_timeout),
            ("publish.confirm_timeout", self.publish.confirm_timeout),
            (
                "publish.exchange_cache_ttl",
                self.publish.exchange_cache_ttl,
            ),
            ("subscribe.keepalive", self.subscribe.keepalive),
            ("rpc.default_timeout", self.rpc.default_timeout),
            ("rpc.max_timeout", self.rpc.max_timeout),
            ("breaker.open_min", self.breaker.open_min),
            ("breaker.open_max", self.breaker.open_max),
            ("shutdown.grace", self.shutdown.grace),
            ("http.read_timeout", self.http.read_timeout),
        ];
        for (key, value) in durations {
            if value < std::time::Duration::from_millis(2) {
                return Err(invalid(
                    key,
                    humantime::format_duration(value),
                    "must be at least 2ms",
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
        self.auth.validate()?;
        self.topology.validate()
    }
}

#[cfg(test)]
mod tests;
