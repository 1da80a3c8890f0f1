//! Scheduled publish: messages confirmed into a broker-held delay and routed
//! to their target when due, within the contract's precision; bad schedules
//! refused before anything is published; a Warren restart in between; a
//! target gone when due (the dead-letter queue, replay).
//!
//! The delay levels and the exit queue are shared by every test (and every
//! Warren on the broker: any of them may forward a message); each test
//! targets queues of its own and finds its messages by id.

mod common;

use std::time::{Duration, Instant};

use common::{problem, request, unique, Broker, Warren};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions};
use lapin::types::FieldTable;
use serde_json::{json, Value};
use tonic::Code;
use warren::bus::schedule::{self, DEAD_LETTER_QUEUE, MAX_DELAY_SECS};

/// Lateness allowed beyond the contract's bound (scheduling of this test).
const SLACK: Duration = Duration::from_millis(250);

/// The contract's precision for `delay`: 1 s or 2 % of it, the larger.
fn precision(delay: Duration) -> Duration {
    Duration::from_secs(1).max(delay.mul_f64(0.02))
}

/// A message that arrived, and when.
struct Arrival {
    body: String,
    at: Instant,
    delivery: lapin::message::Delivery,
}

/// Consumes `queue` (acking as it goes) until `n` messages arrived or
/// `wait` passed.
async fn arrivals(broker: &Broker, queue: &str, n: usize, wait: Duration) -> Vec<Arrival> {
    let channel = broker.connection.create_channel().await.expect("channel");
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
            Ok(Some(Ok(delivery))) => out.push(Arrival {
                body: String::from_utf8_lossy(&delivery.data).into_owned(),
                at: Instant::now(),
                delivery,
            }),
            _ => break,
        }
    }
    let _ = channel.close(200, "done".into()).await;
    out
}

/// Asserts that `arrival` came `delay` after `sent` (the publish request)
/// and `confirmed` (its confirm), within the contract's precision.
fn on_time(arrival: &Arrival, delay: Duration, sent: Instant, confirmed: Instant) {
    let late = arrival.at.saturating_duration_since(confirmed);
    let bound = delay + precision(delay) + SLACK;
    assert!(
        late <= bound,
        "{}: arrived {late:?} after its confirm; due after {delay:?}, bound {bound:?}",
        arrival.body
    );
    let early = arrival.at.duration_since(sent);
    assert!(
        early + precision(delay) >= delay,
        "{}: arrived {early:?} after its publish, before its delay of {delay:?}",
        arrival.body
    );
}

fn json_publish(queue: &str, body: &str, extra: Value) -> Value {
    let mut request = json!({"exchange": "", "routing_key": queue, "body": body});
    for (k, v) in extra.as_object().unwrap() {
        request[k] = v.clone();
    }
    request
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("warren answers")
}

fn now_ms() -> i64 {
    schedule::now_ms()
}

