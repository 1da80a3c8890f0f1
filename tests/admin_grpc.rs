//! `warren.v1.Admin` against the real broker: dead letters listed, replayed
//! (corrected) and discarded; queues listed, shown, paused and resumed;
//! blocked keys listed, retried (corrected) and skipped; a bad input per
//! operation; and the admin permission when auth is on.

mod common;

use std::time::Duration;

use common::*;
use prost_types::value::Kind;
use sha2::{Digest, Sha256};
use tonic::transport::Channel as GrpcChannel;
use tonic::Code;
use warren::proto::admin_client::AdminClient;
use warren::proto::*;

async fn admin(warren: &Warren) -> AdminClient<GrpcChannel> {
    AdminClient::connect(warren.grpc_addr.clone())
        .await
        .expect("grpc connects")
}

/// The code of a call that must fail.
fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.expect_err("the call fails").code()
}

fn text_patch(body: &str) -> MessagePatch {
    MessagePatch {
        body: Some(body.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn headers(pairs: &[(&str, &str)]) -> prost_types::Struct {
    prost_types::Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), value(Kind::StringValue(v.to_string()))))
            .collect(),
    }
}

/// Warren with `queue` declared from config (so it gets `<queue>.dlq`).
async fn warren_with_queue(queue: &str) -> Warren {
    Warren::start_with(config_toml(&format!(
        "[[topology.queues]]\nname = \"{queue}\"\ntype = \"classic\"\n"
    )))
    .await
}

