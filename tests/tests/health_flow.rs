//! The health service and the notifier as real processes against real containers: a stopped
//! container is one `health.failed` and one mail, survives a health-service restart without a
//! second one, and its start is one `health.recovered`; a database passes `pg_isready`; a
//! compose one-off with the same labels is never probed nor restarted.

use std::time::Duration;

use steward_bus::Bus;
use steward_events::{Event, EventData};
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::mail::{
    mails_to, testbed_maildir, testbed_notifier_env, unique_address, wait_mails,
};
use steward_system_tests::Proc;
use steward_testkit::docker::{docker, postgres};
use steward_testkit::{free_port, stored_events, unique_name, wait_for, TestBus};

async fn count(bus: &Bus, kind: &str, container: &str) -> usize {
    stored_events(bus)
        .await
        .iter()
        .filter(|e| e.event_type() == kind && e.container() == Some(container))
        .count()
}

fn health(bus: &Bus, scope: &str, port: u16) -> Proc {
    Proc::service(
        "steward-health",
        bus,
        &[
            ("STEWARD_SCOPE", scope.to_owned()),
            ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("STEWARD_HEALTH_INTERVAL", "1s".into()),
            ("STEWARD_HEALTH_FAILURES", "2".into()),
            ("STEWARD_HEALTH_RECOVERIES", "2".into()),
        ],
    )
}

fn metrics(port: u16) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_container_is_reported_once_and_its_recovery_once() {
    let bus = TestBus::new("health").await;
    let scope = unique_name("scope");
    let to = unique_address("health");
    let maildir = testbed_maildir();
    let app = app(&scope, "notify", &["steward.health.url=http://127.0.0.1:{port}/".into()]);
    let db_name = unique_name("healthdb");
    let scope_label = format!("steward.scope={scope}");
    let _db = postgres(&db_name, &["steward.backup.postgres=true", &scope_label], "gitea");
    let port = free_port();
    let mut prober = health(&bus, &scope, port);
    let _notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));

    // Both probed and up: the HTTP probe's latency and pg_isready by exec.
    let up = |m: &str, name: &str| {
        let label = format!("container=\"{name}\"");
        m.lines()
            .any(|l| l.starts_with("steward_health_up{") && l.contains(&label) && l.ends_with(" 1"))
    };
    // Up, and the HTTP probe answered (its latency is recorded once the HEALTHCHECK left
    // `starting`).
    let latency = format!("container=\"{}\"", app.name);
    wait_for("both up and probed in /metrics", Duration::from_secs(20), || {
        let m = metrics(port);
        let probed = m.lines().any(|l| {
            l.starts_with("steward_health_probe_latency_seconds{") && l.contains(&latency)
        });
        (up(&m, &app.name) && up(&m, &db_name) && probed).then_some(())
    });

    docker(&["stop", "-t", "1", &app.name]);
    let all = wait_event(&bus, "health.failed", Duration::from_secs(20)).await;
    let failed = all.iter().find_map(|e| match &e.data {
        EventData::HealthFailed(f) => Some(f.clone()),
        _ => None,
    });
    let failed = failed.expect("failed");
    assert_eq!(failed.container, app.name);
    assert_eq!(failed.check, "running", "{failed:?}");
    assert_eq!(failed.consecutive_failures, 2);
    let mails = wait_mails(&maildir, &to, 1, Duration::from_secs(20));
    assert!(
        mails[0].subject.contains(&format!("{} is unhealthy (running)", app.name)),
        "{}",
        mails[0].subject
    );

    // Still down across more rounds and a restart of the health service: no second report.
    assert_eq!(prober.terminate(Duration::from_secs(10)), Some(0));
    let _prober = health(&bus, &scope, port);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count(&bus, "health.failed", &app.name).await, 1);

    docker(&["start", &app.name]);
    let all = wait_event(&bus, "health.recovered", Duration::from_secs(30)).await;
    let recovered = all.iter().find_map(|e| match &e.data {
        EventData::HealthRecovered(r) => Some(r.clone()),
        _ => None,
    });
    assert!(recovered.expect("recovered").down_for_ms >= 5000);
    let mails = wait_mails(&maildir, &to, 2, Duration::from_secs(20));
    assert!(mails[1].subject.contains(&format!("{} recovered", app.name)), "{}", mails[1].subject);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&bus, "health.failed", &app.name).await, 1);
    assert_eq!(count(&bus, "health.recovered", &app.name).await, 1);
    assert_eq!(mails_to(&maildir, &to).len(), 2);
    // The database was never reported.
    let about_db = stored_events(&bus)
        .await
        .into_iter()
        .filter(|e: &Event| e.container() == Some(db_name.as_str()))
        .count();
    assert_eq!(about_db, 0);
}

