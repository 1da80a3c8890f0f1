//! One subscriber of an ordered group: a task serving every partition it is
//! the active consumer of, each on a channel of its own.
//!
//! Per partition it looks ahead `window` messages (the broker's prefetch),
//! files each under its key, and hands the client one message per key at a
//! time, up to the subscription's `prefetch` across keys. A key whose later
//! messages pile up (a busy key) is taken aside into a slot, its messages
//! moved, in order and confirmed, to the slot's wait queue, so that it no
//! longer fills the window and the partition's other keys go on (no
//! head-of-line blocking); it then drains from there, one at a time. A
//! message that fails for good is moved to the slot's held queue and blocks
//! its key until an operator retries or skips it. Invariant: while a key
//! holds a slot, none of its messages is left unacked in the partition
//! queue, so that whoever serves the partition next finds them all in the
//! slot, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::SelectAll;
use futures::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::io::tick;
use super::keys::Partition;
use super::Group;
use crate::amqp::{self, Channel, Pool};
use crate::bus::retry::Retrier;
use crate::bus::subscribe::Outgoing;
use crate::bus::subscribe::{Deadlines, Settle};
use crate::error::Error;
use crate::metrics::Metrics;

type Item = (u32, u64, Option<Result<AmqpDelivery, lapin::Error>>);
/// A partition's deliveries (Sync: the task is borrowed across awaits).
type Deliveries = std::pin::Pin<Box<dyn futures::Stream<Item = Item> + Send + Sync>>;

/// What woke the task (a stack temporary: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Event {
    Settle(Settle),
    Due(Due),
    Expired(u64),
    Paused(bool),
    Notice(Option<(String, u32)>),
    Room(mpsc::OwnedPermit<Outgoing>),
    Arrived(u32, u64, Option<Result<AmqpDelivery, lapin::Error>>),
    Nudge,
}

/// How often a subscriber nudges the partitions it does not serve: when
/// their subscriber dies, the next one (perhaps this one) reads their slots
/// within this time even if nothing else arrives.
const NUDGE_EVERY: Duration = Duration::from_secs(3);

/// A retry whose delay is over.
pub(super) struct Due {
    pub(super) generation: u64,
    pub(super) partition: u32,
    pub(super) key: String,
    pub(super) token: u64,
}

pub(crate) struct Subscriber {
    pub id: u64,
    /// The secret part of its delivery ids.
    pub key: u128,
    pub group: Arc<Group>,
    pub pool: Arc<Pool>,
    /// Where moved messages are published (confirmed).
    pub publish_pool: Arc<Pool>,
    pub retrier: Arc<Retrier>,
    pub metrics: Metrics,
    pub prefetch: usize,
    pub settle: mpsc::Receiver<Settle>,
    pub out: mpsc::Sender<Outgoing>,
    pub cancel: CancellationToken,
    pub paused: watch::Receiver<bool>,
    pub notices: watch::Receiver<Option<(String, u32)>>,
    /// See [`SubscribeRequest::ack_deadline_ms`](crate::bus::SubscribeRequest).
    pub ack_deadline_ms: u32,
}

/// The subscriber and what it holds.
pub(crate) struct Task {
    pub(super) s: Subscriber,
    pub(super) parts: Vec<Partition>,
    pub(super) consumers: SelectAll<Deliveries>,
    /// Moves are published here, in order, and confirmed.
    pub(super) confirm: Option<Channel>,
    /// Holds this subscriber's consumer of the group's presence queue
    /// (kept: dropping a lapin consumer cancels it).
    pub(super) presence: Option<(Channel, lapin::Consumer)>,
    pub(super) generation: u64,
    pub(super) next_seq: u64,
    /// The client's deliveries: sequence number to partition and key.
    pub(super) sent: HashMap<u64, (u32, String)>,
    /// Keys whose head is ready to go to the client.
    pub(super) ready: VecDeque<(u32, String)>,
    /// Ready keys of stalled partitions.
    pub(super) stalled: Vec<(u32, String)>,
    pub(super) due_tx: mpsc::UnboundedSender<Due>,
    pub(super) due: mpsc::UnboundedReceiver<Due>,
    /// Ack deadlines of what the client holds, by sequence number.
    pub(super) deadlines: Deadlines,
}