#[tokio::test]
async fn dead_letters_are_listed_replayed_corrected_and_discarded() {
    let queue = unique("admin-dl");
    let dlq = format!("{queue}.dlq");
    let warren = warren_with_queue(&queue).await;
    let broker = Broker::connect().await;
    let mut client = warren.grpc().await;
    let mut admin = admin(&warren).await;
    let mut stream = subscribe(&mut client, &queue).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&mut client, &queue, &format!("m{i}")).await);
    }
    for _ in 0..3 {
        let d = next(&mut stream).await;
        nack(&mut client, &d, false, 0).await;
    }
    for _ in 0..100 {
        if broker.ready(&dlq).await == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let listed = admin
        .list_dead_letters(ListDeadLettersRequest {
            dlq: dlq.clone(),
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let mut listed_ids: Vec<_> = listed.iter().map(|l| l.id.clone()).collect();
    listed_ids.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(listed_ids, sorted);
    let first = listed.iter().find(|l| l.id == ids[0]).unwrap();
    assert_eq!(first.reason, "rejected");
    assert_eq!(first.original_queue, queue);
    assert_eq!(first.attempts, 1);
    assert_eq!(&first.message.as_ref().unwrap().body[..], b"m0");
    assert_eq!(broker.ready(&dlq).await, Some(3), "listing removes nothing");

    // Replay one, corrected, and an id that is not there.
    let replayed = admin
        .replay_dead_letters(ReplayDeadLettersRequest {
            dlq: dlq.clone(),
            ids: vec![ids[0].clone(), "no-such-id".into()],
            all: false,
            message: Some(MessagePatch {
                headers: Some(headers(&[("fixed-by", "ops")])),
                ..text_patch("cured")
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    assert_eq!(replayed.missing, vec!["no-such-id".to_owned()]);
    let d = next(&mut stream).await;
    let m = d.message.as_ref().unwrap();
    assert_eq!(&m.body[..], b"cured");
    assert_eq!(m.message_id, ids[0], "the id is kept");
    assert_eq!(d.attempt, 1, "a replayed message starts over");
    assert_eq!(
        m.headers["fixed-by"].kind,
        Some(Kind::StringValue("ops".into()))
    );
    assert!(!m.headers.contains_key("x-death"));
    ack(&mut client, &d).await;

    // Discard one, replay the rest with all.
    let discarded = admin
        .discard_dead_letters(DiscardDeadLettersRequest {
            dlq: dlq.clone(),
            ids: vec![ids[1].clone()],
            all: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(discarded.discarded, 1);
    assert!(discarded.missing.is_empty());
    let replayed = admin
        .replay_dead_letters(ReplayDeadLettersRequest {
            dlq: dlq.clone(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    let d = next(&mut stream).await;
    assert_eq!(body(&d), "m2", "uncorrected");
    ack(&mut client, &d).await;
    assert_eq!(broker.ready(&dlq).await, Some(0));

    // Bad input, per operation.
    let missing = unique("none");
    let list = |dlq: &str, limit| ListDeadLettersRequest {
        dlq: dlq.into(),
        limit,
    };
    assert_eq!(
        code(admin.list_dead_letters(list(&missing, 10)).await),
        Code::NotFound
    );
    assert_eq!(
        code(admin.list_dead_letters(list(&dlq, 100_000)).await),
        Code::InvalidArgument,
        "over dead_letters.max_list"
    );
    let replay = |ids: Vec<String>, all, message| ReplayDeadLettersRequest {
        dlq: dlq.clone(),
        ids,
        all,
        message,
    };
    assert_eq!(
        code(admin.replay_dead_letters(replay(vec![], false, None)).await),
        Code::InvalidArgument,
        "an empty selection"
    );
    assert_eq!(
        code(
            admin
                .replay_dead_letters(replay(vec!["a".into()], true, None))
                .await
        ),
        Code::InvalidArgument,
        "ids and all"
    );
    let own_header = MessagePatch {
        headers: Some(headers(&[("x-warren-attempt", "1")])),
        ..Default::default()
    };
    assert_eq!(
        code(
            admin
                .replay_dead_letters(replay(vec![], true, Some(own_header)))
                .await
        ),
        Code::InvalidArgument,
        "a correction with Warren's own header"
    );
    let discard = |dlq: &str, ids: Vec<String>, all| DiscardDeadLettersRequest {
        dlq: dlq.into(),
        ids,
        all,
    };
    assert_eq!(
        code(
            admin
                .discard_dead_letters(discard(&dlq, vec![], false))
                .await
        ),
        Code::InvalidArgument,
        "an empty selection"
    );
    assert_eq!(
        code(
            admin
                .discard_dead_letters(discard(&missing, vec![], true))
                .await
        ),
        Code::NotFound
    );
    drop(stream);
    broker.delete_queues(&[queue.clone(), dlq]).await;
    warren.stop().await;
}

#[tokio::test]
async fn queues_are_listed_shown_paused_and_resumed() {
    let queue = unique("admin-q");
    let dlq = format!("{queue}.dlq");
    let warren = warren_with_queue(&queue).await;
    let broker = Broker::connect().await;
    let mut client = warren.grpc().await;
    let mut admin = admin(&warren).await;
    publish(&mut client, &queue, "one").await;
    publish(&mut client, &queue, "two").await;

    let queues = admin
        .list_queues(ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues;
    let entry = queues.iter().find(|q| q.name == queue).expect("listed");
    assert_eq!(entry.kind, "queue");
    assert_eq!(entry.dead_letter_queue, dlq);
    assert!(entry.exists);
    assert_eq!(entry.messages, 2);
    let dead = queues.iter().find(|q| q.name == dlq).expect("its dlq");
    assert_eq!(dead.kind, "dead_letter");

    let get = |queue: &str| GetQueueRequest {
        queue: queue.into(),
    };
    let info = admin.get_queue(get(&queue)).await.unwrap().into_inner();
    assert_eq!(
        info,
        QueueInfo {
            name: queue.clone(),
            messages: 2,
            consumers: 0,
            paused: false
        }
    );
    let paused = admin
        .pause_queue(PauseQueueRequest {
            queue: queue.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(paused.paused);
    // A paused queue delivers nothing.
    let mut stream = subscribe(&mut client, &queue).await;
    assert!(quiet(&mut stream, Duration::from_millis(500)).await);
    assert!(
        admin
            .get_queue(get(&queue))
            .await
            .unwrap()
            .into_inner()
            .paused
    );
    let resumed = admin
        .resume_queue(ResumeQueueRequest {
            queue: queue.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!resumed.paused);
    assert_eq!(body(&next(&mut stream).await), "one");

    // Bad input, per operation.
    let missing = unique("none");
    assert_eq!(code(admin.get_queue(get(&missing)).await), Code::NotFound);
    assert_eq!(code(admin.get_queue(get("")).await), Code::InvalidArgument);
    assert_eq!(
        code(
            admin
                .pause_queue(PauseQueueRequest {
                    queue: missing.clone()
                })
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            admin
                .resume_queue(ResumeQueueRequest {
                    queue: "x".repeat(256)
                })
                .await
        ),
        Code::InvalidArgument,
        "a name over 255 bytes"
    );
    drop(stream);
    broker.delete_queues(&[queue.clone(), dlq]).await;
    warren.stop().await;
}

/// The queues an ordered group makes (to delete them afterwards).
async fn cleanup(group: &str, partitions: u32, slots: u32) {
    let broker = Broker::connect().await;
    let mut queues = vec![format!("{group}.dlq"), format!("{group}.subscribers")];
    for p in 0..partitions {
        queues.push(format!("{group}.{p}"));
        queues.push(format!("{group}.{p}.handover"));
        for s in 0..slots {
            queues.push(format!("{group}.{p}.held.{s}"));
            queues.push(format!("{group}.{p}.wait.{s}"));
        }
    }
    broker.delete_queues(&queues).await;
}

async fn publish_keyed(
    client: &mut warren::proto::bus_client::BusClient<GrpcChannel>,
    group: &str,
    key: &str,
    body: &str,
) {
    let request = PublishRequest {
        ordering_key: key.into(),
        ..request(group, "", body.as_bytes())
    };
    client.publish(request).await.expect("confirmed");
}

#[tokio::test]
async fn blocked_keys_are_listed_retried_corrected_and_skipped() {
    let group = unique("admin-ordered");
    let warren = Warren::start_with(config_toml(&format!(
        "[[ordered]]\nname = \"{group}\"\npartitions = 1\n"
    )))
    .await;
    let mut client = warren.grpc().await;
    let mut admin = admin(&warren).await;
    for body in ["a0", "a1"] {
        publish_keyed(&mut client, &group, "a", body).await;
    }
    publish_keyed(&mut client, &group, "b", "b0").await;
    let mut stream = subscribe_with(&mut client, on(&group, 10)).await;
    let a0 = next(&mut stream).await;
    assert_eq!(body(&a0), "a0");
    nack(&mut client, &a0, false, 0).await;
    let b0 = next(&mut stream).await;
    assert_eq!(body(&b0), "b0");
    nack(&mut client, &b0, false, 0).await;
    assert!(quiet(&mut stream, Duration::from_millis(500)).await);

    let list = ListBlockedKeysRequest {
        group: group.clone(),
    };
    let mut blocked = Vec::new();
    for _ in 0..50 {
        blocked = admin
            .list_blocked_keys(list.clone())
            .await
            .unwrap()
            .into_inner()
            .blocked;
        if blocked.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    let a = blocked.iter().find(|b| b.key == "a").expect("a is blocked");
    assert_eq!(&a.message.as_ref().unwrap().body[..], b"a0");
    assert_eq!(a.waiting, 1);
    assert!(a.since_ms > 0);
    assert!(!a.reason.is_empty());

    let retry = |key: &str, message| RetryBlockedKeyRequest {
        group: group.clone(),
        key: key.into(),
        message,
    };
    let released = admin
        .retry_blocked_key(retry("a", Some(text_patch("a0-fixed"))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        released,
        ReleaseBlockedKeyResponse {
            key: "a".into(),
            released: "retry".into()
        }
    );
    for expected in ["a0-fixed", "a1"] {
        let d = next(&mut stream).await;
        assert_eq!(body(&d), expected);
        ack(&mut client, &d).await;
    }
    let skip = |group: &str, key: &str| SkipBlockedKeyRequest {
        group: group.into(),
        key: key.into(),
    };
    let released = admin
        .skip_blocked_key(skip(&group, "b"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.released, "skip");
    let broker = Broker::connect().await;
    assert_eq!(broker.bodies(&format!("{group}.dlq"), 1).await, ["b0"]);
    assert!(admin
        .list_blocked_keys(list.clone())
        .await
        .unwrap()
        .into_inner()
        .blocked
        .is_empty());

    // Bad input, per operation.
    let missing = unique("none");
    assert_eq!(
        code(
            admin
                .list_blocked_keys(ListBlockedKeysRequest {
                    group: missing.clone()
                })
                .await
        ),
        Code::NotFound,
        "not an ordered group"
    );
    assert_eq!(
        code(admin.retry_blocked_key(retry("a", None)).await),
        Code::NotFound,
        "a is not blocked any more"
    );
    let own_header = MessagePatch {
        headers: Some(headers(&[("x-warren-ordering-key", "z")])),
        ..Default::default()
    };
    assert_eq!(
        code(admin.retry_blocked_key(retry("a", Some(own_header))).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(admin.skip_blocked_key(skip(&missing, "b")).await),
        Code::NotFound
    );
    drop(stream);
    warren.stop().await;
    cleanup(&group, 1, 32).await;
}

const OPS: &str = "ops-token-0123456789";
const APP: &str = "app-token-0123456789";

fn sha(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn with<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Every operation once, with `token`: the codes, in order.
async fn every_operation(
    admin: &mut AdminClient<GrpcChannel>,
    token: Option<&str>,
    queue: &str,
) -> Vec<Code> {
    let dlq = format!("{queue}.dlq");
    let code_of = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    vec![
        code_of(
            admin
                .list_dead_letters(with(
                    ListDeadLettersRequest {
                        dlq: dlq.clone(),
                        limit: 1,
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .replay_dead_letters(with(
                    ReplayDeadLettersRequest {
                        dlq: dlq.clone(),
                        ids: vec!["none".into()],
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .discard_dead_letters(with(
                    DiscardDeadLettersRequest {
                        dlq: dlq.clone(),
                        ids: vec!["none".into()],
                        all: false,
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .list_queues(with(ListQueuesRequest {}, token))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .get_queue(with(
                    GetQueueRequest {
                        queue: queue.into(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .pause_queue(with(
                    PauseQueueRequest {
                        queue: queue.into(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .resume_queue(with(
                    ResumeQueueRequest {
                        queue: queue.into(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .list_blocked_keys(with(
                    ListBlockedKeysRequest {
                        group: "nogroup".into(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .retry_blocked_key(with(
                    RetryBlockedKeyRequest {
                        group: "nogroup".into(),
                        key: "k".into(),
                        message: None,
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
        code_of(
            admin
                .skip_blocked_key(with(
                    SkipBlockedKeyRequest {
                        group: "nogroup".into(),
                        key: "k".into(),
                    },
                    token,
                ))
                .await
                .map(drop),
        ),
    ]
}

#[tokio::test]
async fn with_auth_on_every_operation_needs_the_admin_permission() {
    let queue = unique("admin-auth");
    let toml = format!(
        r#"
[[topology.queues]]
name = "{queue}"
type = "classic"

[auth]
enabled = true

[[auth.clients]]
name = "ops"
token_sha256 = "{ops}"
admin = true

[[auth.clients]]
name = "app"
token_sha256 = "{app}"
publish = ["*"]
consume = ["*"]
call = ["*"]
"#,
        ops = sha(OPS),
        app = sha(APP),
    );
    let warren = Warren::start_with(config_toml(&toml)).await;
    let mut admin = admin(&warren).await;
    let unauthenticated = every_operation(&mut admin, None, &queue).await;
    assert!(
        unauthenticated.iter().all(|c| *c == Code::Unauthenticated),
        "{unauthenticated:?}"
    );
    let bad = every_operation(&mut admin, Some("not-a-token"), &queue).await;
    assert!(bad.iter().all(|c| *c == Code::Unauthenticated), "{bad:?}");
    let denied = every_operation(&mut admin, Some(APP), &queue).await;
    assert!(
        denied.iter().all(|c| *c == Code::PermissionDenied),
        "without admin: {denied:?}"
    );
    let allowed = every_operation(&mut admin, Some(OPS), &queue).await;
    assert_eq!(
        allowed,
        vec![
            Code::Ok,       // list: the dlq is empty
            Code::Ok,       // replay: "none" is missing
            Code::Ok,       // discard: likewise
            Code::Ok,       // queues
            Code::Ok,       // get
            Code::Ok,       // pause
            Code::Ok,       // resume
            Code::NotFound, // no such group
            Code::NotFound,
            Code::NotFound,
        ],
        "with admin"
    );
    assert!(
        !admin
            .get_queue(with(
                GetQueueRequest {
                    queue: queue.clone()
                },
                Some(OPS)
            ))
            .await
            .unwrap()
            .into_inner()
            .paused,
        "resumed"
    );
    warren.stop().await;
    Broker::connect()
        .await
        .delete_queues(&[queue.clone(), format!("{queue}.dlq")])
        .await;
}

#[tokio::test]
async fn the_admin_service_is_reflected_and_healthy() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let warren = Warren::start().await;
    let channel = tonic::transport::Endpoint::from_shared(warren.grpc_addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let ask = |m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "warren.v1.Admin".into(),
            )),
        ]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    assert!(
        list.service.iter().any(|s| s.name == "warren.v1.Admin"),
        "{list:?}"
    );
    let answer = answers.message().await.unwrap().unwrap();
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{answer:?}"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut serving = false;
    for _ in 0..40 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "warren.v1.Admin".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.ok()
            == Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
        {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving);
    warren.stop().await;
}
