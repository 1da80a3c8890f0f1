//! The count limits over HTTP: past `amqp.max_channels` (named publishers),
//! `subscribe.max_subscriptions` (SSE streams) and `rpc.max_pending` (calls),
//! a request is refused at once with 429 and a problem+json body that says
//! which limit, that it is worth retrying, and when (`Retry-After`).

mod common;

use std::time::Duration;

use common::{on, problem, unique, Broker, Sse, Warren};
use serde_json::{json, Value};
use tonic::Code;

/// Checks a 429 problem naming `limit` (its config key).
async fn limit_reached(response: reqwest::Response, limit: &str) -> Value {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = problem(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "urn:warren:problem:limit-reached", "{body}");
    assert_eq!(body["code"], Code::ResourceExhausted as i32, "{body}");
    assert_eq!(body["retryable"], true, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains(limit),
        "the detail names {limit}: {body}"
    );
    assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
    body
}

#[tokio::test]
async fn named_publishers_past_amqp_max_channels_are_429() {
    // Three channels, one shared: room for two named publishers.
    let config = common::config_with(&[
        ("WARREN__AMQP__MAX_CHANNELS", "3"),
        ("WARREN__AMQP__SHARED_PUBLISHERS", "1"),
    ]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("http-channels");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    let json_publish = |publisher: Option<&str>, body: &str| {
        let mut request = http
            .post(warren.url("/v1/publish"))
            .json(&json!({"routing_key": queue, "body": body}));
        if let Some(name) = publisher {
            request = request.header("x-warren-publisher", name);
        }
        request.send()
    };
    for name in ["p0", "p1"] {
        let response = json_publish(Some(name), name).await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
    }
    // A third name needs a channel there is no room for: on the JSON
    // endpoint and on the raw one alike.
    limit_reached(
        json_publish(Some("p2"), "refused").await.unwrap(),
        "amqp.max_channels",
    )
    .await;
    let raw = http
        .post(warren.url(&format!("/v1/publish/amq.default/{queue}")))
        .header("x-warren-publisher", "p3")
        .body("refused")
        .send()
        .await
        .unwrap();
    limit_reached(raw, "amqp.max_channels").await;
    // The publishers that have their channels, and the shared one, go on.
    for (publisher, body) in [(Some("p0"), "p0 again"), (None, "shared")] {
        let response = json_publish(publisher, body).await.unwrap();
        assert_eq!(response.status(), 200, "{body}");
    }
    let got = broker.take(&queue, 10, Duration::from_secs(2)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        vec!["p0", "p0 again", "p1", "shared"],
        "nothing refused was published"
    );
    warren.stop().await;
}

#[tokio::test]
async fn subscriptions_past_subscribe_max_subscriptions_are_429() {
    let config = common::config_with(&[("WARREN__SUBSCRIBE__MAX_SUBSCRIPTIONS", "1")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("http-subs");
    broker.queue(&queue).await;
    let url = warren.url(&format!("/v1/subscribe/{queue}"));
    let first = Sse::open(&url).await;
    limit_reached(
        reqwest::get(&url).await.unwrap(),
        "subscribe.max_subscriptions",
    )
    .await;
    // A temporary queue's subscription counts too, and so does gRPC: one cap.
    limit_reached(
        reqwest::get(warren.url("/v1/subscribe/_?exchange=amq.topic&binding_keys=x"))
            .await
            .unwrap(),
        "subscribe.max_subscriptions",
    )
    .await;
    let mut client = warren.grpc().await;
    assert_eq!(
        client.subscribe(on(&queue, 1)).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Closing the stream frees its slot.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        let response = reqwest::get(&url).await.unwrap();
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
        limit_reached(response, "subscribe.max_subscriptions").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "a closed stream frees its slot");
    drop(reopened);
    warren.stop().await;
}

#[tokio::test]
async fn calls_past_rpc_max_pending_are_429() {
    let config = common::config_with(&[("WARREN__RPC__MAX_PENDING", "2")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("http-rpc-cap");
    broker.queue(&queue).await; // nobody answers
    let http = reqwest::Client::new();
    let call = |timeout_ms: u32| {
        http.post(warren.url("/v1/call"))
            .json(&json!({"routing_key": queue, "body": "x", "timeout_ms": timeout_ms}))
            .send()
    };
    // Six at once: two wait for their timeout (504), four find both
    // pending slots taken and are refused at once.
    let started = std::time::Instant::now();
    let responses = futures::future::join_all((0..6).map(|_| call(1000))).await;
    let mut statuses = Vec::new();
    for response in responses {
        let response = response.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            limit_reached(response, "rpc.max_pending").await;
        } else {
            assert_eq!(problem(response).await.0, 504);
        }
    }
    statuses.sort();
    assert_eq!(statuses, vec![429, 429, 429, 429, 504, 504]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The slots are free again once those calls are over.
    let (status, body) = problem(call(100).await.unwrap()).await;
    assert_eq!(status, 504, "{body}");
    warren.stop().await;
}
