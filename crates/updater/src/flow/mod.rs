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
//! the successor, which concludes), and [`resume`] for what a restarted updater finds.

pub mod apply;
pub mod approval;
pub mod backup;
pub mod handover;
pub mod health_gate;
pub mod resume;
pub mod rollback;
pub mod start;

use steward_bus::{Bus, BusError, StateStore, Versioned};
use steward_engine::Engine;
use steward_events::records::{UpdateRecord, UPDATE_BUCKET};
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
    /// Settings.
    pub cfg: UpdaterConfig,
    /// CloudEvents source of what the updater publishes.
    pub source: String,
    /// The container this updater runs in, if any: updating it is a handover.
    pub own_id: Option<String>,
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
        let own_id = handover::own_container_id();
        Ok(Self { bus, engine, records, cfg, source, own_id })
    }

    /// Publishes `data` as the next event of the record's flow and remembers it as the cause
    /// of the one after.
    pub async fn publish(
        &self,
        record: &mut UpdateRecord,
        data: impl Into<EventData>,
    ) -> Result<Event, BusError> {
        let mut event = Event::new(&self.source, data).with_correlation(record.correlation_id);
        event.causation_id = Some(record.last_event_id);
        self.bus.publish(&event).await?;
        record.last_event_id = event.id;
        Ok(event)
    }

    /// Ends an update: publishes its terminal event and records the terminal step (and why).
    pub async fn conclude(
        &self,
        v: Versioned<UpdateRecord>,
        step: steward_events::records::UpdateStep,
        reason: Option<String>,
        data: impl Into<EventData>,
    ) -> Result<(), BusError> {
        debug_assert!(step.is_terminal());
        let mut record = v.value;
        self.publish(&mut record, data).await?;
        record.step = step;
        record.reason = reason;
        self.save(record, v.revision).await?;
        Ok(())
    }

    /// Writes `record` over the version read (compare-and-set); returns the new version.
    pub async fn save(
        &self,
        record: UpdateRecord,
        revision: u64,
    ) -> Result<Versioned<UpdateRecord>, BusError> {
        let key = record.container.clone();
        let revision = self.records.update(&key, &record, revision).await?;
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
