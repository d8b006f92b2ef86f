//! Backups that must fail, and fail safely: S3 dying mid-upload, a database that cannot be
//! dumped, a path that cannot be read while its container is stopped; and retention on a
//! synthetic history stored in S3.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{config, s3_config, store_for, Stack};
use steward_backup::retention::Retention;
use steward_backup::Backups;
use steward_engine::Engine;
use steward_events::BackupReason;
use steward_store::manifest::{self, Manifest, FORMAT, MANIFEST};
use steward_testkit::{free_port, servers, wait_for, TempDir};

fn new_id() -> String {
    manifest::new_backup_id(time::OffsetDateTime::now_utc())
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_dying_mid_backup_fails_it_and_leaves_no_usable_backup() {
    let stack = Stack::start("s3down", &[]).await;
    stack.fill_db(1_000);
    // Random data: 40 MiB stays 40 MiB after zstd, five parts at least.
    stack.fill_data(40, 5);
    // An S3 server of the test's own (a container): killing it touches no other test.
    let dir = TempDir::new("s3s");
    let s3 = servers::Own::s3(free_port(), &dir.0);
    let cfg = s3_config("down", Some(format!("http://127.0.0.1:{}", s3.port)));
    let store = store_for(&cfg).await;
    let backups = Backups::new(Engine::from_env(), store.clone(), config(cfg, &stack.scope));
    let id = new_id();
    let backup = tokio::spawn({
        let backups = backups.clone();
        let id = id.clone();
        async move { backups.take(&id, BackupReason::Manual, &[]).await }
    });
    // Kill the store once the upload is under way.
    wait_for("upload under way", Duration::from_secs(30), || {
        let found = walk(&dir.0).into_iter().any(|p| p.to_string_lossy().contains(&id));
        found.then_some(())
    });
    s3.kill();
    let result = tokio::time::timeout(Duration::from_secs(120), backup)
        .await
        .unwrap_or_else(|_| panic!("the backup hung with S3 down"))
        .unwrap_or_else(|e| panic!("{e}"));
    let failure = result.err().unwrap_or_else(|| panic!("a backup with S3 down succeeded"));
    assert!(failure.reason.contains("S3"), "{}", failure.reason);
    assert!(stack.app_running());

    // S3 back: the backup is not listed as complete, so nothing will ever restore it.
    s3.start();
    let listed = backups.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().all(|l| l.manifest.is_none()), "{listed:?}");
    let refused = backups.restore(&id, steward_events::RestoreScope::All).await;
    assert!(refused.is_err_and(|e| e.reason.contains("no manifest")));
    stack.destroy_bucket().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_pg_dump_is_a_failed_backup_with_its_stderr() {
    let stack = Stack::start("pgfail", &[]).await;
    // The database named by POSTGRES_DB is gone: pg_dump fails after connecting.
    stack.psql("SELECT 1");
    steward_testkit::docker::docker(&[
        "exec",
        &stack.db.name,
        "psql",
        "-U",
        common::DB_USER,
        "-d",
        "postgres",
        "-c",
        &format!("DROP DATABASE {}", common::DB_NAME),
    ]);
    let id = new_id();
    let failure = stack
        .backups
        .take(&id, BackupReason::Manual, &[])
        .await
        .err()
        .unwrap_or_else(|| panic!("a failed pg_dump was reported as a good backup"));
    assert!(failure.reason.contains("pg_dump exited with 1"), "{}", failure.reason);
    assert!(
        failure.stderr_tail.iter().any(|l| l.contains(common::DB_NAME)),
        "stderr should say why: {:?}",
        failure.stderr_tail
    );
    assert!(stack.store.list_objects(&id).await.unwrap_or_default().is_empty(), "objects left");
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_stopped_for_the_copy_runs_again_after_a_failed_copy() {
    let stack = Stack::start(
        "stopfail",
        &["steward.backup.paths=/data,/no/such/path", "steward.backup.stop=true"],
    )
    .await;
    let id = new_id();
    let failure = stack
        .backups
        .take(&id, BackupReason::Manual, &[])
        .await
        .err()
        .unwrap_or_else(|| panic!("a missing path was backed up"));
    assert!(failure.reason.contains("/no/such/path"), "{}", failure.reason);
    assert!(stack.app_running(), "the app was left stopped after a failed copy");
    assert!(stack.backups.list().await.unwrap_or_default().iter().all(|l| l.manifest.is_none()));
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_exactly_what_the_policy_says_in_the_bucket() {
    let cfg = s3_config(&common::bucket_name("retention"), None);
    let store = store_for(&cfg).await;
    let mut config = config(cfg, "unused");
    config.retention = Retention { daily: 2, weekly: 1, monthly: 2 };
    let signing = config.signing.clone();
    let backups = Backups::new(Engine::from_env(), store.clone(), config);
    // A backup a day for 70 days before now, plus an abandoned one without a manifest.
    let now = time::OffsetDateTime::now_utc();
    let mut ids = vec![];
    for day in 0..70 {
        let at = now - time::Duration::days(day) - time::Duration::minutes(5);
        let id = common::plant_signed(&store, &signing, at).await;
        ids.push((id, at));
    }
    // An old unsigned backup (from before signing, or planted): neither counted nor pruned.
    let unsigned_at = now - time::Duration::days(200);
    let unsigned = manifest::new_backup_id(unsigned_at);
    let m = Manifest {
        format: FORMAT,
        backup_id: unsigned.clone(),
        taken_at: unsigned_at,
        reason: BackupReason::Schedule,
        docker_host: "test".into(),
        host: None,
        components: vec![],
    };
    let body = Bytes::from(serde_json::to_vec(&m).unwrap_or_default());
    store.put(&format!("{unsigned}/{MANIFEST}"), body).await.unwrap_or_else(|e| panic!("{e}"));
    let abandoned = manifest::new_backup_id(now - time::Duration::days(3));
    store
        .put(&format!("{abandoned}/part.zst"), Bytes::from_static(b"x"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let (pruned, kept) = backups.prune(now).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(pruned.contains(&abandoned));
    assert!(!pruned.contains(&unsigned), "an unsigned backup was pruned");
    let remaining: Vec<String> = backups
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|l| l.backup_id)
        .filter(|id| id != &unsigned)
        .collect();
    assert_eq!(remaining.len() as u32, kept);
    // What the pure policy keeps for the same history.
    let candidates: Vec<_> = ids
        .iter()
        .map(|(id, at)| steward_backup::retention::Candidate {
            id: id.clone(),
            taken_at: chrono::DateTime::from_timestamp(at.unix_timestamp(), 0).unwrap_or_default(),
            complete: true,
            verified: false,
            safety: false,
        })
        .collect();
    let policy_prunes = steward_backup::retention::to_prune(
        Retention { daily: 2, weekly: 1, monthly: 2 },
        &candidates,
        chrono::DateTime::from_timestamp(now.unix_timestamp(), 0).unwrap_or_default(),
    );
    let mut expected: Vec<String> =
        ids.iter().map(|(id, _)| id.clone()).filter(|id| !policy_prunes.contains(id)).collect();
    expected.sort();
    assert_eq!(remaining, expected);
    // 2 daily + 1 weekly + 2 monthly, overlapping: between 2 and 5 survive (2 on the 1st of
    // a month that is not a Monday, when today's and yesterday's are also the week's and the
    // two months' newest).
    assert!((2..=5).contains(&remaining.len()), "{remaining:?}");
    common::destroy_bucket(store.bucket()).await;
}

/// A dump replaced in the bucket: the verification loads it into a scratch server, the read
/// fails half-way, and the verification fails (naming the dump) instead of leaving
/// `pg_restore` waiting for the rest of its input, and with it the service's lock, forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_dump_fails_its_verification_instead_of_hanging() {
    let stack = Stack::start("damaged-dump", &[]).await;
    stack.fill_db(2000);
    let (id, m) = stack.back_up().await;
    let dump = m
        .components
        .iter()
        .find(|c| c.name.starts_with("postgres/"))
        .unwrap_or_else(|| panic!("no dump in {m:?}"));
    // Zstd frames of the right kind, cut short: the stream ends with an error mid-load.
    let mut body = Vec::new();
    let mut reader =
        stack.store.get_pinned(&dump.object, None).await.ok().flatten().expect("the dump").0;
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut body).await.expect("read");
    body.truncate(body.len() / 2);
    stack.store.put(&dump.object, Bytes::from(body)).await.expect("replace");
    let verified = tokio::time::timeout(Duration::from_secs(120), stack.backups.verify(&id)).await;
    let failure = match verified {
        Err(_) => panic!("the verification of a damaged dump did not end within 120 s"),
        Ok(Ok(v)) => panic!("a damaged dump verified: {v:?}"),
        Ok(Err(f)) => f,
    };
    assert!(failure.reason.contains(&dump.name), "{failure:?}");
    stack.destroy_bucket().await;
}
