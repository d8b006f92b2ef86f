//! The second copy (issue 25, 3-2-1): the real `steward-backup` with two buckets on the test
//! bed's S3 server, the copy's credentials given as `_FILE` secrets. A backup lands in both,
//! every component read back from each against the signed manifest's checksums; with the
//! primary's objects of a backup deleted, a restore falls back to the copy (saying so) and
//! the data is back; a copy whose manifest was edited is refused there (listing, `--from
//! copy`) while the primary still restores.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use steward_backup::encryption::Keys;
use steward_backup::pipeline::{self, Io};
use steward_events::{
    BackupTarget, Event, EventData, RestoreRequested, RestoreScope, VerifyRequested,
};
use steward_store::catalog::{self, Standing};
use steward_store::manifest::{Manifest, MANIFEST, MAX_MANIFEST_BYTES};
use steward_store::signing::Trust;
use steward_store::store::Store;
use steward_system_tests::backup_bed::{
    change, manifest_of, placeholder, psql, request_backup, seeded_pair, sh,
};
use steward_system_tests::{steward_with, wait_outcome, Proc, TestBucket};
use steward_testkit::docker::Container;
use steward_testkit::{testbed, unique_name, TestBus};
use time::OffsetDateTime;

/// A backed-up pair, the service writing to `primary` and copying to `copy`, one backup
/// taken, then the data changed (so a restore shows).
struct Bed {
    bus: TestBus,
    primary: Option<TestBucket>,
    copy: Option<TestBucket>,
    primary_store: Store,
    copy_store: Store,
    trust: Trust,
    db: Container,
    app: Container,
    service: Proc,
    /// The settings of the service, for the CLI.
    env: Vec<(&'static str, String)>,
    secrets: std::path::PathBuf,
    real: Manifest,
}

impl Bed {
    async fn new(tag: &str) -> Self {
        Self::with_copy(tag, true).await
    }

    /// `copy_reachable: false`: the copy's bucket is removed before the first backup.
    async fn with_copy(tag: &str, copy_reachable: bool) -> Self {
        let bus = TestBus::new(tag).await;
        let primary = TestBucket::new(&format!("{tag}-p")).await;
        let copy = TestBucket::new(&format!("{tag}-c")).await;
        let scope = unique_name(tag);
        let (db, app) = seeded_pair(&scope);
        // The copy's keys as the operator gives them: files (compose secrets).
        let secrets = std::env::temp_dir().join(unique_name("steward-copy-secrets"));
        std::fs::create_dir_all(&secrets).unwrap_or_else(|e| panic!("{e}"));
        let write = |name: &str, value: String| {
            let path = secrets.join(name);
            std::fs::write(&path, format!("{value}\n")).unwrap_or_else(|e| panic!("{e}"));
            path.display().to_string()
        };
        let mut env = primary.env();
        env.extend([
            ("STEWARD_BACKUP_COPY_BUCKET", copy.name.clone()),
            ("STEWARD_BACKUP_COPY_PREFIX", "steward".into()),
            ("STEWARD_BACKUP_COPY_ENDPOINT", testbed::require("STEWARD_TEST_S3_ENDPOINT")),
            (
                "STEWARD_BACKUP_COPY_ACCESS_KEY_ID_FILE",
                write("access", testbed::require("STEWARD_TEST_S3_ACCESS_KEY")),
            ),
            (
                "STEWARD_BACKUP_COPY_SECRET_ACCESS_KEY_FILE",
                write("secret", testbed::require("STEWARD_TEST_S3_SECRET_KEY")),
            ),
            ("STEWARD_SCOPE", scope.clone()),
            ("STEWARD_RESTORE_HEALTH_TIMEOUT", "30s".into()),
        ]);
        let service = Proc::service("steward-backup", &bus, &env);
        let trust = Trust::new(vec![primary.signing.public()]);
        let (primary_store, copy_store) = (primary.store().await, copy.store().await);
        if !copy_reachable {
            bucket_root(&copy_store).await.destroy().await.unwrap_or_else(|e| panic!("{e}"));
        }
        let mut bed = Self {
            bus,
            primary: Some(primary),
            copy: Some(copy),
            primary_store,
            copy_store,
            trust,
            db,
            app,
            service,
            env,
            secrets,
            real: placeholder(),
        };
        bed.real = bed.back_up(copy_reachable).await;
        change(&bed.db, &bed.app);
        bed
    }

