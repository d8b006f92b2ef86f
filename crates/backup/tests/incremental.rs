//! Incremental path backups against the test bed's Docker and S3: deduplication between two
//! backups, byte-identical restores (content, mode, owner, mtime), a hostile bucket, and the
//! chunk collection killed at its steps.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::cdc::{
    back_up, differ, fill, incremental, incremental_with, path_component, path_lines, restored_as,
    settle, spliced, tree,
};
use common::Stack;
use steward_backup::config::BackupConfig;
use steward_backup::encryption::Keys;
use steward_backup::Backups;
use steward_engine::Engine;
use steward_events::RestoreScope;
use steward_store::chunks::CHUNKS_DIR;
use steward_store::manifest::Manifest;
use steward_testkit::docker::docker;

async fn chunk_objects(stack: &Stack) -> BTreeSet<String> {
    let objects = stack.store.list_objects(CHUNKS_DIR).await;
    objects.unwrap_or_else(|e| panic!("list chunks: {e}")).into_iter().collect()
}

async fn size_of(stack: &Stack, objects: &BTreeSet<String>) -> usize {
    let mut total = 0;
    for o in objects {
        total += stack.stored_bytes(o).await.len();
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_backup_uploads_only_the_changed_chunks_and_both_restore_byte_identical() {
    let stack = Stack::start("cdc-dedup", &[]).await;
    common::logs();
    let backups = incremental(&stack);
    fill(&stack, 200);
    // Settled before the first listing: a file changed less than two seconds before a
    // listing starts is read again by the next backup, whatever its listing says.
    let wait = settle();
    let first_tree = tree(&stack);
    wait.await;
    let (first, m1) = back_up(&backups).await;
    let c1 = path_component(&m1);
    assert_eq!(c1.encoding, "cdc2+zstd+age");
    let after_first = chunk_objects(&stack).await;
    let first_bytes = size_of(&stack, &after_first).await;
    assert!(after_first.len() >= 20, "40 MiB in {} chunks", after_first.len());

    // 1 % of the files change (content and mtime).
    stack.app_sh(
        "dd if=/dev/urandom of=/data/files/f17 bs=200k count=1 conv=notrunc 2>/dev/null; \
         dd if=/dev/urandom of=/data/files/f150 bs=200k count=1 conv=notrunc 2>/dev/null",
    );
    let wait = settle();
    let second_tree = tree(&stack);
    assert_ne!(first_tree, second_tree);
    wait.await;
    let (second, m2) = back_up(&backups).await;
    let after_second = chunk_objects(&stack).await;
    let new: BTreeSet<String> = after_second.difference(&after_first).cloned().collect();
    let new_bytes = size_of(&stack, &new).await;
    // Each changed file lies in one or two chunks, each boundary at most shifts one more.
    assert!(
        !new.is_empty() && new.len() <= 6,
        "{} new chunks of {}",
        new.len(),
        after_second.len()
    );
    // The chunker's seed is derived from a fresh key each run, so chunk sizes vary from 256 KiB
    // to 4 MiB: CI once saw 9.0 MB of 41.1 MB in the few new chunks, over the old fifth.
    assert!(new_bytes * 2 <= first_bytes, "{new_bytes} new bytes of {first_bytes}");
    let c2 = path_component(&m2);
    assert_eq!(c2.raw_size, c1.raw_size);
    assert_ne!(c2.raw_sha256, c1.raw_sha256);
    assert!(c2.tree.is_some() && c2.entries_checked.is_some(), "{c2:?}");
    // The second backup read only the two changed files through the engine (their
    // directory's times did not change), plus the old chunks around them: not the 40 MiB.
    // Counted in chunks rather than bytes: the chunks' sizes vary from run to run, and CI once
    // saw the few chunks around four changes hold a third of the path. Around each change,
    // the chunk before it and those until the cutting meets an old cut again: three, or four
    // when the first old cut after the change is too close to it (4 to 6 here in five runs).
    let read = spliced(&second, 2);
    assert!(read.old_chunks <= 2 * 4, "{read:?} of {} chunks", after_first.len());
    assert!(read.bytes < c2.raw_size / 2, "{read:?} of {} bytes", c2.raw_size);

    // A file changes mode only, one goes, a directory, a file in it and a link come: read
    // are the first file, the new file and the link; the headers of /data, /data/files and
    // /data/new are made from their listing (f17 and f150 had settled before the second
    // backup listed them, so they are not read again).
    settle().await;
    stack.app_sh(
        "chmod 604 /data/files/f3; rm /data/files/f4; \
         mkdir /data/new && echo hello > /data/new/n.txt && chown 1001:101 /data/new/n.txt; \
         ln -s files/f5 /data/link",
    );
    let third_tree = tree(&stack);
    let (third, m3) = back_up(&backups).await;
    let read = spliced(&third, 6);
    let c3 = path_component(&m3);
    // Four places changed: the headers of /data and /data/files at the start, f3, f4, and
    // the link and /data/new at the end (6 to 9 old chunks in five runs).
    assert!(read.old_chunks <= 4 * 4, "{read:?} of {} chunks", after_second.len());
    assert!(read.bytes < c3.raw_size / 2, "{read:?} of {} bytes", c3.raw_size);
    assert!(c3.entries_checked.is_some(), "{c3:?}");
    restored_as(&stack, &backups, &third, &third_tree).await;

    backups.verify(&second).await.unwrap_or_else(|e| panic!("verify: {e}"));
    restored_as(&stack, &backups, &first, &first_tree).await;
    restored_as(&stack, &backups, &second, &second_tree).await;
    stack.destroy_bucket().await;
}

/// A restore of `id` is refused with `reason` in its message and /data is left as it was;
/// verify refuses too.
async fn refused_untouched(stack: &Stack, backups: &Backups, id: &str, reason: &str) {
    let before = tree(stack);
    let failed = backups.verify(id).await.err();
    let failed = failed.unwrap_or_else(|| panic!("verify passed ({reason})"));
    assert!(failed.reason.contains(reason), "verify: {}", failed.reason);
    let refused = backups.restore(id, RestoreScope::Paths).await.err();
    let refused = refused.unwrap_or_else(|| panic!("restored although {reason}"));
    assert!(refused.reason.contains(reason), "restore: {}", refused.reason);
    assert_eq!(differ(&tree(stack), &before), Vec::<String>::new());
    assert!(stack.app_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_or_missing_chunk_or_index_is_refused_before_anything_is_touched() {
    let stack = Stack::start("cdc-hostile", &[]).await;
    let backups = incremental(&stack);
    fill(&stack, 30);
    let (old, old_m) = back_up(&backups).await;
    let first_chunks = chunk_objects(&stack).await;
    stack.app_sh("dd if=/dev/urandom of=/data/files/f3 bs=200k count=1 conv=notrunc 2>/dev/null");
    let (id, m) = back_up(&backups).await;
    stack.app_sh("echo after > /data/after.txt");
    // A chunk the second backup stored (so its index names it: a chunk only the first one
    // uses would leave the second intact, and the test pass or fail by chance).
    let victim = chunk_objects(&stack)
        .await
        .difference(&first_chunks)
        .next()
        .cloned()
        .unwrap_or_else(|| panic!("the second backup stored no chunk of its own"));
    let good = stack.stored_bytes(&victim).await;

    // A chunk replaced by another chunk's (validly encrypted) bytes.
    let donor = first_chunks.iter().next().unwrap_or_else(|| panic!("no chunk"));
    let other = stack.stored_bytes(donor).await;
    stack.store.put(&victim, other.into()).await.unwrap_or_else(|e| panic!("{e}"));
    refused_untouched(&stack, &backups, &id, "do not match the signed index").await;
    // Missing.
    stack.store.delete(&victim).await.unwrap_or_else(|e| panic!("{e}"));
    refused_untouched(&stack, &backups, &id, "missing").await;
    stack.store.put(&victim, good.into()).await.unwrap_or_else(|e| panic!("{e}"));
    backups.verify(&id).await.unwrap_or_else(|e| panic!("put back, verify: {e}"));

    // The index replaced by another backup's (a valid index, not the signed one).
    let index = path_component(&m).object;
    let good_index = stack.stored_bytes(&index).await;
    let old_index = stack.stored_bytes(&path_component(&old_m).object).await;
    stack.store.put(&index, old_index.into()).await.unwrap_or_else(|e| panic!("{e}"));
    refused_untouched(&stack, &backups, &id, "does not match the signed manifest").await;
    stack.store.put(&index, good_index.into()).await.unwrap_or_else(|e| panic!("{e}"));
    backups.verify(&old).await.unwrap_or_else(|e| panic!("the older backup: {e}"));
    stack.destroy_bucket().await;
}

/// A backup records in its signed manifest whether every entry of the archive passed the
/// restore's tar rules, and a restore's check before the stop trusts that verdict only: it
/// then proves the chunks' stored bytes and opens the first one. An identity that cannot open
/// them, and an archive whose entries did not pass (read whole as before), are refused with
/// the app running and nothing touched.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_trusts_only_a_signed_verdict_on_the_entries_and_refuses_untouched_otherwise() {
    let stack = Stack::start("cdc-verdict", &[]).await;
    let backups = incremental(&stack);
    fill(&stack, 4);
    let (good, m) = back_up(&backups).await;
    assert_eq!(path_component(&m).entries_checked, Some(steward_backup::tarcheck::RULES));

    // Signed by the same key, the chunks sealed to another identity than this reader's.
    let stranger = incremental_with(&stack, age::x25519::Identity::generate());
    let before = tree(&stack);
    let refused = stranger.restore(&good, RestoreScope::Paths).await.err();
    let refused =
        refused.unwrap_or_else(|| panic!("restored with an identity that cannot open it"));
    assert!(refused.reason.contains("cannot decrypt it"), "{}", refused.reason);
    assert!(refused.reason.contains("nothing was changed"), "{}", refused.reason);
    assert_eq!(differ(&tree(&stack), &before), Vec::<String>::new());
    assert!(stack.app_running());

    // A link out of the path: stored all the same (it is the operator's data), no verdict,
    // and the restore reads the archive whole and refuses it before the stop.
    stack.app_sh("ln -s /etc/passwd /data/files/outside");
    let (bad, m) = back_up(&backups).await;
    assert_eq!(path_component(&m).entries_checked, None);
    stack.app_sh("rm /data/files/outside && echo after > /data/after.txt");
    refused_untouched(&stack, &backups, &bad, "refused: the archive holds").await;
    restored_as(&stack, &backups, &good, &before).await;
    stack.destroy_bucket().await;
}

/// `steward-backup gc` on the stack's bucket, with `failpoints` armed: whether it exited 0,
/// and its stderr.
fn gc(stack: &Stack, failpoints: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_steward-backup"))
        .env_clear()
        .envs(common::bucket_env(stack))
        .env("STEWARD_FAILPOINTS", failpoints)
        .arg("gc")
        .output()
        .unwrap_or_else(|e| panic!("steward-backup gc: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The chunk objects the indexes of `manifests` name.
async fn referenced(stack: &Stack, manifests: &[&Manifest]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in manifests {
        for c in steward_backup::chunks::chunked_components(m) {
            let (index, _) = steward_backup::chunks::read_index(&stack.store, c, None, None)
                .await
                .unwrap_or_else(|e| panic!("index: {e}"));
            out.extend(index.entries.iter().map(|e| e.object()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_killed_at_any_step_twice_never_deletes_a_chunk_a_retained_backup_needs() {
    // (An unsigned copy of the pruned backup is in the bucket throughout: it protects nothing.)
    let stack = Stack::start("cdc-gc", &[]).await;
    let backups = incremental(&stack);
    // 20 MB, 18 of them changed: at least four whole chunks (of at most 4 MiB) only the
    // pruned backup needs, about 17 on average. (With 8 MB, 6 changed, a run whose chunks
    // came out large had fewer than the five asserted below.)
    fill(&stack, 100);
    let (pruned, _) = back_up(&backups).await;
    // Most files change: the pruned backup has many chunks no other needs.
    stack.app_sh(
        "i=0; while [ $i -lt 90 ]; do \
         dd if=/dev/urandom of=/data/files/f$i bs=200k count=1 conv=notrunc 2>/dev/null; i=$((i+1)); done",
    );
    let (kept, kept_m) = back_up(&backups).await;
    stack.app_sh("dd if=/dev/urandom of=/data/files/f35 bs=200k count=1 conv=notrunc 2>/dev/null");
    let newest_tree = tree(&stack);
    let (newest, newest_m) = back_up(&backups).await;
    let needed = referenced(&stack, &[&kept_m, &newest_m]).await;
    let all = chunk_objects(&stack).await;
    let garbage = all.len() - needed.len();
    assert!(garbage >= 5, "{garbage} chunks only the pruned backup needs");

    // A backup in progress (no manifest yet): nothing is deleted.
    let pending = steward_store::manifest::new_backup_id(time::OffsetDateTime::now_utc());
    let marker = format!("{pending}/{}", steward_backup::chunks::PENDING);
    stack.store.put(&marker, bytes::Bytes::new()).await.unwrap_or_else(|e| panic!("{e}"));
    let (ok, said) = gc(&stack, "");
    assert!(ok && said.contains("no manifest yet"), "{said}");
    stack.store.delete_dir(&pending).await.unwrap_or_else(|e| panic!("{e}"));

    // The pruned backup planted again unsigned under another id, index and all: an unsigned
    // manifest protects nothing (and the collection is not stopped by it).
    let planted = steward_store::manifest::new_backup_id(
        time::OffsetDateTime::now_utc() - time::Duration::days(2),
    );
    for object in stack.store.list_objects(&pruned).await.unwrap_or_else(|e| panic!("{e}")) {
        if object.ends_with("manifest.sig") {
            continue;
        }
        let body = String::from_utf8_lossy(&stack.stored_bytes(&object).await).into_owned();
        let body = if object.ends_with(".json") { body.replace(&pruned, &planted) } else { body };
        let bytes = match object.ends_with(".json") {
            true => body.into_bytes(),
            false => stack.stored_bytes(&object).await,
        };
        let name = object.replace(&pruned, &planted);
        stack.store.put(&name, bytes.into()).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let listed = backups.list().await.unwrap_or_else(|e| panic!("{e}"));
    let standing = listed.iter().find(|l| l.backup_id == planted).map(|l| l.standing.clone());
    assert_eq!(standing, Some(steward_store::catalog::Standing::Unsigned));

    // Retention's way: the manifest first, then the rest.
    stack.store.delete(&format!("{pruned}/manifest.json")).await.unwrap_or_else(|e| panic!("{e}"));
    stack.store.delete_dir(&pruned).await.unwrap_or_else(|e| panic!("{e}"));

    // After each kill: no chunk either retained backup names is gone (the collection only
    // deletes chunks), and the newest still verifies; once collected, both verify. (Each
    // verification loads the dump into a scratch PostgreSQL: verifying both after every kill
    // took 9 s more of this test's 48 on an idle machine.)
    let check = |when: &'static str, both: bool| {
        let (stack, backups, needed) = (&stack, &backups, &needed);
        let (kept, newest) = (kept.clone(), newest.clone());
        async move {
            let left = chunk_objects(stack).await;
            let lost: Vec<&String> = needed.difference(&left).collect();
            assert!(lost.is_empty(), "{when}: needed chunks deleted: {lost:?}");
            let ids = if both { vec![kept, newest] } else { vec![newest] };
            for id in &ids {
                backups.verify(id).await.unwrap_or_else(|e| panic!("{when}: verify {id}: {e}"));
            }
            left.len()
        }
    };
    // Killed after the mark, then after the second and the first delete (a kill, its
    // recovery killed again).
    for (points, when) in [
        ("gc:marked", "killed after marking"),
        ("gc:deleted=2", "killed mid-sweep"),
        ("gc:deleted", "killed again"),
    ] {
        let before = chunk_objects(&stack).await.len();
        let (ok, said) = gc(&stack, points);
        assert!(!ok && said.contains("failpoint"), "{when}: {said}");
        let left = check(when, false).await;
        assert!(left <= before, "{when}");
    }
    let (ok, said) = gc(&stack, "");
    assert!(ok && said.contains("deleted"), "{said}");
    assert_eq!(chunk_objects(&stack).await, needed, "exactly the needed chunks are left");
    check("collected", true).await;
    // Collected again: nothing more to do.
    let (ok, said) = gc(&stack, "");
    assert!(ok && said.contains(" 0 deleted"), "{said}");

    stack.app_sh("rm -rf /data/files");
    restored_as(&stack, &backups, &newest, &newest_tree).await;
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_second_copy_gets_every_chunk_and_restores_from_them_alone() {
    let stack = Stack::start("cdc-copy", &[]).await;
    let copy_s3 = common::s3_config(&common::bucket_name("cdc-copy2"), None);
    let copy_store = common::store_for(&copy_s3).await;
    let require = steward_testkit::testbed::require;
    let copy = steward_store::config::CopyConfig {
        s3: copy_s3,
        credentials: Some((
            require("STEWARD_TEST_S3_ACCESS_KEY"),
            require("STEWARD_TEST_S3_SECRET_KEY"),
        )),
    };
    let primary = incremental(&stack);
    let backups = Backups::new(
        Engine::from_env(),
        stack.store.clone(),
        BackupConfig { copy: Some(copy), ..primary.config().clone() },
    );
    fill(&stack, 30);
    let (first, m1) = back_up(&backups).await;
    // f9, the archive's last file (names sorted: f0, f1, f10, ...): 5.9 MB in, past the first
    // chunk (at most 4 MiB), so the two backups always share that one. With f7 (1.4 MB in),
    // the few chunks of some runs' sizes were all cut again (CI: "share no chunk").
    stack.app_sh("dd if=/dev/urandom of=/data/files/f9 bs=200k count=1 conv=notrunc 2>/dev/null");
    let second_tree = tree(&stack);
    let (second, m2) = back_up(&backups).await;

    // A chunk both backups need gone from the primary: the copy of each fails and stays
    // incomplete there. (A chunk only the second needs would let the first copy succeed.)
    let needed = referenced(&stack, &[&m1, &m2]).await;
    let in_second = referenced(&stack, &[&m2]).await;
    let victim = referenced(&stack, &[&m1])
        .await
        .into_iter()
        .find(|c| in_second.contains(c))
        .unwrap_or_else(|| panic!("the two backups share no chunk"));
    let good = stack.stored_bytes(&victim).await;
    stack.store.delete(&victim).await.unwrap_or_else(|e| panic!("{e}"));
    let failed =
        backups.sync_copy().await.err().unwrap_or_else(|| panic!("copied without {victim}"));
    assert!(failed.contains("gone from the primary"), "{failed}");
    let from_copy = backups.from_copy().unwrap_or_else(|| panic!("no copy"));
    let listed = from_copy.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().all(|l| l.usable().is_none()), "{listed:?}");
    stack.store.put(&victim, good.into()).await.unwrap_or_else(|e| panic!("{e}"));

    let copied = backups.sync_copy().await.unwrap_or_else(|e| panic!("copy: {e}"));
    assert_eq!(copied, vec![first.clone(), second.clone()]);
    let there: BTreeSet<String> = copy_store
        .list_objects(CHUNKS_DIR)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect();
    assert_eq!(there, needed);
    // The primary's chunks gone: the copy alone restores.
    stack.store.delete_dir(CHUNKS_DIR).await.unwrap_or_else(|e| panic!("{e}"));
    from_copy.verify(&first).await.unwrap_or_else(|e| panic!("verify the copy: {e}"));
    stack.app_sh("rm -rf /data/files");
    restored_as(&stack, &from_copy, &second, &second_tree).await;
    common::destroy_bucket(copy_store.bucket()).await;
    stack.destroy_bucket().await;
}

/// An archive stream that breaks part-way (the engine or the container gone mid-read) fails
/// the store: no index is written for the bytes that did arrive, so no backup can name a
/// path cut short. Chunks already uploaded stay, unreferenced, for the collection.
#[tokio::test(flavor = "multi_thread")]
async fn an_archive_broken_mid_stream_stores_no_index() {
    use steward_backup::chunks::{store_chunked, Chunker, Known};
    let bucket = common::bucket_name("chunks-broken");
    let store = common::store_for(&common::s3_config(&bucket, None)).await;
    let identity = age::x25519::Identity::generate();
    let keys = Keys::new(vec![identity.to_public()], vec![identity]);
    let chunker = Chunker::new(&common::signing_key(), &keys);
    let meter = std::sync::Arc::new(steward_backup::progress::Meter::default());
    // 9 MiB of pseudo-random bytes (several chunks) in 64 KiB pieces, then the break.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let pieces: Vec<std::io::Result<bytes::Bytes>> = (0..144)
        .map(|_| {
            let piece: Vec<u8> = (0..8192)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect();
            Ok(bytes::Bytes::from(piece))
        })
        .chain([Err(std::io::Error::other("the engine closed the archive"))])
        .collect();
    let io = steward_backup::pipeline::Io { store: &store, keys: &keys, meter: &meter };
    let known = Known::default();
    let result =
        store_chunked(io, &chunker, &known, "b1/data.chunks.zst", futures::stream::iter(pieces), 3)
            .await;
    let err = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("the engine closed the archive"), "the store did not fail: {err:?}");
    let index = store.get_small("b1/data.chunks.zst", 1 << 20).await;
    assert!(matches!(index, Ok(None)), "an index was stored for a broken stream: {index:?}");
    common::destroy_bucket(&bucket).await;
}

/// A chunk an older backup stored, deleted from the bucket under the index that names it
/// (by hand, by a lifecycle rule): the next backup does not splice over it nor name it
/// unread; it stores the bytes again, and it and the backups after it verify and restore.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_chunk_deleted_under_its_index_is_stored_again_not_named_unread() {
    let stack = Stack::start("cdc-gone", &[]).await;
    common::logs();
    let backups = incremental(&stack);
    fill(&stack, 30);
    settle().await;
    let (first, m1) = back_up(&backups).await;
    // The first chunk: the archive's start (the directories' headers, the first files), which
    // a change at the end leaves unchanged, so a splice would take it unread.
    let c1 = path_component(&m1);
    let (index, _) = steward_backup::chunks::read_index(&stack.store, &c1, None, None)
        .await
        .unwrap_or_else(|e| panic!("index: {e}"));
    let victim = index.entries.first().map(|e| e.object()).unwrap_or_else(|| panic!("no chunk"));
    stack.store.delete(&victim).await.unwrap_or_else(|e| panic!("{e}"));

    stack.app_sh("dd if=/dev/urandom of=/data/files/f29 bs=200k count=1 conv=notrunc 2>/dev/null");
    let wait = settle();
    let second_tree = tree(&stack);
    wait.await;
    let (second, m2) = back_up(&backups).await;
    let said = path_lines(&stack, "missing from the bucket");
    assert!(
        said.iter().any(|l| l.contains("ERROR") && l.contains("chunks=1 ")),
        "the loss is reported: {said:#?}"
    );
    assert!(said.iter().any(|l| l.contains("read whole")), "no splice: {said:#?}");
    assert!(common::log_lines(&second).iter().all(|l| !l.contains("unread")));
    let (index2, _) =
        steward_backup::chunks::read_index(&stack.store, &path_component(&m2), None, None)
            .await
            .unwrap_or_else(|e| panic!("index: {e}"));
    assert!(index2.entries.iter().all(|e| e.object() != victim), "the second names the lost chunk");
    backups.verify(&second).await.unwrap_or_else(|e| panic!("verify the second: {e}"));
    let failed = backups.verify(&first).await.err();
    assert!(failed.is_some_and(|f| f.reason.contains("missing")), "the first is broken");

    // The next backup splices from the second again.
    stack.app_sh("dd if=/dev/urandom of=/data/files/f3 bs=200k count=1 conv=notrunc 2>/dev/null");
    let third_tree = tree(&stack);
    let (third, _) = back_up(&backups).await;
    spliced(&third, 1);
    backups.verify(&third).await.unwrap_or_else(|e| panic!("verify the third: {e}"));
    restored_as(&stack, &backups, &second, &second_tree).await;
    restored_as(&stack, &backups, &third, &third_tree).await;
    stack.destroy_bucket().await;
}

/// Two names of one file: the splice cannot tell which the archive API writes as the file and
/// which as a link to it, so a hard-linked file makes the path read whole; the restore gives
/// back one file under both names. Once the link is gone the path splices again.
#[tokio::test(flavor = "multi_thread")]
async fn a_hard_linked_file_makes_the_path_read_whole_and_comes_back_linked() {
    let stack = Stack::start("cdc-hardlink", &[]).await;
    common::logs();
    let backups = incremental(&stack);
    fill(&stack, 20);
    stack.app_sh("ln /data/files/f7 /data/files/f7-again");
    settle().await;
    let (_, m1) = back_up(&backups).await;
    assert!(path_component(&m1).tree.is_some(), "the first keeps a tree: {m1:?}");

    stack.app_sh("dd if=/dev/urandom of=/data/files/f2 bs=200k count=1 conv=notrunc 2>/dev/null");
    let wait = settle();
    let second_tree = tree(&stack);
    wait.await;
    let (second, m2) = back_up(&backups).await;
    let said = path_lines(&stack, "read whole");
    assert!(said.iter().any(|l| l.contains("hard-linked")), "no splice, and why: {said:#?}");
    // The refused splice gave its listing back: the whole read keeps a tree.
    assert!(path_component(&m2).tree.is_some(), "{m2:?}");
    let second_lines = common::log_lines(&second);
    assert!(second_lines.iter().any(|l| l.contains("stored as chunks")), "{second_lines:#?}");
    assert!(second_lines.iter().all(|l| !l.contains("unread")), "{second_lines:#?}");

    stack.app_sh("rm /data/files/f7-again");
    let wait = settle();
    let third_tree = tree(&stack);
    wait.await;
    let (third, _) = back_up(&backups).await;
    // Read: f7 (one link fewer moved its ctime) and the directory that held the link.
    spliced(&third, 2);

    // One file under two names again, with the content of the second backup.
    restored_as(&stack, &backups, &second, &second_tree).await;
    let after = stack.app_sh("stat -c '%h %i' /data/files/f7 /data/files/f7-again");
    let pair: Vec<&str> = after.lines().collect();
    assert_eq!(pair.len(), 2, "{after}");
    assert!(pair[0] == pair[1] && pair[0].starts_with("2 "), "not one file: {after}");
    restored_as(&stack, &backups, &third, &third_tree).await;
    stack.destroy_bucket().await;
}

/// A path of a container stopped for its copy (`steward.backup.stop=true`) is listed in a
/// one-shot container sharing its volumes, and spliced like a running one's (before, it was
/// listed by exec only, which a stopped container refuses: every backup read it whole).
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_containers_path_is_listed_beside_it_and_spliced() {
    let labels = ["steward.backup.paths=/data", "steward.backup.stop=true"];
    let stack = Stack::start("cdc-stopped", &labels).await;
    common::logs();
    let backups = incremental(&stack);
    fill(&stack, 20);
    settle().await;
    let (_, m1) = back_up(&backups).await;
    assert!(path_component(&m1).tree.is_some(), "the first keeps a tree: {m1:?}");
    assert!(stack.app_running());

    stack.app_sh("dd if=/dev/urandom of=/data/files/f2 bs=200k count=1 conv=notrunc 2>/dev/null");
    let wait = settle();
    let second_tree = tree(&stack);
    wait.await;
    let (second, _) = back_up(&backups).await;
    spliced(&second, 1);
    assert!(stack.app_running());
    let helper = format!("label={}={}", steward_labels::HELPER, stack.app.name);
    let left = docker(&["ps", "-aq", "--filter", &helper]);
    assert!(left.is_empty(), "a listing's container left: {left}");

    stack.app_sh("rm /data/files/f3");
    restored_as(&stack, &backups, &second, &second_tree).await;
    stack.destroy_bucket().await;
}

/// Every file and directory under `dir` of `container` (GNU tools, `find` as `find`): content
/// hash, mode, owner, mtime.
fn gnu_tree(container: &str, dir: &str, find: &str) -> String {
    let script = format!(
        "cd {dir} && {find} . -mindepth 1 | sort | while read -r f; do \
         if [ -f \"$f\" ]; then h=$(md5sum < \"$f\" | cut -d' ' -f1); else h=-; fi; \
         echo \"$f $h $(stat -c '%a %u %g %Y' \"$f\")\"; done"
    );
    steward_testkit::docker::docker(&["exec", container, "sh", "-c", &script])
}

/// A container with GNU `find` and `tar` (Debian's) is listed with NUL-separated records and
/// its changed entries read by one `tar`; without `tar`, they are read one by one through
/// the archive API; without `find`, the path cannot be listed and is read whole (no tree:
/// the service runs on the host here, so it has no image of its own to list it in).
/// Every backup restores byte-identical. (busybox runs its applets without their links, so
/// the stand-in app cannot lose them: a Debian container is used.)
#[tokio::test(flavor = "multi_thread")]
async fn a_container_with_gnu_tools_without_tar_or_find_is_spliced_or_read_whole() {
    // The app keeps no path: the Debian container's is the only one.
    let stack = Stack::start("cdc-tools", &["steward.test=no-paths"]).await;
    common::logs();
    let backups = incremental(&stack);
    let name = format!("{}-gnu", stack.scope);
    let scope = format!("steward.scope={}", stack.scope);
    let image = steward_testkit::testbed::require("STEWARD_TEST_POSTGRES_IMAGE");
    let _gnu = steward_testkit::docker::Container::run(
        &name,
        &[
            "--label",
            &scope,
            "--label",
            "steward.backup.paths=/srv",
            "-v",
            "/srv",
            // A PID 1 that exits on SIGTERM (as the test bed's app does): each restore below
            // stops this container, and a bare `sleep` ignores the signal, so every stop
            // waited out the whole grace (5 s) for the kill.
            "--entrypoint",
            "sh",
            &image,
            "-c",
            "trap 'exit 0' TERM INT; sleep infinity & wait",
        ],
    );
    let sh = |script: &str| steward_testkit::docker::docker(&["exec", &name, "sh", "-c", script]);
    sh("mkdir -p /srv/files && for i in $(seq 0 19); do \
        head -c 200000 /dev/urandom > /srv/files/f$i; chown $((1000 + i % 2)):$((100 + i % 5)) /srv/files/f$i; \
        chmod 640 /srv/files/f$i; touch -d \"2024-01-$((1 + i % 28)) 12:00:00.123456789\" /srv/files/f$i; done; \
        ln -s files/f1 /srv/link");
    let lines = |needle: &str| -> Vec<String> {
        let all = common::log_lines(&format!("{name}:/srv"));
        all.into_iter().filter(|l| l.contains(needle)).collect()
    };
    settle().await;
    let (first, _) = back_up(&backups).await;
    let first_tree = gnu_tree(&name, "/srv", "find");

    // GNU find's records with ns times: an unchanged tree is taken whole unread.
    let (same, _) = back_up(&backups).await;
    spliced(&same, 0);

    // Changed entries read by GNU tar in the container.
    sh("head -c 200000 /dev/urandom > /srv/files/f4 && echo new > /srv/files/new.txt && chown 1001:101 /srv/files/new.txt");
    // Settled before the listing, so the next backup does not read them again (the tree,
    // which writes nothing, read meanwhile).
    let wait = settle();
    let by_tar_tree = gnu_tree(&name, "/srv", "find");
    wait.await;
    let (by_tar, _) = back_up(&backups).await;
    // f4 and new.txt read, /srv/files's header made from its listing.
    spliced(&by_tar, 3);

    // Without tar: each through the archive API.
    sh("mv /usr/bin/tar /root/tar && head -c 200000 /dev/urandom > /srv/files/f8 && echo two > /srv/files/two.txt");
    // Settled before the listing, so the next backup does not read them again (the tree
    // read meanwhile).
    let wait = settle();
    let by_api_tree = gnu_tree(&name, "/srv", "find");
    wait.await;
    let (by_api, _) = back_up(&backups).await;
    spliced(&by_api, 3);

    // Without find: read whole, and no tree (the next backup with find splices again).
    sh("mv /usr/bin/find /root/find && head -c 200000 /dev/urandom > /srv/files/f9");
    let (whole, m) = back_up(&backups).await;
    let said = lines("no listing of the path");
    assert!(said.iter().any(|l| l.contains(&whole)), "{:#?}", common::log_lines(&whole));
    assert!(common::log_lines(&whole).iter().all(|l| !l.contains("unread")));
    let c = m.components.iter().find(|c| c.name == format!("{name}:/srv"));
    assert!(c.is_some_and(|c| c.tree.is_none()), "a tree without a listing: {c:?}");
    let whole_tree = gnu_tree(&name, "/srv", "/root/find");

    for (id, expected) in [
        (&whole, &whole_tree),
        (&by_api, &by_api_tree),
        (&by_tar, &by_tar_tree),
        (&first, &first_tree),
    ] {
        let restored = backups.restore(id, RestoreScope::Paths).await;
        restored.unwrap_or_else(|e| panic!("restore {id}: {e} {:?}", e.stderr_tail));
        let now = gnu_tree(&name, "/srv", "/root/find");
        backups.verify(id).await.unwrap_or_else(|e| panic!("verify {id}: {e}"));
        if id == &whole && steward_testkit::on_podman() {
            // Podman's archive read alone (nothing listed the owners and times it loses:
            // docs/podman.md): contents, modes and names are the same, owners root's.
            let loose = |tree: &str| -> Vec<String> {
                tree.lines().map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" ")).collect()
            };
            assert_eq!(loose(&now), loose(expected), "{id}");
            assert!(now.lines().all(|l| l.split(' ').nth(3) == Some("0")), "{now}");
            continue;
        }
        assert_eq!(differ(&now, expected), Vec::<String>::new(), "{id}");
    }
    stack.destroy_bucket().await;
}
