//! The update flow end to end on Podman: watcher and updater as real processes whose engine is
//! Podman's Docker-compatible service (`DOCKER_HOST` = the test bed's Podman socket), the
//! image in the test bed's registry, the stand-in app run by Podman with its own healthcheck.
//! An automatic update to a healthy image succeeds through the health gate; one to the broken
//! image is rolled back. Before the engine ran Podman's healthchecks itself (Podman runs them
//! from systemd timers, and the test bed's service has no systemd) the gate waited at
//! `starting` until its bound and every update on Podman was rolled back.
//!
//! Skipped (with the reason printed) without a Podman service, unless
//! `STEWARD_TEST_ENGINE=podman` asks for it.

use std::time::Duration;

use steward_events::{Event, EventData};
use steward_system_tests::apps::{podman_app, wait_event};
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::podman::cli;
use steward_testkit::{http_get, unique_name, wait_for, TestBus};

fn service(bin: &str, bus: &steward_bus::Bus, scope: &str, socket: &str) -> Proc {
    let extra = [
        ("DOCKER_HOST", format!("unix://{socket}")),
        ("STEWARD_SCOPE", scope.to_owned()),
        ("STEWARD_HEALTH_TIMEOUT", "40s".into()),
        ("STEWARD_HEALTH_GRACE", "3s".into()),
    ];
    Proc::service(bin, bus, &extra)
}

/// The outcomes so far, in order.
fn outcomes(all: &[Event]) -> Vec<&str> {
    all.iter()
        .map(Event::event_type)
        .filter(|t| ["update.succeeded", "update.rolled_back", "update.failed"].contains(t))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_on_podman_passes_its_health_gate_and_a_broken_one_is_rolled_back() {
    let Some(socket) = steward_testkit::podman::socket() else { return };
    let bus = TestBus::new("podflow").await;
    let scope = unique_name("scope");
    let mut app = podman_app(&scope, "automatic");
    let (name, port) = (app.name.clone(), app.port);
    let watcher = service("steward-watcher", &bus, &scope, &socket);
    let updater = service("steward-updater", &bus, &scope, &socket);

    app.push("v2");
    steward(&bus, &["check"]);
    let all = wait_event(&bus, "update.succeeded", Duration::from_secs(90)).await;
    assert_eq!(
        outcomes(&all),
        ["update.succeeded"],
        "updater:\n{}\nwatcher:\n{}",
        updater.logs(),
        watcher.logs()
    );
    assert!(http_get(port).is_some_and(|b| b.contains("app v2")), "v2 not served after success");

    // v3 serves nothing healthy: the gate sees Podman's record turn `unhealthy`.
    app.push("v3");
    steward(&bus, &["check"]);
    let all = wait_event(&bus, "update.rolled_back", Duration::from_secs(120)).await;
    assert_eq!(outcomes(&all), ["update.succeeded", "update.rolled_back"], "{}", updater.logs());
    let reason = all
        .iter()
        .find_map(|e| match &e.data {
            EventData::UpdateRolledBack(r) => Some(r.reason.clone()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(reason.contains("unhealthy"), "rolled back for another reason: {reason}");
    wait_for("v2 served again", Duration::from_secs(20), || {
        http_get(port).filter(|b| b.contains("app v2"))
    });
    // Nothing of the swap is left on Podman but the container itself.
    let listed = cli(&["ps", "-a", "--format", "{{.Names}}"]);
    let left: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|n| n.starts_with(&name))
        .map(str::to_owned)
        .collect();
    assert_eq!(left, std::slice::from_ref(&name));
}
