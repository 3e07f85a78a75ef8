//! One SendMessage is one trace: the mesh runs with every span handed to an exporter
//! double (through `atelier_runtime::telemetry`, as a service installs its exporter), a
//! picture and then an edit of it are sent without a `traceparent` and watched to their
//! completion, and the spans of the edit must form one tree, from the edge's call through
//! the conversation service, the outbox relay, the generation worker, intent and
//! enhancement, the provider and the completion, back to the event delivered on
//! WatchEvents (live, and replayed to a client that resumes), with every parent link
//! across gRPC and NATS in place.
//!
//! The subscriber is global to the process, so this file holds one test: its own binary.

use std::time::Duration;

use atelier_proto::v1 as proto;
use atelier_proto::v1::chat_service_client::ChatServiceClient;
use atelier_testkit::SpanCollector;
use atelier_tests::{Mesh, MeshOptions, Watcher, new_conversation, send_prompt};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::SpanData;

/// The finished spans, read as a trace viewer reads them.
struct Spans(Vec<SpanData>);

impl Spans {
    fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|attribute| attribute.key.as_str() == key)
            .map(|attribute| attribute.value.as_str().into_owned())
    }

    /// The spans of `trace` named `name` that are `wanted`.
    fn named(
        &self,
        trace: TraceId,
        name: &str,
        wanted: impl Fn(&SpanData) -> bool,
    ) -> Vec<&SpanData> {
        self.0
            .iter()
            .filter(|span| {
                span.span_context.trace_id() == trace && span.name == name && wanted(span)
            })
            .collect()
    }

    /// The one span of `trace` named `name` (the first one found, when several are).
    fn one(&self, trace: TraceId, name: &str, wanted: impl Fn(&SpanData) -> bool) -> &SpanData {
        match self.named(trace, name, wanted).first() {
            Some(span) => span,
            None => panic!(
                "no span {name} in trace {trace}; it has:\n{}",
                self.tree(trace)
            ),
        }
    }

    /// `span`'s parent, which must have been collected too.
    fn parent(&self, span: &SpanData) -> &SpanData {
        assert_ne!(
            span.parent_span_id,
            SpanId::INVALID,
            "{} has no parent",
            span.name
        );
        self.0
            .iter()
            .find(|candidate| candidate.span_context.span_id() == span.parent_span_id)
            .unwrap_or_else(|| {
                panic!(
                    "the parent {} of {} was not collected",
                    span.parent_span_id, span.name
                )
            })
    }

    /// `span`'s parent, which must be named `name`, be in the same trace and be of `kind`.
    fn parent_is(&self, span: &SpanData, name: &str, kind: SpanKind) -> &SpanData {
        let parent = self.parent(span);
        assert_eq!(parent.name, name, "the parent of {}", span.name);
        assert_eq!(parent.span_kind, kind, "{name}'s kind");
        assert_eq!(
            parent.span_context.trace_id(),
            span.span_context.trace_id(),
            "{} and its parent {name}",
            span.name
        );
        parent
    }

    /// Whether `ancestor` is `span`'s parent, or its parent's, and so on.
    fn descends_from(&self, span: &SpanData, ancestor: &SpanData) -> bool {
        let mut at = span;
        while at.parent_span_id != SpanId::INVALID {
            let Some(parent) = self
                .0
                .iter()
                .find(|candidate| candidate.span_context.span_id() == at.parent_span_id)
            else {
                return false;
            };
            if parent.span_context.span_id() == ancestor.span_context.span_id() {
                return true;
            }
            at = parent;
        }
        false
    }

    /// The tree of `trace`, one span a line, children indented under their parent in
    /// start order: printed for whoever reads the test's output.
    fn tree(&self, trace: TraceId) -> String {
        let mut members: Vec<&SpanData> = self
            .0
            .iter()
            .filter(|span| span.span_context.trace_id() == trace)
            .collect();
        members.sort_by_key(|span| span.start_time);
        let mut out = String::new();
        let roots = members.iter().filter(|span| {
            !members
                .iter()
                .any(|parent| parent.span_context.span_id() == span.parent_span_id)
        });
        for root in roots {
            Self::branch(&members, root, 0, &mut out);
        }
        out
    }

    fn branch(members: &[&SpanData], span: &SpanData, depth: usize, out: &mut String) {
        let detail = ["subject", "event", "provider"]
            .iter()
            .find_map(|key| Self::attribute(span, key))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:indent$}{} ({:?}) {detail}\n",
            "",
            span.name,
            span.span_kind,
            indent = depth * 2
        ));
        for child in members
            .iter()
            .filter(|child| child.parent_span_id == span.span_context.span_id())
        {
            Self::branch(members, child, depth + 1, out);
        }
    }
}

fn attribute_is<'a>(key: &'a str, value: &'a str) -> impl Fn(&SpanData) -> bool + 'a {
    move |span| Spans::attribute(span, key).is_some_and(|found| found == value)
}

