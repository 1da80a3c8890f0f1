//! Publishing over gRPC: confirms, properties, typed headers, unroutable and
//! missing exchanges, ordering in a stream, and the bad inputs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{unique, Broker, Warren};
use lapin::options::{ExchangeDeleteOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tonic::Code;
use warren::proto::{Message, PublishRequest};

fn v(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

fn request(exchange: &str, routing_key: &str, body: &[u8]) -> PublishRequest {
    PublishRequest {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        message: Some(Message {
            body: body.to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn unary_publish_carries_body_properties_and_typed_headers() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("props");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;

    let headers: HashMap<String, Value> = [
        ("count".to_string(), v(Kind::NumberValue(42.0))),
        ("ratio".to_string(), v(Kind::NumberValue(0.25))),
        ("ok".to_string(), v(Kind::BoolValue(true))),
        ("name".to_string(), v(Kind::StringValue("zoë".into()))),
        (
            "list".to_string(),
            v(Kind::ListValue(ListValue {
                values: vec![
                    v(Kind::NumberValue(1.0)),
                    v(Kind::StringValue("two".into())),
                ],
            })),
        ),
        (
            "table".to_string(),
            v(Kind::StructValue(Struct {
                fields: [("inner".to_string(), v(Kind::NumberValue(-3.0)))].into(),
            })),
        ),
    ]
    .into();
    let body: Vec<u8> = (0..=255u8).collect();
    let message = Message {
        body: body.clone().into(),
        content_type: "application/octet-stream".into(),
        content_encoding: "identity".into(),
        headers,
        message_id: "msg-1".into(),
        correlation_id: "corr-1".into(),
        r#type: "order.created".into(),
        priority: 7,
        expiration_ms: 600_000,
        timestamp: 1_700_000_000,
        app_id: "tests".into(),
        transient: false,
        reply_to: "some.queue".into(),
        user_id: "guest".into(),
    };
    let response = client
        .publish(PublishRequest {
            routing_key: queue.clone(),
            message: Some(message),
            request_id: "r1".into(),
            ..Default::default()
        })
        .await
        .expect("confirmed")
        .into_inner();
    assert_eq!(response.code, 0);
    assert_eq!(response.request_id, "r1");
    assert_eq!(response.message_id, "msg-1");

    let got = broker.take(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.data, body);
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/octet-stream"
    );
    assert_eq!(p.content_encoding().as_ref().unwrap().as_str(), "identity");
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), "msg-1");
    assert_eq!(p.correlation_id().as_ref().unwrap().as_str(), "corr-1");
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "order.created");
    assert_eq!(*p.priority(), Some(7));
    assert_eq!(p.expiration().as_ref().unwrap().as_str(), "600000");
    assert_eq!(*p.timestamp(), Some(1_700_000_000));
    assert_eq!(p.app_id().as_ref().unwrap().as_str(), "tests");
    assert_eq!(p.reply_to().as_ref().unwrap().as_str(), "some.queue");
    assert_eq!(p.user_id().as_ref().unwrap().as_str(), "guest");
    assert_eq!(*p.delivery_mode(), Some(2), "persistent by default");
    let h = p.headers().as_ref().unwrap().inner();
    assert_eq!(h["count"], AMQPValue::LongLongInt(42));
    assert_eq!(h["ratio"], AMQPValue::Double(0.25));
    assert_eq!(h["ok"], AMQPValue::Boolean(true));
    assert_eq!(h["name"], AMQPValue::LongString("zoë".as_bytes().into()));
    match &h["list"] {
        AMQPValue::FieldArray(a) => assert_eq!(
            a.as_slice(),
            &[
                AMQPValue::LongLongInt(1),
                AMQPValue::LongString("two".as_bytes().into())
            ]
        ),
        other => panic!("list is {other:?}"),
    }
    match &h["table"] {
        AMQPValue::FieldTable(t) => assert_eq!(t.inner()["inner"], AMQPValue::LongLongInt(-3)),
        other => panic!("table is {other:?}"),
    }
    warren.stop().await;
}

#[tokio::test]
async fn transient_messages_and_assigned_ids() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("transient");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let mut req = request("", &queue, b"t");
    req.message.as_mut().unwrap().transient = true;
    let response = client.publish(req).await.unwrap().into_inner();
    assert!(!response.message_id.is_empty(), "an id is assigned");
    let got = broker.take(&queue, 1, Duration::from_secs(5)).await;
    assert_eq!(*got[0].properties.delivery_mode(), Some(1));
    assert_eq!(
        got[0].properties.message_id().as_ref().unwrap().as_str(),
        response.message_id
    );
    warren.stop().await;
}

