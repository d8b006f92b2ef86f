//! The bus against a real NATS server with JetStream (the test bed's, or a private one).

use std::time::Duration;

use steward_bus::{
    BusError, ConsumerSpec, Idempotency, Inbox, ReplayQuery, StateStore, DLQ_REASON,
};
use steward_events::{samples, Event, EventData, WatchRequested};
use steward_testkit::{bus_config, NatsServer, TestBus};

const WAIT: Duration = Duration::from_secs(10);

async fn next(inbox: &mut steward_bus::Inbox) -> steward_bus::Delivery {
    tokio::time::timeout(WAIT, inbox.next()).await.expect("a delivery within 10 s")
}

async fn replay_all(bus: &steward_bus::Bus, query: ReplayQuery) -> Vec<steward_bus::Replayed> {
    let mut replay = bus.replay(query).await.expect("replay");
    let mut out = vec![];
    while let Some(item) = tokio::time::timeout(WAIT, replay.next()).await.expect("replay stalled")
    {
        out.push(item.expect("replay item"));
    }
    out
}

/// The consumer of `spec` as `steward setup` makes it, then its inbox.
async fn provisioned(bus: &TestBus, spec: ConsumerSpec) -> Inbox {
    bus.ensure_consumer(&spec).await.expect("provision consumer");
    bus.inbox(spec).await.expect("inbox")
}

#[tokio::test]
async fn every_event_type_round_trips_through_consumer_and_replay() {
    let bus = TestBus::new("roundtrip").await;
    let start = time::OffsetDateTime::now_utc() - Duration::from_millis(5);
    let types: Vec<&str> = EventData::ALL_TYPES.to_vec();
    let mut inbox = provisioned(&bus, ConsumerSpec::new("all", &types)).await;
    let cause = Event::new("test", WatchRequested::default());
    let sent: Vec<Event> =
        samples::all("gitea").into_iter().map(|d| Event::caused_by(&cause, "test", d)).collect();
    for event in &sent {
        let published = bus.publish(event).await.expect("publish");
        assert!(!published.duplicate);
    }
    for event in &sent {
        let d = next(&mut inbox).await;
        assert_eq!(d.event_type, event.event_type());
        assert_eq!(d.event.as_ref().expect("decodes"), event, "fields intact through the consumer");
        d.ack().await.expect("ack");
    }
    let replayed = replay_all(&bus, ReplayQuery { since: Some(start), ..Default::default() }).await;
    let events: Vec<Event> = replayed.into_iter().map(|r| r.event.expect("decodes")).collect();
    assert_eq!(events, sent, "replay by start time returns every event, in order, intact");
}

#[tokio::test]
async fn a_duplicate_publish_is_stored_once() {
    let bus = TestBus::new("dedup").await;
    let event = Event::new("test", WatchRequested::default());
    let first = bus.publish(&event).await.expect("first");
    let second = bus.publish(&event).await.expect("second");
    assert!(!first.duplicate);
    assert!(second.duplicate, "same Nats-Msg-Id within the window is a duplicate");
    assert_eq!(first.sequence, second.sequence);
    // An outbox flushed again after a restart carries a new trace context, and an event
    // rebuilt under its fixed id (`notify.sent`) a new time and source: still this event.
    let mut restamped = event.clone();
    restamped.trace.traceparent =
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    restamped.time += time::Duration::seconds(7);
    restamped.source = "test/another-process".into();
    let third = bus.publish(&restamped).await.expect("again, traced");
    assert_eq!((third.duplicate, third.sequence), (true, first.sequence));
    let other = bus.publish(&Event::new("test", WatchRequested::default())).await.expect("third");
    assert!(!other.duplicate);
    let stored = replay_all(&bus, ReplayQuery::default()).await;
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_with_its_reason_and_does_not_block() {
    let bus = TestBus::new("poison").await;
    let ns = bus.namespace().clone();
    let mut inbox = provisioned(&bus, ConsumerSpec::new("svc", &["watch.requested"])).await;
    // Not an event at all, then a good one behind it.
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    js.publish(ns.subject("watch.requested"), "{\"not\":\"an event\"}".into())
        .await
        .expect("publish raw")
        .await
        .expect("ack");
    let good = Event::new("test", WatchRequested::default());
    bus.publish(&good).await.expect("publish good");

    let poison = next(&mut inbox).await;
    let err = poison.event.as_ref().expect_err("poison does not decode").to_string();
    poison.dead_letter(&format!("cannot decode: {err}")).await.expect("dead letter");

    let d = next(&mut inbox).await;
    assert_eq!(d.event.as_ref().expect("good event").id, good.id, "the consumer moved on");
    d.ack().await.expect("ack");

    let dead =
        replay_all(&bus, ReplayQuery { subjects: vec!["dlq.>".into()], ..Default::default() })
            .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_type, "dlq.svc");
    let reason = dead[0].dead_letter_reason.as_deref().expect("reason header");
    assert!(reason.contains("cannot decode") && reason.contains("missing field"), "{reason}");

    // Terminated: never redelivered.
    assert!(tokio::time::timeout(Duration::from_secs(2), inbox.next()).await.is_err());
    let _ = DLQ_REASON;
}

