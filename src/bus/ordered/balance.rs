//! Spreading a group's partitions over its subscribers.
//!
//! The broker makes a partition's first consumer its active one, so the
//! first subscriber of a group would serve every partition. Every few
//! seconds a subscriber compares the partitions it serves with a fair share
//! (the partitions over the group's subscribers, counted as the consumers of
//! the group's presence queue, where each subscriber has one); above it, it lets one go: it hands nothing more out
//! from it, waits until its client has settled what it holds from it, moves
//! what it looked ahead at (in order, confirmed) to the partition's handover
//! queue, and consumes the partition again on a new channel, now behind the
//! others, so the broker makes the next subscriber its active one.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tracing::info;

use super::consumer::Task;

use crate::error::Error;

impl Task {
    /// Lets one partition go when this subscriber serves more than its share.
    pub(super) async fn balance(&mut self) -> Result<(), Error> {
        if self.paused() || self.parts.iter().any(|p| p.releasing) {
            return Ok(());
        }
        let serving: Vec<usize> = (0..self.parts.len())
            .filter(|&p| self.parts[p].loaded)
            .collect();
        let Some(&last) = serving.last() else {
            return Ok(());
        };
        if serving.len() == 1 {
            return Ok(());
        }
        let subscribers = self.subscribers().await?.max(1);
        let share = self.parts.len().div_ceil(subscribers);
        if serving.len() > share {
            info!(
                group = self.s.group.name(),
                partition = last,
                serving = serving.len(),
                share,
                "letting a partition go to another subscriber"
            );
            self.parts[last].releasing = true;
        }
        self.release_ready().await
    }

    /// How many subscribers the group has: the consumers of its presence
    /// queue (a partition's count shows only its active consumer).
    async fn subscribers(&self) -> Result<usize, Error> {
        let (channel, _) = self
            .presence
            .as_ref()
            .ok_or_else(|| Error::unavailable("the subscription has no presence channel"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = self.s.group.presence();
        let declare = channel.queue_declare(queue.as_str().into(), passive, FieldTable::default());
        let declared = self.s.pool.op("queue.declare", declare).await?;
        Ok(declared.consumer_count() as usize)
    }

    /// Lets go the partitions being released whose deliveries the client
    /// has all settled.
    pub(super) async fn release_ready(&mut self) -> Result<(), Error> {
        for p in 0..self.parts.len() {
            let held = self.sent.values().any(|(q, _)| *q as usize == p);
            if self.parts[p].releasing && !held {
                self.release(p as u32).await?;
            }
        }
        Ok(())
    }

    async fn release(&mut self, p: u32) -> Result<(), Error> {
        self.let_go(p).await?;
        let part = &mut self.parts[p as usize];
        part.reset();
        self.ready.retain(|(q, _)| *q != p);
        self.stalled.retain(|(q, _)| *q != p);
        self.open_partition(p).await
    }
}
