//! Handing a partition over without breaking its keys' order.
//!
//! The broker makes the next subscriber a partition's active consumer as
//! soon as the current one cancels (or closes its channel), and may send it
//! later messages before it has returned what the first one still held
//! unacked. So a subscriber that lets a partition go (it leaves, or its share
//! is smaller) first writes a `begin` marker to the partition's handover
//! queue, cancels, takes what the broker had already sent, moves everything
//! it held from the partition there (in arrival order, confirmed, then
//! acked) and writes an `end` marker. The next subscriber, on its first
//! delivery, reads the handover queue before anything else, and waits for
//! the `end` of a handover it sees begin. A subscriber that dies leaves its
//! messages unacked instead, which the broker returns before it activates
//! the next consumer.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use tracing::{info, warn};

use super::consumer::Task;
use super::io::text;
use super::keys::{header, Msg, Source};
use crate::error::Error;

/// Marks the two ends of a handover.
const MARKER_HEADER: &str = "x-warren-handover";

/// How long a subscriber that took a partition over waits for the rest of
/// a handover it saw begin (the one handing over died half-way: what it
/// held comes back from the broker).
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

fn marker(which: &str) -> (bytes::Bytes, BasicProperties) {
    let mut headers = FieldTable::default();
    headers.insert(MARKER_HEADER.into(), text(which));
    (
        bytes::Bytes::new(),
        BasicProperties::default().with_headers(headers),
    )
}

impl Task {
    /// Leaving: every partition this subscriber serves is handed over.
    pub(super) async fn hand_over(&mut self) -> Result<(), Error> {
        for p in 0..self.parts.len() as u32 {
            if self.parts[p as usize].loaded {
                self.let_go(p).await?;
            }
        }
        Ok(())
    }

    /// Hands partition `p` over (see the module); its channel stays open,
    /// holding nothing from the partition.
    pub(super) async fn let_go(&mut self, p: u32) -> Result<(), Error> {
        let handover = self.s.group.handover(p);
        self.publish(&handover, vec![marker("begin")]).await?;
        let part = &mut self.parts[p as usize];
        let (Some(channel), Some(mut consumer)) = (part.channel.clone(), part.consumer.take())
        else {
            return Err(Error::unavailable("the partition has no consumer"));
        };
        let mut held: Vec<Msg> = Vec::new();
        let mut back = Vec::new();
        for key in part.keys.values_mut() {
            if let Some(m) = key.current.take() {
                if m.source.in_partition() {
                    held.push(m);
                } else {
                    back.push(m.source.tag());
                }
            }
            held.extend(key.pending.drain(..));
        }
        // A slot's message goes back to its place at its queue's head
        // before the next subscriber can look at the slot.
        for tag in back {
            self.nack(p, tag, true).await?;
        }
        let qos = channel.basic_qos(self.window(), BasicQosOptions::default());
        self.s.pool.op("basic.qos", qos).await?; // the nacks are through
        let cancel = channel.basic_cancel(consumer.tag(), BasicCancelOptions::default());
        self.s.pool.op("basic.cancel", cancel).await?;
        // What the broker sent before its cancel-ok: the consumer's stream
        // ends once lapin has it all (bounded, in case it does not).
        let mut late = Vec::new();
        let limit = tokio::time::Instant::now() + self.s.pool.operation_timeout();
        while let Ok(Some(next)) = tokio::time::timeout_at(limit, consumer.next()).await {
            late.push(next.map_err(crate::amqp::classify)?);
        }
        held.sort_by_key(|m| m.seq);
        let mut copies: Vec<(bytes::Bytes, BasicProperties, Source)> = held
            .into_iter()
            .map(|m| (m.body, m.properties, m.source))
            .collect();
        copies.extend(late.into_iter().map(|d| {
            (
                d.data.into(),
                d.properties,
                Source::Partition(d.delivery_tag),
            )
        }));
        let moved = copies.len() as u64;
        let sources: Vec<Source> = copies.iter().map(|c| c.2).collect();
        let mut messages: Vec<(bytes::Bytes, BasicProperties)> =
            copies.into_iter().map(|(b, p, _)| (b, p)).collect();
        messages.push(marker("end"));
        self.publish(&handover, messages).await?;
        for source in sources {
            if let Source::Partition(tag) = source {
                // Late deliveries were never filed: held now, acked below.
                self.parts[p as usize].tags.held(tag);
            }
            self.ack(p, source).await?;
        }
        self.flush_acks().await?;
        self.s
            .metrics
            .ordered_events
            .with_label_values(&["handed_over"])
            .inc_by(moved);
        info!(
            group = self.s.group.name(),
            partition = p,
            moved,
            "handed a partition over"
        );
        Ok(())
    }

    /// Taking partition `p` over: what the last subscriber handed over
    /// comes first, all of it.
    pub(super) async fn take_over(&mut self, p: u32) -> Result<(), Error> {
        let handover = self.s.group.handover(p);
        let mut open = false;
        let mut taken = 0;
        let started = Instant::now();
        loop {
            let Some(m) = self.get(p, &handover).await? else {
                if !open {
                    break;
                }
                if started.elapsed() > HANDOVER_WAIT {
                    warn!(
                        group = self.s.group.name(),
                        partition = p,
                        "a handover did not end; going on"
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            match header(&m.properties, MARKER_HEADER).as_deref() {
                Some("begin") => {
                    open = true;
                    self.ack(p, Source::Handover(m.delivery_tag)).await?;
                }
                Some(_) => {
                    open = false;
                    self.ack(p, Source::Handover(m.delivery_tag)).await?;
                }
                None => {
                    taken += 1;
                    self.file(p, m, Source::Handover).await?;
                }
            }
        }
        if taken > 0 {
            info!(
                group = self.s.group.name(),
                partition = p,
                taken,
                "took over what the last subscriber held"
            );
        }
        Ok(())
    }
}
