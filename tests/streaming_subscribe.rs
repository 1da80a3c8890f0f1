//! StreamingSubscribe: settlements in the stream, ack deadlines, extension.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use warren::proto::{Delivery, StreamingSubscribeRequest, SubscribeRequest};

/// Opens a StreamingSubscribe with `subscription`; the sender of later
/// requests and the deliveries.
async fn open(
    warren: &Warren,
    subscription: SubscribeRequest,
) -> (mpsc::Sender<StreamingSubscribeRequest>, Streaming<Delivery>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(StreamingSubscribeRequest {
        subscription: Some(subscription),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut client = warren.grpc().await;
    let stream = client
        .streaming_subscribe(ReceiverStream::new(rx))
        .await
        .expect("subscribed")
        .into_inner();
    (tx, stream)
}

fn acks(ids: &[&Delivery]) -> StreamingSubscribeRequest {
    StreamingSubscribeRequest {
        ack_ids: ids.iter().map(|d| d.delivery_id.clone()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn acks_in_the_stream_settle_deliveries() {
    let broker = Broker::connect().await;
    let queue = unique("streaming");
    broker.queue(&queue).await;
    broker.fill(&queue, 20).await;
    let warren = Warren::start().await;
    let (tx, mut stream) = open(&warren, on(&queue, 5)).await;
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let d = next(&mut stream).await;
        bodies.push(body(&d));
        // An unknown id beside a real one is skipped; the real one counts.
        let mut request = acks(&[&d]);
        request.ack_ids.push("00-0-0".into());
        tx.send(request).await.unwrap();
    }
    assert_eq!(bodies, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(
        quiet(&mut stream, Duration::from_millis(500)).await,
        "nothing redelivered"
    );
    assert!(broker.is_empty(&queue).await);
    // In-stream nack with requeue: retried under the policy (quickly here).
    broker.fill_text(&queue, &[b"again"]).await;
    let d = next(&mut stream).await;
    tx.send(StreamingSubscribeRequest {
        nack_ids: vec![d.delivery_id.clone()],
        requeue: true,
        delay_ms: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let retried = next(&mut stream).await;
    assert_eq!((body(&retried).as_str(), retried.attempt), ("again", 2));
    tx.send(acks(&[&retried])).await.unwrap();
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

/// A delivery past its deadline is requeued by Warren alone: another held
/// delivery, extended in time, keeps its id and can still be acked (the
/// channel was not closed), and an acked one is not redelivered.
#[tokio::test]
async fn a_delivery_past_its_deadline_comes_back_alone() {
    let broker = Broker::connect().await;
    let queue = unique("deadline");
    broker.queue(&queue).await;
    broker
        .fill_text(&queue, &[b"forgotten", b"acked", b"extended"])
        .await;
    let warren = Warren::start().await;
    let mut request = on(&queue, 3);
    request.ack_deadline_ms = 800;
    let (tx, mut stream) = open(&warren, request).await;
    let forgotten = next(&mut stream).await;
    let acked = next(&mut stream).await;
    let extended = next(&mut stream).await;
    assert_eq!(body(&extended), "extended");
    tx.send(acks(&[&acked])).await.unwrap();
    let extend = StreamingSubscribeRequest {
        extend_ids: vec![extended.delivery_id.clone()],
        ..Default::default()
    };
    // Extend every 200 ms for 2 s (more than three deadlines); meanwhile the
    // forgotten one comes back.
    let mut again = None;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => tx.send(extend.clone()).await.unwrap(),
            d = stream.message() => {
                let d = d.unwrap().unwrap();
                assert!(again.is_none(), "only one comes back: {d:?}");
                tx.send(acks(&[&d])).await.unwrap();
                again = Some(d);
            }
        }
    }
    let again = again.expect("the forgotten delivery came back");
    assert_eq!(body(&again), "forgotten");
    assert!(again.redelivered && again.attempt >= 2, "{again:?}");
    assert_ne!(again.delivery_id, forgotten.delivery_id);
    // The extended delivery is still held, on the same channel.
    let mut client = warren.grpc().await;
    ack(&mut client, &extended).await;
    let stale = client
        .ack(warren::proto::AckRequest {
            delivery_ids: vec![forgotten.delivery_id.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::NotFound, "its id is gone");
    assert!(quiet(&mut stream, Duration::from_millis(800)).await);
    assert!(metric(&warren.metrics().await, "warren_ack_deadline_expired_total") >= 1.0);
    assert!(broker.is_empty(&queue).await);
    drop(tx);
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

/// Unary Subscribe takes ack_deadline_ms too.
#[tokio::test]
async fn subscribe_takes_a_deadline_too() {
    let broker = Broker::connect().await;
    let queue = unique("deadline-unary");
    broker.queue(&queue).await;
    broker.fill_text(&queue, &[b"slow"]).await;
    let warren = Warren::start().await;
    let mut client = warren.grpc().await;
    let mut request = on(&queue, 1);
    request.ack_deadline_ms = 300;
    let mut stream = subscribe_with(&mut client, request).await;
    let first = next(&mut stream).await;
    let again = next_within(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(body(&again), "slow");
    assert_ne!(again.delivery_id, first.delivery_id);
    ack(&mut client, &again).await;
    warren.stop().await;
    broker.delete_queues(&[queue]).await;
}

/// In an ordered group an expired delivery comes back before the key's
/// next message.
#[tokio::test]
async fn an_ordered_key_waits_for_its_expired_head() {
    let group = unique("ordered-deadline");
    let warren = Warren::start_with(config_toml(&format!(
        "[[ordered]]\nname = \"{group}\"\npartitions = 1\n"
    )))
    .await;
    let mut client = warren.grpc().await;
    for body in ["k0", "k1"] {
        let mut r = request(&group, "", body.as_bytes());
        r.ordering_key = "k".into();
        client.publish(r).await.unwrap();
    }
    let mut subscription = on(&group, 4);
    subscription.ack_deadline_ms = 300;
    let (tx, mut stream) = open(&warren, subscription).await;
    let first = next(&mut stream).await;
    assert_eq!(body(&first), "k0");
    let again = next_within(&mut stream, Duration::from_secs(3)).await;
    assert_eq!((body(&again).as_str(), again.attempt), ("k0", 2));
    tx.send(acks(&[&again])).await.unwrap();
    assert_eq!(body(&next(&mut stream).await), "k1");
    warren.stop().await;
    let broker = Broker::connect().await;
    let mut queues = vec![format!("{group}.dlq"), format!("{group}.subscribers")];
    queues.push(format!("{group}.0"));
    queues.push(format!("{group}.0.handover"));
    for s in 0..32 {
        queues.push(format!("{group}.0.held.{s}"));
        queues.push(format!("{group}.0.wait.{s}"));
    }
    broker.delete_queues(&queues).await;
}

#[tokio::test]
async fn bad_streaming_subscriptions_are_refused() {
    let warren = Warren::start().await;
    let mut client = warren.grpc().await;
    // No subscription in the first request.
    let (tx, rx) = mpsc::channel(1);
    tx.send(StreamingSubscribeRequest::default()).await.unwrap();
    let refused = client
        .streaming_subscribe(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // A deadline above the broker's consumer_timeout.
    let queue = unique("deadline-bad");
    Broker::connect().await.queue(&queue).await;
    let mut request = on(&queue, 1);
    request.ack_deadline_ms = 1_800_001;
    let refused = client.subscribe(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    warren.stop().await;
    Broker::connect().await.delete_queues(&[queue]).await;
}
