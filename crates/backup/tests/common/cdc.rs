//! Helpers of the incremental (chunked) path backup tests.

use std::collections::BTreeSet;

use steward_backup::config::BackupConfig;
use steward_backup::encryption::Keys;
use steward_backup::Backups;
use steward_engine::Engine;
use steward_events::RestoreScope;
use steward_store::manifest::{Kind, Manifest};

use super::Stack;

/// The stack's backups made incremental (and encrypted with a fresh identity).
pub fn incremental(stack: &Stack) -> Backups {
    incremental_with(stack, age::x25519::Identity::generate())
}

/// [`incremental`], encrypting to and reading with `identity`.
pub fn incremental_with(stack: &Stack, identity: age::x25519::Identity) -> Backups {
    let keys = Keys::new(vec![identity.to_public()], vec![identity]);
    let s3 = super::s3_config(stack.store.bucket(), None);
    Backups::new(
        Engine::from_env(),
        stack.store.clone(),
        BackupConfig { keys, incremental: true, ..super::config(s3, &stack.scope) },
    )
}

pub async fn back_up(backups: &Backups) -> (String, Manifest) {
    let id = steward_store::manifest::new_backup_id(time::OffsetDateTime::now_utc());
    let m = backups
        .take(&id, steward_events::BackupReason::Manual, &[])
        .await
        .unwrap_or_else(|e| panic!("backup failed: {e} {:?}", e.stderr_tail));
    (id, m)
}

/// Every file and directory under /data: content hash, mode, owner, mtime. (Not /data's own
/// mtime: the restore swaps what is inside the mount point, which is not in the archive's
/// control.)
pub fn tree(stack: &Stack) -> String {
    stack.app_sh(
        "cd /data && busybox find . -mindepth 1 | sort | while read -r f; do \
         if [ -f \"$f\" ]; then h=$(md5sum < \"$f\" | cut -d' ' -f1); else h=-; fi; \
         echo \"$f $h $(stat -c '%a %u %g %Y' \"$f\")\"; done",
    )
}

/// `n` files of 200 KiB of random bytes, with varied modes, owners and mtimes.
pub fn fill(stack: &Stack, n: u32) {
    stack.app_sh(&format!(
        "mkdir -p /data/files && i=0; while [ $i -lt {n} ]; do \
         dd if=/dev/urandom of=/data/files/f$i bs=200k count=1 2>/dev/null; \
         chmod $((600 + i % 3 * 40)) /data/files/f$i; chown $((1000 + i % 2)):$((100 + i % 5)) /data/files/f$i; \
         touch -d \"2024-01-$((1 + i % 28)) 12:00:00\" /data/files/f$i; i=$((i+1)); done"
    ));
}

/// The lines of two trees that differ (an empty list when they are the same).
pub fn differ(a: &str, b: &str) -> Vec<String> {
    let (a, b): (BTreeSet<&str>, BTreeSet<&str>) = (a.lines().collect(), b.lines().collect());
    a.symmetric_difference(&b).map(|l| (*l).to_owned()).collect()
}

/// Restores the paths of backup `id` and checks /data is `expected` again.
pub async fn restored_as(stack: &Stack, backups: &Backups, id: &str, expected: &str) {
    let restored = backups.restore(id, RestoreScope::Paths).await;
    restored.unwrap_or_else(|e| panic!("restore {id}: {e} {:?}", e.stderr_tail));
    assert_eq!(differ(&tree(stack), expected), Vec::<String>::new());
}

/// What backup `id` read to splice its path, which it did reading `entries` entries
/// through the engine (from the captured log line).
pub fn spliced(id: &str, entries: usize) -> Splice {
    let all = super::log_lines(id);
    let lines: Vec<&String> = all.iter().filter(|l| l.contains("unread")).collect();
    assert_eq!(lines.len(), 1, "backup {id} did not splice: {all:#?}");
    eprintln!("{}", lines[0]);
    assert!(lines[0].contains(&format!("read_entries={entries} ")), "{}", lines[0]);
    let field = |name: &str| -> u64 {
        lines[0]
            .split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", lines[0]))
    };
    Splice { bytes: field("read_bytes"), old_chunks: field("old_chunks_read") }
}

/// What a spliced backup read.
#[derive(Debug)]
pub struct Splice {
    /// Bytes of old chunks and changed entries.
    pub bytes: u64,
    /// Old chunks.
    pub old_chunks: u64,
}

pub fn path_component(m: &Manifest) -> steward_store::manifest::Component {
    let c = m.components.iter().find(|c| matches!(c.kind, Kind::Path { .. }));
    c.cloned().unwrap_or_else(|| panic!("no path component: {m:?}"))
}

/// The captured log lines of `stack`'s path that mention `needle`.
pub fn path_lines(stack: &Stack, needle: &str) -> Vec<String> {
    let lines = super::log_lines(&format!("{}:/data", stack.app.name));
    lines.into_iter().filter(|l| l.contains(needle)).collect()
}

/// Waits until what was just written has settled: a file changed less than two seconds before
/// a listing starts is read again by the next backup, whatever its listing says. The wait is
/// counted from this call, not from its first poll: what runs before it is awaited (reading a
/// tree, which writes nothing) overlaps it.
pub fn settle() -> tokio::time::Sleep {
    tokio::time::sleep(std::time::Duration::from_millis(2100))
}
