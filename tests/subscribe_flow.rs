//! Flow control of a subscription: the prefetch bounds what a client holds
//! (and what Warren holds for a slow client), auto-ack is at most once.

mod common;

use std::time::Duration;

use common::{body, metric, next, next_within, on, quiet, subscribe_with, unique, Broker, Warren};
use lapin::BasicProperties;
use tonic::Code;
use warren::proto::bus_client::BusClient;
use warren::proto::{AckRequest, SubscribeRequest};

#[tokio::test]
async fn prefetch_bounds_unacked_deliveries_and_acks_release_more() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("prefetch");
    broker.queue(&queue).await;
    broker.fill(&queue, 20).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut stream).await);
    }
    assert!(
        quiet(&mut stream, Duration::from_millis(500)).await,
        "no 4th delivery while 3 are unacked"
    );
    // Ack two in one batch: two more come.
    let ids = held.drain(..2).map(|d| d.delivery_id).collect();
    assert_eq!(
        client
            .ack(AckRequest { delivery_ids: ids })
            .await
            .unwrap()
            .into_inner()
            .acked,
        2
    );
    held.push(next(&mut stream).await);
    held.push(next(&mut stream).await);
    assert!(quiet(&mut stream, Duration::from_millis(300)).await);
    let order: Vec<String> = held.iter().map(body).collect();
    assert_eq!(order, vec!["2", "3", "4"]);
    warren.stop().await;
}

#[tokio::test]
async fn auto_ack_is_at_most_once() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("autoack");
    broker.queue(&queue).await;
    broker.fill(&queue, 50).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(
        &mut client,
        SubscribeRequest {
            queue: queue.clone(),
            prefetch: 5,
            auto_ack: true,
            ..Default::default()
        },
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..50 {
        got.push(next(&mut stream).await);
    }
    assert_eq!(
        body(&got[49]),
        "49",
        "more than the prefetch flows without acks"
    );
    let status = client
        .ack(AckRequest {
            delivery_ids: vec![got[0].delivery_id.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "already settled");
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(broker.count(&queue).await, 0, "nothing comes back");
    warren.stop().await;
}

#[tokio::test]
async fn a_slow_client_does_not_grow_memory_beyond_the_prefetch() {
    // The stream's buffer is bounded by the prefetch: with 1000 messages and
    // a client that reads nothing, Warren holds at most `prefetch` of them.
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("slow");
    broker.queue(&queue).await;
    broker.fill(&queue, 1000).await;
    let mut client = warren.grpc().await;
    let stream = subscribe_with(&mut client, on(&queue, 20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Everything beyond the prefetch is still ready in the queue.
    assert_eq!(broker.count(&queue).await, 980);
    let delivered = metric(&warren.metrics().await, "warren_deliveries_total");
    assert!(
        delivered <= 20.0,
        "{delivered} deliveries handed to the stream"
    );
    drop(stream);
    warren.stop().await;
}

/// With `auto_ack` the broker's prefetch no longer holds messages back:
/// Warren acks each delivery as it takes it, so the broker sends more at
/// once. What bounds Warren then is its own stream buffer: the subscription
/// task reserves a slot in the stream's buffer (capacity
/// `prefetch.clamp(1, 1024)`) before it pulls a delivery from the consumer,
/// and acks (removes from the queue) only what it pulled. So with a client
/// that reads nothing:
///
/// * at most `prefetch` deliveries are taken off the queue into the buffer,
/// * at most `prefetch` more are in flight from the broker, unacked
///   (`basic.qos`), in the consumer's buffer: not ready in the queue either,
/// * the transport holds a few more: the client's HTTP/2 window is kept at
///   64 KiB and each message is 32 KiB, so the window, the chunk h2 is
///   sending and the one hyper holds for it are at most
///   `TRANSPORT_SLACK` messages.
///
/// Hence at least `1000 - 2 * prefetch - TRANSPORT_SLACK` messages stay ready
/// in the queue, and Warren has handed at most `prefetch + TRANSPORT_SLACK`
/// deliveries to the stream.
#[tokio::test]
async fn with_auto_ack_warren_holds_no_more_than_its_stream_buffer_for_a_slow_client() {
    const MESSAGES: usize = 1000;
    const PREFETCH: usize = 10;
    const BODY_BYTES: usize = 32 * 1024;
    const TRANSPORT_SLACK: usize = 5;
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("slow-autoack");
    broker.queue(&queue).await;
    for i in 0..MESSAGES {
        let mut body = format!("{i:04}").into_bytes();
        body.resize(BODY_BYTES, b'.');
        broker
            .publish("", &queue, &body, BasicProperties::default())
            .await;
    }
    let channel = tonic::transport::Endpoint::from_shared(warren.grpc_addr.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut client = BusClient::new(channel);
    let request = SubscribeRequest {
        queue: queue.clone(),
        prefetch: PREFETCH as u32,
        auto_ack: true,
        ..Default::default()
    };
    let mut stream = subscribe_with(&mut client, request).await;
    // Read nothing for a while, until the queue stops draining.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ready = broker.count(&queue).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = broker.count(&queue).await;
        if now == ready {
            break;
        }
        ready = now;
    }
    let floor = MESSAGES - 2 * PREFETCH - TRANSPORT_SLACK;
    assert!(
        ready as usize >= floor,
        "{ready} messages still ready, fewer than {floor}: Warren took more than its buffer"
    );
    let delivered = metric(&warren.metrics().await, "warren_deliveries_total") as usize;
    assert!(
        delivered <= PREFETCH + TRANSPORT_SLACK,
        "{delivered} deliveries taken off the queue for a client that reads nothing"
    );
    // Reading resumes the flow: every message comes, in order, and none is
    // left in the queue (auto-ack).
    for i in 0..MESSAGES {
        let d = next_within(&mut stream, Duration::from_secs(10)).await;
        let m = d.message.as_ref().unwrap();
        assert_eq!(m.body.len(), BODY_BYTES);
        assert_eq!(&m.body[..4], format!("{i:04}").as_bytes(), "in order");
    }
    assert!(quiet(&mut stream, Duration::from_millis(300)).await);
    assert_eq!(broker.count(&queue).await, 0, "all acked by Warren");
    drop(stream);
    warren.stop().await;
}
