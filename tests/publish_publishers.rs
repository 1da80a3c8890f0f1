//! Named publishers (`x-warren-publisher`): a channel each, their order, the
//! cap on publisher channels, and idle channels closed.

mod common;

use std::time::Duration;

use common::{metric, on_publisher, request, unique, Broker, Warren};
use tonic::Code;
use warren::proto::PublishRequest;

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
    let named = on_publisher(request("", &queue, b"x"), "extra");
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
        let named = on_publisher(request("", &queue, b"y"), "extra");
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
        let r = on_publisher(request("", &queue, i.to_string().as_bytes()), "orders");
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
async fn idle_named_publishers_close_their_channels() {
    let config = common::config_with(&[("WARREN__AMQP__IDLE_TIMEOUT", "300ms")]);
    let warren = Warren::start_with(config).await;
    let broker = Broker::connect().await;
    let queue = unique("idle");
    broker.queue(&queue).await;
    let mut client = warren.grpc().await;
    let channels = || async { metric(&warren.metrics().await, "warren_amqp_channels") };
    client.publish(request("", &queue, b"warm")).await.unwrap();
    let before = channels().await;
    for name in ["a", "b", "c"] {
        let r = on_publisher(request("", &queue, b"x"), name);
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
    let r = on_publisher(request("", &queue, b"again"), "a");
    client.publish(r).await.unwrap();
    warren.stop().await;
}

#[tokio::test]
async fn publishers_past_the_brokers_channel_limit_are_refused_at_once() {
    // The broker allows 100 channels on Warren's one publishing connection
    // (`channel_max` in the URI lowers what it offers); max_channels says
    // 1,024. 64 + 2 shared are kept for Warren, so 34 named publishers fit.
    let url = format!("{}?channel_max=100", common::amqp_url());
    let config = common::config_with(&[
        ("WARREN__AMQP__URL", url.as_str()),
        ("WARREN__AMQP__POOL_SIZE", "1"),
        ("WARREN__AMQP__MAX_CHANNELS", "1024"),
        ("WARREN__AMQP__SHARED_PUBLISHERS", "2"),
        ("WARREN__PUBLISH__RETRY_BUDGET", "20s"),
    ]);
    let warren = Warren::start_with(config).await;
    let mut client = warren.grpc().await;
    let queue = unique("channel-max");
    let broker = Broker::connect().await;
    broker.queue(&queue).await;
    let mut refused = Vec::new();
    for i in 0..50 {
        let named = on_publisher(request("", &queue, b"n"), &format!("p{i}"));
        let started = std::time::Instant::now();
        match client.publish(named).await {
            Ok(_) => assert!(refused.is_empty(), "p{i} published after a refusal"),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("pool_size"), "{status:?}");
                // Refused now, not after the 20 s retry budget.
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{:?}",
                    started.elapsed()
                );
                refused.push(i);
            }
        }
    }
    assert_eq!(refused, (34..50).collect::<Vec<_>>());
    // Unnamed publishes, a stream's refusal aside, and a subscription still work.
    for _ in 0..10 {
        client
            .publish(request("", &queue, b"shared"))
            .await
            .unwrap();
    }
    let (_tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(1);
    let status = client
        .publish_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(broker.count(&queue).await, 44);
    let mut deliveries = common::subscribe(&mut client, &queue).await;
    common::next(&mut deliveries).await;
    warren.stop().await;
}
