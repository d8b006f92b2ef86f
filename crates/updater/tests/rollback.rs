//! `steward rollback` and the old-image cleanup against the real Docker engine, the test
//! bed's registry and NATS: the rollback runs through the update's own swap, health gate and
//! restore; refusals touch nothing; the cleanup removes only unused old images of the managed
//! repository.

mod common;

use common::*;

use std::time::Duration;

use steward_events::records::UpdateStep;
use steward_events::{
    Digest, Event, EventData, RollbackRequested, UpdateKind, UpdateRolledBack, UpdateSucceeded,
};
use steward_testkit::docker::{build_and_push, docker, push_app, try_docker, Container, ImageTag};
use steward_testkit::{http_get, unique_name, wait_for, TestBus};
use steward_updater::flow::Flow;

const AUTOMATIC: [&str; 3] =
    ["steward.enable=true", "steward.update.policy=automatic", "steward.update.backup=false"];

/// Publishes `rollback.requested` for `container` (as the CLI does) and hands it to the flow.
async fn rollback(bus: &TestBus, flow: &Flow, container: &str, to: Option<&str>) -> Event {
    let req = RollbackRequested {
        container: container.to_owned(),
        requested_by: "ops@test".into(),
        to_digest: to.map(|d| Digest::parse(d).expect("digest")),
    };
    let event = Event::new("steward/test", req.clone());
    bus.publish(&event).await.expect("publish");
    Box::pin(flow.on_rollback_requested(&event, &req)).await.expect("rollback handled");
    event
}

/// The events of one flow.
async fn flow_of(bus: &TestBus, event: &Event) -> Vec<Event> {
    events(bus).await.into_iter().filter(|e| e.correlation_id == event.correlation_id).collect()
}

/// The digests the container's image is known by.
fn runs(name: &str) -> String {
    let image = docker(&["inspect", "-f", "{{.Image}}", name]);
    docker(&["image", "inspect", "-f", "{{json .RepoDigests}}", &image])
}

