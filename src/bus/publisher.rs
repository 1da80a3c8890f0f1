//! A publisher: one confirm-mode channel, owned by one task.
//!
//! The task takes publish commands in order, pipelines them on its channel
//! (many unconfirmed at once, up to `publish.max_in_flight`) and answers each
//! when the broker confirms, returns or nacks it. When the broker closes the
//! channel, the task answers the message that caused it (the exchange named in
//! the close reason) and republishes, in their original order, the others
//! that were merely caught in flight, on a fresh channel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::amqp::{self, codec, Pool};
use crate::error::Error;
use crate::metrics::{outcome, Metrics};

use super::exchanges::Exchanges;
use super::{Confirmed, Publish};

/// How many channel closes with no named culprit a message goes through
/// before it fails.
pub(super) const MAX_ATTEMPTS: u32 = 3;

/// A queued publish and where its outcome goes.
pub(super) struct Command {
    pub publish: Publish,
    /// AMQP properties to send as they are (republished deliveries keep
    /// their exact header types); else built from `publish.message`.
    pub properties: Option<BasicProperties>,
    pub started: Instant,
    pub reply: oneshot::Sender<Result<Confirmed, Error>>,
}

struct InFlight {
    command: Command,
    attempts: u32,
    /// Channel closes under it that named no culprit.
    unexplained: u32,
    /// The channel generation it was last sent on.
    generation: u64,
}

pub(super) enum Outcome {
    Acked,
    /// Returned by the broker: no queue was bound for it.
    Returned,
    Nacked,
    NotConfirmMode,
    Failed(lapin::Error),
    TimedOut,
}

impl From<Confirmation> for Outcome {
    fn from(confirmation: Confirmation) -> Self {
        match confirmation {
            Confirmation::Ack(None) => Outcome::Acked,
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Outcome::Returned,
            Confirmation::Nack(None) => Outcome::Nacked,
            Confirmation::NotRequested => Outcome::NotConfirmMode,
        }
    }
}

type ConfirmFuture = BoxFuture<'static, (u64, u64, Outcome)>;

/// What a publisher task needs from the bus.
#[derive(Clone)]
pub(super) struct Context {
    pub breaker: Arc<super::breaker::Breaker>,
    pub pool: Arc<Pool>,
    pub exchanges: Arc<Exchanges>,
    pub metrics: Metrics,
    pub max_in_flight: usize,
    pub confirm_timeout: Duration,
    pub retry_budget: Duration,
}

/// Backoff between attempts to get a channel back: 50 ms doubling to 2 s,
/// with jitter so that many publishers do not retry in step.
pub(super) fn retry_backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Starts a publisher task; it runs until every sender of the returned queue
/// is dropped and its messages are settled.
pub(super) fn spawn(
    ctx: Context,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel(ctx.max_in_flight.min(1024));
    let task = Task {
        ctx,
        rx,
        channel: None,
        generation: 0,
        next_seq: 0,
        in_flight: BTreeMap::new(),
        confirms: FuturesUnordered::new(),
    };
    tracker.spawn(async move {
        task.run(shutdown).await;
        drop(permit);
    });
    tx
}