    /// A backup (its manifest); with `copied`, waits until the copy has it too.
    async fn back_up(&self, copied: bool) -> Manifest {
        let done = request_backup(&self.bus, &|| self.service.logs()).await;
        // The copy is written right after `backup.done`: wait for it (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        if copied {
            loop {
                let now = OffsetDateTime::now_utc();
                let there =
                    catalog::resolve(&self.copy_store, &self.trust, &done.backup_id, false, now);
                if there.await.is_ok() {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "backup {} never reached the copy:\n{}",
                    done.backup_id,
                    self.service.logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        manifest_of(&self.primary_store, &self.trust, &done.backup_id).await
    }

    async fn restore(&self, from: Option<BackupTarget>) -> EventData {
        let request = Event::new(
            "steward-cli/test",
            RestoreRequested {
                backup_id: self.real.backup_id.clone(),
                scope: RestoreScope::All,
                requested_by: Some("tester".into()),
                allow_unsigned: false,
                no_safety_backup: false,
                from,
                to_time: None,
            },
        );
        self.bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
        wait_outcome(
            &self.bus,
            &request,
            &["restore.done", "restore.failed"],
            Duration::from_secs(120),
        )
        .await
        .data
    }

    fn restored(&self) -> bool {
        psql(&self.db.name, "SELECT count(*) FROM t") == "100"
            && sh(&self.app.name, "ls -A /data | sort | tr '\\n' ' '").trim() == "repo.txt"
    }

    async fn destroy(mut self) {
        assert_eq!(
            self.service.terminate(Duration::from_secs(20)),
            Some(0),
            "{}",
            self.service.logs()
        );
        for bucket in [self.primary.take(), self.copy.take()].into_iter().flatten() {
            bucket.destroy().await;
        }
        let _ = std::fs::remove_dir_all(&self.secrets);
    }
}

/// `store`'s bucket with no prefix (to remove or create the bucket itself).
async fn bucket_root(store: &Store) -> Store {
    let config = steward_store::config::S3Config {
        bucket: store.bucket().to_owned(),
        prefix: String::new(),
        endpoint: Some(testbed::require("STEWARD_TEST_S3_ENDPOINT")),
    };
    Store::connect_static(
        &config,
        &testbed::require("STEWARD_TEST_S3_ACCESS_KEY"),
        &testbed::require("STEWARD_TEST_S3_SECRET_KEY"),
    )
    .await
}

/// Every object of backup `id` in `store`, sorted, but the verification marks (written where
/// a backup is verified: in the primary, after the copy).
async fn objects(store: &Store, id: &str) -> Vec<String> {
    let mut names = store.list_objects(id).await.unwrap_or_else(|e| panic!("list: {e}"));
    names.retain(|n| !n.ends_with("/verified.json") && !n.ends_with("/verified.sig"));
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_object_reaches_both_and_a_restore_falls_back_to_the_copy() {
    let bed = Bed::new("copy-both").await;
    let id = bed.real.backup_id.clone();
    let in_primary = objects(&bed.primary_store, &id).await;
    assert_eq!(in_primary, objects(&bed.copy_store, &id).await, "the copy differs");
    assert!(in_primary.len() >= bed.real.components.len() + 2, "{in_primary:?}");
    // Read back from each against the signed manifest's checksums (stored and raw).
    let (keys, meter) = (Keys::default(), Arc::default());
    for store in [&bed.primary_store, &bed.copy_store] {
        for c in &bed.real.components {
            let io = Io { store, keys: &keys, meter: &meter };
            pipeline::check_component(io, c)
                .await
                .unwrap_or_else(|e| panic!("{} in {}: {e}", c.name, store.bucket()));
        }
    }
    let manifest_of = |store: &Store| {
        let store = store.clone();
        let name = format!("{id}/{MANIFEST}");
        async move { store.get_small(&name, MAX_MANIFEST_BYTES).await.unwrap_or_else(|e| panic!("{e}")) }
    };
    assert_eq!(manifest_of(&bed.primary_store).await, manifest_of(&bed.copy_store).await);

    // The primary loses the backup: the restore reads the copy and says why.
    bed.primary_store.delete_dir(&id).await.unwrap_or_else(|e| panic!("delete: {e}"));
    assert!(!bed.restored());
    match bed.restore(None).await {
        EventData::RestoreDone(d) => {
            assert_eq!(d.from, Some(BackupTarget::Copy), "{d:?}");
            let why = d.fallback_reason.unwrap_or_default();
            assert!(why.contains("no manifest"), "{why}");
            // The safety backup is written to the primary, whatever was read.
            let safety = d.safety_backup_id.unwrap_or_else(|| panic!("no safety backup"));
            let now = OffsetDateTime::now_utc();
            catalog::resolve(&bed.primary_store, &bed.trust, &safety, false, now)
                .await
                .unwrap_or_else(|e| panic!("safety backup {safety} in the primary: {e}"));
        }
        other => panic!("not restored from the copy: {other:?}\n{}", bed.service.logs()),
    }
    assert!(bed.restored(), "the data is not back");
    assert!(
        bed.service.logs().contains("restoring it from the second copy"),
        "{}",
        bed.service.logs()
    );
    // The copy verifies on its own (the CLI's `--from copy`): the primary no longer has it.
    let out = steward_with(&bed.bus, &bed.env, &["backup", "verify", &id, "--from", "copy"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("verified in the second copy"), "{said}");
    bed.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_copy_is_refused_and_the_primary_still_restores() {
    let bed = Bed::new("copy-edited").await;
    let id = bed.real.backup_id.clone();
    let name = format!("{id}/{MANIFEST}");
    let mut body = bed
        .copy_store
        .get_small(&name, MAX_MANIFEST_BYTES)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no manifest in the copy"));
    // One byte: the first digit of the first size.
    let at = body.iter().position(u8::is_ascii_digit).unwrap_or_else(|| panic!("no digit"));
    body[at] = if body[at] == b'9' { b'8' } else { body[at] + 1 };
    bed.copy_store.put(&name, Bytes::from(body)).await.unwrap_or_else(|e| panic!("put: {e}"));

    let now = OffsetDateTime::now_utc();
    let listed = catalog::read(&bed.copy_store, &bed.trust, &id, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(listed.standing, Standing::Refused { .. }), "{:?}", listed.standing);
    // The CLI, with the service's settings, says so for the copy and not for the primary.
    let cli = |args: &[&str]| {
        let out = steward_with(&bed.bus, &bed.env, args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let copy_list = cli(&["backup", "list", "--from", "copy"]);
    assert!(copy_list.contains(&id) && copy_list.contains("REFUSED"), "{copy_list}");
    let primary_list = cli(&["backup", "list"]);
    assert!(primary_list.contains(&id) && !primary_list.contains("REFUSED"), "{primary_list}");

    // Verifying the copy is refused too.
    let out = steward_with(&bed.bus, &bed.env, &["backup", "verify", &id, "--from", "copy"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("refused"), "{said}");

    // Asked for the copy only: refused, nothing changed.
    match bed.restore(Some(BackupTarget::Copy)).await {
        EventData::RestoreFailed(f) => {
            assert!(f.reason.contains("refused"), "{}", f.reason);
            assert_eq!(f.from, Some(BackupTarget::Copy));
        }
        other => panic!("restored an edited copy: {other:?}"),
    }
    assert!(!bed.restored(), "a refused restore changed the data");
    // The primary is fine: restored from it, no fallback.
    match bed.restore(None).await {
        EventData::RestoreDone(d) => assert_eq!((d.from, d.fallback_reason), (None, None)),
        other => panic!("not restored from the primary: {other:?}\n{}", bed.service.logs()),
    }
    assert!(bed.restored(), "the data is not back");
    bed.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_is_said_and_the_next_backup_copies_what_it_missed() {
    let bed = Bed::with_copy("copy-retry", false).await;
    let id = bed.real.backup_id.clone();
    // `backup.done` came (the primary has it); the copy's failure is a `backup.failed` of its
    // own flow, naming the backup and the copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let found =
            steward_testkit::stored_events(&bed.bus).await.into_iter().find_map(|e| match e.data {
                EventData::BackupFailed(f) if f.backup_id.as_deref() == Some(&id) => Some(f),
                _ => None,
            });
        if let Some(f) = found {
            break f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed copy said:\n{}",
            bed.service.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(failed.reason.starts_with("second copy:"), "{}", failed.reason);
    assert!(failed.reason.contains("complete in the primary"), "{}", failed.reason);

    // Verified, so retention keeps it (the newest verified backup) past the next backup of
    // the same day.
    let verify = Event::new(
        "steward-cli/test",
        VerifyRequested { backup_id: id.clone(), requested_by: None, from: None },
    );
    bed.bus.publish(&verify).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let verified = wait_outcome(
        &bed.bus,
        &verify,
        &["backup.verified", "verify.failed"],
        Duration::from_secs(120),
    )
    .await;
    assert!(matches!(verified.data, EventData::BackupVerified(_)), "{:?}", verified.data);
    // The copy is back: the next backup copies itself and the one missed.
    bucket_root(&bed.copy_store).await.create_bucket().await.unwrap_or_else(|e| panic!("{e}"));
    let next = bed.back_up(true).await;
    let now = OffsetDateTime::now_utc();
    for backup in [&id, &next.backup_id] {
        catalog::resolve(&bed.copy_store, &bed.trust, backup, false, now).await.unwrap_or_else(
            |e| panic!("backup {backup} is not in the copy: {e}\n{}", bed.service.logs()),
        );
    }
    bed.destroy().await;
}

/// The service killed while copying a backup (after its components and signature, then again
/// at the first component of the catch-up): the copy never lists the backup as usable half
/// written, and the restarted service finishes the copy at start, without waiting a day for
/// the next backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_twice_is_finished_at_the_next_start() {
    let mut bed = Bed::new("copy-killed").await;
    assert_eq!(bed.service.terminate(Duration::from_secs(20)), Some(0), "{}", bed.service.logs());
    let with = |points: &str| {
        let mut env = bed.env.clone();
        env.push(("STEWARD_FAILPOINTS", points.into()));
        env
    };
    bed.service = Proc::service("steward-backup", &bed.bus, &with("copy:signed"));
    let done = request_backup(&bed.bus, &|| bed.service.logs()).await;
    let id = done.backup_id;
    assert!(bed.service.exits_within(Duration::from_secs(60)), "not killed while copying");
    let standing = |store: &Store| {
        let (store, trust, id) = (store.clone(), bed.trust.clone(), id.clone());
        async move {
            catalog::read(&store, &trust, &id, OffsetDateTime::now_utc())
                .await
                .map(|l| l.standing)
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    // Every component and the signature are there, not the manifest: incomplete.
    assert!(matches!(standing(&bed.copy_store).await, Standing::Incomplete));
    assert!(!objects(&bed.copy_store, &id).await.is_empty());

    // Killed again, at the first component the start's catch-up copies.
    bed.service = Proc::service("steward-backup", &bed.bus, &with("copy:component"));
    assert!(bed.service.exits_within(Duration::from_secs(60)), "the start did not copy");
    assert!(matches!(standing(&bed.copy_store).await, Standing::Incomplete));

    bed.service = Proc::service("steward-backup", &bed.bus, &bed.env);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !matches!(standing(&bed.copy_store).await, Standing::Usable { .. }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy was not finished at start:\n{}",
            bed.service.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(objects(&bed.copy_store, &id).await, objects(&bed.primary_store, &id).await);
    let verified = steward_with(&bed.bus, &bed.env, &["backup", "verify", &id, "--from", "copy"]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    bed.destroy().await;
}
