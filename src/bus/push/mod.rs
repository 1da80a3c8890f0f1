//! Push delivery (`[[push]]`): Warren consumes a queue and POSTs each
//! message to the app's URL, settling it by the answer.
//!
//! One task per entry runs from the bus's start to its shutdown, in the
//! background (a broker that is away delays neither start-up nor
//! readiness). It subscribes as Warren itself with the entry's
//! `concurrency` as the prefetch, which bounds the POSTs in flight, and
//! for an ordered group gives one message per key at a time. A
//! subscription that cannot be opened (broker down, queue missing) is tried
//! again with backoff; one that ends is opened again.
//!
//! Each delivery is POSTed once (by [`Client`]) and settled only once its
//! outcome is known: 2xx acks; 429, 5xx, a timeout or no connection nacks
//! with requeue (the queue's retry policy, after `Retry-After` when given);
//! another answer dead-letters. A crash in between redelivers, never loses.
//!
//! On shutdown no new POST starts once the drain gate closes; those in
//! flight hold a pass, so the drain waits for them (under its grace) and
//! settles them; what is left unsettled goes back to the broker when the
//! subscription ends.

mod client;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::drain::Pass;
use super::subscribe::{Action, Delivery, SubscribeRequest, Subscription};
use super::Bus;
use crate::amqp::reconnect_backoff;
use crate::auth::Caller;
use crate::config;
use crate::metrics::push as outcome;
pub use client::{classify, delay_ms, Client, Outcome, DEFAULT_TYPE, HEADER_PREFIX};

/// At most one warning per endpoint this often while failures go on.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// One `[[push]]` entry at work.
pub(crate) struct Pusher {
    bus: Arc<Bus>,
    entry: config::Push,
    client: Arc<Client>,
    caller: Caller,
    warnings: Arc<Warnings>,
}

impl Bus {
    /// Starts one pusher per `[[push]]` entry on the background tracker.
    pub(super) fn start_push(self: &Arc<Self>) {
        for entry in &self.config.push {
            let client = match Client::new(entry) {
                Ok(client) => client,
                Err(e) => {
                    warn!(queue = %entry.queue, error = %e, "push delivery cannot start");
                    continue;
                }
            };
            let pusher = Pusher {
                bus: self.clone(),
                entry: entry.clone(),
                client,
                caller: self.auth.internal(),
                warnings: Arc::default(),
            };
            self.background.spawn(pusher.run());
        }
    }
}

