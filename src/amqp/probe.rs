//! Whether an exchange or queue exists: a passive declare on a channel of
//! its own (a refused one closes the channel it was made on).
//!
//! The broker's refusal names the thing in its close reason, which it cuts
//! to 255 bytes: for a long name in multi-byte UTF-8 the cut can fall inside
//! a character, the reason no longer parses, and lapin drops the whole
//! connection. So such names are asked about on a connection of their own
//! ([`Role::Probe`](super::Role::Probe)), where losing the connection harms
//! nobody, and that parse failure means the broker said NOT_FOUND.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{ErrorKind, ExchangeKind};

use super::Pool;
use crate::error::Error;

/// What is asked about.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Exchange,
    Queue,
}

/// Whether the broker's NOT_FOUND reason for `name` might not parse: long
/// enough to be cut, and not ASCII (a cut between ASCII bytes is harmless).
pub fn is_risky(name: &str) -> bool {
    // "NOT_FOUND - no exchange '" + name + "' in vhost '" + vhost + "'"
    !name.is_ascii() && name.len() + 40 > 255
}

/// A queue's depth and consumer count, as a passive declare reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    pub messages: u32,
    pub consumers: u32,
}

/// Ok(true) when `name` exists, Ok(false) when the broker says NOT_FOUND.
/// `pool` is used for ordinary names, `isolated` for risky ones.
pub async fn exists(pool: &Pool, isolated: &Pool, kind: Kind, name: &str) -> Result<bool, Error> {
    match kind {
        Kind::Exchange => passive(pool, isolated, name, async |channel, pool| {
            let passive = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declare = channel.exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            );
            pool.op("exchange.declare", declare).await
        })
        .await
        .map(|found| found.is_some()),
        Kind::Queue => queue(pool, isolated, name).await.map(|q| q.is_some()),
    }
}

/// `name`'s state, or None when the broker says NOT_FOUND.
pub async fn queue(pool: &Pool, isolated: &Pool, name: &str) -> Result<Option<QueueState>, Error> {
    passive(pool, isolated, name, async |channel, pool| {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declare = channel.queue_declare(name.into(), passive, FieldTable::default());
        let q = pool.op("queue.declare", declare).await?;
        Ok(QueueState {
            messages: q.message_count(),
            consumers: q.consumer_count(),
        })
    })
    .await
}

/// Runs one passive declare on a channel of its own.
async fn passive<T>(
    pool: &Pool,
    isolated: &Pool,
    name: &str,
    declare: impl AsyncFnOnce(&super::Channel, &Pool) -> Result<T, Error>,
) -> Result<Option<T>, Error> {
    let risky = is_risky(name);
    let pool = if risky { isolated } else { pool };
    let channel = pool.open_channel().await?;
    let result = declare(&channel, pool).await;
    channel.close(pool.operation_timeout()).await;
    match result {
        Ok(found) => Ok(Some(found)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(Error::Unavailable {
            cause: Some(cause), ..
        }) if risky && matches!(cause.kind(), ErrorKind::ParsingError(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
