//! What a backup or restore has done so far, kept in the bucket next to the backups, so a
//! service killed mid-flow is recovered by the next one (the request is redelivered).
//!
//! - `journal/flows/<request event id>.json` ([`FlowRecord`]): the backup id the flow works on
//!   (a redelivered backup resumes the same id, a restore of `latest` the same backup), the
//!   events it published and the outcome, written before they are published (a redelivery
//!   publishes the same events again, with the same ids, which the stream drops as
//!   duplicates), and what a restore stopped and began to overwrite.
//! - `journal/uploads/<upload id>.json`: an open multipart upload, written when it is created
//!   and removed when it is completed or aborted; whatever is left when a job starts belongs
//!   to a killed run and is aborted ([`Store::abort_orphaned_uploads`]).
//!
//! `journal` is not a backup id, so listing and retention never see it. One service per
//! bucket prefix (as deployed): a job starting is the only job of that prefix.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use steward_events::Event;
use steward_store::store::{Store, StoreError, JOURNAL_DIR};
use time::OffsetDateTime;

/// Records of concluded flows older than this are removed by [`Journal::forget_concluded`]:
/// no redelivery comes that late.
pub const KEEP_CONCLUDED: time::Duration = time::Duration::days(7);
const MAX_RECORD: usize = 1 << 20;

/// One backup or restore flow, keyed by the event that started it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The backup taken or restored (a restore's resolved id, never `latest`).
    pub backup_id: String,
    /// `backup.started` as published (a scheduled backup's outcome is caused by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// A scheduled backup: no request will be redelivered, the next job concludes it.
    #[serde(default)]
    pub scheduled: bool,
    /// Containers a restore stopped (started again by whoever concludes it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopped: Vec<String>,
    /// Components a restore began to overwrite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub touched: Vec<String>,
    /// The id of a restore's safety backup, recorded before it is taken: a resumed restore
    /// uses it (complete when its manifest exists, otherwise taken again under the same id),
    /// so a restore never has two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_backup_id: Option<String>,
    /// Why a restore took no safety backup (asked not to, or nothing to save): decided once,
    /// before anything was touched, so a resumed attempt does not mistake its own staging for
    /// data to save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety_skipped: Option<String>,
    /// What the operator should know of how a restore restores (`restore.done`'s `notes`),
    /// found by the checks before anything was touched: a resumed attempt past the commit
    /// point does not run them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// A restore's copies beside the live data and how far their swap went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<Swap>,
    /// The terminal event as published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// When the outcome was decided.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub concluded_at: Option<OffsetDateTime>,
    /// Whether `outcome` is known to be published. A scheduled backup's outcome, recorded by
    /// a process killed before it published it, is published by the next start (nobody
    /// redelivers a schedule). Records written before this field count as published.
    #[serde(default = "published_before")]
    pub published: bool,
}

fn published_before() -> bool {
    true
}

/// A restore loads each component beside the live data (a new database, a staging
/// directory inside the path), named by `tag`, then swaps them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    /// Names the restore's databases and directories (`<db>_steward_restore_<tag>`, …).
    pub tag: String,
    /// How far it went.
    pub state: SwapState,
}

/// The stages of a restore's swap, each recorded before it begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwapState {
    /// Copies are being made beside the live data, which is untouched: an interrupted
    /// attempt's copies are discarded.
    Loading,
    /// Every copy was loaded and proven; the swaps are under way: an interrupted attempt is
    /// finished (each swap is idempotent), never undone.
    Swapping,
    /// Every component is swapped in; the previous data waits to be removed.
    Swapped,
}

impl FlowRecord {
    /// An event as kept in a record.
    pub fn keep(event: &Event) -> Option<String> {
        event.encode().ok().and_then(|b| String::from_utf8(b).ok())
    }

    /// An event kept by [`FlowRecord::keep`].
    pub fn event(kept: &str) -> Option<Event> {
        Event::decode(kept.as_bytes()).ok()
    }
}

/// The flow records of one store.
#[derive(Debug, Clone)]
pub struct Journal {
    store: Store,
}

fn flow_name(key: &str) -> String {
    format!("{JOURNAL_DIR}/flows/{key}.json")
}

