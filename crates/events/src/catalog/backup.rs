//! Backups: `backup.*`.

use serde::{Deserialize, Serialize};

use super::Payload;

/// Why a backup was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupReason {
    /// Before an update (from the updater).
    PreUpdate,
    /// The backup schedule.
    Schedule,
    /// A human (`steward backup now`).
    Manual,
    /// The safety backup a restore takes of what it is about to replace, so the restore can
    /// be undone (`steward restore <its id>`).
    PreRestore,
    /// A reason this build does not know (written by a newer version): read as such rather
    /// than refusing the whole manifest or event. Never written.
    #[serde(other)]
    Other,
}

/// Which of a backup's two targets a request reads from or an outcome was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupTarget {
    /// The primary bucket (`STEWARD_S3_*`).
    Primary,
    /// The second copy (`STEWARD_BACKUP_COPY_*`).
    Copy,
    /// A target this build does not know (written by a newer version). Never written.
    #[serde(other)]
    Other,
}

/// Back up now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequested {
    /// Why.
    pub reason: BackupReason,
    /// Limit to these containers; every labelled container when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl Payload for BackupRequested {
    fn container(&self) -> Option<&str> {
        match self.containers.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// A backup began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStarted {
    /// The backup's id (also its S3 key prefix).
    pub backup_id: String,
}

impl Payload for BackupStarted {}

/// One stored piece of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupComponent {
    /// Name, e.g. `postgres/gitea` or `gitea:/data`.
    pub name: String,
    /// Stored size in bytes (after compression/encryption).
    pub size_bytes: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
}

/// A complete backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupDone {
    /// The backup's id.
    pub backup_id: String,
    /// S3 key of the manifest (written last).
    pub manifest_key: String,
    /// Total stored bytes.
    pub size_bytes: u64,
    /// Every component.
    pub components: Vec<BackupComponent>,
    /// Wall time.
    pub duration_ms: u64,
}

impl Payload for BackupDone {}

/// A failed backup (no manifest was written, so it is never used).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupFailed {
    /// The backup's id, if one was assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// What went wrong.
    pub reason: String,
    /// Last lines of stderr of the failing step (e.g. `pg_dump`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stderr_tail: Vec<String>,
}

impl Payload for BackupFailed {}

/// A backup proved restorable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVerified {
    /// The backup's id.
    pub backup_id: String,
    /// Components whose checksums matched.
    pub components_checked: u32,
    /// Whether the database dump was restored into a scratch server.
    pub database_restored: bool,
    /// Wall time.
    pub duration_ms: u64,
    /// Where it was read from; absent: the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BackupTarget>,
}

impl Payload for BackupVerified {}

/// Backups removed by retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupPruned {
    /// Removed backup ids.
    pub backup_ids: Vec<String>,
    /// How many backups remain.
    pub kept: u32,
}

impl Payload for BackupPruned {}

/// Verify a backup: download it, check every checksum, load its database dumps into a
/// throw-away server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequested {
    /// A backup id, or `latest` (newest complete backup).
    pub backup_id: String,
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Read it from this target; absent: the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BackupTarget>,
}

impl Payload for VerifyRequested {}

/// A backup failed verification: it must not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyFailed {
    /// The backup that was checked.
    pub backup_id: String,
    /// What did not match or load.
    pub reason: String,
    /// Last output lines of the failing step (e.g. `pg_restore`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Where it was read from; absent: the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BackupTarget>,
}

impl Payload for VerifyFailed {}

/// No verified backup is newer than `STEWARD_BACKUP_MAX_AGE` (a missed, failing or unreadable
/// nightly backup nobody heard of): said once per newest verified backup, and once at all when
/// there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStale {
    /// The newest verified backup, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<String>,
    /// When it was taken.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub newest_at: Option<time::OffsetDateTime>,
    /// The bound, in seconds.
    pub max_age_secs: u64,
}

impl Payload for BackupStale {}

/// End a rebuilt host's backup pause without a restore (`steward backup resume`): the operator
/// keeps the stack as it is, and its next backup may become the latest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupResumeRequested {
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Why, in the asker's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Payload for BackupResumeRequested {}

/// A rebuilt host's backups run again without a restore: the signed record that its pause
/// ended is in the bucket (`journal/restored/<token>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupResumed {
    /// The pause's token (`STEWARD_BACKUP_RESTORE_PENDING`).
    pub token: String,
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Why, in the asker's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The pause had ended already (a restore, or an earlier resume): nothing was written.
    #[serde(default)]
    pub already: bool,
}

impl Payload for BackupResumed {}

/// A backup pause could not be ended (none is set on this host, or its record could not be
/// written): backups stay as they were.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupResumeFailed {
    /// Why.
    pub reason: String,
}

impl Payload for BackupResumeFailed {}

#[cfg(test)]
mod tests {
    use super::BackupReason;

    #[test]
    fn an_unknown_reason_is_read_as_other() {
        let read = |s: &str| serde_json::from_str::<BackupReason>(s).ok();
        assert_eq!(read("\"pre_restore\""), Some(BackupReason::PreRestore));
        assert_eq!(read("\"from_the_future\""), Some(BackupReason::Other));
        assert_eq!(
            serde_json::to_string(&BackupReason::PreRestore).ok().as_deref(),
            Some("\"pre_restore\"")
        );
    }
}
