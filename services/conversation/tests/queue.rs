//! The queue reporter against real PostgreSQL and NATS: generation_queued events with each
//! queued message's position, read from the owners' event subjects. No worker runs here:
//! the tests call StartGeneration as the worker would.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use atelier_conversation::queue::REPORTER_LOCK_KEY;
use atelier_proto::v1 as proto;
use atelier_testkit::TcpProxy;
use common::{
    Client, TestApp, cancel_message, create_conversation, kind, queued_reports, send_images, start,
    user_events, user_events_once,
};

/// Long enough for several runs of the reporter (every 100 ms in these tests) to have
/// published anything they were going to.
const SETTLE: Duration = Duration::from_millis(600);

/// The index of the first event of `message_id` of `wanted` kind.
fn first(events: &[proto::Event], message_id: &str, wanted: &str) -> Option<usize> {
    events
        .iter()
        .position(|event| event.message_id == message_id && kind(event) == wanted)
}

/// The index of the last event of `message_id` of `wanted` kind.
fn last(events: &[proto::Event], message_id: &str, wanted: &str) -> Option<usize> {
    events
        .iter()
        .rposition(|event| event.message_id == message_id && kind(event) == wanted)
}

fn positions(events: &[proto::Event], message_id: &str) -> Vec<u32> {
    queued_reports(events, message_id)
        .iter()
        .map(|queued| queued.position)
        .collect()
}

fn ids(message: &proto::Message) -> Vec<String> {
    message.generations.iter().map(|g| g.id.clone()).collect()
}

/// Alice's three messages (of 1, 2 and 1 images) queued in this order, once the reporter
/// announced each of them.
async fn three_queued_messages(app: &TestApp) -> (Client, Vec<proto::Message>) {
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let mut messages = Vec::new();
    for (index, images) in [1, 2, 1].into_iter().enumerate() {
        messages.push(
            send_images(
                &mut alice,
                &conversation.id,
                &format!("fox {index}"),
                images,
            )
            .await,
        );
    }
    user_events_once(app, "alice", |events| {
        messages
            .iter()
            .all(|message| !queued_reports(events, &message.id).is_empty())
    })
    .await;
    (alice, messages)
}

#[tokio::test]
async fn each_queued_message_hears_its_place_once_after_its_creation() {
    let app = TestApp::spawn().await;
    let (_, messages) = three_queued_messages(&app).await;
    tokio::time::sleep(SETTLE).await;

    let events = user_events(&app, "alice").await;
    for (place, message) in messages.iter().enumerate() {
        let reports = queued_reports(&events, &message.id);
        assert_eq!(
            reports.len(),
            1,
            "one report while nothing moves: {reports:?}"
        );
        assert_eq!(reports[0].position as usize, place);
        assert_eq!(reports[0].generation_ids, ids(message));
        #[allow(deprecated)]
        let first_id = &reports[0].generation_id;
        assert_eq!(first_id, &message.generations[0].id);
        assert!(
            first(&events, &message.id, "message_created")
                < first(&events, &message.id, "generation_queued"),
            "message_created comes first"
        );
    }

    // The queue is everybody's: Bob's first message waits behind Alice's three.
    let mut bob = app.client("bob");
    let conversation = create_conversation(&mut bob, None).await;
    let bobs = send_images(&mut bob, &conversation.id, "an owl", 1).await;
    let events = user_events_once(&app, "bob", |events| {
        !queued_reports(events, &bobs.id).is_empty()
    })
    .await;
    assert_eq!(positions(&events, &bobs.id), [3]);

    // The positions are recorded with the time they were published.
    let pool = app.db.pool().await.expect("pool");
    let recorded: Vec<(i32, bool)> = sqlx::query_as(
        "SELECT queue_position, queue_reported_at IS NOT NULL FROM messages \
         ORDER BY created_at, id",
    )
    .fetch_all(&pool)
    .await
    .expect("messages");
    assert_eq!(recorded, [(0, true), (1, true), (2, true), (3, true)]);
}