impl Journal {
    /// The journal in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The record of flow `key`, if one was written.
    pub async fn get(&self, key: &str) -> Result<Option<FlowRecord>, StoreError> {
        let Some(bytes) = self.store.get_small(&flow_name(key), MAX_RECORD).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError::Unreadable {
            key: self.store.key(&flow_name(key)),
            reason: format!("unreadable flow record: {e}"),
        })
    }

    /// Writes the record of flow `key`.
    pub async fn put(&self, key: &str, record: &FlowRecord) -> Result<(), StoreError> {
        let body = serde_json::to_vec(record).unwrap_or_default();
        self.store.put(&flow_name(key), Bytes::from(body)).await
    }

    /// Every flow record, with its key.
    pub async fn all(&self) -> Result<Vec<(String, FlowRecord)>, StoreError> {
        let mut out = vec![];
        for name in self.store.list_objects(&format!("{JOURNAL_DIR}/flows")).await? {
            let Some(key) =
                name.rsplit('/').next().and_then(|n| n.strip_suffix(".json")).map(str::to_owned)
            else {
                continue;
            };
            if let Some(record) = self.get(&key).await? {
                out.push((key, record));
            }
        }
        Ok(out)
    }

    /// Removes records concluded more than [`KEEP_CONCLUDED`] before `now`.
    pub async fn forget_concluded(&self, now: OffsetDateTime) -> Result<(), StoreError> {
        for (key, record) in self.all().await? {
            if record.concluded_at.is_some_and(|at| now - at > KEEP_CONCLUDED) {
                self.store.delete(&flow_name(&key)).await?;
            }
        }
        Ok(())
    }
}

/// A restore's record, written as it goes (a no-op for a restore without one).
#[derive(Debug, Default)]
pub struct RestoreJournal {
    at: Option<(Journal, String)>,
    /// What is recorded so far.
    pub record: FlowRecord,
}

impl RestoreJournal {
    /// A restore that keeps no record (tests, the library API).
    pub fn none() -> Self {
        Self::default()
    }

    /// The restore of flow `key`, resuming `record` if an earlier attempt left one.
    pub fn new(journal: Journal, key: String, record: Option<FlowRecord>) -> Self {
        Self { at: Some((journal, key)), record: record.unwrap_or_default() }
    }

    /// Whether an earlier attempt of this restore was interrupted.
    pub fn resumed(&self) -> bool {
        !self.record.backup_id.is_empty()
    }

    async fn save(&self) -> Result<(), String> {
        let Some((journal, key)) = &self.at else { return Ok(()) };
        journal
            .put(key, &self.record)
            .await
            .map_err(|e| format!("could not record the restore's progress: {e}"))
    }

    /// The backup being restored.
    pub async fn resolved(&mut self, backup_id: &str) -> Result<(), String> {
        if self.record.backup_id == backup_id {
            return Ok(());
        }
        self.record.backup_id = backup_id.to_owned();
        self.save().await
    }

    /// What the restore's outcome will say ([`FlowRecord::notes`]).
    pub async fn noted(&mut self, notes: &[String]) -> Result<(), String> {
        if self.record.notes == notes {
            return Ok(());
        }
        self.record.notes = notes.to_vec();
        self.save().await
    }

    /// The safety backup `id` is about to be taken.
    pub async fn safety(&mut self, id: &str) -> Result<(), String> {
        if self.record.safety_backup_id.as_deref() == Some(id) {
            return Ok(());
        }
        self.record.safety_backup_id = Some(id.to_owned());
        self.save().await
    }

    /// No safety backup is taken, for `why`.
    pub async fn skip_safety(&mut self, why: &str) -> Result<(), String> {
        self.record.safety_skipped = Some(why.to_owned());
        self.save().await
    }

    /// `container` is about to be stopped.
    pub async fn stopping(&mut self, container: &str) -> Result<(), String> {
        if self.record.stopped.iter().any(|c| c == container) {
            return Ok(());
        }
        self.record.stopped.push(container.to_owned());
        self.save().await
    }

    /// The restore's stage `state` (with a new tag for a first [`SwapState::Loading`]) is
    /// about to begin. Returns the tag.
    pub async fn stage(&mut self, state: SwapState) -> Result<String, String> {
        let tag = match &self.record.swap {
            Some(swap) => swap.tag.clone(),
            None => uuid::Uuid::new_v4().simple().to_string().chars().take(8).collect(),
        };
        if self.record.swap.as_ref().is_some_and(|s| s.state == state) {
            return Ok(tag);
        }
        self.record.swap = Some(Swap { tag: tag.clone(), state });
        self.save().await.map(|()| tag)
    }

    /// `component` is about to be overwritten.
    pub async fn touching(&mut self, component: &str) -> Result<(), String> {
        if self.record.touched.iter().any(|c| c == component) {
            return Ok(());
        }
        self.record.touched.push(component.to_owned());
        self.save().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_keep_events() {
        let event = Event::new(
            "steward-backup/test",
            steward_events::BackupStarted { backup_id: "20261123T020007Z-abcdef".into() },
        );
        let record = FlowRecord {
            backup_id: "20261123T020007Z-abcdef".into(),
            started: FlowRecord::keep(&event),
            stopped: vec!["app".into()],
            concluded_at: Some(time::macros::datetime!(2026-11-23 02:00:07 UTC)),
            ..Default::default()
        };
        let bytes = serde_json::to_vec(&record).unwrap_or_default();
        let back: FlowRecord = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(back, record);
        let kept = back.started.as_deref().and_then(FlowRecord::event);
        assert_eq!(kept.map(|e| e.id), Some(event.id));
    }
}
