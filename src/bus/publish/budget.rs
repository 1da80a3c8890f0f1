//! The one cap on message bodies in flight (`publish.max_bytes_in_flight`):
//! every publish holds its body's bytes from the moment it is routed until
//! it is answered, on every path (unary, streams, HTTP, batches, the
//! spool), so that many large publishes at once cannot take Warren's
//! memory. Past it a publish is refused at once, RESOURCE_EXHAUSTED / 503,
//! and changes nothing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;
use crate::metrics::Metrics;

/// Bytes of message bodies Warren may hold at once.
pub struct Budget {
    bytes: Arc<Semaphore>,
    limit: usize,
}

impl Budget {
    /// Room for `limit` bytes; `warren_publish_bytes_in_flight` shows
    /// what is held.
    pub fn new(limit: usize, metrics: &Metrics) -> Self {
        let limit = limit.min(Semaphore::MAX_PERMITS);
        let bytes = Arc::new(Semaphore::new(limit));
        let seen = Arc::downgrade(&bytes);
        metrics.computed(
            "warren_publish_bytes_in_flight",
            "Bytes of message bodies held from routing to answer (publish.max_bytes_in_flight).",
            move || {
                seen.upgrade()
                    .map_or(0, |b| (limit - b.available_permits()) as i64)
            },
        );
        Self { bytes, limit }
    }

    /// Holds `bytes` until the permit is dropped, or refuses at once.
    pub fn hold(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Error> {
        let n = u32::try_from(bytes).map_err(|_| self.overloaded())?;
        self.bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| self.overloaded())
    }

    fn overloaded(&self) -> Error {
        Error::Overloaded { limit: self.limit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_until_dropped_and_refuses_past_the_limit() {
        let metrics = Metrics::new();
        let budget = Budget::new(100, &metrics);
        let held = || {
            let text = metrics.render();
            let line = text
                .lines()
                .find(|l| l.starts_with("warren_publish_bytes_in_flight "))
                .expect("the gauge");
            line.rsplit(' ').next().unwrap().parse::<usize>().unwrap()
        };
        let a = budget.hold(60).unwrap();
        assert!(matches!(
            budget.hold(41),
            Err(Error::Overloaded { limit: 100 })
        ));
        let b = budget.hold(40).unwrap();
        assert_eq!(held(), 100);
        drop(a);
        assert_eq!(held(), 40);
        assert!(budget.hold(60).is_ok());
        drop(b);
        // An empty body holds nothing and is never refused.
        let _full = budget.hold(100).unwrap();
        assert!(budget.hold(0).is_ok());
    }
}
