//! Subscribing over gRPC: deliveries with every property, prefetch, acks and
//! nacks, redelivery on cancel, competing consumers, broadcast, auto-ack.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{unique, Broker, Warren};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};
use prost_types::value::Kind;
use tonic::transport::Channel;
use tonic::{Code, Streaming};
use warren::proto::bus_client::BusClient;
use warren::proto::{AckRequest, Delivery, NackRequest, SubscribeRequest};

async fn publish(
    broker: &Broker,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    broker
        .channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn fill(broker: &Broker, queue: &str, n: usize) {
    for i in 0..n {
        publish(
            broker,
            "",
            queue,
            i.to_string().as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
}

async fn subscribe(
    client: &mut BusClient<Channel>,
    request: SubscribeRequest,
) -> Streaming<Delivery> {
    client
        .subscribe(request)
        .await
        .expect("subscribed")
        .into_inner()
}

fn on(queue: &str, prefetch: u32) -> SubscribeRequest {
    SubscribeRequest {
        queue: queue.into(),
        prefetch,
        ..Default::default()
    }
}

async fn next(stream: &mut Streaming<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a delivery within 5s")
        .expect("stream ok")
        .expect("stream open")
}

/// Nothing more arrives within `wait`.
async fn quiet(stream: &mut Streaming<Delivery>, wait: Duration) -> bool {
    tokio::time::timeout(wait, stream.message()).await.is_err()
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.message.as_ref().unwrap().body.to_vec()).unwrap()
}

#[tokio::test]
async fn deliveries_carry_properties_and_typed_headers_like_x_death() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("sub-props");
    broker.queue(&queue).await;
    let mut death = FieldTable::default();
    death.insert("count".into(), AMQPValue::LongLongInt(2));
    death.insert("reason".into(), AMQPValue::LongString("rejected".into()));
    death.insert("queue".into(), AMQPValue::LongString("orders".into()));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers.insert("small".into(), AMQPValue::ShortInt(-3));
    headers.insert("flag".into(), AMQPValue::Boolean(true));
    headers.insert("pi".into(), AMQPValue::Double(3.5));
    let properties = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("utf-8".into())
        .with_headers(headers)
        .with_delivery_mode(1)
        .with_priority(4)
        .with_correlation_id("c-9".into())
        .with_reply_to("replies".into())
        .with_expiration("60000".into())
        .with_message_id("m-9".into())
        .with_timestamp(1_700_000_123)
        .with_type("t-9".into())
        .with_app_id("a-9".into());
    publish(&broker, "", &queue, b"hello", properties).await;

    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, on(&queue, 10)).await;
    let d = next(&mut stream).await;
    let m = d.message.as_ref().unwrap();
    assert_eq!(&m.body[..], b"hello");
    assert_eq!(m.content_type, "text/plain");
    assert_eq!(m.content_encoding, "utf-8");
    assert!(m.transient);
    assert_eq!(m.priority, 4);
    assert_eq!(m.correlation_id, "c-9");
    assert_eq!(m.reply_to, "replies");
    assert_eq!(d.reply_to, "replies");
    assert_eq!(m.expiration_ms, 60_000);
    assert_eq!(m.message_id, "m-9");
    assert_eq!(m.timestamp, 1_700_000_123);
    assert_eq!(m.r#type, "t-9");
    assert_eq!(m.app_id, "a-9");
    assert_eq!(d.exchange, "");
    assert_eq!(d.routing_key, queue);
    assert_eq!(d.queue, queue);
    assert!(!d.redelivered);
    assert_eq!(d.attempt, 1);
    assert_eq!(m.headers["small"].kind, Some(Kind::NumberValue(-3.0)));
    assert_eq!(m.headers["flag"].kind, Some(Kind::BoolValue(true)));
    assert_eq!(m.headers["pi"].kind, Some(Kind::NumberValue(3.5)));
    let Some(Kind::ListValue(deaths)) = &m.headers["x-death"].kind else {
        panic!("x-death is a list: {:?}", m.headers["x-death"])
    };
    let Some(Kind::StructValue(first)) = &deaths.values[0].kind else {
        panic!("x-death[0] is a struct")
    };
    assert_eq!(first.fields["count"].kind, Some(Kind::NumberValue(2.0)));
    assert_eq!(
        first.fields["reason"].kind,
        Some(Kind::StringValue("rejected".into()))
    );
    client
        .ack(AckRequest {
            delivery_ids: vec![d.delivery_id],
        })
        .await
        .unwrap();
    warren.stop().await;
}

#[tokio::test]
async fn prefetch_bounds_unacked_deliveries_and_acks_release_more() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("prefetch");
    broker.queue(&queue).await;
    fill(&broker, &queue, 20).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, on(&queue, 3)).await;
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
async fn ack_errors_unknown_settled_and_malformed_ids() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("ack-errors");
    broker.queue(&queue).await;
    fill(&broker, &queue, 2).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, on(&queue, 10)).await;
    let a = next(&mut stream).await;
    let b = next(&mut stream).await;
    client
        .ack(AckRequest {
            delivery_ids: vec![a.delivery_id.clone()],
        })
        .await
        .unwrap();
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
    fill(&broker, &queue, 1).await;
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
    fill(&broker, &queue, 1).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, on(&queue, 5)).await;
    let first = next(&mut stream).await;
    assert_eq!(first.attempt, 1);
    client
        .nack(NackRequest {
            delivery_ids: vec![first.delivery_id.clone()],
            requeue: true,
            delay_ms: 0,
        })
        .await
        .unwrap();
    let second = next(&mut stream).await;
    assert_eq!(body(&second), "0");
    assert_eq!(second.attempt, 2);
    client
        .nack(NackRequest {
            delivery_ids: vec![second.delivery_id.clone()],
            requeue: true,
            delay_ms: 0,
        })
        .await
        .unwrap();
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
    client
        .nack(NackRequest {
            delivery_ids: vec![third.delivery_id],
            requeue: false,
            delay_ms: 0,
        })
        .await
        .unwrap();
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
    fill(&broker, &queue, 1).await;
    let mut client = warren.grpc().await;
    for want in 1..=3u32 {
        // Each stream takes the message and goes away without acking it.
        let mut stream = subscribe(&mut client, on(&queue, 1)).await;
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
    fill(&broker, &queue, 10).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, on(&queue, 5)).await;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(next(&mut stream).await);
    }
    client
        .ack(AckRequest {
            delivery_ids: vec![got[0].delivery_id.clone()],
        })
        .await
        .unwrap();
    drop(stream);
    // The four unacked ones are back, with the five never delivered.
    let mut again = subscribe(&mut client, on(&queue, 100)).await;
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
async fn competing_consumers_share_without_duplicates() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("compete");
    broker.queue(&queue).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut client = warren.grpc().await;
        streams.push((client.clone(), subscribe(&mut client, on(&queue, 10)).await));
    }
    fill(&broker, &queue, 300).await;
    let mut tasks = Vec::new();
    for (mut client, mut stream) in streams {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Ok(Some(d))) =
                tokio::time::timeout(Duration::from_secs(2), stream.message()).await
            {
                seen.push(body(&d));
                client
                    .ack(AckRequest {
                        delivery_ids: vec![d.delivery_id],
                    })
                    .await
                    .unwrap();
            }
            seen
        }));
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for task in tasks {
        let seen = task.await.unwrap();
        busy += usize::from(!seen.is_empty());
        all.extend(seen);
    }
    assert_eq!(all.len(), 300, "every message delivered once");
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        300,
        "no duplicates"
    );
    assert!(busy >= 2, "the work was shared");
    warren.stop().await;
}

