//! Dead letters that operators can work with: list without removing, replay
//! to the original queue (optionally corrected), discard.
//!
//! Messages are taken from the dead-letter queue one at a time with
//! `basic.get` on a channel of this operation's own and acted on at once
//! (streamed: Warren holds one message at a time, whatever the scan limit);
//! those not selected stay unacked on the channel and go back when it
//! closes. A replayed message is acked (leaves the dead-letter queue) only
//! after its publish to the original queue was confirmed: a crash in between
//! may duplicate, never lose. An operation that fails part-way reports what
//! it did before the failure.

mod scan;

use super::Bus;
use crate::auth::{Access, Caller};
use crate::error::Error;
use crate::message::{check_short, Headers, Message};

pub(crate) use scan::{replay_properties, DeadLetters};

/// Prefix of the headers with which Warren itself dead-letters a message
/// (one the broker did not: a scheduled message it could not forward when
/// due); read before the broker's `x-death`, dropped on replay.
pub const HEADER_PREFIX: &str = "x-warren-dead-letter-";
/// Why Warren dead-lettered it (`unroutable`, `not-found`, ...).
pub const REASON_HEADER: &str = "x-warren-dead-letter-reason";
/// The queue it was taken from, where a replay sends it.
pub const QUEUE_HEADER: &str = "x-warren-dead-letter-queue";
/// The error in full.
pub const DETAIL_HEADER: &str = "x-warren-dead-letter-detail";

/// A dead-lettered message as operators see it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message's `message_id`.
    pub id: String,
    pub message: Message,
    /// Why it was dead-lettered (`rejected`, `expired`, `maxlen`, ...).
    pub reason: String,
    /// The queue it was dead-lettered from.
    pub original_queue: String,
    /// The deliveries it had.
    pub attempts: u32,
}

/// How many dead letters a listing shows when the request says nothing.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// Which dead letters an operation takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Those with these message ids.
    Ids(Vec<String>),
    /// All of them (up to the scan limit).
    All,
}

impl Selection {
    /// The selection a request names: a non-empty list of `ids`, or `all`;
    /// both, neither or an empty list are INVALID_ARGUMENT.
    pub fn new(ids: Option<Vec<String>>, all: bool) -> Result<Self, Error> {
        match (ids, all) {
            (Some(_), true) => Err(Error::InvalidArgument(
                "give either ids or all, not both".into(),
            )),
            (Some(ids), false) if !ids.is_empty() => Ok(Selection::Ids(ids)),
            (None, true) => Ok(Selection::All),
            _ => Err(Error::InvalidArgument(
                "give ids (a non-empty list) or \"all\": true".into(),
            )),
        }
    }
}

/// Corrections applied to replayed messages; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub body: Option<bytes::Bytes>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Replaces the application headers (Warren's own are kept).
    pub headers: Option<Headers>,
}

impl Patch {
    /// Refuses corrections that could not be published: a body over
    /// `max_body` bytes, Warren's own (`x-warren-`) headers, over-long
    /// content type or encoding.
    pub fn check(&self, max_body: usize) -> Result<(), Error> {
        if let Some(body) = &self.body {
            if body.len() > max_body {
                return Err(Error::TooLarge {
                    what: "message body",
                    size: body.len(),
                    limit: max_body,
                });
            }
        }
        if let Some(headers) = &self.headers {
            crate::message::check_client_headers(headers)?;
        }
        for (what, value) in [
            ("content_type", &self.content_type),
            ("content_encoding", &self.content_encoding),
        ] {
            if let Some(v) = value {
                check_short(what, v)?;
            }
        }
        Ok(())
    }
}

/// What an operation did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Messages replayed or discarded.
    pub done: u32,
    /// Requested ids that were not found in the dead-letter queue.
    pub missing: Vec<String>,
    /// The failure that stopped the operation after `done` messages.
    pub stopped: Option<Error>,
}

impl Bus {
    /// Up to `limit` dead letters of `dlq`, left in place.
    pub async fn dead_letters(
        &self,
        caller: &Caller,
        dlq: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        caller.permit(Access::Admin)?;
        let _pass = self.enter()?;
        let max = self.config.dead_letters.max_list;
        if limit > max {
            return Err(Error::InvalidArgument(format!(
                "limit {limit} is above {max} (dead_letters.max_list)"
            )));
        }
        self.dead_letters.list(dlq, limit).await
    }

    /// Replays the selected dead letters of `dlq` to their original queues.
    pub async fn replay(
        &self,
        caller: &Caller,
        dlq: &str,
        selection: &Selection,
        patch: &Patch,
    ) -> Result<Outcome, Error> {
        caller.permit(Access::Admin)?;
        let _pass = self.enter_broker()?;
        patch.check(self.config.publish.max_body_bytes)?;
        self.dead_letters.replay(dlq, selection, patch).await
    }

    /// Removes the selected dead letters of `dlq` for good.
    pub async fn discard(
        &self,
        caller: &Caller,
        dlq: &str,
        selection: &Selection,
    ) -> Result<Outcome, Error> {
        caller.permit(Access::Admin)?;
        let _pass = self.enter()?;
        self.dead_letters.discard(dlq, selection).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_is_some_ids_or_all() {
        let ids = || Some(vec!["a".to_owned()]);
        assert_eq!(
            Selection::new(ids(), false).unwrap(),
            Selection::Ids(vec!["a".into()])
        );
        assert_eq!(Selection::new(None, true).unwrap(), Selection::All);
        for (ids, all) in [(None, false), (Some(vec![]), false), (ids(), true)] {
            assert!(
                matches!(
                    Selection::new(ids.clone(), all),
                    Err(Error::InvalidArgument(_))
                ),
                "{ids:?} {all}"
            );
        }
    }

    #[test]
    fn corrections_are_checked_like_publishes() {
        let big = Patch {
            body: Some(bytes::Bytes::from_static(b"12345")),
            ..Default::default()
        };
        assert!(matches!(big.check(4), Err(Error::TooLarge { .. })));
        assert!(big.check(5).is_ok());
        let mut headers = Headers::new();
        headers.insert("x-warren-attempt".into(), 1.into());
        let own = Patch {
            headers: Some(headers),
            ..Default::default()
        };
        assert!(matches!(own.check(10), Err(Error::InvalidArgument(_))));
    }
}
