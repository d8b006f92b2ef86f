//! What an interrupted or repeated flow leaves, against the real engine, registry and NATS:
//! the states a kill leaves are made with the engine's own swap (or by hand, where a kill
//! falls inside it), then the updater finds them. Each test here failed on the updater
//! before the crash-safety work (issue 16, items 1–5).

mod common;

use std::time::Duration;

use common::*;
use steward_bus::StateStore;
use steward_events::records::{UpdateRecord, UpdateStep, WatchRecord, WATCH_BUCKET};
use steward_events::{Digest, Event, EventData, ImageUpdated, UpdatePending};
use steward_testkit::docker::{
    build_and_push, docker, push_app, registry, ComposeProject, Container, ImageTag, SwapLeftovers,
};
use steward_testkit::stall::StallProxy;
use steward_testkit::{free_port, http_get, unique_name, wait_for, TestBus};
use steward_updater::flow::Flow;
use time::OffsetDateTime;

const AUTOMATIC: [&str; 2] = ["steward.update.policy=automatic", "steward.update.backup=false"];

/// The record a flow of `event` would have written, at `step` (the event's id as update id,
/// as the updater before minting its own wrote it).
fn record(event: &Event, u: &ImageUpdated, step: UpdateStep) -> UpdateRecord {
    UpdateRecord::from_news((event.id, None), event, u, "automatic", step)
}

async fn put(flow: &Flow, r: &UpdateRecord) {
    flow.records.put(&r.container, r).await.expect("put record");
}

async fn step(flow: &Flow, name: &str) -> Option<UpdateStep> {
    flow.records.get(name).await.expect("get").map(|v| v.value.step)
}

/// The swap a kill during the health gate leaves: the new container runs under the name,
/// the old one is parked. Returns (old id, new id).
async fn swapped(flow: &Flow, app: &App) -> (String, String) {
    let r = flow.engine.replace(&app.name, &app.image).await.expect("swap");
    (r.old_id, r.new_id)
}

