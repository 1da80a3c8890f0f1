//! The spool's gauges, read off it at each scrape.

use std::sync::Arc;

use super::Spool;

/// Reads a gauge's value off the spool.
type Read = fn(&Spool) -> i64;

impl Spool {
    /// Registers the spool's gauges, read off it at each scrape.
    pub(crate) fn register_metrics(self: &Arc<Self>, metrics: &crate::metrics::Metrics) {
        let gauges: [(&str, &str, Read); 5] = [
            (
                "warren_spool_messages",
                "Messages waiting in the spool.",
                |s| s.depth().0 as i64,
            ),
            (
                "warren_spool_bytes",
                "Bytes of the messages waiting in the spool.",
                |s| s.depth().1 as i64,
            ),
            (
                "warren_spool_oldest_seconds",
                "Age of the oldest message waiting in the spool (0 when empty).",
                |s| {
                    let oldest = s.oldest_ms().ok().flatten();
                    oldest.map_or(0, |at| (crate::bus::schedule::now_ms() - at).max(0) / 1000)
                },
            ),
            (
                "warren_spool_commits",
                "Durable commits (fsyncs) of spooled messages since start; concurrent publishes share one.",
                |s| s.commits() as i64,
            ),
            (
                "warren_spool_dead_messages",
                "Messages in the dead-letter spool (refused by the broker on forwarding).",
                |s| s.dead() as i64,
            ),
        ];
        for (name, help, read) in gauges {
            let spool = Arc::downgrade(self);
            metrics.computed(name, help, move || spool.upgrade().map_or(0, |s| read(&s)));
        }
    }
}
