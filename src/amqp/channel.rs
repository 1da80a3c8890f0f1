//! Warren's handle on an AMQP channel, and the one ledger that counts them.
//!
//! Every channel Warren opens is an [`Channel`]: a lapin channel plus an
//! entry in the [`Ledger`]. The entry goes when the last handle goes, and a
//! channel still open on the broker at that point is closed then, so no path
//! can leak a channel or count one twice. `warren_amqp_channels` is read off
//! the ledger when metrics are scraped: the channels Warren holds that are
//! open, which is what the broker's `list_channels` shows for Warren's
//! connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;

/// The channels Warren holds, by a key of its own.
#[derive(Clone, Default)]
pub struct Ledger {
    open: Arc<Mutex<HashMap<u64, lapin::Channel>>>,
    next: Arc<AtomicU64>,
}

impl Ledger {
    /// How many of the channels held are open.
    pub fn open(&self) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().filter(|c| c.status().connected()).count()
    }

    fn enter(&self, raw: &lapin::Channel) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.insert(key, raw.clone());
        key
    }

    fn leave(&self, key: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

struct Entry {
    ledger: Ledger,
    key: u64,
    raw: lapin::Channel,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.ledger.leave(self.key);
        if self.raw.status().connected() {
            // The last handle went without `close`: close it on the broker
            // anyway (a delivery it held goes back to its queue).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let raw = self.raw.clone();
                runtime.spawn(async move {
                    let close = raw.close(200, "closed by warren".into());
                    let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
                });
            }
        }
    }
}

/// An AMQP channel Warren holds. Clones share it; it is closed once the
/// last clone is dropped or [`Channel::close`] is called.
#[derive(Clone)]
pub struct Channel {
    entry: Arc<Entry>,
}

impl std::ops::Deref for Channel {
    type Target = lapin::Channel;

    fn deref(&self) -> &lapin::Channel {
        &self.entry.raw
    }
}

impl Channel {
    pub(super) fn new(raw: lapin::Channel, ledger: &Ledger) -> Self {
        let key = ledger.enter(&raw);
        Self {
            entry: Arc::new(Entry {
                ledger: ledger.clone(),
                key,
                raw,
            }),
        }
    }

    /// Whether the channel is open.
    pub fn is_open(&self) -> bool {
        self.entry.raw.status().connected()
    }

    /// Closes the channel on the broker (waiting at most `timeout`): every
    /// unacked delivery on it goes back to its queue.
    pub async fn close(self, timeout: Duration) {
        if self.is_open() {
            let close = self.entry.raw.close(200, "closed by warren".into());
            let _ = tokio::time::timeout(timeout, close).await;
        }
    }
}

/// Runs one broker operation within `timeout`; a lapin error becomes the
/// bus error it means, a timeout UNAVAILABLE naming `what`.
pub async fn op<T>(
    what: &str,
    timeout: Duration,
    f: impl std::future::Future<Output = lapin::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, f).await {
        Ok(result) => result.map_err(super::classify),
        Err(_) => Err(Error::unavailable(format!(
            "the broker did not answer {what} within {timeout:?}"
        ))),
    }
}
