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
//! [`start_first`] is the swap of `steward.update.strategy=start-first` behind HAProxy.
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
pub mod start_first;

pub use steward_bus::Hold;
use steward_bus::{Bus, BusError, RecordStore, StateStore, Versioned};
use steward_engine::Engine;
use steward_events::records::{QueuedNews, UpdateRecord, UPDATE_BUCKET, UPDATE_QUEUE_BUCKET};

use crate::config::UpdaterConfig;

/// Everything a step needs.
#[derive(Clone)]
pub struct Flow {
    /// The bus.
    pub bus: Bus,
    /// Docker.
    pub engine: Engine,
    /// Update records, with the outbox machinery (stage, save, announce, flush, conclude)
    /// shared with the deployer.
    pub records: RecordStore<UpdateRecord>,
    /// Newer images waiting for their container's update in progress to end.
    pub queue: StateStore<QueuedNews>,
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
        let records = RecordStore::open(&bus, UPDATE_BUCKET, source.clone()).await?;
        let queue = StateStore::open(&bus, UPDATE_QUEUE_BUCKET).await?;
        let own_id = steward_engine::own_container_id();
        Ok(Self { bus, engine, records, queue, cfg, source, own_id })
    }

    /// The host this updater looks after, recorded in each update it claims.
    pub(crate) fn host(&self) -> Option<String> {
        self.bus.host().map(str::to_owned)
    }

    /// The record of an update by id (approvals name only the id).
    pub async fn by_update_id(
        &self,
        update_id: uuid::Uuid,
    ) -> Result<Option<Versioned<UpdateRecord>>, BusError> {
        self.records.find(|r| r.update_id == update_id).await
    }
}
