//! A publisher: one confirm-mode channel, owned by one task.
//!
//! The task takes publish commands in order, pipelines them on its channel
//! (many unconfirmed at once, up to `publish.max_in_flight`) and answers each
//! when the broker confirms, returns or nacks it. When the broker closes the
//! channel, the task answers the message that caused it (the exchange named in
//! the close reason) and republishes, in their original order, the others
//! that were merely caught in flight, on a fresh channel.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::verdict::{retry_backoff, verdict, Context, Outcome};
use super::{Confirmed, Publish};
use crate::amqp::{codec, Channel};
use crate::auth::Held;
use crate::bus::drain::Pass;
use crate::error::Error;
use crate::metrics::outcome;

/// A queued publish and where its outcome goes (boxed on the queue: a
/// publisher's queue then holds pointers, and an idle one costs a few
/// hundred bytes instead of a block of 32 of these).
pub(crate) struct Command {
    pub publish: Publish,
    /// AMQP properties to send as they are (republished deliveries keep
    /// their exact header types); else built from `publish.message`.
    pub properties: Option<BasicProperties>,
    pub started: Instant,
    pub reply: oneshot::Sender<Result<Confirmed, Error>>,
    /// Held until the message is answered: the drain waits for it.
    pub _pass: Pass,
}

struct InFlight {
    command: Box<Command>,
    attempts: u32,
    /// Channel closes under it that named no culprit.
    unexplained: u32,
    /// The channel generation it was last sent on.
    generation: u64,
    /// Nacks it had (each sends it again on a fresh channel, after a backoff).
    nacks: u32,
    /// Waiting out a nack's backoff: no confirm of it is outstanding.
    resending: bool,
}

type ConfirmFuture = BoxFuture<'static, (u64, u64, Outcome)>;

