//! The spool: publishes that allow it, written durably while the broker
//! cannot be reached, and forwarded in order once it can.
//!
//! - `store`: the embedded database (redb): the spooled messages and the
//!   dead-letter spool.
//! - `commit`: group commit: concurrent appends share one durable commit.
//! - `record`: how a spooled publish is written.

pub mod commit;
pub mod record;
pub mod store;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use commit::Appender;
use store::{Store, StoreError, Table};

use crate::bus::Publish;

/// Why a publish could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// Over `spool.max_bytes`: come back once forwarding made room.
    #[error("the spool is full ({bytes} of {max_bytes} bytes)")]
    Full {
        bytes: u64,
        max_bytes: u64,
        retry_after: Duration,
    },
    /// The disk refused the write.
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
}

/// The spool of one Warren: what is waiting, and room left.
pub struct Spool {
    store: Arc<Store>,
    appender: Appender,
    max_bytes: u64,
    /// Bytes of records spooled and not yet removed.
    bytes: AtomicU64,
    /// Records spooled and not yet removed.
    messages: AtomicU64,
}

impl Spool {
    /// Opens the spool in `dir`, counting what an earlier run left in it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        let store = Arc::new(Store::open(dir)?);
        let (messages, bytes) = store.size(Table::Spooled)?;
        let appender = Appender::start(store.clone()).map_err(StoreError::thread)?;
        Ok(Self {
            store,
            appender,
            max_bytes,
            bytes: AtomicU64::new(bytes),
            messages: AtomicU64::new(messages),
        })
    }

    /// Writes `publish` durably behind everything spooled before it; its
    /// sequence number once on disk. Refused, writing nothing, when it
    /// would take the spool over `max_bytes`.
    pub async fn append(&self, publish: &Publish) -> Result<u64, Refused> {
        let record = record::encode(publish, None);
        let size = record.len() as u64;
        // Room is taken before the write, so concurrent appends cannot
        // overshoot together.
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if before + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(Refused::Full {
                bytes: before,
                max_bytes: self.max_bytes,
                retry_after: Duration::from_secs(1),
            });
        }
        match self.appender.append(record).await {
            Ok(id) => {
                self.messages.fetch_add(1, Ordering::AcqRel);
                Ok(id)
            }
            Err(e) => {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
                Err(e.into())
            }
        }
    }

    /// Up to `limit` spooled publishes after `after`, oldest first, with
    /// their sequence numbers and record sizes.
    pub fn next(&self, after: u64, limit: usize) -> Result<Vec<Spooled>, StoreError> {
        let records = self.store.read(Table::Spooled, after, limit)?;
        Ok(records
            .into_iter()
            .map(|(id, record)| Spooled {
                id,
                size: record.len() as u64,
                publish: record::decode(&record),
            })
            .collect())
    }

    /// Removes forwarded (confirmed) records, durably.
    pub fn remove(&self, done: &[Spooled]) -> Result<(), StoreError> {
        let ids: Vec<u64> = done.iter().map(|s| s.id).collect();
        self.store.remove(Table::Spooled, &ids)?;
        let bytes: u64 = done.iter().map(|s| s.size).sum();
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.messages.fetch_sub(done.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Messages and bytes waiting.
    pub fn depth(&self) -> (u64, u64) {
        (
            self.messages.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// A record read back for forwarding.
pub struct Spooled {
    pub id: u64,
    pub size: u64,
    /// The publish, or why its record cannot be read.
    pub publish: Result<Publish, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn publish(body: &'static [u8]) -> Publish {
        let mut p = Publish {
            exchange: "orders".into(),
            ..Default::default()
        };
        p.message.body = Bytes::from_static(body);
        p
    }

    #[tokio::test]
    async fn full_refuses_without_writing_and_room_comes_back_on_removal() {
        let dir =
            std::env::temp_dir().join(format!("warren-spool-{}", uuid::Uuid::new_v4().simple()));
        let one = record::encode(&publish(b"0123456789"), None).len() as u64;
        let spool = Spool::open(&dir, 2 * one).unwrap();
        spool.append(&publish(b"0123456789")).await.unwrap();
        spool.append(&publish(b"abcdefghij")).await.unwrap();
        let refused = spool.append(&publish(b"klmnopqrst")).await.unwrap_err();
        assert!(matches!(refused, Refused::Full { .. }), "{refused:?}");
        assert_eq!(spool.depth(), (2, 2 * one));
        let waiting = spool.next(0, 10).unwrap();
        let bodies: Vec<Bytes> = waiting
            .iter()
            .map(|s| s.publish.as_ref().unwrap().message.body.clone())
            .collect();
        assert_eq!(bodies, [&b"0123456789"[..], b"abcdefghij"]);
        spool.remove(&waiting[..1]).unwrap();
        assert_eq!(spool.depth(), (1, one));
        spool.append(&publish(b"klmnopqrst")).await.unwrap();
        drop(spool);
        // What was left is counted again on reopening, in order.
        let mut tries = 0;
        let spool = loop {
            match Spool::open(&dir, 2 * one) {
                Ok(spool) => break spool,
                // The writer thread of the first one may still hold the file.
                Err(e) if tries < 400 => {
                    tries += 1;
                    tracing::debug!("{e}");
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(spool.depth(), (2, 2 * one));
        let after_first = spool.next(waiting[0].id, 10).unwrap();
        assert_eq!(after_first.len(), 2);
        assert_eq!(
            after_first[1].publish.as_ref().unwrap().message.body,
            &b"klmnopqrst"[..]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
