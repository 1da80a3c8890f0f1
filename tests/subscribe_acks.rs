//! Settling deliveries over gRPC: acks and their errors, nacks that requeue
//! (attempt counts) or dead-letter, and what a stream that ends gives back.

mod common;

use std::time::Duration;

use common::{ack, body, metric, nack, next, on, quiet, subscribe_with, unique, Broker, Warren};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};
use tonic::Code;
use warren::proto::{AckRequest, SubscribeRequest};

#[tokio::test]
async fn ack_errors_unknown_settled_and_malformed_ids() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("ack-errors");
    broker.queue(&queue).await;
    broker.fill(&queue, 2).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 10)).await;
    let a = next(&mut stream).await;
    let b = next(&mut stream).await;
    ack(&mut client, &a).await;
    for ids in [
        vec![a.delivery_id.clone()],
        vec!["nonsense".into()],
        vec!["1-2-3-4".into()],
    ] {
        let status = client
            .ack(AckRequest {
                delivery_ids: ids.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{ids:?}: {status:?}");
    }
    assert_eq!(
        client
            .ack(AckRequest {
                delivery_ids: vec![]
            })
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // A batch with a bad id settles nothing: b is still ackable.
    let status = client
        .ack(AckRequest {
            delivery_ids: vec![b.delivery_id.clone(), a.delivery_id.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    client
        .ack(AckRequest {
            delivery_ids: vec![b.delivery_id.clone()],
        })
        .await
        .expect("b was left alone");
    // Ids of an ended stream are NOT_FOUND, their messages back in the queue.
    broker.fill(&queue, 1).await;
    let c = next(&mut stream).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = client
        .ack(AckRequest {
            delivery_ids: vec![c.delivery_id],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(broker.count(&queue).await, 1);
    warren.stop().await;
}

#[tokio::test]
async fn requeue_redelivers_with_a_higher_attempt_and_dead_letter_removes() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("requeue");
    let dlq = format!("{queue}.dlq");
    broker.queue(&dlq).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(dlq.as_bytes())),
    );
    broker.queue_with(&queue, args).await;
    broker.fill(&queue, 1).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 5)).await;
    let first = next(&mut stream).await;
    assert_eq!(first.attempt, 1);
    nack(&mut client, &first, true, 0).await;
    let second = next(&mut stream).await;
    assert_eq!(body(&second), "0");
    assert_eq!(second.attempt, 2);
    nack(&mut client, &second, true, 0).await;
    let third = next(&mut stream).await;
    assert_eq!(third.attempt, 3);
    // The nacked id is settled.
    let status = client
        .ack(AckRequest {
            delivery_ids: vec![first.delivery_id],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // requeue=false dead-letters.
    nack(&mut client, &third, false, 0).await;
    let dead = broker.take(&dlq, 1, Duration::from_secs(5)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].data, b"0");
    assert!(quiet(&mut stream, Duration::from_millis(300)).await);
    warren.stop().await;
}

#[tokio::test]
async fn quorum_queue_redeliveries_count_in_attempt() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("quorum");
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    broker.queue_with(&queue, args).await;
    broker.fill(&queue, 1).await;
    let mut client = warren.grpc().await;
    for want in 1..=3u32 {
        // Each stream takes the message and goes away without acking it.
        let mut stream = subscribe_with(&mut client, on(&queue, 1)).await;
        let d = next(&mut stream).await;
        assert_eq!(d.attempt, want, "delivery {want}");
        assert_eq!(d.redelivered, want > 1);
        drop(stream);
    }
    warren.stop().await;
}

#[tokio::test]
async fn cancelling_a_stream_returns_unacked_deliveries_at_once() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("cancel");
    broker.queue(&queue).await;
    broker.fill(&queue, 10).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 5)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut stream).await);
    }
    ack(&mut client, &got[0]).await;
    drop(stream);
    // The four unacked ones are back, with the five never delivered.
    let mut again = subscribe_with(&mut client, on(&queue, 100)).await;
    let mut bodies = Vec::new();
    for _ in 0..9 {
        let d = next(&mut again).await;
        if ["1", "2", "3", "4"].contains(&body(&d).as_str()) {
            assert!(d.redelivered, "{}", body(&d));
            assert_eq!(d.attempt, 2);
        }
        bodies.push(body(&d));
    }
    bodies.sort();
    assert_eq!(bodies, vec!["1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    warren.stop().await;
}

#[tokio::test]
async fn many_deliveries_acked_in_batches() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("batch");
    broker.queue(&queue).await;
    broker.fill(&queue, 2000).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 200)).await;
    let mut pending = Vec::new();
    let mut seen = 0;
    while seen < 2000 {
        let d = next(&mut stream).await;
        assert_eq!(body(&d), seen.to_string(), "in order");
        seen += 1;
        pending.push(d.delivery_id);
        if pending.len() == 50 {
            let acked = client
                .ack(AckRequest {
                    delivery_ids: std::mem::take(&mut pending),
                })
                .await
                .unwrap();
            assert_eq!(acked.into_inner().acked, 50);
        }
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        broker.count(&queue).await,
        0,
        "every ack reached the broker"
    );
    warren.stop().await;
}

