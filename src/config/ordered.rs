//! `[[ordered]]`: ordered groups (per-key FIFO with blocking on failure).

use serde::Deserialize;

use super::{invalid, Error};

/// One ordered group.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Ordered {
    /// The group's name: the exchange publishers use and the name
    /// subscribers consume.
    pub name: String,
    /// Queues the keys are spread over (by a stable hash of the key).
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// A message that fails for good blocks its key (held for an operator)
    /// instead of being dead-lettered.
    #[serde(default = "yes")]
    pub block_on_failure: bool,
    /// Keys that may be blocked (or moved aside because they are busy) at
    /// once, spread evenly over the partitions (at least one each).
    #[serde(default = "default_max_blocked_keys")]
    pub max_blocked_keys: u32,
}

fn default_partitions() -> u32 {
    4
}

fn default_max_blocked_keys() -> u32 {
    32
}

fn yes() -> bool {
    true
}

/// The most partitions a group may have.
pub const MAX_PARTITIONS: u32 = 256;

impl Ordered {
    /// Side queues (slots) per partition.
    pub fn slots(&self) -> u32 {
        self.max_blocked_keys.div_ceil(self.partitions).max(1)
    }

    /// Checks the groups: names, counts, no duplicates.
    pub fn validate(groups: &[Ordered]) -> Result<(), Error> {
        let mut seen = std::collections::HashSet::new();
        for (i, g) in groups.iter().enumerate() {
            let key = |field: &str| format!("ordered[{i}].{field}");
            // The longest queue name a group makes: "<name>.<p>.wait.<slot>".
            if g.name.is_empty() || g.name.len() > 200 || g.name.starts_with("amq.") {
                return Err(invalid(
                    key("name"),
                    &g.name,
                    "must be 1 to 200 bytes and not start with amq.",
                ));
            }
            if !seen.insert(g.name.as_str()) {
                return Err(invalid(key("name"), &g.name, "names another group too"));
            }
            if !(1..=MAX_PARTITIONS).contains(&g.partitions) {
                return Err(invalid(
                    key("partitions"),
                    g.partitions,
                    format!("must be 1 to {MAX_PARTITIONS}"),
                ));
            }
            if !(1..=100_000).contains(&g.max_blocked_keys) {
                return Err(invalid(
                    key("max_blocked_keys"),
                    g.max_blocked_keys,
                    "must be 1 to 100000",
                ));
            }
        }
        Ok(())
    }
}
