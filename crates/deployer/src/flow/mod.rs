//! The deployment state machine. Each environment has one [`DeployRecord`] in the `DEPLOYS`
//! KV bucket, written only by compare-and-set; the record is the decision and carries the
//! events it decided in its outbox (written, then published with their own ids, then
//! cleared), so a kill between the two repeats the publish and never loses it.
//!
//! ```text
//! deploy.requested ─> Preparing (fetch, validate, diff, images)
//!   ├─ invalid ───────────────────────────────> Failed
//!   ├─ manual ──> Pending ─ deploy.approved ─┐
//!   └─ automatic ────────────────────────────┴─> deploy.started
//!        ├─ backup off ───────────────────────────────────┐
//!        └─ backup.requested ─> AwaitingBackup ─ done ────┴─> Applying (up -d --no-deps)
//!                 └─ failed / timeout ─> Failed                └─> Gating ─ healthy ─> Succeeded
//!                                                                        └─ not ─> RollingBack ─> RolledBack
//! ```
//! One file per step: [`start`] (request, claim, prepare, approval), [`backup`], [`apply`]
//! (apply, health gate, rollback), [`resume`] (what a restart, a redelivery or the sweep
//! finds).

pub mod apply;
pub mod backup;
pub mod resume;
pub mod start;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use steward_bus::{Bus, BusError, StateStore, Versioned};
use steward_engine::Engine;
use steward_events::records::{DeployRecord, DeployStep, DEPLOY_BUCKET};
use steward_events::{Event, EventData};

use crate::command::CommandError;
use crate::compose::Compose;
use crate::config::DeployerConfig;
use crate::git::Git;

/// Everything a step needs.
#[derive(Clone)]
pub struct Flow {
    /// The bus.
    pub bus: Bus,
    /// Docker (container lookups and the health probe; changes go through `docker-compose`).
    pub engine: Engine,
    /// Deployment records, by environment.
    pub records: StateStore<DeployRecord>,
    /// Settings.
    pub cfg: Arc<DeployerConfig>,
    /// Git.
    pub git: Git,
    /// CloudEvents source of what the deployer publishes.
    pub source: String,
    /// Environments a task of this process works on now; a record not finished and not held
    /// was left by a task that died or gave up, and is driven on by whoever finds it.
    held: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// This process works on an environment until it is dropped.
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

/// Why a step could not run; each is retried (redelivery or the sweep).
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// Bus or KV trouble.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Docker unreachable.
    #[error(transparent)]
    Engine(#[from] steward_engine::EngineError),
    /// A command failed where the flow cannot conclude (a rollback's): tried again.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Another task of this process works on the environment right now.
    #[error("a deployment step of {0} is in hand; try again")]
    Busy(String),
}

impl Flow {
    /// Opens the records bucket.
    pub async fn open(
        bus: Bus,
        engine: Engine,
        cfg: DeployerConfig,
        source: String,
    ) -> Result<Self, BusError> {
        let records = StateStore::open(&bus, DEPLOY_BUCKET).await?;
        let git = Git { url: cfg.repository.clone(), timeout: cfg.command_timeout };
        Ok(Self { bus, engine, records, cfg: Arc::new(cfg), git, source, held: Default::default() })
    }

    /// Claims environment `name` for a task of this process; `None` while another holds it.
    pub fn hold(&self, name: &str) -> Option<Hold> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(name.to_owned()).then(|| Hold { held: self.held.clone(), name: name.into() })
    }

    /// The compose project of an environment.
    pub fn compose(&self, environment: &str) -> Compose {
        Compose {
            project: self.cfg.project_of(environment),
            dir: self.cfg.checkout_of(environment),
            file: self.cfg.compose_file.clone(),
            timeout: self.cfg.command_timeout,
        }
    }

    /// Adds `data` to the record's outbox as the next event of its flow.
    pub fn stage(&self, record: &mut DeployRecord, data: impl Into<EventData>) {
        let mut event = Event::new(&self.source, data).with_correlation(record.correlation_id);
        event.causation_id = Some(record.last_event_id);
        record.last_event_id = event.id;
        record.outbox.push(event);
    }

    /// Saves the record with its outbox, then publishes the outbox and clears it.
    pub async fn announce(
        &self,
        record: DeployRecord,
        revision: u64,
    ) -> Result<Versioned<DeployRecord>, BusError> {
        let v = self.save(record, revision).await?;
        self.flush(v).await
    }

    /// Publishes what the record's outbox holds (again, with the same ids) and clears it.
    pub async fn flush(
        &self,
        v: Versioned<DeployRecord>,
    ) -> Result<Versioned<DeployRecord>, BusError> {
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

    /// Writes `record` over the version read (compare-and-set).
    pub async fn save(
        &self,
        record: DeployRecord,
        revision: u64,
    ) -> Result<Versioned<DeployRecord>, BusError> {
        let key = record.change.environment.clone();
        let revision = self.records.update(&key, &record, revision).await?;
        steward_failpoints::failpoint!(&format!("saved:{}", step_name(record.step)));
        Ok(Versioned { value: record, revision })
    }

    /// Ends a deployment: the terminal step and why, then its terminal event.
    pub async fn conclude(
        &self,
        v: Versioned<DeployRecord>,
        step: DeployStep,
        reason: Option<String>,
        data: impl Into<EventData>,
    ) -> Result<Versioned<DeployRecord>, BusError> {
        debug_assert!(step.is_terminal());
        let mut record = v.value;
        self.stage(&mut record, data);
        record.step = step;
        record.reason = reason;
        self.announce(record, v.revision).await
    }

    /// The record of a deployment by id.
    pub async fn by_deploy_id(
        &self,
        id: uuid::Uuid,
    ) -> Result<Option<Versioned<DeployRecord>>, BusError> {
        for key in self.records.keys().await? {
            if let Some(v) = self.records.get(&key).await? {
                if v.value.deploy_id == id {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }
}

/// The step as its failpoints and logs name it (`applying`, `rolling_back`, ...).
pub fn step_name(step: DeployStep) -> String {
    serde_json::to_value(step).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Milliseconds since `t`, never negative.
pub fn ms_since(t: time::OffsetDateTime) -> u64 {
    let ms = (time::OffsetDateTime::now_utc() - t).whole_milliseconds();
    u64::try_from(ms).unwrap_or(0)
}
