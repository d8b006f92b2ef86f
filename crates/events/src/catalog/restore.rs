//! Restores: `restore.*`.

use serde::{Deserialize, Serialize};

use super::{BackupTarget, Payload};

/// What part of a backup to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreScope {
    /// Database and paths.
    #[default]
    All,
    /// Only the database dumps.
    Db,
    /// Only the archived paths.
    Paths,
}

/// Restore a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequested {
    /// A backup id, or `latest` (newest verified complete backup).
    pub backup_id: String,
    /// What to restore.
    #[serde(default)]
    pub scope: RestoreScope,
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Restore a backup whose manifest is not signed (one taken before manifests were
    /// signed), named by id: the operator's explicit choice (`steward restore ID --unsigned`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unsigned: bool,
    /// Do not take the safety backup of the data the restore replaces (a restore onto an
    /// empty host, where there is nothing to save: `steward restore ID --no-safety-backup`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_safety_backup: bool,
    /// Read the backup from this target only; absent: the primary, falling back to the copy
    /// when the primary has no usable manifest for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BackupTarget>,
    /// Point-in-time recovery (`steward restore ID --to-time T|latest`): `latest` or an RFC
    /// 3339 time; the databases labelled `steward.backup.pitr` come back from the backup's base
    /// backup with the shipped WAL replayed up to it (inclusive), instead of from their dumps.
    /// With backup id `latest` and a time, the newest backup taken before that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_time: Option<String>,
}

impl Payload for RestoreRequested {}

/// A restore completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDone {
    /// The restored backup.
    pub backup_id: String,
    /// Components restored.
    pub restored: Vec<String>,
    /// Wall time.
    pub duration_ms: u64,
    /// The backup of the data this restore replaced, taken before it touched anything:
    /// restoring it undoes the restore. None when it was skipped (asked, or nothing to save).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_backup_id: Option<String>,
    /// Where the backup was read from; absent: the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BackupTarget>,
    /// Why the primary was not used when the restore fell back to the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// What the operator should know of how it was restored: a point-in-time restore to
    /// `latest` that replayed its base's own branch while the bucket holds a newer timeline
    /// the base does not reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Payload for RestoreDone {}

/// A restore failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreFailed {
    /// The backup that was being restored.
    pub backup_id: String,
    /// What went wrong.
    pub reason: String,
    /// Last log lines of the failing step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// The safety backup taken before the restore touched anything (restoring it puts back
    /// what was there), when one was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_backup_id: Option<String>,
    /// Where the backup was read from; absent: the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<BackupTarget>,
}

impl Payload for RestoreFailed {}
