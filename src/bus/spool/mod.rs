//! The spool: publishes that allow it, written durably while the broker
//! cannot be reached, and forwarded in order once it can.
//!
//! - `store`: the embedded database (redb): the spooled messages and the
//!   dead-letter spool.
//! - `commit`: group commit: concurrent appends share one durable commit.
//! - `record`: how a spooled publish is written (with a CRC).
//! - `forward`: the forwarder that drains the spool to the broker.
//! - `metrics`: its gauges (depth, bytes, age, commits, dead).
//! - `ops`: the `Bus` side: diverting publishes into the spool, the
//!   operators' calls on the dead-letter spool.

pub mod commit;
mod forward;
mod metrics;
mod ops;
pub mod record;
pub mod store;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use commit::{Appender, Durable};
use record::Record;
use store::{Store, StoreError, Table};

use crate::bus::Publish;
use crate::error::Error;

pub(crate) use ops::Route;
pub use ops::{Dead, Status};

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

impl From<Refused> for Error {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Full {
                bytes,
                max_bytes,
                retry_after,
            } => Error::SpoolFull {
                bytes,
                max_bytes,
                retry_after,
            },
            Refused::Store(e) => Error::from(&*e),
        }
    }
}

impl From<&StoreError> for Error {
    fn from(e: &StoreError) -> Self {
        tracing::error!(error = %e, "the spool's storage failed");
        Error::Internal(e.to_string())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::from(&e)
    }
}

/// What is spooled, counted as it is written and removed; shared with the
/// writer thread, which gives back what a failed commit took.
#[derive(Default)]
pub struct Counts {
    /// Bytes of records spooled (or being written) and not yet removed.
    bytes: AtomicU64,
    /// Records spooled (or being written) and not yet removed.
    messages: AtomicU64,
    /// Records in the dead-letter spool.
    dead: AtomicU64,
    /// Wakes the forwarder once something was written.
    written: Notify,
}

impl Counts {
    fn add(&self, messages: u64, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.messages.fetch_add(messages, Ordering::AcqRel);
    }

    fn sub(&self, messages: u64, bytes: u64) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.messages.fetch_sub(messages, Ordering::AcqRel);
    }
}

/// The spool of one Warren: what is waiting, and room left.
pub struct Spool {
    store: Arc<Store>,
    appender: Appender,
    max_bytes: u64,
    counts: Arc<Counts>,
}

/// A record read back for forwarding.
pub struct Spooled {
    pub id: u64,
    pub size: u64,
    /// What it holds, or why its record cannot be read.
    pub record: Result<Record, String>,
}

