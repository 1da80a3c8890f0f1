//! Subscribing over gRPC: what a delivery carries, competing consumers, the
//! refused subscriptions, and a queue deleted under a stream.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{ack, body, next, on, subscribe_with, unique, Broker, Warren};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable};
use lapin::BasicProperties;
use prost_types::value::Kind;
use tonic::Code;
use warren::proto::SubscribeRequest;

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
    broker.publish("", &queue, b"hello", properties).await;

    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 10)).await;
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
    ack(&mut client, &d).await;
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
        streams.push((
            client.clone(),
            subscribe_with(&mut client, on(&queue, 10)).await,
        ));
    }
    broker.fill(&queue, 300).await;
    let mut tasks = Vec::new();
    for (mut client, mut stream) in streams {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Ok(Some(d))) =
                tokio::time::timeout(Duration::from_secs(2), stream.message()).await
            {
                seen.push(body(&d));
                ack(&mut client, &d).await;
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
    let s1 = subscribe_with(&mut client, on(&queue, 1)).await;
    let s2 = subscribe_with(&mut client, on(&queue, 1)).await;
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
    let mut stream = subscribe_with(&mut client, on(&queue, 1)).await;
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
        Ok(None) => panic!("the stream ended cleanly: the client must see why"),
        Ok(Some(d)) => panic!("unexpected delivery {d:?}"),
    }
    warren.stop().await;
}

/// The terminal error reaches a client whose stream buffer is full when the
/// subscription ends (it used to be dropped, and the stream ended cleanly).
#[tokio::test]
async fn the_end_of_a_subscription_reaches_a_client_with_a_full_buffer() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("deleted-full");
    broker
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    broker.fill(&queue, 20).await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 2)).await;
    // The client reads nothing while Warren fills its buffer and the queue goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker
        .channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let mut delivered = 0;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => delivered += 1,
            other => break other,
        }
    };
    assert!(delivered <= 20, "{delivered}");
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => panic!("after {delivered} deliveries the stream ended without its error"),
        Ok(Some(_)) => unreachable!(),
    }
    warren.stop().await;
}
