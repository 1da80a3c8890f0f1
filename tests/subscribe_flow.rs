//! Flow control of a subscription: the prefetch bounds what a client holds
//! (and what Warren holds for a slow client), auto-ack is at most once.

mod common;

use std::time::Duration;

use common::{body, metric, next, on, quiet, subscribe_with, unique, Broker, Warren};
use tonic::Code;
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
