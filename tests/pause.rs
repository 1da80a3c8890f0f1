//! Pausing and resuming queues across Warren instances on one broker.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

async fn post(url: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .send()
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn show(warren: &Warren, queue: &str) -> (u16, Value) {
    let response = reqwest::get(warren.url(&format!("/v1/queues/{queue}")))
        .await
        .expect("answered");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A pause on one Warren stops deliveries on another (open streams stay
/// open; a held delivery can still be acked); a Warren started while the
/// queue is paused delivers nothing; resume on any Warren restarts them all.
#[tokio::test]
async fn pause_holds_every_warren_and_survives_restarts() {
    let broker = Broker::connect().await;
    let queue = unique("pause");
    broker.queue(&queue).await;
    let (a, b) = (Warren::start().await, Warren::start().await);
    let mut client_b = b.grpc().await;
    let mut stream = subscribe(&mut client_b, &queue).await;
    broker.fill_text(&queue, &[b"one"]).await;
    let held = next(&mut stream).await;
    assert_eq!(body(&held), "one");

    let (status, info) = post(&a.url(&format!("/v1/queues/{queue}/pause"))).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["paused"], true);
    assert_eq!(info["name"], queue.as_str());
    // Announced over the bus: give it a moment to reach b.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.fill_text(&queue, &[b"two", b"three"]).await;
    assert!(
        quiet(&mut stream, Duration::from_secs(2)).await,
        "a paused queue delivers nothing"
    );
    ack(&mut client_b, &held).await;
    let (status, info) = show(&b, &queue).await;
    assert_eq!(status, 200);
    assert_eq!(info["paused"], true);
    assert_eq!(info["messages"], 2, "{info}");

    // A Warren that starts now sees the state kept on the broker.
    a.stop().await;
    let c = Warren::start().await;
    let mut client_c = c.grpc().await;
    let mut late = subscribe(&mut client_c, &queue).await;
    assert!(quiet(&mut late, Duration::from_secs(1)).await);

    let (status, info) = post(&c.url(&format!("/v1/queues/{queue}/resume"))).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["paused"], false);
    let mut got = Vec::new();
    for _ in 0..2 {
        let d = tokio::select! {
            d = stream.message() => d,
            d = late.message() => d,
        };
        let d = d.expect("stream ok").expect("open");
        got.push(body(&d));
    }
    got.sort();
    assert_eq!(got, ["three", "two"]);
    let (_, info) = show(&c, &queue).await;
    assert_eq!(info["paused"], false);
    b.stop().await;
    c.stop().await;
    broker
        .delete_queues(&[queue.clone(), format!("warren.paused.{queue}")])
        .await;
}

/// Deliveries the broker had sent ahead when the pause came go back to the
/// queue: another subscriber gets them after the resume.
#[tokio::test]
async fn pause_loses_nothing_that_was_prefetched() {
    let broker = Broker::connect().await;
    let queue = unique("pause-prefetch");
    broker.queue(&queue).await;
    let warren = Warren::start().await;
    let mut client = warren.grpc().await;
    broker.fill(&queue, 20).await;
    // Prefetch 20, but take only one: the rest waits in Warren's buffer.
    let mut stream = subscribe_with(&mut client, on(&queue, 20)).await;
    let first = next(&mut stream).await;
    let (status, _) = post(&warren.url(&format!("/v1/queues/{queue}/pause"))).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Drain what the stream had already queued for the client (bounded by
    // its buffer), then nothing more comes.
    let mut delivered = 1;
    while !quiet(&mut stream, Duration::from_millis(700)).await {
        delivered += 1;
    }
    let waiting = broker.ready(&queue).await.expect("queue exists");
    assert_eq!(
        waiting as usize + delivered,
        20,
        "everything not delivered is back in the queue"
    );
    ack(&mut client, &first).await;
    let (status, _) = post(&warren.url(&format!("/v1/queues/{queue}/resume"))).await;
    assert_eq!(status, 200);
    for _ in 0..waiting {
        next(&mut stream).await;
    }
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

#[tokio::test]
async fn bad_pauses_change_nothing() {
    let warren = Warren::start().await;
    let missing = unique("pause-missing");
    let (status, body) = post(&warren.url(&format!("/v1/queues/{missing}/pause"))).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = show(&warren, &missing).await;
    assert_eq!(status, 404);
    let long = "q".repeat(300);
    let (status, _) = post(&warren.url(&format!("/v1/queues/{long}/pause"))).await;
    assert_eq!(status, 400);
    // A browser page from elsewhere cannot pause anything.
    let response = reqwest::Client::new()
        .post(warren.url("/v1/queues/x/pause"))
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let broker = Broker::connect().await;
    assert_eq!(
        broker.ready(&format!("warren.paused.{missing}")).await,
        None
    );
    warren.stop().await;
}

/// A stream opened on a queue that other streams of the same Warren already
/// watch takes the state they know (no broker read of its own), and that
/// state follows pauses and resumes made on another Warren.
#[tokio::test]
async fn a_new_stream_on_a_watched_queue_takes_its_current_state() {
    let broker = Broker::connect().await;
    let queue = unique("pause-watched");
    broker.queue(&queue).await;
    let (a, b) = (Warren::start().await, Warren::start().await);
    let mut client = b.grpc().await;
    let mut first = subscribe(&mut client, &queue).await;
    let (status, info) = post(&a.url(&format!("/v1/queues/{queue}/pause"))).await;
    assert_eq!(status, 200, "{info}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut second = subscribe(&mut client, &queue).await;
    broker.fill_text(&queue, &[b"held"]).await;
    assert!(quiet(&mut first, Duration::from_secs(1)).await);
    assert!(quiet(&mut second, Duration::from_secs(1)).await);
    let (status, info) = post(&a.url(&format!("/v1/queues/{queue}/resume"))).await;
    assert_eq!(status, 200, "{info}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut third = subscribe(&mut client, &queue).await;
    let d = tokio::select! {
        d = first.message() => d,
        d = second.message() => d,
        d = third.message() => d,
    };
    assert_eq!(body(&d.expect("stream ok").expect("open")), "held");
    drop((first, second, third));
    a.stop().await;
    b.stop().await;
}
