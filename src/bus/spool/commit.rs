//! Group commit: appends from many concurrent publishes share one durable
//! commit (one fsync).
//!
//! One thread owns the writes. It takes the first waiting append, then
//! every other append already queued behind it (up to [`MAX_BATCH`]),
//! commits them together and answers each caller only after the commit
//! returned. While a commit runs, the next batch gathers: the more callers,
//! the more each fsync carries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::store::{Store, StoreError, Table};
use super::Counts;

/// Most appends in one commit.
pub const MAX_BATCH: usize = 1024;

/// A durable commit failed; every append in it failed.
pub type Failed = Arc<StoreError>;

struct Append {
    record: Vec<u8>,
    /// What it counted in (given back when its commit fails).
    size: u64,
    reply: oneshot::Sender<Result<u64, Failed>>,
}

/// An append queued: resolves once its commit is durable.
pub struct Durable(oneshot::Receiver<Result<u64, Failed>>);

impl Durable {
    /// Its sequence number once durable.
    pub async fn wait(self) -> Result<u64, Failed> {
        self.0.await.map_err(|_| Arc::new(StoreError::stopped()))?
    }
}

/// The handle callers append through; the writer thread ends when every
/// handle is gone.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Append>,
    commits: Arc<AtomicU64>,
}

impl Appender {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<Store>, counts: Arc<Counts>) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Append>(MAX_BATCH);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        std::thread::Builder::new()
            .name("warren-spool".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let records: Vec<&[u8]> = batch.iter().map(|a| a.record.as_slice()).collect();
                    let result = store.append(Table::Spooled, &records).map_err(Arc::new);
                    counted.fetch_add(1, Ordering::Relaxed);
                    match result {
                        Ok(ids) => {
                            counts.written.notify_one();
                            for (append, id) in batch.into_iter().zip(ids) {
                                let _ = append.reply.send(Ok(id));
                            }
                        }
                        Err(e) => {
                            for append in batch {
                                counts.sub(1, append.size);
                                let _ = append.reply.send(Err(e.clone()));
                            }
                        }
                    }
                }
            })?;
        Ok(Self { tx, commits })
    }

    /// Queues `record` behind every append queued before it; the answer
    /// (its sequence number once the commit holding it is durable) comes on
    /// the returned receiver. Waits only for room in the queue, so a caller
    /// can queue several in order without waiting for each commit.
    pub async fn enqueue(&self, record: Vec<u8>, size: u64) -> Result<Durable, Failed> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Append {
                record,
                size,
                reply,
            })
            .await
            .map_err(|_| Arc::new(StoreError::stopped()))?;
        Ok(Durable(answer))
    }

    /// Appends `record` behind every append before it; its sequence number
    /// once the commit holding it is durable.
    #[cfg(test)]
    pub async fn append(&self, record: Vec<u8>) -> Result<u64, Failed> {
        let size = record.len() as u64;
        self.enqueue(record, size).await?.wait().await
    }

    /// How many commits the writer made.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_appends_share_commits_and_are_durable() {
        let dir = std::env::temp_dir().join(format!(
            "warren-spool-commit-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let store = Arc::new(Store::open(&dir).unwrap());
        let appender = Appender::start(store.clone(), Arc::default()).unwrap();
        let appends = (0..256u32).map(|i| appender.append(i.to_be_bytes().to_vec()));
        let ids: Vec<u64> = futures::future::join_all(appends)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 256);
        // 256 appends queued at once cannot each have had a commit of their own.
        assert!(appender.commits() < 256, "{} commits", appender.commits());
        drop(appender);
        // The writer thread lets go of the store once it sees the channel closed.
        let mut store = store;
        while let Err(shared) = Arc::try_unwrap(store) {
            store = shared;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let store = Store::open(&dir).unwrap();
        // Each record sits under the id its caller was given.
        let read = store.read(Table::Spooled, 0, 1000).unwrap();
        assert_eq!(read.len(), 256);
        for (i, id) in ids.iter().enumerate() {
            let (_, record) = read.iter().find(|(k, _)| k == id).unwrap();
            assert_eq!(record.as_slice(), (i as u32).to_be_bytes());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
