//! The process: flags, configuration errors, topology at start-up, SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{unique, Broker, Warren};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_warren");

#[test]
fn help_and_version() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--config") && text.contains("WARREN__"),
        "{text}"
    );
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_bad_value_stops_start_up_with_one_line_naming_the_key() {
    let out = Command::new(BIN)
        .env("WARREN__HTTP__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("http.listen") && err.contains("not-an-address"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/warren.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warren.toml"));
}

fn topology_toml(prefix: &str) -> String {
    format!(
        r##"
[[topology.exchanges]]
name = "{p}.topic"
type = "topic"
auto_delete = true
[[topology.exchanges]]
name = "{p}.fanout"
type = "fanout"
auto_delete = true
[[topology.exchanges]]
name = "{p}.headers"
type = "headers"
auto_delete = true
[[topology.exchanges]]
name = "{p}.direct"
type = "direct"
internal = true
auto_delete = true
arguments = {{ "alternate-exchange" = "{p}.fanout" }}

[[topology.queues]]
name = "{p}.classic"
arguments = {{ "x-message-ttl" = 60000, "x-max-length" = 100, "x-expires" = 120000 }}
[[topology.queues]]
name = "{p}.quorum"
type = "quorum"
arguments = {{ "x-expires" = 120000 }}
[[topology.queues]]
name = "{p}.stream"
type = "stream"
arguments = {{ "x-max-age" = "1h" }}
[[topology.queues]]
name = "{p}.eu"
arguments = {{ "x-expires" = 120000 }}

[[topology.bindings]]
source = "{p}.topic"
destination = "{p}.classic"
routing_key = "order.*"
[[topology.bindings]]
source = "{p}.topic"
destination = "{p}.fanout"
destination_type = "exchange"
routing_key = "#"
[[topology.bindings]]
source = "{p}.fanout"
destination = "{p}.quorum"
[[topology.bindings]]
source = "{p}.headers"
destination = "{p}.eu"
arguments = {{ "x-match" = "all", "region" = "eu" }}
"##,
        p = prefix
    )
}

fn config_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("config")));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn topology_of_every_kind_is_declared_and_routes() {
    let p = unique("topo");
    let warren = Warren::start_with(common::config_toml(&topology_toml(&p))).await;
    let broker = Broker::connect().await;
    // Everything exists with the declared arguments (a passive declare
    // checks existence; an active one with the same arguments is accepted).
    let channel = broker.connection.create_channel().await.unwrap();
    let mut quorum_args = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(v.as_bytes().into());
    quorum_args.insert("x-queue-type".into(), s("quorum"));
    quorum_args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    // Warren gave it a dead-letter queue, dead-lettering at least once.
    quorum_args.insert("x-dead-letter-exchange".into(), s(""));
    quorum_args.insert(
        "x-dead-letter-routing-key".into(),
        s(&format!("{p}.quorum.dlq")),
    );
    quorum_args.insert("x-dead-letter-strategy".into(), s("at-least-once"));
    quorum_args.insert("x-overflow".into(), s("reject-publish"));
    channel
        .queue_declare(
            format!("{p}.quorum").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            quorum_args,
        )
        .await
        .expect("quorum queue exists with these arguments");
    channel
        .exchange_declare(
            format!("{p}.headers").as_str().into(),
            ExchangeKind::Headers,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("headers exchange exists");
    let http = reqwest::Client::new();
    let publish = |exchange: String, key: &str, headers: serde_json::Value| {
        http.post(warren.url("/v1/publish"))
            .json(
                &json!({"exchange": exchange, "routing_key": key, "body": "x", "headers": headers}),
            )
            .send()
    };
    // topic -> classic (order.*) and topic -> fanout (e2e) -> quorum.
    assert_eq!(
        publish(format!("{p}.topic"), "order.created", json!({}))
            .await
            .unwrap()
            .status(),
        200
    );
    // headers exchange: matches region=eu only.
    assert_eq!(
        publish(format!("{p}.headers"), "", json!({"region": "eu"}))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        publish(format!("{p}.headers"), "", json!({"region": "us"}))
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        broker
            .take(&format!("{p}.classic"), 5, Duration::from_secs(2))
            .await
            .len(),
        1
    );
    assert_eq!(
        broker
            .take(&format!("{p}.quorum"), 5, Duration::from_secs(2))
            .await
            .len(),
        1
    );
    assert_eq!(
        broker
            .take(&format!("{p}.eu"), 5, Duration::from_secs(2))
            .await
            .len(),
        1
    );
    // Internal exchanges take no publishes from clients.
    let response = publish(format!("{p}.direct"), "k", json!({}))
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    warren.stop().await;
    // Dead-letter queues for the classic and quorum queues, none for the stream.
    for (queue, has_dlq) in [("classic", true), ("quorum", true), ("stream", false)] {
        let channel = broker.connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let dlq = format!("{p}.{queue}.dlq");
        let exists = channel
            .queue_declare(dlq.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok();
        assert_eq!(exists, has_dlq, "{dlq}");
    }
    let cleanup = broker.connection.create_channel().await.unwrap();
    for q in ["stream", "quorum", "quorum.dlq", "classic.dlq", "eu.dlq"] {
        let _ = cleanup
            .queue_delete(format!("{p}.{q}").as_str().into(), Default::default())
            .await;
    }
}

#[tokio::test]
async fn a_refused_declaration_stops_start_up_naming_it() {
    let broker = Broker::connect().await;
    let name = unique("clash");
    broker.queue(&name).await; // exists as a classic queue with x-expires
    let path = config_file(&format!(
        "[[topology.queues]]\nname = \"{name}\"\ntype = \"quorum\"\n"
    ));
    let server = warren::server::Server::start(common::config_toml(
        &std::fs::read_to_string(&path).unwrap(),
    ))
    .await
    .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(30), server.declare_topology())
        .await
        .unwrap()
        .expect_err("the broker refuses the redeclaration");
    let text = error.to_string();
    assert!(text.contains(&name), "{text}");
    server.shutdown().await;

    // The binary exits non-zero with that message.
    let out = Command::new(BIN)
        .args(["--config", path.to_str().unwrap()])
        .env("WARREN__AMQP__URL", common::amqp_url())
        .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
        .env("WARREN__GRPC__LISTEN", "127.0.0.1:0")
        .env("WARREN__LOG__FORMAT", "json")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&name));
    let _ = std::fs::remove_file(path);
}

