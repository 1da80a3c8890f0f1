//! `StreamingSubscribe`: deliveries out, settlements in, on one stream.
//!
//! The first request opens the subscription; from then on each request's
//! `ack_ids`, `nack_ids` and `extend_ids` are settled through the bus, in
//! the order they arrive. Ids that are unknown or already settled are
//! skipped (like Pub/Sub's StreamingPull): their messages went back to the
//! queue or were settled before. The subscription lives as long as the
//! response stream; the client closing its half only ends the settlements.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Status, Streaming};
use tracing::debug;

use super::{convert, status};
use crate::auth::Caller;
use crate::bus::Bus;
use crate::error::Error;
use crate::proto;

/// One kind of in-stream settlement.
#[derive(Clone, Copy)]
enum Op {
    Ack,
    Nack { requeue: bool, delay_ms: u32 },
    Extend,
}

async fn apply(bus: &Bus, caller: &Caller, op: Op, ids: &[String]) -> Result<u32, Error> {
    match op {
        Op::Ack => bus.ack(caller, ids).await,
        Op::Nack { requeue, delay_ms } => bus.nack(caller, ids, requeue, delay_ms).await,
        Op::Extend => bus.extend(caller, ids).await,
    }
}

/// Settles one request's ids: acks, then nacks, then extensions.
async fn settle(bus: &Bus, caller: &Caller, r: proto::StreamingSubscribeRequest) {
    let nack = Op::Nack {
        requeue: r.requeue,
        delay_ms: r.delay_ms,
    };
    for (op, ids) in [
        (Op::Ack, &r.ack_ids),
        (nack, &r.nack_ids),
        (Op::Extend, &r.extend_ids),
    ] {
        if !ids.is_empty() {
            lenient(bus, caller, op, ids).await;
        }
    }
}

/// Settles `ids` together; when that fails because some are unknown, one
/// by one, so that the others still count.
async fn lenient(bus: &Bus, caller: &Caller, op: Op, ids: &[String]) {
    match apply(bus, caller, op, ids).await {
        Ok(_) => {}
        Err(Error::NotFound(_)) if ids.len() > 1 => {
            for id in ids {
                if let Err(e) = apply(bus, caller, op, std::slice::from_ref(id)).await {
                    debug!(error = %e, "skipping an in-stream settlement");
                }
            }
        }
        Err(e) => debug!(error = %e, "skipping in-stream settlements"),
    }
}

/// Opens the subscription the first request names and settles the rest as
/// they come; the deliveries as a stream.
pub async fn subscribe(
    bus: Arc<Bus>,
    caller: Caller,
    mut inbound: Streaming<proto::StreamingSubscribeRequest>,
) -> Result<crate::bus::Subscription, Status> {
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
    let Some(request) = first.subscription.clone() else {
        return Err(Status::invalid_argument(
            "the first request must carry the subscription",
        ));
    };
    let subscription = bus
        .subscribe(&caller, convert::subscribe(request))
        .await
        .map_err(|e| status(&e))?;
    let ended = subscription.ended();
    tokio::spawn(async move {
        settle(&bus, &caller, first).await;
        loop {
            let next = tokio::select! {
                _ = ended.cancelled() => return,
                next = inbound.next() => next,
            };
            match next {
                Some(Ok(request)) if request.subscription.is_some() => {
                    debug!("ignoring a second subscription on a StreamingSubscribe stream");
                    settle(&bus, &caller, request).await;
                }
                Some(Ok(request)) => settle(&bus, &caller, request).await,
                Some(Err(e)) => {
                    debug!(error = %e, "the client's half of a StreamingSubscribe failed");
                    return;
                }
                None => return,
            }
        }
    });
    Ok(subscription)
}
