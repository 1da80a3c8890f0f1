//! Ordered groups against the real broker: per-key order, one message per
//! key in flight, takeover, retries, blocking and the operators' release.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tonic::transport::Channel as GrpcChannel;
use warren::proto::bus_client::BusClient;
use warren::proto::{Delivery, PublishRequest};

/// A Warren with one ordered group; its name.
async fn with_group(partitions: u32, extra: &str) -> (Warren, String) {
    let group = unique("ordered");
    let warren = start_on(&group, partitions, extra).await;
    (warren, group)
}

async fn start_on(group: &str, partitions: u32, extra: &str) -> Warren {
    let toml = format!(
        "[retry]\nmax_attempts = 3\ninitial_backoff = \"100ms\"\nmax_backoff = \"200ms\"\n\
         [[ordered]]\nname = \"{group}\"\npartitions = {partitions}\n{extra}\n"
    );
    Warren::start_with(config_toml(&toml)).await
}

fn keyed(group: &str, key: &str, body: &str) -> PublishRequest {
    PublishRequest {
        ordering_key: key.into(),
        ..request(group, "", body.as_bytes())
    }
}

async fn publish_keyed(client: &mut BusClient<GrpcChannel>, group: &str, key: &str, body: &str) {
    client
        .publish(keyed(group, key, body))
        .await
        .expect("confirmed");
}

/// The queues a group makes (to delete them afterwards).
async fn cleanup(group: &str, partitions: u32, slots: u32) {
    let broker = Broker::connect().await;
    let mut queues = vec![format!("{group}.dlq"), format!("{group}.subscribers")];
    for p in 0..partitions {
        queues.push(format!("{group}.{p}"));
        queues.push(format!("{group}.{p}.handover"));
        for s in 0..slots {
            queues.push(format!("{group}.{p}.held.{s}"));
            queues.push(format!("{group}.{p}.wait.{s}"));
        }
    }
    broker.delete_queues(&queues).await;
}

fn key_of(d: &Delivery) -> String {
    d.ordering_key.clone()
}

