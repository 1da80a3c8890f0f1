//! Real faults: the broker stops and starts, connections are closed under
//! load. These tests disturb the shared broker, so they run one at a time
//! (a lock) and in a test binary of their own (cargo runs test binaries one
//! after another).

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{unique, Broker, Warren};
use tonic::Code;
use warren::proto::{AckRequest, CallRequest, Message, PublishRequest, SubscribeRequest};

static FAULTS: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

/// Runs the fault tests one at a time. The first one first deletes what the
/// earlier test binaries left on the broker, so that its restarts are quick.
async fn serial() -> tokio::sync::MutexGuard<'static, bool> {
    let mut swept = FAULTS.lock().await;
    if !*swept {
        common::sweep_test_topology().await;
        *swept = true;
    }
    swept
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes sure the broker is up again when a test ends, even by a panic.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl")
            .args(["await_startup", "--timeout", "60"])
            .output();
        let _ = Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "0.4"])
            .output();
    }
}

fn stop_broker() {
    rabbitmqctl(&["stop_app"]);
}

fn start_broker() {
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup", "--timeout", "60"]);
}

fn request(queue: &str, body: String) -> PublishRequest {
    PublishRequest {
        routing_key: queue.into(),
        message: Some(Message {
            body: body.into_bytes().into(),
            message_id: String::new(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Publishes from `workers` tasks until `stop`, recording each confirmed body
/// with the time of its confirm.
fn publish_load(
    warren: &Warren,
    queue: &str,
    workers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, Instant)>>> {
    (0..workers)
        .map(|w| {
            let (addr, queue, stop) = (warren.grpc_addr.clone(), queue.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut client = warren::proto::bus_client::BusClient::connect(addr)
                    .await
                    .unwrap();
                let mut confirmed = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let body = format!("{w}-{i}");
                    i += 1;
                    let mut req = tonic::Request::new(request(&queue, body.clone()));
                    req.set_timeout(Duration::from_secs(20));
                    match client.publish(req).await {
                        Ok(_) => confirmed.push((body, Instant::now())),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                confirmed
            })
        })
        .collect()
}

async fn all_bodies(broker: &Broker, queue: &str) -> HashSet<String> {
    broker
        .take(queue, 1_000_000, Duration::from_secs(3))
        .await
        .into_iter()
        .map(|d| String::from_utf8(d.data).unwrap())
        .collect()
}

async fn durable_queue(queue: &str) {
    // Declared on a connection of its own that the faults will close.
    let broker = Broker::connect().await;
    broker.queue(queue).await;
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {limit:?}");
}

/// The gRPC health of `warren.v1.Bus` (it may lag readiness by a tick).
async fn serving(warren: &Warren) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(warren.grpc_addr.clone())
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..10 {
        let request = tonic_health::pb::HealthCheckRequest {
            service: "warren.v1.Bus".into(),
        };
        if let Ok(answer) = health.check(request).await {
            let serving = answer.into_inner().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if !serving {
                return false;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

async fn ready(warren: &Warren) -> bool {
    reqwest::get(warren.url("/readyz"))
        .await
        .map(|r| r.status() == 200)
        .unwrap_or(false)
}

#[tokio::test]
async fn a_broker_restart_under_load_loses_no_confirmed_message() {
    let _serial = serial().await;
    let _restore = Restore;
    let config = common::config_with(&[
        ("WARREN__BREAKER__ENABLED", "false"),
        ("WARREN__PUBLISH__RETRY_BUDGET", "30s"),
    ]);
    let warren = Warren::start_with(config).await;
    let queue = unique("restart");
    durable_queue(&queue).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = publish_load(&warren, &queue, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_broker();
    wait_for("readiness to fail", Duration::from_secs(10), async || {
        !ready(&warren).await
    })
    .await;
    let metrics = warren.metrics().await;
    assert!(
        metrics.contains("warren_broker_up 0"),
        "broker_up says the truth"
    );
    assert!(
        !serving(&warren).await,
        "gRPC health says NOT_SERVING while the broker is down"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    start_broker();
    let back = Instant::now();
    let recovered = wait_for("readiness to return", Duration::from_secs(30), async || {
        ready(&warren).await
    })
    .await;
    wait_for(
        "gRPC health to say SERVING",
        Duration::from_secs(5),
        async || serving(&warren).await,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut confirmed = Vec::new();
    for w in workers {
        confirmed.extend(w.await.unwrap());
    }
    let first_after = confirmed
        .iter()
        .filter(|(_, at)| *at > back)
        .map(|(_, at)| *at - back)
        .min()
        .expect("publishing resumed");
    eprintln!("MEASURE restart: ready again {recovered:?} after start_app; first confirmed publish {first_after:?} after start_app; {} confirmed", confirmed.len());
    let broker = Broker::connect().await;
    let arrived = all_bodies(&broker, &queue).await;
    let lost: Vec<_> = confirmed
        .iter()
        .filter(|(b, _)| !arrived.contains(b))
        .collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!("MEASURE restart: lost 0 of {} confirmed", confirmed.len());
    warren.stop().await;
}

#[tokio::test]
async fn closed_connections_under_load_lose_no_confirmed_message() {
    let _serial = serial().await;
    let _restore = Restore;
    let config = common::config_with(&[("WARREN__BREAKER__ENABLED", "false")]);
    let warren = Warren::start_with(config).await;
    let queue = unique("closeall");
    durable_queue(&queue).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = publish_load(&warren, &queue, 8, stop.clone());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        rabbitmqctl(&["close_all_connections", "fault test"]);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut confirmed = Vec::new();
    for w in workers {
        confirmed.extend(w.await.unwrap());
    }
    let broker = Broker::connect().await;
    let arrived = all_bodies(&broker, &queue).await;
    let lost = confirmed
        .iter()
        .filter(|(b, _)| !arrived.contains(b))
        .count();
    assert_eq!(lost, 0, "of {} confirmed", confirmed.len());
    eprintln!(
        "MEASURE close_all_connections x3: lost 0 of {} confirmed",
        confirmed.len()
    );
    warren.stop().await;
}

#[tokio::test]
async fn subscriptions_go_on_after_the_connection_drops() {
    let _serial = serial().await;
    let _restore = Restore;
    let warren = Warren::start().await;
    let queue = unique("resume");
    durable_queue(&queue).await;
    let mut client = warren.grpc().await;
    let mut stream = common::subscribe(&mut client, &queue).await;
    client
        .publish(request(&queue, "before".into()))
        .await
        .unwrap();
    let held = stream.message().await.unwrap().unwrap();
    rabbitmqctl(&["close_all_connections", "fault test"]);
    // The unacked delivery comes back on the same stream; its old id is gone.
    let again = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("redelivered")
        .unwrap()
        .unwrap();
    assert_eq!(&again.message.as_ref().unwrap().body[..], b"before");
    assert!(again.redelivered);
    let status = client
        .ack(AckRequest {
            delivery_ids: vec![held.delivery_id],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    client
        .ack(AckRequest {
            delivery_ids: vec![again.delivery_id],
        })
        .await
        .unwrap();
    wait_for("readiness", Duration::from_secs(15), async || {
        ready(&warren).await
    })
    .await;
    client
        .publish(request(&queue, "after".into()))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&next.message.as_ref().unwrap().body[..], b"after");
    warren.stop().await;
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_closes() {
    let _serial = serial().await;
    let _restore = Restore;
    let config = common::config_with(&[
        ("WARREN__BREAKER__FAILURES", "3"),
        ("WARREN__BREAKER__OPEN_MIN", "1s"),
        ("WARREN__BREAKER__OPEN_MAX", "2s"),
        ("WARREN__PUBLISH__RETRY_BUDGET", "300ms"),
        ("WARREN__AMQP__OPERATION_TIMEOUT", "300ms"),
    ]);
    let warren = Warren::start_with(config).await;
    let queue = unique("breaker");
    durable_queue(&queue).await;
    let http = reqwest::Client::new();
    let publish = || {
        http.post(warren.url("/v1/publish"))
            .json(&serde_json::json!({"routing_key": queue, "body": "x"}))
            .send()
    };
    assert_eq!(publish().await.unwrap().status(), 200);
    stop_broker();
    wait_for("readiness to fail", Duration::from_secs(10), async || {
        !ready(&warren).await
    })
    .await;
    // Failures until it opens; then it fails fast with 503 and Retry-After.
    let mut opened = false;
    for _ in 0..10 {
        let response = publish().await.unwrap();
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = response.json().await.unwrap();
        if body["detail"].as_str().unwrap().contains("circuit breaker") {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker opened");
    // Open: refused by the breaker itself, without the retries (whose budget
    // alone is 300 ms here); the bound is loose for a busy machine.
    let started = Instant::now();
    let response = publish().await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("circuit breaker"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "fails fast: {:?}",
        started.elapsed()
    );
    let metrics = warren.metrics().await;
    assert!(
        metrics.contains("warren_circuit_breaker_state 2"),
        "{metrics}"
    );
    // gRPC calls fail fast too.
    let mut client = warren.grpc().await;
    let call = CallRequest {
        routing_key: queue.clone(),
        message: Some(Message::default()),
        timeout_ms: 5000,
        ..Default::default()
    };
    assert_eq!(
        client.call(call).await.unwrap_err().code(),
        Code::Unavailable
    );
    start_broker();
    wait_for(
        "publishing to work again",
        Duration::from_secs(30),
        async || publish().await.map(|r| r.status() == 200).unwrap_or(false),
    )
    .await;
    let metrics = warren.metrics().await;
    assert!(
        metrics.contains("warren_circuit_breaker_state 0"),
        "{metrics}"
    );
    warren.stop().await;
}

/// With the default budget (10 s) and breaker (5 failures), a new publish
/// while the broker is away fails at once with UNAVAILABLE: it never waits
/// out the retry budget or the client's deadline.
#[tokio::test]
async fn a_new_publish_fails_fast_while_the_broker_is_down() {
    let _serial = serial().await;
    let _restore = Restore;
    let warren = Warren::start().await;
    let queue = unique("fail-fast");
    durable_queue(&queue).await;
    let mut client = warren.grpc().await;
    client
        .publish(request(&queue, "before".into()))
        .await
        .unwrap();
    stop_broker();
    wait_for("readiness to fail", Duration::from_secs(10), async || {
        !ready(&warren).await
    })
    .await;
    let unavailable = |m: &str| common::metric(m, "warren_publish_total{outcome=\"unavailable\"}");
    let before = unavailable(&warren.metrics().await);
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let mut publish = tonic::Request::new(request(&queue, format!("down-{i}")));
        publish.set_timeout(Duration::from_secs(5));
        let started = Instant::now();
        let e = client.publish(publish).await.unwrap_err();
        slowest = slowest.max(started.elapsed());
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        let response = reqwest::Client::new()
            .post(warren.url("/v1/publish"))
            .json(&serde_json::json!({"routing_key": queue, "body": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        let after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&after), "Retry-After {after}");
        let call = CallRequest {
            routing_key: queue.clone(),
            message: Some(Message::default()),
            timeout_ms: 5000,
            ..Default::default()
        };
        let started = Instant::now();
        assert_eq!(
            client.call(call).await.unwrap_err().code(),
            Code::Unavailable
        );
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("new publishes and calls failed within {slowest:?} while the broker was down");
    // Every refused publish is counted (5 over gRPC, 5 over HTTP).
    assert_eq!(unavailable(&warren.metrics().await) - before, 10.0);
    // Far below the 5 s deadline and the 10 s retry budget (the contract's
    // 100 ms is the figure to measure; this bound only rules out waiting).
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    start_broker();
    wait_for(
        "publishing to work again",
        Duration::from_secs(30),
        async || {
            client
                .publish(request(&queue, "after".into()))
                .await
                .is_ok()
        },
    )
    .await;
    warren.stop().await;
}

/// A broker that keeps its connections but stops taking messages (here a
/// memory alarm: it blocks every publishing connection) fails each publish
/// by the client's deadline. Publishes cancelled while they waited on the
/// broker count as its failures: after `breaker.failures` of them the
/// breaker opens and new publishes fail at once instead of each waiting out
/// its deadline.
#[tokio::test]
async fn publishes_cancelled_while_the_broker_stalls_open_the_breaker() {
    let _serial = serial().await;
    let _restore = Restore;
    let warren = Warren::start().await;
    let queue = unique("stalled");
    durable_queue(&queue).await;
    let mut client = warren.grpc().await;
    client
        .publish(request(&queue, "before".into()))
        .await
        .unwrap();
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
    let publish = |i: usize| {
        let mut publish = tonic::Request::new(request(&queue, format!("stalled-{i}")));
        publish.set_timeout(Duration::from_millis(1500));
        publish
    };
    let mut codes = Vec::new();
    for i in 0..5 {
        codes.push(client.publish(publish(i)).await.unwrap_err().code());
    }
    // (tonic's client reports its own deadline as CANCELLED.)
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, Code::DeadlineExceeded | Code::Cancelled)),
        "{codes:?}"
    );
    let started = Instant::now();
    let e = client.publish(publish(5)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("circuit breaker"), "{e:?}");
    assert!(took < Duration::from_secs(1), "failed fast: {took:?}");
    eprintln!("a new publish failed within {took:?} once the breaker opened on a stalled broker");
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    wait_for(
        "publishing to work again",
        Duration::from_secs(30),
        async || {
            client
                .publish(request(&queue, "after".into()))
                .await
                .is_ok()
        },
    )
    .await;
    let metrics = warren.metrics().await;
    assert!(
        metrics.contains("warren_circuit_breaker_state 0"),
        "{metrics}"
    );
    warren.stop().await;
}

/// Bodies waiting on the broker count against `publish.max_bytes_in_flight`
/// on every path: past it a publish is refused at once (RESOURCE_EXHAUSTED
/// over gRPC, 503 with Retry-After over HTTP), publishes nothing and trips
/// no breaker; the ones in flight are confirmed once the broker takes
/// messages again. (A memory alarm keeps the first two in flight.)
#[tokio::test]
async fn bodies_in_flight_are_capped_on_every_path() {
    let _serial = serial().await;
    let _restore = Restore;
    let mib = 1024 * 1024;
    let warren = Warren::start_with(common::config_with(&[
        ("WARREN__PUBLISH__MAX_BODY_BYTES", &mib.to_string()),
        (
            "WARREN__PUBLISH__MAX_BYTES_IN_FLIGHT",
            &(5 * mib / 2).to_string(),
        ),
    ]))
    .await;
    let queue = unique("bytes-in-flight");
    durable_queue(&queue).await;
    let mut client = warren.grpc().await;
    rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
    let stalled: Vec<_> = (0..2)
        .map(|i| {
            let mut client = client.clone();
            let body = format!("{i}").repeat(mib);
            let queue = queue.clone();
            tokio::spawn(async move { client.publish(request(&queue, body)).await })
        })
        .collect();
    wait_for("2 MiB in flight", Duration::from_secs(10), async || {
        common::metric(&warren.metrics().await, "warren_publish_bytes_in_flight")
            == (2 * mib) as f64
    })
    .await;
    let started = Instant::now();
    let e = client
        .publish(request(&queue, "x".repeat(mib)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_bytes_in_flight"), "{e:?}");
    let http = reqwest::Client::new()
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .body("y".repeat(mib))
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 503);
    assert!(http.headers().contains_key("retry-after"), "{http:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    for publish in stalled {
        publish
            .await
            .unwrap()
            .expect("confirmed once the alarm is gone");
    }
    let broker = Broker::connect().await;
    let bodies = broker.bodies(&queue, 3).await;
    assert_eq!(bodies.len(), 2, "the refused ones were not published");
    assert!(bodies
        .iter()
        .all(|b| b.len() == mib && !b.starts_with('x') && !b.starts_with('y')));
    let metrics = warren.metrics().await;
    assert_eq!(
        common::metric(&metrics, "warren_publish_bytes_in_flight"),
        0.0
    );
    assert!(
        metrics.contains("warren_circuit_breaker_state 0"),
        "{metrics}"
    );
    client
        .publish(request(&queue, "after".into()))
        .await
        .unwrap();
    warren.stop().await;
}

#[tokio::test]
async fn rpc_and_topology_recover_after_connections_drop() {
    let _serial = serial().await;
    let _restore = Restore;
    let exchange = unique("recovered");
    let config = common::config_toml(&format!(
        "[[topology.exchanges]]\nname = \"{exchange}\"\ntype = \"fanout\"\nauto_delete = true\n"
    ));
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    // Someone deletes the configured exchange; a reconnect declares it again.
    broker
        .channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    rabbitmqctl(&["close_all_connections", "fault test"]);
    let broker = Broker::connect().await;
    wait_for(
        "the exchange to be declared again",
        Duration::from_secs(15),
        async || {
            let channel = broker.connection.create_channel().await.unwrap();
            let passive = lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    passive,
                    Default::default(),
                )
                .await
                .is_ok()
        },
    )
    .await;
    // RPC works again (its reply consumer is back).
    let queue = unique("rpc-after");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let mut requests = client
        .subscribe(SubscribeRequest {
            queue: queue.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let replies = Arc::new(Mutex::new(0));
    let responder = tokio::spawn({
        let mut client = client.clone();
        let replies = replies.clone();
        async move {
            while let Ok(Some(d)) = requests.message().await {
                let reply = warren::proto::ReplyRequest {
                    delivery_id: d.delivery_id,
                    message: Some(Message {
                        body: b"pong".to_vec().into(),
                        ..Default::default()
                    }),
                };
                if client.reply(reply).await.is_ok() {
                    *replies.lock().unwrap() += 1;
                }
            }
        }
    });
    let call = CallRequest {
        routing_key: queue.clone(),
        message: Some(Message::default()),
        timeout_ms: 5000,
        ..Default::default()
    };
    let reply = client.call(call).await.unwrap().into_inner();
    assert_eq!(&reply.message.unwrap().body[..], b"pong");
    responder.abort();
    warren.stop().await;
}

/// A blocked key of an ordered group, its held message and the messages
/// waiting behind it survive a broker restart; the subscription resumes,
/// the key stays blocked, and a retry lets it go on in order.
#[tokio::test]
async fn a_blocked_key_survives_a_broker_restart() {
    let _serial = serial().await;
    let _restore = Restore;
    let group = unique("ordered-restart");
    let config = common::config_toml(&format!(
        "[[ordered]]\nname = \"{group}\"\npartitions = 1\n"
    ));
    let warren = Warren::start_with(config).await;
    let mut client = warren.grpc().await;
    for body in ["a0", "a1", "a2", "b0"] {
        let key = &body[..1];
        client
            .publish(PublishRequest {
                exchange: group.clone(),
                ordering_key: key.into(),
                message: Some(Message {
                    body: body.as_bytes().to_vec().into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut stream = common::subscribe_with(&mut client, common::on(&group, 4)).await;
    let a0 = common::next(&mut stream).await;
    assert_eq!(common::body(&a0), "a0");
    common::nack(&mut client, &a0, false, 0).await;
    let b0 = common::next(&mut stream).await;
    common::ack(&mut client, &b0).await;
    let blocked = async || -> Vec<serde_json::Value> {
        let Ok(response) = reqwest::get(warren.url(&format!("/v1/ordered/{group}/blocked"))).await
        else {
            return Vec::new();
        };
        let listing: serde_json::Value = response.json().await.unwrap_or_default();
        listing["blocked"].as_array().cloned().unwrap_or_default()
    };
    wait_for(
        "the key to be blocked",
        Duration::from_secs(5),
        async || blocked().await.first().is_some_and(|b| b["waiting"] == 2),
    )
    .await;

    stop_broker();
    start_broker();
    wait_for("readiness", Duration::from_secs(30), async || {
        ready(&warren).await
    })
    .await;
    wait_for(
        "the key still blocked",
        Duration::from_secs(15),
        async || {
            blocked()
                .await
                .first()
                .is_some_and(|b| b["key"] == "a" && b["waiting"] == 2)
        },
    )
    .await;
    assert!(
        common::quiet(&mut stream, Duration::from_secs(1)).await,
        "nothing of a while it is blocked"
    );
    let retried = reqwest::Client::new()
        .post(warren.url(&format!("/v1/ordered/{group}/blocked/a/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), 200);
    for expected in ["a0", "a1", "a2"] {
        let d = common::next_within(&mut stream, Duration::from_secs(15)).await;
        assert_eq!(common::body(&d), expected);
        common::ack(&mut client, &d).await;
    }
    warren.stop().await;
}
