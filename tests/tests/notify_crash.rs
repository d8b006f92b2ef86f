//! The notifier's kill matrix (issue 16, "nothing mailed twice"): the real `steward-notifier`
//! with the test bed's SMTP server and NATS, killed (SIGABRT at a failpoint) at every point a
//! clean delivery of a burst of three events passes: after an event is queued (before its
//! ack), after a message is fixed in the outbox (before it is sent), after the server accepted
//! it, after `notify.sent` was published, after the entries were recorded as sent. A fourth
//! event comes while the notifier is dead. Each point once (started again) and twice (started
//! again with every point armed, then again).
//!
//! After each run: every event is mailed in exactly one message (one `Message-ID`); a message
//! arrives once, except when the kill fell between the server accepting it and the outbox
//! recording it, where it may arrive again as the very same message (same `Message-ID`,
//! subject and text: SMTP cannot tell the notifier whether a message it accepted was
//! recorded, and a lost critical mail is worse than a repeated one); every outbox entry is
//! `Sent`; each event is in exactly one `notify.sent` in the stream; the notifier stops with
//! 0 on SIGTERM.
//!
//! `STEWARD_CRASH_POINTS=all` runs every point in both variants; by default each point runs
//! in one variant, alternating, which one moving with the crash seed (the day, or
//! `STEWARD_CRASH_SEED`; printed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use steward_bus::{Bus, StateStore};
use steward_events::records::OUTBOX_BUCKET;
use steward_events::{Event, EventData};
use steward_notifier::outbox::{self, ChannelKind, Entry, EntryState};
use steward_system_tests::mail::{
    health_failed, mails_to, testbed_maildir, testbed_notifier_env, Mail,
};
use steward_system_tests::{crash, failpoints_passed, service_env, Proc};
use steward_testkit::{stored_events, unique_name, TestBus};

/// The points a delivery may be killed at and its recovery passes (armed in the twice variant).
const NAMES: [&str; 5] =
    ["notify:queued", "notify:sending", "notify:delivered", "notify:published", "notify:recorded"];
/// Points after which the server has accepted the message but the outbox does not say so.
const ACCEPTED_UNRECORDED: [&str; 2] = ["notify:delivered", "notify:published"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Once,
    Twice,
}

fn notifier(bus: &Bus, to: &str, failpoints: Option<&str>) -> Proc {
    let mut extra = testbed_notifier_env(to);
    extra.push(("STEWARD_ACK_WAIT", "2s".into()));
    extra.push(("STEWARD_SHUTDOWN_GRACE", "10s".into()));
    if let Some(points) = failpoints {
        extra.push(("STEWARD_FAILPOINTS", points.to_owned()));
    }
    Proc::start("steward-notifier", &service_env(bus, &extra))
}

