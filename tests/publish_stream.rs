//! `PublishStream`: one response per request, messages in their order, bad
//! messages failing alone, and an unreadable request ending the stream.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{request, unique, Broker, Warren};
use tonic::Code;

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
