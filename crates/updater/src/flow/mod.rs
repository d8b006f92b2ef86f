//! The update state machine. Each update is an [`UpdateRecord`] in the `UPDATES` KV bucket,
//! keyed by container (so never two updates of one container at once), advanced by events and
//! written only with compare-and-set:
//!
//! ```text
//! image.updated ─ notify ─> (nothing)
//!   ├─ manual ──> Pending ─ update.approved ─┐      update.rejected ─> Rejected
//!   └─ automatic ─────────────────────────────┴─> (Deferred: min_age, window) ─> update.started
//!        ├─ backup label false ───────────────────────────────┐
//!        └─ backup.requested ─> AwaitingBackup ─ backup.done ─┴─> Swapping (pull, swap)
//!                 └─ backup.failed / timeout ─> Failed           └─> Gating ─ healthy ─> Succeeded
//!                                                                         └─ not ────> RolledBack
//! ```
//! One file per step: [`start`], [`approval`], [`backup`], [`apply`] (pull and swap),
//! [`health_gate`], [`rollback`], [`handover`] (the updater's own container: `HandingOver` to
//! the successor, which concludes), [`resume`] for what a restarted updater finds, and
//! [`queue`] for a newer image that arrives while its container's update is under way.
//!
//! `steward rollback` ([`revert`]) claims the container with a record of kind `rollback`
//! (the previous digest as `to_digest`) and joins the same machine at `Deferred`: backup,
//! swap, gate and restore are the update's own. [`prune`] removes old images of managed
//! repositories beyond `STEWARD_KEEP_IMAGES` after a success and at start.

pub mod apply;
pub mod approval;
pub mod backup;
pub mod handover;
pub mod health_gate;
pub mod prune;
pub mod queue;
pub mod resume;
pub mod revert;
pub mod rollback;
pub mod start;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use steward_bus::{Bus, BusError, StateStore, Versioned};
use steward_engine::Engine;
use steward_events::records::{QueuedNews, UpdateRecord, UPDATE_BUCKET, UPDATE_QUEUE_BUCKET};
use steward_events::{Event, EventData};

use crate::config::UpdaterConfig;

/// Everything a step needs.
#[derive(Clone)]
pub struct Flow {
    /// The bus.
    pub bus: Bus,
    /// Docker.
    pub engine: Engine,
    /// Update records.
    pub records: StateStore<UpdateRecord>,
    /// Newer images waiting for their container's update in progress to end.
    pub queue: StateStore<QueuedNews>,
    /// Settings.
    pub cfg: UpdaterConfig,
    /// CloudEvents source of what the updater publishes.
    pub source: String,
    /// The container this updater runs in, if any: updating it is a handover.
    pub own_id: Option<String>,
    /// Containers a task of this process is working on right now. A record that is not
    /// finished and not held here was left by a flow that died or gave up: whoever finds it
    /// (the start, a redelivery, the sweep) drives it on ([`Flow::drive`]).
    held: Arc<Mutex<HashSet<String>>>,
}

/// This process works on a container until it is dropped.
#[derive(Debug)]
pub struct Hold {
    held: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
    }
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Why a step could not run; transient ones are retried by redelivery.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Bus or KV trouble: try again.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Docker unreachable: try again.
    #[error(transparent)]
    Engine(#[from] steward_engine::EngineError),
    /// Another task of this process works on the container right now: try again shortly.
    #[error("an update step of {0} is in hand; try again")]
    Busy(String),
}

impl Flow {
    /// Opens the records bucket.
    pub async fn open(
        bus: Bus,
        engine: Engine,
        cfg: UpdaterConfig,
        source: String,
    ) -> Result<Self, BusError> {
        let records = StateStore::open(&bus, UPDATE_BUCKET).await?;
        let queue = StateStore::open(&bus, UPDATE_QUEUE_BUCKET).await?;
        let own_id = handover::own_container_id();
        Ok(Self { bus, engine, records, queue, cfg, source, own_id, held: Default::default() })
    }

    /// Claims container `name` for a task of this process; `None` while another one works
    /// on it.
    pub fn hold(&self, name: &str) -> Option<Hold> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(name.to_owned()).then(|| Hold { held: self.held.clone(), name: name.into() })
    }

    /// Adds `data` to the record's outbox as the next event of its flow (the cause of the
    /// one after). It is published by [`Flow::announce`] once the record is saved.
    pub fn stage(&self, record: &mut UpdateRecord, data: impl Into<EventData>) {
        let mut event = Event::new(&self.source, data).with_correlation(record.correlation_id);
        event.causation_id = Some(record.last_event_id);
        record.last_event_id = event.id;
        record.outbox.push(event);
    }

    /// Saves the record with its outbox, then publishes the outbox and clears it. The saved
    /// record is the decision; a crash before the publish leaves the events in the outbox
    /// for whoever finds the record next.
    pub async fn announce(
        &self,
        record: UpdateRecord,
        revision: u64,
    ) -> Result<Versioned<UpdateRecord>, BusError> {
        let v = self.save(record, revision).await?;
        self.flush(v).await
    }

    /// Publishes what the record's outbox holds (again, with the same ids) and clears it.
    pub async fn flush(
        &self,
        v: Versioned<UpdateRecord>,
    ) -> Result<Versioned<UpdateRecord>, BusError> {
        if v.value.outbox.is_empty() {
            return Ok(v);
        }
        for event in &v.value.outbox {
            self.bus.publish(event).await?;
            steward_failpoints::failpoint!(&format!("published:{}", event.event_type()));
        }
        let mut record = v.value;
        record.outbox.clear();
        self.save(record, v.revision).await
    }

    /// Ends an update: records the terminal step (and why), then announces its terminal
    /// event.
    pub async fn conclude(
        &self,
        v: Versioned<UpdateRecord>,
        step: steward_events::records::UpdateStep,
        reason: Option<String>,
        data: impl Into<EventData>,
    ) -> Result<Versioned<UpdateRecord>, BusError> {
        debug_assert!(step.is_terminal());
        let mut record = v.value;
        self.stage(&mut record, data);
        record.step = step;
        record.reason = reason;
        self.announce(record, v.revision).await
    }

    /// Writes `record` over the version read (compare-and-set); returns the new version.
    pub async fn save(
        &self,
        record: UpdateRecord,
        revision: u64,
    ) -> Result<Versioned<UpdateRecord>, BusError> {
        let key = record.container.clone();
        let revision = self.records.update(&key, &record, revision).await?;
        steward_failpoints::failpoint!("saved", record.step);
        Ok(Versioned { value: record, revision })
    }

    /// The record of an update by id (approvals name only the id).
    pub async fn by_update_id(
        &self,
        update_id: uuid::Uuid,
    ) -> Result<Option<Versioned<UpdateRecord>>, BusError> {
        for key in self.records.keys().await? {
            if let Some(v) = self.records.get(&key).await? {
                if v.value.update_id == update_id {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }
}
