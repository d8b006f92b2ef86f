//! The stored backups: listing them and resolving `latest` (pruning by the retention policy
//! is the backup service's).
//!
//! The bucket is not trusted ([`crate::signing`]): a backup is usable only when its manifest
//! is signed by a trusted key, was written for its own directory, and its id is not in the
//! future. Anything else is listed with why, and never restored, verified or counted by
//! retention (an unsigned one is restorable only when asked for by id with an explicit
//! override).

use serde::{Deserialize, Serialize};
use steward_events::BackupReason;
use time::OffsetDateTime;

use crate::manifest::{self, Manifest, MANIFEST, MAX_MANIFEST_BYTES, VERIFIED};
use crate::signing::{
    Purpose, Signature, Trust, MAX_SIGNATURE_BYTES, SIGNATURE, VERIFIED_SIGNATURE,
};
use crate::store::{Store, StoreError};

/// How far in the future a backup id may be (clocks of two hosts disagree a little); beyond,
/// it is refused: it would otherwise be `latest` until then and push real ones out of retention.
pub const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// What a stored backup may be used for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "standing", rename_all = "snake_case")]
pub enum Standing {
    /// No manifest: failed or still being written; never used.
    Incomplete,
    /// Signed by a trusted key: restorable, verifiable, counted by retention.
    Usable {
        /// The key that signed it.
        key: String,
    },
    /// A manifest without signature (taken before manifests were signed, or forged):
    /// restorable only by id with the explicit override; never `latest`, never counted.
    Unsigned,
    /// Signed, but no key is trusted where it was listed (the CLI without
    /// `STEWARD_BACKUP_TRUSTED_KEYS`): not checked.
    Unchecked,
    /// Never used, and why (a bad or foreign signature, a future id, a manifest of another
    /// backup, an unreadable manifest).
    Refused {
        /// Why.
        reason: String,
    },
}

/// One stored backup as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Its id.
    pub backup_id: String,
    /// When it was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// Its manifest as read, whatever its standing (shown, used only when usable).
    pub manifest: Option<Manifest>,
    /// What it may be used for.
    #[serde(flatten)]
    pub standing: Standing,
    /// When `verify` last proved it restorable (only a mark signed by a trusted key, for this
    /// backup).
    pub verified: Option<VerifiedMark>,
}

impl Listed {
    /// Its manifest when it is usable.
    pub fn usable(&self) -> Option<&Manifest> {
        match self.standing {
            Standing::Usable { .. } => self.manifest.as_ref(),
            _ => None,
        }
    }
}

/// What a successful verification leaves next to the manifest (signed, in `verified.sig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedMark {
    /// The backup verified (so a mark copied to another backup does not count).
    #[serde(default)]
    pub backup_id: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    /// Whether the database dumps were loaded into a scratch server.
    pub database_restored: bool,
}

/// Every backup under the prefix, oldest first, judged by `trust` at `now`.
pub async fn list(
    store: &Store,
    trust: &Trust,
    now: OffsetDateTime,
) -> Result<Vec<Listed>, StoreError> {
    let mut out = vec![];
    for id in store.list_dirs().await? {
        if manifest::time_of_id(&id).is_none() {
            continue;
        }
        out.push(read(store, trust, &id, now).await?);
    }
    Ok(out)
}

