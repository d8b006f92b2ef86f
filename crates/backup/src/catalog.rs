//! The stored backups as the service keeps them: listing and resolving (`steward_store`'s
//! catalog, shared with the CLI), verification marks and pruning by the retention policy.

use bytes::Bytes;
use steward_store::catalog::{self, Listed, VerifiedMark};
use steward_store::manifest::{Manifest, MANIFEST, VERIFIED};
use steward_store::store::StoreError;
use time::OffsetDateTime;

use crate::backup::Backups;
use crate::retention::{self, Candidate};

impl Backups {
    /// Every backup under the prefix, oldest first.
    pub async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        catalog::list(&self.store).await
    }

    /// The manifest of `id`, or of the newest complete backup for `latest`.
    pub async fn resolve(&self, id: &str) -> Result<Manifest, String> {
        catalog::resolve(&self.store, id).await
    }

    /// Records a successful verification.
    pub async fn mark_verified(&self, id: &str, mark: &VerifiedMark) -> Result<(), StoreError> {
        let body = serde_json::to_vec(mark).unwrap_or_default();
        self.store.put(&format!("{id}/{VERIFIED}"), Bytes::from(body)).await
    }

    /// Deletes what the retention policy does not keep; returns the pruned ids and how many
    /// backups remain.
    pub async fn prune(&self, now: OffsetDateTime) -> Result<(Vec<String>, u32), StoreError> {
        let listed = self.list().await?;
        let candidates: Vec<Candidate> = listed
            .iter()
            .map(|l| Candidate {
                id: l.backup_id.clone(),
                taken_at: to_chrono(l.taken_at),
                complete: l.manifest.is_some(),
                verified: l.verified.is_some(),
            })
            .collect();
        let prune = retention::to_prune(self.config.retention, &candidates, to_chrono(now));
        for id in &prune {
            // The manifest goes first: a half-deleted backup must read as incomplete.
            self.store.delete(&format!("{id}/{MANIFEST}")).await?;
            self.store.delete_dir(id).await?;
            tracing::info!(backup = %id, "pruned");
        }
        let kept = listed.len().saturating_sub(prune.len()) as u32;
        Ok((prune, kept))
    }
}

fn to_chrono(t: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).unwrap_or_default()
}
