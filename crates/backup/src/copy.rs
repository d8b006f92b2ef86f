//! The second copy (3-2-1): every object of every usable backup in the primary is copied to
//! the copy's bucket, manifest last, each component checked against the signed manifest's
//! SHA-256 as it is written.
//!
//! Invariants: the copy is written only from backups the primary holds as usable (signed by
//! a trusted key), never from what the copy holds; a copied backup gets its manifest only
//! when every component arrived with the manifest's checksum, so a half-copied backup reads
//! as incomplete there, never as usable. A copy that fails does not fail the backup (the
//! primary has it): the next job copies what is missing ([`Backups::sync_copy`]).

use bytes::Bytes;
use sha2::Digest as _;
use steward_store::catalog::{self, Standing};
use steward_store::manifest::{Manifest, MANIFEST, MAX_MANIFEST_BYTES};
use steward_store::signing::{MAX_SIGNATURE_BYTES, SIGNATURE};
use steward_store::store::Store;
use time::OffsetDateTime;

use crate::backup::Backups;

impl Backups {
    /// Copies every usable backup of the primary that the copy does not hold as usable;
    /// returns the ids copied. `Ok(vec![])` without a copy. Stops at the first failure (the
    /// next job goes on from there).
    pub async fn sync_copy(&self) -> Result<Vec<String>, String> {
        let Some(copy) = &self.copy else { return Ok(vec![]) };
        let now = OffsetDateTime::now_utc();
        let trust = &self.config.trust;
        let primary = catalog::list(&self.store, trust, now)
            .await
            .map_err(|e| format!("listing the primary: {e}"))?;
        let held = catalog::list(copy, trust, now)
            .await
            .map_err(|e| format!("listing the copy (bucket {}): {e}", copy.bucket()))?;
        let mut copied = vec![];
        for listed in &primary {
            let Some(manifest) = listed.usable() else { continue };
            let there = held.iter().find(|h| h.backup_id == listed.backup_id);
            if there.is_some_and(|h| matches!(h.standing, Standing::Usable { .. })) {
                continue;
            }
            if there.is_some_and(|h| matches!(h.standing, Standing::Refused { .. })) {
                tracing::warn!(backup = %listed.backup_id, "the copy's manifest of this backup is refused: copying it again from the primary");
            }
            self.copy_one(copy, manifest).await?;
            copied.push(listed.backup_id.clone());
        }
        Ok(copied)
    }

    /// Copies backup `m` from the primary to `copy`: components (checked), then the
    /// signature, then the manifest, exactly as the primary holds them (the same signed bytes).
    async fn copy_one(&self, copy: &Store, m: &Manifest) -> Result<(), String> {
        let id = &m.backup_id;
        let on_copy = |e: &dyn std::fmt::Display| {
            format!("copying backup {id} to bucket {}: {e}", copy.bucket())
        };
        // A manifest there (refused, or of a killed copy) goes first: until the new one is
        // written, the backup must read as incomplete in the copy.
        copy.delete(&format!("{id}/{MANIFEST}")).await.map_err(|e| on_copy(&e))?;
        for c in &m.components {
            // A chunked component's chunks first, then its tree and index (the object below).
            self.copy_chunks(copy, c).await.map_err(|e| on_copy(&e))?;
            if let Some(tree) = &c.tree {
                // Only the next backup reads a tree (a restore never does): one that cannot
                // be copied costs the copy's backups a whole read of the path, not the copy.
                if let Err(e) = copy_tree(&self.store, copy, tree).await {
                    tracing::warn!(backup = %id, object = %tree.object, error = %e, "the tree was not copied");
                }
            }
            let body = self
                .store
                .get(&c.object)
                .await
                .map_err(|e| on_copy(&e))?
                .ok_or_else(|| on_copy(&format!("{} is gone from the primary", c.object)))?;
            let stored = copy.upload(&c.object, body).await.map_err(|e| on_copy(&e))?;
            if stored.sha256 != c.stored_sha256 || stored.size != c.stored_size {
                // Not left half-right: the copy of this backup stays without manifest.
                let _ = copy.delete(&c.object).await;
                return Err(on_copy(&format!(
                    "{} arrived with SHA-256 {} ({} bytes), the manifest says {} ({} bytes)",
                    c.name, stored.sha256, stored.size, c.stored_sha256, c.stored_size
                )));
            }
            steward_failpoints::failpoint!("copy:component");
        }
        let small = |name: String, limit: usize| async move {
            self.store
                .get_small(&name, limit)
                .await
                .map_err(|e| on_copy(&e))?
                .ok_or_else(|| on_copy(&format!("{name} is gone from the primary")))
        };
        let signature = small(format!("{id}/{SIGNATURE}"), MAX_SIGNATURE_BYTES).await?;
        let manifest = small(format!("{id}/{MANIFEST}"), MAX_MANIFEST_BYTES).await?;
        copy.put(&format!("{id}/{SIGNATURE}"), Bytes::from(signature))
            .await
            .map_err(|e| on_copy(&e))?;
        steward_failpoints::failpoint!("copy:signed");
        copy.put(&format!("{id}/{MANIFEST}"), Bytes::from(manifest))
            .await
            .map_err(|e| on_copy(&e))?;
        tracing::info!(backup = %id, bucket = copy.bucket(), "copied to the second copy");
        Ok(())
    }
}

/// Copies `tree` from `from` to `to`, checked against the signed manifest's reference.
async fn copy_tree(
    from: &Store,
    to: &Store,
    tree: &steward_store::manifest::TreeRef,
) -> Result<(), String> {
    let limit = usize::try_from(tree.stored_size).map_err(|_| "too large".to_owned())?;
    let body = from
        .get_small(&tree.object, limit)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("it is gone from the primary")?;
    if hex::encode(sha2::Sha256::digest(&body)) != tree.stored_sha256 {
        return Err("it does not match the manifest".into());
    }
    to.put(&tree.object, Bytes::from(body)).await.map_err(|e| e.to_string())
}
