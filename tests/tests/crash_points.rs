//! The real `steward-updater` killed at every point an update passes (a persisted transition,
//! a published event, a Docker call of the swap), in four scenarios: an automatic update, a
//! broken release (the rollback's own path), a manual update approved and backed up first,
//! and an app with a container in its network namespace (the dependent's own recreation).
//! Each point is killed in three variants: once; twice in a row (the restarted updater killed
//! again at the first point its recovery passes); and with every container of the app removed
//! while the update is interrupted. The points are not listed by hand: a first, clean run of
//! the scenario logs every point it passes (`STEWARD_FAILPOINTS` set empty), and each is then
//! a kill.
//!
//! After each run: the updater starts and consumes; the update has exactly one terminal event
//! and no event twice; exactly one container has the name, running, on the digest it had or
//! the one it was going to (none after the removal); a dependent runs in that container's
//! namespace; no swap container is left; the record is terminal with an empty outbox. The
//! event in hand at the kill is redelivered (short ack wait) and changes nothing: the checks
//! wait until the updater's consumer has nothing pending or unacknowledged.
//!
//! The test plays the operator (it approves) and the backup service (it answers
//! `backup.requested` with `backup.done`): the updater is what is killed here; the backup
//! service's own kills are in `backup_crash.rs`.
//!
//! `STEWARD_CRASH_POINTS=all` runs every point in every variant (the full matrix);
//! `STEWARD_CRASH_POINTS=each` kills each point once, in one of the variants (rotating); by
//! default every fourth point of that, which fourth and which variant moving with the crash
//! seed (the day, or `STEWARD_CRASH_SEED`; printed), keeps CI short (`steward_system_tests::crash`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_bus::{Bus, StateStore};
use steward_events::records::{UpdateRecord, UPDATE_BUCKET};
use steward_events::{BackupDone, Digest, Event, EventData, ImageUpdated, UpdateApproved};
use steward_system_tests::apps::{app, App};
use steward_system_tests::{crash, service_env, Proc};
use steward_testkit::docker::{docker, push_app, Container};
use steward_testkit::{stored_events, unique_name, TestBus};

const TERMINAL: [&str; 3] = ["update.succeeded", "update.rolled_back", "update.failed"];

/// The recovery's own points, which a first update may never pass.
const RECOVERY: [&str; 4] = ["restore", "restored", "restore:removed", "restore:renamed"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Once,
    Twice,
    Removed,
}

const VARIANTS: [Variant; 3] = [Variant::Once, Variant::Twice, Variant::Removed];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// v1 → v2, automatic, no backup.
    Automatic,
    /// v1 → v3 (never healthy): rolled back.
    Broken,
    /// v1 → v2, manual: approved, backed up first.
    ManualBackup,
    /// v1 → v2 with a container in the app's network namespace.
    Dependent,
    /// v1 → v2 by an update, then `steward rollback` back to v1 (the kills hit the rollback).
    Rollback,
}

/// What a run works on: the app, its dependent if any, the release it goes to.
struct Stage {
    bus: TestBus,
    scope: String,
    /// Before `app`: fields drop in order, and Podman refuses to remove a container whose
    /// network namespace another still shares (the app stayed running after each run).
    dependent: Option<Container>,
    app: App,
    /// The digest the flow goes to.
    target: String,
    /// The digest the container runs before the flow (and after it, unless it succeeds).
    before: String,
}

async fn stage(scenario: Scenario) -> Stage {
    let bus = TestBus::new("crashrun").await;
    let scope = unique_name("scope");
    let (policy, labels) = match scenario {
        Scenario::ManualBackup => ("manual", vec!["steward.update.backup=true".to_owned()]),
        _ => ("automatic", vec![]),
    };
    let app = app(&scope, policy, &labels);
    let release = if scenario == Scenario::Broken { "v3" } else { "v2" };
    let mut target = push_app(release, &app.image);
    let mut before = app.v1.clone();
    if scenario == Scenario::Rollback {
        // The update the rollback undoes, by a clean updater.
        let mut p = updater(&bus, &scope, None);
        consuming(&mut p);
        let event = image_updated(&app, &target);
        bus.publish(&event).await.expect("publish");
        let all = wait_terminal(&bus, event.correlation_id, &p).await;
        assert!(
            flow_events(&all, event.correlation_id).contains(&"update.succeeded"),
            "the update before the rollback failed:\n{}",
            p.logs()
        );
        p.terminate(Duration::from_secs(30));
        (before, target) = (target, app.v1.clone());
    }
    let dependent = (scenario == Scenario::Dependent).then(|| {
        Container::run(
            &format!("{}-side", app.name),
            &[
                "--network",
                &format!("container:{}", app.name),
                "--entrypoint",
                "/bin/sleep",
                &app.image,
                "3600",
            ],
        )
    });
    Stage { bus, scope, app, target, before, dependent }
}

