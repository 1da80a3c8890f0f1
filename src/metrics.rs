//! Prometheus metrics: the contract's names, bounded labels, one registry.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 100 µs to 30 s: sub-millisecond confirms on a local
/// broker up to multi-second RPCs and stalls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Publish outcomes (the `outcome` label's whole set).
pub mod outcome {
    pub const CONFIRMED: usize = 0;
    pub const NACKED: usize = 1;
    pub const UNROUTABLE: usize = 2;
    pub const NOT_FOUND: usize = 3;
    pub const INVALID: usize = 4;
    pub const UNAVAILABLE: usize = 5;
    /// Written to the spool (the broker was away).
    pub const SPOOLED: usize = 6;
    /// Refused: the spool was full.
    pub const SPOOL_FULL: usize = 7;
    /// The label values, by index.
    pub const NAMES: [&str; 8] = [
        "confirmed",
        "nacked",
        "unroutable",
        "not_found",
        "invalid",
        "unavailable",
        "spooled",
        "spool_full",
    ];
}

/// Scheduled-publish outcomes (the `outcome` label's whole set).
pub mod scheduled {
    /// Confirmed into the delay chain.
    pub const SCHEDULED: usize = 0;
    /// Due, and forwarded to its target.
    pub const FORWARDED: usize = 1;
    /// Due, and put into `warren.scheduled.dlq` (its target was gone).
    pub const DEAD_LETTERED: usize = 2;
    /// The label values, by index.
    pub const NAMES: [&str; 3] = ["scheduled", "forwarded", "dead_lettered"];
}

/// Push-delivery outcomes (the `outcome` label's whole set).
pub mod push {
    /// The app answered 2xx: acked.
    pub const DELIVERED: usize = 0;
    /// 429, 5xx, a timeout or no connection: retried under the policy.
    pub const RETRIED: usize = 1;
    /// Another 4xx (or a 3xx): dead-lettered.
    pub const DEAD_LETTERED: usize = 2;
    /// The label values, by index.
    pub const NAMES: [&str; 3] = ["delivered", "retried", "dead_lettered"];
}

