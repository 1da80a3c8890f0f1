//! `warren.v1.Admin`: the operators' dead-letter, queue, blocked-key and
//! spool operations over gRPC, calling the same bus functions as the HTTP
//! endpoints (`http/dead_letters.rs`, `http/queues.rs`, `http/ordered.rs`,
//! `http/spool.rs`),
//! which decide permissions and validity.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::service::caller;
use super::{convert, status};
use crate::bus::control::{Listed, QueueInfo};
use crate::bus::dead_letters::DEFAULT_LIST_LIMIT;
use crate::bus::ordered::Blocked;
use crate::bus::{Bus, DeadLetter, DeadLetterOutcome, Patch, Selection};
use crate::error::Error;
use crate::proto;

/// The trailer of a replay or discard stopped part-way: how many messages
/// were done before the failure.
pub const DONE_METADATA: &str = "x-warren-done";

/// The `Admin` service.
pub struct Service {
    bus: Arc<Bus>,
}

impl Service {
    /// A service over `bus`.
    pub fn new(bus: Arc<Bus>) -> Self {
        Self { bus }
    }
}

fn selection(ids: Vec<String>, all: bool) -> Result<Selection, Status> {
    Selection::new((!ids.is_empty()).then_some(ids), all).map_err(|e| status(&e))
}

fn patch(message: Option<proto::MessagePatch>) -> Result<Patch, Status> {
    let Some(m) = message else {
        return Ok(Patch::default());
    };
    Ok(Patch {
        body: m.body.map(Into::into),
        content_type: m.content_type,
        content_encoding: m.content_encoding,
        headers: m
            .headers
            .map(convert::headers)
            .transpose()
            .map_err(|e| status(&e))?,
    })
}

/// The outcome of a replay or discard, or the failure that stopped it with
/// how many were `done` before it (as HTTP's problem says `replayed`).
fn partial(outcome: DeadLetterOutcome, done: &str) -> Result<DeadLetterOutcome, Status> {
    let Some(e) = &outcome.stopped else {
        return Ok(outcome);
    };
    let mut s = Status::new(
        tonic::Code::from(e.code() as i32),
        format!("{e} ({done} {} before this)", outcome.done),
    );
    s.metadata_mut().insert(DONE_METADATA, outcome.done.into());
    Err(s)
}

fn dead_letter(d: DeadLetter) -> proto::DeadLetter {
    proto::DeadLetter {
        id: d.id,
        message: Some(convert::to_proto(d.message)),
        reason: d.reason,
        original_queue: d.original_queue,
        attempts: d.attempts,
    }
}

fn queue_info(q: QueueInfo) -> proto::QueueInfo {
    proto::QueueInfo {
        name: q.name,
        messages: q.messages,
        consumers: q.consumers,
        paused: q.paused,
    }
}

fn listed(l: Listed) -> proto::ListedQueue {
    proto::ListedQueue {
        name: l.info.name,
        messages: l.info.messages,
        consumers: l.info.consumers,
        paused: l.info.paused,
        kind: l.kind.as_str().into(),
        dead_letter_queue: l.dead_letter_queue.unwrap_or_default(),
        exists: l.exists,
    }
}

fn blocked(b: Blocked) -> proto::BlockedKey {
    proto::BlockedKey {
        key: b.key,
        message: Some(convert::to_proto(b.message)),
        reason: b.reason,
        since_ms: b.since_ms,
        waiting: b.waiting,
    }
}

fn grpc<T>(result: Result<T, Error>) -> Result<T, Status> {
    result.map_err(|e| status(&e))
}