/// The event that starts the flow under test: the news, or the operator's rollback.
fn request(s: &Stage, scenario: Scenario) -> Event {
    match scenario {
        Scenario::Rollback => Event::new(
            "steward/crash-test",
            steward_events::RollbackRequested {
                container: s.app.name.clone(),
                requested_by: "crash-test".into(),
                to_digest: None,
            },
        ),
        _ => image_updated(&s.app, &s.target),
    }
}

fn updater(bus: &Bus, scope: &str, failpoints: Option<&str>) -> Proc {
    let mut env = vec![
        ("STEWARD_SCOPE", scope.to_owned()),
        ("STEWARD_HEALTH_TIMEOUT", "30s".into()),
        ("STEWARD_HEALTH_GRACE", "2s".into()),
        // The event in hand at a kill comes back within the run.
        ("STEWARD_ACK_WAIT", "2s".into()),
    ];
    if let Some(points) = failpoints {
        env.push(("STEWARD_FAILPOINTS", points.to_owned()));
    }
    Proc::start("steward-updater", &service_env(bus, &env))
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

fn image_updated(app: &App, to: &str) -> Event {
    Event::new(
        "steward-watcher/test",
        ImageUpdated {
            container: app.name.clone(),
            image: app.image.clone(),
            current_digest: Digest::parse(&app.v1).expect("digest"),
            new_digest: Digest::parse(to).expect("digest"),
            new_tag: None,
            policy: None,
            versions: Default::default(),
        },
    )
}

fn flow_events(all: &[Event], correlation: uuid::Uuid) -> Vec<&'static str> {
    all.iter().filter(|e| e.correlation_id == correlation).map(Event::event_type).collect()
}

