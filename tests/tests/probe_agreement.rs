//! One meaning of "healthy": the health service's probe and the updater's health gate judge
//! the same real containers (the test bed's app image, labelled with `steward.health.url`)
//! and give the same verdict: 200 and a 302 to a login page nobody can reach are healthy
//! (a redirect is the app answering; the old gate followed it and rolled back), a 500 and an
//! answer slower than the probe timeout are not; a database passes `pg_isready` in both.

use std::time::Duration;

use steward_engine::Engine;
use steward_probe::ProbeConfig;
use steward_testkit::docker::{docker, postgres, Container};
use steward_testkit::{free_port, unique_name, wait_for, TestBus};
use steward_updater::config::UpdaterConfig;
use steward_updater::flow::Flow;

/// The app image serving `/` (its HEALTHCHECK stays healthy) and three CGI answers.
const SERVER: &str = r#"mkdir -p /www/cgi-bin
cat > /www/cgi-bin/redirect <<'EOF'
#!/bin/sh
printf 'HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/login\r\nContent-Length: 0\r\n\r\n'
EOF
cat > /www/cgi-bin/error <<'EOF'
#!/bin/sh
printf 'HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n'
EOF
cat > /www/cgi-bin/slow <<'EOF'
#!/bin/sh
sleep 30
printf 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n'
EOF
chmod +x /www/cgi-bin/*
exec httpd -f -p 8080 -h /www"#;

/// The label of this run's containers (systemd's healthcheck timers on Podman find them by it).
fn run_label() -> &'static str {
    static LABEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LABEL.get_or_init(|| format!("steward.test.agree={}", unique_name("agree")))
}

/// A container of the app image whose probe URL is `path` on its published port.
fn app(path: &str) -> Container {
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    let url = format!("steward.health.url=http://127.0.0.1:{port}{path}");
    let name = unique_name("agree");
    let c = Container::run(
        &name,
        &[
            "-p",
            &publish,
            "--label",
            &url,
            "--label",
            run_label(),
            "steward-test/app:v1",
            "sh",
            "-c",
            SERVER,
        ],
    );
    wait_for("its HEALTHCHECK healthy", Duration::from_secs(30), || {
        let status = docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]);
        (status.trim() == "healthy").then_some(())
    });
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_service_and_the_update_gate_give_the_same_verdict() {
    // Podman without systemd runs a container's healthcheck only when asked: the timers
    // systemd would run (Steward reads health through the engine, which asks itself).
    let _timers = steward_system_tests::stack::podman_socket()
        .map(|socket| steward_system_tests::podman::HealthTimers::start(&socket, run_label()));
    let bus = TestBus::new("agree").await;
    let probe = ProbeConfig { timeout: Duration::from_secs(2) };
    let cases = [("200", app("/"), true)];
    let cases = cases.into_iter().chain([
        ("302 to an unreachable login page", app("/cgi-bin/redirect"), true),
        ("500", app("/cgi-bin/error"), false),
        ("slower than the probe timeout", app("/cgi-bin/slow"), false),
        (
            "database",
            postgres(&unique_name("agree-db"), &["steward.backup.postgres=true"], "app"),
            true,
        ),
    ]);
    let cases: Vec<_> = cases.collect();

    let engine = Engine::from_env();
    let health = steward_health::probe::Prober::new(engine.clone(), &probe).expect("prober");
    let cfg = UpdaterConfig {
        backup_timeout: Duration::from_secs(60),
        // Long enough for several rounds of a failing probe, short enough for a test.
        health_timeout: Duration::from_secs(5),
        health_grace: Duration::from_secs(1),
        hook_timeout: Duration::from_secs(10),
        links: None,
        renewal: Default::default(),
        keep_images: 2,
        prune_grace: Duration::ZERO,
        write_back: true,
        haproxy_socket: None,
        haproxy_switch_timeout: Duration::from_secs(10),
        probe,
    };
    let flow =
        Flow::open(bus.bus.clone(), engine.clone(), cfg, "agree".into()).await.expect("flow");

    let judged = futures::future::join_all(cases.iter().map(|(what, c, _)| {
        let (engine, health, flow) = (&engine, &health, &flow);
        async move {
            let labels =
                engine.container_labels(&c.name).await.expect("labels").expect("container");
            let id = engine.container_id(&c.name).await.expect("id").expect("container");
            // What the health service would say in a round, and the gate after a swap (the
            // URL as the updater reads it from the update labels).
            let round = health.round(&c.name, &labels, None, false).await;
            let url = steward_labels::update_labels(&labels).expect("labels").health_url;
            let gate = flow.health_gate(&id, url.as_deref()).await;
            (*what, round.verdict, gate)
        }
    }))
    .await;

    for ((what, verdict, gate), (_, _, healthy)) in judged.iter().zip(&cases) {
        let service_passes = match verdict {
            steward_health::probe::Verdict::Pass => true,
            steward_health::probe::Verdict::Fail { check, .. } => {
                assert!(["http", "pg_isready"].contains(check), "{what}: {verdict:?}");
                false
            }
            other => panic!("{what}: the health service gave no verdict: {other:?}"),
        };
        assert_eq!(service_passes, *healthy, "{what}: health service: {verdict:?}");
        assert_eq!(gate.is_ok(), *healthy, "{what}: update gate: {gate:?}");
        // And for the same reason.
        if let (steward_health::probe::Verdict::Fail { reason, .. }, Err(why)) = (verdict, gate) {
            assert!(why.ends_with(reason.as_str()), "{what}: gate {why:?}, service {reason:?}");
        }
    }
}
