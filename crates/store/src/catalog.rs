//! The stored backups: listing them and resolving `latest` (pruning by the retention policy
//! is the backup service's).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::manifest::{self, Manifest, MANIFEST, MAX_MANIFEST_BYTES, VERIFIED};
use crate::store::{Store, StoreError};

/// One stored backup as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// Its id.
    pub backup_id: String,
    /// When it was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// Its manifest; `None`: incomplete (failed or still being written), never used.
    pub manifest: Option<Manifest>,
    /// When `verify` last proved it restorable.
    pub verified: Option<VerifiedMark>,
}

/// What a successful verification leaves next to the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedMark {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    /// Whether the database dumps were loaded into a scratch server.
    pub database_restored: bool,
}

/// Every backup under the prefix, oldest first.
pub async fn list(store: &Store) -> Result<Vec<Listed>, StoreError> {
    let mut out = vec![];
    for id in store.list_dirs().await? {
        let Some(taken_at) = manifest::time_of_id(&id) else { continue };
        let manifest = match store
            .get_small(&format!("{id}/{MANIFEST}"), MAX_MANIFEST_BYTES)
            .await?
        {
            Some(bytes) => match Manifest::parse(&bytes) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(backup = %id, error = %e, "ignoring a backup with an unreadable manifest");
                    None
                }
            },
            None => None,
        };
        let verified = store
            .get_small(&format!("{id}/{VERIFIED}"), 64 << 10)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok());
        out.push(Listed { backup_id: id, taken_at, manifest, verified });
    }
    Ok(out)
}

/// The manifest of `id`, or of the newest complete backup for `latest`.
pub async fn resolve(store: &Store, id: &str) -> Result<Manifest, String> {
    if id == "latest" {
        let listed = list(store).await.map_err(|e| e.to_string())?;
        return listed
            .into_iter()
            .rev()
            .find_map(|l| l.manifest)
            .ok_or_else(|| "there is no complete backup".to_owned());
    }
    if manifest::time_of_id(id).is_none() || id.contains('/') {
        return Err(format!("{id:?} is not a backup id"));
    }
    match store.get_small(&format!("{id}/{MANIFEST}"), MAX_MANIFEST_BYTES).await {
        Ok(Some(bytes)) => Manifest::parse(&bytes).map_err(|e| format!("backup {id}: {e}")),
        Ok(None) => Err(format!(
            "backup {id} has no manifest: it is incomplete (failed or still being written) or does not exist"
        )),
        Err(e) => Err(e.to_string()),
    }
}
