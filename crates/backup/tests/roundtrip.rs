//! Backup, verify and restore against a real PostgreSQL container, a real data volume and the
//! test bed's S3 server.

mod common;

use common::Stack;
use sha2::{Digest, Sha256};
use steward_backup::config::BackupConfig;
use steward_backup::encryption::Keys;
use steward_backup::Backups;
use steward_engine::Engine;
use steward_events::RestoreScope;
use steward_store::manifest::Kind;

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_brings_back_every_row_and_byte() {
    let stack =
        Stack::start("roundtrip", &["steward.backup.paths=/data", "steward.backup.stop=true"])
            .await;
    stack.fill_db(30_000);
    // 20 MiB of random bytes: several multipart parts even after zstd.
    stack.fill_data(20, 300);
    let db_before = stack.db_fingerprint();
    let data_before = stack.data_fingerprint();
    assert!(db_before.starts_with("30000:"), "{db_before}");

    let (id, manifest) = stack.back_up().await;
    let kinds: Vec<&Kind> = manifest.components.iter().map(|c| &c.kind).collect();
    assert!(
        matches!(kinds[..], [Kind::Postgres { .. }, Kind::Path { .. }, Kind::Containers]),
        "{kinds:?}"
    );
    assert!(stack.app_running(), "the app was not started again after the copy");

    // The manifest's checksums are those of the stored objects, computed here independently.
    for c in &manifest.components {
        let bytes = stack.stored_bytes(&c.object).await;
        assert_eq!(bytes.len() as u64, c.stored_size, "{}", c.name);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), c.stored_sha256, "{}", c.name);
    }
    let path = manifest.components.iter().find(|c| matches!(c.kind, Kind::Path { .. }));
    assert!(path.is_some_and(|p| p.raw_size > 20 << 20), "the archive is smaller than the data");

    // Disaster: the table is gone, the data replaced by something else.
    stack.psql("DROP TABLE items");
    stack.app_sh("rm -rf /data/* /data/.dotfile && echo stray > /data/stray.txt");
    assert_ne!(stack.data_fingerprint(), data_before);

    let restored = stack
        .backups
        .restore("latest", RestoreScope::All)
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(restored.manifest.backup_id, id);
    assert_eq!(restored.restored.len(), 2, "{:?}", restored.restored);
    assert_eq!(stack.db_fingerprint(), db_before);
    // Identical, and the stray file is gone: a restore replaces, it does not merge.
    assert_eq!(stack.data_fingerprint(), data_before);
    assert!(stack.app_running());
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_object_fails_verification_and_the_restore_touches_nothing() {
    let stack = Stack::start("corrupt", &[]).await;
    stack.fill_db(2_000);
    stack.fill_data(1, 20);
    let (id, manifest) = stack.back_up().await;

    let verified = stack
        .backups
        .verify(&id)
        .await
        .unwrap_or_else(|e| panic!("verify failed: {e} {:?}", e.stderr_tail));
    assert!(verified.database_restored);
    assert_eq!(verified.components_checked, 3);
    let listed = stack.backups.list().await.unwrap_or_default();
    assert!(listed.iter().any(|l| l.backup_id == id && l.verified.is_some()));

    // Flip the stored archive: same object, different bytes.
    let path = manifest
        .components
        .iter()
        .find(|c| matches!(c.kind, Kind::Path { .. }))
        .map(|c| c.object.clone())
        .unwrap_or_default();
    let mut bytes = stack.stored_bytes(&path).await;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    stack.store.put(&path, bytes.into()).await.unwrap_or_else(|e| panic!("{e}"));

    let failed = stack
        .backups
        .verify(&id)
        .await
        .err()
        .unwrap_or_else(|| panic!("verify passed a corrupted backup"));
    assert!(failed.reason.contains("does not match"), "{}", failed.reason);

    // Work done after the backup: a refused restore must leave it alone.
    stack.psql("INSERT INTO items VALUES (999999, 'after the backup')");
    stack.app_sh("echo after > /data/after.txt");
    assert_restore_refused_untouched(&stack, &stack.backups, &id, "does not match").await;
    assert!(stack.app_running());
    stack.destroy_bucket().await;
}

/// A restore of `id` through `backups` is refused with `reason` in its message, and neither
/// the database nor the data changed.
async fn assert_restore_refused_untouched(
    stack: &Stack,
    backups: &Backups,
    id: &str,
    reason: &str,
) {
    let (db, data) = (stack.db_fingerprint(), stack.data_fingerprint());
    let refused = backups
        .restore(id, RestoreScope::All)
        .await
        .err()
        .unwrap_or_else(|| panic!("restored {id} although it should be refused ({reason})"));
    assert!(refused.reason.contains(reason), "{}", refused.reason);
    assert_eq!(stack.db_fingerprint(), db);
    assert_eq!(stack.data_fingerprint(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_backup_stores_no_plaintext_and_needs_the_identity_to_come_back() {
    let identity = age::x25519::Identity::generate();
    let keys = Keys::new(vec![identity.to_public()], vec![identity.clone()]);
    let stack = Stack::start_with_keys("sealed", &[], keys).await;
    stack.fill_db(5_000);
    stack.fill_data(2, 50);
    stack.app_sh("echo 'a plain secret line that must not reach S3' > /data/secret.txt");
    let (db_before, data_before) = (stack.db_fingerprint(), stack.data_fingerprint());

    let (id, manifest) = stack.back_up().await;
    for c in &manifest.components {
        assert_eq!(c.encoding, "zstd+age", "{}", c.name);
        assert!(c.object.ends_with(".age"), "{}", c.object);
        let bytes = stack.stored_bytes(&c.object).await;
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{} is not an age file", c.name);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), c.stored_sha256, "{}", c.name);
    }
    // The scratch server loads the decrypted dump.
    let verified = stack
        .backups
        .verify(&id)
        .await
        .unwrap_or_else(|e| panic!("verify failed: {e} {:?}", e.stderr_tail));
    assert!(verified.database_restored);

    // A service holding only the public key refuses to restore, before touching anything.
    let public_only = Backups::new(
        Engine::from_env(),
        stack.store.clone(),
        BackupConfig {
            keys: Keys::new(vec![identity.to_public()], vec![]),
            ..common::config(common::s3_config(stack.store.bucket(), None), &stack.scope)
        },
    );
    stack.psql("DELETE FROM items WHERE id <= 100");
    stack.app_sh("rm /data/secret.txt");
    assert_restore_refused_untouched(&stack, &public_only, &id, "STEWARD_BACKUP_AGE_IDENTITY_FILE")
        .await;

    let restored = stack
        .backups
        .restore(&id, RestoreScope::All)
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(restored.restored.len(), 2, "{:?}", restored.restored);
    assert_eq!(stack.db_fingerprint(), db_before);
    assert_eq!(stack.data_fingerprint(), data_before);
    stack.destroy_bucket().await;
}
