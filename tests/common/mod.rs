//! Shared helpers: start Warren in-process on free ports against the local
//! broker, talk to it over the wire, and look at the broker with plain lapin.
#![allow(dead_code)]

pub mod cluster;
pub mod proxy;
pub mod tls;

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use prost_types::value::Kind;
use tonic::transport::Channel as GrpcChannel;
use tonic::Streaming;
use warren::config::Config;
use warren::proto::bus_client::BusClient;
use warren::proto::{
    AckRequest, CallRequest, Delivery, Message, NackRequest, PublishRequest, SubscribeRequest,
};
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

/// A test configuration from a TOML file's text and extra `WARREN__...`
/// settings (which win over the file).
pub fn config_toml_with(toml: &str, env: &[(&str, &str)]) -> Config {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("config")));
    std::fs::write(&path, toml).expect("temp file written");
    let config = Config::load_with_env(Some(&path), Some(test_env(env)));
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

    /// Takes up to `n` messages, waiting at most `wait` for each next one
    /// (so a long queue on a loaded broker is read whole).
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
        while out.len() < n {
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(Ok(delivery))) => out.push(delivery),
                _ => break,
            }
        }
        let _ = channel.close(200, "done".into()).await;
        out
    }

    /// The bodies (as UTF-8) of up to `n` messages taken from `queue`, in
    /// order, waiting at most half a second for each next one.
    pub async fn bodies(&self, queue: &str, n: usize) -> Vec<String> {
        self.take(queue, n, Duration::from_millis(500))
            .await
            .into_iter()
            .map(|d| String::from_utf8(d.data).expect("UTF-8 body"))
            .collect()
    }

    /// How many messages are ready in `queue` (not those delivered and
    /// unacked).
    pub async fn count(&self, queue: &str) -> u32 {
        self.ready(queue).await.expect("queue exists")
    }

    /// How many messages are ready in `queue`, or None when it does not exist
    /// (asked on a channel of its own: a failed passive declare closes it).
    pub async fn ready(&self, queue: &str) -> Option<u32> {
        let channel = self.connection.create_channel().await.expect("channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .ok()
            .map(|q| q.message_count());
        let _ = channel.close(200, "done".into()).await;
        declared
    }

    /// Publishes one message as a plain AMQP client and waits for the
    /// broker to take it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        self.channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .expect("published")
            .await
            .expect("taken by the broker");
    }

    /// Puts `n` messages with the bodies "0", "1", ... into `queue`.
    pub async fn fill(&self, queue: &str, n: usize) {
        for i in 0..n {
            self.publish(
                "",
                queue,
                i.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
    }

    /// Puts messages with these bodies, as text/plain, into `queue`.
    pub async fn fill_text(&self, queue: &str, bodies: &[&[u8]]) {
        let text = BasicProperties::default().with_content_type("text/plain".into());
        for body in bodies {
            self.publish("", queue, body, text.clone()).await;
        }
    }

    /// Deletes the queues (those left over by a test that declared them
    /// without an expiry); a missing one is no error.
    pub async fn delete_queues(&self, queues: &[String]) {
        for queue in queues {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await;
        }
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
    subscribe_with(client, on(queue, 10)).await
}

/// A stream of deliveries for `request`.
pub async fn subscribe_with(
    client: &mut BusClient<GrpcChannel>,
    request: SubscribeRequest,
) -> Streaming<Delivery> {
    client
        .subscribe(request)
        .await
        .expect("subscribed")
        .into_inner()
}

/// A subscription to `queue` with `prefetch`.
pub fn on(queue: &str, prefetch: u32) -> SubscribeRequest {
    SubscribeRequest {
        queue: queue.into(),
        prefetch,
        ..Default::default()
    }
}

/// The next delivery, within 5 s.
pub async fn next(stream: &mut Streaming<Delivery>) -> Delivery {
    next_within(stream, Duration::from_secs(5)).await
}

/// The next delivery, within `wait`.
pub async fn next_within(stream: &mut Streaming<Delivery>, wait: Duration) -> Delivery {
    tokio::time::timeout(wait, stream.message())
        .await
        .unwrap_or_else(|_| panic!("a delivery within {wait:?}"))
        .expect("stream ok")
        .expect("stream open")
}

/// Nothing more arrives within `wait`.
pub async fn quiet(stream: &mut Streaming<Delivery>, wait: Duration) -> bool {
    tokio::time::timeout(wait, stream.message()).await.is_err()
}

/// A delivery's body as text.
pub fn body(d: &Delivery) -> String {
    String::from_utf8(d.message.as_ref().expect("a message").body.to_vec()).expect("UTF-8 body")
}

/// Acks one delivery (which must succeed).
pub async fn ack(client: &mut BusClient<GrpcChannel>, d: &Delivery) {
    client
        .ack(AckRequest {
            delivery_ids: vec![d.delivery_id.clone()],
        })
        .await
        .expect("acked");
}

/// Nacks one delivery (which must succeed).
pub async fn nack(client: &mut BusClient<GrpcChannel>, d: &Delivery, requeue: bool, delay_ms: u32) {
    client
        .nack(NackRequest {
            delivery_ids: vec![d.delivery_id.clone()],
            requeue,
            delay_ms,
        })
        .await
        .expect("nacked");
}

/// A publish request of `body` to `exchange` with `routing_key`.
pub fn request(exchange: &str, routing_key: &str, body: &[u8]) -> PublishRequest {
    PublishRequest {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        message: Some(Message {
            body: body.to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `request` sent on the named publisher `name` (`x-warren-publisher`).
pub fn on_publisher(request: PublishRequest, name: &str) -> tonic::Request<PublishRequest> {
    let mut r = tonic::Request::new(request);
    r.metadata_mut()
        .insert("x-warren-publisher", name.parse().expect("ASCII metadata"));
    r
}

/// Publishes `body` to `queue` over gRPC (which must be confirmed); its
/// message id.
pub async fn publish(client: &mut BusClient<GrpcChannel>, queue: &str, body: &str) -> String {
    client
        .publish(request("", queue, body.as_bytes()))
        .await
        .expect("confirmed")
        .into_inner()
        .message_id
}

/// A call of `body` to `routing_key` (the default exchange).
pub fn call(routing_key: &str, body: &str, timeout_ms: u32) -> CallRequest {
    CallRequest {
        exchange: String::new(),
        routing_key: routing_key.into(),
        message: Some(Message {
            body: body.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        timeout_ms,
    }
}

/// A protobuf `Value` of `kind`.
pub fn value(kind: Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
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

/// Reads a Server-Sent Events body: events as (id, data) and comment lines.
pub struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    pub comments: usize,
}

impl Sse {
    /// Opens `url`, which must answer 200 with an event stream.
    pub async fn open(url: &str) -> Self {
        let response = reqwest::get(url).await.expect("subscribe answers");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event (id, data as JSON), or None at the end of the stream.
    pub async fn next(&mut self, wait: Duration) -> Option<(String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = v.trim().to_owned();
                    } else if line.starts_with(':') {
                        self.comments += 1;
                    }
                }
                if !data.is_empty() {
                    return Some((id, serde_json::from_str(&data).expect("one-line JSON")));
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self
                    .buffer
                    .push_str(std::str::from_utf8(&chunk).expect("UTF-8 events")),
                Ok(_) => return None,
                Err(_) => panic!("no event within {wait:?}"),
            }
        }
    }
}

impl Broker {
    /// A plain AMQP connection to the broker at `url` (not the test broker:
    /// a node of the test cluster, say).
    pub async fn connect_to(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("broker reachable");
        let channel = connection.create_channel().await.expect("channel");
        Self {
            connection,
            channel,
        }
    }
}

/// Deletes every queue and exchange that tests made (their names hold
/// `test.`), so a test that restarts the broker does not wait while it
/// recovers thousands of them. Only for test binaries that run alone.
pub async fn sweep_test_topology() {
    let list = |what: &str| -> Vec<String> {
        let out = std::process::Command::new("rabbitmqctl")
            .args([what, "-q", "--no-table-headers", "name"])
            .output()
            .expect("rabbitmqctl runs");
        assert!(out.status.success(), "rabbitmqctl {what} failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            // `test.` starts every name `unique` makes; Warren's own
            // queues for one (retries, ordered slots) add a prefix or a
            // suffix. Not the load tester's `warren-loadtest.` ones.
            .filter(|name| name.starts_with("test.") || name.contains(".test."))
            .map(str::to_owned)
            .collect()
    };
    let broker = Broker::connect().await;
    let mut channel = broker.channel.clone();
    let (queues, exchanges) = (list("list_queues"), list("list_exchanges"));
    let doomed = queues
        .iter()
        .map(|q| (true, q))
        .chain(exchanges.iter().map(|e| (false, e)));
    for (is_queue, name) in doomed {
        let deleted = if is_queue {
            channel
                .queue_delete(name.as_str().into(), Default::default())
                .await
                .map(drop)
        } else {
            channel
                .exchange_delete(name.as_str().into(), Default::default())
                .await
        };
        if deleted.is_err() {
            channel = broker.connection.create_channel().await.expect("channel");
        }
    }
    eprintln!(
        "swept {} test queues and {} test exchanges",
        queues.len(),
        exchanges.len()
    );
}
