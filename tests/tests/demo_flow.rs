//! The demo flow with real processes: all five services up, the CLI publishes, every service
//! receives what it consumes, and `steward events replay` / `tail` show it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use steward_system_tests::{binary, steward, steward_ok, Proc, TestBucket, SERVICES};
use steward_testkit::{free_port, TestBus};

/// The event id from "published TYPE ID (...)" or "watch requested (ID)".
fn id_from(stdout: &str) -> String {
    stdout
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .find(|w| w.len() == 36 && w.matches('-').count() == 4)
        .unwrap_or_else(|| panic!("no id in {stdout:?}"))
        .to_owned()
}

const DIGEST_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const DIGEST_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[tokio::test]
async fn every_service_receives_the_cli_events_and_replay_shows_them() {
    let bus = TestBus::new("demo").await;
    let ns = bus.namespace().clone();
    let bucket = TestBucket::new("demo").await;
    // A scope no container has: the services never touch the containers of tests running
    // beside this one (the watcher would report them and the updater update them), and the
    // backup holds only its (empty) configuration.
    let scope = steward_testkit::unique_name("demo");
    let procs: Vec<(&str, Proc, u16)> = SERVICES
        .iter()
        .map(|name| {
            let port = free_port();
            let mut env = vec![
                ("STEWARD_NATS_URL", bus.config().url.clone()),
                ("STEWARD_STREAM", ns.stream.clone()),
                ("STEWARD_SUBJECT_PREFIX", ns.prefix.clone()),
                ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
                ("STEWARD_SCOPE", scope.clone()),
            ];
            if *name == "steward-notifier" {
                env.push(("STEWARD_WEBHOOK_URL", "http://127.0.0.1:9/unused".into()));
            }
            if *name == "steward-backup" {
                env.extend(bucket.env());
            }
            (*name, Proc::start(name, &env), port)
        })
        .collect();
    // Ready = consumer created; wait for every service's "consuming" log line.
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, proc, _) in &procs {
        while !proc.logs().contains("\"consuming\"") {
            assert!(Instant::now() < deadline, "{name} not consuming: {}", proc.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let watch = id_from(&steward_ok(&bus, &["check", "gitea"]));
    let updated = id_from(&steward_ok(
        &bus,
        &[
            "events",
            "publish",
            "image.updated",
            "--data",
            &format!(
                r#"{{"container":"gitea","image":"gitea/gitea:1.22","current_digest":"{DIGEST_A}","new_digest":"{DIGEST_B}"}}"#
            ),
        ],
    ));
    let backup = id_from(&steward_ok(
        &bus,
        &["events", "publish", "backup.requested", "--data", r#"{"reason":"manual"}"#],
    ));
    let succeeded = id_from(&steward_ok(
        &bus,
        &[
            "events",
            "publish",
            "update.succeeded",
            "--correlation",
            &updated,
            "--data",
            &format!(
                r#"{{"update_id":"{updated}","container":"gitea","image":"gitea/gitea:1.22","from_digest":"{DIGEST_A}","to_digest":"{DIGEST_B}","duration_ms":1200}}"#
            ),
        ],
    ));

    let expect = [
        ("steward-watcher", vec![&watch, &succeeded]),
        ("steward-updater", vec![&updated]),
        ("steward-backup", vec![&backup]),
        ("steward-health", vec![&succeeded]),
        // image.updated too: newer images of `notify` containers are reported.
        ("steward-notifier", vec![&updated, &succeeded]),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, ids) in expect {
        let (_, proc, _) = procs.iter().find(|(n, _, _)| *n == name).expect("started");
        for id in ids {
            loop {
                let logs = proc.logs();
                let received =
                    logs.lines().any(|l| l.contains("\"received\"") && l.contains(id.as_str()));
                if received {
                    break;
                }
                assert!(Instant::now() < deadline, "{name} did not receive {id}: {logs}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // ... and nothing it does not consume. The watcher also gets update.succeeded; the
        // updater the backup service's backup.done; health the backup's backup.started and
        // backup.done (a backup excuses containers stopped for the copy). Those come from the
        // services themselves, maybe later than the CLI's events: waited for, then a moment
        // for anything more to show.
        let expected = match name {
            "steward-watcher" | "steward-updater" | "steward-notifier" => 2,
            "steward-health" => 3,
            _ => 1,
        };
        let received = || proc.logs().lines().filter(|l| l.contains("\"received\"")).count();
        while received() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(received(), expected, "{name}: {}", proc.logs());
    }

    // Replay as JSON: the four events, in order, one CloudEvent per line.
    let json = steward_ok(&bus, &["events", "replay", "--since", "1h", "--json"]);
    let lines: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).expect("one JSON event per line")).collect();
    let published = [&watch, &updated, &backup, &succeeded].map(String::as_str);
    // The backup service's own events (backup.started, backup.done) come in between.
    let ids: Vec<&str> =
        lines.iter().filter_map(|v| v["id"].as_str()).filter(|id| published.contains(id)).collect();
    assert_eq!(ids, published);
    let lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["id"].as_str().is_some_and(|id| published.contains(&id)))
        .collect();
    assert_eq!(lines[3]["correlationid"].as_str(), Some(updated.as_str()));
    assert_eq!(
        lines[0]["data"]["requested_by"].as_str().map(|s| s.starts_with("tester@")),
        Some(true)
    );

    // Filters, and the human table.
    let gitea =
        steward_ok(&bus, &["events", "replay", "--container", "gitea", "--subject", "update.>"]);
    let rows: Vec<&str> = gitea.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{gitea}");
    assert!(
        rows[0].contains("update.succeeded")
            && rows[0].contains("gitea")
            && rows[0].contains("now bbbbbbbbbbbb"),
        "{gitea}"
    );
    assert!(gitea.starts_with("TIME (UTC)"), "{gitea}");
    let until_past = steward_ok(&bus, &["events", "replay", "--until", "2000-01-01"]);
    assert_eq!(until_past.lines().count(), 1, "header only: {until_past}");

    // Tail follows new events.
    let mut tail = Command::new(binary("steward"))
        .env("STEWARD_NATS_URL", &bus.config().url)
        .env("STEWARD_STREAM", &ns.stream)
        .env("STEWARD_SUBJECT_PREFIX", &ns.prefix)
        .args(["events", "tail", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fresh = id_from(&steward_ok(&bus, &["check"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = tail.kill();
    let out = tail.wait_with_output().expect("tail output");
    let tailed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(tailed.lines().count(), 1, "only the new event: {tailed}");
    assert!(tailed.contains(&fresh), "{tailed}");

    for (name, mut proc, _) in procs {
        assert_eq!(proc.terminate(Duration::from_secs(10)), Some(0), "{name}: {}", proc.logs());
    }
    bucket.destroy().await;
}

#[tokio::test]
async fn the_cli_fails_clearly_on_bad_input_and_unreachable_nats() {
    let bus = TestBus::new("clibad").await;
    let out = steward(
        &bus,
        &["events", "publish", "image.updated", "--data", r#"{"container":"gitea"}"#],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a valid image.updated event") && err.contains("missing field"),
        "{err}"
    );

    let out = steward(&bus, &["events", "replay", "--since", "last tuesday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));

    let out = Command::new(binary("steward"))
        .args([
            "--nats-url",
            &format!("nats://127.0.0.1:{}", free_port()),
            "--timeout",
            "1s",
            "events",
            "replay",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the bus"), "{err}");
}
