//! One trace per flow: the real services export their spans over OTLP/HTTP protobuf to a
//! receiver in this test (decoded with `opentelemetry-proto`, as a collector would), and an
//! approved update is one trace from the watcher's check through the updater, the health
//! service and the notifier, each span's parent the span that caused it. And a hostile trace
//! context: an event whose `traceparent` is malformed or of the wrong type is handled like
//! any other, in a new trace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use steward_bus::{Bus, ReplayQuery};
use steward_events::{Event, WatchRequested};
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::mail::{testbed_notifier_env, unique_address};
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::docker::push_app;
use steward_testkit::{unique_name, TestBus};

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Clone, Debug)]
struct Got {
    service: String,
    span: Span,
}

impl Got {
    fn attr(&self, key: &str) -> Option<String> {
        text(&self.span.attributes, key)
    }
    fn is(&self, service: &str, name: &str) -> bool {
        self.service == service && self.span.name == name
    }
}

fn text(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

/// An OTLP/HTTP trace receiver on a port of 127.0.0.1; stops when dropped.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Got>>>,
    /// Bodies that were not an `ExportTraceServiceRequest`.
    refused: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    async fn start() -> Self {
        let spans = Arc::new(Mutex::new(vec![]));
        let refused = Arc::new(Mutex::new(vec![]));
        let (s, r) = (spans.clone(), refused.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: bytes::Bytes| async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        let mut got = s.lock().expect("spans");
                        for rs in request.resource_spans {
                            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
                            let service = text(&attrs, "service.name").unwrap_or_default();
                            for ss in rs.scope_spans {
                                got.extend(
                                    ss.spans
                                        .into_iter()
                                        .map(|span| Got { service: service.clone(), span }),
                                );
                            }
                        }
                        let answer = ExportTraceServiceResponse::default().encode_to_vec();
                        (StatusCode::OK, [("content-type", "application/x-protobuf")], answer)
                    }
                    Err(e) => {
                        r.lock().expect("refused").push(e.to_string());
                        (StatusCode::BAD_REQUEST, [("content-type", "text/plain")], vec![])
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint: format!("http://{addr}"), spans, refused, server }
    }

    /// What a service needs to export here, at once rather than every 5 s.
    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ]
    }

    fn spans(&self) -> Vec<Got> {
        assert!(self.refused.lock().expect("refused").is_empty(), "undecodable exports");
        self.spans.lock().expect("spans").clone()
    }

    /// Waits (bounded) until `done` holds for the spans received.
    async fn wait(&self, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "{what}: got {:#?}", summary(&spans));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn summary(spans: &[Got]) -> Vec<String> {
    spans
        .iter()
        .map(|g| {
            format!(
                "{} {} trace={} span={} parent={}",
                g.service,
                g.span.name,
                hex(&g.span.trace_id),
                hex(&g.span.span_id),
                hex(&g.span.parent_span_id)
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn service(bin: &str, bus: &Bus, scope: &str, rx: &Receiver, more: &[(&str, String)]) -> Proc {
    let mut extra = vec![
        ("STEWARD_SCOPE", scope.to_owned()),
        ("STEWARD_HEALTH_TIMEOUT", "60s".into()),
        ("STEWARD_HEALTH_GRACE", "3s".into()),
    ];
    extra.extend(rx.env());
    extra.extend(more.iter().cloned());
    Proc::service(bin, bus, &extra)
}

/// The services of `span`'s ancestors, itself first, up to its trace's root; panics on a
/// parent that is not among `spans` (a broken link).
fn lineage<'a>(spans: &'a [Got], span: &'a Got) -> Vec<&'a Got> {
    let by_id: HashMap<&[u8], &Got> = spans.iter().map(|g| (&g.span.span_id[..], g)).collect();
    let mut chain = vec![span];
    let mut at = span;
    while !at.span.parent_span_id.is_empty() {
        at = by_id.get(&at.span.parent_span_id[..]).copied().unwrap_or_else(|| {
            panic!("{} {}: parent not exported: {:#?}", at.service, at.span.name, summary(spans))
        });
        assert_eq!(at.span.trace_id, span.span.trace_id, "a parent in another trace");
        chain.push(at);
        assert!(chain.len() < 1000, "a cycle of parents");
    }
    chain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_update_is_one_trace_across_the_services() {
    let rx = Receiver::start().await;
    let bus = TestBus::new("e2etrace").await;
    let scope = unique_name("scope");
    let app = app(&scope, "manual", &[]);
    let to = unique_address("trace");
    let _watcher = service("steward-watcher", &bus, &scope, &rx, &[]);
    let _updater = service("steward-updater", &bus, &scope, &rx, &[]);
    let _health = service("steward-health", &bus, &scope, &rx, &[]);
    let _notifier = service("steward-notifier", &bus, &scope, &rx, &testbed_notifier_env(&to));
    let v2 = push_app("v2", &app.image);

    steward(&bus, &["check"]);
    wait_event(&bus, "update.pending", Duration::from_secs(30)).await;
    let listed = steward(&bus, &["updates"]);
    let row = listed.lines().find(|l| l.contains(&app.name)).unwrap_or_else(|| panic!("{listed}"));
    let id = row.split_whitespace().next().expect("id");
    steward(&bus, &["approve", &id[..8]]);
    let events = wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    let flow = events[0].correlation_id.to_string();

    let root_of_flow = |spans: &[Got]| {
        spans
            .iter()
            .find(|g| {
                g.is("steward-watcher", "handle watch.requested")
                    && g.attr("correlation").as_deref() == Some(&flow)
            })
            .map(|g| g.span.trace_id.clone())
    };
    let wanted = [
        ("steward-watcher", "handle watch.requested"),
        ("steward-updater", "handle image.updated"),
        ("steward-notifier", "handle update.pending"),
        ("steward-updater", "handle update.approved"),
        ("steward-health", "handle update.started"),
        ("steward-health", "handle update.succeeded"),
        ("steward-notifier", "handle update.succeeded"),
        ("steward-notifier", "notify email"),
    ];
    let spans = rx
        .wait("every service's spans of the flow", |spans| {
            let Some(trace) = root_of_flow(spans) else { return false };
            wanted.iter().all(|(svc, name)| {
                spans.iter().any(|g| g.is(svc, name) && g.span.trace_id == trace)
            })
        })
        .await;
    let trace = root_of_flow(&spans).expect("the flow's trace");
    let flow_spans: Vec<Got> = spans.iter().filter(|g| g.span.trace_id == trace).cloned().collect();
    let find = |svc: &str, name: &str| {
        flow_spans
            .iter()
            .find(|g| g.is(svc, name))
            .unwrap_or_else(|| panic!("no {svc} {name}: {:#?}", summary(&flow_spans)))
    };

    // One trace: the check that started it is its root (the CLI exports nothing).
    let root = find("steward-watcher", "handle watch.requested");
    assert!(root.span.parent_span_id.is_empty(), "the check is the root");
    assert!(
        flow_spans.iter().all(|g| lineage(&flow_spans, g).last().map(|r| r.span.span_id.clone())
            == Some(root.span.span_id.clone())),
        "every span of the flow descends from the check: {:#?}",
        summary(&flow_spans)
    );

    // Causal order, by parent links: the notifier's report of the success descends from the
    // updater's handling of the approval, which descends (through `steward approve`, which
    // took the trace context from the update's record) from the updater's handling of the
    // news, which descends from the watcher's check.
    let names = |g: &Got| -> Vec<String> {
        lineage(&flow_spans, g).iter().map(|a| format!("{} {}", a.service, a.span.name)).collect()
    };
    let chain = names(find("steward-notifier", "handle update.succeeded"));
    let position = |what: &str| {
        chain.iter().position(|n| n == what).unwrap_or_else(|| panic!("{what} not in {chain:#?}"))
    };
    assert!(
        position("steward-updater handle update.approved")
            < position("steward-updater handle image.updated")
    );
    assert!(
        position("steward-updater handle image.updated")
            < position("steward-watcher handle watch.requested")
    );
    // The SMTP call of the first mail (the pending update) descends from the update's news.
    let mail = names(find("steward-notifier", "notify email"));
    assert!(mail.iter().any(|n| n == "steward-updater handle image.updated"), "{mail:#?}");

    // Attributes name the container, the image and both digests.
    let started = find("steward-health", "handle update.started");
    assert_eq!(started.attr("container").as_deref(), Some(app.name.as_str()));
    assert_eq!(started.attr("image").as_deref(), Some(app.image.as_str()));
    assert_eq!(started.attr("digest.from").as_deref(), Some(app.v1.as_str()));
    assert_eq!(started.attr("digest.to").as_deref(), Some(v2.as_str()));

    // The calls under the handling: the NATS publishes and the Docker engine's, as children.
    let approved = find("steward-updater", "handle update.approved");
    let under_approval = |prefix: &str| {
        flow_spans.iter().any(|g| {
            g.span.name.starts_with(prefix)
                && lineage(&flow_spans, g).iter().any(|a| a.span.span_id == approved.span.span_id)
        })
    };
    assert!(under_approval("docker "), "{:#?}", summary(&flow_spans));
    assert!(under_approval("publish"), "{:#?}", summary(&flow_spans));
    assert!(
        flow_spans.iter().any(|g| g.is("steward-watcher", "registry HEAD manifests")),
        "{:#?}",
        summary(&flow_spans)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_starts_a_new_trace_and_the_event_is_handled() {
    let rx = Receiver::start().await;
    let bus = TestBus::new("e2etracebad").await;
    // A scope no container has: the checks find nothing and touch nothing.
    let scope = unique_name("scope");
    let watcher = service("steward-watcher", &bus, &scope, &rx, &[]);
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    let subject = bus.namespace().subject("watch.requested");

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let cases = [
        ("valid", serde_json::json!(format!("00-{trace_id}-{parent_id}-01"))),
        ("malformed", serde_json::json!("00-not-a-trace-context-01")),
        ("zero trace id", serde_json::json!(format!("00-{}-{parent_id}-01", "0".repeat(32)))),
        ("wrong type", serde_json::json!({"traceparent": 42})),
        ("overlong", serde_json::json!(format!("00-{trace_id}-{parent_id}-01{}", "0".repeat(600)))),
    ];
    let mut ids = vec![];
    for (case, traceparent) in &cases {
        let event = Event::new(
            "test",
            WatchRequested { container: None, requested_by: Some((*case).to_owned()) },
        );
        let mut v: serde_json::Value =
            serde_json::from_slice(&event.encode().expect("encode")).expect("json");
        v["traceparent"] = traceparent.clone();
        v["tracestate"] = serde_json::json!("=,=,\u{1}");
        let payload = serde_json::to_vec(&v).expect("json");
        js.publish(subject.clone(), payload.into()).await.expect("publish").await.expect("ack");
        ids.push(event.id.to_string());
    }

    let handled = |spans: &[Got], id: &str| {
        spans
            .iter()
            .find(|g| {
                g.is("steward-watcher", "handle watch.requested")
                    && g.attr("id").as_deref() == Some(id)
            })
            .cloned()
    };
    let spans = rx
        .wait("every event handled", |spans| ids.iter().all(|id| handled(spans, id).is_some()))
        .await;
    for ((case, _), id) in cases.iter().zip(&ids) {
        let span = handled(&spans, id).expect("handled").span;
        assert_eq!(span.trace_id.len(), 16, "{case}");
        assert!(span.trace_id.iter().any(|b| *b != 0), "{case}: a valid trace id");
        if *case == "valid" {
            assert_eq!(hex(&span.trace_id), trace_id, "the sender's trace is joined");
            assert_eq!(hex(&span.parent_span_id), parent_id, "the sender's span is the parent");
        } else {
            assert_ne!(hex(&span.trace_id), trace_id, "{case}: a new trace");
            assert!(span.parent_span_id.is_empty(), "{case}: a root span");
        }
    }
    // Handled, not refused: nothing dead-lettered, no error logged.
    let logs = watcher.logs();
    assert!(!logs.contains("undecodable") && !logs.contains("\"ERROR\""), "{logs}");
    // (The default replay leaves dead letters out: asked for by subject.)
    let dlq = ReplayQuery { subjects: vec!["dlq.>".into()], ..Default::default() };
    let mut replay = bus.replay(dlq).await.expect("replay");
    let mut dead = vec![];
    while let Some(item) = replay.next().await {
        dead.push(item.expect("replayed").dead_letter_reason);
    }
    assert!(dead.is_empty(), "dead letters: {dead:?}");
}