/// A subscription with an exchange and no queue consumes a temporary,
/// server-named queue of its own. It has no delay queue (it vanishes with its
/// connection): a requeue goes back through the broker, to the same stream.
#[tokio::test]
async fn a_requeue_on_a_temporary_queue_comes_back_to_the_same_stream() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let exchange = unique("temp-requeue");
    broker.exchange(&exchange, ExchangeKind::Fanout).await;
    let mut client = warren.grpc().await;
    let temporary = SubscribeRequest {
        exchange: exchange.clone(),
        prefetch: 5,
        ..Default::default()
    };
    let mut stream = subscribe_with(&mut client, temporary).await;
    broker
        .publish(&exchange, "", b"again", BasicProperties::default())
        .await;
    let first = next(&mut stream).await;
    assert_eq!(first.attempt, 1);
    assert!(!first.redelivered);
    assert!(first.queue.starts_with("amq.gen-"), "{}", first.queue);
    let before = warren.metrics().await;
    nack(&mut client, &first, true, 0).await;
    let second = next(&mut stream).await;
    assert_eq!(body(&second), "again");
    assert_eq!(second.attempt, 2);
    // A counted copy, as retries on every queue are (the broker's own
    // requeue would set `redelivered` but could not count attempts).
    assert!(!second.redelivered);
    assert_eq!(second.queue, first.queue, "from the same temporary queue");
    assert_eq!(second.exchange, exchange);
    assert_ne!(second.delivery_id, first.delivery_id);
    let after = warren.metrics().await;
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    assert_eq!(delta("warren_nacks_total{requeue=\"true\"}"), 1.0);
    assert_eq!(delta("warren_retries_total"), 1.0);
    assert_eq!(delta("warren_dead_lettered_total"), 0.0);
    // The nacked id is settled; the redelivery is acked for good.
    let status = client
        .ack(AckRequest {
            delivery_ids: vec![first.delivery_id.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    ack(&mut client, &second).await;
    assert!(quiet(&mut stream, Duration::from_millis(300)).await);
    warren.stop().await;
}

/// Every requeue on a temporary queue counts one more attempt, and the
/// retry policy's `max_attempts` ends the loop there as on any other queue.
#[tokio::test]
async fn requeues_on_a_temporary_queue_count_every_attempt_up_to_max_attempts() {
    let config = common::config_with(&[("WARREN__RETRY__MAX_ATTEMPTS", "3")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let exchange = unique("temp-attempts");
    broker.exchange(&exchange, ExchangeKind::Fanout).await;
    let mut client = warren.grpc().await;
    let temporary = SubscribeRequest {
        exchange: exchange.clone(),
        prefetch: 5,
        ..Default::default()
    };
    let mut stream = subscribe_with(&mut client, temporary).await;
    broker
        .publish(&exchange, "", b"loop", BasicProperties::default())
        .await;
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let d = next(&mut stream).await;
        attempts.push(d.attempt);
        nack(&mut client, &d, true, 0).await;
    }
    assert_eq!(attempts, vec![1, 2, 3]);
    // The third requeue used the last attempt: dead-lettered (dropped, for a
    // temporary queue without a dead-letter exchange), not delivered again.
    assert!(
        quiet(&mut stream, Duration::from_millis(500)).await,
        "no fourth attempt"
    );
    warren.stop().await;
}