impl Subscriber {
    /// Opens every partition; an error when the broker refuses.
    pub async fn start(self) -> Result<Task, Error> {
        let (due_tx, due) = mpsc::unbounded_channel();
        let self_deadline = self.ack_deadline_ms;
        let slots = self.group.slots();
        let mut task = Task {
            parts: (0..self.group.partitions())
                .map(|_| Partition::new(slots))
                .collect(),
            s: self,
            consumers: SelectAll::new(),
            confirm: None,
            presence: None,
            generation: 0,
            next_seq: 1,
            sent: HashMap::new(),
            ready: VecDeque::new(),
            stalled: Vec::new(),
            due_tx,
            due,
            deadlines: Deadlines::new(self_deadline),
        };
        if let Err(e) = task.open().await {
            task.close().await;
            return Err(e);
        }
        Ok(task)
    }
}

impl Task {
    /// Looks ahead this many messages per partition.
    pub(super) fn window(&self) -> u16 {
        (self.s.prefetch * 2).clamp(32, 2048) as u16
    }

    /// A key with this many messages waiting behind its head is busy.
    pub(super) fn busy_at(&self) -> usize {
        usize::from(self.window() / 4).max(8)
    }

    pub(super) async fn open(&mut self) -> Result<(), Error> {
        let channel = self.s.pool.open_channel().await?;
        let presence = self.s.group.presence();
        let consume = channel.basic_consume(
            presence.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        );
        // Never delivers: it is counted, not read.
        let consumer = self.s.pool.op("basic.consume", consume).await?;
        self.presence = Some((channel, consumer));
        for p in 0..self.parts.len() as u32 {
            self.open_partition(p).await?;
        }
        Ok(())
    }

    /// Consumes partition `p` on a channel of its own (active, or standing
    /// by behind its other subscribers), then nudges it: whoever serves it
    /// reads its slots (a key released while nobody served it goes on).
    pub(super) async fn open_partition(&mut self, p: u32) -> Result<(), Error> {
        let window = self.window();
        let channel = self.s.pool.open_channel().await?;
        let part = &mut self.parts[p as usize];
        part.channel = Some(channel.clone());
        part.epoch += 1;
        let epoch = part.epoch;
        let qos = channel.basic_qos(window, BasicQosOptions::default());
        self.s.pool.op("basic.qos", qos).await?;
        let queue = self.s.group.queue(p);
        let consume = channel.basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        let consumer = self.s.pool.op("basic.consume", consume).await?;
        self.parts[p as usize].consumer = Some(consumer.clone());
        let stream = consumer
            .map(move |d| (p, epoch, Some(d)))
            .chain(futures::stream::once(async move { (p, epoch, None) }));
        self.consumers.push(Box::pin(stream));
        self.publish(&queue, vec![tick()]).await
    }

    pub(super) async fn close(&mut self) {
        let _ = self.flush_acks().await;
        let timeout = self.s.pool.operation_timeout();
        self.consumers = SelectAll::new();
        for part in &mut self.parts {
            if let Some(channel) = part.channel.take() {
                channel.close(timeout).await;
            }
        }
        let presence = self.presence.take().map(|(channel, _)| channel);
        for channel in [self.confirm.take(), presence].into_iter().flatten() {
            channel.close(timeout).await;
        }
    }

    pub(super) fn paused(&self) -> bool {
        *self.s.paused.borrow()
    }

