//! Ack deadlines: a delivery neither settled nor extended within
//! `ack_deadline_ms` is taken back by Warren (requeued), alone, while the
//! channel and every other delivery on it stay as they are. With deadlines
//! below the broker's `consumer_timeout` (30 minutes by default), a client
//! that forgets a delivery never makes the broker close the channel, which
//! would fail every delivery on it.

use std::collections::HashMap;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio_util::time::{delay_queue, DelayQueue};

/// The longest ack deadline (the broker's default `consumer_timeout`).
pub const MAX_ACK_DEADLINE_MS: u32 = 30 * 60 * 1000;

/// Deadlines by delivery tag (or sequence number).
#[derive(Default)]
pub struct Deadlines {
    after: Option<Duration>,
    queue: DelayQueue<u64>,
    keys: HashMap<u64, delay_queue::Key>,
}

impl Deadlines {
    /// Deadlines of `ms` (0: none).
    pub fn new(ms: u32) -> Self {
        Self {
            after: (ms > 0).then(|| Duration::from_millis(u64::from(ms))),
            ..Default::default()
        }
    }

    /// Whether deadlines are kept at all.
    pub fn enabled(&self) -> bool {
        self.after.is_some()
    }

    /// `tag` was handed out: its deadline starts.
    pub fn start(&mut self, tag: u64) {
        if let Some(after) = self.after {
            let key = self.queue.insert(tag, after);
            if let Some(old) = self.keys.insert(tag, key) {
                self.queue.remove(&old);
            }
        }
    }

    /// `tag`'s deadline starts again.
    pub fn extend(&mut self, tag: u64) {
        if let (Some(after), Some(key)) = (self.after, self.keys.get(&tag)) {
            self.queue.reset(key, after);
        }
    }

    /// `tag` was settled.
    pub fn remove(&mut self, tag: u64) {
        if let Some(key) = self.keys.remove(&tag) {
            self.queue.remove(&key);
        }
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.keys.clear();
    }

    /// The next tag whose deadline passed; pending while there is none.
    pub async fn expired(&mut self) -> u64 {
        std::future::poll_fn(|cx| self.poll_expired(cx)).await
    }

    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<u64> {
        match self.queue.poll_expired(cx) {
            Poll::Ready(Some(expired)) => {
                let tag = expired.into_inner();
                self.keys.remove(&tag);
                Poll::Ready(tag)
            }
            // Empty: pending until something is inserted (the task is polled
            // again by whatever inserts, in its own loop).
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_expire_unless_settled_or_extended() {
        let mut d = Deadlines::new(1000);
        d.start(1);
        d.start(2);
        d.start(3);
        d.remove(2);
        tokio::time::advance(Duration::from_millis(600)).await;
        d.extend(3);
        assert_eq!(d.expired().await, 1);
        let next = tokio::time::timeout(Duration::from_millis(300), d.expired()).await;
        assert!(next.is_err(), "3 was extended");
        assert_eq!(d.expired().await, 3);
        let none = tokio::time::timeout(Duration::from_secs(5), d.expired()).await;
        assert!(none.is_err(), "2 was settled");
        assert!(!Deadlines::new(0).enabled());
    }
}
