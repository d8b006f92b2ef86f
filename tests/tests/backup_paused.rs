//! The backup service on a rebuilt host (`STEWARD_BACKUP_RESTORE_PENDING`, as `steward kit
//! import` writes it): `steward backup now` is answered with a `backup.failed` saying why and
//! stores nothing, a restore that would take a safety backup is refused with nothing changed,
//! the restore without one succeeds and ends the pause, and backups run again, also after
//! the service restarts with the same setting; or the operator ends the pause without a
//! restore (`steward backup resume`). A process, the bus, real PostgreSQL, volume and S3.

use std::time::Duration;

use steward_events::EventData;
use steward_system_tests::apps::{backed_up_pair, pair_psql as psql};
use steward_system_tests::{steward_with, Proc, TestBucket};
use steward_testkit::docker::docker;
use steward_testkit::{stored_events, unique_name, TestBus};

/// `steward ARGS` with `env`: whether it succeeded, and what it said (stdout, then stderr).
fn run(bus: &TestBus, env: &[(&str, String)], args: &[&str]) -> (bool, String) {
    let out = steward_with(bus, env, args);
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_hosts_backups_wait_for_its_restore() {
    let bus = TestBus::new("backuppaused").await;
    let bucket = TestBucket::new("paused").await;
    let scope = unique_name("backuppaused");
    let (db, app) = backed_up_pair(&scope);
    psql(&db.name, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 300) g");
    docker(&["exec", &app.name, "sh", "-c", "echo precious > /data/repo.txt"]);
    let mut env = bucket.env();
    env.push(("STEWARD_SCOPE", scope.clone()));
    let run = |env: &[(&str, String)], args: &[&str]| run(&bus, env, args);

    // The old host's backup.
    let mut old = Proc::service("steward-backup", &bus, &env);
    let (ok, said) = run(&env, &["backup", "now", "--wait", "60s"]);
    assert!(ok, "{said}\n{}", old.logs());
    old.terminate(Duration::from_secs(10));
    let backups = || async {
        let store = bucket.store().await;
        let dirs = store.list_dirs().await.unwrap_or_else(|e| panic!("list: {e}"));
        dirs.into_iter().filter(|d| d != "journal").count()
    };
    assert_eq!(backups().await, 1);

    // The rebuilt host: the app's fresh schema and files, the kit's pause.
    psql(&db.name, "DROP TABLE t; CREATE TABLE fresh (id int)");
    docker(&["exec", &app.name, "sh", "-c", "rm /data/repo.txt && echo fresh > /data/fresh"]);
    let mut paused = env.clone();
    paused.push(("STEWARD_BACKUP_RESTORE_PENDING", unique_name("kit")));
    let mut rebuilt = Proc::service("steward-backup", &bus, &paused);
    let (ok, said) = run(&paused, &["backup", "now", "--wait", "60s"]);
    assert!(!ok && said.contains("backups are paused"), "{said}");
    let refused = stored_events(&bus).await.into_iter().any(|e| {
        matches!(&e.data, EventData::BackupFailed(f) if f.reason.contains("STEWARD_BACKUP_RESTORE_PENDING"))
    });
    assert!(refused, "no backup.failed naming the pause");
    assert_eq!(backups().await, 1, "a paused backup stored something");

    // A restore whose safety backup would capture the fresh stack: refused, nothing changed.
    let (ok, said) = run(&paused, &["restore", "latest", "--yes"]);
    assert!(!ok && said.contains("--no-safety-backup"), "{said}");
    assert_eq!(psql(&db.name, "SELECT count(*) FROM pg_tables WHERE tablename = 'fresh'"), "1");
    assert_eq!(backups().await, 1);

    // The restore of the runbook ends the pause.
    let (ok, said) = run(&paused, &["restore", "latest", "--yes", "--no-safety-backup"]);
    assert!(ok, "{said}\n{}", rebuilt.logs());
    assert_eq!(psql(&db.name, "SELECT count(*) FROM t"), "300");
    assert_eq!(docker(&["exec", &app.name, "cat", "/data/repo.txt"]), "precious");
    let (ok, said) = run(&paused, &["backup", "now", "--wait", "60s"]);
    assert!(ok && said.contains("done"), "{said}\n{}", rebuilt.logs());
    // Restarted with the setting still in its environment: the pause stays over.
    rebuilt.terminate(Duration::from_secs(10));
    let _again = Proc::service("steward-backup", &bus, &paused);
    let (ok, said) = run(&paused, &["backup", "now", "--wait", "60s"]);
    assert!(ok && said.contains("done"), "{said}");
    bucket.destroy().await;
}

/// The operator keeps the rebuilt host's stack instead (`steward backup resume`): without
/// `--yes` and no terminal nothing is asked of the service; an unsigned record someone put in
/// the bucket still ends nothing; the resume writes the signed record naming who and why,
/// backups run again, and the request and its outcome are one flow of the audit trail. On a
/// host that is not paused, and a second time, it says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_host_resumes_its_backups_without_a_restore_when_told() {
    let bus = TestBus::new("backupresume").await;
    let bucket = TestBucket::new("resume").await;
    let scope = unique_name("backupresume");
    let (_db, _app) = backed_up_pair(&scope);
    let mut env = bucket.env();
    env.push(("STEWARD_SCOPE", scope.clone()));
    let run = |env: &[(&str, String)], args: &[&str]| run(&bus, env, args);

    // Not paused: nothing to resume.
    let mut plain = Proc::service("steward-backup", &bus, &env);
    let (ok, said) = run(&env, &["backup", "resume", "--yes", "--wait", "30s"]);
    assert!(!ok && said.contains("not paused"), "{said}\n{}", plain.logs());
    plain.terminate(Duration::from_secs(10));

    let token = unique_name("kit");
    let mut paused = env.clone();
    paused.push(("STEWARD_BACKUP_RESTORE_PENDING", token.clone()));
    let service = Proc::service("steward-backup", &bus, &paused);
    // Not at a terminal and no --yes: refused by the CLI, nothing published.
    let (ok, said) = run(&paused, &["backup", "resume", "--wait", "30s"]);
    assert!(!ok && said.contains("--yes"), "{said}");
    let asked = |events: &[steward_events::Event]| {
        events.iter().filter(|e| matches!(e.data, EventData::BackupResumeRequested(_))).count()
    };
    assert_eq!(asked(&stored_events(&bus).await), 1, "only the first request");
    // An unsigned record in the bucket ends nothing.
    let store = bucket.store().await;
    let record = format!("journal/restored/{token}.json");
    let forged = format!("{{\"token\":\"{token}\",\"resumed_by\":\"mallory\"}}");
    store.put(&record, forged.into()).await.unwrap_or_else(|e| panic!("put: {e}"));
    let (ok, said) = run(&paused, &["backup", "now", "--wait", "60s"]);
    assert!(!ok && said.contains("not signed"), "{said}");

    let why = "the old data is not wanted";
    let (ok, said) = run(&paused, &["backup", "resume", "--yes", "--reason", why, "--wait", "30s"]);
    assert!(ok && said.contains("backups resumed"), "{said}\n{}", service.logs());
    let written = store
        .get_small(&record, 1 << 16)
        .await
        .unwrap_or_else(|e| panic!("get: {e}"))
        .unwrap_or_else(|| panic!("{record} missing"));
    let written: serde_json::Value =
        serde_json::from_slice(&written).unwrap_or_else(|e| panic!("record: {e}"));
    assert_eq!(written["reason"], why, "{written}");
    assert!(written["resumed_by"].as_str().is_some_and(|b| b != "mallory"), "{written}");
    let (ok, said) = run(&paused, &["backup", "now", "--wait", "60s"]);
    assert!(ok && said.contains("done"), "{said}\n{}", service.logs());
    let (ok, said) = run(&paused, &["backup", "resume", "--yes", "--wait", "30s"]);
    assert!(ok && said.contains("ended already"), "{said}");

    // The audit trail: each request and its outcome, one flow each.
    let events = stored_events(&bus).await;
    assert_eq!(asked(&events), 3, "{events:#?}");
    let resumed: Vec<&steward_events::Event> =
        events.iter().filter(|e| matches!(e.data, EventData::BackupResumed(_))).collect();
    assert_eq!(resumed.len(), 2, "{events:#?}");
    let request = events
        .iter()
        .find(|e| {
            matches!(&e.data, EventData::BackupResumeRequested(r) if r.reason.as_deref() == Some(why))
        })
        .unwrap_or_else(|| panic!("no request with the reason: {events:#?}"));
    assert_eq!(resumed[0].correlation_id, request.correlation_id);
    assert!(
        matches!(&resumed[0].data, EventData::BackupResumed(r) if r.token == token && !r.already),
        "{:?}",
        resumed[0]
    );
    bucket.destroy().await;
}
