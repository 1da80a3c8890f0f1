//! The `Bus` side of the spool: which publishes go into it, and the
//! operators' calls (its state, the dead-letter spool).

use std::sync::Arc;

use super::commit::Durable;
use super::{Spool, Spooled};
use crate::auth::{Access, Caller};
use crate::bus::dead_letters::{Outcome, Patch, Selection};
use crate::bus::drain::Pass;
use crate::bus::{Bus, Confirmed, Publish};
use crate::error::Error;
use crate::message::RESERVED_PREFIX;
use crate::metrics::outcome;

/// Where a checked publish goes; each way holds a pass.
pub(crate) enum Route {
    /// To the broker.
    Broker(Pass),
    /// Into the spool.
    Spool(Arc<Spool>, Pass),
}

/// The spool as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Messages waiting to be forwarded.
    pub messages: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// `spool.max_bytes`.
    pub max_bytes: u64,
    /// Age of the oldest waiting message, in seconds.
    pub oldest_seconds: Option<f64>,
    /// Messages in the dead-letter spool.
    pub dead: u64,
}

/// A message of the dead-letter spool.
#[derive(Debug, Clone)]
pub struct Dead {
    /// The message's `message_id` (what a selection names).
    pub id: String,
    /// The publish as spooled.
    pub publish: Publish,
    /// Why the broker refused it when it was forwarded.
    pub reason: String,
}