impl Pusher {
    /// Subscribes, pushes until the subscription ends, and again, until
    /// shutdown.
    async fn run(self) {
        let shutdown = self.bus.shutdown.clone();
        let request = SubscribeRequest {
            queue: self.entry.queue.clone(),
            prefetch: self.entry.concurrency,
            ..Default::default()
        };
        let mut backoff = reconnect_backoff();
        let mut failing = false;
        info!(queue = %self.entry.queue, url = %self.entry.url, "push delivery starting");
        loop {
            let opened = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                opened = self.bus.subscribe(&self.caller, request.clone()) => opened,
            };
            match opened {
                Ok(subscription) => {
                    if failing {
                        info!(queue = %self.entry.queue, "push delivery subscribed again");
                    }
                    failing = false;
                    backoff = reconnect_backoff();
                    self.consume(subscription).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                }
                Err(e) => {
                    if !failing {
                        warn!(queue = %self.entry.queue, error = %e, "push delivery cannot subscribe; trying again with backoff");
                    }
                    failing = true;
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Pushes the subscription's deliveries until it ends; waits for the
    /// POSTs in flight (their number is bounded by the prefetch).
    async fn consume(&self, mut subscription: Subscription) {
        let mut in_flight = JoinSet::new();
        let (acks, acker) = mpsc::unbounded_channel();
        let acker = tokio::spawn(ack_in_batches(
            self.bus.clone(),
            self.caller.clone(),
            self.entry.queue.clone(),
            acker,
        ));
        let shutdown = self.bus.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                Some(_) = in_flight.join_next() => {}
                next = subscription.next() => match next {
                    Some(Ok(delivery)) => {
                        // Once the gate closes nothing new starts: the
                        // delivery goes back when the subscription ends.
                        let Ok(pass) = self.bus.gate.enter() else { continue };
                        let push = self.one(delivery);
                        let acks = acks.clone();
                        in_flight.spawn(async move {
                            match push.await {
                                // Acks go out in batches; the pass goes with it.
                                Some(id) => drop(acks.send((id, pass))),
                                None => drop(pass),
                            }
                        });
                    }
                    Some(Err(e)) => {
                        warn!(queue = %self.entry.queue, error = %e, "push delivery's subscription ended; subscribing again");
                        break;
                    }
                    None => break,
                },
            }
        }
        // After the drain's grace, nothing in flight can be settled any more.
        tokio::select! {
            _ = async { while in_flight.join_next().await.is_some() {} } => {}
            _ = shutdown.cancelled() => in_flight.abort_all(),
        }
        drop(acks);
        let _ = acker.await;
    }

    /// POSTs one delivery and settles it by the outcome.
    /// The id to ack when the app took it; None when it was settled
    /// otherwise (retried or dead-lettered) here.
    fn one(
        &self,
        delivery: Delivery,
    ) -> impl std::future::Future<Output = Option<String>> + Send + 'static {
        let bus = self.bus.clone();
        let client = self.client.clone();
        let caller = self.caller.clone();
        let warnings = self.warnings.clone();
        let queue = self.entry.queue.clone();
        async move {
            let result = client.push(&delivery).await;
            let (action, index) = match &result {
                Outcome::Delivered => (Action::Ack, outcome::DELIVERED),
                Outcome::Retry { delay_ms, why } => {
                    warnings.failed(&queue, why, "retried");
                    (
                        Action::Retry {
                            delay_ms: *delay_ms,
                        },
                        outcome::RETRIED,
                    )
                }
                Outcome::DeadLetter { why } => {
                    warnings.failed(&queue, why, "dead-lettered");
                    (Action::DeadLetter, outcome::DEAD_LETTERED)
                }
            };
            bus.metrics.push(index);
            if matches!(action, Action::Ack) {
                return Some(delivery.id);
            }
            // The gate may be closed by now: settle past it (this task holds
            // a pass, so the drain waits for it).
            let ids = [delivery.id.clone()];
            if let Err(e) = bus.subscriptions.settle(&caller, &ids, action).await {
                // The subscription is gone (its channel was lost): the
                // broker delivers the message again.
                debug!(%queue, error = %e, "a pushed delivery could not be settled");
            }
            None
        }
    }
}

/// Acks what the app took, as many at once as have come in (up to 256):
/// one settlement, one `multiple` ack where it can, instead of one each.
/// The passes are let go once their acks were sent.
async fn ack_in_batches(
    bus: Arc<Bus>,
    caller: Caller,
    queue: String,
    mut acks: mpsc::UnboundedReceiver<(String, Pass)>,
) {
    while let Some(first) = acks.recv().await {
        let mut batch = vec![first];
        while batch.len() < 256 {
            match acks.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        let settled = bus.subscriptions.settle(&caller, &ids, Action::Ack).await;
        if let Err(e) = settled {
            // All or none of a batch: one by one, so the rest still count.
            debug!(%queue, error = %e, "a batch of pushed deliveries could not be acked together");
            for id in &ids {
                let _ = bus
                    .subscriptions
                    .settle(&caller, std::slice::from_ref(id), Action::Ack)
                    .await;
            }
        }
        drop(batch);
    }
}

/// Rate-limited warnings: the first failure, then at most one per
/// [`WARN_EVERY`] with the count of those not logged.
#[derive(Default)]
struct Warnings {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Warnings {
    fn failed(&self, queue: &str, why: &str, outcome: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            *suppressed += 1;
            return;
        }
        *last = Some(now);
        let also = std::mem::take(suppressed);
        warn!(
            %queue,
            reason = why,
            outcome,
            failures_not_logged = also,
            "a pushed message was not delivered"
        );
    }
}
