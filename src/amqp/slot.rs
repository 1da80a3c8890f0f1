//! A slot that keeps one live channel (or something built on one) and
//! reopens it on demand, one opener at a time.
//!
//! Shared publishing channels, RPC channels, the exchange probe and the
//! delay-queue declarer all keep a channel across requests. When it dies,
//! the first request to notice opens a new one while the others wait for it
//! (single flight); a caller that saw a channel fail under it invalidates
//! that generation only, so a channel reopened meanwhile is kept.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::Channel;
use crate::error::Error;

/// What a slot holds: anything that can tell whether its channel lives.
pub trait Live: Clone {
    /// Whether it can still be used.
    fn is_live(&self) -> bool;
}

impl Live for Channel {
    fn is_live(&self) -> bool {
        self.is_open()
    }
}

/// One kept channel and its generation.
pub struct Slot<T> {
    current: Mutex<Option<(T, u64)>>,
    reopen: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            current: Mutex::new(None),
            reopen: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }
}

impl<T: Live> Slot<T> {
    /// The live value and its generation, if there is one.
    pub fn live(&self) -> Option<(T, u64)> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|(t, _)| t.is_live()).cloned()
    }

    /// The live value, opened with `open` when there is none; concurrent
    /// callers wait for the one that opens.
    pub async fn get(
        &self,
        open: impl AsyncFnOnce() -> Result<T, Error>,
    ) -> Result<(T, u64), Error> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _one_at_a_time = self.reopen.lock().await;
        if let Some(live) = self.live() {
            return Ok(live); // opened by whoever held the lock before us
        }
        let fresh = open().await?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // The dead value it replaces is dropped here (and with it, its channel).
        let _old = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((fresh.clone(), generation));
        Ok((fresh, generation))
    }

    /// Takes out the value of `generation` if it is still the current one
    /// (it failed under a caller); the caller drops or closes it.
    pub fn invalidate(&self, generation: u64) -> Option<T> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            Some((_, g)) if *g == generation => current.take().map(|(t, _)| t),
            _ => None,
        }
    }

    /// Takes out whatever it holds (shutdown).
    pub fn take(&self) -> Option<T> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.take().map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[derive(Clone)]
    struct Fake(Arc<AtomicBool>);

    impl Live for Fake {
        fn is_live(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn opens_once_for_many_and_again_after_death() {
        let slot = Arc::new(Slot::<Fake>::default());
        let opened = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (slot, opened) = (slot.clone(), opened.clone());
            tasks.push(tokio::spawn(async move {
                slot.get(async || {
                    opened.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    Ok(Fake(Arc::new(AtomicBool::new(true))))
                })
                .await
                .map(|(_, g)| g)
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        assert_eq!(opened.load(Ordering::Relaxed), 1, "single flight");
        let (first, g) = slot.live().unwrap();
        first.0.store(false, Ordering::Relaxed);
        assert!(slot.live().is_none(), "a dead value is not handed out");
        let (_, g2) = slot
            .get(async || Ok(Fake(Arc::new(AtomicBool::new(true)))))
            .await
            .unwrap();
        assert_eq!(g2, g + 1);
        assert!(slot.invalidate(g).is_none(), "an old generation is ignored");
        assert!(slot.invalidate(g2).is_some());
        assert!(slot.live().is_none());
    }

    #[tokio::test]
    async fn a_failed_open_leaves_it_empty() {
        let slot = Slot::<Fake>::default();
        let e = slot.get(async || Err(Error::unavailable("down"))).await;
        assert!(e.is_err());
        assert!(slot.live().is_none());
    }
}