#[tokio::test]
async fn unroutable_is_failed_precondition_unless_allowed() {
    let warren = Warren::start().await;
    let mut client = warren.grpc().await;
    let nowhere = unique("nowhere");
    let status = client
        .publish(request("", &nowhere, b"x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("unroutable"), "{status:?}");

    let mut allowed = request("amq.direct", &nowhere, b"x");
    allowed.allow_unroutable = true;
    client
        .publish(allowed)
        .await
        .expect("dropped by the broker, but confirmed");
    warren.stop().await;
}

#[tokio::test]
async fn missing_exchange_is_not_found() {
    let warren = Warren::start().await;
    let mut client = warren.grpc().await;
    let status = client
        .publish(request(&unique("missing"), "k", b"x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    warren.stop().await;
}

/// An exchange deleted after Warren learnt it exists: the publish that hits it
/// closes its channel, yet only it fails; the good publishes in flight on the
/// same channel are all confirmed and all arrive. On a named publisher (its
/// publisher task republishes what the channel held)...
#[tokio::test]
async fn a_deleted_exchange_fails_alone_on_a_busy_channel() {
    deleted_exchange_fails_alone(Some(unique("pub"))).await;
}

/// ...and on the one shared channel (each request publishes again itself).
#[tokio::test]
async fn a_deleted_exchange_fails_alone_on_the_shared_channel() {
    deleted_exchange_fails_alone(None).await;
}

async fn deleted_exchange_fails_alone(publisher: Option<String>) {
    let config = common::config_with(&[("WARREN__AMQP__SHARED_PUBLISHERS", "1")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("survivors");
    broker.queue(&queue).await;
    let doomed = unique("doomed");
    broker.exchange(&doomed, ExchangeKind::Fanout).await;
    let client = warren.grpc().await;
    let named = |req: PublishRequest| {
        let mut r = tonic::Request::new(req);
        if let Some(publisher) = &publisher {
            r.metadata_mut()
                .insert("x-warren-publisher", publisher.parse().unwrap());
        }
        r
    };
    // Learn the exchange, then delete it behind Warren's back.
    let mut warm = request(&doomed, "", b"warm");
    warm.allow_unroutable = true;
    client
        .clone()
        .publish(named(warm))
        .await
        .expect("exchange exists at first");
    broker
        .channel
        .exchange_delete(doomed.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..400u32 {
        let mut client = client.clone();
        let req = if i % 50 == 25 {
            let mut r = request(&doomed, "", b"bad");
            r.allow_unroutable = true;
            named(r)
        } else {
            named(request("", &queue, format!("good-{i}").as_bytes()))
        };
        tasks.push(tokio::spawn(async move { (i, client.publish(req).await) }));
    }
    let mut good = 0;
    for task in tasks {
        let (i, result) = task.await.unwrap();
        if i % 50 == 25 {
            assert_eq!(
                result.unwrap_err().code(),
                Code::NotFound,
                "bad publish {i}"
            );
        } else {
            result.unwrap_or_else(|s| panic!("good publish {i} failed: {s:?}"));
            good += 1;
        }
    }
    assert_eq!(good, 392);
    // Read everything (copies republished after the failure included).
    let got = broker.take(&queue, 10_000, Duration::from_secs(3)).await;
    let mut bodies: Vec<String> = got
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        392,
        "every good message arrived (duplicates are allowed by at-least-once, losses are not)"
    );
    warren.stop().await;
}

#[tokio::test]
async fn publish_stream_keeps_order_and_fails_bad_messages_alone() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("stream");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let n = 2000u32;
    let requests = (0..n).map({
        let queue = queue.clone();
        move |i| {
            let mut r = request("", &queue, i.to_string().as_bytes());
            r.request_id = format!("r{i}");
            if i == 500 {
                r.routing_key = "k".repeat(256); // invalid: too long
            }
            if i == 1000 {
                r.exchange = unique("missing"); // not found
            }
            r
        }
    });
    let mut responses = client
        .publish_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut codes = HashMap::new();
    while let Some(r) = responses.message().await.unwrap() {
        assert!(
            codes
                .insert(r.request_id.clone(), (r.code, r.error))
                .is_none(),
            "one response per request"
        );
    }
    assert_eq!(codes.len(), n as usize);
    assert_eq!(
        codes["r500"].0,
        Code::InvalidArgument as u32,
        "{:?}",
        codes["r500"]
    );
    assert!(codes["r500"].1.contains("routing_key"));
    assert_eq!(codes["r1000"].0, Code::NotFound as u32);
    for i in (0..n).filter(|i| *i != 500 && *i != 1000) {
        assert_eq!(
            codes[&format!("r{i}")].0,
            0,
            "r{i}: {:?}",
            codes[&format!("r{i}")]
        );
    }
    let got = broker
        .take(&queue, n as usize - 2, Duration::from_secs(10))
        .await;
    let order: Vec<u32> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).parse().unwrap())
        .collect();
    let expected: Vec<u32> = (0..n).filter(|i| *i != 500 && *i != 1000).collect();
    assert_eq!(order.len(), expected.len(), "every message arrived");
    let first_wrong = order.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_wrong, None, "messages keep their order");
    warren.stop().await;
}

/// The stream's channel is closed under it (an exchange deleted after it was
/// checked): the messages caught in flight are republished in their order.
#[tokio::test]
async fn publish_stream_keeps_order_across_a_channel_failure() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("reorder");
    broker.queue(&queue).await;
    let doomed = unique("doomed");
    broker.exchange(&doomed, ExchangeKind::Fanout).await;
    let mut client = warren.grpc().await;
    let mut warm = request(&doomed, "", b"warm");
    warm.allow_unroutable = true;
    client.publish(warm).await.unwrap();
    broker
        .channel
        .exchange_delete(doomed.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();

    let n = 3000u32;
    let requests = (0..n).map({
        let (queue, doomed) = (queue.clone(), doomed.clone());
        move |i| {
            let mut r = request("", &queue, i.to_string().as_bytes());
            if i % 1000 == 500 {
                r = request(&doomed, "", b"bad");
                r.allow_unroutable = true;
            }
            r.request_id = i.to_string();
            r
        }
    });
    let mut responses = client
        .publish_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut failed = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        if r.code != 0 {
            failed.push((r.request_id, r.code));
        }
    }
    failed.sort();
    assert_eq!(
        failed,
        vec![
            ("1500".to_string(), 5),
            ("2500".to_string(), 5),
            ("500".to_string(), 5)
        ]
    );
    let got = broker
        .take(&queue, 10 * n as usize, Duration::from_secs(3))
        .await;
    let mut seen = std::collections::HashSet::new();
    let order: Vec<u32> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).parse().unwrap())
        .filter(|i| seen.insert(*i)) // at-least-once: a republished copy may repeat
        .collect();
    let expected: Vec<u32> = (0..n).filter(|i| i % 1000 != 500).collect();
    assert_eq!(order.len(), expected.len(), "every message arrived");
    let first_wrong = order.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(first_wrong, None, "first copies arrive in order");
    warren.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_published() {
    let config = common::config_with(&[("WARREN__PUBLISH__MAX_BODY_BYTES", "1024")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("bad");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;

    let mut cases: Vec<(&str, PublishRequest, Code)> = Vec::new();
    cases.push((
        "long exchange",
        request(&"e".repeat(256), &queue, b"x"),
        Code::InvalidArgument,
    ));
    cases.push((
        "long routing key",
        request("", &"q".repeat(256), b"x"),
        Code::InvalidArgument,
    ));
    cases.push((
        "body over limit",
        request("", &queue, &[0u8; 1025]),
        Code::ResourceExhausted,
    ));
    let mut r = request("", &queue, b"x");
    r.message.as_mut().unwrap().priority = 256;
    cases.push(("priority", r, Code::InvalidArgument));
    let mut r = request("", &queue, b"x");
    r.message.as_mut().unwrap().content_type = "t".repeat(300);
    cases.push(("long content type", r, Code::InvalidArgument));
    let mut r = request("", &queue, b"x");
    r.message.as_mut().unwrap().timestamp = -5;
    cases.push(("negative timestamp", r, Code::InvalidArgument));
    let mut r = request("", &queue, b"x");
    r.message
        .as_mut()
        .unwrap()
        .headers
        .insert("n".into(), v(Kind::NumberValue(f64::INFINITY)));
    cases.push(("infinite header", r, Code::InvalidArgument));
    let mut r = request("", &queue, b"x");
    r.message
        .as_mut()
        .unwrap()
        .headers
        .insert("k".repeat(256), v(Kind::BoolValue(true)));
    cases.push(("long header name", r, Code::InvalidArgument));
    let mut r = request("", &queue, b"x");
    r.message.as_mut().unwrap().user_id = "somebody-else".into();
    cases.push(("foreign user id", r, Code::InvalidArgument));
    for (what, req, code) in cases {
        let status = client.publish(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }
    // Far over the limit: refused by the transport before it is decoded,
    // still with RESOURCE_EXHAUSTED.
    let huge = request("", &queue, &vec![7u8; 3 * 1024 * 1024]);
    let status = client.publish(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // A publisher name that is not ASCII-visible metadata cannot even be sent;
    // an empty one is refused.
    let mut req = tonic::Request::new(request("", &queue, b"x"));
    req.metadata_mut()
        .insert("x-warren-publisher", "".parse().unwrap());
    assert_eq!(
        client.publish(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // The channels are unharmed: a good publish still goes through.
    client
        .publish(request("", &queue, b"good"))
        .await
        .expect("good publish after bad ones");
    let got = broker.take(&queue, 10, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 1, "only the good message was published");
    assert_eq!(got[0].data, b"good");
    warren.stop().await;
}

#[tokio::test]
async fn publisher_channels_are_capped() {
    let config = common::config_with(&[
        ("WARREN__AMQP__MAX_CHANNELS", "3"),
        ("WARREN__AMQP__SHARED_PUBLISHERS", "1"),
    ]);
    let warren = Warren::start_with(config).await;
    let mut client = warren.grpc().await;
    let queue = unique("cap");
    let broker = Broker::connect().await;
    broker.queue(&queue).await;
    // Two streams take the two free channels...
    let (tx1, rx1) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let (tx2, rx2) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let s1 = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx1))
        .await
        .unwrap();
    let s2 = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx2))
        .await
        .unwrap();
    // ...so a third stream and a new named publisher are refused.
    let (_tx3, rx3) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let status = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx3))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let mut named = tonic::Request::new(request("", &queue, b"x"));
    named
        .metadata_mut()
        .insert("x-warren-publisher", "extra".parse().unwrap());
    assert_eq!(
        client.publish(named).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // The shared publisher still works.
    client
        .publish(request("", &queue, b"shared"))
        .await
        .unwrap();
    // Ending a stream frees its channel.
    drop(tx1);
    let mut s1 = s1.into_inner();
    while s1.message().await.unwrap().is_some() {}
    let mut freed = false;
    for _ in 0..50 {
        let mut named = tonic::Request::new(request("", &queue, b"y"));
        named
            .metadata_mut()
            .insert("x-warren-publisher", "extra".parse().unwrap());
        if client.publish(named).await.is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "a closed stream gives its channel back");
    drop((tx2, s2));
    warren.stop().await;
}

#[tokio::test]
async fn unary_publishes_on_a_named_publisher_keep_their_order() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("named");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    for i in 0..50 {
        let mut r = tonic::Request::new(request("", &queue, i.to_string().as_bytes()));
        r.metadata_mut()
            .insert("x-warren-publisher", "orders".parse().unwrap());
        client.publish(r).await.unwrap();
    }
    let got = broker.take(&queue, 50, Duration::from_secs(5)).await;
    let order: Vec<u32> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).parse().unwrap())
        .collect();
    assert_eq!(order, (0..50).collect::<Vec<_>>());
    warren.stop().await;
}