/// Backup `id` as listed (an id in the future is refused without reading it).
pub async fn read(
    store: &Store,
    trust: &Trust,
    id: &str,
    now: OffsetDateTime,
) -> Result<Listed, StoreError> {
    let taken_at = manifest::time_of_id(id).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let refused = |reason: String| Standing::Refused { reason };
    if now.checked_add(CLOCK_SKEW).is_some_and(|limit| taken_at > limit) {
        let standing = refused(format!(
            "dated in the future ({taken_at}; it is {now}): no backup can be taken later than now"
        ));
        return Ok(Listed {
            backup_id: id.to_owned(),
            taken_at,
            manifest: None,
            standing,
            verified: None,
        });
    }
    let Some(bytes) = store.get_small(&format!("{id}/{MANIFEST}"), MAX_MANIFEST_BYTES).await?
    else {
        let standing = Standing::Incomplete;
        return Ok(Listed {
            backup_id: id.to_owned(),
            taken_at,
            manifest: None,
            standing,
            verified: None,
        });
    };
    let signature = store.get_small(&format!("{id}/{SIGNATURE}"), MAX_SIGNATURE_BYTES).await?;
    let parsed = Manifest::parse(&bytes);
    let standing = match (trust.check(Purpose::Manifest, &bytes, signature.as_deref()), &parsed) {
        (Signature::Bad { reason }, _) => refused(reason),
        (_, Err(e)) => refused(e.clone()),
        (_, Ok(m)) if m.backup_id != id => refused(format!(
            "its manifest is backup {}'s, copied here: not this backup",
            m.backup_id
        )),
        (_, Ok(m)) if trust.host().is_some_and(|h| m.host.as_deref().is_some_and(|o| o != h)) => {
            refused(format!(
                "taken on host {}, not on {} (copied into this host's backups?)",
                m.host.as_deref().unwrap_or_default(),
                trust.host().unwrap_or_default()
            ))
        }
        (Signature::Signed { key }, Ok(_)) => Standing::Usable { key },
        (Signature::Unsigned, Ok(_)) => Standing::Unsigned,
        (Signature::Unchecked, Ok(_)) => Standing::Unchecked,
    };
    if let Standing::Refused { reason } = &standing {
        tracing::warn!(backup = %id, reason = %reason, "refusing a backup");
    }
    let verified = match standing {
        Standing::Usable { .. } => verified_mark(store, trust, id).await?,
        _ => None,
    };
    Ok(Listed { backup_id: id.to_owned(), taken_at, manifest: parsed.ok(), standing, verified })
}

/// The verification mark of `id`, when it is signed by a trusted key and names `id`.
async fn verified_mark(
    store: &Store,
    trust: &Trust,
    id: &str,
) -> Result<Option<VerifiedMark>, StoreError> {
    let Some(bytes) = store.get_small(&format!("{id}/{VERIFIED}"), 64 << 10).await? else {
        return Ok(None);
    };
    let signature =
        store.get_small(&format!("{id}/{VERIFIED_SIGNATURE}"), MAX_SIGNATURE_BYTES).await?;
    if !matches!(
        trust.check(Purpose::Verified, &bytes, signature.as_deref()),
        Signature::Signed { .. }
    ) {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<VerifiedMark>(&bytes).ok().filter(|m| m.backup_id == id))
}

/// The manifest of `id`, or of the newest usable backup for `latest` (never a restore's
/// safety backup). An unsigned backup is
/// given only by id and with `allow_unsigned`; a refused one never.
pub async fn resolve(
    store: &Store,
    trust: &Trust,
    id: &str,
    allow_unsigned: bool,
    now: OffsetDateTime,
) -> Result<Manifest, String> {
    if id == "latest" {
        let listed = list(store, trust, now).await.map_err(|e| e.to_string())?;
        return listed
            .iter()
            .rev()
            // A safety backup holds what a restore replaced (after a ransomware attack: the
            // encrypted data): undone only by name, never restored as `latest`.
            .filter_map(|l| l.usable())
            .find(|m| m.reason != BackupReason::PreRestore)
            .cloned()
            .ok_or_else(|| "there is no complete backup signed by a trusted key".to_owned());
    }
    if manifest::time_of_id(id).is_none() || id.contains('/') {
        return Err(format!("{id:?} is not a backup id"));
    }
    let listed = read(store, trust, id, now).await.map_err(|e| e.to_string())?;
    match (listed.standing, listed.manifest) {
        (Standing::Usable { .. }, Some(m)) => Ok(m),
        (Standing::Unsigned, Some(m)) if allow_unsigned => {
            tracing::warn!(backup = %id, "using an unsigned backup, as asked");
            Ok(m)
        }
        (Standing::Unsigned, _) => Err(format!(
            "backup {id} is not signed (taken before manifests were signed, or put in the bucket by someone else): refused; if you know it is yours, restore it with --unsigned"
        )),
        (Standing::Refused { reason }, _) => Err(format!("backup {id} is refused: {reason}")),
        (Standing::Unchecked, _) => Err(format!(
            "backup {id}: no trusted key is configured to check its signature (STEWARD_BACKUP_TRUSTED_KEYS)"
        )),
        (Standing::Incomplete, _) | (_, None) => Err(format!(
            "backup {id} has no manifest: it is incomplete (failed or still being written) or does not exist"
        )),
    }
}