fn digests_of(name: &str) -> String {
    let image = docker(&["inspect", "-f", "{{.Image}}", name]);
    docker(&["image", "inspect", "-f", "{{json .RepoDigests}}", &image])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_earlier_interrupted_updates_never_block_a_rollback_or_the_next_update() {
    let bus = TestBus::new("crashleft").await;
    let app = app(&AUTOMATIC);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    // Killed during the health gate, before the new container's id was recorded, with a
    // `-steward-failed` container (state Created) that an earlier restore left behind.
    let (old_id, new_id) = swapped(&flow, &app).await;
    let failed = format!("{}-steward-failed", app.name);
    docker(&["create", "--name", &failed, &app.image]);
    let mut r = record(&event, &u, UpdateStep::Swapping);
    r.old_id = Some(old_id.clone());
    put(&flow, &r).await;

    let unfinished = flow.resume().await;
    assert!(unfinished.is_empty(), "{unfinished:?}");
    wait_for("v1 served again", Duration::from_secs(15), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &app.name]), old_id);
    assert!(docker(&["ps", "-aq", "--filter", &format!("id={new_id}")]).is_empty());
    no_strays(&app.name);
    assert_eq!(step(&flow, &app.name).await, Some(UpdateStep::RolledBack));

    // The next update of the same container, with its own kill and rollback, and then one
    // that goes through: no name conflict anywhere.
    let (event2, u2) = image_updated(&bus, &app, &v2).await;
    let (old_id, _) = swapped(&flow, &app).await;
    docker(&["create", "--name", &failed, &app.image]);
    let mut r = record(&event2, &u2, UpdateStep::Gating);
    r.old_id = Some(old_id);
    put(&flow, &r).await;
    assert!(flow.resume().await.is_empty());
    no_strays(&app.name);
    let (event3, u3) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event3, &u3).await.expect("update");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
    no_strays(&app.name);
    let all = events(&bus).await;
    for e in [&event, &event2, &event3] {
        assert_eq!(terminal(&all, e.correlation_id).len(), 1, "{:?}", types(&all));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_during_its_interrupted_update_ends_that_update_and_no_other() {
    let bus = TestBus::new("crashgone").await;
    let gone = app(&AUTOMATIC);
    let other = app(&AUTOMATIC);
    let flow = flow(&bus).await;
    let mut interrupted = vec![];
    for a in [&gone, &other] {
        let v2 = push_app("v2", &a.image);
        let (event, u) = image_updated(&bus, a, &v2).await;
        let (old_id, new_id) = swapped(&flow, a).await;
        let mut r = record(&event, &u, UpdateStep::Gating);
        r.old_id = Some(old_id);
        r.new_id = Some(new_id);
        put(&flow, &r).await;
        interrupted.push(event);
    }
    // `compose down` while the updater was away: both containers of the first app go.
    docker(&["rm", "-f", &gone.name, &format!("{}-steward-old", gone.name)]);

    let unfinished = flow.resume().await;
    assert!(unfinished.is_empty(), "{unfinished:?}");
    let all = events(&bus).await;
    let ended: Vec<&Event> = all
        .iter()
        .filter(|e| e.correlation_id == interrupted[0].correlation_id)
        .filter(|e| e.event_type() == "update.failed")
        .collect();
    let [ended] = ended[..] else { panic!("{:?}", types(&all)) };
    let EventData::UpdateFailed(f) = &ended.data else { unreachable!() };
    assert!(f.reason.contains("removed"), "{}", f.reason);
    assert_eq!(step(&flow, &gone.name).await, Some(UpdateStep::Failed));
    assert!(docker(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .all(|n| !n.starts_with(&gone.name)));
    // The other container's update is rolled back as usual.
    assert_eq!(terminal(&all, interrupted[1].correlation_id), ["update.rolled_back"]);
    assert!(http_get(other.port).is_some_and(|b| b.contains("app v1")));
    no_strays(&other.name);
    // Starting again finds nothing more to do.
    assert!(flow.resume().await.is_empty());
    assert_eq!(events(&bus).await.len(), all.len());
}

/// A release built from v2 with its own digest (v2's content, healthy).
fn release_from_v2(image: &str, release: &str) -> String {
    build_and_push(
        image,
        &format!("FROM steward-test/app:v2\nLABEL steward.test.release={release}\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_older_event_never_downgrades_a_container() {
    let bus = TestBus::new("crashold").await;
    let app = app(&AUTOMATIC);
    let flow = flow(&bus).await;
    let v2 = push_app("v2", &app.image);
    let (older, u_older) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&older, &u_older).await.expect("update to v2");
    // A newer release, applied.
    let release = unique_name("5");
    let v5 = release_from_v2(&app.image, &release);
    let (newer, u_newer) = image_updated(&bus, &app, &v5).await;
    flow.on_image_updated(&newer, &u_newer).await.expect("update to v5");
    assert!(digests_of(&app.name).contains(&v5), "{}", digests_of(&app.name));

    // The older event comes again (redelivered after a kill, or replayed).
    flow.on_image_updated(&older, &u_older).await.expect("redelivery");
    assert!(digests_of(&app.name).contains(&v5), "downgraded: {}", digests_of(&app.name));
    let all = events(&bus).await;
    assert_eq!(terminal(&all, older.correlation_id), ["update.succeeded"], "{:?}", types(&all));
    // The same digest again (a replay of the newer event) changes nothing either.
    let (again, u_again) = image_updated(&bus, &app, &v5).await;
    flow.on_image_updated(&again, &u_again).await.expect("same digest");
    assert!(terminal(&events(&bus).await, again.correlation_id).is_empty());
    no_strays(&app.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchers_newer_digest_outranks_an_older_event_but_not_one_it_has_yet_to_record() {
    let bus = TestBus::new("crashwatch").await;
    let app = app(&AUTOMATIC);
    let flow = flow(&bus).await;
    let v2 = push_app("v2", &app.image);
    let (event, u) = image_updated(&bus, &app, &v2).await;
    let watched: StateStore<WatchRecord> =
        StateStore::open(&bus, WATCH_BUCKET).await.expect("watch bucket");
    let newest = |digest: &str, seen: OffsetDateTime| WatchRecord {
        container: app.name.clone(),
        image: app.image.clone(),
        policy: "automatic".into(),
        running_digest: Some(u.current_digest.clone()),
        newest_digest: Some(Digest::parse(digest).expect("digest")),
        newest_tag: None,
        newest_seen_at: Some(seen),
        reported_digest: None,
        checked_at: seen,
        last_error: None,
        host: None,
    };
    let other = format!("sha256:{}", "7".repeat(64));
    // The watcher has seen another digest as the newest since this event: it is old news.
    watched.put(&app.name, &newest(&other, OffsetDateTime::now_utc())).await.expect("put");
    flow.on_image_updated(&event, &u).await.expect("old news");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")));
    assert_eq!(step(&flow, &app.name).await, None, "not even claimed");

    // A record older than the event (the watcher publishes, then records) does not hold
    // the update back.
    let (event, u) = image_updated(&bus, &app, &v2).await;
    let before = event.time - time::Duration::seconds(30);
    watched.put(&app.name, &newest(&other, before)).await.expect("put");
    flow.on_image_updated(&event, &u).await.expect("update");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_drives_on_a_flow_that_a_failed_step_left_in_progress() {
    let bus = TestBus::new("crashstuck").await;
    let app = app(&AUTOMATIC);
    let flow = flow(&bus).await;
    let v2 = push_app("v2", &app.image);
    let (event, u) = image_updated(&bus, &app, &v2).await;
    // What a failed publish or Docker call after the claim left: in progress, untouched.
    put(&flow, &record(&event, &u, UpdateStep::Swapping)).await;
    flow.on_image_updated(&event, &u).await.expect("redelivery");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")), "driven on");
    assert_eq!(step(&flow, &app.name).await, Some(UpdateStep::Succeeded));
    assert_eq!(terminal(&events(&bus).await, event.correlation_id), ["update.succeeded"]);
    no_strays(&app.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_left_by_a_crash_is_published_once_with_its_own_id() {
    let bus = TestBus::new("crashoutbox").await;
    let app = app(&["steward.update.policy=manual"]);
    let flow = flow(&bus).await;
    let v2 = push_app("v2", &app.image);
    let (event, u) = image_updated(&bus, &app, &v2).await;
    // Decided (Pending) and saved, killed before `update.pending` was published.
    let mut r = record(&event, &u, UpdateStep::Pending);
    let pending = Event::new(
        "steward-updater/test",
        UpdatePending {
            update_id: event.id,
            container: u.container.clone(),
            image: u.image.clone(),
            current_digest: u.current_digest.clone(),
            new_digest: u.new_digest.clone(),
            new_tag: None,
            approval_url: None,
            expires_at: None,
            runs: None,
            versions: Default::default(),
            reminder: false,
        },
    )
    .with_correlation(event.correlation_id);
    r.last_event_id = pending.id;
    r.outbox = vec![pending.clone()];
    put(&flow, &r).await;
    // A restart, a redelivery and a sweep all find it; it is stored once.
    assert!(flow.resume().await.is_empty());
    flow.on_image_updated(&event, &u).await.expect("redelivery");
    flow.sweep().await.expect("sweep");
    let all = events(&bus).await;
    let stored: Vec<&Event> = all.iter().filter(|e| e.event_type() == "update.pending").collect();
    assert_eq!(stored.len(), 1, "{:?}", types(&all));
    assert_eq!(stored[0].id, pending.id);
    let v = flow.records.get(&app.name).await.expect("get").expect("record");
    assert!(v.value.outbox.is_empty());
    assert_eq!(v.value.step, UpdateStep::Pending);
}

/// A flow whose engine is reached through a proxy the test can stall, with a 2 s deadline.
async fn stalled_flow(bus: &steward_bus::Bus) -> (Flow, StallProxy) {
    let proxy = StallProxy::docker();
    let engine = steward_engine::Engine::new(proxy.docker_host(), Duration::from_secs(2));
    let base = flow(bus).await;
    let flow = Flow::open(bus.clone(), engine, base.cfg.clone(), "steward-updater/test".into())
        .await
        .expect("flow");
    (flow, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_stops_answering_before_the_swap_ends_the_update_naming_the_call() {
    let bus = TestBus::new("crashhungpre").await;
    let app = app(&AUTOMATIC);
    let (flow, proxy) = stalled_flow(&bus).await;
    let v2 = push_app("v2", &app.image);
    let (event, u) = image_updated(&bus, &app, &v2).await;
    // Started, about to pull, when the engine stops answering.
    put(&flow, &record(&event, &u, UpdateStep::Swapping)).await;
    proxy.stall();
    // The sweep's own listing of leftovers times out too: it reports that, after the update.
    let swept = flow.sweep().await;
    assert!(swept.is_err_and(|e| e.to_string().contains("did not answer")));
    proxy.resume();
    let all = events(&bus).await;
    let failed = all.iter().find_map(|e| match &e.data {
        EventData::UpdateFailed(f) if e.correlation_id == event.correlation_id => Some(f),
        _ => None,
    });
    let failed = failed.unwrap_or_else(|| panic!("{:?}", types(&all)));
    // The call is named (the first one before the swap: the container's inspect).
    let named = failed.reason.contains(&format!("inspect {}", app.name));
    assert!(failed.reason.contains("did not answer") && named, "{}", failed.reason);
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "nothing changed");
    no_strays(&app.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_stops_answering_mid_update_is_rolled_back_once_it_answers_again() {
    let bus = TestBus::new("crashhungmid").await;
    let app = app(&AUTOMATIC);
    let (flow, proxy) = stalled_flow(&bus).await;
    let v2 = push_app("v2", &app.image);
    let (event, u) = image_updated(&bus, &app, &v2).await;
    let watcher = flow.clone();
    let name = app.name.clone();
    let stalls = tokio::spawn(async move {
        // The engine hangs as soon as the new container runs (the health gate begins).
        // Bounded: an update that never gets there fails the test instead of hanging it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut step = None;
        while tokio::time::Instant::now() < deadline {
            step = watcher.records.get(&name).await.ok().flatten().map(|v| v.value.step);
            if step == Some(UpdateStep::Gating) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the update never reached its health gate in 120 s (last step {step:?})");
    });
    let updating = {
        let flow = flow.clone();
        let (event, u) = (event.clone(), u.clone());
        tokio::spawn(async move { flow.on_image_updated(&event, &u).await })
    };
    stalls.await.expect("gating");
    proxy.stall();
    let outcome = updating.await.expect("join");
    assert!(outcome.is_err(), "the flow cannot finish while the engine hangs");
    assert_eq!(
        step(&flow, &app.name).await,
        Some(UpdateStep::Gating),
        "left in progress, not concluded"
    );
    assert!(terminal(&events(&bus).await, event.correlation_id).is_empty());

    // The engine answers again: the sweep finishes what was left half-done.
    proxy.resume();
    flow.sweep().await.expect("sweep");
    let all = events(&bus).await;
    assert_eq!(terminal(&all, event.correlation_id), ["update.rolled_back"], "{:?}", types(&all));
    wait_for("v1 served again", Duration::from_secs(15), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    no_strays(&app.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_at_the_same_instant_as_the_last_updates_news_is_old_news() {
    let bus = TestBus::new("crashtie").await;
    let app = app(&AUTOMATIC);
    let flow = flow(&bus).await;
    let v2 = push_app("v2", &app.image);
    let (original, u) = image_updated(&bus, &app, &v2).await;
    // A replayed copy (its own id, the original's time) made the last update, rolled back.
    let mut copy = Event::new("steward-watcher/test", u.clone());
    copy.time = original.time;
    put(&flow, &record(&copy, &u, UpdateStep::RolledBack)).await;
    // The original comes again (a redelivery): no second flow for it.
    flow.on_image_updated(&original, &u).await.expect("redelivery");
    let v = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(v.news_id, Some(copy.id), "the record was claimed again");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")));
    assert!(terminal(&events(&bus).await, original.correlation_id).is_empty());
}

/// The stand-in app v1 as the only service (`web`) of a compose project, labelled automatic,
/// under a container name of its own and published on a port; v2 pushed under the same tag.
fn compose_app() -> (ComposeProject, App, String) {
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/upd"));
    let v1 = push_app("v1", &image);
    let name = unique_name("upd");
    let port = free_port();
    let project = ComposeProject::new(
        "boot",
        &format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: {image}\n    container_name: {name}\n    \
             restart: unless-stopped\n    ports: [\"127.0.0.1:{port}:8080\"]\n    labels:\n      \
             steward.update.policy: automatic\n      steward.update.backup: \"false\"\n"
        ),
    );
    project.compose(&["up", "--detach"]);
    wait_for("v1 served", Duration::from_secs(15), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    let app = App {
        _parked: SwapLeftovers(name.clone()),
        name: name.clone(),
        image: image.clone(),
        port,
        v1,
        _c: Container::adopt(name),
        _tag: ImageTag(image.clone()),
    };
    let v2 = push_app("v2", &image);
    (project, app, v2)
}

/// A reboot: every container of the app stops; then the stack's boot unit (the deploy role's
/// `gitea-stack.service`, what a Podman host has instead of a daemon restarting containers)
/// runs `compose up --detach --no-recreate` (`infra/ansible/roles/deploy/templates/
/// stack.service.j2`).
fn reboot(project: &ComposeProject, app: &App) {
    for c in [app.name.clone(), format!("{}-steward-old", app.name)] {
        let _ = std::process::Command::new("docker").args(["stop", "-t", "1", &c]).output();
    }
    project.compose(&["up", "--detach", "--no-recreate"]);
}

/// A host that reboots during an update's health gate. Compose keeps the first created of a
/// service's two containers and removes the other (Steward's new one); without
/// `--no-recreate` it also recreated the old one from the tag the update had moved, so the new
/// release ran ungated and nothing was left to roll back to. With it the old container comes
/// back, and the updater's recovery rolls the update back onto it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_in_the_health_gate_with_the_stacks_boot_unit_comes_back_on_the_old_release() {
    let bus = TestBus::new("crashboot").await;
    let (project, app, v2) = compose_app();
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    // Killed in the gate: the new release runs under the name (the local tag moved to it,
    // as the update's pull moves it), the old one is parked.
    let (old_id, new_id) = swapped(&flow, &app).await;
    let mut r = record(&event, &u, UpdateStep::Gating);
    (r.old_id, r.new_id) = (Some(old_id.clone()), Some(new_id));
    put(&flow, &r).await;
    reboot(&project, &app);

    // The updater comes back and finds its record.
    let unfinished = flow.resume().await;
    assert!(unfinished.is_empty(), "{unfinished:?}");
    let all = events(&bus).await;
    assert_eq!(terminal(&all, event.correlation_id), ["update.rolled_back"], "{:?}", types(&all));
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &app.name]), old_id, "the old one, named");
    wait_for("v1 served again", Duration::from_secs(15), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    no_strays(&app.name);
    assert!(flow.resume().await.is_empty());
    assert_eq!(events(&bus).await.len(), all.len(), "a second start did something again");
}

/// A reboot after the verdict, before the old container went (its removal failed, or the
/// kill fell between): at boot compose removes the updated container and starts the old one
/// under its parked name. The sweep used to remove that one as a leftover of a success,
/// leaving the service with no container at all; it now gives it its name back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_after_the_verdict_before_the_old_container_went_keeps_the_service() {
    let bus = TestBus::new("crashbootok").await;
    let (project, app, v2) = compose_app();
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    let (old_id, new_id) = swapped(&flow, &app).await;
    let mut r = record(&event, &u, UpdateStep::Succeeded);
    (r.old_id, r.new_id) = (Some(old_id.clone()), Some(new_id.clone()));
    put(&flow, &r).await;
    reboot(&project, &app);
    assert!(docker(&["ps", "-aq", "--filter", &format!("id={new_id}")]).is_empty());

    flow.sweep().await.expect("sweep");
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &app.name]), old_id, "the old one, named");
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &app.name]), "true");
    wait_for("v1 served", Duration::from_secs(15), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    no_strays(&app.name);
    flow.sweep().await.expect("a second sweep");
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &app.name]), old_id);
}
