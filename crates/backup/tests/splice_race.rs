//! Files written while an incremental backup runs, between its listing and its reads: the
//! backup pauses after listing (a failpoint's sleep, so this binary holds this test alone:
//! the points are armed for the whole process) while the test writes.
//!
//! What must hold: a backup never stores a changed entry under a listing it contradicts
//! (it then reads the path whole); an entry taken unread is the one the listing saw; and
//! whatever changed after a listing is read again by the next backup, whatever the
//! listing's coarse times say.

mod common;

use std::time::Duration;

use common::cdc::{
    back_up, differ, fill, incremental, path_component, path_lines, settle, spliced, tree,
};
use common::Stack;
use steward_backup::Backups;
use steward_events::RestoreScope;

/// Long enough for the test's `docker exec` to end inside the pause on a loaded machine.
const PAUSE_MS: u64 = 6000;

/// How many times this process passed the point after listing.
fn listings(dir: &std::path::Path) -> usize {
    let passed = std::fs::read_to_string(dir.join("passed")).unwrap_or_default();
    passed.lines().filter(|l| l.ends_with(" chunks:listed")).count()
}

/// A backup of `backups` under way, with `during` run in the app while it waits after its
/// listing: its id.
async fn back_up_writing(
    stack: &Stack,
    backups: &Backups,
    dir: &std::path::Path,
    during: &str,
) -> (String, steward_store::manifest::Manifest) {
    let before = listings(dir);
    let running = tokio::spawn({
        let backups = backups.clone();
        async move { back_up(&backups).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while listings(dir) == before {
        assert!(std::time::Instant::now() < deadline, "the backup never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.app_sh(during);
    running.await.unwrap_or_else(|e| panic!("backup task: {e}"))
}

/// The md5 of /data/files/`name` now.
fn md5(stack: &Stack, name: &str) -> String {
    stack.app_sh(&format!("md5sum < /data/files/{name} | cut -d' ' -f1"))
}

/// Rewrites /data/files/`name` in place with new bytes of the same size.
fn rewrite(name: &str) -> String {
    format!("dd if=/dev/urandom of=/data/files/{name} bs=200k count=1 conv=notrunc 2>/dev/null")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_written_between_the_listing_and_the_reads_are_never_stored_under_a_stale_listing() {
    let dir = std::env::temp_dir().join(steward_testkit::unique_name("splice-race"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    // Before the first point is reached: the points are read once per process.
    std::env::set_var(steward_failpoints::ENV, format!("chunks:listed=sleep:{PAUSE_MS}"));
    std::env::set_var(steward_failpoints::ENV_DIR, &dir);
    let stack = Stack::start("cdc-race", &[]).await;
    common::logs();
    let backups = incremental(&stack);
    fill(&stack, 20);
    settle().await;
    back_up(&backups).await;

    // f5 changed before the listing, and grew after it: the header tar writes contradicts
    // the listing, and the path is read whole (as it was at the read).
    stack.app_sh(&rewrite("f5"));
    settle().await;
    let (second, manifest) =
        back_up_writing(&stack, &backups, &dir, "echo more >> /data/files/f5").await;
    // The splice gave its listing back: the whole read keeps a tree, the next splice's.
    assert!(path_component(&manifest).tree.is_some(), "{manifest:?}");
    let said = path_lines(&stack, "changed since it was listed");
    let all = common::log_lines(&second);
    assert!(said.iter().any(|l| l.contains(&second) && l.contains("f5")), "{all:#?}");
    assert!(common::log_lines(&second).iter().all(|l| !l.contains("unread")));
    let second_tree = tree(&stack);

    // f6 changed before the listing and again after it, with the same size (the archive
    // holds it as read); f7 changed only after it (taken unread: the listing's f7).
    settle().await;
    stack.app_sh(&rewrite("f6"));
    let f7_listed = md5(&stack, "f7");
    settle().await;
    let third =
        back_up_writing(&stack, &backups, &dir, &format!("{}; {}", rewrite("f6"), rewrite("f7")))
            .await
            .0;
    // f5 too: the whole read of the second recorded the listing's f5, not the bytes read.
    spliced(&third, 2);
    let f6_read = md5(&stack, "f6");

    // Nothing changed since: the next backup reads f6 and f7 again all the same, though a
    // listing with second times may show f6 as the third's listing did (both changed after
    // that listing began).
    let fourth_tree = tree(&stack);
    let fourth = back_up_writing(&stack, &backups, &dir, "true").await.0;
    spliced(&fourth, 2);

    for (id, expected) in [(&second, &second_tree), (&fourth, &fourth_tree)] {
        let restored = backups.restore(id, RestoreScope::Paths).await;
        restored.unwrap_or_else(|e| panic!("restore {id}: {e}"));
        assert_eq!(differ(&tree(&stack), expected), Vec::<String>::new(), "{id}");
    }
    let restored = backups.restore(&third, RestoreScope::Paths).await;
    restored.unwrap_or_else(|e| panic!("restore the third: {e}"));
    assert_eq!(md5(&stack, "f6"), f6_read, "f6 as tar read it");
    assert_eq!(md5(&stack, "f7"), f7_listed, "f7 as listed");
    stack.destroy_bucket().await;
    let _ = std::fs::remove_dir_all(&dir);
}
