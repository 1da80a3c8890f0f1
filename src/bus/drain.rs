//! The one drain: every call into the bus passes a gate and holds its pass
//! until it is answered; shutdown closes the gate and waits for the passes.
//!
//! Shutdown runs in this order (see [`super::Bus::drain`] and
//! [`super::Bus::close`]): stop accepting (new calls fail with
//! UNAVAILABLE / 503 at once), wait under `shutdown.grace` for every call in
//! flight (publishes until their confirms, calls until their replies, acks
//! until sent), end subscriptions (unacked deliveries go back), close the
//! channels, close the connections.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;

/// Held by a call in flight; dropping it lets the drain go on. A
/// publish's pass also holds its body's bytes against
/// `publish.max_bytes_in_flight` (see [`super::publish::Budget`]).
#[derive(Debug)]
pub struct Pass {
    _token: TaskTrackerToken,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Pass {
    /// The same pass, holding `bytes` too until it is dropped.
    pub fn holding(self, bytes: OwnedSemaphorePermit) -> Self {
        Self {
            _bytes: Some(bytes),
            ..self
        }
    }
}

/// The gate every bus entry passes.
#[derive(Default)]
pub struct Gate {
    closing: AtomicBool,
    in_flight: TaskTracker,
}

impl Gate {
    /// A pass for one call, or SHUTTING_DOWN once the gate is closed.
    pub fn enter(&self) -> Result<Pass, Error> {
        // Take the token first: a close that follows our check waits for it,
        // and one that came before it is seen by the check.
        let token = self.in_flight.token();
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        Ok(Pass {
            _token: token,
            _bytes: None,
        })
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Closes the gate: new calls fail from now on.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.in_flight.close();
    }

    /// Waits until every pass is dropped (after [`Gate::close`]).
    pub async fn drained(&self) {
        self.in_flight.wait().await;
    }

    /// How many calls are in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn close_waits_for_every_pass_and_refuses_new_ones() {
        let gate = std::sync::Arc::new(Gate::default());
        let pass = gate.enter().unwrap();
        gate.close();
        assert!(matches!(gate.enter(), Err(Error::ShuttingDown)));
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.drained().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "a pass is still out");
        drop(pass);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("drained once the pass is dropped")
            .unwrap();
    }
}
