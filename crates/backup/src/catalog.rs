//! The stored backups as the service keeps them: listing and resolving (`steward_store`'s
//! catalog, shared with the CLI, judged by the configured trusted keys), signed verification
//! marks and pruning by the retention policy.
//!
//! Invariant: retention sees only usable (signed, trusted, not future) backups and incomplete
//! ones; an unsigned or refused backup is neither counted nor deleted, so nothing put in the
//! bucket by someone else can push a real backup out or get one deleted.

use bytes::Bytes;
use steward_events::BackupReason;
use steward_store::catalog::{self, Listed, Standing, VerifiedMark};
use steward_store::manifest::{Kind, Manifest, MANIFEST, VERIFIED};
use steward_store::signing::{Purpose, VERIFIED_SIGNATURE};
use steward_store::store::StoreError;
use time::OffsetDateTime;

use crate::backup::Backups;
use crate::retention::{self, Candidate};

impl Backups {
    /// Every backup under the prefix of the target read ([`Backups::from_copy`]), oldest first.
    pub async fn list(&self) -> Result<Vec<Listed>, StoreError> {
        catalog::list(&self.reading, &self.config.trust, OffsetDateTime::now_utc()).await
    }

    /// The manifest of usable backup `id`, or of the newest usable backup for `latest`.
    pub async fn resolve(&self, id: &str) -> Result<Manifest, String> {
        self.resolve_allowing(id, false).await
    }

    /// [`Backups::resolve`], also giving an unsigned backup named by id when `allow_unsigned`.
    pub async fn resolve_allowing(
        &self,
        id: &str,
        allow_unsigned: bool,
    ) -> Result<Manifest, String> {
        let now = OffsetDateTime::now_utc();
        catalog::resolve(&self.reading, &self.config.trust, id, allow_unsigned, now).await
    }

    /// Records a successful verification, signed.
    pub async fn mark_verified(&self, id: &str, mark: &VerifiedMark) -> Result<(), StoreError> {
        let body = serde_json::to_vec(mark).unwrap_or_default();
        let signature = self.config.signing.sign(Purpose::Verified, &body);
        // Next to the manifest it proves: in the target it was read from.
        self.reading.put(&format!("{id}/{VERIFIED_SIGNATURE}"), Bytes::from(signature)).await?;
        self.reading.put(&format!("{id}/{VERIFIED}"), Bytes::from(body)).await
    }

    /// Deletes what the retention policy does not keep in the target read (the service
    /// prunes the primary, then the copy: each judged on what it holds); returns the pruned ids and how many
    /// usable backups remain.
    pub async fn prune(&self, now: OffsetDateTime) -> Result<(Vec<String>, u32), StoreError> {
        self.prune_also_verified(now, &[]).await
    }

    /// [`Backups::prune`], counting the backups in `verified_elsewhere` as verified too: the
    /// copy is pruned with the primary's verification marks (written where the backup was
    /// verified), so both keep the newest verified backup.
    pub async fn prune_also_verified(
        &self,
        now: OffsetDateTime,
        verified_elsewhere: &[String],
    ) -> Result<(Vec<String>, u32), StoreError> {
        let listed = self.list().await?;
        let candidates: Vec<Candidate> = listed
            .iter()
            .filter_map(|l| {
                let complete = match l.standing {
                    Standing::Usable { .. } => true,
                    Standing::Incomplete => false,
                    // Not ours to count or delete: the operator decides (docs/runbooks.md).
                    Standing::Unsigned | Standing::Unchecked | Standing::Refused { .. } => {
                        return None
                    }
                };
                Some(Candidate {
                    id: l.backup_id.clone(),
                    // The signed manifest's time, to the nanosecond: ids have whole seconds,
                    // and two backups of one second must not tie (the newer could be pruned).
                    taken_at: to_chrono(l.usable().map_or(l.taken_at, |m| m.taken_at)),
                    complete,
                    verified: proven(l) || verified_elsewhere.contains(&l.backup_id),
                    safety: l.usable().is_some_and(|m| m.reason == BackupReason::PreRestore),
                })
            })
            .collect();
        let mut prune = retention::to_prune(self.config.retention, &candidates, to_chrono(now));
        // A base that is the only way to times before a hole in its WAL stays while its day
        // is retained (issue 20); when that cannot be judged, every base stays this time.
        let holding_base = |l: &Listed| {
            l.usable().is_some_and(|m| {
                m.components.iter().any(|c| matches!(c.kind, Kind::PostgresBase { .. }))
            })
        };
        match self.bases_before_holes(&listed, &prune).await {
            Ok(rescued) => {
                for id in &rescued {
                    tracing::info!(backup = %id, "kept past retention: its base is the only way to the times before a hole in the shipped WAL");
                }
                prune.retain(|id| !rescued.contains(id));
            }
            Err(e) => {
                tracing::warn!(error = %e.reason, "cannot tell which base backups precede a hole in the shipped WAL; every one is kept this time");
                prune.retain(|id| !listed.iter().any(|l| &l.backup_id == id && holding_base(l)));
            }
        }
        // S3 Object Lock: a locked backup stays, whole and listed, until its lock ends (a
        // delete would only hide it behind delete markers). The manifest is written last, so
        // its lock ends last.
        let mut locked = vec![];
        for id in &prune {
            match self.reading.locked_until(&format!("{id}/{MANIFEST}")).await? {
                Some(until) if until > now => {
                    tracing::info!(backup = %id, %until, "kept past retention: locked by S3 Object Lock");
                    locked.push(id.clone());
                }
                _ => {}
            }
        }
        prune.retain(|id| !locked.contains(id));
        for id in &prune {
            // The manifest goes first: a half-deleted backup must read as incomplete.
            self.reading.delete(&format!("{id}/{MANIFEST}")).await?;
            self.reading.delete_dir(id).await?;
            tracing::info!(backup = %id, "pruned");
        }
        // Then the chunks no backup left needs (every time: a collection a kill interrupted
        // is finished by the next one).
        match self.collect_chunks().await {
            Ok(c) if c.skipped.is_some() => {
                tracing::info!(reason = ?c.skipped, "chunks not collected this time")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "chunks not collected; the next prune tries again")
            }
        }
        let kept = candidates.iter().filter(|c| c.complete && !prune.contains(&c.id)).count();
        // Then the WAL no retained base backup needs (issue 20); a failure there keeps it.
        let retained: Vec<&steward_store::manifest::Manifest> = listed
            .iter()
            .filter(|l| !prune.contains(&l.backup_id))
            .filter_map(|l| l.usable())
            .collect();
        let judged = judged(&listed, &prune);
        if let Err(e) = self.prune_wal(&retained, judged.as_deref()).await {
            tracing::warn!(error = %e, "could not prune the shipped WAL; it is kept");
        }
        Ok((prune, u32::try_from(kept).unwrap_or(u32::MAX)))
    }
}

