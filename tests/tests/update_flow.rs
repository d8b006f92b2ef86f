//! Watcher and updater as real processes: a manual update approved with `steward approve`,
//! and an updater killed with SIGKILL in the middle of an update, then restarted.

use std::process::Command;
use std::time::{Duration, Instant};

use steward_bus::{Bus, StateStore};
use steward_events::records::{UpdateRecord, UpdateStep, UPDATE_BUCKET};
use steward_events::{Event, EventData};
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::docker::{docker, push_app, Container};
use steward_testkit::{http_get, stored_events, unique_name, wait_for, TestBus};

fn service(bin: &str, bus: &Bus, scope: &str) -> Proc {
    let extra = [
        ("STEWARD_SCOPE", scope.to_owned()),
        ("STEWARD_HEALTH_TIMEOUT", "60s".into()),
        ("STEWARD_HEALTH_GRACE", "3s".into()),
    ];
    Proc::service(bin, bus, &extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_update_waits_for_steward_approve() {
    let bus = TestBus::new("e2emanual").await;
    let scope = unique_name("scope");
    let app = app(&scope, "manual", &[]);
    let _watcher = service("steward-watcher", &bus, &scope);
    let _updater = service("steward-updater", &bus, &scope);
    push_app("v2", &app.image);

    steward(&bus, &["check"]);
    wait_event(&bus, "update.pending", Duration::from_secs(30)).await;
    let listed = steward(&bus, &["updates"]);
    let row = listed.lines().find(|l| l.contains(&app.name)).unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains("pending"), "{row}");
    let id = row.split_whitespace().next().expect("id");
    assert!(
        http_get(app.port).is_some_and(|b| b.contains("app v1")),
        "nothing changes before approval"
    );

    let out = steward(&bus, &["approve", &id[..8]]);
    assert!(out.starts_with("approved update"), "{out}");
    let all = wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
    let kinds: Vec<&str> = all.iter().map(Event::event_type).collect();
    assert_eq!(
        kinds,
        [
            "watch.requested",
            "image.updated",
            "update.pending",
            "update.approved",
            "update.started",
            "update.succeeded"
        ]
    );
    assert!(
        all.iter().all(|e| e.correlation_id == all[0].correlation_id),
        "one flow from the check to the outcome"
    );

    // Checking again finds nothing new: the container runs the registry's digest now.
    steward(&bus, &["check"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stored_events(&bus).await.iter().filter(|e| e.event_type() == "image.updated").count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updater_killed_mid_update_is_rolled_back_by_its_successor() {
    let bus = TestBus::new("e2ekill").await;
    let scope = unique_name("scope");
    let app = app(&scope, "automatic", &[]);
    let _watcher = service("steward-watcher", &bus, &scope);
    let mut updater = service("steward-updater", &bus, &scope);
    // The broken v3 keeps the updater in its health gate for seconds: kill it there.
    push_app("v3", &app.image);
    steward(&bus, &["check"]);
    let records: StateStore<UpdateRecord> =
        StateStore::open(&bus, UPDATE_BUCKET).await.expect("records");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let step = records.get(&app.name).await.expect("get").map(|v| v.value.step);
        if step == Some(UpdateStep::Gating) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reached the health gate: {step:?}\n{}",
            updater.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = updater.child.id().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().expect("kill").success());
    let _ = updater.child.wait();

    let _successor = service("steward-updater", &bus, &scope);
    let all = wait_event(&bus, "update.rolled_back", Duration::from_secs(60)).await;
    let Some(EventData::UpdateRolledBack(r)) =
        all.iter().rev().map(|e| &e.data).find(|d| matches!(d, EventData::UpdateRolledBack(_)))
    else {
        unreachable!()
    };
    assert!(r.reason.contains("restarted"), "{}", r.reason);
    wait_for("v1 served again", Duration::from_secs(15), || {
        http_get(app.port).filter(|b| b.contains("app v1"))
    });
    let named: Vec<String> = docker(&["ps", "-a", "--format", "{{.Names}}"])
        .lines()
        .filter(|n| n.starts_with(&app.name))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        named,
        std::slice::from_ref(&app.name),
        "exactly one container of that name, no strays"
    );
    assert_eq!(
        records.get(&app.name).await.expect("get").map(|v| v.value.step),
        Some(UpdateStep::RolledBack)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_in_the_apps_network_namespace_follow_it_through_the_update() {
    let bus = TestBus::new("e2edeps").await;
    let scope = unique_name("scope");
    let app = app(&scope, "automatic", &[]);
    let old_id = docker(&["inspect", "-f", "{{.Id}}", &app.name]);
    // One sidecar names the app (docker run --network container:NAME), one its id (what
    // compose's `network_mode: service:app` becomes).
    let sidecar = |suffix: &str, target: &str| {
        Container::run(
            &format!("{}-{suffix}", app.name),
            &[
                "--network",
                &format!("container:{target}"),
                "--entrypoint",
                "/bin/sleep",
                &app.image,
                "3600",
            ],
        )
    };
    let by_name = sidecar("byname", &app.name);
    let by_id = sidecar("byid", &old_id);
    let served_to =
        |c: &Container| docker(&["exec", &c.name, "wget", "-qO-", "http://127.0.0.1:8080/"]);
    assert!(served_to(&by_name).contains("app v1") && served_to(&by_id).contains("app v1"));

    let _watcher = service("steward-watcher", &bus, &scope);
    let _updater = service("steward-updater", &bus, &scope);
    push_app("v2", &app.image);
    steward(&bus, &["check"]);
    wait_event(&bus, "update.succeeded", Duration::from_secs(90)).await;

    let new_id = docker(&["inspect", "-f", "{{.Id}}", &app.name]);
    assert_ne!(new_id, old_id);
    let mode = |c: &Container| docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", &c.name]);
    // The engine stores the id either way; both now name the new container.
    assert_eq!(mode(&by_name), format!("container:{new_id}"));
    assert_eq!(mode(&by_id), format!("container:{new_id}"));
    // They share the new container's namespace: its server answers on their loopback.
    assert!(served_to(&by_name).contains("app v2"), "{}", served_to(&by_name));
    assert!(served_to(&by_id).contains("app v2"));
    let leftovers = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("name={}-by", app.name),
    ]);
    assert_eq!(leftovers.lines().count(), 2, "stray sidecar containers: {leftovers}");
}
