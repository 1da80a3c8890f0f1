//! The spool: publishes that allow it, written durably while the broker
//! cannot be reached, and forwarded in order once it can.
//!
//! - `store`: the embedded database (redb): the spooled messages and the
//!   dead-letter spool.
//! - `commit`: group commit: concurrent appends share one durable commit.
//! - `record`: how a spooled publish is written.

pub mod commit;
pub mod record;
pub mod store;
