//! Request/reply: Warren as caller and as responder, with plain AMQP peers.

mod common;

use std::time::{Duration, Instant};

use common::{
    ack, call, metric, next, on, problem, subscribe_with, unique, value, Broker, Sse, Warren,
};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use prost_types::value::Kind;
use serde_json::json;
use tonic::Code;
use warren::proto::{Message, ReplyRequest};

/// A plain AMQP responder: replies to every request on `queue` with the body
/// upper-cased and a header, after `delay`. Returns what it saw of each request.
async fn responder(
    queue: &str,
    delay: Duration,
) -> tokio::sync::mpsc::UnboundedReceiver<BasicProperties> {
    let connection = Connection::connect(&common::amqp_url(), Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (seen, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _connection = connection;
        while let Some(Ok(d)) = consumer.next().await {
            let _ = seen.send(d.properties.clone());
            let channel = channel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let reply_to = d.properties.reply_to().clone().unwrap();
                let mut headers = FieldTable::default();
                headers.insert(
                    "handled-by".into(),
                    AMQPValue::LongString("plain-amqp".into()),
                );
                let props = BasicProperties::default()
                    .with_correlation_id(d.properties.correlation_id().clone().unwrap_or_default())
                    .with_headers(headers)
                    .with_content_type("text/plain".into());
                let body = String::from_utf8_lossy(&d.data).to_uppercase();
                channel
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .unwrap();
                d.ack(BasicAckOptions::default()).await.unwrap();
            });
        }
    });
    rx
}

#[tokio::test]
async fn warren_caller_with_a_plain_amqp_responder() {
    let warren = Warren::start().await;
    let queue = unique("rpc-plain");
    let mut seen = responder(&queue, Duration::ZERO).await;
    let mut client = warren.grpc().await;
    let mut request = call(&queue, "ping", 2000);
    request
        .message
        .as_mut()
        .unwrap()
        .headers
        .insert("tenant".into(), value(Kind::StringValue("acme".into())));
    let reply = client
        .call(request)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(&reply.body[..], b"PING");
    assert_eq!(reply.content_type, "text/plain");
    assert_eq!(
        reply.headers["handled-by"].kind,
        Some(Kind::StringValue("plain-amqp".into()))
    );
    let request = seen.recv().await.unwrap();
    let reply_to = request.reply_to().as_ref().unwrap().as_str().to_owned();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to"),
        "direct reply-to: {reply_to}"
    );
    assert!(!request
        .correlation_id()
        .as_ref()
        .unwrap()
        .as_str()
        .is_empty());
    assert_eq!(
        request.expiration().as_ref().unwrap().as_str(),
        "2000",
        "the request expires with the call"
    );
    assert_eq!(
        request.headers().as_ref().unwrap().inner()["tenant"],
        AMQPValue::LongString("acme".into())
    );
    warren.stop().await;
}

