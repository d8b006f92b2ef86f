//! Backups paused on a rebuilt host until its restore is done: the new host's own first
//! backup (the 02:00 schedule, an update's backup) would hold the empty stack and become the
//! latest before the old data is back.
//!
//! `steward kit import` writes [`ENV_RESTORE_PENDING`] (a token of its own) into the rebuilt
//! project's `.env`; while it is set and the bucket holds no record that a restore ended this
//! token's pause, every backup is refused with a `backup.failed` saying why. A successful
//! restore writes that record (`journal/restored/<token>.json`, signed with the manifests' key
//! beside it as `<token>.sig`), so nothing has to be undone by hand: the setting left in `.env`
//! is inert from then on. A record that is unsigned, badly signed or names another token ends
//! nothing: whoever can write to the bucket cannot resume the backups of an empty stack.

use bytes::Bytes;
use steward_store::manifest::Manifest;
use steward_store::signing::{Purpose, Signature, MAX_SIGNATURE_BYTES};
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

fn signature_name(token: &str) -> String {
    format!("{JOURNAL_DIR}/restored/{token}.sig")
}

impl Backups {
    /// The reason no backup may be taken now, or `Ok` when none: a pause whose restore has
    /// not been recorded (or cannot be read: then it is not known to be over).
    pub async fn check_not_paused(&self) -> Result<(), Failure> {
        let Some(token) = self.config.restore_pending.as_deref() else { return Ok(()) };
        let why = match self.pause_record(token).await {
            Ok(Some(Ok(()))) => return Ok(()),
            Ok(Some(Err(refused))) => format!(" (the record that it ended is refused: {refused})"),
            Ok(None) => String::new(),
            Err(e) => format!(" (cannot tell whether it is done: {e})"),
        };
        Err(Failure::plain(format!(
            "backups are paused until this rebuilt host's restore is done ({ENV_RESTORE_PENDING}={token}, written by steward kit import){why}: a backup now would hold the empty stack and become the latest; restore first (steward backup list, then steward restore ID --yes --no-safety-backup), which ends the pause; to keep the stack as it is instead, remove {ENV_RESTORE_PENDING} from .env and docker-compose up -d backup"
        )))
    }

    /// The record that `token`'s pause ended: `None` when there is none, `Some(Err)` when it
    /// does not hold (unsigned, badly signed, another token's).
    async fn pause_record(
        &self,
        token: &str,
    ) -> Result<Option<Result<(), String>>, steward_store::store::StoreError> {
        let Some(body) = self.store.get_small(&record_name(token), 64 << 10).await? else {
            return Ok(None);
        };
        let signature = self.store.get_small(&signature_name(token), MAX_SIGNATURE_BYTES).await?;
        let held = match self.config.trust.check(Purpose::PauseEnded, &body, signature.as_deref()) {
            Signature::Signed { .. } => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .filter(|r| r["token"].as_str() == Some(token))
                .map(|_| ())
                .ok_or_else(|| "it names another pause".to_owned()),
            Signature::Unsigned => Err("it is not signed".into()),
            Signature::Unchecked => Err("no key is trusted to check it".into()),
            Signature::Bad { reason } => Err(reason),
        };
        Ok(Some(held))
    }

    /// Ends the pause, after the restore of `manifest` succeeded. Best effort: a failure is
    /// logged, and the next backup is refused as before (the restore can be run again).
    pub(crate) async fn end_pause(&self, manifest: &Manifest) {
        let Some(token) = self.config.restore_pending.as_deref() else { return };
        let record = serde_json::json!({
            "token": token,
            "backup_id": manifest.backup_id,
            "restored_at": now(),
        });
        match self.write_pause_record(token, &record).await {
            Ok(()) => {
                tracing::info!(backup = %manifest.backup_id, token, "restore done: backups are no longer paused")
            }
            Err(e) => {
                tracing::error!(error = %e, token, "restored, but the end of the backup pause could not be recorded: backups stay paused; restore again")
            }
        }
    }

    /// Ends the pause without a restore (`steward backup resume`): the operator keeps the
    /// stack as it is. The same signed record as a restore's, naming who asked and why
    /// instead of a backup. `Ok(true)` when the pause had ended already (nothing written).
    pub async fn resume(&self, by: Option<&str>, reason: Option<&str>) -> Result<bool, Failure> {
        let Some(token) = self.config.restore_pending.as_deref() else {
            return Err(Failure::plain(format!(
                "backups are not paused on this host (no {ENV_RESTORE_PENDING}): nothing to resume"
            )));
        };
        match self.pause_record(token).await {
            Ok(Some(Ok(()))) => return Ok(true),
            // A refused record (unsigned, another key's) is replaced by a genuine one.
            Ok(Some(Err(_)) | None) => {}
            Err(e) => return Err(Failure::plain(format!("cannot read the pause's record: {e}"))),
        }
        let record = serde_json::json!({
            "token": token,
            "resumed_by": by,
            "reason": reason,
            "resumed_at": now(),
        });
        self.write_pause_record(token, &record).await.map_err(|e| {
            Failure::plain(format!(
                "the end of the pause could not be recorded, backups stay paused: {e}"
            ))
        })?;
        tracing::warn!(token, by, reason, "backups resumed without a restore");
        Ok(false)
    }

    /// Writes `record`, signed, as the end of `token`'s pause.
    async fn write_pause_record(
        &self,
        token: &str,
        record: &serde_json::Value,
    ) -> Result<(), steward_store::store::StoreError> {
        let body = record.to_string().into_bytes();
        let signature = self.config.signing.sign(Purpose::PauseEnded, &body);
        // The signature first: a record without one would be refused.
        self.store.put(&signature_name(token), Bytes::from(signature)).await?;
        self.store.put(&record_name(token), Bytes::from(body)).await
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
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
