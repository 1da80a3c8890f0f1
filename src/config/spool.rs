//! `[spool]`: the durable local spool for publishes made while the broker
//! cannot be reached.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, Error};

/// The spool: off unless enabled.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Spool {
    /// Accept publishes that allow it into the spool while the broker is
    /// down or the circuit is open.
    pub enabled: bool,
    /// Where the spool's database lives; one Warren per directory.
    pub dir: PathBuf,
    /// The most bytes of spooled records kept; past it, a publish that
    /// would be spooled is refused (RESOURCE_EXHAUSTED / 429).
    pub max_bytes: u64,
    /// Whether a publish that says nothing allows spooling.
    pub default: bool,
}

/// The smallest `max_bytes` that holds a few messages.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;

impl Default for Spool {
    fn default() -> Self {
        Self {
            enabled: false,
            dir: PathBuf::from("warren-spool"),
            max_bytes: 1 << 30,
            default: false,
        }
    }
}

impl Spool {
    /// Checks the values of an enabled spool.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("spool.dir", "", "a directory is required"));
        }
        if self.max_bytes < MIN_MAX_BYTES {
            return Err(invalid(
                "spool.max_bytes",
                self.max_bytes,
                format!("must be at least {MIN_MAX_BYTES}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_an_enabled_one_is_checked() {
        let off = Spool::default();
        assert!(!off.enabled && !off.default);
        assert!(off.validate().is_ok());
        let on = Spool {
            enabled: true,
            ..Spool::default()
        };
        assert!(on.validate().is_ok());
        let no_dir = Spool {
            dir: PathBuf::new(),
            ..on.clone()
        };
        assert!(no_dir
            .validate()
            .unwrap_err()
            .to_string()
            .contains("spool.dir"));
        let tiny = Spool {
            max_bytes: 10,
            ..on
        };
        assert!(tiny
            .validate()
            .unwrap_err()
            .to_string()
            .contains("spool.max_bytes"));
    }
}