#[tokio::test]
async fn plain_amqp_caller_with_a_warren_responder() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("rpc-server");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let mut requests = common::subscribe(&mut client, &queue).await;
    // The plain caller has its own exclusive reply queue.
    let reply_queue = broker
        .channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_reply_to(reply_queue.name().clone())
        .with_correlation_id("corr-42".into());
    broker.publish("", &queue, b"question", props).await;
    let request = next(&mut requests).await;
    assert_eq!(request.reply_to, reply_queue.name().as_str());
    let mut answer = Message {
        body: b"answer".to_vec().into(),
        content_type: "text/plain".into(),
        ..Default::default()
    };
    answer
        .headers
        .insert("n".into(), value(Kind::NumberValue(7.0)));
    client
        .reply(ReplyRequest {
            delivery_id: request.delivery_id.clone(),
            message: Some(answer),
        })
        .await
        .unwrap();
    let got = broker
        .take(reply_queue.name().as_str(), 1, Duration::from_secs(5))
        .await;
    assert_eq!(got[0].data, b"answer");
    assert_eq!(
        got[0]
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "corr-42"
    );
    assert_eq!(
        got[0].properties.headers().as_ref().unwrap().inner()["n"],
        AMQPValue::LongLongInt(7)
    );
    // The request was acked by the reply.
    let status = client
        .ack(warren::proto::AckRequest {
            delivery_ids: vec![request.delivery_id],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    drop(requests);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(broker.count(&queue).await, 0);
    warren.stop().await;
}

#[tokio::test]
async fn http_call_and_reply_between_two_warren_clients() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("rpc-http");
    broker.queue(&queue).await;
    let http = reqwest::Client::new();
    // The responder reads requests over SSE and answers over POST /v1/reply
    // (the SSE response comes once its consumer is registered).
    let mut sse = Sse::open(&warren.url(&format!("/v1/subscribe/{queue}"))).await;
    let reply_url = warren.url("/v1/reply");
    let server = tokio::spawn({
        let http = http.clone();
        async move {
            let (_, delivery) = sse.next(Duration::from_secs(5)).await.unwrap();
            let text = delivery["message"]["body"].as_str().unwrap().to_owned();
            let answer = json!({"delivery_id": delivery["delivery_id"], "body": {"echo": text}, "headers": {"ok": true}});
            let response = http.post(reply_url).json(&answer).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    });
    let response = http
        .post(warren.url("/v1/call"))
        .json(&json!({"routing_key": queue, "body": "hello", "timeout_ms": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: serde_json::Value = response.json().await.unwrap();
    assert_eq!(reply["body"], r#"{"echo":"hello"}"#);
    assert_eq!(reply["content_type"], "application/json");
    assert_eq!(reply["headers"]["ok"], true);
    server.await.unwrap();
    warren.stop().await;
}

#[tokio::test]
async fn timeouts_and_late_replies() {
    let warren = Warren::start().await;
    let queue = unique("rpc-slow");
    let _seen = responder(&queue, Duration::from_millis(600)).await;
    let mut client = warren.grpc().await;
    let late_before = metric(&warren.metrics().await, "warren_rpc_late_replies_total");
    let started = Instant::now();
    let status = client.call(call(&queue, "late", 200)).await.unwrap_err();
    // DEADLINE_EXCEEDED itself shows it did not wait for the reply (which
    // would have succeeded); the bound only catches a hang.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The next call on the same channels gets its own reply, never the late one.
    let reply = client
        .call(call(&queue, "mine", 3000))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(&reply.body[..], b"MINE");
    // The late reply came meanwhile (600 ms after the first call, before
    // this call's own): counted exactly once.
    let late = |text: &str| metric(text, "warren_rpc_late_replies_total") - late_before;
    assert_eq!(late(&warren.metrics().await), 1.0, "one late reply");
    // HTTP maps the timeout to 504.
    let response = reqwest::Client::new()
        .post(warren.url("/v1/call"))
        .json(&json!({"routing_key": queue, "body": "x", "timeout_ms": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 504);
    // A gRPC deadline shorter than timeout_ms wins.
    let mut request = tonic::Request::new(call(&queue, "deadline", 10_000));
    request.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let status = client.call(request).await.unwrap_err();
    // Warren answers DEADLINE_EXCEEDED a little before the deadline; on a
    // loaded machine the client's own timer may fire first (tonic reports
    // that as CANCELLED). Either way the call did not wait for timeout_ms.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The two calls that gave up last get their replies late too: three in
    // all, each counted once.
    let mut total = 0.0;
    for _ in 0..40 {
        total = late(&warren.metrics().await);
        if total >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total, 3.0, "three late replies");
    warren.stop().await;
}

#[tokio::test]
async fn unroutable_and_missing_fail_at_once() {
    let warren = Warren::start().await;
    let mut client = warren.grpc().await;
    let started = Instant::now();
    let status = client
        .call(call(&unique("nobody"), "x", 10_000))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "not after the timeout"
    );
    let mut missing = call("k", "x", 10_000);
    missing.exchange = unique("missing");
    assert_eq!(
        client.call(missing).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut too_long = call("k", "x", 10_000);
    too_long.routing_key = "k".repeat(300);
    assert_eq!(
        client.call(too_long).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        client
            .call(call("k", "x", 3_600_000))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let response = reqwest::Client::new()
        .post(warren.url("/v1/call"))
        .json(&json!({"routing_key": unique("nobody"), "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 422);
    warren.stop().await;
}

#[tokio::test]
async fn reply_errors() {
    let warren = Warren::start().await;
    let broker = Broker::connect().await;
    let queue = unique("rpc-noreply");
    broker.queue(&queue).await;
    broker
        .publish("", &queue, b"fire and forget", BasicProperties::default())
        .await;
    let mut client = warren.grpc().await;
    let mut stream = subscribe_with(&mut client, on(&queue, 0)).await;
    let d = next(&mut stream).await;
    let reply = |id: &str| ReplyRequest {
        delivery_id: id.into(),
        message: Some(Message::default()),
    };
    assert_eq!(
        client
            .reply(reply(&d.delivery_id))
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        client.reply(reply("0-0-0-0")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        client.reply(reply("junk")).await.unwrap_err().code(),
        Code::NotFound
    );
    // Nothing was settled: the delivery can still be acked.
    ack(&mut client, &d).await;
    let response = reqwest::Client::new()
        .post(warren.url("/v1/reply"))
        .json(&json!({"delivery_id": "junk", "body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 404);
    warren.stop().await;
}

#[tokio::test]
async fn thousands_of_calls_in_flight_each_get_their_own_reply() {
    let warren = Warren::start().await;
    let queue = unique("rpc-load");
    let _seen = responder(&queue, Duration::from_millis(50)).await;
    let client = warren.grpc().await;
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let mut client = client.clone();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let reply = client
                .call(call(&queue, &format!("call-{i}"), 20_000))
                .await?;
            Ok::<_, tonic::Status>((i, reply.into_inner().message.unwrap()))
        }));
    }
    for task in tasks {
        let (i, reply) = task.await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&reply.body), format!("CALL-{i}"));
    }
    warren.stop().await;
}

#[tokio::test]
async fn pending_calls_are_capped() {
    let config = common::config_with(&[("WARREN__RPC__MAX_PENDING", "4")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("rpc-cap");
    broker.queue(&queue).await; // nobody answers
    let client = warren.grpc().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = client.clone();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            client
                .call(call(&queue, "x", 1000))
                .await
                .unwrap_err()
                .code()
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == Code::ResourceExhausted)
            .count(),
        4,
        "{codes:?}"
    );
    assert_eq!(
        codes
            .iter()
            .filter(|c| **c == Code::DeadlineExceeded)
            .count(),
        4,
        "{codes:?}"
    );
    warren.stop().await;
}