#[tokio::test]
async fn an_unacked_event_is_redelivered_and_counts_attempts() {
    let bus = TestBus::new("redeliver").await;
    let mut spec = ConsumerSpec::new("svc", &["watch.requested"]);
    spec.ack_wait = Duration::from_secs(1);
    let mut inbox = provisioned(&bus, spec).await;
    let event = Event::new("test", WatchRequested::default());
    bus.publish(&event).await.expect("publish");
    let first = next(&mut inbox).await;
    assert_eq!(first.attempt, 1);
    first.nak(Duration::ZERO).await.expect("nak");
    let second = next(&mut inbox).await;
    assert_eq!(second.attempt, 2);
    assert_eq!(second.event.as_ref().expect("event").id, event.id);
    second.ack().await.expect("ack");
}

#[tokio::test]
async fn a_consumer_of_several_types_skips_the_others() {
    let bus = TestBus::new("skip").await;
    let mut inbox =
        provisioned(&bus, ConsumerSpec::new("svc", &["backup.done", "image.updated"])).await;
    let all = samples::all("c");
    for data in &all {
        bus.publish(&Event::new("test", data.clone())).await.expect("publish");
    }
    let mut got = vec![];
    for _ in 0..2 {
        let d = next(&mut inbox).await;
        got.push(d.event_type.clone());
        d.ack().await.expect("ack");
    }
    assert_eq!(got, ["image.updated", "backup.done"], "stream order kept, others skipped");
    assert!(tokio::time::timeout(Duration::from_secs(1), inbox.next()).await.is_err());
}

#[tokio::test]
async fn state_store_compare_and_set_refuses_stale_writes() {
    let bus = TestBus::new("kv").await;
    bus.ensure_state_bucket("FLOWS").await.expect("provision");
    let store: StateStore<serde_json::Value> = StateStore::open(&bus, "FLOWS").await.expect("open");
    let r1 = store.create("gitea", &serde_json::json!({"step": "backup"})).await.expect("create");
    assert!(matches!(
        store.create("gitea", &serde_json::json!({})).await,
        Err(BusError::Conflict { expected: None, .. })
    ));
    let r2 = store.update("gitea", &serde_json::json!({"step": "pull"}), r1).await.expect("update");
    assert!(matches!(
        store.update("gitea", &serde_json::json!({"step": "stale"}), r1).await,
        Err(BusError::Conflict { expected: Some(_), .. })
    ));
    let now = store.get("gitea").await.expect("get").expect("present");
    assert_eq!((now.value["step"].as_str(), now.revision), (Some("pull"), r2));
    assert_eq!(store.keys().await.expect("keys"), ["gitea"]);
    store.delete("gitea").await.expect("delete");
    assert!(store.get("gitea").await.expect("get").is_none());
}

