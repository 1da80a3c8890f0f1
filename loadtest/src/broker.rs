//! The broker side, with plain lapin: connections, the per-run queues (fresh,
//! uniquely named, with `x-expires` so that an interrupted run leaves nothing
//! behind for long), and the confirmed pre-fill of a queue.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::scenarios::QueueType;

/// A queue nobody uses for this long is removed by the broker.
const QUEUE_EXPIRES_MS: i32 = 10 * 60 * 1000;

/// Unconfirmed messages in flight while pre-filling a queue.
const FILL_WINDOW: usize = 1024;

/// Connects to the broker, naming the connection for the management UI.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties)
        .await
        .with_context(|| format!("cannot connect to the broker at {}", mask(url)))
}

/// `url` without its password.
pub fn mask(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Properties of every test message: persistent (delivery mode 2).
pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publish options of every test message: mandatory, as Warren publishes
/// (an unroutable message is an error, not a silent drop).
pub fn mandatory() -> BasicPublishOptions {
    BasicPublishOptions {
        mandatory: true,
        immediate: false,
    }
}

/// A name no other run uses.
pub fn unique(scenario: &str, target: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("warren-loadtest.{scenario}.{target}.{}", &id[..12])
}

/// Declares a durable queue of `kind` that expires when unused.
pub async fn declare(channel: &Channel, name: &str, kind: QueueType) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from(kind.as_str())),
    );
    args.insert("x-expires".into(), AMQPValue::LongInt(QUEUE_EXPIRES_MS));
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .with_context(|| format!("cannot declare queue {name}"))?;
    Ok(())
}

/// Deletes a queue (whatever it still holds).
pub async fn delete(channel: &Channel, name: &str) -> anyhow::Result<()> {
    channel
        .queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("cannot delete queue {name}"))?;
    Ok(())
}

/// Publishes one mandatory message and waits until the broker stored it
/// (see [`stored`]).
pub async fn publish_stored(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) -> Result<(), String> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            mandatory(),
            body,
            properties,
        )
        .await
        .map_err(|e| e.to_string())?;
    stored(&confirm.await.map_err(|e| e.to_string())?)
}

/// Whether a confirmation means "stored": acked and not returned.
pub fn stored(confirmation: &Confirmation) -> Result<(), String> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => {
            Err("returned: unroutable".into())
        }
        Confirmation::Nack(None) => Err("nacked by the broker".into()),
        Confirmation::NotRequested => Err("channel not in confirm mode".into()),
    }
}

/// Puts `n` persistent messages of `body` on `queue`, confirmed, pipelined;
/// gives up at `deadline`.
pub async fn fill(
    conn: &Connection,
    queue: &str,
    n: u64,
    body: &bytes::Bytes,
    deadline: Instant,
) -> anyhow::Result<()> {
    let channel = confirm_channel(conn).await?;
    let mut pending = FuturesUnordered::new();
    let mut sent = 0;
    while sent < n || !pending.is_empty() {
        while sent < n && pending.len() < FILL_WINDOW {
            let (channel, body) = (channel.clone(), body.clone());
            let queue = queue.to_owned();
            pending.push(
                async move { publish_stored(&channel, "", &queue, &body, persistent()).await },
            );
            sent += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left.max(Duration::from_millis(1)), pending.next()).await {
            Ok(Some(Ok(()))) | Ok(None) => {}
            Ok(Some(Err(e))) => anyhow::bail!("pre-filling {queue}: {e}"),
            Err(_) => anyhow::bail!("pre-filling {queue} did not finish in time"),
        }
    }
    let _ = channel.close(200, "filled".into()).await;
    Ok(())
}