impl Bus {
    /// Where a publish [`Bus::check`] passed goes: into the spool when the
    /// spool is on, the publish allows it, and either earlier publishes are
    /// still spooled (so that order holds) or the broker cannot be reached
    /// (down, or the circuit open); else to the broker, failing fast while
    /// it is away. The publish's pass holds its body's bytes until it is
    /// answered (past `publish.max_bytes_in_flight`: refused here).
    pub(crate) fn route(&self, publish: &Publish) -> Result<Route, Error> {
        let allowed = publish.allow_spool.unwrap_or(self.config.spool.default);
        let spool = self.spool.as_ref().filter(|_| allowed);
        let bytes = self.bodies.hold(publish.message.body.len())?;
        if let Some(spool) = spool.filter(|s| s.is_waiting()) {
            return Ok(Route::Spool(spool.clone(), self.enter()?.holding(bytes)));
        }
        match (self.enter_broker(), spool) {
            (Ok(pass), _) => Ok(Route::Broker(pass.holding(bytes))),
            (Err(Error::Unavailable { .. }), Some(spool)) => {
                Ok(Route::Spool(spool.clone(), self.enter()?.holding(bytes)))
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Queues `publish` in `spool`, in call order.
    pub(crate) async fn spool_in(
        &self,
        spool: &Spool,
        publish: &Publish,
    ) -> Result<Durable, Error> {
        Ok(spool.enqueue(publish).await?)
    }

    /// The answer to a spooled publish, once it is durable.
    pub(crate) async fn spooled(
        &self,
        durable: Durable,
        message_id: String,
    ) -> Result<Confirmed, Error> {
        match durable.wait().await {
            Ok(_) => {
                self.metrics.publish(outcome::SPOOLED);
                Ok(Confirmed {
                    message_id,
                    spooled: true,
                })
            }
            Err(e) => {
                self.metrics.publish(outcome::UNAVAILABLE);
                Err(Error::from(&*e))
            }
        }
    }

    /// The spool's state (admin).
    pub async fn spool_status(&self, caller: &Caller) -> Result<Status, Error> {
        let spool = self.spool_for(caller)?;
        let (messages, bytes) = spool.depth();
        let (dead, max_bytes) = (spool.dead(), spool.max_bytes());
        let oldest = blocking(spool, |s| s.oldest_ms()).await?;
        let now = crate::bus::schedule::now_ms();
        Ok(Status {
            messages,
            bytes,
            max_bytes,
            oldest_seconds: oldest.map(|at| (now - at).max(0) as f64 / 1000.0),
            dead,
        })
    }

    /// Up to `limit` messages of the dead-letter spool, oldest first, left
    /// in place (admin).
    pub async fn spool_dead(&self, caller: &Caller, limit: usize) -> Result<Vec<Dead>, Error> {
        let spool = self.spool_for(caller)?;
        let max = self.config.dead_letters.max_list;
        if limit > max {
            return Err(Error::InvalidArgument(format!(
                "limit {limit} is above {max} (dead_letters.max_list)"
            )));
        }
        let records = blocking(spool, move |s| s.dead_records(limit)).await?;
        Ok(records.into_iter().filter_map(dead).collect())
    }

    /// Sends the selected messages of the dead-letter spool back to the end
    /// of the spool, corrected by `patch`, to be forwarded again (admin).
    pub async fn spool_replay(
        &self,
        caller: &Caller,
        selection: &Selection,
        patch: &Patch,
    ) -> Result<Outcome, Error> {
        let spool = self.spool_for(caller)?;
        patch.check(self.config.publish.max_body_bytes)?;
        let (chosen, missing) = self.select_dead(&spool, selection).await?;
        let records: Vec<Vec<u8>> = chosen
            .iter()
            .filter_map(|s| s.record.as_ref().ok())
            .map(|r| {
                let mut publish = r.publish.clone();
                apply(patch, &mut publish);
                super::record::encode(&publish, crate::bus::schedule::now_ms(), None)
            })
            .collect();
        let ids: Vec<u64> = chosen.iter().map(|s| s.id).collect();
        let done = ids.len() as u32;
        blocking(spool, move |s| s.revive(&ids, records)).await?;
        Ok(Outcome {
            done,
            missing,
            stopped: None,
        })
    }

    /// Removes the selected messages of the dead-letter spool for good
    /// (admin).
    pub async fn spool_discard(
        &self,
        caller: &Caller,
        selection: &Selection,
    ) -> Result<Outcome, Error> {
        let spool = self.spool_for(caller)?;
        let (chosen, missing) = self.select_dead(&spool, selection).await?;
        let ids: Vec<u64> = chosen.iter().map(|s| s.id).collect();
        let done = blocking(spool, move |s| s.discard(&ids)).await? as u32;
        Ok(Outcome {
            done,
            missing,
            stopped: None,
        })
    }

    /// The spool, for an operator.
    fn spool_for(&self, caller: &Caller) -> Result<Arc<Spool>, Error> {
        caller.permit(Access::Admin)?;
        self.spool
            .clone()
            .ok_or_else(|| Error::NotFound("the spool is off (spool.enabled = false)".into()))
    }

    /// The dead-letter spool's records `selection` names (up to
    /// `dead_letters.max_scan` are looked at), and the ids not found.
    async fn select_dead(
        &self,
        spool: &Arc<Spool>,
        selection: &Selection,
    ) -> Result<(Vec<Spooled>, Vec<String>), Error> {
        let scan = self.config.dead_letters.max_scan;
        let records = blocking(spool.clone(), move |s| s.dead_records(scan)).await?;
        let id_of = |s: &Spooled| {
            s.record
                .as_ref()
                .map(|r| r.publish.message.message_id.clone())
                .unwrap_or_default()
        };
        Ok(match selection {
            Selection::All => (records, Vec::new()),
            Selection::Ids(ids) => {
                let missing = ids
                    .iter()
                    .filter(|id| !records.iter().any(|s| &id_of(s) == *id))
                    .cloned()
                    .collect();
                let chosen = records
                    .into_iter()
                    .filter(|s| ids.contains(&id_of(s)))
                    .collect();
                (chosen, missing)
            }
        })
    }
}

/// A dead record as operators see it; an unreadable one is logged and left
/// out.
fn dead(s: Spooled) -> Option<Dead> {
    match s.record {
        Ok(record) => Some(Dead {
            id: record.publish.message.message_id.clone(),
            reason: record.reason.unwrap_or_default(),
            publish: record.publish,
        }),
        Err(reason) => {
            tracing::error!(id = s.id, %reason, "an unreadable record in the dead-letter spool");
            None
        }
    }
}

/// Applies an operator's corrections; Warren's own headers (the ordering
/// key) are kept when the headers are replaced.
fn apply(patch: &Patch, publish: &mut Publish) {
    let message = &mut publish.message;
    if let Some(body) = &patch.body {
        message.body = body.clone();
    }
    if let Some(ct) = &patch.content_type {
        message.content_type = ct.clone();
    }
    if let Some(ce) = &patch.content_encoding {
        message.content_encoding = ce.clone();
    }
    if let Some(headers) = &patch.headers {
        let mut new = headers.clone();
        for (k, v) in &message.headers {
            if k.starts_with(RESERVED_PREFIX) {
                new.insert(k.clone(), v.clone());
            }
        }
        message.headers = new;
    }
}

/// Runs a call on the spool's storage (which fsyncs) off the async threads.
pub(super) async fn blocking<T: Send + 'static, E: Into<Error> + Send + 'static>(
    spool: Arc<Spool>,
    work: impl FnOnce(&Spool) -> Result<T, E> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(move || work(&spool))
        .await
        .map_err(|e| Error::Internal(format!("the spool's task failed: {e}")))?
        .map_err(Into::into)
}
