//! Publishing one message over gRPC: confirms, every property and typed
//! header, unroutable and missing exchanges, bindings, exact metrics, and the
//! bad inputs that publish nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{metric, on_publisher, request, unique, value, Broker, Warren};
use lapin::options::QueueBindOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use tonic::Code;
use warren::proto::{Message, PublishRequest};

#[tokio::test]
async fn unary_publish_carries_body_properties_and_typed_headers() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("props");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;

    let headers: HashMap<String, Value> = [
        ("count".to_string(), value(Kind::NumberValue(42.0))),
        ("ratio".to_string(), value(Kind::NumberValue(0.25))),
        ("ok".to_string(), value(Kind::BoolValue(true))),
        ("name".to_string(), value(Kind::StringValue("zoë".into()))),
        (
            "list".to_string(),
            value(Kind::ListValue(ListValue {
                values: vec![
                    value(Kind::NumberValue(1.0)),
                    value(Kind::StringValue("two".into())),
                ],
            })),
        ),
        (
            "table".to_string(),
            value(Kind::StructValue(Struct {
                fields: [("inner".to_string(), value(Kind::NumberValue(-3.0)))].into(),
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
        assert_eq!(metric(&text, line), n as f64, "{line}");
    }
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
        .insert("n".into(), value(Kind::NumberValue(f64::INFINITY)));
    cases.push(("infinite header", r, Code::InvalidArgument));
    let mut r = request("", &queue, b"x");
    r.message
        .as_mut()
        .unwrap()
        .headers
        .insert("k".repeat(256), value(Kind::BoolValue(true)));
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
    let req = on_publisher(request("", &queue, b"x"), "");
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
