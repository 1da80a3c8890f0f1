//! The plain sections of the configuration: each with its documented
//! fields and its defaults in one `Default` impl.

use std::time::Duration;

use serde::Deserialize;

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
    /// Largest AMQP frame proposed to the broker, in bytes (when the URI sets
    /// no `frame_max`). Set explicitly because lapin sizes its buffers from
    /// it: leaving it to the negotiation costs some 8 MiB per connection.
    pub frame_max: u32,
    /// Shown in the management UI as the connection's name prefix.
    pub connection_name: String,
    /// File holding the broker password (a mounted secret; its trailing
    /// newline is dropped), used for every URI with a user and no password.
    pub password_file: Option<std::path::PathBuf>,
    /// TLS for `amqps://` URIs (see [`super::AmqpTls`]).
    pub tls: super::AmqpTls,
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
            frame_max: 131_072,
            connection_name: "warren".into(),
            password_file: None,
            tls: super::AmqpTls::default(),
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
    /// `Host` header values accepted (a port is ignored); others get 421.
    /// `"*"` accepts any (DNS rebinding protection off). `/healthz`,
    /// `/readyz` and `/metrics` answer any host (probes and scrapers use the
    /// pod's address).
    pub allowed_hosts: Vec<String>,
    /// A client that takes longer than this to send its headers, or between
    /// two parts of its body, is answered 408 or disconnected.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Most open connections; more are closed at once.
    pub max_connections: usize,
    /// Most bytes of request bodies held in memory at once; past it new
    /// requests get 503.
    pub max_buffered_bytes: usize,
    /// TLS on this listener.
    pub tls: Option<ListenerTls>,
}

/// `[http.tls]`, `[grpc.tls]`: PEM files, re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// The certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// CAs whose client certificates are required (mTLS); none: no client
    /// certificates asked for.
    pub client_ca_file: Option<std::path::PathBuf>,
}

impl Default for Listener {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5680".into(),
            allowed_hosts: ["localhost", "127.0.0.1", "::1"].map(String::from).into(),
            read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_buffered_bytes: 256 * 1024 * 1024,
            tls: None,
        }
    }
}

/// `[grpc]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcListener {
    /// Address to listen on (`host:port`; port 0 picks a free port).
    pub listen: String,
    /// Most open connections; more are closed at once.
    pub max_connections: usize,
    /// TLS on this listener.
    pub tls: Option<ListenerTls>,
}

impl Default for GrpcListener {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:5681".into(),
            max_connections: 4096,
            tls: None,
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
    /// Bytes of message bodies Warren holds at once, over every publish
    /// path, from routing to answer; past it a publish is refused at once
    /// (RESOURCE_EXHAUSTED / 503, retryable).
    pub max_bytes_in_flight: usize,
    /// Requests one `PublishStream` (or one HTTP batch) may have awaiting
    /// their confirms.
    pub stream_window: usize,
    /// Most messages in one `POST /v1/publish/batch`; the entries past it
    /// are not read (the last result says RESOURCE_EXHAUSTED).
    pub max_batch_messages: usize,
    /// Largest body of one `POST /v1/publish/batch`, in bytes: 413 when the
    /// declared `Content-Length` is over it, else the entries past it are not
    /// read (the last result says RESOURCE_EXHAUSTED). The body is streamed,
    /// so this is not memory held at once.
    pub max_batch_bytes: usize,
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
            max_bytes_in_flight: 256 * 1024 * 1024,
            stream_window: 1024,
            max_batch_messages: 10_000,
            max_batch_bytes: 64 * 1024 * 1024,
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
