//! A rebuilt host's backups are paused until its restore is done (`STEWARD_BACKUP_RESTORE_PENDING`,
//! written by `steward kit import`): no backup, not even a restore's safety backup, may capture
//! the empty stack and become the latest; the restore itself ends the pause, recorded in the
//! bucket, so nothing is left for the operator to undo. Real PostgreSQL, volume and S3.

mod common;

use common::Stack;
use steward_backup::config::BackupConfig;
use steward_backup::journal::RestoreJournal;
use steward_backup::restore::{Busy, RestoreOptions};
use steward_backup::Backups;
use steward_engine::Engine;
use steward_events::RestoreScope;

fn paused(stack: &Stack, token: &str) -> Backups {
    let config =
        BackupConfig { restore_pending: Some(token.into()), ..stack.backups.config().clone() };
    Backups::new(Engine::from_env(), stack.store.clone(), config)
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_stay_paused_until_a_restore_ends_the_pause() {
    let stack = Stack::start("paused", &[]).await;
    stack.fill_db(200);
    stack.app_sh("echo old-host > /data/mark");
    let (id, _) = stack.back_up().await;
    let before = stack.db_fingerprint();

    // The rebuilt host: a fresh stack (the app made its empty schema, its first files), its
    // backups paused by the kit's token.
    stack.psql("DROP TABLE items; CREATE TABLE fresh (id int)");
    stack.app_sh("rm -f /data/mark && echo fresh > /data/fresh");
    let token = steward_testkit::unique_name("kit");
    let rebuilt = paused(&stack, &token);
    let e = rebuilt.check_not_paused().await.expect_err("paused");
    assert!(e.reason.contains("paused") && e.reason.contains(&token), "{}", e.reason);

    // A restore with a safety backup is refused before anything is touched: that backup
    // would be of the fresh stack.
    let options = RestoreOptions { safety_backup: true, ..Default::default() };
    let e = rebuilt
        .restore_journaled(
            &id,
            RestoreScope::All,
            options,
            &Busy::new(),
            &mut RestoreJournal::none(),
        )
        .await
        .expect_err("the safety backup is paused too");
    assert!(e.reason.contains("--no-safety-backup") && e.reason.contains("paused"), "{}", e.reason);
    assert_eq!(stack.app_sh("ls /data"), "fresh", "the refused restore touched the data");
    let listed = stack.store.list_dirs().await.unwrap_or_else(|e| panic!("list: {e}"));
    assert_eq!(listed.iter().filter(|d| d.as_str() != "journal").count(), 1, "{listed:?}");

    // Whoever can write to the bucket cannot end the pause: a record without a signature,
    // one signed with another key, or this token's signed record copied under another token.
    let record = format!("journal/restored/{token}.json");
    let body = format!("{{\"token\":\"{token}\",\"backup_id\":\"{id}\"}}");
    stack.store.put(&record, body.clone().into()).await.unwrap_or_else(|e| panic!("{e}"));
    let e = rebuilt.check_not_paused().await.expect_err("an unsigned record ended the pause");
    assert!(e.reason.contains("not signed"), "{}", e.reason);
    let stranger = steward_store::signing::SigningKey::generate();
    let forged = stranger.sign(steward_store::signing::Purpose::PauseEnded, body.as_bytes());
    let signature = format!("journal/restored/{token}.sig");
    stack.store.put(&signature, forged.into()).await.unwrap_or_else(|e| panic!("{e}"));
    let e = rebuilt.check_not_paused().await.expect_err("a stranger's record ended the pause");
    assert!(e.reason.contains("refused"), "{}", e.reason);
    stack.store.delete(&record).await.unwrap_or_else(|e| panic!("{e}"));
    stack.store.delete(&signature).await.unwrap_or_else(|e| panic!("{e}"));

    // Another installation's pause (another token) is not ended by this restore.
    let other = paused(&stack, &steward_testkit::unique_name("kit"));
    let restored = rebuilt
        .restore(&id, RestoreScope::All)
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e}"));
    assert_eq!(restored.manifest.backup_id, id);
    assert_eq!(stack.db_fingerprint(), before);
    assert_eq!(stack.app_sh("ls /data && cat /data/mark"), "mark\nold-host");
    rebuilt.check_not_paused().await.unwrap_or_else(|e| panic!("still paused: {e}"));
    // A restarted service (a new `Backups` with the same setting) finds the pause over.
    paused(&stack, &token).check_not_paused().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(other.check_not_paused().await.is_err(), "another token's pause was ended");
    // This token's genuine record, copied under the other token, names another pause.
    let other_token = other.config().restore_pending.clone().unwrap_or_default();
    for ext in ["json", "sig"] {
        let genuine = stack.stored_bytes(&format!("journal/restored/{token}.{ext}")).await;
        let copied = format!("journal/restored/{other_token}.{ext}");
        stack.store.put(&copied, genuine.into()).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let e = other.check_not_paused().await.expect_err("a copied record ended another pause");
    assert!(e.reason.contains("another pause"), "{}", e.reason);
    stack.destroy_bucket().await;
}
