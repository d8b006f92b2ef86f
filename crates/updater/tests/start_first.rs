//! Start-first swaps behind a real HAProxy (one per test, on its own port and admin socket):
//! the stand-in app on a Docker network of the test's own, reached by HAProxy at its address
//! there, a prober every 20 ms through HAProxy counting failed requests.

mod common;

use std::time::{Duration, Instant};

use common::*;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::{Event, EventData};
use steward_haproxy::{Name, Runtime};
use steward_testkit::docker::{address_of, docker, push_app, Network};
use steward_testkit::haproxy::{get_ok, Haproxy, Prober};
use steward_testkit::{http_get, wait_for, TestBus};
use steward_updater::flow::Flow;

/// The stand-in app v1 on its own network, labelled start-first, behind its own HAProxy.
struct Stage {
    app: App,
    haproxy: Haproxy,
    v2: String,
    _net: Network,
}

fn stage() -> Stage {
    let net = Network::create("sfnet");
    let (app, haproxy, v2) = behind_haproxy(&net.0, "start-first");
    net.assert_bridge_keeps_its_address();
    Stage { app, haproxy, v2, _net: net }
}

async fn start_first_flow(bus: &steward_bus::Bus, h: &Haproxy) -> Flow {
    flow_with(bus, |cfg| {
        cfg.haproxy_socket = Some(h.socket());
        cfg.health_timeout = Duration::from_secs(15);
        cfg.haproxy_switch_timeout = Duration::from_secs(10);
    })
    .await
}

