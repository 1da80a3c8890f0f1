//! The spool: publishes that allow it, written durably while the broker
//! cannot be reached, and forwarded in order once it can.
//!
//! - `store`: the embedded database (redb): the spooled messages and the
//!   dead-letter spool.
//! - `commit`: group commit: concurrent appends share one durable commit.

pub mod commit;
pub mod store;
