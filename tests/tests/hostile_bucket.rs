//! The backup bucket is not trusted (issue 25): someone who can write to it, but does not hold
//! the signing key, edits a manifest, signs one with their own key, dates one in the future;
//! and even a manifest signed with the installation's key (the test holds it: defence in depth
//! behind the signature) names another container or `/etc`, carries a tar with `../`, absolute
//! or escaping-link entries, or a component far larger than it says. The real `steward-backup`
//! on the test bed's S3 server refuses each restore with a clear reason, and nothing on the host
//! changes: the database and the app's data keep their pre-restore state, no file appears in
//! `/etc`, another container's data is untouched. A future-dated backup is never `latest` and
//! does not push real backups out of retention.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use steward_backup::encryption::Keys;
use steward_backup::pipeline::{self, Io};
use steward_events::{Event, EventData, RestoreRequested, RestoreScope};
use steward_store::catalog::{self, Standing};
use steward_store::manifest::{self, Component, Kind, Manifest, MANIFEST};
use steward_store::signing::{Purpose, SigningKey, Trust, SIGNATURE};
use steward_store::store::Store;
use steward_system_tests::backup_bed::{
    change, manifest_of, placeholder, psql, request_backup, seeded_pair, sh,
};
use steward_system_tests::{wait_outcome, Proc, TestBucket};
use steward_testkit::docker::Container;
use steward_testkit::tar::{archive, entry};
use steward_testkit::{testbed, unique_name, TestBus};
use time::OffsetDateTime;

/// A backed-up pair with one real backup, then changed (so a restore would show), a decoy
/// container in the same scope whose data no label offers, and the service.
struct Bed {
    bus: TestBus,
    bucket: Option<TestBucket>,
    store: Store,
    db: Container,
    app: Container,
    decoy: Container,
    service: Proc,
    /// The real backup.
    real: Manifest,
}

