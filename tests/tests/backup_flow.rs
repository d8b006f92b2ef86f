//! The backup service as a process: the updater's `backup.requested` gets its correlated
//! `backup.done`; `steward backup list`, `steward restore` and `steward backup verify` work
//! through the bus against a real PostgreSQL container, a data volume and the S3 server.

use std::time::{Duration, Instant};

use futures::StreamExt as _;

use steward_bus::StateStore;
use steward_events::records::{UpdateRecord, UpdateStep, UPDATE_BUCKET};
use steward_events::{BackupReason, BackupRequested, Digest, Event, EventData, ImageUpdated};
use steward_system_tests::apps::backed_up_pair;
use steward_system_tests::{steward_with, Proc, TestBucket};
use steward_testkit::docker::docker;
use steward_testkit::{stored_events, unique_name, TestBus};

fn psql(db: &str, sql: &str) -> String {
    docker(&["exec", db, "psql", "-U", "app", "-d", "app", "-tAc", sql])
}

#[tokio::test(flavor = "multi_thread")]
async fn requested_backups_answer_in_their_correlation_and_the_cli_restores_them() {
    let bus = TestBus::new("backupflow").await;
    let bucket = TestBucket::new("flow").await;
    let scope = unique_name("backupflow");
    let (db, app) = backed_up_pair(&scope);
    psql(&db.name, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 5000) g");
    docker(&["exec", &app.name, "sh", "-c", "echo precious > /data/repo.txt"]);

    let mut env = bucket.env();
    env.push(("STEWARD_SCOPE", scope.clone()));
    // Under a 1 MiB stack limit: the service sizes its own threads, and its flows run on
    // them, whatever `ulimit -s` says (a debug build's backup overflowed 4 and 5 MiB when
    // they ran on the process's main thread).
    let mut backup = Proc::service_with_stack("steward-backup", &bus, &env, 1024);

    // What the updater does before updating the app.
    let request = Event::new(
        "steward-updater/test",
        BackupRequested {
            reason: BackupReason::PreUpdate,
            containers: vec![app.name.clone()],
            requested_by: None,
        },
    );
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let outcome = stored_events(&bus).await.into_iter().find(|e| {
            e.correlation_id == request.correlation_id
                && matches!(e.data, EventData::BackupDone(_) | EventData::BackupFailed(_))
        });
        if let Some(e) = outcome {
            break e;
        }
        assert!(Instant::now() < deadline, "no outcome: {}", backup.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let EventData::BackupDone(done) = done.data else { panic!("backup failed: {:?}", done.data) };
    let names: Vec<&str> = done.components.iter().map(|c| c.name.as_str()).collect();
    // The app's data and, because an update may migrate it, the database; the stream.
    assert_eq!(
        names,
        [
            format!("postgres/{}", db.name),
            format!("{}:/data", app.name),
            "containers".into(),
            "events".into()
        ]
    );

    let listed = steward_with(&bus, &env, &["backup", "list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table.lines().any(|l| l.starts_with(&done.backup_id) && l.contains("pre_update")),
        "{table}"
    );

    // Lose data; restore through the CLI.
    psql(&db.name, "DELETE FROM t WHERE id > 10");
    docker(&["exec", &app.name, "sh", "-c", "rm /data/repo.txt"]);
    let refused = steward_with(&bus, &env, &["restore", "latest"]);
    assert!(!refused.status.success(), "a restore without --yes off a terminal must refuse");

    // An update of the app in its health gate: the restore must wait, changing nothing.
    let updates: StateStore<UpdateRecord> =
        StateStore::open(&bus, UPDATE_BUCKET).await.unwrap_or_else(|e| panic!("kv: {e}"));
    let news = ImageUpdated {
        container: app.name.clone(),
        image: "app:v1".into(),
        current_digest: Digest::parse(&format!("sha256:{}", "1".repeat(64))).expect("digest"),
        new_digest: Digest::parse(&format!("sha256:{}", "2".repeat(64))).expect("digest"),
        new_tag: None,
        policy: None,
        versions: Default::default(),
    };
    let cause = Event::new("steward-watcher/test", news.clone());
    let mut gating = UpdateRecord::from_news(
        (uuid::Uuid::new_v4(), None),
        &cause,
        &news,
        "automatic",
        UpdateStep::Gating,
    );
    updates.put(&app.name, &gating).await.unwrap_or_else(|e| panic!("kv put: {e}"));
    let blocked = steward_with(&bus, &env, &["restore", "latest", "--yes"]);
    let said = String::from_utf8_lossy(&blocked.stderr);
    assert!(!blocked.status.success() && said.contains("in its health gate"), "{said}");
    assert_eq!(psql(&db.name, "SELECT count(*) FROM t"), "10", "a blocked restore changed data");
    gating.step = UpdateStep::Succeeded;
    updates.put(&app.name, &gating).await.unwrap_or_else(|e| panic!("kv put: {e}"));

    // Whoever follows a restore sees its bytes: every report of this namespace, collected.
    let mut reports = bus
        .raw_client()
        .subscribe(bus.namespace().subject("progress.>"))
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let restored = steward_with(&bus, &env, &["restore", "latest", "--yes"]);
    assert!(
        restored.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&restored.stderr),
        backup.logs()
    );
    assert_eq!(psql(&db.name, "SELECT count(*) FROM t"), "5000");
    assert_eq!(docker(&["exec", &app.name, "cat", "/data/repo.txt"]), "precious");
    let mut last = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), reports.next()).await {
        last = serde_json::from_slice::<steward_bus::Progress>(&m.payload).ok();
    }
    let last = last.unwrap_or_else(|| panic!("no progress reported: {}", backup.logs()));
    assert_eq!(last.phase, "restoring", "{last:?}");
    assert!(last.total.is_some_and(|t| t > 0) && Some(last.done) == last.total, "{last:?}");

    let verified = steward_with(&bus, &env, &["backup", "verify", &done.backup_id]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("database dumps load"));
    let missing = steward_with(&bus, &env, &["backup", "verify", "20000101T000000Z-000000"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no manifest"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    assert_eq!(backup.terminate(Duration::from_secs(20)), Some(0), "{}", backup.logs());
    bucket.destroy().await;
}
