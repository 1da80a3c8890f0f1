//! Subscribing over HTTP: Server-Sent Events, acks and nacks as JSON.

mod common;

use std::time::Duration;

use common::{problem, unique, Broker, Sse, Warren};
use lapin::BasicProperties;
use serde_json::{json, Value};

#[tokio::test]
async fn sse_delivers_acks_and_nacks() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sse");
    broker.queue(&queue).await;
    broker
        .fill_text(&queue, &[b"one", &[0xff, 0x00], b"three"])
        .await;
    let mut sse = Sse::open(&warren.url(&format!("/v1/subscribe/{queue}?prefetch=10"))).await;
    let (id1, d1) = sse.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(d1["delivery_id"], id1);
    assert_eq!(d1["message"]["body"], "one");
    assert_eq!(d1["message"]["content_type"], "text/plain");
    assert_eq!(d1["attempt"], 1);
    assert_eq!(d1["redelivered"], false);
    assert_eq!(d1["routing_key"], queue.as_str());
    let (id2, d2) = sse.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        d2["message"]["body_base64"], "/wA=",
        "binary bodies come as base64"
    );
    assert!(d2["message"].get("body").is_none());
    let (id3, _) = sse.next(Duration::from_secs(5)).await.unwrap();

    let http = reqwest::Client::new();
    let ack = http
        .post(warren.url("/v1/ack"))
        .json(&json!({"delivery_ids": [id1, id2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 200);
    assert_eq!(ack.json::<Value>().await.unwrap()["acked"], 2);
    let nack = http
        .post(warren.url("/v1/nack"))
        .json(&json!({"delivery_ids": [id3], "requeue": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(nack.status(), 200);
    let (_, again) = sse.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(again["message"]["body"], "three");
    assert_eq!(again["attempt"], 2);

    // Settled ids and junk are 404 problems; bad JSON is 400.
    let (status, _) = problem(
        http.post(warren.url("/v1/ack"))
            .json(&json!({"delivery_ids": [id3]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = problem(
        http.post(warren.url("/v1/ack"))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = problem(
        http.post(warren.url("/v1/ack"))
            .json(&json!({"ids": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    // requeue belongs to nack: an ack that asks for it is refused.
    let (status, body) = problem(
        http.post(warren.url("/v1/ack"))
            .json(&json!({"delivery_ids": [again["delivery_id"]], "requeue": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    warren.stop().await;
}

#[tokio::test]
async fn closing_the_connection_returns_unacked_deliveries() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sse-close");
    broker.queue(&queue).await;
    broker.fill_text(&queue, &[b"a", b"b"]).await;
    let mut sse = Sse::open(&warren.url(&format!("/v1/subscribe/{queue}"))).await;
    sse.next(Duration::from_secs(5)).await.unwrap();
    sse.next(Duration::from_secs(5)).await.unwrap();
    drop(sse);
    let mut back = 0;
    for _ in 0..50 {
        back = broker.count(&queue).await;
        if back == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back, 2, "both unacked deliveries are back in the queue");
    warren.stop().await;
}

#[tokio::test]
async fn idle_streams_get_keepalive_comments() {
    let config = common::config_with(&[("WARREN__SUBSCRIBE__KEEPALIVE", "100ms")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("sse-idle");
    broker.queue(&queue).await;
    let mut sse = Sse::open(&warren.url(&format!("/v1/subscribe/{queue}"))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.fill_text(&queue, &[b"late"]).await;
    let (_, d) = sse.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(d["message"]["body"], "late");
    assert!(sse.comments >= 2, "{} keep-alive comments", sse.comments);
    warren.stop().await;
}

#[tokio::test]
async fn sse_broadcast_through_an_exchange() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let mut a =
        Sse::open(&warren.url("/v1/subscribe/_?exchange=amq.topic&binding_keys=sse.test.*")).await;
    let mut b =
        Sse::open(&warren.url("/v1/subscribe/_?exchange=amq.topic&binding_keys=sse.test.*")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let key = format!("sse.test.{}", uuid::Uuid::new_v4().simple());
    broker
        .publish("amq.topic", &key, b"hi all", BasicProperties::default())
        .await;
    for sse in [&mut a, &mut b] {
        let (_, d) = sse.next(Duration::from_secs(5)).await.unwrap();
        assert_eq!(d["message"]["body"], "hi all");
        assert_eq!(d["exchange"], "amq.topic");
    }
    warren.stop().await;
}

#[tokio::test]
async fn subscribe_errors_are_problems() {
    let warren = Warren::start().await;
    let (status, body) = problem(
        reqwest::get(warren.url(&format!("/v1/subscribe/{}", unique("missing"))))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = problem(
        reqwest::get(warren.url("/v1/subscribe/q?prefetch=lots"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = problem(
        reqwest::get(warren.url("/v1/subscribe/q?prefetch=99999999"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = problem(
        reqwest::get(warren.url("/v1/subscribe/q?bogus=1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    warren.stop().await;
}

#[tokio::test]
async fn sse_header_matching() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let exchange = unique("sse-headers");
    broker
        .exchange(&exchange, lapin::ExchangeKind::Headers)
        .await;
    let mut eu = Sse::open(&warren.url(&format!(
        "/v1/subscribe/_?exchange={exchange}&header_match=region:eu,tier:gold&match_all=true"
    )))
    .await;
    // The non-matching ones first: the first event must be the match.
    for (region, tier, text) in [
        ("eu", "silver", "no"),
        ("us", "gold", "no"),
        ("eu", "gold", "yes"),
    ] {
        let mut h = lapin::types::FieldTable::default();
        h.insert(
            "region".into(),
            lapin::types::AMQPValue::LongString(region.into()),
        );
        h.insert(
            "tier".into(),
            lapin::types::AMQPValue::LongString(tier.into()),
        );
        broker
            .publish(
                &exchange,
                "",
                text.as_bytes(),
                BasicProperties::default().with_headers(h),
            )
            .await;
    }
    let (_, d) = eu.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(d["message"]["body"], "yes");
    let bad = reqwest::get(warren.url(&format!(
        "/v1/subscribe/_?exchange={exchange}&header_match=nocolon"
    )))
    .await
    .unwrap();
    assert_eq!(problem(bad).await.0, 400);
    warren.stop().await;
}
