//! The real `steward-updater` killed at every point an automatic update passes (a persisted
//! transition, a published event, a Docker call of the swap): once; twice in a row (the
//! restarted updater killed again at its first point); and with the container removed while
//! the update is interrupted. The points are not listed by hand: a first, clean update logs
//! every point it passes (`STEWARD_FAILPOINTS` set empty), and each is then a kill.
//!
//! After each run: the updater starts and consumes; the update has exactly one terminal
//! event and no event twice; exactly one container has the name, running, on the digest it
//! had or the one it was going to (none after the removal); no swap container is left; the
//! record is terminal with an empty outbox. The event in hand at the kill is redelivered
//! (short ack wait) and changes nothing: the checks wait until the updater's consumer has
//! nothing pending or unacknowledged.
//!
//! `STEWARD_CRASH_POINTS=all` runs every point of every variant (the full matrix, a few
//! minutes); by default each variant runs every second point, offset by variant, so each
//! point is killed at least once per CI run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_bus::{Bus, StateStore};
use steward_events::records::{UpdateRecord, UPDATE_BUCKET};
use steward_events::{Digest, Event, ImageUpdated};
use steward_system_tests::apps::app;
use steward_system_tests::Proc;
use steward_testkit::docker::{docker, push_app};
use steward_testkit::{stored_events, unique_name, TestBus};

const TERMINAL: [&str; 3] = ["update.succeeded", "update.rolled_back", "update.failed"];

/// The recovery's own points, which a first update never passes.
const RECOVERY: [&str; 4] = ["restore", "restored", "restore:removed", "restore:renamed"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Once,
    Twice,
    Removed,
}

fn updater(bus: &Bus, scope: &str, failpoints: Option<&str>) -> Proc {
    let ns = bus.namespace();
    let mut env = vec![
        ("STEWARD_NATS_URL", bus.config().url.clone()),
        ("STEWARD_STREAM", ns.stream.clone()),
        ("STEWARD_SUBJECT_PREFIX", ns.prefix.clone()),
        ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{}", steward_testkit::free_port())),
        ("STEWARD_SCOPE", scope.to_owned()),
        ("STEWARD_HEALTH_TIMEOUT", "30s".into()),
        ("STEWARD_HEALTH_GRACE", "2s".into()),
        // The event in hand at a kill comes back within the run.
        ("STEWARD_ACK_WAIT", "2s".into()),
    ];
    if let Some(points) = failpoints {
        env.push(("STEWARD_FAILPOINTS", points.to_owned()));
    }
    Proc::start("steward-updater", &env)
}