#[tokio::test]
async fn a_start_moves_the_others_up_and_its_message_hears_no_more() {
    let app = TestApp::spawn().await;
    let (mut alice, messages) = three_queued_messages(&app).await;

    start(&mut alice, &messages[0].id).await;
    let events = user_events_once(&app, "alice", |events| {
        positions(events, &messages[1].id).len() == 2
            && positions(events, &messages[2].id).len() == 2
    })
    .await;
    assert_eq!(positions(&events, &messages[1].id), [1, 0]);
    assert_eq!(positions(&events, &messages[2].id), [2, 1]);
    // The second message still waits with both its images.
    assert_eq!(
        queued_reports(&events, &messages[1].id)[1].generation_ids,
        ids(&messages[1])
    );

    tokio::time::sleep(SETTLE).await;
    let events = user_events(&app, "alice").await;
    let started = first(&events, &messages[0].id, "generation_started").expect("started");
    assert!(last(&events, &messages[0].id, "generation_queued") < Some(started));
    assert_eq!(positions(&events, &messages[0].id), [0]);
    assert_eq!(positions(&events, &messages[1].id), [1, 0], "nothing more");
    assert_eq!(positions(&events, &messages[2].id), [2, 1], "nothing more");
}

#[tokio::test]
async fn a_cancelled_message_hears_no_more_and_the_ones_behind_it_move_up() {
    let app = TestApp::spawn().await;
    let (mut alice, messages) = three_queued_messages(&app).await;

    cancel_message(&mut alice, &messages[1].id).await;
    let events = user_events_once(&app, "alice", |events| {
        positions(events, &messages[2].id).len() == 2
    })
    .await;
    assert_eq!(positions(&events, &messages[2].id), [2, 1]);

    tokio::time::sleep(SETTLE).await;
    let events = user_events(&app, "alice").await;
    let cancelled = first(&events, &messages[1].id, "generation_cancelled").expect("cancelled");
    assert!(last(&events, &messages[1].id, "generation_queued") < Some(cancelled));
    assert_eq!(
        positions(&events, &messages[0].id),
        [0],
        "ahead of the cancel"
    );
    assert_eq!(positions(&events, &messages[1].id), [1]);
    assert_eq!(positions(&events, &messages[2].id), [2, 1]);
}

#[tokio::test]
async fn a_message_a_start_holds_is_skipped_and_the_rest_is_reported() {
    let app = TestApp::spawn().await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;
    let pool = app.db.pool().await.expect("pool");

    // The reporters wait (their lock is taken) while three messages are sent and the
    // first one's row is locked, as StartGeneration locks it.
    let mut reporters_paused = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REPORTER_LOCK_KEY)
        .execute(&mut *reporters_paused)
        .await
        .expect("lock");
    let mut messages = Vec::new();
    for index in 0..3 {
        messages.push(send_images(&mut alice, &conversation.id, &format!("fox {index}"), 1).await);
    }
    let mut start_in_progress = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE")
        .bind(uuid::Uuid::parse_str(&messages[0].id).expect("uuid"))
        .execute(&mut *start_in_progress)
        .await
        .expect("row lock");
    reporters_paused.rollback().await.expect("release");

    // The reporter neither waits for the held row nor reports it; the messages behind it
    // still count it.
    let events = user_events_once(&app, "alice", |events| {
        !queued_reports(events, &messages[2].id).is_empty()
    })
    .await;
    assert_eq!(positions(&events, &messages[1].id), [1]);
    assert_eq!(positions(&events, &messages[2].id), [2]);
    tokio::time::sleep(SETTLE).await;
    assert!(
        queued_reports(&user_events(&app, "alice").await, &messages[0].id).is_empty(),
        "a held message is not reported"
    );

    // The start goes through once the row is free: the queue moves up, and the started
    // message's stream has no generation_queued after its generation_started.
    let starting = {
        let mut alice = alice.clone();
        let message_id = messages[0].id.clone();
        tokio::spawn(async move { start(&mut alice, &message_id).await })
    };
    start_in_progress.rollback().await.expect("release");
    starting.await.expect("start");
    let events = user_events_once(&app, "alice", |events| {
        positions(events, &messages[2].id).len() == 2
    })
    .await;
    assert_eq!(positions(&events, &messages[1].id), [1, 0]);
    assert_eq!(positions(&events, &messages[2].id), [2, 1]);
    let started = first(&events, &messages[0].id, "generation_started").expect("started");
    assert!(last(&events, &messages[0].id, "generation_queued") < Some(started));
}