/// Whether a verification proved backup `l` restorable, what retention's "the newest verified
/// backup is always kept" means: its dumps loaded into a scratch server (a full verification),
/// or, without a database, its archives checked. The check right after each backup (no dump
/// loaded) marks a backup verified for `backup.stale` and the list, but does not take this
/// place from an older backup whose dumps were loaded.
pub fn proven(l: &Listed) -> bool {
    let has_database = l.usable().is_some_and(|m| {
        m.components
            .iter()
            .any(|c| matches!(c.kind, steward_store::manifest::Kind::Postgres { .. }))
    });
    l.verified.as_ref().is_some_and(|v| v.database_restored || !has_database)
}

/// The manifests of every backup `prune` leaves but incomplete ones (which have none), read
/// whatever their standing: WAL under a name no retained base has is judged only by them
/// (none may hold a base of that name, [`Backups::prune_wal`]). None when one of them could
/// not be read: it may.
fn judged<'a>(listed: &'a [Listed], prune: &[String]) -> Option<Vec<&'a Manifest>> {
    listed
        .iter()
        .filter(|l| !prune.contains(&l.backup_id))
        .filter(|l| !matches!(l.standing, Standing::Incomplete))
        .map(|l| l.manifest.as_ref())
        .collect()
}

fn to_chrono(t: OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_is_judged_only_by_every_manifest_left_read() {
        let at = time::macros::datetime!(2026-11-30 08:00:00 UTC);
        let manifest = |id: &str| crate::backup::testing::manifest(id, at);
        let listed = |id: &str, standing: Standing, read: bool| Listed {
            backup_id: id.into(),
            taken_at: time::macros::datetime!(2026-11-30 08:00:00 UTC),
            manifest: read.then(|| manifest(id)),
            standing,
            verified: None,
        };
        let usable = || Standing::Usable { key: "k".into() };
        let ids = |j: Option<Vec<&Manifest>>| {
            j.map(|m| m.iter().map(|m| m.backup_id.clone()).collect::<Vec<_>>())
        };
        let all = vec![
            listed("a", usable(), true),
            // Read but not usable: its bases still count (restorable by the override).
            listed("b", Standing::Unsigned, true),
            // Incomplete: no manifest to read, nothing to hold.
            listed("c", Standing::Incomplete, false),
        ];
        assert_eq!(ids(judged(&all, &[])), Some(vec!["a".into(), "b".into()]));
        // A pruned backup is not judged by.
        assert_eq!(ids(judged(&all, &["a".into()])), Some(vec!["b".into()]));
        // A manifest that could not be read: nothing is judged (it may hold a base).
        let mut unreadable = all.clone();
        unreadable.push(listed("d", Standing::Refused { reason: "unreadable".into() }, false));
        assert_eq!(ids(judged(&unreadable, &[])), None);
        // ... unless it is pruned.
        assert_eq!(ids(judged(&unreadable, &["d".into()])), Some(vec!["a".into(), "b".into()]));
        assert_eq!(ids(judged(&[], &[])), Some(vec![]));
    }

    #[test]
    fn times_keep_their_fraction_of_a_second() {
        let a = time::macros::datetime!(2026-11-30 05:43:26.100 UTC);
        let b = time::macros::datetime!(2026-11-30 05:43:26.900 UTC);
        assert!(super::to_chrono(a) < super::to_chrono(b));
        assert_eq!(super::to_chrono(b).timestamp_subsec_millis(), 900);
    }
}