    pub async fn run(mut self) {
        let mut nudge = tokio::time::interval(NUDGE_EVERY);
        nudge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let sendable = self.can_send();
            let event = tokio::select! {
                biased;
                _ = self.s.cancel.cancelled() => break None,
                // Rare, so first: the branches below can be ready all the time.
                _ = nudge.tick() => Event::Nudge,
                Some(request) = self.s.settle.recv() => Event::Settle(request),
                Some(due) = self.due.recv() => Event::Due(due),
                seq = self.deadlines.expired(), if self.deadlines.enabled() => Event::Expired(seq),
                changed = self.s.paused.changed() => match changed {
                    Ok(()) => Event::Paused(*self.s.paused.borrow_and_update()),
                    Err(_) => break None,
                },
                changed = self.s.notices.changed() => match changed {
                    Ok(()) => Event::Notice(self.s.notices.borrow_and_update().clone()),
                    Err(_) => break None,
                },
                reserved = self.s.out.clone().reserve_owned(), if sendable => match reserved {
                    Ok(permit) => Event::Room(permit),
                    Err(_) => break None, // the client went away
                },
                Some((p, epoch, item)) = self.consumers.next() => Event::Arrived(p, epoch, item),
            };
            let result = match event {
                Event::Settle(request) => match self.handle(request).await {
                    Ok(()) => self.release_ready().await,
                    Err(e) => Err(e),
                },
                Event::Due(due) => self.due(due),
                Event::Expired(seq) => {
                    self.expired(seq);
                    self.release_ready().await
                }
                Event::Paused(paused) => {
                    info!(
                        subscription = self.s.id,
                        group = self.s.group.name(),
                        paused,
                        "ordered group paused state changed"
                    );
                    if paused {
                        Ok(())
                    } else {
                        self.advance_all().await
                    }
                }
                Event::Notice(Some((group, p))) if group == self.s.group.name() => {
                    self.reload(p).await
                }
                Event::Notice(_) => Ok(()),
                Event::Room(permit) => {
                    if let Some(delivery) = self.next_delivery() {
                        permit.send(Ok(Box::new(delivery)));
                    }
                    Ok(())
                }
                // From a channel this subscriber closed to let the partition go.
                Event::Arrived(p, epoch, _) if epoch != self.parts[p as usize].epoch => Ok(()),
                Event::Arrived(p, _, Some(Ok(d))) => self.arrived(p, d).await,
                Event::Arrived(_, _, Some(Err(e))) => Err(amqp::classify(e)),
                Event::Nudge => match self.nudge(false).await {
                    Ok(()) => match self.reload_all().await {
                        Ok(()) => self.balance().await,
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                },
                Event::Arrived(p, _, None) => Err(Error::unavailable(format!(
                    "the consumer of {} ended",
                    self.s.group.queue(p)
                ))),
            };
            // Acks settled by this event go out together.
            let result = match result {
                Ok(()) => self.flush_acks().await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                match self.resume(&e).await {
                    Ok(true) => {}
                    Ok(false) => break None,
                    Err(e) => break Some(e),
                }
            }
        };
        if end.is_none() {
            match self.hand_over().await {
                // Whoever serves these partitions next reads them at once.
                Ok(()) => drop(self.nudge(true).await),
                Err(e) => {
                    warn!(group = self.s.group.name(), error = %e, "could not hand over what this subscriber held; the broker returns it")
                }
            }
        }
        if let Some(error) = end {
            warn!(subscription = self.s.id, group = self.s.group.name(), %error, "ordered subscription ended");
            tokio::select! {
                reserved = self.s.out.reserve() => if let Ok(p) = reserved { p.send(Err(error)) },
                _ = self.s.cancel.cancelled() => {}
            }
        }
        self.close().await;
    }

    /// Something failed on a channel: everything held is back in the
    /// queues; open again once the broker is back.
    pub(super) async fn resume(&mut self, why: &Error) -> Result<bool, Error> {
        warn!(subscription = self.s.id, group = self.s.group.name(), reason = %why, "ordered subscription lost a channel; resuming");
        self.close().await;
        self.generation += 1;
        self.sent.clear();
        self.ready.clear();
        self.stalled.clear();
        self.parts.iter_mut().for_each(Partition::reset);
        let mut backoff = amqp::reconnect_backoff();
        loop {
            while let Ok(request) = self.s.settle.try_recv() {
                crate::bus::subscribe::refuse(request);
            }
            if self.s.cancel.is_cancelled() || self.s.out.is_closed() {
                return Ok(false);
            }
            match self.open().await {
                Ok(()) => return Ok(true),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(_) => self.close().await,
            }
            let pause = tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5)));
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    biased;
                    _ = self.s.cancel.cancelled() => return Ok(false),
                    _ = self.s.out.closed() => return Ok(false),
                    Some(request) = self.s.settle.recv() => crate::bus::subscribe::refuse(request),
                    () = &mut pause => break,
                }
            }
        }
    }

    /// Sends a nudge to every partition this subscriber does not serve
    /// (`served`: to those it does, as it leaves them).
    pub(super) async fn nudge(&mut self, served: bool) -> Result<(), Error> {
        for p in 0..self.parts.len() {
            if self.parts[p].loaded == served {
                let queue = self.s.group.queue(p as u32);
                self.publish(&queue, vec![tick()]).await?;
            }
        }
        Ok(())
    }

    /// Partition `p` has a slot again: its ready keys may go.
    pub(super) fn unstall(&mut self, p: u32) {
        let (back, rest) = std::mem::take(&mut self.stalled)
            .into_iter()
            .partition(|(q, _)| *q == p);
        self.stalled = rest;
        self.ready.extend::<Vec<_>>(back);
    }

    pub(super) fn can_send(&self) -> bool {
        !self.ready.is_empty() && self.sent.len() < self.s.prefetch && !self.paused()
    }
}