#[tokio::test]
async fn delayed_messages_arrive_in_due_order_on_time_over_grpc_json_and_raw() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sched-order");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let http = reqwest::Client::new();

    // 3 s over gRPC, 1 s over HTTP JSON, 2 s as a raw publish's headers.
    let sent3 = Instant::now();
    let mut three = request("", &queue, b"3s");
    three.delay_ms = 3_000;
    client.publish(three).await.expect("confirmed");
    let confirmed3 = Instant::now();

    let sent1 = Instant::now();
    let response = post(
        &warren.url("/v1/publish"),
        &json_publish(&queue, "1s", json!({"delay_ms": 1000})),
    )
    .await;
    assert_eq!(response.status(), 200);
    let confirmed1 = Instant::now();

    let sent2 = Instant::now();
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .header("x-warren-delay-ms", "2000")
        .body("2s")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let confirmed2 = Instant::now();

    let got = arrivals(&broker, &queue, 3, Duration::from_secs(10)).await;
    let bodies: Vec<&str> = got.iter().map(|a| a.body.as_str()).collect();
    assert_eq!(bodies, ["1s", "2s", "3s"], "in due order");
    on_time(&got[0], Duration::from_secs(1), sent1, confirmed1);
    on_time(&got[1], Duration::from_secs(2), sent2, confirmed2);
    on_time(&got[2], Duration::from_secs(3), sent3, confirmed3);
    for a in &got {
        let headers = a.delivery.properties.headers().clone().unwrap_or_default();
        assert!(
            !headers
                .inner()
                .keys()
                .any(|k| k.as_str().starts_with("x-warren-")
                    || k.as_str().starts_with("x-death")
                    || k.as_str().starts_with("x-first-death")),
            "{}: Warren's bookkeeping and the wait leave no trace: {headers:?}",
            a.body
        );
        assert_eq!(
            a.delivery.exchange.as_str(),
            "",
            "routed to the target exchange"
        );
        assert_eq!(a.delivery.routing_key.as_str(), queue);
        assert_eq!(*a.delivery.properties.delivery_mode(), Some(2));
    }
    assert_eq!(
        common::metric(
            &warren.metrics().await,
            "warren_scheduled_total{outcome=\"scheduled\"}"
        ),
        3.0
    );
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}

#[tokio::test]
async fn deliver_at_a_time_ahead_waits_and_one_past_is_at_once() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sched-at");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;

    let sent = Instant::now();
    let mut ahead = request("", &queue, b"ahead");
    ahead.deliver_at_ms = now_ms() + 2_000;
    let id = client.publish(ahead).await.unwrap().into_inner().message_id;
    let confirmed = Instant::now();

    let mut past = request("", &queue, b"past");
    past.deliver_at_ms = now_ms() - 60_000;
    let past_sent = Instant::now();
    client.publish(past).await.expect("confirmed");
    let first = arrivals(&broker, &queue, 1, Duration::from_secs(1)).await;
    assert_eq!(first.len(), 1, "a due time past is published at once");
    assert_eq!(first[0].body, "past");
    assert!(first[0].at - past_sent < Duration::from_millis(500));

    let later = arrivals(&broker, &queue, 1, Duration::from_secs(6)).await;
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].body, "ahead");
    assert_eq!(
        later[0]
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .as_str(),
        id,
        "the message id is kept"
    );
    on_time(&later[0], Duration::from_secs(2), sent, confirmed);
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}

/// Takes the message with id `id` out of `queue`, leaving the others in
/// place (got unacked on a channel of their own, which hands them back as
/// it closes); whether it was there.
async fn take_out(broker: &Broker, queue: &str, id: &str) -> bool {
    let channel = broker.connection.create_channel().await.expect("channel");
    let mut found = false;
    while let Ok(Some(got)) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
    {
        let this = got.delivery.properties.message_id().clone();
        if this.is_some_and(|i| i.as_str() == id) {
            channel
                .basic_ack(got.delivery.delivery_tag, Default::default())
                .await
                .expect("acked");
            found = true;
            break;
        }
        if got.message_count == 0 {
            break;
        }
    }
    let _ = channel.close(200, "done".into()).await;
    found
}

#[tokio::test]
async fn thirty_days_and_the_longest_delay_are_confirmed_and_held_by_the_broker() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    // A queue of this test's own, deleted at the end; the messages are
    // taken out of the levels they wait in (were one left behind, it would
    // find no queue when due and be dead-lettered, harming nobody).
    let queue = unique("sched-long");
    broker.queue(&queue).await;
    let mut ids = Vec::new();
    for secs in [30 * 24 * 3600u64, MAX_DELAY_SECS] {
        let response = post(
            &warren.url("/v1/publish"),
            &json_publish(&queue, "later", json!({"delay_ms": secs * 1000})),
        )
        .await;
        assert_eq!(response.status(), 200, "{secs} s");
        let id = response.json::<Value>().await.unwrap()["message_id"]
            .as_str()
            .unwrap()
            .to_owned();
        ids.push((secs, id));
    }
    let early = arrivals(&broker, &queue, 1, Duration::from_secs(3)).await;
    assert!(early.is_empty(), "not delivered early");
    for (secs, id) in ids {
        // It waits first in the level of its highest bit: 30 days is 2^21 s
        // and more, the longest delay 2^27 s and more.
        let level = format!("warren.delay.{}", 63 - secs.leading_zeros());
        assert!(
            take_out(&broker, &level, &id).await,
            "{secs} s: {id} waits in {level}"
        );
    }
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}