#[tokio::test]
async fn auto_ack_is_at_most_once() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("autoack");
    broker.queue(&queue).await;
    fill(&broker, &queue, 50).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(
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
    let mut a = subscribe(&mut client, broadcast.clone()).await;
    let mut b = subscribe(&mut client, broadcast).await;
    let shared_queue = unique("workers");
    let work = SubscribeRequest {
        queue: shared_queue.clone(),
        exchange: exchange.clone(),
        binding_keys: vec!["order.created".into()],
        prefetch: 10,
        ..Default::default()
    };
    let mut w1 = subscribe(&mut client, work.clone()).await;
    let mut w2 = subscribe(&mut client, work).await;
    for i in 0..4 {
        publish(
            &broker,
            &exchange,
            "order.created",
            format!("e{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    publish(
        &broker,
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
    let _ = broker
        .channel
        .queue_delete(shared_queue.as_str().into(), Default::default())
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
    let mut eu = subscribe(
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
        publish(
            &broker,
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
async fn subscribe_errors() {
    let config = common::config_with(&[("WARREN__SUBSCRIBE__MAX_SUBSCRIPTIONS", "2")]);
    let warren = Warren::start_with(config).await;
    let mut client = warren.grpc().await;
    let cases = [
        (on(&unique("missing"), 1), Code::NotFound),
        (on("", 1), Code::InvalidArgument),
        (on(&"q".repeat(256), 1), Code::InvalidArgument),
        (on("q", 100_000), Code::InvalidArgument),
        (
            SubscribeRequest {
                queue: "q".into(),
                binding_keys: vec!["k".into()],
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            SubscribeRequest {
                exchange: unique("no-exchange"),
                ..Default::default()
            },
            Code::NotFound,
        ),
    ];
    for (request, code) in cases {
        let status = client.subscribe(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
    }
    // The cap on subscriptions.
    let broker = Broker::connect().await;
    let queue = unique("cap");
    broker.queue(&queue).await;
    let s1 = subscribe(&mut client, on(&queue, 1)).await;
    let s2 = subscribe(&mut client, on(&queue, 1)).await;
    assert_eq!(
        client.subscribe(on(&queue, 1)).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    drop(s1);
    let mut reopened = false;
    for _ in 0..50 {
        if client.subscribe(on(&queue, 1)).await.is_ok() {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "an ended subscription frees its slot");
    drop(s2);
    warren.stop().await;
}

#[tokio::test]
async fn a_deleted_queue_ends_the_stream_with_an_error() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("deleted");
    broker
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, on(&queue, 1)).await;
    broker
        .channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends");
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {}
        Ok(Some(d)) => panic!("unexpected delivery {d:?}"),
    }
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
    fill(&broker, &queue, 1000).await;
    let mut client = warren.grpc().await;
    let stream = subscribe(&mut client, on(&queue, 20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Everything beyond the prefetch is still ready in the queue.
    assert_eq!(broker.count(&queue).await, 980);
    let delivered = common::metric(&warren.metrics().await, "warren_deliveries_total");
    assert!(
        delivered <= 20.0,
        "{delivered} deliveries handed to the stream"
    );
    drop(stream);
    warren.stop().await;
}

#[tokio::test]
async fn many_deliveries_acked_in_batches() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("batch");
    broker.queue(&queue).await;
    fill(&broker, &queue, 2000).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe(&mut client, on(&queue, 200)).await;
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

#[tokio::test]
async fn a_named_queue_binds_with_its_name_and_a_refusal_leaves_nothing_behind() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let mut client = warren.grpc().await;
    let queue = unique("by-name");
    let mut stream = subscribe(
        &mut client,
        SubscribeRequest {
            queue: queue.clone(),
            exchange: "amq.direct".into(),
            ..Default::default()
        },
    )
    .await;
    publish(
        &broker,
        "amq.direct",
        &queue,
        b"routed by name",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(body(&next(&mut stream).await), "routed by name");
    drop(stream);
    let _ = broker
        .channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = broker
        .channel
        .queue_delete(format!("{queue}.dlq").as_str().into(), Default::default())
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
    let channel = broker.connection.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    assert!(
        channel
            .queue_declare(orphan.as_str().into(), passive, FieldTable::default())
            .await
            .is_err(),
        "no queue was declared for a refused subscription"
    );
    warren.stop().await;
}