/// Starts a publisher task; it runs until every sender of the returned queue
/// is dropped and its messages are settled. `permit` (its room under
/// `amqp.max_channels` and its owner's share) is held until then; Warren's
/// own publisher has none.
pub(crate) fn spawn(
    ctx: Context,
    permit: Option<(OwnedSemaphorePermit, Held)>,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> mpsc::Sender<Box<Command>> {
    let (tx, rx) = mpsc::channel(ctx.max_in_flight.min(1024));
    let task = Task {
        ctx,
        rx,
        channel: None,
        generation: 0,
        next_seq: 0,
        in_flight: BTreeMap::new(),
        confirms: FuturesUnordered::new(),
        resends: FuturesUnordered::new(),
    };
    tracker.spawn(async move {
        task.run(shutdown).await;
        drop(permit);
    });
    tx
}

struct Task {
    ctx: Context,
    rx: mpsc::Receiver<Box<Command>>,
    channel: Option<Channel>,
    /// Bumped whenever the channel is replaced; older confirms are stale.
    generation: u64,
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight>,
    confirms: FuturesUnordered<ConfirmFuture>,
    /// Nacked messages waiting out their backoff, by sequence number.
    resends: FuturesUnordered<BoxFuture<'static, u64>>,
}

impl Task {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut open = true;
        let mut closing = false;
        while open || !self.in_flight.is_empty() {
            let room = self.in_flight.len() < self.ctx.max_in_flight;
            tokio::select! {
                biased;
                // Take no new messages, but settle those already queued.
                _ = shutdown.cancelled(), if open && !closing => {
                    self.rx.close();
                    closing = true;
                }
                Some((seq, generation, outcome)) = self.confirms.next(), if !self.confirms.is_empty() => {
                    self.settle(seq, generation, outcome).await;
                }
                Some(seq) = self.resends.next(), if !self.resends.is_empty() => {
                    self.resend(seq).await;
                }
                command = self.rx.recv(), if open && room => match command {
                    Some(command) => self.start(command).await,
                    None => open = false,
                },
                else => {
                    // Unreachable while every message in flight has its confirm
                    // future; never leave a caller waiting if that breaks.
                    for (_, entry) in std::mem::take(&mut self.in_flight) {
                        self.finish(entry.command, Err(Error::Internal("publisher lost track of a message".into())));
                    }
                    open = false;
                }
            }
        }
        if let Some(channel) = self.channel.take() {
            channel.close(self.ctx.pool.operation_timeout()).await;
        }
    }

    /// A confirm-mode channel, opened on demand.
    async fn channel(&mut self) -> Result<Channel, Error> {
        if let Some(channel) = &self.channel {
            if channel.is_open() {
                return Ok(channel.clone());
            }
            self.drop_channel().await;
        }
        let channel = self.ctx.pool.open_confirm_channel().await?;
        self.generation += 1;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    async fn drop_channel(&mut self) {
        if let Some(channel) = self.channel.take() {
            self.generation += 1;
            channel.close(self.ctx.pool.operation_timeout()).await;
        }
    }

    async fn start(&mut self, command: Box<Command>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = InFlight {
            command,
            attempts: 0,
            unexplained: 0,
            generation: 0,
            nacks: 0,
            resending: false,
        };
        match self.channel_within_budget(entry.command.started).await {
            Ok(channel) => self.send(seq, entry, &channel),
            Err(error) => self.finish(entry.command, Err(error)),
        }
    }

    /// Puts the message on the wire, now, and tracks its confirm. The order
    /// of a session's messages is made here: lapin takes the delivery tag and
    /// queues the frames on a publish future's first poll, so that poll
    /// happens in this call, in call order, not whenever the set of confirm
    /// futures gets to it.
    fn send(&mut self, seq: u64, mut entry: InFlight, channel: &Channel) {
        entry.attempts += 1;
        entry.resending = false;
        entry.generation = self.generation;
        let publish = &entry.command.publish;
        let channel = channel.clone();
        let exchange = publish.exchange.as_str().into();
        let routing_key = publish.routing_key.as_str().into();
        let options = BasicPublishOptions {
            mandatory: publish.mandatory,
            immediate: false,
        };
        let properties = match &entry.command.properties {
            Some(properties) => properties.clone(),
            None => codec::properties(&publish.message),
        };
        let body = publish.message.body.clone();
        let generation = self.generation;
        let timeout = self.ctx.confirm_timeout;
        let mut confirm = async move {
            let publish = async {
                channel
                    .basic_publish(exchange, routing_key, options, &body, properties)
                    .await?
                    .await
            };
            let outcome = match tokio::time::timeout(timeout, publish).await {
                Ok(Ok(confirmation)) => Outcome::from(confirmation),
                Ok(Err(error)) => Outcome::Failed(error),
                Err(_) => Outcome::TimedOut,
            };
            (seq, generation, outcome)
        }
        .boxed();
        first_poll(&mut confirm);
        self.confirms.push(confirm);
        self.in_flight.insert(seq, entry);
    }

    async fn settle(&mut self, seq: u64, generation: u64, outcome: Outcome) {
        if self
            .in_flight
            .get(&seq)
            .is_none_or(|e| e.generation != generation)
        {
            return; // an earlier attempt's: answered, or republished since
        }
        if let Outcome::Failed(error) = outcome {
            return self.recover(error, generation).await;
        }
        let within_budget = self.in_flight.get(&seq).is_some_and(|e| {
            e.command.started.elapsed() < self.ctx.retry_budget && !e.command.reply.is_closed()
        });
        if matches!(outcome, Outcome::Nacked) && within_budget {
            return self.nacked(seq, generation);
        }
        let Some(entry) = self.in_flight.remove(&seq) else {
            return;
        };
        let result = match outcome {
            Outcome::TimedOut => {
                // The channel's state is unknown: start afresh for later messages.
                if generation == self.generation {
                    self.drop_channel().await;
                }
                Err(Error::unavailable(format!(
                    "the broker did not confirm the message within {:?}",
                    self.ctx.confirm_timeout
                )))
            }
            answered => verdict(answered, &entry.command.publish),
        };
        self.finish(entry.command, result);
    }

    /// The broker refused to store message `seq` on the channel of
    /// `generation` (after a failover, a channel that published before the
    /// new leader was elected is nacked for a while, and a fresh one is
    /// not). The channel is replaced (the old one closes once its other
    /// confirms are in) and the message sent again on the fresh one after a
    /// backoff, within `publish.retry_budget`.
    fn nacked(&mut self, seq: u64, generation: u64) {
        if generation == self.generation && self.channel.take().is_some() {
            debug!("replacing a publisher channel the broker nacks on");
            self.generation += 1;
        }
        let Some(entry) = self.in_flight.get_mut(&seq) else {
            return;
        };
        entry.nacks += 1;
        entry.resending = true;
        let delay = retry_backoff()
            .nth(entry.nacks.saturating_sub(1) as usize)
            .unwrap_or(Duration::from_secs(1));
        let left = self
            .ctx
            .retry_budget
            .saturating_sub(entry.command.started.elapsed());
        self.resends.push(
            async move {
                tokio::time::sleep(delay.min(left)).await;
                seq
            }
            .boxed(),
        );
    }

    /// Sends a nacked message again, on the current (fresh) channel.
    async fn resend(&mut self, seq: u64) {
        let Some(started) = self
            .in_flight
            .get(&seq)
            .filter(|e| e.resending)
            .map(|e| e.command.started)
        else {
            return;
        };
        match self.channel_within_budget(started).await {
            Ok(channel) => {
                if let Some(entry) = self.in_flight.remove(&seq) {
                    self.ctx.metrics.retries_total.inc();
                    self.send(seq, entry, &channel);
                }
            }
            Err(e) => {
                if let Some(entry) = self.in_flight.remove(&seq) {
                    self.finish(entry.command, Err(e));
                }
            }
        }
    }

    /// The channel of `generation` failed under the messages sent on it.
    async fn recover(&mut self, error: lapin::Error, generation: u64) {
        // Settle what the broker confirmed before the failure first, so that
        // those messages are not published twice.
        while let Some(Some((seq, g, outcome))) = self.confirms.next().now_or_never() {
            if !matches!(outcome, Outcome::Failed(_) | Outcome::TimedOut) {
                Box::pin(self.settle(seq, g, outcome)).await;
            }
        }
        if generation == self.generation {
            self.drop_channel().await;
        }
        warn!(%error, in_flight = self.in_flight.len(), "publisher channel failed; republishing what it held");
        let caught: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, e)| e.generation == generation && !e.resending)
            .map(|(seq, _)| *seq)
            .collect();
        let pending: Vec<(u64, InFlight)> = caught
            .into_iter()
            .filter_map(|seq| self.in_flight.remove(&seq).map(|e| (seq, e)))
            .collect();
        let mut retry = Vec::with_capacity(pending.len());
        for (seq, mut entry) in pending {
            let exchange = &entry.command.publish.exchange;
            if let Some(e) = self.ctx.caught(&error, exchange, &mut entry.unexplained) {
                self.finish(entry.command, Err(e));
            } else if entry.command.reply.is_closed() {
                // The caller gave up (deadline, disconnect) and was told so.
                self.ctx.metrics.publish(outcome::UNAVAILABLE);
            } else {
                retry.push((seq, entry));
            }
        }
        if retry.is_empty() {
            return;
        }
        match self.channel_within_budget(Instant::now()).await {
            Ok(channel) => {
                for (seq, entry) in retry {
                    self.ctx.metrics.retries_total.inc();
                    debug!(seq, attempt = entry.attempts + 1, "republishing");
                    self.send(seq, entry, &channel);
                }
            }
            Err(e) => {
                for (_, entry) in retry {
                    self.finish(entry.command, Err(e.clone()));
                }
            }
        }
    }

    /// A channel, trying again with exponential backoff and jitter while the
    /// broker is unavailable, for at most `publish.retry_budget` from `since`.
    async fn channel_within_budget(&mut self, since: Instant) -> Result<Channel, Error> {
        let mut backoff = retry_backoff();
        loop {
            match self.channel().await {
                Ok(channel) => return Ok(channel),
                Err(e) if e.is_transient() && since.elapsed() < self.ctx.retry_budget => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    debug!(error = %e, ?delay, "no channel for publishing yet; trying again");
                    tokio::time::sleep(
                        delay.min(self.ctx.retry_budget.saturating_sub(since.elapsed())),
                    )
                    .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn finish(&self, command: Box<Command>, result: Result<Confirmed, Error>) {
        self.ctx.record(command.started, &command.publish, &result);
        // The caller may have gone (deadline, disconnect): nothing to tell.
        let _ = command.reply.send(result);
    }
}

/// Polls a publish once, so that what it does on its first poll (tag and
/// frames) happens now. Its outcome cannot be ready yet (the broker has not
/// answered); if it is (a closed channel fails at once), the set of confirm
/// futures polls it again and gets the same answer.
fn first_poll(confirm: &mut ConfirmFuture) {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    if let Poll::Ready(answer) = Pin::new(&mut *confirm).poll(&mut cx) {
        *confirm = futures::future::ready(answer).boxed();
    }
}
