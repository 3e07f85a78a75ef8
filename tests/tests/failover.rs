//! Two instances of every service, the senders spread over both edges, and one of the two
//! conversation instances killed midway: its runtime dropped with every task on it (its
//! connections, transactions, relay and sweeper end at once, as when its process dies;
//! new connections are refused). Every send must be answered OK or UNAVAILABLE, never
//! INTERNAL; a send retried with its idempotency key after an UNAVAILABLE replays the
//! message the first attempt committed, if it did; every message completes, each charged
//! exactly once (the survivor publishes the outbox rows the dead relay left); and each
//! message's events arrive in causal order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_tests::{Mesh, MeshOptions, Watcher, authorized, kind};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const SENDERS: usize = 4;
const SENDS_EACH: usize = 8;

/// Sends one prompt with `key` until it is answered OK, retrying UNAVAILABLE with the same
/// key (what a client does). Returns the message and every code it was answered with.
async fn send_until_ok(
    chat: &mut ChatServiceClient<Channel>,
    bearer: &str,
    conversation_id: &str,
    prompt: &str,
    key: &str,
) -> (proto::Message, Vec<Code>) {
    let mut codes = Vec::new();
    for _ in 0..100 {
        let request = authorized(
            proto::SendMessageRequest {
                conversation_id: conversation_id.to_owned(),
                prompt: prompt.to_owned(),
                client_request_id: key.to_owned(),
                ..Default::default()
            },
            bearer,
        )
        .expect("request");
        match chat.send_message(request).await {
            Ok(response) => {
                codes.push(Code::Ok);
                return (response.into_inner().message.expect("a message"), codes);
            }
            Err(status) => {
                codes.push(status.code());
                if status.code() != Code::Unavailable {
                    panic!("a send was answered {status:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    panic!("a send was never answered OK: {codes:?}");
}

#[tokio::test]
async fn a_conversation_instance_killed_under_load_loses_and_double_charges_nothing() {
    atelier_testkit::init_logging();
    let starting_credits = 1_000;
    let mut mesh = Mesh::start(MeshOptions {
        conversation_instances: 2,
        replicas: 2,
        starting_credits,
        rate_limit: atelier_edge::rate_limit::RateLimit {
            per_second: 1_000.0,
            burst: 1_000,
            idle_eviction: Duration::from_secs(600),
        },
        ..MeshOptions::default()
    })
    .await
    .expect("mesh");
    let bearer = mesh.bearer("failover-user").expect("token");
    let channel = mesh.connect().await.expect("connect");
    let mut chat = ChatServiceClient::new(channel.clone());
    // Reads are retried by the edge itself on another instance; creating is not a read,
    // so the conversations are made before the cut.
    let mut conversations = Vec::new();
    for _ in 0..SENDERS {
        conversations.push(
            atelier_tests::new_conversation(&mut chat, &bearer)
                .await
                .expect("conversation")
                .id,
        );
    }
    let mut watcher = Watcher::open(channel.clone(), &bearer, None)
        .await
        .expect("watch");

    // Every other sender goes through the second edge.
    let second_edge = Endpoint::from_shared(mesh.more_edges[0].url())
        .expect("url")
        .connect()
        .await
        .expect("the second edge");
    let mut senders = tokio::task::JoinSet::new();
    for (sender, conversation_id) in conversations.iter().cloned().enumerate() {
        let mut chat = if sender % 2 == 0 {
            chat.clone()
        } else {
            ChatServiceClient::new(second_edge.clone())
        };
        let bearer = bearer.clone();
        senders.spawn(async move {
            let mut sent = Vec::new();
            for n in 0..SENDS_EACH {
                let key = format!("failover-{sender}-{n}");
                let prompt = format!("a lighthouse number {n} seen by sender {sender}");
                sent.push(send_until_ok(&mut chat, &bearer, &conversation_id, &prompt, &key).await);
            }
            sent
        });
    }
    // Kill the second instance while the sends are under way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.more_conversations[0].kill();

    let mut messages = BTreeMap::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(sent) = senders.join_next().await {
        for (message, answered) in sent.expect("sender") {
            for code in answered {
                *codes.entry(format!("{code:?}")).or_default() += 1;
            }
            messages.insert(message.id.clone(), message);
        }
    }
    // Every send was answered OK or UNAVAILABLE (send_until_ok panics on anything else),
    // and every key made exactly one message.
    assert_eq!(messages.len(), SENDERS * SENDS_EACH, "{codes:?}");
    eprintln!("answers: {codes:?}");

    // Every message completes, and its events come in causal order.
    let mut seen: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut completed = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while completed.len() < messages.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} messages completed",
            completed.len(),
            messages.len()
        );
        let event = watcher
            .next(Duration::from_secs(30))
            .await
            .expect("an event");
        if event.message_id.is_empty() {
            continue;
        }
        let message_id = event.message_id.clone();
        let kind = kind(&event);
        assert_ne!(kind, "generation_failed", "{event:?}");
        seen.entry(message_id.clone()).or_default().push(kind);
        if kind == "generation_completed" {
            completed.insert(message_id);
        }
    }
    for (message_id, kinds) in &seen {
        assert_causal(message_id, kinds);
    }

    // Charged exactly once each: the balance is the start minus every message's cost.
    let cost: i64 = messages.values().map(|message| message.cost).sum();
    assert!(cost > 0);
    let balance = chat
        .get_balance(authorized(proto::GetBalanceRequest::default(), &bearer).expect("request"))
        .await
        .expect("balance")
        .into_inner()
        .balance;
    assert_eq!(balance, starting_credits - cost);
}

/// Created, then started, then completed, and nothing of the pipeline after completion.
fn assert_causal(message_id: &str, kinds: &[&'static str]) {
    let at = |wanted: &str| kinds.iter().position(|kind| *kind == wanted);
    let (created, started, completed) = (
        at("message_created"),
        at("generation_started"),
        at("generation_completed"),
    );
    let completed = completed.unwrap_or_else(|| panic!("{message_id}: {kinds:?}"));
    if let Some(started) = started {
        assert!(started < completed, "{message_id}: {kinds:?}");
        if let Some(created) = created {
            assert!(created < started, "{message_id}: {kinds:?}");
        }
    }
    assert!(
        kinds[completed + 1..].iter().all(|kind| !matches!(
            *kind,
            "generation_started" | "intent_resolved" | "generation_progress" | "message_created"
        )),
        "{message_id}: {kinds:?}"
    );
}