#[tokio::test]
async fn a_rollup_cannot_wipe_a_state_bucket() {
    // A writer of one key must not be able to erase every other key: a publish with
    // `Nats-Rollup: all` on any subject of a bucket that allows rollups purges the bucket.
    let bus = TestBus::new("kvrollup").await;
    bus.ensure_state_bucket("FLOWS").await.expect("provision");
    let store: StateStore<serde_json::Value> = StateStore::open(&bus, "FLOWS").await.expect("open");
    store.create("vps-a.gitea", &serde_json::json!({"step": "backup"})).await.expect("create");
    let subject = format!("$KV.{}.vps-b.x", bus.namespace().bucket("FLOWS"));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "all");
    let client = async_nats::connect(&bus.config().url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let refused = match js.publish_with_headers(subject, headers, "{}".into()).await {
        Err(_) => true,
        Ok(ack) => ack.await.is_err(),
    };
    assert!(refused, "the server took a rollup into a state bucket");
    assert!(store.get("vps-a.gitea").await.expect("get").is_some(), "the other key was wiped");
}

#[tokio::test]
async fn state_store_reads_every_current_value_in_one_pass() {
    let bus = TestBus::new("kvall").await;
    bus.ensure_state_bucket("ALL").await.expect("provision");
    let store: StateStore<serde_json::Value> = StateStore::open(&bus, "ALL").await.expect("open");
    let bound = Duration::from_secs(5);
    assert!(store.all(bound).await.expect("empty").is_empty(), "an empty bucket ends at once");
    for key in ["a", "b", "c"] {
        store.create(key, &serde_json::json!({"v": 1})).await.expect("create");
    }
    let a = store.get("a").await.expect("get").expect("a").revision;
    let a2 = store.update("a", &serde_json::json!({"v": 2}), a).await.expect("update");
    store.delete("b").await.expect("delete");
    let all = store.all(bound).await.expect("all");
    let mut keys: Vec<&String> = all.keys().collect();
    keys.sort();
    assert_eq!(keys, ["a", "c"], "deleted keys are not values");
    assert_eq!((all["a"].value["v"].as_i64(), all["a"].revision), (Some(2), a2));
    // The revision read is the one a compare-and-set needs.
    store.update("c", &serde_json::json!({"v": 3}), all["c"].revision).await.expect("cas");
    store.delete("a").await.expect("delete");
    store.delete("c").await.expect("delete");
    assert!(store.all(bound).await.expect("only deletions").is_empty());
}

#[tokio::test]
async fn idempotency_does_the_work_once() {
    let bus = TestBus::new("idem").await;
    let idem = Idempotency::open(&bus, "svc").await.expect("open");
    let other = Idempotency::open(&bus, "other").await.expect("open");
    let id = Event::new("test", WatchRequested::default());
    let mut runs = 0;
    for _ in 0..3 {
        let r: Result<Option<()>, BusError> = idem
            .once(&id, async {
                runs += 1;
                Ok(())
            })
            .await;
        r.expect("once");
    }
    assert_eq!(runs, 1);
    assert!(!other.is_done(&id).await.expect("check"), "scopes are separate");
    // Failed work is not marked: it runs again.
    let failing: Result<Option<()>, BusError> =
        other.once(&id, async { Err(BusError::NotConnected) }).await;
    assert!(failing.is_err());
    assert!(!other.is_done(&id).await.expect("check"));
    // Another participant's message under the same id (another type, or the same type about
    // another host) is another event: handling it first does not mark the real one.
    let squatter = Event { host: Some("vps-b".into()), ..id.clone() };
    let mut copy = id.clone();
    copy.data = samples::all("gitea")
        .into_iter()
        .find(|d| d.event_type() != "watch.requested")
        .expect("another type");
    for other_event in [&squatter, &copy] {
        assert_eq!(other_event.id, id.id);
        assert!(!idem.is_done(other_event).await.expect("check"), "{}", other_event.identity());
    }
}

