//! A publish the broker nacks is retried on a fresh channel within
//! `publish.retry_budget` (as after a failover, where a channel is nacked
//! for a while and a fresh one is not), on the shared channels and on a
//! publisher session alike; past the budget it fails UNAVAILABLE.
//!
//! A full queue with `x-overflow = reject-publish` makes the broker nack:
//! once a consumer makes room, the retried publish is confirmed.

mod common;

use std::time::Duration;

use common::{on_publisher, request, unique, Broker, Warren};
use lapin::types::{AMQPValue, FieldTable, LongString};
use tonic::Code;

async fn full_queue(broker: &Broker) -> String {
    let queue = unique("nacks");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    broker.queue_with(&queue, args).await;
    broker
        .publish("", &queue, b"filler", lapin::BasicProperties::default())
        .await;
    queue
}

#[tokio::test]
async fn a_nacked_publish_is_retried_until_the_broker_takes_it() {
    let warren = Warren::start_with(common::config_with(&[(
        "WARREN__PUBLISH__RETRY_BUDGET",
        "10s",
    )]))
    .await;
    let broker = Broker::connect().await;
    for named in [false, true] {
        let queue = full_queue(&broker).await;
        let mut client = warren.grpc().await;
        let publish = {
            let request = request("", &queue, b"wanted");
            let request = if named {
                on_publisher(request, &unique("nacked"))
            } else {
                tonic::Request::new(request)
            };
            tokio::spawn(async move { client.publish(request).await })
        };
        // Nacked for a while: the publish waits within its budget...
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!publish.is_finished(), "still retrying (named: {named})");
        // ...and is confirmed once the queue has room.
        let taken = broker.take(&queue, 1, Duration::from_secs(5)).await;
        assert_eq!(&taken[0].data[..], b"filler");
        let confirmed = tokio::time::timeout(Duration::from_secs(10), publish)
            .await
            .expect("answered within the budget")
            .unwrap();
        assert!(confirmed.is_ok(), "named: {named}: {confirmed:?}");
        let stored = broker.take(&queue, 2, Duration::from_secs(2)).await;
        assert_eq!(stored.len(), 1, "stored once");
        assert_eq!(&stored[0].data[..], b"wanted");
    }
    let metrics = warren.metrics().await;
    assert_eq!(
        common::metric(&metrics, "warren_circuit_breaker_state"),
        0.0,
        "the nacks a fresh channel overcame did not trip the breaker"
    );
    warren.stop().await;
}

#[tokio::test]
async fn a_publish_nacked_past_its_budget_is_unavailable() {
    let warren = Warren::start_with(common::config_with(&[(
        "WARREN__PUBLISH__RETRY_BUDGET",
        "500ms",
    )]))
    .await;
    let broker = Broker::connect().await;
    let queue = full_queue(&broker).await;
    let mut client = warren.grpc().await;
    for request in [
        tonic::Request::new(request("", &queue, b"refused")),
        on_publisher(request("", &queue, b"refused"), &unique("nacked")),
    ] {
        let e = client.publish(request).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("basic.nack"), "{e:?}");
    }
    let stored = broker.take(&queue, 3, Duration::from_secs(1)).await;
    assert_eq!(stored.len(), 1, "only the filler");
    warren.stop().await;
}