/// Every metric Warren exports. Cheap to clone (handles are reference-counted).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `warren_publish_total{outcome}`.
    pub publish_total: IntCounterVec,
    /// Its counters by outcome index, resolved once (no label lookup per publish).
    publish_outcomes: [IntCounter; outcome::NAMES.len()],
    /// `warren_scheduled_total{outcome}`.
    pub scheduled_total: IntCounterVec,
    scheduled_outcomes: [IntCounter; 3],
    /// `warren_push_total{outcome}`.
    pub push_total: IntCounterVec,
    push_outcomes: [IntCounter; 3],
    /// `warren_nacks_total{requeue="true"}` and `{requeue="false"}`.
    pub nacks_requeued: IntCounter,
    pub nacks_dropped: IntCounter,
    /// `warren_publish_duration_seconds`: request to broker confirm.
    pub publish_duration: Histogram,
    /// `warren_deliveries_total`.
    pub deliveries_total: IntCounter,
    /// `warren_acks_total`.
    pub acks_total: IntCounter,
    /// `warren_nacks_total{requeue}`.
    pub nacks_total: IntCounterVec,
    /// `warren_dead_lettered_total`.
    pub dead_lettered_total: IntCounter,
    /// `warren_rpc_duration_seconds`.
    pub rpc_duration: Histogram,
    /// `warren_rpc_late_replies_total`: replies nobody waited for any more.
    pub rpc_late_replies_total: IntCounter,
    /// `warren_retries_total`.
    pub retries_total: IntCounter,
    /// `warren_ack_deadline_expired_total`: deliveries Warren took back.
    pub deadline_expired_total: IntCounter,
    /// `warren_circuit_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub circuit_breaker_state: IntGauge,
    /// `warren_amqp_connections`.
    pub amqp_connections: IntGauge,
    /// Every channel Warren holds; `warren_amqp_channels` is read off it.
    pub channels: crate::amqp::Ledger,
    /// `warren_auth_denied_total{reason}`: unauthenticated, forbidden,
    /// rate_limited.
    pub auth_denied_total: IntCounterVec,
    /// `warren_ordered_events_total{event}`: blocked, taken_aside,
    /// handed_over, stalled (ordered groups).
    pub ordered_events: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = Histogram::with_opts(opts).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let publish_total = counter_vec(
            "warren_publish_total",
            "Publish requests by outcome.",
            "outcome",
        );
        let publish_outcomes = outcome::NAMES.map(|o| publish_total.with_label_values(&[o]));
        let scheduled_total = counter_vec(
            "warren_scheduled_total",
            "Scheduled publishes: confirmed into the delay, forwarded when due, dead-lettered when due.",
            "outcome",
        );
        let scheduled_outcomes = scheduled::NAMES.map(|o| scheduled_total.with_label_values(&[o]));
        let push_total = counter_vec(
            "warren_push_total",
            "Push deliveries: delivered (2xx), retried (429, 5xx, timeout, no connection), dead-lettered (other 4xx).",
            "outcome",
        );
        let push_outcomes = push::NAMES.map(|o| push_total.with_label_values(&[o]));
        let nacks_total = counter_vec("warren_nacks_total", "Deliveries nacked.", "requeue");
        let nacks_requeued = nacks_total.with_label_values(&["true"]);
        let nacks_dropped = nacks_total.with_label_values(&["false"]);
        Self {
            publish_total,
            publish_outcomes,
            scheduled_total,
            scheduled_outcomes,
            push_total,
            push_outcomes,
            nacks_requeued,
            nacks_dropped,
            publish_duration: histogram(
                "warren_publish_duration_seconds",
                "Time from a publish request to the broker's confirm.",
            ),
            deliveries_total: counter("warren_deliveries_total", "Deliveries sent to subscribers."),
            acks_total: counter("warren_acks_total", "Deliveries acked."),
            nacks_total,
            dead_lettered_total: counter(
                "warren_dead_lettered_total",
                "Messages dead-lettered by Warren's retry policy or a nack without requeue.",
            ),
            rpc_duration: histogram("warren_rpc_duration_seconds", "Duration of RPC calls."),
            rpc_late_replies_total: counter(
                "warren_rpc_late_replies_total",
                "RPC replies dropped because their caller had given up.",
            ),
            deadline_expired_total: counter(
                "warren_ack_deadline_expired_total",
                "Deliveries neither acked nor extended within their ack deadline, requeued by Warren.",
            ),
            retries_total: counter(
                "warren_retries_total",
                "Retries of publishes and deliveries.",
            ),
            circuit_breaker_state: gauge(
                "warren_circuit_breaker_state",
                "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ),
            amqp_connections: gauge("warren_amqp_connections", "Open AMQP connections."),
            auth_denied_total: counter_vec(
                "warren_auth_denied_total",
                "Requests refused by authentication, authorization or a client's rate.",
                "reason",
            ),
            ordered_events: counter_vec(
                "warren_ordered_events_total",
                "Ordered groups: keys blocked, busy keys taken aside, messages handed over by leaving subscribers, partitions stalled with every slot taken.",
                "event",
            ),
            channels: {
                let ledger = crate::amqp::Ledger::default();
                let counted = ledger.clone();
                let gauge =
                    Computed::new("warren_amqp_channels", "Open AMQP channels.", move || {
                        counted.open() as i64
                    });
                registry.register(Box::new(gauge)).expect("unique metric");
                ledger
            },
            registry,
        }
    }

    /// Registers a gauge whose value `read` computes at each scrape (state
    /// that lives elsewhere: reading it never changes it).
    pub fn computed(&self, name: &str, help: &str, read: impl Fn() -> i64 + Send + Sync + 'static) {
        let gauge = Computed::new(name, help, read);
        if let Err(e) = self.registry.register(Box::new(gauge)) {
            tracing::warn!(metric = name, error = %e, "could not register a metric");
        }
    }

    /// Counts one publish outcome (an index of [`outcome`]).
    pub fn publish(&self, outcome: usize) {
        self.publish_outcomes[outcome].inc();
    }

    /// Counts one scheduled-publish outcome (an index of [`scheduled`]).
    pub fn scheduled(&self, outcome: usize) {
        self.scheduled_outcomes[outcome].inc();
    }

    /// Counts one push outcome (an index of [`push`]).
    pub fn push(&self, outcome: usize) {
        self.push_outcomes[outcome].inc();
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A gauge computed when scraped.
struct Computed {
    gauge: IntGauge,
    read: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl Computed {
    fn new(name: &str, help: &str, read: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self {
            gauge: IntGauge::new(name, help).expect("valid metric"),
            read: Box::new(read),
        }
    }
}

impl prometheus::core::Collector for Computed {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.set((self.read)());
        self.gauge.collect()
    }
}