#[tokio::test]
async fn metrics_count_publishes_exactly() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("metrics");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    for i in 0..7 {
        client
            .publish(request("", &queue, format!("{i}").as_bytes()))
            .await
            .unwrap();
    }
    let _ = client.publish(request("", &unique("nowhere"), b"x")).await;
    let _ = client.publish(request(&unique("gone"), "", b"x")).await;
    let _ = client.publish(request("", &"x".repeat(300), b"x")).await;
    let text = warren.metrics().await;
    for (line, n) in [
        ("warren_publish_total{outcome=\"confirmed\"}", 7),
        ("warren_publish_total{outcome=\"unroutable\"}", 1),
        ("warren_publish_total{outcome=\"not_found\"}", 1),
        ("warren_publish_total{outcome=\"invalid\"}", 1),
        ("warren_publish_duration_seconds_count", 7),
    ] {
        assert_eq!(common::metric(&text, line), n as f64, "{line}");
    }
    warren.stop().await;
}

#[tokio::test]
async fn bindings_route_published_messages() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let exchange = unique("topic");
    let queue = unique("bound");
    broker.exchange(&exchange, ExchangeKind::Topic).await;
    broker.queue(&queue).await;
    broker
        .channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut client = warren.grpc().await;
    client
        .publish(request(&exchange, "order.created", b"routed"))
        .await
        .unwrap();
    let status = client
        .publish(request(&exchange, "invoice.created", b"x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let got = broker.take(&queue, 2, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].routing_key.as_str(), "order.created");
    warren.stop().await;
}

#[tokio::test]
async fn idle_named_publishers_close_their_channels() {
    let config = common::config_with(&[("WARREN__AMQP__IDLE_TIMEOUT", "300ms")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("idle");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let channels = || async { common::metric(&warren.metrics().await, "warren_amqp_channels") };
    client.publish(request("", &queue, b"warm")).await.unwrap();
    let before = channels().await;
    for name in ["a", "b", "c"] {
        let mut r = tonic::Request::new(request("", &queue, b"x"));
        r.metadata_mut()
            .insert("x-warren-publisher", name.parse().unwrap());
        client.publish(r).await.unwrap();
    }
    assert_eq!(
        channels().await,
        before + 3.0,
        "one channel per named publisher"
    );
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if channels().await == before {
            closed = true;
            break;
        }
    }
    assert!(closed, "idle named publishers closed their channels");
    // A name used again gets a channel again.
    let mut r = tonic::Request::new(request("", &queue, b"again"));
    r.metadata_mut()
        .insert("x-warren-publisher", "a".parse().unwrap());
    client.publish(r).await.unwrap();
    warren.stop().await;
}

#[tokio::test]
async fn an_unreadable_stream_request_ends_the_stream_with_its_status() {
    let config = common::config_with(&[("WARREN__PUBLISH__MAX_BODY_BYTES", "1024")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("stream-huge");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let mut requests = vec![request("", &queue, b"a"), request("", &queue, b"b")];
    for (i, r) in requests.iter_mut().enumerate() {
        r.request_id = i.to_string();
    }
    requests.push(request("", &queue, &vec![1u8; 3 * 1024 * 1024]));
    let mut responses = client
        .publish_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut confirmed = 0;
    let end = loop {
        match responses.message().await {
            Ok(Some(r)) => {
                assert_eq!(r.code, 0, "{r:?}");
                confirmed += 1;
            }
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(confirmed, 2, "the messages before it are answered");
    let status = end.expect("the stream ends with an error");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        broker.take(&queue, 5, Duration::from_secs(2)).await.len(),
        2
    );
    warren.stop().await;
}
