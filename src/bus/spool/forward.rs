//! The forwarder: drains the spool to the broker, in order, once Warren is
//! ready again.
//!
//! It takes the oldest records in batches and publishes them on a publisher
//! session of its own (one confirm channel, so the broker sees them in
//! spool order, many in flight). Their verdicts are read in order: records
//! confirmed, and records the broker refuses for good (no such exchange,
//! unroutable, invalid), are settled in one durable commit: the first
//! removed, the second moved to the dead-letter spool. The first failure
//! that may pass (the broker gone again, a nack, a timeout) ends the batch
//! there: what follows it stays spooled and is sent again, in order, after a
//! backoff. A record is removed only after its confirm, so a crash
//! duplicates at most what was in flight, and never loses one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ops::blocking;
use super::{Spool, Spooled};
use crate::bus::{Bus, Pending, PublisherHandle};
use crate::error::Error;

/// Records read and sent per batch.
const BATCH: usize = 512;
/// The first wait after a failed batch; doubled up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Bus {
    /// Starts the forwarder when the spool is on.
    pub(in crate::bus) fn start_spool(self: &Arc<Self>) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        spool.register_metrics(&self.metrics);
        let (messages, bytes) = spool.depth();
        if messages > 0 {
            info!(
                messages,
                bytes, "the spool holds messages from an earlier run"
            );
        }
        let forwarder = Forwarder {
            bus: self.clone(),
            spool,
            shutdown: self.shutdown.clone(),
        };
        self.background.spawn(forwarder.run());
    }
}

struct Forwarder {
    bus: Arc<Bus>,
    spool: Arc<Spool>,
    shutdown: CancellationToken,
}

/// How one record of a batch went.
enum Sent {
    Pending(Pending),
    Failed(Error),
}

impl Forwarder {
    async fn run(self) {
        let mut session: Option<PublisherHandle> = None;
        let mut backoff = BACKOFF;
        while !self.shutdown.is_cancelled() {
            if self.spool.depth().0 == 0 {
                tokio::select! {
                    _ = self.spool.written() => {}
                    _ = self.shutdown.cancelled() => break,
                }
                continue;
            }
            if !self.bus.is_ready() || self.bus.breaker.check().is_err() {
                self.pause(Duration::from_millis(100)).await;
                continue;
            }
            match self.batch(&mut session).await {
                Ok(()) => backoff = BACKOFF,
                Err(e) => {
                    session = None;
                    warn!(error = %e, retry_in = ?backoff, "forwarding the spool stopped; trying again");
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn pause(&self, wait: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Forwards the oldest records; `Err` with the failure that stopped it
    /// part-way (what was settled before it stays settled).
    async fn batch(&self, session: &mut Option<PublisherHandle>) -> Result<(), Error> {
        let batch = blocking(self.spool.clone(), |s| s.next(BATCH)).await?;
        let publisher = match session {
            Some(publisher) => publisher,
            // Warren's own channel, outside the clients' amqp.max_channels.
            None => session.insert(self.bus.publishers.internal(&self.bus.auth.internal())),
        };
        let mut sent = Vec::with_capacity(batch.len());
        for spooled in &batch {
            let Ok(record) = &spooled.record else {
                break; // settled below, with no publish
            };
            let pass = match self.bus.enter_broker() {
                Ok(pass) => pass,
                Err(e) => {
                    sent.push(Sent::Failed(e));
                    break;
                }
            };
            let publish = record.publish.clone();
            match self
                .bus
                .send_checked(publisher, publish, Instant::now(), pass)
                .await
            {
                Ok(pending) => sent.push(Sent::Pending(pending)),
                Err(e) => {
                    let transient = e.is_retryable();
                    sent.push(Sent::Failed(e));
                    if transient {
                        break;
                    }
                }
            }
        }
        let mut done: Vec<&Spooled> = Vec::new();
        let mut refused: Vec<(&Spooled, String)> = Vec::new();
        let mut stopped = None;
        let mut verdicts = sent.into_iter();
        for spooled in &batch {
            if let Err(reason) = &spooled.record {
                // Never replayed as garbage: dropped, and said so.
                tracing::error!(id = spooled.id, %reason, "dropped an unreadable spool record");
                done.push(spooled);
                continue;
            }
            let verdict = match verdicts.next() {
                Some(Sent::Pending(pending)) => pending.await.unwrap_or(Err(Error::ShuttingDown)),
                Some(Sent::Failed(e)) => Err(e),
                None => break,
            };
            match verdict {
                Ok(_) => done.push(spooled),
                Err(e) if !e.is_retryable() => {
                    warn!(id = spooled.id, error = %e, "the broker refused a spooled message; moved to the dead-letter spool");
                    refused.push((spooled, format!("{}: {e}", e.kind())));
                }
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            }
        }
        let settled = (done.len(), refused.len());
        let done: Vec<u64> = done.iter().map(|s| s.id).collect();
        let refused: Vec<(u64, String)> = refused.iter().map(|(s, r)| (s.id, r.clone())).collect();
        blocking(self.spool.clone(), move |spool| {
            spool.settle(&batch, &done, &refused)
        })
        .await?;
        tracing::debug!(
            forwarded = settled.0,
            refused = settled.1,
            "forwarded from the spool"
        );
        match stopped {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
