//! Point-in-time recovery against a real PostgreSQL container and the test bed's S3 server:
//! base backups (`steward.backup.pitr=true`) and restoring a whole cluster from one.

mod common;

use common::{Stack, DB_USER};
use steward_backup::encryption::Keys;
use steward_backup::journal::RestoreJournal;
use steward_backup::restore::{Busy, RestoreOptions};
use steward_events::RestoreScope;
use steward_store::manifest::Kind;
use steward_testkit::docker::docker;

fn physical() -> RestoreOptions {
    RestoreOptions { safety_backup: true, physical: true, ..Default::default() }
}

/// Every database of the cluster but the templates, sorted.
fn databases(stack: &Stack) -> String {
    stack.psql(
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE NOT datistemplate",
    )
}

/// The entries of the data directory Steward put there (none once a restore is done).
fn steward_entries(stack: &Stack) -> String {
    docker(&["exec", &stack.db.name, "sh", "-c", "ls -A \"$PGDATA\" | grep steward || true"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_backup_brings_back_the_whole_cluster_encrypted() {
    let identity = age::x25519::Identity::generate();
    let keys = Keys::new(vec![identity.to_public()], vec![identity.clone()]);
    let stack = Stack::start_pitr("pitr-base", keys).await;
    stack.fill_db(20_000);
    // What a dump of one database cannot bring back: another database and a role.
    stack.psql("CREATE ROLE reader LOGIN");
    stack.psql("CREATE DATABASE other OWNER reader");
    docker(&[
        "exec",
        &stack.db.name,
        "psql",
        "-U",
        DB_USER,
        "-d",
        "other",
        "-c",
        "CREATE TABLE notes AS SELECT g AS id FROM generate_series(1, 77) g",
    ]);
    let before = stack.db_fingerprint();
    let dbs_before = databases(&stack);
    assert!(dbs_before.contains("other"), "{dbs_before}");

    let (id, manifest) = stack.back_up().await;
    let kinds: Vec<&Kind> = manifest.components.iter().map(|c| &c.kind).collect();
    assert!(
        matches!(
            kinds[..],
            [Kind::Postgres { .. }, Kind::PostgresBase { .. }, Kind::Path { .. }, Kind::Containers]
        ),
        "{kinds:?}"
    );
    let base = manifest
        .components
        .iter()
        .find(|c| matches!(c.kind, Kind::PostgresBase { .. }))
        .unwrap_or_else(|| unreachable!());
    let Kind::PostgresBase { data_dir, timeline, start_lsn, stop_lsn, user, .. } = &base.kind
    else {
        unreachable!()
    };
    assert_eq!(data_dir, "/var/lib/postgresql/data");
    assert_eq!(*timeline, 1);
    assert_eq!(user, DB_USER);
    assert!(start_lsn.contains('/') && stop_lsn.contains('/'), "{start_lsn} {stop_lsn}");
    assert!(base.object.ends_with(".tar.zst.age"), "{}", base.object);
    assert_eq!(base.encoding, "zstd+age");
    let stored = stack.stored_bytes(&base.object).await;
    assert!(stored.starts_with(b"age-encryption.org/v1\n"), "the base backup is not encrypted");
    // A cluster's data files: far more than the dump.
    assert!(base.raw_size > 16 << 20, "{} bytes", base.raw_size);

    // Disaster: the table, the other database and the role gone, something new instead.
    stack.psql("DROP TABLE items");
    stack.psql("CREATE TABLE stray (id int)");
    stack.psql("DROP DATABASE other");
    stack.psql("DROP ROLE reader");
    assert_ne!(databases(&stack), dbs_before);

    let restored = stack
        .backups
        .restore_journaled(
            &id,
            RestoreScope::Db,
            physical(),
            &Busy::new(),
            &mut RestoreJournal::none(),
        )
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(restored.restored, vec![format!("postgres-base/{}", stack.db.name)]);
    assert_eq!(stack.db_fingerprint(), before);
    assert_eq!(databases(&stack), dbs_before);
    assert_eq!(stack.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'reader'"), "1");
    let notes = docker(&[
        "exec",
        &stack.db.name,
        "psql",
        "-U",
        DB_USER,
        "-d",
        "other",
        "-tAc",
        "SELECT count(*) FROM notes",
    ]);
    assert_eq!(notes, "77");
    assert_eq!(stack.psql("SELECT to_regclass('stray') IS NULL"), "t", "the stray table is back");
    // The replaced cluster is removed once the restored one is healthy; nothing is left.
    assert_eq!(steward_entries(&stack), "");
    assert!(stack.app_running(), "the app was not started again");

    // The safety backup holds the replaced cluster: restoring it undoes the restore.
    let safety = restored.safety_backup_id.unwrap_or_else(|| panic!("no safety backup"));
    let undo = stack
        .backups
        .restore_journaled(
            &safety,
            RestoreScope::Db,
            RestoreOptions { physical: true, ..Default::default() },
            &Busy::new(),
            &mut RestoreJournal::none(),
        )
        .await
        .unwrap_or_else(|e| panic!("undo failed: {e} {:?}", e.stderr_tail));
    assert_eq!(undo.manifest.backup_id, safety);
    assert_eq!(stack.psql("SELECT to_regclass('stray') IS NOT NULL"), "t");
    assert_eq!(stack.psql("SELECT to_regclass('items') IS NULL"), "t");
    assert!(!databases(&stack).contains("other"));
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_restore_uses_the_dump_and_leaves_the_cluster_alone() {
    let stack = Stack::start_pitr("pitr-plain", Keys::default()).await;
    stack.fill_db(1_000);
    let before = stack.db_fingerprint();
    let (id, _) = stack.back_up().await;
    stack.psql("DROP TABLE items");
    stack.psql("CREATE DATABASE kept");
    let restored = stack
        .backups
        .restore(&id, RestoreScope::Db)
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(restored.restored, vec![format!("postgres/{}", stack.db.name)]);
    assert_eq!(stack.db_fingerprint(), before);
    // A dump restore replaces one database, not the cluster.
    assert!(databases(&stack).contains("kept"));
    stack.destroy_bucket().await;
}
