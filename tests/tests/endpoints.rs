//! `/healthz`, `/readyz`, `/metrics` of a real service process; `/readyz` follows NATS and
//! Docker; SIGTERM stops it cleanly.

use std::time::{Duration, Instant};

use steward_bus::Namespace;
use steward_events::{Event, WatchRequested};
use steward_system_tests::Proc;
use steward_testkit::{bus_config, free_port, NatsServer, TestBus};

async fn get(port: u16, path: &str) -> (u16, String) {
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    match client.get(format!("http://127.0.0.1:{port}{path}")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

async fn wait_for(port: u16, path: &str, status: u16, bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        let (code, body) = get(port, path).await;
        if code == status {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never answered {status} (last {code}: {body})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn service_env(
    url: &str,
    ns: &Namespace,
    port: u16,
    docker_host: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("STEWARD_NATS_URL", url.to_owned()),
        ("STEWARD_STREAM", ns.stream.clone()),
        ("STEWARD_SUBJECT_PREFIX", ns.prefix.clone()),
        ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("DOCKER_HOST", docker_host.to_owned()),
        // The notifier needs a channel; the webhook is never called by these tests.
        ("STEWARD_WEBHOOK_URL", "http://127.0.0.1:9/unused".to_owned()),
    ]
}

#[tokio::test]
async fn endpoints_answer_and_readyz_follows_nats() {
    let mut nats = NatsServer::start();
    let cfg = bus_config(&nats.url(), "endpoints");
    let bus = TestBus::with_config(cfg.clone()).await;
    let port = free_port();
    let mut proc = Proc::start(
        "steward-watcher",
        &service_env(&nats.url(), &cfg.namespace, port, "unix:///var/run/docker.sock"),
    );

    assert_eq!(wait_for(port, "/healthz", 200, Duration::from_secs(15)).await.trim(), "ok");
    let ready: serde_json::Value =
        serde_json::from_str(&wait_for(port, "/readyz", 200, Duration::from_secs(10)).await)
            .expect("json");
    assert_eq!(
        (ready["nats"].as_str(), ready["docker"].as_str()),
        (Some("ok"), Some("ok")),
        "{ready}"
    );

    // Handle one event, and see it counted with its latency.
    bus.publish(&Event::new("test", WatchRequested::default())).await.expect("publish");
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (_, m) = get(port, "/metrics").await;
        if m.contains(
            r#"steward_events_handled_total{service="watcher",subject="watch.requested"} 1"#,
        ) {
            break m;
        }
        assert!(Instant::now() < deadline, "event not counted: {m}\nlogs: {}", proc.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(metrics.contains("steward_handler_duration_seconds_bucket{"), "{metrics}");
    assert!(metrics.contains(r#"steward_nats_connected{service="watcher"} 1"#), "{metrics}");

    // NATS down: not ready (but alive); NATS back: ready again.
    nats.kill();
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(10)).await;
    assert!(body.contains("\"ready\":false"), "{body}");
    assert_eq!(get(port, "/healthz").await.0, 200, "the process itself is fine");
    nats.start_again();
    wait_for(port, "/readyz", 200, Duration::from_secs(15)).await;

    assert_eq!(
        proc.terminate(Duration::from_secs(10)),
        Some(0),
        "clean exit on SIGTERM: {}",
        proc.logs()
    );
    assert!(proc.logs().contains("shutting down"), "{}", proc.logs());
}

#[tokio::test]
async fn readyz_fails_while_docker_is_unreachable_and_notifier_does_not_need_it() {
    let bus = TestBus::new("docker").await;
    let ns = bus.namespace().clone();
    let url = bus.config().url.clone();
    let (health, notifier) = (free_port(), free_port());
    let _h = Proc::start(
        "steward-health",
        &service_env(&url, &ns, health, "unix:///nonexistent/docker.sock"),
    );
    let _n = Proc::start(
        "steward-notifier",
        &service_env(&url, &ns, notifier, "unix:///nonexistent/docker.sock"),
    );

    let body = wait_for(health, "/readyz", 503, Duration::from_secs(15)).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["nats"], "ok");
    assert!(v["docker"].as_str().is_some_and(|d| d.contains("/nonexistent/docker.sock")), "{v}");

    let body = wait_for(notifier, "/readyz", 200, Duration::from_secs(15)).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v.get("docker").is_none(), "{v}");
}

/// A watcher on `nats` under a fresh namespace, its provisioned bus and its HTTP port, once
/// it answers ready.
async fn ready_watcher(nats: &NatsServer, tag: &str) -> (TestBus, Proc, u16) {
    let cfg = bus_config(&nats.url(), tag);
    let bus = TestBus::with_config(cfg.clone()).await;
    let port = free_port();
    let proc = Proc::start(
        "steward-watcher",
        &service_env(&nats.url(), &cfg.namespace, port, "unix:///var/run/docker.sock"),
    );
    wait_for(port, "/readyz", 200, Duration::from_secs(20)).await;
    (bus, proc, port)
}

/// A service told to stop while NATS is unreachable stops. The shutdown's final flush waited
/// for the server's answer, which never comes while the client reconnects: a watcher logged
/// "shutting down" and then lived until NATS came back or SIGKILL (`docker stop` waits its
/// timeout, then kills). A second signal did nothing.
#[tokio::test]
async fn a_service_stops_on_sigterm_while_nats_is_down() {
    let mut nats = NatsServer::start();
    let (_bus, mut proc, port) = ready_watcher(&nats, "stop-without-nats").await;
    // Consuming, so the stop goes through the final flush (before, it is still the start:
    // `a_service_stops_on_sigterm_while_starting_without_nats`).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !proc.logs().contains("\"consuming\"") {
        assert!(Instant::now() < deadline, "never consuming: {}", proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    nats.kill();
    wait_for(port, "/readyz", 503, Duration::from_secs(10)).await;
    // The bound is the shutdown's own (no event in hand, so no grace is used) plus its 2 s
    // flush and slack for a loaded machine; the old code never exited.
    let code = proc.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "no clean exit on SIGTERM with NATS down: {}", proc.logs());
    assert!(proc.logs().contains("stopping without flushing"), "{}", proc.logs());
}

/// A service told to stop while it cannot reach NATS at start stops then, instead of holding
/// the signal until its connection attempt gives up (about half a minute).
#[tokio::test]
async fn a_service_stops_on_sigterm_while_starting_without_nats() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let cfg = bus_config(&url, "stop-while-starting");
    nats.kill();
    let mut proc = Proc::start(
        "steward-watcher",
        &service_env(&url, &cfg.namespace, free_port(), "unix:///var/run/docker.sock"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !proc.logs().contains("looking after this host's engine") {
        assert!(Instant::now() < deadline, "never got to connecting: {}", proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = proc.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "not stopped while starting: {}", proc.logs());
    assert!(proc.logs().contains("stopped before it was up"), "{}", proc.logs());
}

/// Ctrl-C reaches every process of a terminal's group and the script that started them sends
/// SIGTERM in its cleanup right after: one request to stop, not two. The second signal ended
/// the services at once (143), with no graceful shutdown.
#[tokio::test]
async fn ctrl_c_and_the_scripts_sigterm_right_after_are_one_request() {
    let nats = NatsServer::start();
    let (_bus, mut proc, _) = ready_watcher(&nats, "one-request").await;
    let pid = proc.child.id().to_string();
    let _ = std::process::Command::new("kill").args(["-INT", &pid]).status();
    let code = proc.terminate(Duration::from_secs(15));
    assert_eq!(code, Some(0), "not a graceful stop: {}", proc.logs());
    assert!(!proc.logs().contains("a second signal"), "{}", proc.logs());
}