impl Bed {
    async fn new(tag: &str, extra: &[(&'static str, String)]) -> Self {
        let bus = TestBus::new(tag).await;
        let bucket = TestBucket::new(tag).await;
        let scope = unique_name(tag);
        let (db, app) = seeded_pair(&scope);
        let decoy = Container::run(
            &format!("{scope}-decoy"),
            &[
                "--label",
                &format!("steward.scope={scope}"),
                "-v",
                "/data",
                &format!("{}:v1", testbed::require("STEWARD_TEST_APP_IMAGE")),
            ],
        );
        sh(&decoy.name, "echo decoy > /data/own.txt");
        let mut env = bucket.env();
        env.push(("STEWARD_SCOPE", scope.clone()));
        env.push(("STEWARD_RESTORE_HEALTH_TIMEOUT", "30s".into()));
        env.extend(extra.iter().cloned());
        let service = Proc::service("steward-backup", &bus, &env);
        let store = bucket.store().await;
        let mut bed =
            Self { bus, bucket: Some(bucket), store, db, app, decoy, service, real: placeholder() };
        bed.real = bed.back_up().await;
        // After the backup: what a restore would undo.
        change(&bed.db, &bed.app);
        bed
    }

    fn signing(&self) -> &SigningKey {
        &self.bucket.as_ref().unwrap_or_else(|| unreachable!()).signing
    }

    fn trust(&self) -> Trust {
        Trust::new(vec![self.signing().public()])
    }

    async fn back_up(&self) -> Manifest {
        let done = request_backup(&self.bus, &|| self.service.logs()).await;
        manifest_of(&self.store, &self.trust(), &done.backup_id).await
    }

    /// What a restore would change: rows, the app's files, `/etc`, the decoy's data.
    fn state(&self) -> Vec<String> {
        vec![
            psql(&self.db.name, "SELECT count(*) FROM t"),
            sh(&self.app.name, "ls -A /data | sort | tr '\\n' ' '; cat /data/*.txt"),
            sh(&self.app.name, "ls -A /etc | sort | md5sum"),
            sh(&self.decoy.name, "ls -A /data | tr '\\n' ' '; cat /data/own.txt"),
        ]
    }

    /// Stores `m` as backup `m.backup_id`, its manifest signed by `key` (`None`: unsigned).
    async fn plant(&self, m: &Manifest, key: Option<&SigningKey>) {
        let body = serde_json::to_vec_pretty(m).unwrap_or_else(|e| panic!("{e}"));
        self.plant_raw(&m.backup_id, &body, key.map(|k| k.sign(Purpose::Manifest, &body))).await;
    }

    async fn plant_raw(&self, id: &str, body: &[u8], signature: Option<Vec<u8>>) {
        if let Some(sig) = signature {
            self.store
                .put(&format!("{id}/{SIGNATURE}"), Bytes::from(sig))
                .await
                .unwrap_or_else(|e| panic!("put: {e}"));
        }
        self.store
            .put(&format!("{id}/{MANIFEST}"), Bytes::copy_from_slice(body))
            .await
            .unwrap_or_else(|e| panic!("put: {e}"));
    }

    /// The real backup under a new id (before it, so never `latest`), with `change` applied.
    fn forged(&self, change: impl FnOnce(&mut Manifest)) -> Manifest {
        let mut m = self.real.clone();
        m.backup_id = manifest::new_backup_id(self.real.taken_at - time::Duration::seconds(3600));
        change(&mut m);
        m
    }

    /// `bytes` stored (compressed) as an object of backup `id`: its component entry for
    /// `app:/data`.
    async fn path_component(&self, id: &str, bytes: Vec<u8>) -> Component {
        let keys = Keys::default();
        let meter = Arc::default();
        let io = Io { store: &self.store, keys: &keys, meter: &meter };
        let object = format!("{id}/path-hostile.tar.zst");
        let stream = futures::stream::once(async move { Ok::<_, io::Error>(Bytes::from(bytes)) });
        let (stored, raw) = pipeline::store_stream(io, &object, stream, 3)
            .await
            .unwrap_or_else(|e| panic!("store: {e}"));
        Component {
            name: format!("{}:/data", self.app.name),
            kind: Kind::Path { container: self.app.name.clone(), path: "/data".into() },
            object,
            encoding: "zstd".into(),
            stored_size: stored.size,
            stored_sha256: stored.sha256,
            raw_size: raw.size,
            raw_sha256: raw.sha256,
            entries_checked: None,
            tree: None,
        }
    }

    /// Asks for a restore of `id`; the reason it was refused for.
    async fn refused(&self, id: &str) -> String {
        let request = Event::new(
            "steward-cli/test",
            RestoreRequested {
                backup_id: id.to_owned(),
                scope: RestoreScope::All,
                requested_by: Some("tester".into()),
                allow_unsigned: false,
                no_safety_backup: false,
                from: None,
                to_time: None,
            },
        );
        self.bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
        let outcome = wait_outcome(
            &self.bus,
            &request,
            &["restore.done", "restore.failed"],
            Duration::from_secs(120),
        )
        .await;
        match outcome.data {
            EventData::RestoreFailed(f) => f.reason,
            other => panic!("backup {id} was restored: {other:?}"),
        }
    }

    async fn destroy(mut self) {
        assert_eq!(
            self.service.terminate(Duration::from_secs(20)),
            Some(0),
            "{}",
            self.service.logs()
        );
        if let Some(bucket) = self.bucket.take() {
            bucket.destroy().await;
        }
    }
}

/// Points the app's path component at `container` and `path`.
fn retarget(m: &mut Manifest, container: &str, path: &str) {
    for c in &mut m.components {
        if let Kind::Path { .. } = c.kind {
            c.kind = Kind::Path { container: container.into(), path: path.into() };
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_manifests_are_refused_and_change_nothing() {
    // Retention keeps one day: a future backup counted as newest would push the real ones out.
    let bed = Bed::new("hostile", &[("STEWARD_BACKUP_RETENTION", "daily=1".into())]).await;
    let before = bed.state();
    let mut cases: Vec<(String, &str)> = vec![];

    // Edited after signing: the decoy's data as the target, the real signature kept.
    let edited = bed.forged(|m| retarget(m, &bed.decoy.name, "/data"));
    let body = serde_json::to_vec_pretty(&edited).unwrap_or_default();
    let mut genuine = edited.clone();
    genuine.components = bed.real.components.clone();
    let genuine_body = serde_json::to_vec_pretty(&genuine).unwrap_or_default();
    bed.plant_raw(
        &edited.backup_id,
        &body,
        Some(bed.signing().sign(Purpose::Manifest, &genuine_body)),
    )
    .await;
    cases.push((edited.backup_id.clone(), "does not match"));

    // Re-signed with someone else's key.
    let stranger = SigningKey::generate();
    let foreign = bed.forged(|m| retarget(m, &bed.decoy.name, "/data"));
    bed.plant(&foreign, Some(&stranger)).await;
    cases.push((foreign.backup_id.clone(), "not trusted"));

    // Unsigned (forged, or from before signing): not without the explicit override.
    let unsigned = bed.forged(|_| {});
    bed.plant(&unsigned, None).await;
    cases.push((unsigned.backup_id.clone(), "not signed"));

    // Signed with the installation's key, but naming another container, or /etc.
    let other = bed.forged(|m| retarget(m, &bed.decoy.name, "/data"));
    bed.plant(&other, Some(bed.signing())).await;
    cases.push((other.backup_id.clone(), "steward.backup.paths"));
    let etc = bed.forged(|m| retarget(m, &bed.app.name, "/etc"));
    bed.plant(&etc, Some(bed.signing())).await;
    cases.push((etc.backup_id.clone(), "/etc is not among"));

    // Dated a day ahead, signed: it would be `latest` and the newest for retention.
    let future_at = OffsetDateTime::now_utc() + time::Duration::days(1);
    let mut future = bed.forged(|m| retarget(m, &bed.decoy.name, "/data"));
    future.backup_id = manifest::new_backup_id(future_at);
    future.taken_at = future_at;
    bed.plant(&future, Some(bed.signing())).await;
    cases.push((future.backup_id.clone(), "in the future"));

    for (id, why) in &cases {
        let reason = bed.refused(id).await;
        assert!(reason.contains(why), "backup {id}: expected {why:?} in: {reason}");
        assert_eq!(bed.state(), before, "backup {id} changed the host: {reason}");
    }

    // `latest` is the real backup; a second real one makes retention run (daily=1): it keeps
    // the newest real backup and leaves the forged ones alone.
    let now = OffsetDateTime::now_utc();
    let latest = catalog::resolve(&bed.store, &bed.trust(), "latest", false, now).await;
    assert_eq!(latest.map(|m| m.backup_id), Ok(bed.real.backup_id.clone()));
    let second = bed.back_up().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = catalog::list(&bed.store, &bed.trust(), OffsetDateTime::now_utc())
            .await
            .unwrap_or_else(|e| panic!("list: {e}"));
        if !listed.iter().any(|l| l.backup_id == bed.real.backup_id) {
            break listed;
        }
        assert!(std::time::Instant::now() < deadline, "retention did not run: {listed:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let usable: Vec<&str> =
        listed.iter().filter(|l| l.usable().is_some()).map(|l| l.backup_id.as_str()).collect();
    assert_eq!(usable, [second.backup_id.as_str()], "{listed:?}");
    // The ones not signed by the installation's key (and the future one) are neither counted
    // nor deleted; the two signed with it are ordinary old backups to retention.
    for (id, why) in &cases {
        if why.contains("steward.backup.paths") || why.contains("/etc") {
            continue;
        }
        let l = listed.iter().find(|l| &l.backup_id == id);
        assert!(
            l.is_some_and(|l| matches!(l.standing, Standing::Refused { .. } | Standing::Unsigned)),
            "forged backup {id} was pruned or accepted: {l:?}"
        );
    }
    bed.destroy().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused_before_the_engine_sees_them() {
    let bed = Bed::new("hostiletar", &[]).await;
    let before = bed.state();
    let good = || vec![entry::dir("data/"), entry::file("data/repo.txt", b"planted\n")];
    let hostile = [
        ("dotdot", entry::file("data/../etc/steward-evil", b"x"), "'..'"),
        ("absolute", entry::file("/etc/steward-evil", b"x"), "absolute"),
        ("symlink", entry::symlink("data/link", "/etc"), "points outside /data"),
    ];
    for (what, bad, why) in hostile {
        let mut entries = good();
        entries.push(bad);
        // Through the link, once it exists.
        entries.push(entry::file("data/link/steward-evil", b"x"));
        let id = manifest::new_backup_id(bed.real.taken_at - time::Duration::seconds(60));
        let component = bed.path_component(&id, archive(&entries)).await;
        let mut m = bed.forged(|_| {});
        m.backup_id = id.clone();
        m.components.retain(|c| !matches!(c.kind, Kind::Path { .. }));
        m.components.push(component);
        bed.plant(&m, Some(bed.signing())).await;
        let reason = bed.refused(&id).await;
        assert!(reason.contains(why), "{what}: expected {why:?} in: {reason}");
        assert_eq!(bed.state(), before, "{what}: the host changed: {reason}");
    }

    // A component that unpacks to far more than its manifest says (64 MiB of zeros: a few
    // KiB stored), its signed sizes those of a small archive.
    let id = manifest::new_backup_id(bed.real.taken_at - time::Duration::seconds(30));
    let mut bomb = bed.path_component(&id, vec![0u8; 64 << 20]).await;
    let small = archive(&good());
    bomb.raw_size = small.len() as u64;
    let mut m = bed.forged(|_| {});
    m.backup_id = id.clone();
    m.components.retain(|c| !matches!(c.kind, Kind::Path { .. }));
    m.components.push(bomb);
    bed.plant(&m, Some(bed.signing())).await;
    let reason = bed.refused(&id).await;
    assert!(reason.contains("unpacks to more than"), "{reason}");
    assert_eq!(bed.state(), before, "the bomb changed the host: {reason}");
    bed.destroy().await;
}

/// An object replaced in the bucket after the restore checked it (the service paused right
/// after its check by a `sleep` failpoint) is not loaded: `restore.failed` naming it, the
/// database and the path unchanged, and no restore copy left beside them (the database copy
/// already loaded is discarded).
#[tokio::test(flavor = "multi_thread")]
async fn an_object_replaced_after_the_check_is_refused() {
    let bed =
        Bed::new("replaced", &[("STEWARD_FAILPOINTS", "restore:checked=sleep:6000".into())]).await;
    let before = bed.state();
    let path = bed
        .real
        .components
        .iter()
        .find(|c| matches!(c.kind, Kind::Path { .. }))
        .unwrap_or_else(|| panic!("no path component: {:?}", bed.real))
        .clone();
    let request = Event::new(
        "steward-cli/test",
        RestoreRequested {
            backup_id: bed.real.backup_id.clone(),
            scope: RestoreScope::All,
            requested_by: Some("tester".into()),
            allow_unsigned: false,
            no_safety_backup: false,
            from: None,
            to_time: None,
        },
    );
    bed.bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !bed.service.logs().contains("failpoint: restore:checked: sleeping") {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never finished its check:\n{}",
            bed.service.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Same size, other bytes: only the pin (or the checksums as it loads) can tell.
    let other = vec![0x5au8; usize::try_from(path.stored_size).unwrap_or(0)];
    bed.store.put(&path.object, Bytes::from(other)).await.unwrap_or_else(|e| panic!("put: {e}"));
    let outcome = wait_outcome(
        &bed.bus,
        &request,
        &["restore.done", "restore.failed"],
        Duration::from_secs(120),
    )
    .await;
    let EventData::RestoreFailed(f) = outcome.data else {
        panic!("restored from a replaced object: {:?}\n{}", outcome.data, bed.service.logs())
    };
    assert!(
        f.reason.contains("replaced in the bucket since it was checked")
            && f.reason.contains("nothing was changed"),
        "{}",
        f.reason
    );
    assert_eq!(bed.state(), before, "a refused restore changed the host");
    let copies =
        psql(&bed.db.name, "SELECT count(*) FROM pg_database WHERE datname LIKE '%steward%'");
    assert_eq!(copies, "0", "the restore's database copy was left");
    bed.destroy().await;
}