fn containers_named(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = docker(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// Plays the operator and the backup service for one flow, once each: approves a pending
/// update, answers a backup request. Runs until dropped.
fn play_the_others(bus: &Bus, correlation: uuid::Uuid) -> tokio::task::JoinHandle<()> {
    let bus = bus.clone();
    tokio::spawn(async move {
        let (mut approved, mut backed_up) = (false, false);
        loop {
            let all = stored_events(&bus).await;
            let mine = all.iter().filter(|e| e.correlation_id == correlation);
            for e in mine {
                match &e.data {
                    EventData::UpdatePending(p) if !approved => {
                        let data =
                            UpdateApproved { update_id: p.update_id, by: "crash-test".into() };
                        let ok = bus
                            .publish(&Event::caused_by(e, "steward/crash-test", data))
                            .await
                            .is_ok();
                        approved = ok;
                    }
                    EventData::BackupRequested(_) if !backed_up => {
                        let data = BackupDone {
                            backup_id: unique_name("b"),
                            manifest_key: "crash-test/manifest.json".into(),
                            size_bytes: 1,
                            components: vec![],
                            duration_ms: 1,
                        };
                        let ok = bus
                            .publish(&Event::caused_by(e, "steward-backup/crash-test", data))
                            .await
                            .is_ok();
                        backed_up = ok;
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Aborts the task when dropped (a panicking test must not leave it running).
struct Others(tokio::task::JoinHandle<()>);
impl Drop for Others {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The points a clean run of `scenario` passes, in order, as kill specs (`name=n`: its n-th
/// hit).
async fn discover(scenario: Scenario) -> Vec<String> {
    let s = stage(scenario).await;
    let mut p = updater(&s.bus, &s.scope, Some(""));
    consuming(&mut p);
    let event = request(&s, scenario);
    let _others = Others(play_the_others(&s.bus, event.correlation_id));
    s.bus.publish(&event).await.expect("publish");
    wait_terminal(&s.bus, event.correlation_id, &p).await;
    let specs = steward_system_tests::failpoints_passed(&p.logs());
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

/// The containers a finished run must leave: the app (and its dependent), or none after the
/// removal.
fn expected_names(s: &Stage, variant: Variant) -> Vec<String> {
    if variant == Variant::Removed {
        return vec![];
    }
    let mut names = vec![s.app.name.clone()];
    names.extend(s.dependent.as_ref().map(|d| d.name.clone()));
    names.sort();
    names
}

/// Waits (at most 30 s) until the updater has nothing left to handle (the event in hand at
/// the kill came back after the ack wait and was settled) and the containers and the record
/// look finished; the assertions that follow say what is wrong if they never do.
async fn settled(s: &Stage, variant: Variant) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !is_settled(s, variant).await {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the updater has nothing left to handle and the containers and the record look
/// finished (see [`settled`]).
async fn is_settled(s: &Stage, variant: Variant) -> bool {
    let js = async_nats::jetstream::new(s.bus.raw_client().clone());
    let idle = match js.get_stream(&s.bus.namespace().stream).await {
        Ok(stream) => match stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>("updater")
            .await
        {
            Ok(mut consumer) => {
                consumer.info().await.is_ok_and(|i| i.num_pending == 0 && i.num_ack_pending == 0)
            }
            Err(_) => false,
        },
        Err(_) => false,
    };
    if !idle || containers_named(&s.app.name) != expected_names(s, variant) {
        return false;
    }
    let Ok(records) = StateStore::<UpdateRecord>::open(&s.bus, UPDATE_BUCKET).await else {
        return false;
    };
    records
        .get(&s.app.name)
        .await
        .ok()
        .flatten()
        .is_some_and(|v| v.value.step.is_terminal() && v.value.outbox.is_empty())
}

/// Waits for the second updater of the twice variant: it exits at the first point its
/// recovery passes, or (when the recovery passes none) settles what the kill left; it is then
/// stopped. Bounded: 20 s, as the fixed wait this replaces, which every run whose recovery
/// passed no point waited out in full.
async fn second_ends(second: &mut Proc, s: &Stage) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let mut settled = false;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = second.child.try_wait() {
            return;
        }
        // Settled only counts once it consumes: its recovery at start has run by then.
        if second.logs().contains("\"consuming\"") && is_settled(s, Variant::Twice).await {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The recovery passed no armed point: it is stopped, not killed. Said apart from the
    // bound running out (a slow recovery cut short: the next process finishes it).
    eprintln!(
        "second updater passed no armed point; stopped after {:.1}s, {}",
        started.elapsed().as_secs_f64(),
        if settled { "settled" } else { "NOT settled: the 20 s bound ran out" }
    );
    second.terminate(Duration::from_secs(20));
}

/// One kill run; panics with the spec and what was found when an invariant fails.
async fn run(scenario: Scenario, spec: &str, variant: Variant, all_points: &[String]) {
    let started = Instant::now();
    let s = stage(scenario).await;
    let event = request(&s, scenario);
    let _others = Others(play_the_others(&s.bus, event.correlation_id));
    let mut first = updater(&s.bus, &s.scope, Some(spec));
    consuming(&mut first);
    s.bus.publish(&event).await.expect("publish");
    assert!(
        first.exits_within(Duration::from_secs(60)),
        "{scenario:?} {spec}: never reached\n{}",
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
            let mut second = updater(&s.bus, &s.scope, Some(&names.join(",")));
            second_ends(&mut second, &s).await;
        }
        Variant::Removed => {
            // `compose down` while the updater is away: every container of the app goes,
            // those in another's network namespace first, as compose removes them (Podman
            // refuses to remove a namespace's container while one is joined to it).
            let mut names = containers_named(&s.app.name);
            names.sort_by_key(|n| {
                let mode = docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", n]);
                !mode.starts_with("container:")
            });
            for name in names {
                docker(&["rm", "-f", &name]);
            }
        }
    }
    let mut last = updater(&s.bus, &s.scope, None);
    consuming(&mut last);
    let all = wait_terminal(&s.bus, event.correlation_id, &last).await;
    settled(&s, variant).await;
    let all_after = stored_events(&s.bus).await;
    let flow = flow_events(&all_after, event.correlation_id);
    let context = || format!("{scenario:?} {spec} ({variant:?}): {flow:?}\n{}", last.logs());
    let terminal: Vec<&&str> = flow.iter().filter(|t| TERMINAL.contains(t)).collect();
    assert_eq!(terminal.len(), 1, "exactly one terminal event: {}", context());
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &flow {
        *counts.entry(t).or_default() += 1;
    }
    assert!(counts.values().all(|n| *n == 1), "an event twice: {}", context());
    assert!(all_after.len() >= all.len());
    let names = containers_named(&s.app.name);
    assert_eq!(names, expected_names(&s, variant), "containers, no swap names: {}", context());
    if variant != Variant::Removed {
        let name = &s.app.name;
        assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", name]), "true", "{}", context());
        let image = docker(&["inspect", "-f", "{{.Image}}", name]);
        let digests = docker(&["image", "inspect", "-f", "{{json .RepoDigests}}", &image]);
        let expected = if *terminal[0] == "update.succeeded" { &s.target } else { &s.before };
        assert!(digests.contains(expected.as_str()), "runs {digests}: {}", context());
        if let Some(d) = &s.dependent {
            let id = docker(&["inspect", "-f", "{{.Id}}", name]);
            let mode = docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &d.name]);
            assert_eq!(mode, format!("container:{id}"), "dependent's namespace: {}", context());
            let running = docker(&["inspect", "-f", "{{.State.Running}}", &d.name]);
            assert_eq!(running, "true", "dependent running: {}", context());
        }
    }
    let records: StateStore<UpdateRecord> =
        StateStore::open(&s.bus, UPDATE_BUCKET).await.expect("records");
    let record = records.get(&s.app.name).await.expect("get").expect("record").value;
    assert!(record.step.is_terminal(), "{:?}: {}", record.step, context());
    assert!(record.outbox.is_empty(), "outbox left: {}", context());
    assert!(last.terminate(Duration::from_secs(30)).is_some(), "the updater did not stop");
    // One line per run, for docs/reliability.md's matrix (`--nocapture`).
    eprintln!(
        "crash-matrix: {scenario:?} {variant:?} {spec} -> {} ({} events) in {:.1}s",
        terminal[0],
        flow.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A CI run kills one point in this many (every point over as many seeds).
const SHARES: usize = 4;

/// The (point, variant) runs of a scenario: all (`STEWARD_CRASH_POINTS=all`), each point
/// once in a variant that rotates with the crash seed (`=each`), or by default every
/// [`SHARES`]th point of that, which ones moving with the seed (printed), which keeps CI
/// short. Consecutive seeds (days) kill every point in [`SHARES`], in every variant in
/// `SHARES * VARIANTS.len()` (4 ≡ 1 mod 3: each point's variant moves on by one).
fn sample(scenario: Scenario, points: &[String]) -> Vec<(String, Variant)> {
    let mode = std::env::var("STEWARD_CRASH_POINTS").unwrap_or_default();
    let points = crash::only(points).unwrap_or_else(|| points.to_vec());
    if mode == "all" {
        return points.iter().flat_map(|p| VARIANTS.map(|v| (p.clone(), v))).collect();
    }
    let seed = crash::seed();
    let indexes = if mode == "each" {
        (0..points.len()).collect()
    } else {
        crash::shared(points.len(), SHARES, 0, seed)
    };
    let variants = VARIANTS.len() as u64;
    let runs: Vec<(String, Variant)> = indexes
        .into_iter()
        .map(|i| {
            let v = (i as u64).wrapping_add(seed) % variants;
            (points[i].clone(), VARIANTS[usize::try_from(v).unwrap_or(0)])
        })
        .collect();
    let shown: Vec<String> = runs.iter().map(|(p, v)| format!("{p} {v:?}")).collect();
    crash::announce(&format!("{scenario:?}"), &shown, points.len(), seed);
    runs
}

/// Runs of one scenario at once. Each run has its own bus namespace, scope and app, and mostly
/// waits (on Docker, NATS, the health gate): on the 2-core test machine the CI sample's runs
/// took no longer each with three at once (beside the binary's other test) than one by one.
const RUNS_AT_ONCE: usize = 3;

async fn campaign(scenario: Scenario) {
    let points = discover(scenario).await;
    let runs = sample(scenario, &points);
    eprintln!("{scenario:?}: {} runs over {} points: {points:?}", runs.len(), points.len());
    let points = std::sync::Arc::new(points);
    crash::at_once(runs, RUNS_AT_ONCE, move |(spec, variant)| {
        let points = points.clone();
        async move { run(scenario, &spec, variant, &points).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_point_of_an_automatic_update() {
    campaign(Scenario::Automatic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_point_of_a_rollback() {
    campaign(Scenario::Broken).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_point_of_a_rollback_asked_by_hand() {
    campaign(Scenario::Rollback).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_point_of_a_manual_update_backed_up_first() {
    campaign(Scenario::ManualBackup).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_point_of_an_update_with_a_network_namespace_dependent() {
    campaign(Scenario::Dependent).await;
}
