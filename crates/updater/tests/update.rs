//! The updater's flow against the real Docker engine, the test bed's registry and NATS.

mod common;

use common::*;

use std::time::Duration;

use steward_events::records::UpdateStep;
use steward_events::{BackupDone, BackupFailed, Event, EventData, UpdateApproved, UpdateRejected};
use steward_testkit::docker::{docker, push_app, try_docker, Container, SwapLeftovers};
use steward_testkit::{free_port, http_get, unique_name, wait_for, TestBus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_update_serves_v2_and_one_correlation_id_runs_through() {
    let bus = TestBus::new("updauto").await;
    let app = app(&["steward.update.policy=automatic", "steward.update.backup=false"]);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");

    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
    let all = events(&bus).await;
    assert_eq!(types(&all), ["image.updated", "update.started", "update.succeeded"]);
    assert!(all.iter().all(|e| e.correlation_id == event.correlation_id), "one flow");
    assert_eq!(all[1].causation_id, Some(all[0].id));
    assert_eq!(all[2].causation_id, Some(all[1].id));
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(record.step, UpdateStep::Succeeded);
    assert_eq!(
        docker(&["inspect", "-f", "{{.Config.Image}}", &app.name]),
        app.image,
        "still created from its tag"
    );
    no_strays(&app.name);

    // A redelivery of the same event changes nothing.
    flow.on_image_updated(&event, &u).await.expect("redelivery");
    assert_eq!(events(&bus).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_image_is_rolled_back_with_its_reason_and_log() {
    let bus = TestBus::new("updbroken").await;
    let app = app(&["steward.update.policy=automatic", "steward.update.backup=false"]);
    let v3 = push_app("v3", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v3).await;
    flow.on_image_updated(&event, &u).await.expect("update");

    wait_for("v1 served again", Duration::from_secs(10), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    let all = events(&bus).await;
    assert_eq!(types(&all), ["image.updated", "update.started", "update.rolled_back"]);
    let EventData::UpdateRolledBack(r) = &all[2].data else { panic!("not rolled back") };
    assert!(r.reason.contains("unhealthy"), "{}", r.reason);
    assert_eq!(r.old_healthy, Some(true), "the old container passed the check again");
    assert!(r.old_reason.is_none() && r.old_log_tail.is_empty());
    assert!(
        r.log_tail.iter().any(|l| l.contains("fatal: cannot read configuration")),
        "{:?}",
        r.log_tail
    );
    assert_eq!(
        flow.records.get(&app.name).await.expect("get").expect("record").value.step,
        UpdateStep::RolledBack
    );
    no_strays(&app.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_waits_for_a_human_reject_leaves_it_and_approve_updates() {
    let bus = TestBus::new("updmanual").await;
    let app = app(&["steward.update.policy=manual", "steward.update.backup=false"]);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;

    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("pending");
    assert_eq!(types(&events(&bus).await), ["image.updated", "update.pending"]);
    assert!(
        http_get(app.port).is_some_and(|b| b.contains("app v1")),
        "nothing changes before approval"
    );
    let update_id =
        flow.records.get(&app.name).await.expect("get").expect("record").value.update_id;
    assert_ne!(update_id, event.id, "the updater mints its own update ids");
    flow.on_rejected(&UpdateRejected { update_id, by: "ops@host".into(), reason: None })
        .await
        .expect("reject");
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(record.step, UpdateStep::Rejected);
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")));
    // Approving a rejected update does nothing.
    flow.on_approved(&UpdateApproved { update_id, by: "ops@host".into() })
        .await
        .expect("late approve");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")));

    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("pending again");
    let update_id =
        flow.records.get(&app.name).await.expect("get").expect("record").value.update_id;
    flow.on_approved(&UpdateApproved { update_id, by: "ops@host".into() }).await.expect("approve");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
    let last: Vec<&str> = types(&events(&bus).await).into_iter().rev().take(2).collect();
    assert_eq!(last, ["update.succeeded", "update.started"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_update_waits_for_its_backup_and_a_failed_backup_touches_nothing() {
    let bus = TestBus::new("updbackup").await;
    let app = app(&["steward.update.policy=automatic"]);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;

    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("start");
    let all = events(&bus).await;
    assert_eq!(types(&all), ["image.updated", "update.started", "backup.requested"]);
    let failed = Event::caused_by(
        &all[2],
        "steward-backup/test",
        BackupFailed { backup_id: None, reason: "S3 unreachable".into(), stderr_tail: vec![] },
    );
    bus.publish(&failed).await.expect("publish");
    flow.on_backup_outcome(&failed).await.expect("outcome");
    let all = events(&bus).await;
    let EventData::UpdateFailed(f) = &all.last().expect("event").data else {
        panic!("{:?}", types(&all))
    };
    assert!(f.reason.contains("pre-update backup failed: S3 unreachable"), "{}", f.reason);
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "untouched");

    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("start again");
    let requested = events(&bus).await.into_iter().last().expect("backup.requested");
    // A backup outcome of another flow is not taken for this one.
    let other = Event::new("steward-backup/test", done("other"));
    flow.on_backup_outcome(&other).await.expect("unrelated");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")));
    let done = Event::caused_by(&requested, "steward-backup/test", done("b1"));
    bus.publish(&done).await.expect("publish");
    flow.on_backup_outcome(&done).await.expect("outcome");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
    assert_eq!(events(&bus).await.last().map(Event::event_type), Some("update.succeeded"));
}

fn done(id: &str) -> BackupDone {
    BackupDone {
        backup_id: id.into(),
        manifest_key: format!("{id}/manifest.json"),
        size_bytes: 1,
        components: vec![],
        duration_ms: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updater_that_dies_mid_update_is_rolled_back_by_the_next_one() {
    let bus = TestBus::new("updcrash").await;
    let app = app(&["steward.update.policy=automatic", "steward.update.backup=false"]);
    // v3 takes seconds to be declared unhealthy: the updater dies during its health gate.
    let v3 = push_app("v3", &app.image);
    let first = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v3).await;
    let task = tokio::spawn(async move { first.on_image_updated(&event, &u).await });
    let second = flow(&bus).await;
    wait_for("the swap", Duration::from_secs(30), || {
        let step =
            futures_lite_block(second.records.get(&app.name)).ok().flatten().map(|v| v.value.step);
        (step == Some(UpdateStep::Gating)).then_some(())
    });
    task.abort();
    let _ = task.await;

    assert!(second.resume().await.is_empty(), "resume");
    wait_for("v1 served again", Duration::from_secs(10), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    let all = events(&bus).await;
    let EventData::UpdateRolledBack(r) = &all.last().expect("event").data else {
        panic!("{:?}", types(&all))
    };
    assert!(r.reason.contains("restarted"), "{}", r.reason);
    assert_eq!(
        docker(&["ps", "--filter", &format!("name=^{}$", app.name), "-q"]).lines().count(),
        1
    );
    no_strays(&app.name);
    // Resuming again finds nothing to do.
    assert!(second.resume().await.is_empty(), "resume again");
    assert_eq!(events(&bus).await.len(), all.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimum_age_defers_the_update_until_the_digest_is_old_enough() {
    let bus = TestBus::new("updminage").await;
    let app = app(&[
        "steward.update.policy=automatic",
        "steward.update.backup=false",
        "steward.update.min_age=3s",
    ]);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("deferred");
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(record.step, UpdateStep::Deferred);
    assert!(
        record.reason.as_deref().is_some_and(|r| r.contains("minimum age")),
        "{:?}",
        record.reason
    );
    flow.sweep().await.expect("sweep");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "too young to start");

    tokio::time::sleep(Duration::from_secs(3)).await;
    flow.sweep().await.expect("sweep");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
    assert_eq!(types(&events(&bus).await), ["image.updated", "update.started", "update.succeeded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_wait_for_a_closed_window_and_go_ahead_in_an_open_one() {
    let now = chrono::Local::now().naive_local();
    let window = |from: chrono::NaiveDateTime| {
        let to = from + chrono::Duration::hours(1);
        format!("steward.update.window={}-{}", from.format("%H:%M"), to.format("%H:%M"))
    };
    let bus = TestBus::new("updwindow").await;
    let closed = window(now + chrono::Duration::hours(6));
    let outside = app(&["steward.update.policy=automatic", "steward.update.backup=false", &closed]);
    let v2 = push_app("v2", &outside.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &outside, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("deferred");
    let record = flow.records.get(&outside.name).await.expect("get").expect("record").value;
    assert_eq!(record.step, UpdateStep::Deferred);
    assert!(
        record.reason.as_deref().is_some_and(|r| r.contains("maintenance window opens")),
        "{:?}",
        record.reason
    );
    flow.sweep().await.expect("sweep");
    assert!(
        http_get(outside.port).is_some_and(|b| b.contains("app v1")),
        "outside the window nothing happens"
    );

    let open = window(now - chrono::Duration::minutes(5));
    let inside = app(&["steward.update.policy=automatic", "steward.update.backup=false", &open]);
    let v2 = push_app("v2", &inside.image);
    let (event, u) = image_updated(&bus, &inside, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    assert!(
        http_get(inside.port).is_some_and(|b| b.contains("app v2")),
        "inside the window it goes ahead"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_hook_runs_in_the_old_container_and_a_failing_one_stops_the_update() {
    let bus = TestBus::new("updhook").await;
    let failing = app(&[
        "steward.update.policy=automatic",
        "steward.update.backup=false",
        "steward.update.pre=echo flushing; echo queue busy >&2; exit 3",
    ]);
    let v2 = push_app("v2", &failing.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &failing, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    let all = events(&bus).await;
    let EventData::UpdateFailed(f) = &all.last().expect("event").data else {
        panic!("{:?}", types(&all))
    };
    assert!(f.reason.contains("exited with 3"), "{}", f.reason);
    // stdout and stderr arrive as separate streams: both lines, in either order.
    let mut tail = f.log_tail.clone();
    tail.sort();
    assert_eq!(tail, ["flushing", "queue busy"]);
    assert!(http_get(failing.port).is_some_and(|b| b.contains("app v1")), "untouched");

    // The hook writes to a volume the new container mounts too: it ran, in the old one,
    // before the swap (the new container was created after it and finds the file).
    let volume = unique_name("hook-vol");
    let mount = format!("{volume}:/data");
    let ok = app_with_args(
        &[
            "steward.update.policy=automatic",
            "steward.update.backup=false",
            "steward.update.pre=cat /VERSION > /data/hook.txt",
        ],
        &["-v", &mount],
    );
    let v2 = push_app("v2", &ok.image);
    let (event, u) = image_updated(&bus, &ok, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    assert!(http_get(ok.port).is_some_and(|b| b.contains("app v2")));
    assert_eq!(
        docker(&["exec", &ok.name, "cat", "/data/hook.txt"]),
        "v1",
        "written by the old container"
    );
    drop(ok);
    let _ = std::process::Command::new("docker").args(["volume", "rm", &volume]).output();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_waits_for_the_update_of_the_database_it_depends_on() {
    // Two containers of one compose project as compose v2 labels them: `web` depends on `db`.
    let bus = TestBus::new("upddeps").await;
    let project = format!("project={}", unique_name("deps"));
    let label = |l: &str| format!("com.docker.compose.{l}");
    let db = app(&[
        "steward.update.policy=automatic",
        &label(&project),
        &label("service=db"),
        &label("depends_on="),
    ]);
    let web = app(&[
        "steward.update.policy=automatic",
        "steward.update.backup=false",
        &label(&project),
        &label("service=web"),
        &label("depends_on=db:service_healthy:false"),
    ]);
    let db_v2 = push_app("v2", &db.image);
    let web_v2 = push_app("v2", &web.image);
    let flow = flow(&bus).await;

    // The database's update starts first and waits for its backup; the app's waits for it.
    let (event, u) = image_updated(&bus, &db, &db_v2).await;
    flow.on_image_updated(&event, &u).await.expect("db starts");
    let (event, u) = image_updated(&bus, &web, &web_v2).await;
    flow.on_image_updated(&event, &u).await.expect("web deferred");
    let record = flow.records.get(&web.name).await.expect("get").expect("record").value;
    assert_eq!(record.step, UpdateStep::Deferred);
    let reason = record.reason.unwrap_or_default();
    assert!(reason.contains(&format!("the update of {} (depends_on) first", db.name)), "{reason}");
    flow.sweep().await.expect("sweep");
    assert!(http_get(web.port).is_some_and(|b| b.contains("app v1")), "web waits");

    let requested = events(&bus)
        .await
        .into_iter()
        .find(|e| e.event_type() == "backup.requested")
        .expect("db's backup.requested");
    let done = Event::caused_by(&requested, "steward-backup/test", done("deps"));
    bus.publish(&done).await.expect("publish");
    flow.on_backup_outcome(&done).await.expect("db updates");
    assert!(http_get(db.port).is_some_and(|b| b.contains("app v2")));
    flow.sweep().await.expect("sweep");
    assert!(http_get(web.port).is_some_and(|b| b.contains("app v2")), "then web");

    // In the trail: the database's update succeeded before the app's started.
    let all = events(&bus).await;
    let at = |container: &str, kind: &str| {
        all.iter()
            .position(|e| e.event_type() == kind && e.container() == Some(container))
            .unwrap_or_else(|| panic!("no {kind} of {container}: {:?}", types(&all)))
    };
    assert!(at(&db.name, "update.succeeded") < at(&web.name, "update.started"));
}

/// A container in `app`'s network namespace (`--network container:NAME`, as compose's
/// `network_mode: service:app`), idling.
fn sidecar(app: &App) -> Container {
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
}

/// What the app serves on the sidecar's loopback, and the namespace it is in.
fn seen_from(side: &Container) -> (String, String) {
    let body = docker(&["exec", &side.name, "wget", "-qO-", "http://127.0.0.1:8080/"]);
    (body, docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &side.name]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_takes_the_network_namespace_dependents_back_to_the_old_container() {
    let bus = TestBus::new("updsiderb").await;
    let app = app(&["steward.update.policy=automatic", "steward.update.backup=false"]);
    let old_id = docker(&["inspect", "-f", "{{.Id}}", &app.name]);
    let side = sidecar(&app);
    let _side_parked = SwapLeftovers(side.name.clone());
    let v3 = push_app("v3", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v3).await;
    flow.on_image_updated(&event, &u).await.expect("update");

    assert_eq!(types(&events(&bus).await).last(), Some(&"update.rolled_back"));
    let (body, mode) = seen_from(&side);
    assert!(body.contains("app v1"), "{body}");
    assert_eq!(mode, format!("container:{old_id}"));
    no_strays(&side.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_cut_off_half_way_through_its_recreation_is_repaired_on_resume() {
    let bus = TestBus::new("updsidecrash").await;
    let app = app(&["steward.update.policy=automatic", "steward.update.backup=false"]);
    let old_id = docker(&["inspect", "-f", "{{.Id}}", &app.name]);
    let side = sidecar(&app);
    let _side_parked = SwapLeftovers(side.name.clone());
    let v3 = push_app("v3", &app.image);
    let first = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v3).await;
    let task = tokio::spawn(async move { first.on_image_updated(&event, &u).await });
    let second = flow(&bus).await;
    // The sidecar has joined the new container and its old self is gone (the rejoin is
    // over, not half-way); the gate is judging v3.
    wait_for("the dependent's rejoin", Duration::from_secs(30), || {
        let step =
            futures_lite_block(second.records.get(&app.name)).ok().flatten().map(|v| v.value.step);
        let mode = try_docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &side.name])?;
        let parked = try_docker(&["inspect", &format!("{}-steward-old", side.name)]).is_some();
        (step == Some(UpdateStep::Gating) && mode != format!("container:{old_id}") && !parked)
            .then_some(())
    });
    task.abort();
    let _ = task.await;
    // The updater died during the rollback's rejoin of the sidecar, between stopping it and
    // giving its name to the new one: the state that swap leaves at that instant.
    let new_id = docker(&["inspect", "-f", "{{.Id}}", &app.name]);
    docker(&["stop", "-t", "1", &side.name]);
    docker(&["rename", &side.name, &format!("{}-steward-old", side.name)]);
    docker(&[
        "create",
        "--name",
        &format!("{}-steward-new", side.name),
        "--network",
        &format!("container:{new_id}"),
        "--entrypoint",
        "/bin/sleep",
        &app.image,
        "3600",
    ]);

    assert!(second.resume().await.is_empty(), "resume");
    wait_for("v1 served again", Duration::from_secs(10), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    let (body, mode) = seen_from(&side);
    assert!(body.contains("app v1"), "{body}");
    assert_eq!(mode, format!("container:{old_id}"));
    no_strays(&side.name);
    let all = events(&bus).await;
    let EventData::UpdateRolledBack(r) = &all.last().expect("event").data else {
        panic!("{:?}", types(&all))
    };
    assert!(r.reason.contains("restarted"), "{}", r.reason);
}

/// A release that comes while the container's update is under way waits for it, then is
/// applied: the watcher announces a digest once, so dropping it would lose it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_image_during_an_update_waits_for_it_and_is_applied_after() {
    let bus = TestBus::new("updqueue").await;
    let app = app(&["steward.update.policy=automatic"]);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("start");
    let requested = events(&bus).await.into_iter().last().expect("backup.requested");
    assert_eq!(requested.event_type(), "backup.requested");

    // v3 is released while v2's update waits for its backup: it waits, not dropped.
    let v3 = push_app("v3", &app.image);
    let (later, u3) = image_updated(&bus, &app, &v3).await;
    flow.on_image_updated(&later, &u3).await.expect("queued");
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(record.to_digest.to_string(), v2, "the update in progress keeps the container");
    assert!(flow.queue.get(&app.name).await.expect("queue").is_some(), "v3 waits");
    // A redelivery of v2's news and the sweep leave it waiting while v2's update is on.
    flow.on_image_updated(&event, &u).await.expect("redelivered");
    flow.sweep().await.expect("sweep");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(record.to_digest.to_string(), v2);
    let waiting = flow.queue.get(&app.name).await.expect("queue").expect("still waits").value;
    assert_eq!(waiting.events.iter().map(|e| e.id).collect::<Vec<_>>(), [later.id]);

    // v2's update ends (its backup failed); the next sweep takes v3 up.
    let failed = Event::caused_by(
        &requested,
        "steward-backup/test",
        BackupFailed { backup_id: None, reason: "S3 unreachable".into(), stderr_tail: vec![] },
    );
    bus.publish(&failed).await.expect("publish");
    flow.on_backup_outcome(&failed).await.expect("outcome");
    flow.sweep().await.expect("sweep");
    let v3_claimed = wait_for("v3's update", Duration::from_secs(20), || {
        let r = futures_lite_block(flow.records.get(&app.name)).ok().flatten()?.value;
        (r.to_digest.to_string() == v3 && r.step == UpdateStep::AwaitingBackup).then_some(r)
    });
    assert_eq!(v3_claimed.news_id, Some(later.id));
    wait_for("the queue emptied", Duration::from_secs(10), || {
        futures_lite_block(flow.queue.get(&app.name)).ok()?.is_none().then_some(())
    });
}

/// Removes a named volume when the test ends.
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["volume", "rm", "-f", &self.0]).output();
    }
}

/// Issue 19: a rollback that leaves the service down on both images says so. The release
/// damaged the data both versions serve (here: the file the health URL names is gone), so the
/// old container runs again but fails the same check: `update.rolled_back` carries
/// `old_healthy: false`, why, and the old container's log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_that_leaves_the_old_container_unhealthy_says_so() {
    let bus = TestBus::new("updstillfailed").await;
    let volume = Volume(unique_name("updstill"));
    docker(&["volume", "create", &volume.0]);
    let mount = format!("{}:/www/data", volume.0);
    docker(&[
        "run",
        "--rm",
        "-v",
        &mount,
        "steward-test/busybox",
        "sh",
        "-c",
        "echo ok > /www/data/ok.html",
    ]);
    let port = free_port();
    let url = format!("steward.health.url=http://127.0.0.1:{port}/data/ok.html");
    let app = app_on_port(
        port,
        &["steward.update.policy=automatic", "steward.update.backup=false", &url],
        &["-v", &mount],
    );
    let v3 = steward_testkit::docker::push_app("v3", &app.image);
    let flow = flow_with(&bus, |cfg| cfg.health_timeout = Duration::from_secs(8)).await;
    // What the broken release did to the data: gone for the old version too.
    docker(&["run", "--rm", "-v", &mount, "steward-test/busybox", "rm", "/www/data/ok.html"]);
    let (event, u) = image_updated(&bus, &app, &v3).await;
    flow.on_image_updated(&event, &u).await.expect("update");
    let all = events(&bus).await;
    let EventData::UpdateRolledBack(r) = &all.last().expect("event").data else {
        panic!("{:?}", types(&all))
    };
    assert_eq!(r.old_healthy, Some(false), "{r:?}");
    let why = r.old_reason.as_deref().unwrap_or_default();
    assert!(why.contains("the old container") && why.contains("404"), "{why}");
    assert!(r.old_log_tail.iter().any(|l| l.contains("response:404")), "{:?}", r.old_log_tail);
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "the old one runs");
}