#[tonic::async_trait]
impl proto::admin_server::Admin for Service {
    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n as usize,
        };
        let letters = grpc(self.bus.dead_letters(&caller, &r.dlq, limit).await)?;
        Ok(Response::new(proto::ListDeadLettersResponse {
            messages: letters.into_iter().map(dead_letter).collect(),
        }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<proto::ReplayDeadLettersRequest>,
    ) -> Result<Response<proto::ReplayDeadLettersResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let r = request.into_inner();
        let selection = selection(r.ids, r.all)?;
        let patch = patch(r.message)?;
        let outcome = grpc(self.bus.replay(&caller, &r.dlq, &selection, &patch).await)?;
        let outcome = partial(outcome, "replayed")?;
        Ok(Response::new(proto::ReplayDeadLettersResponse {
            replayed: outcome.done,
            missing: outcome.missing,
        }))
    }

    async fn discard_dead_letters(
        &self,
        request: Request<proto::DiscardDeadLettersRequest>,
    ) -> Result<Response<proto::DiscardDeadLettersResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let r = request.into_inner();
        let selection = selection(r.ids, r.all)?;
        let outcome = grpc(self.bus.discard(&caller, &r.dlq, &selection).await)?;
        let outcome = partial(outcome, "discarded")?;
        Ok(Response::new(proto::DiscardDeadLettersResponse {
            discarded: outcome.done,
            missing: outcome.missing,
        }))
    }

    async fn list_queues(
        &self,
        request: Request<proto::ListQueuesRequest>,
    ) -> Result<Response<proto::ListQueuesResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let queues = grpc(self.bus.queues(&caller).await)?;
        Ok(Response::new(proto::ListQueuesResponse {
            queues: queues.into_iter().map(listed).collect(),
        }))
    }

    async fn get_queue(
        &self,
        request: Request<proto::GetQueueRequest>,
    ) -> Result<Response<proto::QueueInfo>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let queue = request.into_inner().queue;
        let info = grpc(self.bus.queue(&caller, &queue).await)?;
        Ok(Response::new(queue_info(info)))
    }

    async fn pause_queue(
        &self,
        request: Request<proto::PauseQueueRequest>,
    ) -> Result<Response<proto::QueueInfo>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let queue = request.into_inner().queue;
        let info = grpc(self.bus.pause(&caller, &queue).await)?;
        Ok(Response::new(queue_info(info)))
    }

    async fn resume_queue(
        &self,
        request: Request<proto::ResumeQueueRequest>,
    ) -> Result<Response<proto::QueueInfo>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let queue = request.into_inner().queue;
        let info = grpc(self.bus.resume(&caller, &queue).await)?;
        Ok(Response::new(queue_info(info)))
    }

    async fn list_blocked_keys(
        &self,
        request: Request<proto::ListBlockedKeysRequest>,
    ) -> Result<Response<proto::ListBlockedKeysResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let group = request.into_inner().group;
        let keys = grpc(self.bus.blocked(&caller, &group).await)?;
        Ok(Response::new(proto::ListBlockedKeysResponse {
            blocked: keys.into_iter().map(blocked).collect(),
        }))
    }

    async fn retry_blocked_key(
        &self,
        request: Request<proto::RetryBlockedKeyRequest>,
    ) -> Result<Response<proto::ReleaseBlockedKeyResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let r = request.into_inner();
        let patch = patch(r.message)?;
        grpc(
            self.bus
                .retry_blocked(&caller, &r.group, &r.key, &patch)
                .await,
        )?;
        Ok(Response::new(proto::ReleaseBlockedKeyResponse {
            key: r.key,
            released: "retry".into(),
        }))
    }

    async fn skip_blocked_key(
        &self,
        request: Request<proto::SkipBlockedKeyRequest>,
    ) -> Result<Response<proto::ReleaseBlockedKeyResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let r = request.into_inner();
        grpc(self.bus.skip_blocked(&caller, &r.group, &r.key).await)?;
        Ok(Response::new(proto::ReleaseBlockedKeyResponse {
            key: r.key,
            released: "skip".into(),
        }))
    }

    async fn get_spool(
        &self,
        request: Request<proto::GetSpoolRequest>,
    ) -> Result<Response<proto::SpoolState>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let s = grpc(self.bus.spool_status(&caller).await)?;
        Ok(Response::new(proto::SpoolState {
            messages: s.messages,
            bytes: s.bytes,
            max_bytes: s.max_bytes,
            oldest_seconds: s.oldest_seconds,
            dead: s.dead,
            broker_connected: self.bus.is_ready(),
        }))
    }

    async fn list_spool_dead(
        &self,
        request: Request<proto::ListSpoolDeadRequest>,
    ) -> Result<Response<proto::ListSpoolDeadResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let limit = match request.get_ref().limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n as usize,
        };
        let dead = grpc(self.bus.spool_dead(&caller, limit).await)?;
        Ok(Response::new(proto::ListSpoolDeadResponse {
            messages: dead.into_iter().map(spool_dead).collect(),
        }))
    }

    async fn replay_spool_dead(
        &self,
        request: Request<proto::ReplaySpoolDeadRequest>,
    ) -> Result<Response<proto::ReplayDeadLettersResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let r = request.into_inner();
        let selection = selection(r.ids, r.all)?;
        let patch = patch(r.message)?;
        let outcome = grpc(self.bus.spool_replay(&caller, &selection, &patch).await)?;
        let outcome = partial(outcome, "replayed")?;
        Ok(Response::new(proto::ReplayDeadLettersResponse {
            replayed: outcome.done,
            missing: outcome.missing,
        }))
    }

    async fn discard_spool_dead(
        &self,
        request: Request<proto::DiscardSpoolDeadRequest>,
    ) -> Result<Response<proto::DiscardDeadLettersResponse>, Status> {
        let caller = caller(&self.bus, &request).await?;
        let r = request.into_inner();
        let selection = selection(r.ids, r.all)?;
        let outcome = grpc(self.bus.spool_discard(&caller, &selection).await)?;
        let outcome = partial(outcome, "discarded")?;
        Ok(Response::new(proto::DiscardDeadLettersResponse {
            discarded: outcome.done,
            missing: outcome.missing,
        }))
    }
}

fn spool_dead(d: crate::bus::spool::Dead) -> proto::SpoolDeadMessage {
    proto::SpoolDeadMessage {
        id: d.id,
        reason: d.reason,
        exchange: d.publish.exchange,
        routing_key: d.publish.routing_key,
        message: Some(convert::to_proto(d.publish.message)),
    }
}