/// v1 running, then updated to v2 by the flow (the update a rollback undoes).
async fn updated_to_v2(bus: &TestBus, flow: &Flow, labels: &[&str]) -> (App, String) {
    let app = app(labels);
    let v2 = push_app("v2", &app.image);
    let (event, u) = image_updated(bus, &app, &v2).await;
    Box::pin(flow.on_image_updated(&event, &u)).await.expect("update");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")), "updated to v2");
    (app, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_brings_back_the_previous_digest_through_the_health_gate() {
    let bus = TestBus::new("rbok").await;
    let flow = flow(&bus).await;
    let (app, v2) = updated_to_v2(&bus, &flow, &AUTOMATIC).await;

    let request = rollback(&bus, &flow, &app.name, None).await;
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "v1 served again");
    assert!(runs(&app.name).contains(&app.v1), "runs v1: {}", runs(&app.name));
    let mine = flow_of(&bus, &request).await;
    assert_eq!(types(&mine), ["rollback.requested", "update.started", "update.succeeded"]);
    let EventData::UpdateSucceeded(UpdateSucceeded {
        kind,
        requested_by,
        from_digest,
        to_digest,
        ..
    }) = &mine[2].data
    else {
        panic!("not a success")
    };
    assert_eq!(*kind, UpdateKind::Rollback);
    assert_eq!(requested_by.as_deref(), Some("ops@test"));
    assert_eq!((from_digest.as_str(), to_digest.as_str()), (v2.as_str(), app.v1.as_str()));
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!((record.step, record.kind), (UpdateStep::Succeeded, UpdateKind::Rollback));
    assert_eq!(
        docker(&["inspect", "-f", "{{.Config.Image}}", &app.name]),
        app.image,
        "still created from its tag"
    );
    no_strays(&app.name);

    // The redelivered request changes nothing; a second one is refused (nothing to go back to).
    let req = RollbackRequested {
        container: app.name.clone(),
        requested_by: "ops@test".into(),
        to_digest: None,
    };
    Box::pin(flow.on_rollback_requested(&request, &req)).await.expect("redelivery");
    assert_eq!(flow_of(&bus, &request).await.len(), 3);
    let again = rollback(&bus, &flow, &app.name, None).await;
    let refused = flow_of(&bus, &again).await;
    assert_eq!(types(&refused), ["rollback.requested", "rollback.refused"]);
    let EventData::RollbackRefused(r) = &refused[1].data else { panic!() };
    assert!(r.reason.contains("rolled back already"), "{}", r.reason);

    // v2 announced again (the watcher saw the container on v1) is not re-applied behind the
    // operator's back.
    let (event, u) = image_updated(&bus, &app, &v2).await;
    Box::pin(flow.on_image_updated(&event, &u)).await.expect("news again");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "still v1");
    assert_eq!(types(&flow_of(&bus, &event).await), ["image.updated"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_an_image_that_fails_its_gate_is_undone() {
    let bus = TestBus::new("rbbroken").await;
    let flow = flow_with(&bus, |c| c.health_timeout = Duration::from_secs(15)).await;
    let (app, v2) = updated_to_v2(&bus, &flow, &AUTOMATIC).await;
    // A digest of the same repository that never passes its health gate.
    let v3 = push_app("v3", &app.image);

    let request = rollback(&bus, &flow, &app.name, Some(&v3)).await;
    wait_for("v2 served again", Duration::from_secs(10), || {
        http_get(app.port).filter(|b| b.contains("app v2"))
    });
    assert!(runs(&app.name).contains(&v2), "runs v2: {}", runs(&app.name));
    let mine = flow_of(&bus, &request).await;
    assert_eq!(types(&mine), ["rollback.requested", "update.started", "update.rolled_back"]);
    let EventData::UpdateRolledBack(UpdateRolledBack {
        kind,
        reason,
        old_healthy,
        from_digest,
        ..
    }) = &mine[2].data
    else {
        panic!("not rolled back")
    };
    assert_eq!(*kind, UpdateKind::Rollback);
    assert!(reason.contains("unhealthy"), "{reason}");
    assert_eq!(*old_healthy, Some(true), "the container it ran passed the check again");
    assert_eq!(from_digest.as_str(), v2);
    no_strays(&app.name);
    // The recorded previous image (v1) is still what a rollback brings back.
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(record.rollback_target().map(Digest::as_str), Some(app.v1.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_touch_nothing() {
    let bus = TestBus::new("rbrefuse").await;
    let flow = flow(&bus).await;
    let reason = |all: Vec<Event>| match all.last().map(|e| &e.data) {
        Some(EventData::RollbackRefused(r)) => r.reason.clone(),
        _ => panic!("not refused: {:?}", types(&all)),
    };

    // Not managed, and managed but never updated.
    let plain = app(&["steward.update.policy=automatic"]);
    let e = rollback(&bus, &flow, &plain.name, None).await;
    let why = reason(flow_of(&bus, &e).await);
    assert!(why.contains("not managed"), "{why}");
    let watched = app(&AUTOMATIC);
    let e = rollback(&bus, &flow, &watched.name, None).await;
    let why = reason(flow_of(&bus, &e).await);
    assert!(why.contains("no previous image"), "{why}");
    let e = rollback(&bus, &flow, &unique_name("no-such"), None).await;
    assert!(reason(flow_of(&bus, &e).await).contains("no container"));

    // An update in progress (waiting for its approval).
    let manual = app(&["steward.enable=true", "steward.update.policy=manual"]);
    let v2 = push_app("v2", &manual.image);
    let (event, u) = image_updated(&bus, &manual, &v2).await;
    Box::pin(flow.on_image_updated(&event, &u)).await.expect("pending");
    let e = rollback(&bus, &flow, &manual.name, None).await;
    let why = reason(flow_of(&bus, &e).await);
    assert!(why.contains("in progress (pending)"), "{why}");
    let record = flow.records.get(&manual.name).await.expect("get").expect("record").value;
    assert_eq!((record.step, record.kind), (UpdateStep::Pending, UpdateKind::Update));

    // A previous image that is not on the host and cannot be pulled: update.failed, the
    // container untouched.
    let (app, v2) = updated_to_v2(&bus, &flow, &AUTOMATIC).await;
    let missing = format!("sha256:{}", "0f".repeat(32));
    let e = rollback(&bus, &flow, &app.name, Some(&missing)).await;
    let mine = flow_of(&bus, &e).await;
    assert_eq!(types(&mine), ["rollback.requested", "update.started", "update.failed"]);
    let EventData::UpdateFailed(f) = &mine[2].data else { panic!() };
    assert!(f.reason.contains("no longer on this host and cannot be pulled"), "{}", f.reason);
    assert!(runs(&app.name).contains(&v2) && http_get(app.port).is_some_and(|b| b.contains("v2")));
    for a in [&plain.name, &watched.name, &manual.name, &app.name] {
        no_strays(a);
    }
}

/// The local image ids of a repository's digests.
fn present(reference: &str) -> bool {
    try_docker(&["image", "inspect", reference]).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_only_unused_old_images_of_the_managed_repository() {
    let bus = TestBus::new("rbprune").await;
    let flow = flow(&bus).await;
    let app = app(&AUTOMATIC);
    let repo = app.image.rsplit_once(':').map(|(r, _)| r.to_owned()).expect("repo:tag");
    // Three newer builds of the app, one second apart (the engine's build time is in seconds).
    // Labels unique to the run: a cached build would share its image with another test's.
    let run = unique_name("build");
    let mut built = vec![];
    for n in ["a", "b", "c"] {
        built.push(build_and_push(
            &app.image,
            &format!("FROM steward-test/app:v2\nLABEL steward.test.build={run}-{n}\n"),
        ));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let [da, db, dc] = [&built[0], &built[1], &built[2]].map(|d| format!("{repo}@{d}"));
    // An image of a repository Steward has no record of, unused: never touched.
    let other = format!("{}/{}:1", steward_testkit::docker::registry(), unique_name("other"));
    let _other_tag = ImageTag(other.clone());
    build_and_push(&other, &format!("FROM steward-test/app:v1\nLABEL steward.test.other={run}\n"));
    // A stopped container on the oldest build.
    let stopped = Container::run(&unique_name("stopped"), &["--entrypoint", "true", &da]);
    wait_for("stopped", Duration::from_secs(10), || {
        try_docker(&["inspect", "-f", "{{.State.Running}}", &stopped.name]).filter(|r| r == "false")
    });

    // v1 -> c: after the success, nothing goes (c runs, b is among the newest two, a is used
    // by the stopped container, v1 is what a rollback brings back).
    let (event, u) = image_updated(&bus, &app, &built[2]).await;
    Box::pin(flow.on_image_updated(&event, &u)).await.expect("update");
    assert!(runs(&app.name).contains(built[2].as_str()));
    for r in [&da, &db, &dc, &format!("{repo}@{}", app.v1), &other] {
        assert!(present(r), "{r} removed");
    }
    assert!(!types(&events(&bus).await).contains(&"image.pruned"));

    // The stopped container goes: a is removed, and only a.
    drop(stopped);
    let told = flow.prune(None).await.expect("prune");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].repository, repo);
    assert_eq!(told[0].images.len(), 1, "{told:?}");
    assert!(told[0].images[0].repo_digests.contains(&da), "{told:?}");
    assert!(told[0].bytes_freed > 0 && told[0].kept == 2);
    assert!(!present(&da), "a stays");
    for r in [&db, &dc, &format!("{repo}@{}", app.v1), &other] {
        assert!(present(r), "{r} removed");
    }
    assert!(types(&events(&bus).await).contains(&"image.pruned"));
    // Again: nothing more to do.
    assert!(flow.prune(None).await.expect("prune again").is_empty());
}