/// SIGTERM while publishes are in flight: each publish the client saw
/// confirmed is in the queue, the process exits 0.
#[tokio::test]
async fn sigterm_finishes_in_flight_publishes_and_exits_zero() {
    let broker = Broker::connect().await;
    let queue = unique("sigterm");
    broker.queue(&queue).await;
    let mut child = Command::new(BIN)
        .env("WARREN__AMQP__URL", common::amqp_url())
        .env("WARREN__HTTP__LISTEN", "127.0.0.1:0")
        .env("WARREN__GRPC__LISTEN", "127.0.0.1:0")
        .env("WARREN__LOG__FORMAT", "json")
        .env("WARREN__LOG__LEVEL", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Find the HTTP port in the start-up log line.
    let stderr = child.stderr.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let stderr = BufReader::new(stderr);
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut http = None;
    let mut log = Vec::new();
    while http.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .expect("warren logs");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["message"] == "topology declared" {
                break;
            }
            if let Some(addr) = v["http"].as_str() {
                http = Some(format!("http://{addr}"));
            }
        }
        log.push(line);
    }
    let http = http.expect("http address logged");
    // Wait until ready.
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("{http}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Publishers that keep going until Warren stops answering. Each records
    // how every request ended and whether it was sent before the signal.
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let confirmed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let (client, http, queue, confirmed, count, signalled) = (
            client.clone(),
            http.clone(),
            queue.clone(),
            confirmed.clone(),
            count.clone(),
            signalled.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut refused_after_signal = 0;
            for i in 0.. {
                let body = format!("{worker}-{i}");
                let before = !signalled.load(std::sync::atomic::Ordering::SeqCst);
                let sent = client
                    .post(format!("{http}/v1/publish"))
                    .json(&json!({"routing_key": queue, "body": body}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        confirmed.lock().unwrap().push(body);
                        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let retry_after = r.headers().contains_key("retry-after");
                        assert_eq!(status, 503, "a publish during shutdown is answered 503");
                        assert!(retry_after, "503 comes with Retry-After");
                        assert!(
                            r.text().await.unwrap().contains("shutting"),
                            "the problem says why"
                        );
                        return (i, true);
                    }
                    // Once the listeners are gone, new connections are refused;
                    // a request sent before the signal is never cut off.
                    Err(e) => {
                        assert!(!before, "a request sent before SIGTERM failed: {e}");
                        eprintln!("worker {worker}: after SIGTERM: {e:?}");
                        refused_after_signal += 1;
                        return (refused_after_signal, false);
                    }
                }
            }
            unreachable!()
        }));
    }
    while count.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = child.id();
    signalled.store(true, std::sync::atomic::Ordering::SeqCst);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await
    .expect("exits within 30s")
    .unwrap()
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut answered_503 = 0;
    for task in tasks {
        let (_, was_503) = task.await.expect("no worker saw a request cut off");
        answered_503 += usize::from(was_503);
    }
    let confirmed = confirmed.lock().unwrap().clone();
    let got = broker.take(&queue, 100_000, Duration::from_secs(2)).await;
    let stored: std::collections::HashSet<String> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    let lost: Vec<_> = confirmed.iter().filter(|b| !stored.contains(*b)).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed publishes are not in the queue: {lost:?}",
        lost.len()
    );
    eprintln!(
        "{} confirmed, {} stored, {answered_503} of 8 workers answered 503",
        confirmed.len(),
        got.len()
    );
    // (How many workers see the 503 before the listeners stop depends on
    // how fast they send their next request: on an idle machine all 8, on a
    // busy one their next request may come after the listeners are gone,
    // which a new connection sees as refused.)
    let mut rest = Vec::new();
    while let Ok(line) = rx.try_recv() {
        rest.push(line);
    }
    assert!(
        rest.iter().any(|l| l.contains("warren stopped")),
        "{rest:?}"
    );
}

/// Several broker URIs are tried in order: the first is unreachable, Warren
/// connects through the second.
#[tokio::test]
async fn broker_uris_fail_over_in_order() {
    let url = format!("amqp://guest:guest@127.0.0.1:1/%2f,{}", common::amqp_url());
    let config = common::config_with(&[
        ("WARREN__AMQP__URL", url.as_str()),
        ("WARREN__AMQP__CONNECT_TIMEOUT", "500ms"),
    ]);
    let warren = Warren::start_with(config).await;
    let response = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .json(&json!({"routing_key": unique("nobody"), "body": "x", "allow_unroutable": true}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
    assert_eq!(
        reqwest::get(warren.url("/readyz")).await.unwrap().status(),
        200
    );
    warren.stop().await;
}