async fn blocked(warren: &Warren, group: &str) -> Vec<Value> {
    let listing: Value = reqwest::get(warren.url(&format!("/v1/ordered/{group}/blocked")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listing["blocked"].as_array().cloned().unwrap_or_default()
}

async fn post_json(url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// 20 keys of 10 messages over 4 partitions, acked in random order after
/// random pauses by concurrent workers: every key arrives in publish order,
/// never two of one key at once, and several keys are in flight together.
#[tokio::test]
async fn keys_keep_their_order_under_parallel_acks() {
    let (warren, group) = with_group(4, "").await;
    let mut client = warren.grpc().await;
    for i in 0..10 {
        for k in 0..20 {
            publish_keyed(&mut client, &group, &format!("key-{k}"), &i.to_string()).await;
        }
    }
    let mut stream = subscribe_with(&mut client, on(&group, 16)).await;
    let seen: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let most = Arc::new(Mutex::new(0usize));
    let mut workers = Vec::new();
    for _ in 0..200 {
        let d = next_within(&mut stream, Duration::from_secs(10)).await;
        let key = key_of(&d);
        assert_eq!(d.queue, group);
        {
            let mut flying = in_flight.lock().unwrap();
            assert!(flying.insert(key.clone()), "two messages of {key} at once");
            let mut m = most.lock().unwrap();
            *m = (*m).max(flying.len());
        }
        seen.lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(body(&d));
        let (mut client, in_flight) = (client.clone(), in_flight.clone());
        workers.push(tokio::spawn(async move {
            let pause = rand::random::<u64>() % 20;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            in_flight.lock().unwrap().remove(&key);
            ack(&mut client, &d).await;
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    for (key, bodies) in seen.iter() {
        assert_eq!(bodies, &expected, "{key}");
    }
    assert!(*most.lock().unwrap() >= 4, "keys flow in parallel");
    assert!(quiet(&mut stream, Duration::from_millis(500)).await);
    warren.stop().await;
    cleanup(&group, 4, 8).await;
}

/// Two subscribers share the group; the active one leaves with messages
/// unacked; the other takes over: every message is acked exactly once, in
/// order per key.
#[tokio::test]
async fn a_subscriber_leaving_hands_over_in_order() {
    let (a, group) = with_group(2, "").await;
    let b = start_on(&group, 2, "").await;
    let mut client_a = a.grpc().await;
    let mut client_b = b.grpc().await;
    let mut first = subscribe_with(&mut client_a, on(&group, 8)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = subscribe_with(&mut client_b, on(&group, 8)).await;
    for i in 0..20 {
        for k in 0..6 {
            publish_keyed(&mut client_a, &group, &format!("k{k}"), &i.to_string()).await;
        }
    }
    let mut acked: HashMap<String, Vec<u32>> = HashMap::new();
    // The first subscriber acks some, then leaves holding others.
    for _ in 0..30 {
        let d = next(&mut first).await;
        ack(&mut client_a, &d).await;
        acked
            .entry(key_of(&d))
            .or_default()
            .push(body(&d).parse().unwrap());
    }
    let _held = next(&mut first).await;
    drop(first);
    while acked.values().map(Vec::len).sum::<usize>() < 120 {
        let d = next_within(&mut second, Duration::from_secs(10)).await;
        ack(&mut client_b, &d).await;
        acked
            .entry(key_of(&d))
            .or_default()
            .push(body(&d).parse().unwrap());
    }
    for (key, got) in &acked {
        assert_eq!(got, &(0..20).collect::<Vec<u32>>(), "{key}");
    }
    a.stop().await;
    b.stop().await;
    cleanup(&group, 2, 16).await;
}

/// A nack with requeue retries the message after the backoff while its key
/// waits; other keys go on meanwhile.
#[tokio::test]
async fn a_retry_keeps_the_key_waiting() {
    let (warren, group) = with_group(1, "").await;
    let mut client = warren.grpc().await;
    for (key, body) in [("a", "a0"), ("a", "a1"), ("b", "b0"), ("b", "b1")] {
        publish_keyed(&mut client, &group, key, body).await;
    }
    let mut stream = subscribe_with(&mut client, on(&group, 10)).await;
    let a0 = next(&mut stream).await;
    let b0 = next(&mut stream).await;
    assert_eq!((body(&a0).as_str(), body(&b0).as_str()), ("a0", "b0"));
    nack(&mut client, &a0, true, 300).await;
    ack(&mut client, &b0).await;
    let b1 = next(&mut stream).await;
    assert_eq!(body(&b1), "b1", "b goes on while a waits");
    ack(&mut client, &b1).await;
    let again = next(&mut stream).await;
    assert_eq!(body(&again), "a0", "a's retry comes before a1");
    assert_eq!(again.attempt, 2);
    assert_ne!(again.delivery_id, a0.delivery_id);
    ack(&mut client, &again).await;
    assert_eq!(body(&next(&mut stream).await), "a1");
    warren.stop().await;
    cleanup(&group, 1, 32).await;
}

/// A failed message blocks its key: held (not dead-lettered), later
/// messages wait, other keys go on; the operator sees it, retries it with a
/// corrected body, and the key resumes in order. A second key is skipped:
/// its message goes to the group's dead-letter queue.
#[tokio::test]
async fn blocked_keys_are_retried_corrected_or_skipped() {
    let (warren, group) = with_group(1, "").await;
    let mut client = warren.grpc().await;
    for body in ["a0", "a1", "a2"] {
        publish_keyed(&mut client, &group, "a", body).await;
    }
    publish_keyed(&mut client, &group, "b", "b0").await;
    let mut stream = subscribe_with(&mut client, on(&group, 10)).await;
    let a0 = next(&mut stream).await;
    assert_eq!(body(&a0), "a0");
    nack(&mut client, &a0, false, 0).await;
    let b0 = next(&mut stream).await;
    assert_eq!(body(&b0), "b0", "other keys go on");
    assert!(
        quiet(&mut stream, Duration::from_millis(500)).await,
        "a waits"
    );
    let listed = blocked(&warren, &group).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["key"], "a");
    assert_eq!(listed[0]["message"]["body"], "a0");
    assert_eq!(listed[0]["waiting"], 2);
    assert!(listed[0]["since_ms"].as_i64().unwrap() > 0);
    assert!(!listed[0]["reason"].as_str().unwrap().is_empty());

    let url = warren.url(&format!("/v1/ordered/{group}/blocked/a/retry"));
    let (status, answer) = post_json(&url, Some(json!({"message": {"body": "a0-fixed"}}))).await;
    assert_eq!(status, 200, "{answer}");
    for expected in ["a0-fixed", "a1", "a2"] {
        let d = next(&mut stream).await;
        assert_eq!(body(&d), expected);
        assert_eq!(key_of(&d), "a");
        ack(&mut client, &d).await;
    }
    assert!(blocked(&warren, &group).await.is_empty());
    let (status, _) = post_json(&url, None).await;
    assert_eq!(status, 404, "a is not blocked any more");

    // Blocking after used-up attempts (max_attempts = 3), then a skip.
    ack(&mut client, &b0).await;
    publish_keyed(&mut client, &group, "b", "b1").await;
    publish_keyed(&mut client, &group, "b", "b2").await;
    for attempt in 1..=3 {
        let d = next(&mut stream).await;
        assert_eq!((body(&d).as_str(), d.attempt), ("b1", attempt));
        nack(&mut client, &d, true, 1).await;
    }
    assert!(quiet(&mut stream, Duration::from_millis(500)).await);
    let listed = blocked(&warren, &group).await;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0]["reason"].as_str().unwrap().contains("attempts"),
        "{listed:?}"
    );
    let skip = warren.url(&format!("/v1/ordered/{group}/blocked/b/skip"));
    let (status, _) = post_json(&skip, None).await;
    assert_eq!(status, 200);
    let d = next(&mut stream).await;
    assert_eq!(body(&d), "b2");
    ack(&mut client, &d).await;
    let broker = Broker::connect().await;
    assert_eq!(broker.bodies(&format!("{group}.dlq"), 1).await, ["b1"]);
    warren.stop().await;
    cleanup(&group, 1, 32).await;
}

/// Operators list the blocked keys while one is released: a listing takes
/// each slot's held message for a moment (the released one has a single
/// copy), and the key's waiting messages must still come after it.
#[tokio::test]
async fn a_released_key_keeps_its_order_while_operators_list() {
    let (warren, group) = with_group(1, "").await;
    let mut client = warren.grpc().await;
    let listing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lister = tokio::spawn({
        let (url, listing) = (
            warren.url(&format!("/v1/ordered/{group}/blocked")),
            listing.clone(),
        );
        async move {
            let http = reqwest::Client::new();
            while listing.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http.get(&url).send().await.map(|r| r.bytes());
            }
        }
    });
    let mut stream = subscribe_with(&mut client, on(&group, 10)).await;
    let retry = warren.url(&format!("/v1/ordered/{group}/blocked/k/retry"));
    for round in 0..15 {
        let (first, second) = (format!("r{round}-0"), format!("r{round}-1"));
        publish_keyed(&mut client, &group, "k", &first).await;
        publish_keyed(&mut client, &group, "k", &second).await;
        let d = next(&mut stream).await;
        assert_eq!(body(&d), first);
        nack(&mut client, &d, false, 0).await;
        // Blocked: retried (corrected) once the listing shows it.
        let fixed = format!("{first}-fixed");
        loop {
            let (status, answer) =
                post_json(&retry, Some(json!({"message": {"body": fixed}}))).await;
            match status {
                200 => break,
                404 => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => panic!("retry: {status} {answer}"),
            }
        }
        for expected in [&fixed, &second] {
            let d = next(&mut stream).await;
            assert_eq!(&body(&d), expected, "round {round}");
            ack(&mut client, &d).await;
        }
    }
    listing.store(false, std::sync::atomic::Ordering::Relaxed);
    lister.await.unwrap();
    warren.stop().await;
    cleanup(&group, 1, 32).await;
}

/// One key with 1,000 messages ahead of 50 keys with 10 each, in one
/// partition: the busy key is taken aside, so the other keys finish while
/// it has gone through only a small part of its messages.
#[tokio::test]
async fn a_busy_key_does_not_hold_up_the_others() {
    let (warren, group) = with_group(1, "").await;
    let mut client = warren.grpc().await;
    let mut stream_requests = Vec::new();
    for i in 0..1000 {
        stream_requests.push(keyed(&group, "busy", &i.to_string()));
    }
    for i in 0..10 {
        for k in 0..50 {
            stream_requests.push(keyed(&group, &format!("k{k}"), &i.to_string()));
        }
    }
    let responses = client
        .publish_stream(futures::stream::iter(stream_requests))
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<u32> = futures::StreamExt::collect::<Vec<_>>(responses)
        .await
        .into_iter()
        .map(|r| r.unwrap().code)
        .collect();
    assert!(codes.iter().all(|&c| c == 0) && codes.len() == 1500);
    let mut stream = subscribe_with(&mut client, on(&group, 16)).await;
    let (mut busy, mut others) = (0, 0);
    let mut last: HashMap<String, i64> = HashMap::new();
    while others < 500 {
        let d = next_within(&mut stream, Duration::from_secs(20)).await;
        let key = key_of(&d);
        let n: i64 = body(&d).parse().unwrap();
        assert_eq!(n, last.get(&key).map_or(0, |l| l + 1), "{key} in order");
        last.insert(key.clone(), n);
        if key == "busy" {
            busy += 1;
            // The busy key's consumer is slow.
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            others += 1;
        }
        ack(&mut client, &d).await;
    }
    assert!(busy < 300, "the others finished after {busy} busy messages");
    // The rest of the busy key still arrives, in order.
    while busy < 1000 {
        let d = next_within(&mut stream, Duration::from_secs(20)).await;
        assert_eq!(key_of(&d), "busy");
        let n: i64 = body(&d).parse().unwrap();
        assert_eq!(n, last["busy"] + 1);
        last.insert("busy".into(), n);
        busy += 1;
        ack(&mut client, &d).await;
    }
    warren.stop().await;
    cleanup(&group, 1, 32).await;
}

/// With every slot of a partition taken, the next failure stops the
/// partition (documented): other keys of it wait until an operator frees
/// the slot.
#[tokio::test]
async fn past_the_blocked_key_limit_the_partition_stops() {
    let (warren, group) = with_group(1, "max_blocked_keys = 1").await;
    let mut client = warren.grpc().await;
    for (key, body) in [("a", "a0"), ("b", "b0"), ("c", "c0")] {
        publish_keyed(&mut client, &group, key, body).await;
    }
    let mut stream = subscribe_with(&mut client, on(&group, 1)).await;
    let a0 = next(&mut stream).await;
    nack(&mut client, &a0, false, 0).await;
    let b0 = next(&mut stream).await;
    assert_eq!(body(&b0), "b0");
    nack(&mut client, &b0, false, 0).await;
    assert!(
        quiet(&mut stream, Duration::from_secs(1)).await,
        "c waits: the partition is stopped"
    );
    let skip = warren.url(&format!("/v1/ordered/{group}/blocked/a/skip"));
    assert_eq!(post_json(&skip, None).await.0, 200);
    // a's slot is free again: b is blocked in it, and c flows.
    let c0 = next(&mut stream).await;
    assert_eq!(body(&c0), "c0");
    ack(&mut client, &c0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed = blocked(&warren, &group).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["key"], "b");
    warren.stop().await;
    cleanup(&group, 1, 1).await;
}

/// A plain AMQP publisher takes part: exchange = the group, routing key =
/// CRC-32 of the key modulo the partitions, the key in a header.
#[tokio::test]
async fn plain_amqp_publishers_take_part() {
    let (warren, group) = with_group(4, "").await;
    let broker = Broker::connect().await;
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "x-warren-ordering-key".into(),
        lapin::types::AMQPValue::LongString("device-7".into()),
    );
    let partition = (crc32fast::hash(b"device-7") % 4).to_string();
    for body in ["one", "two"] {
        let properties = lapin::BasicProperties::default().with_headers(headers.clone());
        broker
            .publish(&group, &partition, body.as_bytes(), properties)
            .await;
    }
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&group, 10)).await;
    let one = next(&mut stream).await;
    assert_eq!(
        (body(&one).as_str(), key_of(&one).as_str()),
        ("one", "device-7")
    );
    assert!(quiet(&mut stream, Duration::from_millis(300)).await);
    ack(&mut client, &one).await;
    assert_eq!(body(&next(&mut stream).await), "two");
    warren.stop().await;
    cleanup(&group, 4, 8).await;
}

#[tokio::test]
async fn bad_ordered_requests_change_nothing() {
    let (warren, group) = with_group(2, "").await;
    let mut client = warren.grpc().await;
    let keyless = client.publish(request(&group, "", b"x")).await.unwrap_err();
    assert_eq!(keyless.code(), tonic::Code::InvalidArgument);
    let queue = unique("plain");
    Broker::connect().await.queue(&queue).await;
    let stray = client.publish(keyed("", &queue, "x")).await.unwrap_err();
    assert_eq!(stray.code(), tonic::Code::InvalidArgument);
    let mut request = on(&group, 10);
    request.auto_ack = true;
    let refused = client.subscribe(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let response = reqwest::get(warren.url("/v1/ordered/no-such-group/blocked"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let (status, _) = post_json(
        &warren.url(&format!("/v1/ordered/{group}/blocked/nobody/retry")),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // HTTP: the key as a JSON field or a header.
    let published = reqwest::Client::new()
        .post(warren.url("/v1/publish"))
        .json(&json!({"exchange": group, "ordering_key": "k", "body": "via-json"}))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    let raw = reqwest::Client::new()
        .post(warren.url(&format!("/v1/publish/{group}/ignored")))
        .header("x-warren-ordering-key", "k")
        .body("via-raw")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    let mut stream = subscribe_with(&mut client, on(&group, 10)).await;
    let first = next(&mut stream).await;
    assert_eq!(body(&first), "via-json");
    ack(&mut client, &first).await;
    assert_eq!(body(&next(&mut stream).await), "via-raw");
    warren.stop().await;
    Broker::connect().await.delete_queues(&[queue]).await;
    cleanup(&group, 2, 16).await;
}

/// `warren` as a child process (to be killed with SIGKILL), on free ports.
struct Child {
    child: std::process::Child,
    grpc: String,
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Child {
    async fn start(group: &str, partitions: u32) -> Self {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("ordered-config")));
        std::fs::write(
            &path,
            format!("[[ordered]]\nname = \"{group}\"\npartitions = {partitions}\n"),
        )
        .unwrap();
        let (http, grpc) = (free_port(), free_port());
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("--config")
            .arg(&path)
            .env("WARREN__AMQP__URL", amqp_url())
            .env("WARREN__HTTP__LISTEN", format!("127.0.0.1:{http}"))
            .env("WARREN__GRPC__LISTEN", format!("127.0.0.1:{grpc}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("warren starts");
        let http = format!("http://127.0.0.1:{http}");
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(format!("{http}/readyz")).await {
                if r.status() == 200 {
                    return Self {
                        child,
                        grpc: format!("http://127.0.0.1:{grpc}"),
                    };
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child warren did not become ready");
    }

    async fn grpc(&self) -> BusClient<GrpcChannel> {
        BusClient::connect(self.grpc.clone()).await.unwrap()
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }
}

/// SIGKILL of the Warren serving a group, while one key is blocked and
/// another has messages in flight: the blocked key and its waiting
/// messages are still there for the Warren that takes over, and the other
/// key goes on in order.
#[tokio::test]
async fn sigkill_while_a_key_is_blocked_loses_nothing() {
    let group = unique("ordered-kill");
    let doomed = Child::start(&group, 1).await;
    let standby = start_on(&group, 1, "").await;
    let mut client = doomed.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&group, 4)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut other = standby.grpc().await;
    let mut second = subscribe_with(&mut other, on(&group, 4)).await;
    for body in ["a0", "a1", "a2"] {
        publish_keyed(&mut client, &group, "a", body).await;
    }
    for i in 0..10 {
        publish_keyed(&mut client, &group, "c", &format!("c{i}")).await;
    }
    let mut first = HashMap::new();
    for _ in 0..2 {
        let d = next(&mut stream).await;
        first.insert(key_of(&d), d);
    }
    nack(&mut client, &first["a"], false, 0).await;
    let c0 = &first["c"];
    assert_eq!(body(c0), "c0");
    ack(&mut client, c0).await;
    let c1 = next(&mut stream).await;
    assert_eq!(body(&c1), "c1");
    // Blocked (held, a1 and a2 waiting); c1 in flight, c2.. behind it.
    let waiting = async {
        loop {
            let listed = blocked(&standby, &group).await;
            if listed.first().is_some_and(|b| b["waiting"] == 2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("a is blocked");
    doomed.kill();

    // The standby takes over: c1 again, then the rest of c, in order.
    for i in 1..10 {
        let d = next_within(&mut second, Duration::from_secs(15)).await;
        assert_eq!(body(&d), format!("c{i}"));
        ack(&mut other, &d).await;
    }
    assert!(
        quiet(&mut second, Duration::from_millis(500)).await,
        "a stays blocked"
    );
    let listed = blocked(&standby, &group).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["key"].as_str(), listed[0]["waiting"].as_u64()),
        (Some("a"), Some(2))
    );
    let url = standby.url(&format!("/v1/ordered/{group}/blocked/a/retry"));
    assert_eq!(post_json(&url, None).await.0, 200);
    for expected in ["a0", "a1", "a2"] {
        let d = next(&mut second).await;
        assert_eq!(body(&d), expected);
        ack(&mut other, &d).await;
    }
    standby.stop().await;
    cleanup(&group, 1, 32).await;
}

/// Pausing a group's name pauses the group on every Warren; resuming lets
/// it go on, in order.
#[tokio::test]
async fn pausing_a_group_holds_it_everywhere() {
    let (a, group) = with_group(2, "").await;
    let b = start_on(&group, 2, "").await;
    let mut client = b.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&group, 4)).await;
    let (status, info) = post_json(&a.url(&format!("/v1/queues/{group}/pause")), None).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["paused"], true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        publish_keyed(&mut client, &group, "k", &i.to_string()).await;
    }
    assert!(quiet(&mut stream, Duration::from_secs(1)).await, "paused");
    let info: Value = reqwest::get(b.url(&format!("/v1/queues/{group}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["paused"], true);
    let (status, _) = post_json(&b.url(&format!("/v1/queues/{group}/resume")), None).await;
    assert_eq!(status, 200);
    for i in 0..3 {
        let d = next(&mut stream).await;
        assert_eq!(body(&d), i.to_string());
        ack(&mut client, &d).await;
    }
    a.stop().await;
    b.stop().await;
    Broker::connect()
        .await
        .delete_queues(&[format!("warren.paused.{group}")])
        .await;
    cleanup(&group, 2, 16).await;
}

/// The first subscriber of a group would serve every partition; it lets
/// partitions beyond its fair share go, so that both subscribers deliver,
/// and every key is still acked once each, in order.
#[tokio::test]
async fn partitions_spread_over_subscribers() {
    let (a, group) = with_group(4, "").await;
    let b = start_on(&group, 4, "").await;
    let mut publisher = a.grpc().await;
    let mut requests = Vec::new();
    for i in 0..40 {
        for k in 0..40 {
            requests.push(keyed(&group, &format!("k{k}"), &i.to_string()));
        }
    }
    let responses = publisher
        .publish_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let confirmed = futures::StreamExt::collect::<Vec<_>>(responses).await;
    assert!(confirmed.iter().all(|r| r.as_ref().unwrap().code == 0));
    let acked: Arc<Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let by: Arc<Mutex<[usize; 2]>> = Arc::default();
    let mut workers = Vec::new();
    for (who, warren) in [&a, &b].into_iter().enumerate() {
        let mut client = warren.grpc().await;
        let mut stream = subscribe_with(&mut client, on(&group, 8)).await;
        let (acked, by) = (acked.clone(), by.clone());
        workers.push(tokio::spawn(async move {
            while let Ok(Ok(Some(d))) =
                tokio::time::timeout(Duration::from_secs(5), stream.message()).await
            {
                tokio::time::sleep(Duration::from_millis(4)).await;
                acked
                    .lock()
                    .unwrap()
                    .entry(key_of(&d))
                    .or_default()
                    .push(body(&d).parse().unwrap());
                by.lock().unwrap()[who] += 1;
                ack(&mut client, &d).await;
            }
        }));
        // The first subscriber is alone for a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 40);
    for (key, got) in &acked {
        assert_eq!(got, &(0..40).collect::<Vec<u32>>(), "{key}");
    }
    let by = *by.lock().unwrap();
    assert!(
        by[1] > 200,
        "the second subscriber served partitions too: {by:?}"
    );
    a.stop().await;
    b.stop().await;
    cleanup(&group, 4, 8).await;
}

/// A scheduled publish to a group keeps its key: it reaches the key's
/// partition when due, in order behind the key's earlier messages.
#[tokio::test]
async fn a_scheduled_message_joins_its_key_when_due() {
    let (warren, group) = with_group(2, "").await;
    let mut client = warren.grpc().await;
    let mut later = keyed(&group, "k", "later");
    later.delay_ms = 1500;
    client.publish(later).await.expect("confirmed");
    publish_keyed(&mut client, &group, "k", "now").await;
    let mut stream = subscribe_with(&mut client, on(&group, 4)).await;
    let now = next(&mut stream).await;
    assert_eq!((body(&now).as_str(), key_of(&now).as_str()), ("now", "k"));
    ack(&mut client, &now).await;
    let due = next_within(&mut stream, Duration::from_secs(5)).await;
    assert_eq!((body(&due).as_str(), key_of(&due).as_str()), ("later", "k"));
    ack(&mut client, &due).await;
    warren.stop().await;
    cleanup(&group, 2, 16).await;
}