#[tokio::test]
async fn replay_filters_by_time_subject_and_container() {
    let bus = TestBus::new("filter").await;
    for data in samples::all("gitea").into_iter().chain(samples::all("nginx")) {
        bus.publish(&Event::new("test", data)).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let late = Event::new("test", samples::all("gitea").remove(1));
    bus.publish(&late).await.expect("publish");

    let after = replay_all(&bus, ReplayQuery { since: Some(middle), ..Default::default() }).await;
    assert_eq!(after.len(), 1);
    let before = replay_all(&bus, ReplayQuery { until: Some(middle), ..Default::default() }).await;
    assert_eq!(before.len(), 2 * EventData::ALL_TYPES.len());
    let updates =
        replay_all(&bus, ReplayQuery { subjects: vec!["update.>".into()], ..Default::default() })
            .await;
    // Every `update.*` type's sample, for each of the two containers.
    let update_types = EventData::ALL_TYPES.iter().filter(|t| t.starts_with("update.")).count();
    assert_eq!(updates.len(), 2 * update_types);
    assert!(update_types >= 7, "the update subjects: {update_types}");
    let two = replay_all(
        &bus,
        ReplayQuery {
            subjects: vec!["health.failed".into(), "backup.*".into()],
            container: Some("nginx".into()),
            ..Default::default()
        },
    )
    .await;
    // health.failed for nginx, and backup.requested is the only backup event naming a container.
    let kinds: Vec<&str> = two.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(kinds, ["backup.requested", "health.failed"]);
}

#[tokio::test]
async fn publishing_while_nats_is_down_waits_then_fails_loudly_or_succeeds_when_it_returns() {
    let mut server = NatsServer::start();
    let mut cfg = bus_config(&server.url(), "outage");
    cfg.publish_timeout = Duration::from_secs(2);
    cfg.request_timeout = Duration::from_millis(500);
    let bus = TestBus::with_config(cfg).await;

    server.kill();
    let started = std::time::Instant::now();
    let err = bus
        .publish(&Event::new("test", WatchRequested::default()))
        .await
        .expect_err("NATS is down");
    assert!(matches!(err, BusError::PublishTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded: {:?}", started.elapsed());

    // Down now, back within the bound: the publish goes through, once.
    let event = Event::new("test", WatchRequested::default());
    let publisher = {
        let bus = bus.bus.clone();
        let event = event.clone();
        tokio::spawn(async move { bus.publish(&event).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.start_again();
    // The first attempt may have been buffered and stored on reconnect, in which case the
    // retry is reported as a duplicate: either way the event is stored exactly once.
    publisher.await.expect("join").expect("published after NATS returned");
    let stored = replay_all(&bus, ReplayQuery::default()).await;
    assert_eq!(
        stored.iter().filter(|r| r.event.as_ref().is_ok_and(|e| e.id == event.id)).count(),
        1
    );
}

#[tokio::test]
async fn an_event_whose_type_is_not_its_subject_is_refused_by_the_inbox() {
    let bus = TestBus::new("wrongsubject").await;
    let ns = bus.namespace().clone();
    let mut inbox = provisioned(&bus, ConsumerSpec::new("svc", &["image.updated"])).await;
    // A participant allowed to publish `image.updated` smuggles an approval inside it.
    let forged = samples::all("app")
        .into_iter()
        .find(|d| d.event_type() == "update.approved")
        .map(|d| Event::new("steward-watcher/x", d))
        .expect("an approval sample");
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    js.publish(ns.subject("image.updated"), forged.encode().expect("encode").into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let d = next(&mut inbox).await;
    assert_eq!(d.event_type, "image.updated");
    let err = d.event.as_ref().expect_err("the type is not the subject");
    assert!(
        matches!(err, steward_events::DecodeError::WrongSubject { subject, declared }
            if subject == "image.updated" && declared == "update.approved"),
        "{err}"
    );
    // The audit trail shows it as what it is: not an approval.
    let replayed = replay_all(&bus, ReplayQuery::default()).await;
    assert_eq!(replayed.len(), 1);
    assert!(replayed[0].event.is_err(), "replay decodes by subject too");
}

#[tokio::test]
async fn a_consumer_created_by_setup_starts_at_new_events_and_an_update_keeps_its_position() {
    let bus = TestBus::new("newonly").await;
    let old = Event::new("test", WatchRequested::default());
    bus.publish(&old).await.expect("publish");
    // Created (or re-created after a loss) while the stream already holds events.
    let spec = ConsumerSpec::new("late", &["watch.requested"]);
    assert!(bus.ensure_consumer(&spec).await.expect("create"), "created");
    let fresh = Event::new("test", WatchRequested::default());
    bus.publish(&fresh).await.expect("publish");
    let mut inbox = bus.inbox(spec.clone()).await.expect("inbox");
    let d = next(&mut inbox).await;
    assert_eq!(d.event.as_ref().expect("event").id, fresh.id, "never the old one");
    d.ack().await.expect("ack");
    assert!(tokio::time::timeout(Duration::from_secs(1), inbox.next()).await.is_err());
    drop(inbox);

    // Running setup again (an upgrade) changes settings, not the position.
    let later = Event::new("test", WatchRequested::default());
    bus.publish(&later).await.expect("publish");
    let mut tuned = spec.clone();
    tuned.ack_wait = Duration::from_secs(7);
    assert!(!bus.ensure_consumer(&tuned).await.expect("update"), "updated, not created");
    let mut inbox = bus.inbox(tuned).await.expect("inbox");
    assert_eq!(inbox.spec().ack_wait, Duration::from_secs(7));
    let d = next(&mut inbox).await;
    assert_eq!(d.event.as_ref().expect("event").id, later.id, "where it left off");
    d.ack().await.expect("ack");
}

#[tokio::test]
async fn services_only_look_up_what_setup_provisions() {
    let bus = TestBus::new("lookup").await;
    let missing = bus.inbox(ConsumerSpec::new("nobody", &["watch.requested"])).await;
    let err = missing.expect_err("no such consumer").to_string();
    assert!(err.contains("nobody") && err.contains("steward setup"), "{err}");
    let err = StateStore::<serde_json::Value>::open(&bus, "NOPE").await.expect_err("no bucket");
    assert!(err.to_string().contains("steward setup"), "{err}");
    // A namespace nobody provisioned: connecting waits (bounded), then names `steward setup`.
    let cfg = steward_bus::BusConfig {
        connect_timeout: Duration::from_millis(600),
        ..bus_config(&steward_testkit::testbed::nats_url(), "unprovisioned")
    };
    let err = steward_bus::Bus::connect(cfg, "test").await.expect_err("no stream").to_string();
    assert!(err.contains("stream") && err.contains("steward setup"), "{err}");
}

/// An agent's bus stamps its host on what it publishes; an event naming a host keeps it; a
/// central participant's bus adds none.
#[tokio::test]
async fn an_agents_events_carry_its_host() {
    let bus = TestBus::new("hoststamp").await;
    let start = time::OffsetDateTime::now_utc() - Duration::from_millis(5);
    let agent_cfg = steward_bus::BusConfig { host: Some("vps1".into()), ..bus.config().clone() };
    let agent = steward_bus::Bus::connect(agent_cfg, "agent").await.expect("agent connects");
    assert_eq!(agent.host(), Some("vps1"));
    let plain = Event::new("agent", WatchRequested::default());
    let named = Event::new("agent", WatchRequested::default()).with_host(Some("vps2".into()));
    let central = Event::new("cli", WatchRequested::default());
    agent.publish(&plain).await.expect("publish");
    agent.publish(&named).await.expect("publish");
    bus.publish(&central).await.expect("publish");
    let replayed = replay_all(&bus, ReplayQuery { since: Some(start), ..Default::default() }).await;
    let hosts: Vec<_> =
        replayed.into_iter().map(|r| r.event.expect("decodes")).map(|e| (e.id, e.host)).collect();
    assert_eq!(
        hosts,
        vec![(plain.id, Some("vps1".into())), (named.id, Some("vps2".into())), (central.id, None)]
    );
}

/// The reading consumers of `bus`'s stream, deleted behind the reader's back (what the server
/// does to an ephemeral consumer whose reader stalled past its heartbeats, or on a restart).
async fn delete_reading_consumers(bus: &TestBus) -> usize {
    use futures::StreamExt as _;
    let client = async_nats::connect(bus.config().url.as_str()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(&bus.namespace().stream).await.expect("stream");
    let mut names = vec![];
    let mut listed = stream.consumers();
    while let Some(info) = listed.next().await {
        let info = info.expect("consumer info");
        // Only the ephemeral ones: the services' durable consumers stay.
        if info.config.durable_name.is_none() {
            names.push(info.name);
        }
    }
    for name in &names {
        stream.delete_consumer(name).await.expect("delete consumer");
    }
    names.len()
}

#[tokio::test]
async fn a_followed_replay_carries_on_after_the_server_drops_its_consumer() {
    let bus = TestBus::new("reopen").await;
    let before =
        Event::new("test", WatchRequested { container: Some("gitea".into()), requested_by: None });
    bus.publish(&before).await.expect("publish");
    let mut replay = bus
        .replay(ReplayQuery {
            since: Some(time::OffsetDateTime::now_utc() - Duration::from_secs(60)),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("replay");
    let first = tokio::time::timeout(WAIT, replay.next()).await.expect("first").expect("open");
    assert_eq!(first.expect("item").event.expect("event").id, before.id);
    assert_eq!(delete_reading_consumers(&bus).await, 1, "the replay's consumer");
    let after =
        Event::new("test", WatchRequested { container: Some("nginx".into()), requested_by: None });
    bus.publish(&after).await.expect("publish");
    // The old code ended the replay with an error here ("consumer deleted", or "missed idle
    // heartbeat" when the server went quiet); now the reader reopens after the last message
    // it read: the next event, and not the first one again.
    let next = tokio::time::timeout(Duration::from_secs(30), replay.next())
        .await
        .expect("the replay carries on within 30 s")
        .expect("still open");
    assert_eq!(next.expect("not an error").event.expect("event").id, after.id);
}

#[tokio::test]
async fn an_export_carries_on_after_the_server_drops_its_consumer() {
    let bus = TestBus::new("reopen-export").await;
    // More than one pull's batch (2,000), so the reader asks the server again after the
    // consumer is gone.
    let sent = 2_500;
    for i in 0..sent {
        let e = Event::new(
            "test",
            WatchRequested { container: Some(format!("c{i}")), requested_by: None },
        );
        bus.publish(&e).await.expect("publish");
    }
    let mut export = bus.export().await.expect("export");
    let mut ids = vec![];
    while let Some(record) = tokio::time::timeout(Duration::from_secs(30), export.next())
        .await
        .expect("the export carries on within 30 s")
    {
        if let steward_bus::ExportRecord::Message(m) = record.expect("not an error") {
            ids.push(m.sequence);
            if ids.len() == 1 {
                assert_eq!(delete_reading_consumers(&bus).await, 1, "the export's consumer");
            }
        }
    }
    assert_eq!(ids.len(), sent, "every message once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

/// A state bucket the export cannot ask the server about (here its user may not: as with a
/// server that does not answer in time) fails the export, naming the bucket. Before, any
/// failure to open a bucket was taken for a missing one: a backup taken while the host's
/// NATS was away left the bucket out of its export without a word.
#[tokio::test]
async fn a_state_bucket_the_export_cannot_look_up_fails_it() {
    let ns = steward_bus::Namespace::unique("export-denied");
    let bucket = ns.bucket(&steward_bus::state_buckets()[0]);
    let dir = std::env::temp_dir().join(steward_testkit::unique_name("steward-nats-deny"));
    std::fs::create_dir_all(&dir).expect("config dir");
    let config = dir.join("nats.conf");
    let text = format!(
        "authorization {{ users = [\n  {{ user: all, password: all-secret }}\n  {{ user: reader, password: reader-secret, permissions: {{ publish: {{ allow: \">\", deny: \"$JS.API.STREAM.INFO.KV_{bucket}\" }} }} }}\n] }}\n"
    );
    std::fs::write(&config, text).expect("config");
    let server = steward_testkit::NatsServer::start_with_config(&config, vec![]);
    let as_user = |user: &str, password: &str| steward_bus::BusConfig {
        url: server.url(),
        credentials: Some(steward_bus::Credentials {
            user: user.into(),
            password: password.into(),
        }),
        namespace: ns.clone(),
        ..steward_bus::BusConfig::default()
    };
    let all = steward_bus::Bus::open(as_user("all", "all-secret"), "steward-test")
        .await
        .expect("connect");
    all.setup(&steward_bus::Setup::steward()).await.expect("setup");
    let reader = steward_bus::Bus::open(as_user("reader", "reader-secret"), "steward-test")
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let err = reader.export().await.expect_err("an export without the bucket");
    eprintln!("MEASURED the export failed after {:?}: {err}", started.elapsed());
    assert!(err.to_string().contains(&bucket), "{err}");
    // The whole export still works for a user who may look.
    all.export().await.expect("the export of a user who may look");
    let _ = std::fs::remove_dir_all(&dir);
}