/// Issue 19: a container labelled `steward.health.restart=true` that the health service
/// declares down is restarted, once it proves healthy again the outage is over, and the whole
/// episode (down, restarted, recovered) is one flow mailed as it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_container_labelled_for_it_is_restarted_and_recovers() {
    let bus = TestBus::new("heal").await;
    let scope = unique_name("scope");
    let to = unique_address("heal");
    let app = app(
        &scope,
        "notify",
        &[
            "steward.health.url=http://127.0.0.1:{port}/".into(),
            "steward.health.restart=true".into(),
        ],
    );
    // Not labelled: stays down.
    let other = steward_system_tests::apps::app(&scope, "notify", &[]);
    // A compose one-off (`docker-compose run`: a migration, a deployment's test) carries its
    // service's labels, these included, but is not the service: never probed, never restarted.
    let one_off = steward_system_tests::apps::app(
        &scope,
        "notify",
        &[
            "steward.health.url=http://127.0.0.1:{port}/".into(),
            "steward.health.restart=true".into(),
            "com.docker.compose.oneoff=True".into(),
        ],
    );
    let port = free_port();
    let prober = health(&bus, &scope, port);
    let _notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));
    wait_for("both up in /metrics", Duration::from_secs(20), || {
        let m = metrics(port);
        let up = |name: &str| {
            let label = format!("container=\"{name}\"");
            m.lines().any(|l| {
                l.starts_with("steward_health_up{") && l.contains(&label) && l.ends_with(" 1")
            })
        };
        (up(&app.name) && up(&other.name)).then_some(())
    });

    // Both crash (exit; no restart policy).
    docker(&["kill", &app.name]);
    docker(&["kill", &other.name]);
    docker(&["kill", &one_off.name]);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while count(&bus, "health.recovered", &app.name).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery; health's log:\n{}",
            prober.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let running = |name: &str| docker(&["inspect", "-f", "{{.State.Running}}", name]);
    assert_eq!(running(&app.name), "true", "restarted");
    assert_eq!(running(&other.name), "false", "not labelled: left alone");
    assert_eq!(running(&one_off.name), "false", "a one-off was restarted");

    let all = stored_events(&bus).await;
    let flow_of = |kind: &str, name: &str| {
        all.iter()
            .find(|e| e.event_type() == kind && e.container() == Some(name))
            .map(|e| e.correlation_id)
    };
    let outage = flow_of("health.failed", &app.name).expect("declared down first");
    assert_eq!(flow_of("health.restarted", &app.name), Some(outage), "one flow");
    assert_eq!(flow_of("health.recovered", &app.name), Some(outage));
    assert_eq!(count(&bus, "health.restarted", &app.name).await, 1, "one restart was enough");
    assert_eq!(count(&bus, "health.restarted", &other.name).await, 0);
    assert_eq!(count(&bus, "health.failed", &other.name).await, 1);
    let about_one_off = all.iter().filter(|e| e.container() == Some(one_off.name.as_str())).count();
    assert_eq!(about_one_off, 0, "a one-off was probed");
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(20));
    let subjects: Vec<String> =
        mails_to(&testbed_maildir(), &to).into_iter().map(|m| m.subject).collect();
    assert!(
        subjects
            .iter()
            .any(|s| s.contains(&app.name) && (s.contains("restarted") || s.contains("unhealthy"))),
        "{subjects:?} {mails:?}"
    );
}
