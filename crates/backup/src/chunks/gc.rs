//! Chunk garbage collection, after retention: mark every chunk a usable backup's index names,
//! sweep the rest.
//!
//! Invariants: nothing is deleted unless every backup in the bucket is either usable (its
//! index read and matched against its signed manifest) or unsigned (an unsigned manifest
//! never protects, and no chunked backup is unsigned); a backup without a manifest younger
//! than [`INCOMPLETE_GRACE`] (one being written: its chunks are in no index yet) or a refused
//! one (perhaps signed by a key no longer trusted) stops the sweep, and so does a backup that
//! appears while the chunks are listed. The mark is complete before the first delete, and a
//! delete only ever removes an unmarked chunk, so a kill at any point (or twice) leaves every
//! chunk a usable backup needs: the next collection finishes the sweep. Backups and
//! collections of one bucket run one at a time in the backup service (its jobs are serial).

use std::collections::HashSet;

use steward_store::catalog::{self, Standing};
use steward_store::chunks::{sha256_of_object, CHUNKS_DIR};
use time::OffsetDateTime;

use super::{chunked_components, read_index};
use crate::backup::Backups;
use crate::retention::INCOMPLETE_GRACE;

/// What a collection did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Collected {
    /// Chunks some usable backup needs.
    pub kept: usize,
    /// Chunks deleted.
    pub deleted: usize,
    /// Why nothing was deleted, when nothing could safely be.
    pub skipped: Option<String>,
}

impl Backups {
    /// Deletes the chunks of the bucket read (the primary, or the copy) that no usable backup
    /// needs. `Err` when the bucket cannot be read; [`Collected::skipped`] when a backup whose
    /// chunks cannot be known may need them.
    pub async fn collect_chunks(&self) -> Result<Collected, String> {
        let store = &self.reading;
        let now = OffsetDateTime::now_utc();
        let grace = time::Duration::seconds(INCOMPLETE_GRACE.num_seconds());
        let listed = catalog::list(store, &self.config.trust, now)
            .await
            .map_err(|e| format!("listing backups: {e}"))?;
        let skip = |why: String| Ok(Collected { skipped: Some(why), ..Default::default() });
        let mut marked = HashSet::new();
        for l in &listed {
            match &l.standing {
                Standing::Usable { .. } => {}
                Standing::Unsigned => continue,
                Standing::Incomplete if now - l.taken_at > grace => continue,
                Standing::Incomplete => {
                    return skip(format!("backup {} has no manifest yet", l.backup_id))
                }
                Standing::Unchecked | Standing::Refused { .. } => {
                    return skip(format!(
                        "backup {}'s manifest is not trusted here: its chunks are kept until the operator decides",
                        l.backup_id
                    ))
                }
            }
            let Some(m) = l.usable() else { continue };
            for c in chunked_components(m) {
                let (index, _) = read_index(store, c, None, None)
                    .await
                    .map_err(|e| format!("backup {}: {e}", m.backup_id))?;
                marked.extend(index.entries.into_iter().map(|e| e.stored_sha256));
            }
        }
        steward_failpoints::failpoint!("gc:marked");
        let objects =
            store.list_objects(CHUNKS_DIR).await.map_err(|e| format!("listing chunks: {e}"))?;
        // A backup begun since the listing may store chunks no index names yet.
        let before: HashSet<&str> = listed.iter().map(|l| l.backup_id.as_str()).collect();
        let dirs = store.list_dirs().await.map_err(|e| format!("listing backups: {e}"))?;
        if let Some(new) = dirs.iter().find(|d| {
            steward_store::manifest::time_of_id(d).is_some() && !before.contains(d.as_str())
        }) {
            return skip(format!("backup {new} began during the collection"));
        }
        let mut out = Collected { kept: 0, deleted: 0, skipped: None };
        for name in &objects {
            match sha256_of_object(name) {
                Some(sha) if marked.contains(&sha) => out.kept += 1,
                Some(_) => {
                    store.delete(name).await.map_err(|e| format!("deleting {name}: {e}"))?;
                    out.deleted += 1;
                    steward_failpoints::failpoint!("gc:deleted");
                }
                // Not a chunk Steward wrote: not Steward's to delete.
                None => tracing::warn!(object = %name, "not a chunk; left alone"),
            }
        }
        tracing::info!(
            kept = out.kept,
            deleted = out.deleted,
            bucket = store.bucket(),
            "chunks collected"
        );
        Ok(out)
    }
}