fn consuming(p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.logs().contains("\"consuming\"") {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("the notifier exited at start ({status}):\n{}", p.logs());
        }
        assert!(Instant::now() < deadline, "the notifier never consumed:\n{}", p.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The outbox entries of `events` (email channel); `None` while the bucket cannot be read.
async fn entries(bus: &Bus, events: &[Event]) -> Option<Vec<Entry>> {
    let store: StateStore<Entry> = StateStore::open(bus, OUTBOX_BUCKET).await.ok()?;
    let mut out = vec![];
    for e in events {
        out.push(store.get(&outbox::key(ChannelKind::Email, e)).await.ok()??.value);
    }
    Some(out)
}

/// Waits until every event's entry is `Sent`, then a little longer for a mail sent twice.
async fn wait_sent(bus: &Bus, events: &[Event], p: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(entries) = entries(bus, events).await {
            if entries.iter().all(|e| e.state == EntryState::Sent) {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not every event was sent:\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The invariants of one run (see the module documentation).
async fn check(bus: &Bus, to: &str, containers: &[String], events: &[Event], spec: &str) {
    let mails = mails_to(&testbed_maildir(), to);
    let context = || format!("{spec}: mails: {:#?}", subjects(&mails));
    let mut by_id: BTreeMap<String, Vec<&Mail>> = BTreeMap::new();
    for m in &mails {
        let id = m.message_id.clone().unwrap_or_else(|| panic!("a mail without Message-ID"));
        by_id.entry(id).or_default().push(m);
    }
    for c in containers {
        let ids: BTreeSet<&String> = by_id
            .iter()
            .filter(|(_, ms)| ms.iter().any(|m| m.text.contains(c.as_str())))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids.len(), 1, "{c} is in {} messages, not one: {}", ids.len(), context());
    }
    let repeat_allowed = ACCEPTED_UNRECORDED.iter().any(|p| spec.starts_with(p));
    for (id, ms) in &by_id {
        let bound = if repeat_allowed { 2 } else { 1 };
        assert!(ms.len() <= bound, "message {id} arrived {} times: {}", ms.len(), context());
        assert!(
            ms.iter().all(|m| m.subject == ms[0].subject && m.text == ms[0].text),
            "message {id} was sent again with other content: {}",
            context()
        );
    }
    let all = stored_events(bus).await;
    for e in events {
        let sent = all
            .iter()
            .filter(|s| matches!(&s.data, EventData::NotifySent(n) if n.about.contains(&e.id)))
            .count();
        assert_eq!(sent, 1, "{spec}: event {} is in {sent} notify.sent", e.id);
    }
}

fn subjects(mails: &[Mail]) -> Vec<(String, String)> {
    mails.iter().map(|m| (m.message_id.clone().unwrap_or_default(), m.subject.clone())).collect()
}

/// Three failures published together (one burst), their containers' names.
async fn publish_burst(bus: &Bus) -> (Vec<String>, Vec<Event>) {
    let containers: Vec<String> = (0..3).map(|i| unique_name(&format!("ncrash{i}"))).collect();
    let events: Vec<Event> = containers.iter().map(|c| health_failed(c)).collect();
    for e in &events {
        bus.publish(e).await.expect("publish");
    }
    (containers, events)
}

/// The points a clean delivery of a burst passes.
async fn discover() -> Vec<String> {
    let bus = TestBus::new("ncfind").await;
    let to = steward_system_tests::mail::unique_address("ncfind");
    let mut p = notifier(&bus, &to, Some(""));
    consuming(&mut p);
    let (_, events) = publish_burst(&bus).await;
    wait_sent(&bus, &events, &p).await;
    let specs = failpoints_passed(&p.logs());
    for name in NAMES {
        assert!(specs.iter().any(|s| s.starts_with(name)), "{name} not passed: {specs:?}");
    }
    specs
}

async fn run(spec: &str, variant: Variant) {
    let bus = TestBus::new("ncrash").await;
    let to = steward_system_tests::mail::unique_address("ncrash");
    let mut first = notifier(&bus, &to, Some(spec));
    consuming(&mut first);
    let (mut containers, mut events) = publish_burst(&bus).await;
    assert!(first.exits_within(Duration::from_secs(30)), "{spec}: never reached");
    assert!(first.logs().contains("aborting"), "{spec}: exited otherwise:\n{}", first.logs());
    // News that comes while the notifier is dead: a message fixed before the kill must not
    // take it in (it would be another message with the same events: mailed twice).
    let late = unique_name("ncrash-late");
    let event = health_failed(&late);
    bus.publish(&event).await.expect("publish");
    containers.push(late);
    events.push(event);
    if variant == Variant::Twice {
        let mut second = notifier(&bus, &to, Some(&NAMES.join(",")));
        if !second.exits_within(Duration::from_secs(15)) {
            second.terminate(Duration::from_secs(15));
        }
    }
    let mut last = notifier(&bus, &to, None);
    consuming(&mut last);
    wait_sent(&bus, &events, &last).await;
    check(&bus, &to, &containers, &events, spec).await;
    assert_eq!(last.terminate(Duration::from_secs(20)), Some(0), "{spec}: no clean stop");
}

/// The points one variant runs: all with `STEWARD_CRASH_POINTS=all`, else every second,
/// which half moving with the crash seed (printed): the two variants together kill every
/// point, each in the other variant the next day.
fn sample(variant: Variant, points: &[String], offset: u64) -> Vec<String> {
    if crash::full() {
        return points.to_vec();
    }
    let seed = crash::seed();
    let chosen: Vec<String> = crash::shared(points.len(), 2, offset, seed)
        .into_iter()
        .map(|i| points[i].clone())
        .collect();
    crash::announce(&format!("notify crash {variant:?}"), &chosen, points.len(), seed);
    chosen
}

async fn matrix(variant: Variant, offset: u64) {
    let points = discover().await;
    let started = Instant::now();
    let mine = sample(variant, &points, offset);
    for spec in &mine {
        let t = Instant::now();
        run(spec, variant).await;
        eprintln!("notify crash: {variant:?} at {spec}: ok in {:.1}s", t.elapsed().as_secs_f64());
    }
    eprintln!(
        "notify crash: {variant:?}: {} points in {:.1}s (of {points:?})",
        mine.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_killed_once_at_each_point_mails_each_event_in_one_message() {
    matrix(Variant::Once, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifier_killed_twice_in_a_row_at_each_point_mails_each_event_in_one_message() {
    matrix(Variant::Twice, 1).await;
}

/// An event stored again after the stream's duplicate window (2 min) has passed (here: stored
/// without its `Nats-Msg-Id`, which has the same effect) is recognised by its id and not
/// mailed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_again_after_the_duplicate_window_is_not_mailed_again() {
    let bus = TestBus::new("ncagain").await;
    let to = steward_system_tests::mail::unique_address("ncagain");
    let mut p = notifier(&bus, &to, None);
    consuming(&mut p);
    let (_, events) = publish_burst(&bus).await;
    wait_sent(&bus, &events, &p).await;
    assert_eq!(mails_to(&testbed_maildir(), &to).len(), 1, "one mail for the burst");
    // A fresh process: nothing it remembers in memory can recognise the copies.
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0));
    let mut p = notifier(&bus, &to, None);
    consuming(&mut p);

    let client = bus.raw_client();
    for e in &events {
        let subject = bus.namespace().subject(e.event_type());
        client.publish(subject, e.encode().expect("encode").into()).await.expect("publish again");
    }
    client.flush().await.expect("flush");
    let again = stored_events(&bus).await;
    let copies = again.iter().filter(|s| s.id == events[0].id).count();
    assert_eq!(copies, 2, "the copy is stored (the stream did not drop it)");
    // Past the group window and a redelivery; nothing more may come.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(mails_to(&testbed_maildir(), &to).len(), 1, "mailed again");
    let logs = p.logs();
    assert!(
        logs.contains("already queued or sent") || logs.contains("already handled"),
        "the copies were not recognised: {logs}"
    );
}
