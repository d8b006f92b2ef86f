//! Backups paused on a rebuilt host until its restore is done: the new host's own first
//! backup (the 02:00 schedule, an update's backup) would hold the empty stack and become the
//! latest before the old data is back.
//!
//! `steward kit import` writes [`ENV_RESTORE_PENDING`] (a token of its own) into the rebuilt
//! project's `.env`; while it is set and the bucket holds no record that a restore ended this
//! token's pause, every backup is refused with a `backup.failed` saying why. A successful
//! restore writes that record (`journal/restored/<token>.json`), so nothing has to be undone
//! by hand: the setting left in `.env` is inert from then on.

use bytes::Bytes;
use steward_store::manifest::Manifest;
use steward_store::store::JOURNAL_DIR;

use crate::backup::{Backups, Failure};

/// The pause's token, set by `steward kit import` in the rebuilt project's `.env`.
pub const ENV_RESTORE_PENDING: &str = "STEWARD_BACKUP_RESTORE_PENDING";

/// A token is part of an object name: letters, digits, `-`, `_`, `.`; at most 64.
pub fn valid_token(token: &str) -> Result<(), &'static str> {
    let ok = !token.is_empty()
        && token.len() <= 64
        && !token.starts_with('.')
        && token.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    match ok {
        true => Ok(()),
        false => {
            Err("letters, digits, '-', '_' and '.' (at most 64), as `steward kit import` writes it")
        }
    }
}

fn record_name(token: &str) -> String {
    format!("{JOURNAL_DIR}/restored/{token}.json")
}

impl Backups {
    /// The reason no backup may be taken now, or `Ok` when none: a pause whose restore has
    /// not been recorded (or cannot be read: then it is not known to be over).
    pub async fn check_not_paused(&self) -> Result<(), Failure> {
        let Some(token) = self.config.restore_pending.as_deref() else { return Ok(()) };
        let why = match self.store.get_small(&record_name(token), 64 << 10).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => String::new(),
            Err(e) => format!(" (cannot tell whether it is done: {e})"),
        };
        Err(Failure::plain(format!(
            "backups are paused until this rebuilt host's restore is done ({ENV_RESTORE_PENDING}={token}, written by steward kit import){why}: a backup now would hold the empty stack and become the latest; restore first (steward backup list, then steward restore ID --yes --no-safety-backup), which ends the pause; to keep the stack as it is instead, remove {ENV_RESTORE_PENDING} from .env and docker-compose up -d backup"
        )))
    }

    /// Ends the pause, after the restore of `manifest` succeeded. Best effort: a failure is
    /// logged, and the next backup is refused as before (the restore can be run again).
    pub(crate) async fn end_pause(&self, manifest: &Manifest) {
        let Some(token) = self.config.restore_pending.as_deref() else { return };
        let record = serde_json::json!({
            "token": token,
            "backup_id": manifest.backup_id,
            "restored_at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        match self.store.put(&record_name(token), Bytes::from(record.to_string())).await {
            Ok(()) => {
                tracing::info!(backup = %manifest.backup_id, token, "restore done: backups are no longer paused")
            }
            Err(e) => {
                tracing::error!(error = %e, token, "restored, but the end of the backup pause could not be recorded: backups stay paused; restore again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_plain_names() {
        assert!(valid_token("kit-20261130T081800Z-1a2b").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(valid_token(bad).is_err(), "{bad:?}");
        }
    }
}