/// Exactly one container under the name, running; HAProxy's backend has exactly one server,
/// serving, at that container's address; what HAProxy serves is `body`.
async fn consistent(s: &Stage, body: &str) {
    let app = &s.app;
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &app.name]), "true");
    no_strays(&app.name);
    let ip = address_of(&app.name);
    let servers = Runtime::new(s.haproxy.socket())
        .servers(&Name::new("app").expect("name"))
        .await
        .expect("servers");
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert!(servers[0].serving(), "{servers:?}");
    assert_eq!((servers[0].addr.as_str(), servers[0].port), (ip.as_str(), 8080), "{servers:?}");
    wait_for("served through HAProxy", Duration::from_secs(10), || {
        http_get(s.haproxy.port).filter(|b| b.contains(body))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_first_update_serves_every_request() {
    let bus = TestBus::new("sfok").await;
    let s = stage();
    let flow = start_first_flow(&bus, &s.haproxy).await;
    let prober = Prober::start(s.haproxy.port);
    let (event, u) = image_updated_from(&bus, &s.app, &s.app.v1, &s.v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (seen, failed) = prober.finish();
    assert!(
        failed.is_empty(),
        "failed requests through HAProxy during a start-first update:\n{failed:?}\n{}",
        s.haproxy.notable_log()
    );
    assert!(seen.first().is_some_and(|b| b.contains("app v1")), "{:?}", seen.first());
    assert!(seen.last().is_some_and(|b| b.contains("app v2")), "{:?}", seen.last());
    let all = events(&bus).await;
    assert_eq!(terminal(&all, event.correlation_id), ["update.succeeded"], "{:?}", types(&all));
    consistent(&s, "app v2").await;
    // And back (the server names alternate): the second swap works as well.
    let prober = Prober::start(s.haproxy.port);
    let (event, u) = image_updated_from(&bus, &s.app, &s.v2, &s.app.v1).await;
    flow.on_image_updated(&event, &u).await.expect("update back");
    let (_, failed) = prober.finish();
    assert!(failed.is_empty(), "the update back:\n{failed:?}\n{}", s.haproxy.notable_log());
    let all = events(&bus).await;
    assert_eq!(terminal(&all, event.correlation_id), ["update.succeeded"], "{:?}", types(&all));
    consistent(&s, "app v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_healthy_release_is_rolled_back_with_haproxy_serving_the_old_one() {
    let bus = TestBus::new("sfbad").await;
    let s = stage();
    let v3 = push_app("v3", &s.app.image);
    let flow = start_first_flow(&bus, &s.haproxy).await;
    let prober = Prober::start(s.haproxy.port);
    let (event, u) = image_updated_from(&bus, &s.app, &s.app.v1, &v3).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    let (seen, failed) = prober.finish();
    assert!(
        failed.is_empty(),
        "failed requests while a broken release was tried and rolled back:\n{failed:?}\n{}",
        s.haproxy.notable_log()
    );
    assert!(seen.iter().all(|b| b.contains("app v1")));
    let all = events(&bus).await;
    assert_eq!(terminal(&all, event.correlation_id), ["update.rolled_back"], "{:?}", types(&all));
    consistent(&s, "app v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_haproxy_or_with_published_ports_nothing_is_touched() {
    let bus = TestBus::new("sfrefuse").await;
    let s = stage();
    // No admin socket configured: failed before anything was touched.
    let flow = flow_with(&bus, |_| {}).await;
    let before = docker(&["inspect", "-f", "{{.Id}}", &s.app.name]);
    let (event, u) = image_updated_from(&bus, &s.app, &s.app.v1, &s.v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    let all = events(&bus).await;
    assert_eq!(terminal(&all, event.correlation_id), ["update.failed"], "{:?}", types(&all));
    let reason = all.iter().find_map(|e| match &e.data {
        EventData::UpdateFailed(f) if e.correlation_id == event.correlation_id => {
            Some(f.reason.clone())
        }
        _ => None,
    });
    assert!(reason.as_deref().is_some_and(|r| r.contains("STEWARD_HAPROXY_SOCKET")), "{reason:?}");
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &s.app.name]), before);
    // A socket nobody listens on: the same.
    let flow =
        flow_with(&bus, |cfg| cfg.haproxy_socket = Some(s.haproxy.dir.join("nosuch.sock"))).await;
    let (event, u) = image_updated_from(&bus, &s.app, &s.app.v1, &s.v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    let all = events(&bus).await;
    assert_eq!(terminal(&all, event.correlation_id), ["update.failed"], "{:?}", types(&all));
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &s.app.name]), before);
    consistent(&s, "app v1").await;
    // A container publishing a host port cannot run twice: refused, untouched.
    let published = app(&[
        "steward.update.policy=automatic",
        "steward.update.backup=false",
        "steward.update.strategy=start-first",
        "steward.haproxy.backend=app",
        "steward.haproxy.port=8080",
    ]);
    let v2 = push_app("v2", &published.image);
    let flow = start_first_flow(&bus, &s.haproxy).await;
    let before = docker(&["inspect", "-f", "{{.Id}}", &published.name]);
    let (event, u) = image_updated_from(&bus, &published, &published.v1, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    let all = events(&bus).await;
    let reason = all.iter().find_map(|e| match &e.data {
        EventData::UpdateFailed(f) if e.correlation_id == event.correlation_id => {
            Some(f.reason.clone())
        }
        _ => None,
    });
    assert!(reason.as_deref().is_some_and(|r| r.contains("publishes ports")), "{reason:?}");
    assert_eq!(docker(&["inspect", "-f", "{{.Id}}", &published.name]), before);
    assert!(http_get(published.port).is_some_and(|b| b.contains("app v1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_back_at_another_address_is_followed_by_its_haproxy_server() {
    // Declared before the stage: dropped after the container that ends up on it.
    let moved = Network::create("sfmoved");
    let bus = TestBus::new("sffollow").await;
    let s = stage();
    let flow = start_first_flow(&bus, &s.haproxy).await;
    // A swap first: HAProxy's server is then the one the switch added, by address.
    let (event, u) = image_updated_from(&bus, &s.app, &s.app.v1, &s.v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    consistent(&s, "app v2").await;
    // The container comes back at another address (what a restart does on Podman, and on
    // Docker when another container took its address): here moved to another network, still
    // its only one.
    let before = address_of(&s.app.name);
    docker(&["network", "disconnect", &s._net.0, &s.app.name]);
    docker(&["network", "connect", &moved.0, &s.app.name]);
    assert_ne!(address_of(&s.app.name), before, "the container came back at the same address");
    wait_for("HAProxy's server down at the old address", Duration::from_secs(10), || {
        get_ok(s.haproxy.port).is_none().then_some(())
    });
    // One sweep later HAProxy sends the traffic to where the container is (on the code
    // before, nothing moved it: no service until a reload).
    flow.sweep().await.expect("sweep");
    consistent(&s, "app v2").await;
    flow.sweep().await.expect("a second sweep changes nothing");
    consistent(&s, "app v2").await;
}

/// Where an update is cut: a predicate on its record.
type Cut = (&'static str, fn(&UpdateRecord) -> bool);

const CUTS: [Cut; 4] = [
    ("planned", |r| r.haproxy.is_some() && r.new_id.is_none()),
    ("new container created", |r| r.step == UpdateStep::Gating),
    ("switching", |r| r.haproxy.as_ref().is_some_and(|h| h.new_addr.is_some() && !h.switched)),
    ("switched", |r| r.haproxy.as_ref().is_some_and(|h| h.switched)),
];

/// Runs the update of `name` and drops it mid-step (like a kill: nothing after the cut runs)
/// once its record shows `cut`, bounded in time; the record it was cut at, `None` when the
/// update ended first.
async fn cut_update(
    flow: &Flow,
    name: &str,
    event: Event,
    u: steward_events::ImageUpdated,
    cut: impl Fn(&UpdateRecord) -> bool,
) -> Option<UpdateRecord> {
    let task = {
        let flow = flow.clone();
        tokio::spawn(async move { flow.on_image_updated(&event, &u).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reached = None;
    while Instant::now() < deadline && !task.is_finished() {
        if let Some(v) = flow.records.get(name).await.expect("record") {
            if !v.value.step.is_terminal() && cut(&v.value) {
                task.abort();
                reached = Some(v.value);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = task.await;
    reached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_cut_at_each_step_and_again_in_its_recovery_ends_consistent() {
    let bus = TestBus::new("sfcut").await;
    let s = stage();
    let digests = [s.app.v1.clone(), s.v2.clone()];
    let mut running = 0; // index into digests
    for (round, (what, cut)) in CUTS.into_iter().enumerate() {
        let flow = start_first_flow(&bus, &s.haproxy).await;
        let (event, u) =
            image_updated_from(&bus, &s.app, &digests[running], &digests[1 - running]).await;
        let reached = cut_update(&flow, &s.app.name, event, u, cut).await.is_some();
        // Twice: the first restarted updater is cut too, a while into its recovery (a
        // different while for each cut), and a second one finds what it left.
        let first = start_first_flow(&bus, &s.haproxy).await;
        let recovery = tokio::spawn(async move { first.resume().await });
        tokio::time::sleep(Duration::from_millis(150 * (round as u64 + 1))).await;
        recovery.abort();
        let _ = recovery.await;
        let restarted = start_first_flow(&bus, &s.haproxy).await;
        let unfinished = restarted.resume().await;
        assert!(unfinished.is_empty(), "{what}: {unfinished:?}");
        let all = events(&bus).await;
        let ends = terminal(&all, event_correlation(&all, &s.app.name, &digests[1 - running]));
        assert!(reached, "{what}: the update ended before the cut");
        assert_eq!(ends.len(), 1, "{what}: {ends:?}");
        if ends[0] == "update.succeeded" {
            running = 1 - running;
        }
        let body = if running == 0 { "app v1" } else { "app v2" };
        consistent(&s, body).await;
        let record = restarted.records.get(&s.app.name).await.expect("record").expect("some");
        assert!(record.value.step.is_terminal() && record.value.outbox.is_empty(), "{what}");
    }
}

/// The correlation of the newest `image.updated` of `name` to `digest`.
fn event_correlation(all: &[Event], name: &str, digest: &str) -> uuid::Uuid {
    all.iter()
        .rev()
        .find_map(|e| match &e.data {
            EventData::ImageUpdated(u)
                if u.container == name && u.new_digest.as_str() == digest =>
            {
                Some(e.correlation_id)
            }
            _ => None,
        })
        .expect("the news")
}

/// Cut once HAProxy serves the new container, which then dies before the takeover is
/// finished: the restarted updater never finishes a takeover by it. The old container comes
/// back under its name, HAProxy serves it, and the update ends `update.rolled_back`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_container_gone_after_the_switch_is_never_taken_over() {
    let bus = TestBus::new("sfgone").await;
    let s = stage();
    let flow = start_first_flow(&bus, &s.haproxy).await;
    let (event, u) = image_updated_from(&bus, &s.app, &s.app.v1, &s.v2).await;
    let switched = |r: &UpdateRecord| r.haproxy.as_ref().is_some_and(|h| h.switched);
    let record = cut_update(&flow, &s.app.name, event, u, switched)
        .await
        .expect("the update ended before HAProxy was switched");
    let (old_id, new_id) = (record.old_id.expect("old"), record.new_id.expect("new"));
    docker(&["rm", "-f", &new_id]);
    let restarted = start_first_flow(&bus, &s.haproxy).await;
    assert!(restarted.resume().await.is_empty());
    let all = events(&bus).await;
    let ends = terminal(&all, event_correlation(&all, &s.app.name, &s.v2));
    assert_eq!(ends, ["update.rolled_back"]);
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &old_id]), "true");
    consistent(&s, "app v1").await;
}