#[tokio::test]
async fn no_generation_queued_follows_a_start_or_a_cancel_under_races() {
    const USERS: usize = 4;
    const MESSAGES_PER_USER: usize = 12;
    // A run every 10 ms: the reporter locks and publishes while the starts and cancels
    // below lock the same rows.
    let app = TestApp::spawn_with(|config| {
        config.queue_report_interval = Duration::from_millis(10);
    })
    .await;
    let users: Vec<String> = (0..USERS).map(|user| format!("user-{user}")).collect();

    // Every user sends, one message after another, while two "workers" take the head of
    // the queue as fast as they can: most messages move several times and leave the
    // queue while the reporter runs.
    let mut senders = tokio::task::JoinSet::new();
    for user in &users {
        let mut client = app.client(user);
        // Before the workers: once the service answers, its migrations are applied.
        let conversation = create_conversation(&mut client, None).await;
        senders.spawn(async move {
            for index in 0..MESSAGES_PER_USER {
                send_images(&mut client, &conversation.id, &format!("fox {index}"), 1).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
    }
    let pool = app.db.pool().await.expect("pool");
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..2_usize {
        let pool = pool.clone();
        let app_clients: HashMap<String, Client> = users
            .iter()
            .map(|user| (user.clone(), app.client(user)))
            .collect();
        workers.spawn(async move {
            let mut clients = app_clients;
            let mut taken = 0_usize;
            let mut idle = 0;
            while idle < 100 {
                let head: Option<(uuid::Uuid, String)> = sqlx::query_as(
                    "SELECT id, owner_id FROM messages WHERE status = 'queued' \
                     ORDER BY created_at, id LIMIT 1",
                )
                .fetch_optional(&pool)
                .await
                .expect("head");
                let Some((message_id, owner)) = head else {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                idle = 0;
                let client = clients.get_mut(&owner).expect("a known user");
                taken += 1;
                // One message in five is cancelled before it starts.
                if (taken + worker).is_multiple_of(5) {
                    cancel_message(client, &message_id.to_string()).await;
                } else {
                    start(client, &message_id.to_string()).await;
                }
                tokio::time::sleep(Duration::from_millis(((taken + worker) % 4) as u64 * 5)).await;
            }
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.expect("sender");
    }
    while let Some(worked) = workers.join_next().await {
        worked.expect("worker");
    }
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'queued'")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(queued, 0, "every message was taken");
    tokio::time::sleep(SETTLE).await;

    let mut reports = 0;
    let mut moved = 0;
    for user in &users {
        let events = user_events(&app, user).await;
        let messages: Vec<String> = events
            .iter()
            .filter(|event| kind(event) == "message_created")
            .map(|event| event.message_id.clone())
            .collect();
        assert_eq!(messages.len(), MESSAGES_PER_USER);
        for message_id in &messages {
            let queued = last(&events, message_id, "generation_queued");
            let ended = first(&events, message_id, "generation_started")
                .or_else(|| first(&events, message_id, "generation_cancelled"))
                .expect("every message was started or cancelled");
            assert!(
                queued < Some(ended),
                "{user}'s message {message_id}: a generation_queued after its end: {:?}",
                events.iter().map(kind).collect::<Vec<_>>()
            );
            assert!(
                first(&events, message_id, "message_created")
                    < first(&events, message_id, "generation_queued")
                    || queued.is_none()
            );
            let count = positions(&events, message_id).len();
            reports += count;
            moved += usize::from(count > 1);
        }
    }
    // The race was run: the reporter published while the queue moved.
    assert!(
        reports > 0 && moved > 0,
        "{reports} reports, {moved} messages moved"
    );
}

#[tokio::test]
async fn a_message_is_reported_only_once_its_own_events_are_published() {
    let nats_addr = {
        let url = atelier_testkit::TestNats::new().url.clone();
        let host_port = url.trim_start_matches("nats://").to_owned();
        tokio::net::lookup_host(host_port)
            .await
            .expect("resolve")
            .next()
            .expect("an address")
    };
    let proxy = TcpProxy::start(nats_addr, false).await.expect("proxy");
    let nats_url = proxy.url("nats");
    let app = TestApp::spawn_with(|config| config.nats.url = nats_url).await;
    let mut alice = app.client("alice");
    let conversation = create_conversation(&mut alice, None).await;

    // NATS is away: the messages are queued, their rows wait in the outbox.
    let first_message = send_images(&mut alice, &conversation.id, "a fox", 1).await;
    let second_message = send_images(&mut alice, &conversation.id, "an owl", 1).await;
    let pool = app.db.pool().await.expect("pool");
    let named: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE message_id = $1 AND published_at IS NULL",
    )
    .bind(uuid::Uuid::parse_str(&first_message.id).expect("uuid"))
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(named, 5, "SendMessage's rows name their message");

    // NATS comes back at once, while the rows are younger than the sweeper's grace (2 s):
    // for a while the reporter can publish but the messages' own rows are not published.
    proxy.set_up(true);
    let events = user_events_once(&app, "alice", |events| {
        !queued_reports(events, &second_message.id).is_empty()
    })
    .await;
    for (place, message) in [&first_message, &second_message].into_iter().enumerate() {
        let created = first(&events, &message.id, "message_created").expect("created");
        let queued = first(&events, &message.id, "generation_queued").expect("queued");
        assert!(
            created < queued,
            "{:?}",
            events.iter().map(kind).collect::<Vec<_>>()
        );
        assert_eq!(positions(&events, &message.id), [place as u32]);
    }
}

#[tokio::test]
async fn two_replicas_never_report_a_position_twice() {
    // Both replicas run their reporter every 10 ms, so their runs overlap often.
    let fast = |config: &mut atelier_conversation::Config| {
        config.queue_report_interval = Duration::from_millis(10);
    };
    let app = TestApp::spawn_with(fast).await;
    let replica = app.spawn_replica(fast).await;
    let replicas = [app.client("alice"), replica.client("alice")];
    let conversation = create_conversation(&mut replicas[0].clone(), None).await;

    // While something else holds the reporters' lock, neither replica reports.
    let pool = app.db.pool().await.expect("pool");
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(REPORTER_LOCK_KEY)
        .execute(&mut *holder)
        .await
        .expect("lock");
    let mut messages = Vec::new();
    for index in 0..4 {
        let client = &mut replicas[index % 2].clone();
        messages.push(send_images(client, &conversation.id, &format!("fox {index}"), 1).await);
    }
    tokio::time::sleep(SETTLE).await;
    let events = user_events(&app, "alice").await;
    assert!(
        !events
            .iter()
            .any(|event| kind(event) == "generation_queued"),
        "no report while the lock is held"
    );
    holder.rollback().await.expect("release");
    user_events_once(&app, "alice", |events| {
        messages
            .iter()
            .all(|message| !queued_reports(events, &message.id).is_empty())
    })
    .await;

    // Then each replica takes sends and starts at once, and is nudged by its own calls.
    let mut calls = tokio::task::JoinSet::new();
    for (index, client) in replicas.iter().enumerate() {
        let (mut sender, mut starter) = (client.clone(), client.clone());
        let conversation_id = conversation.id.clone();
        calls.spawn(async move {
            for round in 0..12 {
                let prompt = format!("replica {index} fox {round}");
                send_images(&mut sender, &conversation_id, &prompt, 1).await;
            }
        });
        let pool = pool.clone();
        calls.spawn(async move {
            for _ in 0..8 {
                let head: uuid::Uuid = sqlx::query_scalar(
                    "SELECT id FROM messages WHERE status = 'queued' \
                     ORDER BY created_at, id LIMIT 1",
                )
                .fetch_one(&pool)
                .await
                .expect("a queued message");
                start(&mut starter, &head.to_string()).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("calls");
    }
    tokio::time::sleep(SETTLE).await;

    let events = user_events(&app, "alice").await;
    let created: Vec<&str> = events
        .iter()
        .filter(|event| kind(event) == "message_created")
        .map(|event| event.message_id.as_str())
        .collect();
    assert_eq!(created.len(), 28);
    let mut moved = 0;
    for message_id in created {
        let reported = positions(&events, message_id);
        assert!(
            reported.windows(2).all(|pair| pair[0] != pair[1]),
            "a position reported twice in a row: {reported:?}"
        );
        moved += usize::from(reported.len() > 1);
    }
    assert!(moved > 0, "the queue moved");
}

#[tokio::test]
async fn a_run_ranks_only_the_head_of_a_long_queue() {
    let app = TestApp::spawn().await;
    let (_, messages) = three_queued_messages(&app).await;
    let pool = app.db.pool().await.expect("pool");
    let mut tx = pool.begin().await.expect("transaction");
    let view = atelier_conversation::db::queue::changed_positions(&mut tx, 2)
        .await
        .expect("ranked");
    // Two of the three are ranked and counted; the third is left to a later run.
    assert_eq!(view.length, 2);
    assert!(
        view.changed
            .iter()
            .all(|changed| changed.message_id != uuid(&messages[2].id) && changed.position < 2),
        "{view:?}"
    );
}

fn uuid(id: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(id).expect("a message id")
}
