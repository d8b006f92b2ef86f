//! `steward rollback` end to end: the CLI asks, the real updater answers, the CLI prints the
//! outcome (a refusal, then a rollback through the health gate).

use std::time::Duration;

use steward_events::{Digest, Event, ImageUpdated};
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::{steward, Proc};
use steward_testkit::docker::push_app;
use steward_testkit::{http_get, unique_name, TestBus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steward_rollback_prints_a_refusal_and_then_rolls_back() {
    let bus = TestBus::new("rbcli").await;
    let scope = unique_name("scope");
    let app = app(&scope, "automatic", &[]);
    let mut updater = Proc::service(
        "steward-updater",
        &bus,
        &[("STEWARD_SCOPE", scope.clone()), ("STEWARD_HEALTH_GRACE", "2s".into())],
    );

    // Never updated: refused, exit 1, nothing changed.
    let out = steward(&bus, &["rollback", &app.name, "--wait", "60s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rollback refused: no previous image"), "{stderr}");

    let v2 = push_app("v2", &app.image);
    let news = ImageUpdated {
        container: app.name.clone(),
        image: app.image.clone(),
        current_digest: Digest::parse(&app.v1).expect("digest"),
        new_digest: Digest::parse(&v2).expect("digest"),
        new_tag: None,
        policy: None,
        versions: Default::default(),
    };
    bus.publish(&Event::new("steward-watcher/test", news)).await.expect("publish");
    wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));

    let out = steward(&bus, &["rollback", &app.name, "--wait", "120s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), updater.logs());
    let short = &app.v1["sha256:".len().."sha256:".len() + 12];
    assert!(stdout.contains(&format!("rolled back {} to {short}", app.name)), "{stdout}");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "v1 served again");
    assert_eq!(updater.terminate(Duration::from_secs(30)), Some(0));
}