struct Task {
    ctx: Context,
    rx: mpsc::Receiver<Command>,
    channel: Option<Channel>,
    /// Bumped whenever the channel is replaced; older confirms are stale.
    generation: u64,
    next_seq: u64,
    in_flight: BTreeMap<u64, InFlight>,
    confirms: FuturesUnordered<ConfirmFuture>,
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
            self.ctx.pool.close_channel(&channel).await;
        }
    }

    /// A confirm-mode channel, opened on demand.
    async fn channel(&mut self) -> Result<Channel, Error> {
        if let Some(channel) = &self.channel {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
            self.drop_channel().await;
        }
        let channel = self.ctx.pool.open_channel().await?;
        let select = channel.confirm_select(ConfirmSelectOptions::default());
        match tokio::time::timeout(self.ctx.confirm_timeout, select).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.ctx.pool.close_channel(&channel).await;
                return Err(amqp::classify(&e));
            }
            Err(_) => {
                self.ctx.pool.close_channel(&channel).await;
                return Err(Error::unavailable(
                    "the broker did not enable confirms in time",
                ));
            }
        }
        self.generation += 1;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    async fn drop_channel(&mut self) {
        if let Some(channel) = self.channel.take() {
            self.generation += 1;
            self.ctx.pool.close_channel(&channel).await;
        }
    }

    async fn start(&mut self, command: Command) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = InFlight {
            command,
            attempts: 0,
            unexplained: 0,
            generation: 0,
        };
        match self.channel_within_budget(entry.command.started).await {
            Ok(channel) => self.send(seq, entry, &channel),
            Err(error) => self.finish(entry.command, Err(error)),
        }
    }

    /// Puts the message on the wire (on the future's first poll, which
    /// FuturesUnordered makes in push order) and tracks its confirm.
    fn send(&mut self, seq: u64, mut entry: InFlight, channel: &Channel) {
        entry.attempts += 1;
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
        self.confirms.push(
            async move {
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
            .boxed(),
        );
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
            .filter(|(_, e)| e.generation == generation)
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
                Err(e) if e.is_retryable() && since.elapsed() < self.ctx.retry_budget => {
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

    fn finish(&self, command: Command, result: Result<Confirmed, Error>) {
        self.ctx.record(command.started, &result);
        // The caller may have gone (deadline, disconnect): nothing to tell.
        let _ = command.reply.send(result);
    }
}

impl Context {
    /// What a channel closed by the broker (a soft error) means for a message
    /// that was on it: `Some(error)` when it fails now, `None` to publish it
    /// again. A close naming another message's exchange says nothing against
    /// this one; only closes that name no culprit count towards giving up.
    pub(super) fn caught(
        &self,
        error: &lapin::Error,
        exchange: &str,
        unexplained: &mut u32,
    ) -> Option<Error> {
        if !amqp::is_channel_error(error) {
            return None;
        }
        let culprit = amqp::exchange_in(&error.to_string());
        if culprit.is_none() {
            *unexplained += 1;
        }
        if culprit.as_deref() != Some(exchange) && *unexplained < MAX_ATTEMPTS {
            return None;
        }
        let e = amqp::publish_error(error, exchange);
        if matches!(e, Error::NotFound(_)) {
            self.exchanges.forget(exchange);
        }
        Some(e)
    }

    /// Counts a finished publish in the metrics and the breaker.
    pub(super) fn record(&self, started: Instant, result: &Result<Confirmed, Error>) {
        self.breaker.record(result);
        match result {
            Ok(_) => {
                self.metrics.publish(outcome::CONFIRMED);
                self.metrics
                    .publish_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => self.metrics.publish(super::outcome_of(e)),
        }
    }
}

/// The verdict of the broker's answer on `publish`.
pub(super) fn verdict(outcome: Outcome, publish: &Publish) -> Result<Confirmed, Error> {
    match outcome {
        Outcome::Acked => Ok(Confirmed {
            message_id: publish.message.message_id.clone(),
        }),
        Outcome::Returned => Err(Error::Unroutable {
            exchange: publish.exchange.clone(),
            routing_key: publish.routing_key.clone(),
        }),
        Outcome::Nacked => Err(Error::Nacked),
        Outcome::NotConfirmMode => Err(Error::Internal("channel is not in confirm mode".into())),
        Outcome::Failed(e) => Err(amqp::publish_error(&e, &publish.exchange)),
        Outcome::TimedOut => Err(Error::unavailable(
            "the broker did not confirm the message in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::amqp::exchange_in;

    #[test]
    fn finds_the_exchange_in_close_reasons() {
        assert_eq!(
            exchange_in("NOT_FOUND - no exchange 'missing.x' in vhost '/'").as_deref(),
            Some("missing.x")
        );
        assert_eq!(
            exchange_in("ACCESS_REFUSED - cannot publish to internal exchange 'it's' in vhost 'v'")
                .as_deref(),
            Some("it's")
        );
        assert_eq!(exchange_in("PRECONDITION_FAILED - something else"), None);
    }
}
