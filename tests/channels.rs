//! Channel accounting: after a thousand subscriptions, named publishers,
//! publish streams and calls opened and closed, with channel faults in
//! between, `warren_amqp_channels` equals what the broker counts on Warren's
//! connections.

mod common;

use std::time::Duration;

use common::{metric, unique, Broker, Warren};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::ExchangeKind;
use tonic::Code;
use warren::proto::{CallRequest, Message, PublishRequest, SubscribeRequest};

fn request(exchange: &str, routing_key: &str, body: &str) -> PublishRequest {
    PublishRequest {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        message: Some(Message {
            body: body.as_bytes().to_vec().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The channels the broker counts on connections whose name contains `name`.
fn broker_channels(name: &str) -> u64 {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_connections",
            "channels",
            "client_properties",
            "--formatter",
            "json",
        ])
        .output()
        .expect("rabbitmqctl runs");
    let rows: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("rabbitmqctl prints JSON");
    rows.as_array()
        .expect("a list of connections")
        .iter()
        .filter(|row| row["client_properties"].to_string().contains(name))
        .map(|row| row["channels"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn the_channel_gauge_matches_the_broker_after_a_thousand_opens_and_faults() {
    let name = unique("chan-ledger");
    let warren = Warren::start_with(common::config_with(&[
        ("WARREN__AMQP__CONNECTION_NAME", &name),
        ("WARREN__AMQP__IDLE_TIMEOUT", "1s"),
        ("WARREN__RPC__CHANNELS", "2"),
    ]))
    .await;
    let broker = Broker::connect().await;
    let queue = unique("chan-q");
    broker.queue(&queue).await;
    let doomed_exchange = unique("chan-x");
    let mut client = warren.grpc().await;
    let mut ops = 0;
    for round in 0..10 {
        // A subscription's queue deleted under it, and an exchange deleted
        // under a named publisher: the broker closes those channels.
        let doomed_queue = unique("chan-doomed");
        broker.queue(&doomed_queue).await;
        let mut doomed_sub = client
            .subscribe(SubscribeRequest {
                queue: doomed_queue.clone(),
                prefetch: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        broker
            .exchange(&doomed_exchange, ExchangeKind::Fanout)
            .await;
        let mut named = tonic::Request::new(request(&doomed_exchange, "", "x"));
        named.metadata_mut().insert(
            "x-warren-publisher",
            format!("doomed-{round}").parse().unwrap(),
        );
        let _ = client.publish(named).await;
        let channel = broker.connection.create_channel().await.unwrap();
        channel
            .queue_delete(doomed_queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        channel
            .exchange_delete(
                doomed_exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), doomed_sub.message())
            .await
            .expect("the stream ends when its queue is deleted");
        assert!(ended.is_err() || ended.unwrap().is_none());
        // A publish to the now missing exchange: refused, nothing leaks.
        let missing = client.publish(request(&doomed_exchange, "", "x")).await;
        assert_eq!(missing.unwrap_err().code(), Code::NotFound);

        let mut batch = Vec::new();
        for i in 0..100 {
            let mut client = client.clone();
            let queue = queue.clone();
            batch.push(tokio::spawn(async move {
                match i % 4 {
                    0 => {
                        let mut stream = client
                            .subscribe(SubscribeRequest {
                                queue,
                                prefetch: 1,
                                ..Default::default()
                            })
                            .await
                            .unwrap()
                            .into_inner();
                        let _ =
                            tokio::time::timeout(Duration::from_millis(5), stream.message()).await;
                    }
                    1 => {
                        let mut named = tonic::Request::new(request("", &queue, "named"));
                        named.metadata_mut().insert(
                            "x-warren-publisher",
                            format!("p-{round}-{i}").parse().unwrap(),
                        );
                        client.publish(named).await.unwrap();
                    }
                    2 => {
                        let requests = futures::stream::iter(vec![request("", &queue, "stream")]);
                        let mut answers =
                            client.publish_stream(requests).await.unwrap().into_inner();
                        while answers.message().await.unwrap().is_some() {}
                    }
                    _ => {
                        let call = CallRequest {
                            exchange: String::new(),
                            routing_key: queue,
                            message: Some(Message::default()),
                            timeout_ms: 20,
                        };
                        let e = client.call(call).await.unwrap_err();
                        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
                    }
                }
            }));
        }
        for task in batch {
            task.await.unwrap();
        }
        ops += 102;
    }
    assert!(ops >= 1000);
    // Idle named publishers close after amqp.idle_timeout; channel closes
    // are asynchronous. Then Warren and the broker must agree.
    let mut last = (0, 0);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let gauge = metric(&warren.metrics().await, "warren_amqp_channels") as u64;
        let counted = broker_channels(&name);
        if gauge == counted {
            eprintln!("after {ops} opens: {gauge} channels open, as the broker counts");
            assert!(gauge > 0, "the shared and RPC channels stay open");
            warren.stop().await;
            return;
        }
        last = (gauge, counted);
    }
    panic!(
        "warren_amqp_channels = {} but the broker counts {} channels",
        last.0, last.1
    );
}