impl Spool {
    /// Opens the spool in `dir`, counting what an earlier run left in it.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, StoreError> {
        let store = Arc::new(Store::open(dir)?);
        let (messages, bytes) = store.size(Table::Spooled)?;
        let (dead, _) = store.size(Table::Dead)?;
        let counts = Arc::new(Counts::default());
        counts.add(messages, bytes);
        counts.dead.store(dead, Ordering::Release);
        let appender =
            Appender::start(store.clone(), counts.clone()).map_err(StoreError::thread)?;
        Ok(Self {
            store,
            appender,
            max_bytes,
            counts,
        })
    }

    /// Whether anything is spooled or being written: a publish that may be
    /// spooled then goes behind it, so that order holds.
    pub fn is_waiting(&self) -> bool {
        self.counts.bytes.load(Ordering::Acquire) > 0
    }

    /// Queues `publish` behind everything spooled before it; the returned
    /// [`Durable`] resolves with its sequence number once it is on disk.
    /// Refused, writing nothing, when it would take the spool over
    /// `max_bytes`.
    pub async fn enqueue(&self, publish: &Publish) -> Result<Durable, Refused> {
        let record = record::encode(publish, crate::bus::schedule::now_ms(), None);
        let size = record.len() as u64;
        self.take_room(1, size)?;
        self.appender.enqueue(record, size).await.map_err(|e| {
            self.counts.sub(1, size);
            Refused::Store(e)
        })
    }

    /// Counts `messages` of `size` bytes in, unless that goes over
    /// `max_bytes`. Room is taken before the write, so concurrent appends
    /// cannot overshoot together.
    fn take_room(&self, messages: u64, size: u64) -> Result<(), Refused> {
        let before = self.counts.bytes.fetch_add(size, Ordering::AcqRel);
        if before + size > self.max_bytes {
            self.counts.bytes.fetch_sub(size, Ordering::AcqRel);
            return Err(Refused::Full {
                bytes: before,
                max_bytes: self.max_bytes,
                retry_after: Duration::from_secs(1),
            });
        }
        self.counts.messages.fetch_add(messages, Ordering::AcqRel);
        Ok(())
    }

    /// Up to `limit` of the oldest spooled records, with their sequence
    /// numbers and sizes.
    pub fn next(&self, limit: usize) -> Result<Vec<Spooled>, StoreError> {
        let records = self.store.read(Table::Spooled, 0, limit)?;
        Ok(records
            .into_iter()
            .map(|(id, record)| Spooled {
                id,
                size: record.len() as u64,
                record: record::decode(&record),
            })
            .collect())
    }

    /// In one durable commit: removes records `done` of `batch` (forwarded
    /// and confirmed, or unreadable) and moves records `refused` to the
    /// dead-letter spool with the broker's reason.
    pub fn settle(
        &self,
        batch: &[Spooled],
        done: &[u64],
        refused: &[(u64, String)],
    ) -> Result<(), StoreError> {
        if done.is_empty() && refused.is_empty() {
            return Ok(());
        }
        let find = |id: &u64| batch.iter().find(|s| s.id == *id);
        let bury: Vec<(u64, Vec<u8>)> = refused
            .iter()
            .filter_map(|(id, reason)| {
                let record = find(id)?.record.as_ref().ok()?;
                let again = record::encode(&record.publish, record.spooled_at_ms, Some(reason));
                Some((*id, again))
            })
            .collect();
        self.store.settle(done, &bury)?;
        let settled: Vec<&Spooled> = done
            .iter()
            .chain(refused.iter().map(|(id, _)| id))
            .filter_map(find)
            .collect();
        let bytes: u64 = settled.iter().map(|s| s.size).sum();
        self.counts.sub(settled.len() as u64, bytes);
        self.counts
            .dead
            .fetch_add(bury.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Up to `limit` of the oldest records of the dead-letter spool.
    pub fn dead_records(&self, limit: usize) -> Result<Vec<Spooled>, StoreError> {
        let records = self.store.read(Table::Dead, 0, limit)?;
        Ok(records
            .into_iter()
            .map(|(id, record)| Spooled {
                id,
                size: record.len() as u64,
                record: record::decode(&record),
            })
            .collect())
    }

    /// Moves dead records `ids` back to the end of the spool as `records`,
    /// in one durable commit; refused when they do not fit.
    pub fn revive(&self, ids: &[u64], records: Vec<Vec<u8>>) -> Result<(), Refused> {
        let size: u64 = records.iter().map(|r| r.len() as u64).sum();
        let n = records.len() as u64;
        self.take_room(n, size)?;
        let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        if let Err(e) = self.store.revive(ids, &slices) {
            self.counts.sub(n, size);
            return Err(Refused::Store(Arc::new(e)));
        }
        self.counts
            .dead
            .fetch_sub(ids.len() as u64, Ordering::AcqRel);
        self.counts.written.notify_one();
        Ok(())
    }

    /// Removes dead records `ids` for good; how many there were.
    pub fn discard(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let removed = self.store.remove(Table::Dead, ids)?;
        self.counts.dead.fetch_sub(removed as u64, Ordering::AcqRel);
        Ok(removed)
    }

    /// Messages and bytes waiting.
    pub fn depth(&self) -> (u64, u64) {
        (
            self.counts.messages.load(Ordering::Acquire),
            self.counts.bytes.load(Ordering::Acquire),
        )
    }

    /// Messages in the dead-letter spool.
    pub fn dead(&self) -> u64 {
        self.counts.dead.load(Ordering::Acquire)
    }

    /// Durable commits of appends made since start.
    pub fn commits(&self) -> u64 {
        self.appender.commits()
    }

    /// The most bytes the spool holds.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// When the oldest waiting record was spooled (Unix epoch ms).
    pub fn oldest_ms(&self) -> Result<Option<i64>, StoreError> {
        let first = self.store.read(Table::Spooled, 0, 1)?;
        Ok(first
            .first()
            .and_then(|(_, r)| record::decode(r).ok())
            .map(|r| r.spooled_at_ms))
    }

    /// Waits until something was written (or a while passed).
    async fn written(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.counts.written.notified()).await;
    }
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

    async fn append(spool: &Spool, body: &'static [u8]) -> Result<u64, Refused> {
        Ok(spool.enqueue(&publish(body)).await?.wait().await?)
    }

    fn body(s: &Spooled) -> Bytes {
        s.record.as_ref().unwrap().publish.message.body.clone()
    }

    #[tokio::test]
    async fn full_refuses_without_writing_and_room_comes_back_on_removal() {
        let dir =
            std::env::temp_dir().join(format!("warren-spool-{}", uuid::Uuid::new_v4().simple()));
        let now = crate::bus::schedule::now_ms();
        let one = record::encode(&publish(b"0123456789"), now, None).len() as u64;
        let spool = Spool::open(&dir, 2 * one).unwrap();
        assert!(!spool.is_waiting());
        append(&spool, b"0123456789").await.unwrap();
        append(&spool, b"abcdefghij").await.unwrap();
        assert!(spool.is_waiting());
        let refused = append(&spool, b"klmnopqrst").await.unwrap_err();
        assert!(matches!(refused, Refused::Full { .. }), "{refused:?}");
        assert_eq!(spool.depth(), (2, 2 * one));
        let waiting = spool.next(10).unwrap();
        let bodies: Vec<Bytes> = waiting.iter().map(body).collect();
        assert_eq!(bodies, [&b"0123456789"[..], b"abcdefghij"]);
        assert!(spool.oldest_ms().unwrap().unwrap() >= now);
        spool.settle(&waiting, &[waiting[0].id], &[]).unwrap();
        assert_eq!(spool.depth(), (1, one));
        append(&spool, b"klmnopqrst").await.unwrap();
        // A refusal goes to the dead-letter spool with its reason.
        spool
            .settle(&waiting, &[], &[(waiting[1].id, "no exchange".into())])
            .unwrap();
        assert_eq!((spool.depth().0, spool.dead()), (1, 1));
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
        assert_eq!((spool.depth().0, spool.dead()), (1, 1));
        let left = spool.next(10).unwrap();
        assert_eq!(
            left.iter().map(body).collect::<Vec<_>>(),
            [&b"klmnopqrst"[..]]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