fn any(_: &SpanData) -> bool {
    true
}

fn is_title_job(span: &SpanData) -> bool {
    Spans::attribute(span, "subject").is_some_and(|subject| subject.ends_with("jobs.title"))
}

/// The trace of a message, named by the delivery of its `message_created`.
fn first_trace(spans: &Spans, message_id: &str) -> Option<TraceId> {
    spans
        .0
        .iter()
        .find(|span| {
            span.name == "watch.deliver"
                && attribute_is("message_id", message_id)(span)
                && attribute_is("event", "message_created")(span)
        })
        .map(|span| span.span_context.trace_id())
}

#[tokio::test]
async fn one_message_is_one_trace_across_grpc_and_nats() {
    let collected = SpanCollector::default();
    let _telemetry =
        atelier_runtime::telemetry::init_with_exporter("atelier-mesh", collected.clone())
            .expect("the only subscriber of this process");
    let mesh = Mesh::start(MeshOptions::default()).await.expect("mesh");
    let bearer = mesh.bearer("alice").expect("token");
    let mut chat = ChatServiceClient::new(mesh.connect().await.expect("connect"));
    let mut watcher = Watcher::open(mesh.connect().await.expect("connect"), &bearer, None)
        .await
        .expect("watch");
    let conversation = new_conversation(&mut chat, &bearer)
        .await
        .expect("conversation");

    // A first picture, then an edit of it: only an edit (a message with a previous one)
    // asks the intent service, so the second message is the one whose trace is read.
    let mut message_ids = Vec::new();
    // Where a client that resumes replays the second message from.
    let mut before_the_second = None;
    for prompt in ["a red fox in the snow", "make it night-time"] {
        if !message_ids.is_empty() {
            before_the_second = watcher.cursor;
        }
        // No traceparent: the edge starts the trace.
        let message = send_prompt(&mut chat, &bearer, &conversation.id, prompt)
            .await
            .expect("send");
        loop {
            let event = watcher
                .next(Duration::from_secs(30))
                .await
                .expect("the pipeline's next event");
            if event.message_id != message.id {
                continue;
            }
            match event.payload {
                Some(proto::event::Payload::GenerationCompleted(_)) => break,
                Some(proto::event::Payload::GenerationFailed(failed)) => panic!("{failed:?}"),
                _ => {}
            }
        }
        message_ids.push(message.id);
    }
    let message_id = message_ids[1].as_str();

    // A second client resumes from before the second message: its events are replayed
    // from the log, each delivery in the message's trace too.
    let mut resumed = Watcher::open(
        mesh.connect().await.expect("connect"),
        &bearer,
        before_the_second,
    )
    .await
    .expect("resume");
    loop {
        let event = resumed
            .next(Duration::from_secs(10))
            .await
            .expect("a replayed event");
        if event.message_id == message_id
            && matches!(
                event.payload,
                Some(proto::event::Payload::GenerationCompleted(_))
            )
        {
            break;
        }
    }
    let of_the_message = attribute_is("message_id", message_id);

    // Spans end a little after the event the client saw (the job's after its ack): wait
    // for the last ones of the tree.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let spans = loop {
        let spans = Spans(collected.spans());
        let delivered = spans.0.iter().find(|span| {
            span.name == "watch.deliver"
                && of_the_message(span)
                && Spans::attribute(span, "event").as_deref() == Some("generation_completed")
                && attribute_is("replayed", "false")(span)
        });
        let complete = delivered.is_some_and(|delivered| {
            let trace = delivered.span_context.trace_id();
            [
                "job",
                "provider.render",
                "intent.analyze",
                "enhancement.enhance",
            ]
            .iter()
            .all(|name| !spans.named(trace, name, any).is_empty())
        });
        let titled = first_trace(&spans, &message_ids[0])
            .is_some_and(|first| !spans.named(first, "title_job", any).is_empty());
        if (complete && titled) || tokio::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The completion as the client received it: its delivery span names the trace.
    let delivered = spans
        .0
        .iter()
        .find(|span| {
            span.name == "watch.deliver"
                && of_the_message(span)
                && Spans::attribute(span, "event").as_deref() == Some("generation_completed")
                && attribute_is("replayed", "false")(span)
        })
        .expect("a watch.deliver span for the message's generation_completed");
    let trace = delivered.span_context.trace_id();
    assert_ne!(trace, TraceId::INVALID);
    eprintln!("the trace of one message:\n{}", spans.tree(trace));

    // Back from the client to the completion: edge (delivery, receipt from NATS), the
    // relay's publish, the conversation service's CompleteGeneration.
    let received = spans.parent_is(delivered, "events.receive", SpanKind::Consumer);
    let published = spans.parent_is(received, "outbox.publish", SpanKind::Producer);
    let completion = spans.parent_is(
        published,
        "atelier.conversation.v1.ConversationService/CompleteGeneration",
        SpanKind::Server,
    );

    // The generation worker's job, its consumer span a child of the relay's publish of
    // the job, itself in the conversation service's SendMessage, called by the edge's.
    let job = spans.one(trace, "job", |span| {
        Spans::attribute(span, "subject").is_some_and(|subject| subject.ends_with("jobs.generate"))
    });
    assert_eq!(job.span_kind, SpanKind::Consumer);
    let job_published = spans.parent_is(job, "outbox.publish", SpanKind::Producer);
    let conversation_send = spans.parent_is(
        job_published,
        "atelier.conversation.v1.ConversationService/SendMessage",
        SpanKind::Server,
    );
    let edge_send = spans.parent_is(
        conversation_send,
        "atelier.v1.ChatService/SendMessage",
        SpanKind::Server,
    );
    // The client sent no traceparent: the edge's span is the root.
    assert_eq!(edge_send.parent_span_id, SpanId::INVALID);
    assert!(!edge_send.parent_span_is_remote);
    assert!(
        spans.descends_from(completion, job),
        "CompleteGeneration is called from the job"
    );

    // Intent and enhancement: client spans of the job, each the parent of its server's
    // span, and running at the same time.
    let intent_call = spans.one(trace, "intent.analyze", any);
    assert_eq!(intent_call.span_kind, SpanKind::Client);
    assert!(spans.descends_from(intent_call, job));
    let intent_served = spans.one(trace, "atelier.intent.v1.IntentService/AnalyzeIntent", any);
    assert_eq!(
        spans.parent(intent_served).span_context.span_id(),
        intent_call.span_context.span_id()
    );
    let enhancement_calls = spans.named(trace, "enhancement.enhance", any);
    assert!(!enhancement_calls.is_empty(), "{}", spans.tree(trace));
    for call in &enhancement_calls {
        assert_eq!(call.span_kind, SpanKind::Client);
        assert!(spans.descends_from(call, job));
        let served = spans
            .named(
                trace,
                "atelier.enhancement.v1.EnhancementService/EnhancePrompt",
                |served| served.parent_span_id == call.span_context.span_id(),
            )
            .len();
        assert_eq!(served, 1, "the enhancement service served the call");
    }
    assert!(
        enhancement_calls.iter().any(|call| {
            call.start_time < intent_call.end_time && intent_call.start_time < call.end_time
        }),
        "intent and enhancement run in parallel"
    );

    // The provider's rendering, within the job, before the completion.
    let render = spans.one(trace, "provider.render", any);
    assert!(spans.descends_from(render, job));
    assert!(render.end_time <= completion.start_time);

    // The replayed completion: no `events.receive` on that path, its delivery is the
    // child of the relay's publish (it was read from the stream, with its headers).
    let replayed = spans.one(trace, "watch.deliver", |span| {
        attribute_is("replayed", "true")(span)
            && attribute_is("event", "generation_completed")(span)
    });
    assert_eq!(
        spans
            .parent_is(replayed, "outbox.publish", SpanKind::Producer)
            .span_context
            .span_id(),
        published.span_context.span_id()
    );

    // Progress is published by the worker itself, in an `events.publish` span of the job.
    for progress in spans.named(trace, "watch.deliver", |span| {
        attribute_is("event", "generation_progress")(span)
            && attribute_is("replayed", "false")(span)
    }) {
        let received = spans.parent_is(progress, "events.receive", SpanKind::Consumer);
        let published = spans.parent_is(received, "events.publish", SpanKind::Producer);
        assert!(spans.descends_from(published, job));
    }

    // Every event of the message the client received is in this trace, the queue
    // reporter's generation_queued too (its run reports many messages, and publishes
    // each in its own message's trace).
    let deliveries: Vec<&SpanData> = spans
        .0
        .iter()
        .filter(|span| span.name == "watch.deliver" && of_the_message(span))
        .collect();
    let mut kinds: Vec<String> = Vec::new();
    for delivery in &deliveries {
        let event = Spans::attribute(delivery, "event").unwrap_or_default();
        assert_eq!(
            delivery.span_context.trace_id(),
            trace,
            "{event} is delivered in the message's trace"
        );
        kinds.push(event);
    }
    for expected in ["message_created", "generation_started", "intent_resolved"] {
        assert!(
            kinds.iter().any(|kind| kind == expected),
            "{expected} in {kinds:?}"
        );
    }
    // And the first message is a trace of its own, where the title worker's job (the
    // first message of a conversation names it) is a child of the relay's publish.
    let first = first_trace(&spans, &message_ids[0]).expect("the first message's deliveries");
    assert_ne!(first, trace);
    let title_job = spans.one(first, "job", is_title_job);
    spans.parent_is(title_job, "outbox.publish", SpanKind::Producer);
    spans.one(first, "title_job", |span| {
        span.parent_span_id == title_job.span_context.span_id()
    });
}
