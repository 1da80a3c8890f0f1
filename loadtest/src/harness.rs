//! The pieces every scenario shares: a budget that bounds a phase in messages
//! and time, latency histograms, the progress line, and a closed-loop driver
//! for N concurrent callers.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records `since.elapsed()` in microseconds.
pub fn record(h: &mut Histogram<u64>, since: Instant) {
    h.saturating_record(since.elapsed().as_micros().max(1) as u64);
}

/// How long a phase may wait for what it already sent, past its deadline.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Bounds one phase: at most `max` messages, none started after `deadline`.
pub struct Budget {
    next: AtomicU64,
    max: u64,
    deadline: Instant,
}

impl Budget {
    /// `max` messages within `duration` from now.
    pub fn new(max: u64, duration: Duration) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(0),
            max,
            deadline: Instant::now() + duration,
        })
    }

    /// Takes a ticket for one more message: `None` once the budget is spent.
    pub fn take(&self) -> Option<u64> {
        if self.expired() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.max).then_some(n)
    }

    /// Whether the time is up.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The deadline plus the drain allowance: nothing waits past it.
    pub fn hard_deadline(&self) -> Instant {
        self.deadline + DRAIN
    }
}

/// What one phase achieved.
#[derive(Debug)]
pub struct Outcome {
    /// Messages that completed successfully.
    pub ok: u64,
    /// Messages that failed (or were abandoned at the hard deadline).
    pub errors: u64,
    /// The first error seen, to show the user.
    pub first_error: Option<String>,
    /// Latencies of the successful messages; `None` where latency is not
    /// meaningful (subscribe from a pre-filled queue).
    pub latency: Option<Histogram<u64>>,
}

impl Outcome {
    /// An empty outcome, with or without latencies.
    pub fn new(latency: bool) -> Self {
        Self {
            ok: 0,
            errors: 0,
            first_error: None,
            latency: latency.then(histogram),
        }
    }

    /// Counts one failure.
    pub fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Adds another outcome's counts and latencies.
    pub fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        if let (Some(a), Some(b)) = (&mut self.latency, &other.latency) {
            a.add(b).expect("histograms with the same bounds");
        }
    }
}

/// The `\r`-updated progress line on stderr.
pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Shows `label` with a count towards `total` every 250 ms.
    pub fn start(label: String, total: u64) -> Self {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (done, stop) = (done.clone(), stop.clone());
            async move {
                let started = Instant::now();
                let mut last = (0u64, Instant::now());
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let n = done.load(Ordering::Relaxed);
                    let rate = (n - last.0.min(n)) as f64 / last.1.elapsed().as_secs_f64();
                    last = (n, Instant::now());
                    eprint!(
                        "\r\x1b[2K{label}: {n}/{total} msgs, {rate:.0} msg/s, {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                    let _ = std::io::stderr().flush();
                }
            }
        });
        Self {
            done,
            stop,
            task: Some(task),
        }
    }

    /// A counter the workers bump per message.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Restarts the count (between warm-up and measurement).
    pub fn reset(&self) {
        self.done.store(0, Ordering::Relaxed);
    }

    /// Clears the line.
    pub async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A run cut short (interrupted) stops its line too.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One call of a closed-loop caller: `worker` index in, success or an error.
pub type Op = Arc<dyn Fn(usize) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Runs `workers` callers, each doing `op` one call at a time until `budget`
/// is spent; records every call's latency.
pub async fn closed_loop(
    workers: usize,
    budget: Arc<Budget>,
    counter: Arc<AtomicU64>,
    op: Op,
) -> Outcome {
    let total = Arc::new(Mutex::new(Outcome::new(true)));
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (budget, counter, op, total) =
            (budget.clone(), counter.clone(), op.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Outcome::new(true);
            let hard = tokio::time::Instant::from_std(budget.hard_deadline());
            while budget.take().is_some() {
                let started = Instant::now();
                match tokio::time::timeout_at(hard, op(w)).await {
                    Ok(Ok(())) => {
                        mine.ok += 1;
                        record(mine.latency.as_mut().expect("with latency"), started);
                    }
                    Ok(Err(e)) => mine.error(e),
                    Err(_) => {
                        mine.error("no answer before the hard deadline");
                        break;
                    }
                }
                counter.fetch_add(1, Ordering::Relaxed);
            }
            total.lock().unwrap_or_else(|e| e.into_inner()).merge(mine);
        }));
    }
    for task in tasks {
        if let Err(e) = task.await {
            total
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error(format!("a worker panicked: {e}"));
        }
    }
    Arc::try_unwrap(total)
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .unwrap_or_else(|_| Outcome::new(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_and_expires() {
        let b = Budget::new(3, Duration::from_secs(60));
        assert_eq!(
            (b.take(), b.take(), b.take(), b.take()),
            (Some(0), Some(1), Some(2), None)
        );
        let b = Budget::new(3, Duration::ZERO);
        assert_eq!(b.take(), None);
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_budget() {
        let op: Op = Arc::new(|_| Box::pin(async { Ok(()) }));
        let counter = Arc::new(AtomicU64::new(0));
        let out = closed_loop(4, Budget::new(100, Duration::from_secs(10)), counter, op).await;
        assert_eq!((out.ok, out.errors), (100, 0));
        assert_eq!(out.latency.unwrap().len(), 100);
    }
}