/// Waits until `p` exits (`true`) or `bound` passes (`false`).
fn exits_within(p: &mut Proc, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn consuming(p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.logs().contains("\"consuming\"") {
        assert!(
            !matches!(p.child.try_wait(), Ok(Some(_))),
            "the updater exited at start:\n{}",
            p.logs()
        );
        assert!(Instant::now() < deadline, "the updater never consumed:\n{}", p.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn image_updated(app: &steward_system_tests::apps::App, to: &str) -> Event {
    Event::new(
        "steward-watcher/test",
        ImageUpdated {
            container: app.name.clone(),
            image: app.image.clone(),
            current_digest: Digest::parse(&app.v1).expect("digest"),
            new_digest: Digest::parse(to).expect("digest"),
            new_tag: None,
        },
    )
}

fn flow_events(all: &[Event], correlation: uuid::Uuid) -> Vec<&'static str> {
    all.iter().filter(|e| e.correlation_id == correlation).map(Event::event_type).collect()
}

fn containers_named(prefix: &str) -> Vec<String> {
    docker(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// The points a clean automatic update passes, in order, as kill specs (`name=n`: its n-th
/// hit).
async fn discover() -> Vec<String> {
    let bus = TestBus::new("crashfind").await;
    let scope = unique_name("scope");
    let app = app(&scope, "automatic", &[]);
    let v2 = push_app("v2", &app.image);
    let mut p = updater(&bus, &scope, Some(""));
    consuming(&mut p);
    let event = image_updated(&app, &v2);
    bus.publish(&event).await.expect("publish");
    wait_terminal(&bus, event.correlation_id, &p).await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut specs = vec![];
    for line in p.logs().lines() {
        let Some(name) = line.strip_prefix("failpoint: ") else { continue };
        let n = seen.entry(name.to_owned()).or_insert(0);
        *n += 1;
        specs.push(format!("{name}={n}"));
    }
    assert!(specs.len() >= 10, "too few failpoints found: {specs:?}\n{}", p.logs());
    specs
}

async fn wait_terminal(bus: &Bus, correlation: uuid::Uuid, p: &Proc) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let all = stored_events(bus).await;
        if flow_events(&all, correlation).iter().any(|t| TERMINAL.contains(t)) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "no terminal event: {:?}\n{}",
            flow_events(&all, correlation),
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits (at most 30 s) until the updater has nothing left to handle (the event in hand at
/// the kill came back after the ack wait and was settled) and the containers and the record
/// look finished; the assertions that follow say what is wrong if they never do.
async fn settled(bus: &Bus, name: &str, variant: Variant) {
    let js = async_nats::jetstream::new(bus.raw_client().clone());
    let records: StateStore<UpdateRecord> =
        StateStore::open(bus, UPDATE_BUCKET).await.expect("records");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let idle = match js.get_stream(&bus.namespace().stream).await {
            Ok(stream) => match stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("updater")
                .await
            {
                Ok(mut consumer) => consumer
                    .info()
                    .await
                    .is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0),
                Err(_) => false,
            },
            Err(_) => false,
        };
        let names = containers_named(name);
        let containers_done =
            if variant == Variant::Removed { names.is_empty() } else { names == [name] };
        let record_done = records
            .get(name)
            .await
            .ok()
            .flatten()
            .is_some_and(|v| v.value.step.is_terminal() && v.value.outbox.is_empty());
        if idle && containers_done && record_done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One kill run; panics with the spec and what was found when an invariant fails.
async fn run(spec: &str, variant: Variant, all_points: &[String]) {
    let bus = TestBus::new("crashrun").await;
    let scope = unique_name("scope");
    let app = app(&scope, "automatic", &[]);
    let v2 = push_app("v2", &app.image);
    let mut first = updater(&bus, &scope, Some(spec));
    consuming(&mut first);
    let event = image_updated(&app, &v2);
    bus.publish(&event).await.expect("publish");
    assert!(
        exits_within(&mut first, Duration::from_secs(60)),
        "{spec}: never reached\n{}",
        first.logs()
    );
    assert!(first.logs().contains("aborting"), "{spec}: exited otherwise:\n{}", first.logs());
    match variant {
        Variant::Once => {}
        Variant::Twice => {
            // Killed again at the first point its recovery passes.
            let mut names: Vec<&str> =
                all_points.iter().filter_map(|s| s.split('=').next()).collect();
            names.extend(RECOVERY);
            names.sort_unstable();
            names.dedup();
            let mut second = updater(&bus, &scope, Some(&names.join(",")));
            if !exits_within(&mut second, Duration::from_secs(20)) {
                second.terminate(Duration::from_secs(20));
            }
        }
        Variant::Removed => {
            // `compose down` while the updater is away: every container of the app goes.
            for name in containers_named(&app.name) {
                docker(&["rm", "-f", &name]);
            }
        }
    }
    let mut last = updater(&bus, &scope, None);
    consuming(&mut last);
    let all = wait_terminal(&bus, event.correlation_id, &last).await;
    settled(&bus, &app.name, variant).await;
    let all_after = stored_events(&bus).await;
    let flow = flow_events(&all_after, event.correlation_id);
    let context = || format!("{spec} ({variant:?}): {flow:?}\n{}", last.logs());
    let terminal: Vec<&&str> = flow.iter().filter(|t| TERMINAL.contains(t)).collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {}", context());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &flow {
        *counts.entry(t).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "an event twice: {}", context());
    assert!(all_after.len() >= all.len());
    let names = containers_named(&app.name);
    if variant == Variant::Removed {
        assert!(names.is_empty(), "containers after the removal: {names:?}: {}", context());
    } else {
        assert_eq!(
            names,
            std::slice::from_ref(&app.name),
            "exactly one container, no swap names: {}",
            context()
        );
        assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &app.name]), "true");
        let image = docker(&["inspect", "-f", "{{.Image}}", &app.name]);
        let digests = docker(&["image", "inspect", "-f", "{{json .RepoDigests}}", &image]);
        let expected = if *terminal[0] == "update.succeeded" { &v2 } else { &app.v1 };
        assert!(digests.contains(expected.as_str()), "runs {digests}: {}", context());
    }
    let records: StateStore<UpdateRecord> =
        StateStore::open(&bus, UPDATE_BUCKET).await.expect("records");
    let record = records.get(&app.name).await.expect("get").expect("record").value;
    assert!(record.step.is_terminal(), "{:?}: {}", record.step, context());
    assert!(record.outbox.is_empty(), "outbox left: {}", context());
    assert!(last.terminate(Duration::from_secs(30)).is_some(), "the updater did not stop");
    // One line per run, for docs/reliability.md's matrix (`--nocapture`).
    eprintln!("crash-matrix: {variant:?} {spec} -> {} ({} events)", terminal[0], flow.len());
}

/// The points this variant runs: all, or every second one (offset by variant).
fn sample(points: &[String], offset: usize) -> Vec<String> {
    if std::env::var("STEWARD_CRASH_POINTS").as_deref() == Ok("all") {
        return points.to_vec();
    }
    points.iter().skip(offset % 2).step_by(2).cloned().collect()
}

async fn campaign(variant: Variant, offset: usize) {
    let points = discover().await;
    let chosen = sample(&points, offset);
    eprintln!("{variant:?}: killing at {} of {} points: {chosen:?}", chosen.len(), points.len());
    for spec in &chosen {
        run(spec, variant, &points).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_once_at_each_point_of_an_automatic_update() {
    campaign(Variant::Once, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_in_a_row_at_each_point_of_an_automatic_update() {
    campaign(Variant::Twice, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_point_then_the_container_removed() {
    campaign(Variant::Removed, 0).await;
}
