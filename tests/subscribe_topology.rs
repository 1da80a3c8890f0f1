//! Subscriptions that bind queues: broadcast through temporary queues, shared
//! named queues, headers matching, and a refused binding that leaves nothing.

mod common;

use std::time::Duration;

use common::{body, next, quiet, subscribe_with, unique, Broker, Warren};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use tonic::Code;
use warren::proto::SubscribeRequest;

#[tokio::test]
async fn broadcast_gives_every_subscriber_a_copy_and_named_queues_share() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let exchange = unique("events");
    broker.exchange(&exchange, ExchangeKind::Topic).await;
    let mut client = warren.grpc().await;
    let broadcast = SubscribeRequest {
        exchange: exchange.clone(),
        binding_keys: vec!["order.*".into()],
        prefetch: 10,
        ..Default::default()
    };
    let mut a = subscribe_with(&mut client, broadcast.clone()).await;
    let mut b = subscribe_with(&mut client, broadcast).await;
    let shared_queue = unique("workers");
    let work = SubscribeRequest {
        queue: shared_queue.clone(),
        exchange: exchange.clone(),
        binding_keys: vec!["order.created".into()],
        prefetch: 10,
        ..Default::default()
    };
    let mut w1 = subscribe_with(&mut client, work.clone()).await;
    let mut w2 = subscribe_with(&mut client, work).await;
    for i in 0..4 {
        broker
            .publish(
                &exchange,
                "order.created",
                format!("e{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
    }
    broker
        .publish(
            &exchange,
            "invoice.paid",
            b"other",
            BasicProperties::default(),
        )
        .await;
    for stream in [&mut a, &mut b] {
        let mut bodies = Vec::new();
        for _ in 0..4 {
            bodies.push(body(&next(stream).await));
        }
        assert_eq!(
            bodies,
            vec!["e0", "e1", "e2", "e3"],
            "each broadcast subscriber has every copy"
        );
        assert!(quiet(stream, Duration::from_millis(200)).await);
    }
    let mut shared = Vec::new();
    for stream in [&mut w1, &mut w2] {
        while let Ok(Ok(Some(d))) =
            tokio::time::timeout(Duration::from_millis(500), stream.message()).await
        {
            shared.push(body(&d));
        }
    }
    shared.sort();
    assert_eq!(
        shared,
        vec!["e0", "e1", "e2", "e3"],
        "the named queue's subscribers share the copies"
    );
    drop((a, b, w1, w2));
    broker
        .delete_queues(&[shared_queue.clone(), format!("{shared_queue}.dlq")])
        .await;
    warren.stop().await;
}

#[tokio::test]
async fn headers_matching_subscriptions() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let exchange = unique("hdr");
    broker.exchange(&exchange, ExchangeKind::Headers).await;
    let mut client = warren.grpc().await;
    let mut eu = subscribe_with(
        &mut client,
        SubscribeRequest {
            exchange: exchange.clone(),
            header_match: [
                ("region".to_string(), "eu".to_string()),
                ("tier".to_string(), "gold".to_string()),
            ]
            .into(),
            match_all: true,
            ..Default::default()
        },
    )
    .await;
    for (region, tier, text) in [
        ("eu", "gold", "yes"),
        ("eu", "silver", "no"),
        ("us", "gold", "no"),
    ] {
        let mut h = FieldTable::default();
        h.insert("region".into(), AMQPValue::LongString(region.into()));
        h.insert("tier".into(), AMQPValue::LongString(tier.into()));
        broker
            .publish(
                &exchange,
                "",
                text.as_bytes(),
                BasicProperties::default().with_headers(h),
            )
            .await;
    }
    assert_eq!(body(&next(&mut eu).await), "yes");
    assert!(quiet(&mut eu, Duration::from_millis(300)).await);
    warren.stop().await;
}

#[tokio::test]
async fn a_named_queue_binds_with_its_name_and_a_refusal_leaves_nothing_behind() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let mut client = warren.grpc().await;
    let queue = unique("by-name");
    let mut stream = subscribe_with(
        &mut client,
        SubscribeRequest {
            queue: queue.clone(),
            exchange: "amq.direct".into(),
            ..Default::default()
        },
    )
    .await;
    broker
        .publish(
            "amq.direct",
            &queue,
            b"routed by name",
            BasicProperties::default(),
        )
        .await;
    assert_eq!(body(&next(&mut stream).await), "routed by name");
    drop(stream);
    broker
        .delete_queues(&[queue.clone(), format!("{queue}.dlq")])
        .await;

    let orphan = unique("orphan");
    let request = SubscribeRequest {
        queue: orphan.clone(),
        exchange: unique("missing"),
        ..Default::default()
    };
    assert_eq!(
        client.subscribe(request).await.unwrap_err().code(),
        Code::NotFound
    );
    assert!(
        broker.ready(&orphan).await.is_none(),
        "no queue was declared for a refused subscription"
    );
    warren.stop().await;
}