#[tokio::test]
async fn bad_schedules_are_refused_and_publish_nothing() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sched-bad");
    broker.queue(&queue).await;
    let url = warren.url("/v1/publish");
    let over = (MAX_DELAY_SECS + 1) * 1000;
    for (extra, says) in [
        (
            json!({"delay_ms": 1000, "deliver_at_ms": now_ms() + 1000}),
            "not both",
        ),
        (json!({"delay_ms": over}), "268435455"),
        (json!({"deliver_at_ms": -5}), "before the Unix epoch"),
        (
            json!({"deliver_at_ms": now_ms() + over as i64}),
            "268435455",
        ),
    ] {
        let (status, body) =
            problem(post(&url, &json_publish(&queue, "bad", extra.clone())).await).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{extra}: {body}"
        );
    }
    let http = reqwest::Client::new();
    for (header, value) in [
        ("x-warren-delay-ms", "soon"),
        ("x-warren-delay-ms", "-1000"),
        ("x-warren-deliver-at-ms", "1.5e12"),
    ] {
        let response = http
            .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
            .header(header, value)
            .body("bad")
            .send()
            .await
            .unwrap();
        let (status, body) = problem(response).await;
        assert_eq!(status, 400, "{header}: {value}: {body}");
    }
    let response = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .header("x-warren-delay-ms", "1000")
        .header("x-warren-deliver-at-ms", (now_ms() + 1000).to_string())
        .body("bad")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 400);

    let mut client = warren.grpc().await;
    let mut both = request("", &queue, b"bad");
    both.delay_ms = 1000;
    both.deliver_at_ms = now_ms() + 1000;
    assert_eq!(
        client.publish(both).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut too_long = request("", &queue, b"bad");
    too_long.delay_ms = over;
    let status = client.publish(too_long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("268435455"), "{status:?}");
    let mut negative = request("", &queue, b"bad");
    negative.deliver_at_ms = -1;
    assert_eq!(
        client.publish(negative).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // A missing exchange, a missing queue behind the default exchange.
    let missing = unique("sched-nowhere");
    let (status, _) = problem(
        post(
            &url,
            &json!({"exchange": missing, "routing_key": "k", "body": "x", "delay_ms": 1000}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    let mut nowhere = request(&missing, "k", b"x");
    nowhere.delay_ms = 1000;
    assert_eq!(
        client.publish(nowhere).await.unwrap_err().code(),
        Code::NotFound
    );
    let (status, body) = problem(
        post(
            &url,
            &json_publish(&missing, "x", json!({"delay_ms": 1000})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("unroutable"),
        "{body}"
    );
    let mut unroutable = request("", &missing, b"x");
    unroutable.delay_ms = 1000;
    assert_eq!(
        client.publish(unroutable).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    // Nothing reached the queue, now or when it would have been due.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(broker.count(&queue).await, 0);
    let metrics = warren.metrics().await;
    assert_eq!(
        common::metric(&metrics, "warren_scheduled_total{outcome=\"scheduled\"}"),
        0.0
    );
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}

#[tokio::test]
async fn a_scheduled_message_survives_a_warren_restart() {
    let broker = Broker::connect().await;
    let queue = unique("sched-restart");
    broker.queue(&queue).await;
    let first = Warren::start().await;
    let mut client = first.grpc().await;
    let mut later = request("", &queue, b"after the restart");
    later.delay_ms = 3_000;
    let sent = Instant::now();
    client.publish(later).await.expect("confirmed");
    let confirmed = Instant::now();
    drop(client);
    first.stop().await;
    assert_eq!(broker.count(&queue).await, 0, "not yet due");
    let second = Warren::start().await;
    let got = arrivals(&broker, &queue, 1, Duration::from_secs(8)).await;
    assert_eq!(got.len(), 1, "the broker kept it across the restart");
    assert_eq!(got[0].body, "after the restart");
    on_time(&got[0], Duration::from_secs(3), sent, confirmed);
    broker.delete_queues(&[queue]).await;
    second.stop().await;
}

/// The dead letter of `dlq` with message id `id`, waiting up to `wait`.
async fn dead_letter(warren: &Warren, dlq: &str, id: &str, wait: Duration) -> Option<Value> {
    let url = warren.url(&format!("/v1/dead-letters/{dlq}?limit=1000"));
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let listing: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let found = listing["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["id"] == id);
        if let Some(found) = found {
            return Some(found.clone());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test]
async fn a_target_gone_when_due_is_dead_lettered_and_replays_once_back() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sched-gone");
    broker.queue(&queue).await;
    let mut message = request("", &queue, b"orphan");
    message.delay_ms = 2_000;
    message.message.as_mut().unwrap().headers.insert(
        "tenant".into(),
        common::value(prost_types::value::Kind::StringValue("a".into())),
    );
    let mut client = warren.grpc().await;
    let id = client
        .publish(message)
        .await
        .unwrap()
        .into_inner()
        .message_id;
    broker.delete_queues(std::slice::from_ref(&queue)).await;

    let letter = dead_letter(&warren, DEAD_LETTER_QUEUE, &id, Duration::from_secs(10))
        .await
        .expect("dead-lettered once due");
    assert_eq!(letter["reason"], "unroutable", "{letter}");
    assert_eq!(letter["original_queue"], "warren.scheduled", "{letter}");
    assert_eq!(letter["message"]["body"], "orphan");
    assert_eq!(letter["message"]["headers"]["tenant"], "a");

    // Back once the queue is: through the forwarder, to its target.
    broker.queue(&queue).await;
    let replayed: Value = post(
        &warren.url(&format!("/v1/dead-letters/{DEAD_LETTER_QUEUE}/replay")),
        &json!({"ids": [id]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    let got = arrivals(&broker, &queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "replayed to its target");
    assert_eq!(got[0].body, "orphan");
    let p = &got[0].delivery.properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), id);
    let headers = p.headers().clone().unwrap_or_default();
    let keys: Vec<&str> = headers.inner().keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["tenant"], "the client's headers and no others");
    assert!(
        dead_letter(&warren, DEAD_LETTER_QUEUE, &id, Duration::ZERO)
            .await
            .is_none(),
        "it left the dead-letter queue"
    );
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}

#[tokio::test]
async fn a_publish_stream_mixes_scheduled_and_immediate_messages_all_confirmed() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sched-stream");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let n = 20;
    let requests: Vec<_> = (0..2 * n)
        .map(|i| {
            let scheduled = i % 2 == 1;
            let body = format!("{}{}", if scheduled { "s" } else { "a" }, i / 2);
            let mut r = request("", &queue, body.as_bytes());
            r.request_id = i.to_string();
            if scheduled {
                r.delay_ms = 1_000;
            }
            r
        })
        .collect();
    let sent = Instant::now();
    let mut responses = client
        .publish_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while let Some(r) = responses.message().await.unwrap() {
        assert_eq!(r.code, 0, "{r:?}");
        answered += 1;
    }
    assert_eq!(answered, 2 * n, "every message confirmed");
    let confirmed = Instant::now();
    let got = arrivals(&broker, &queue, 2 * n, Duration::from_secs(6)).await;
    let bodies: Vec<&str> = got.iter().map(|a| a.body.as_str()).collect();
    let immediate: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
    let scheduled: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
    assert_eq!(bodies[..n], immediate, "the immediate ones first, in order");
    // Every Warren on the broker forwards (competing consumers of the exit
    // queue, several in this test binary): messages due in the same second
    // may come in any order.
    let mut later: Vec<&str> = bodies[n..].to_vec();
    later.sort_by_key(|b| b[1..].parse::<u32>().unwrap());
    assert_eq!(later, scheduled, "then every scheduled one");
    for a in &got[n..] {
        on_time(a, Duration::from_secs(1), sent, confirmed);
    }
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}

#[tokio::test]
async fn permission_is_checked_on_the_target_never_on_the_delay() {
    use sha2::{Digest, Sha256};
    let token = "scheduler-token-0123456789";
    let config = common::config_toml(&format!(
        "[auth]\nenabled = true\n\n[[auth.clients]]\nname = \"scheduler\"\ntoken_sha256 = \"{}\"\npublish = [\"amq.default\"]\n",
        hex::encode(Sha256::digest(token.as_bytes()))
    ));
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("sched-auth");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let publish = |exchange: &str| {
        http.post(warren.url("/v1/publish"))
            .bearer_auth(token)
            .json(
                &json!({"exchange": exchange, "routing_key": queue, "body": "x", "delay_ms": 1000}),
            )
            .send()
    };
    // Allowed on its target (the default exchange), whatever carries it.
    let response = publish("").await.unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    // Not allowed on this target: refused before anything is published.
    let (status, _) = problem(publish("amq.topic").await.unwrap()).await;
    assert_eq!(status, 403);
    let got = arrivals(&broker, &queue, 2, Duration::from_secs(4)).await;
    assert_eq!(got.len(), 1, "the allowed one, when due");
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}

#[tokio::test]
async fn without_a_broker_the_forwarder_holds_up_neither_start_nor_shutdown() {
    // Nothing listens on port 1: the broker is unreachable.
    let config = common::config_with(&[
        ("WARREN__AMQP__URL", "amqp://guest:guest@127.0.0.1:1/%2f"),
        ("WARREN__AMQP__OPERATION_TIMEOUT", "500ms"),
        ("WARREN__AMQP__CONNECT_TIMEOUT", "500ms"),
    ]);
    let started = Instant::now();
    let server = warren::server::Server::start(config).await.unwrap();
    let base = format!("http://{}", server.http_addr);
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let asked = Instant::now();
    let (status, _) = problem(
        post(
            &format!("{base}/v1/publish"),
            &json_publish("q", "x", json!({"delay_ms": 1000})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 503, "a scheduled publish is UNAVAILABLE too");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let stopping = Instant::now();
    server.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn a_target_that_refuses_for_now_gets_the_message_once_it_has_room() {
    // A full queue that rejects publishes: the broker nacks the forward,
    // which is the broker's "not now", not the target's fault.
    let config = common::config_with(&[("WARREN__PUBLISH__RETRY_BUDGET", "500ms")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("sched-full");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    broker.queue_with(&queue, args).await;
    broker.fill_text(&queue, &[b"filler"]).await;
    let mut message = request("", &queue, b"waited");
    message.delay_ms = 1_000;
    let mut client = warren.grpc().await;
    let id = client
        .publish(message)
        .await
        .unwrap()
        .into_inner()
        .message_id;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(broker.count(&queue).await, 1, "still full: only the filler");
    let got = arrivals(&broker, &queue, 2, Duration::from_secs(20)).await;
    let bodies: Vec<&str> = got.iter().map(|a| a.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["filler", "waited"],
        "forwarded once there was room"
    );
    assert!(
        dead_letter(&warren, DEAD_LETTER_QUEUE, &id, Duration::ZERO)
            .await
            .is_none(),
        "not dead-lettered"
    );
    broker.delete_queues(&[queue]).await;
    warren.stop().await;
}
