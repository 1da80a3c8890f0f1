//! Shared helpers: start Warren in-process on free ports against the local
//! broker, talk to it over the wire, and look at the broker with plain lapin.
#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use tonic::transport::Channel as GrpcChannel;
use tonic::Streaming;
use warren::config::Config;
use warren::proto::bus_client::BusClient;
use warren::proto::{Delivery, SubscribeRequest};
use warren::server::Server;

/// The broker the tests use (the local one unless `WARREN_TEST_AMQP_URL`).
pub fn amqp_url() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// A configuration for tests: free ports, the test broker.
pub fn config() -> Config {
    config_with(&[])
}

/// The test configuration with extra `WARREN__...` settings.
pub fn config_with(env: &[(&str, &str)]) -> Config {
    Config::load_with_env(None, Some(test_env(env))).expect("test config is valid")
}

/// A test configuration from a TOML file's text (free ports, the test broker).
pub fn config_toml(toml: &str) -> Config {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("config")));
    std::fs::write(&path, toml).expect("temp file written");
    let config = Config::load_with_env(Some(&path), Some(test_env(&[])));
    let _ = std::fs::remove_file(&path);
    config.expect("test config is valid")
}

fn test_env(env: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    let mut vars: std::collections::HashMap<String, String> = [
        ("WARREN__AMQP__URL", amqp_url()),
        ("WARREN__HTTP__LISTEN", "127.0.0.1:0".into()),
        ("WARREN__GRPC__LISTEN", "127.0.0.1:0".into()),
        ("WARREN__SHUTDOWN__GRACE", "10s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in env {
        vars.insert(k.to_string(), v.to_string());
    }
    vars
}

/// A Warren running in this process.
pub struct Warren {
    pub server: Server,
    pub http: String,
    pub grpc_addr: String,
}

impl Warren {
    /// Starts Warren with `config` and waits until the topology is declared.
    pub async fn start_with(config: Config) -> Self {
        let server = Server::start(config).await.expect("warren starts");
        tokio::time::timeout(Duration::from_secs(30), server.declare_topology())
            .await
            .expect("broker reachable within 30s")
            .expect("topology declared");
        // Topology needs only the publishing connections; readiness needs
        // the consuming ones too, which may still be connecting.
        let ready = async {
            while !server.bus().is_ready() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("warren ready within 30s");
        let http = format!("http://{}", server.http_addr);
        let grpc_addr = format!("http://{}", server.grpc_addr);
        Self {
            server,
            http,
            grpc_addr,
        }
    }

    pub async fn start() -> Self {
        Self::start_with(config()).await
    }

    /// A gRPC client of the Bus service.
    pub async fn grpc(&self) -> BusClient<GrpcChannel> {
        BusClient::connect(self.grpc_addr.clone())
            .await
            .expect("grpc connects")
    }

    /// `GET /metrics`, as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.http, path)
    }

    pub async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// A plain AMQP connection to look at the broker.
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
}

impl Broker {
    pub async fn connect() -> Self {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("broker reachable");
        let channel = connection.create_channel().await.expect("channel");
        Self {
            connection,
            channel,
        }
    }

    /// Declares a classic queue that the broker deletes 60 s after its last
    /// use, so that failed runs leave nothing behind.
    pub async fn queue(&self, name: &str) {
        self.queue_with(name, FieldTable::default()).await
    }

    pub async fn queue_with(&self, name: &str, mut args: FieldTable) {
        args.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
        self.channel
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .expect("queue declared");
    }

    /// Declares an auto-delete exchange (gone once its last binding is).
    pub async fn exchange(&self, name: &str, kind: lapin::ExchangeKind) {
        let options = lapin::options::ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
            .expect("exchange declared");
    }

    /// Takes up to `n` messages, waiting at most `wait` for them.
    pub async fn take(
        &self,
        queue: &str,
        n: usize,
        wait: Duration,
    ) -> Vec<lapin::message::Delivery> {
        let channel = self.connection.create_channel().await.expect("channel");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(delivery))) => out.push(delivery),
                _ => break,
            }
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// How many messages are ready in `queue`.
    pub async fn count(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.expect("channel");
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        q.message_count()
    }

    /// Whether the queue holds nothing right now (a quick get).
    pub async fn is_empty(&self, queue: &str) -> bool {
        let channel = self.connection.create_channel().await.expect("channel");
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .expect("get");
        got.is_none()
    }
}

/// A stream of deliveries from `queue`, prefetch 10.
pub async fn subscribe(client: &mut BusClient<GrpcChannel>, queue: &str) -> Streaming<Delivery> {
    client
        .subscribe(SubscribeRequest {
            queue: queue.into(),
            prefetch: 10,
            ..Default::default()
        })
        .await
        .expect("subscribed")
        .into_inner()
}

/// The value of the sample `name` (with its labels, if any) in a Prometheus
/// text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A problem+json response: status, content type, parsed body.
pub async fn problem(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(ct, "application/problem+json", "status {status}");
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    (status, body)
}
