//! A channel closed under publishes (an exchange deleted after Warren checked
//! it): only the publish that caused it fails; the others in flight on the
//! same channel are republished, confirmed, and keep their order.

mod common;

use std::time::Duration;

use common::{on_publisher, request, unique, Broker, Warren};
use lapin::options::ExchangeDeleteOptions;
use lapin::ExchangeKind;
use tonic::Code;
use warren::proto::PublishRequest;

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
    let named = |req: PublishRequest| match &publisher {
        Some(name) => on_publisher(req, name),
        None => tonic::Request::new(req),
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
