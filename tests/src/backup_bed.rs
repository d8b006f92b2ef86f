//! What the backup service's system tests share: a backed-up pair with data in it, a backup
//! requested the way the CLI does and its signed manifest, the changes a restore would undo.

use std::time::Duration;

use steward_events::{BackupDone, BackupReason, BackupRequested, Event, EventData};
use steward_store::catalog;
use steward_store::manifest::{self, Manifest};
use steward_store::signing::Trust;
use steward_store::store::Store;
use steward_testkit::docker::{docker, Container};
use time::OffsetDateTime;

/// `psql` as the pair's database user, one value a line.
pub fn psql(db: &str, sql: &str) -> String {
    docker(&["exec", db, "psql", "-U", "app", "-d", "app", "-tAc", sql])
}

/// A shell script in `container`.
pub fn sh(container: &str, script: &str) -> String {
    docker(&["exec", container, "sh", "-c", script])
}

/// [`crate::apps::backed_up_pair`] in `scope` with data: table `t` of 100 rows and
/// `/data/repo.txt` ("precious").
pub fn seeded_pair(scope: &str) -> (Container, Container) {
    let (db, app) = crate::apps::backed_up_pair(scope);
    psql(&db.name, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g");
    sh(&app.name, "echo precious > /data/repo.txt");
    (db, app)
}

/// What a restore of a [`seeded_pair`]'s backup undoes: 50 more rows, `/data/after.txt`.
pub fn change(db: &Container, app: &Container) {
    psql(&db.name, "INSERT INTO t SELECT g FROM generate_series(101, 150) g");
    sh(&app.name, "echo after > /data/after.txt");
}

/// Requests a manual backup as the CLI does and waits for its `backup.done` (`logs` in the
/// panic when it fails).
pub async fn request_backup(bus: &steward_bus::Bus, logs: &dyn Fn() -> String) -> BackupDone {
    let request = Event::new(
        "steward-cli/test",
        BackupRequested { reason: BackupReason::Manual, containers: vec![], requested_by: None },
    );
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let outcome = crate::wait_outcome(
        bus,
        &request,
        &["backup.done", "backup.failed"],
        Duration::from_secs(90),
    )
    .await;
    match outcome.data {
        EventData::BackupDone(done) => done,
        other => panic!("backup failed: {other:?}\n{}", logs()),
    }
}

/// The manifest of usable backup `id` in `store`.
pub async fn manifest_of(store: &Store, trust: &Trust, id: &str) -> Manifest {
    catalog::resolve(store, trust, id, false, OffsetDateTime::now_utc())
        .await
        .unwrap_or_else(|e| panic!("backup {id}: {e}"))
}

/// An empty manifest, for a bed's field before its first backup.
pub fn placeholder() -> Manifest {
    Manifest {
        format: manifest::FORMAT,
        backup_id: String::new(),
        taken_at: OffsetDateTime::UNIX_EPOCH,
        reason: BackupReason::Manual,
        docker_host: String::new(),
        host: None,
        components: vec![],
    }
}
