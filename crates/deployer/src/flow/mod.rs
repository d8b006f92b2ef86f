//! The deployment state machine. Each environment has one [`DeployRecord`] in the `DEPLOYS`
//! KV bucket, written only by compare-and-set; the record is the decision and carries the
//! events it decided in its outbox (written, then published with their own ids, then
//! cleared), so a kill between the two repeats the publish and never loses it.
//!
//! ```text
//! deploy.requested ─> Preparing (fetch, validate, diff, images)
//!   ├─ invalid ───────────────────────────────> Failed
//!   ├─ manual ──> Pending ─ deploy.approved ─┐
//!   └─ automatic ────────────────────────────┴─> (Deferred: window closed) ─> deploy.started
//!        ├─ backup off ───────────────────────────────────┐
//!        └─ backup.requested ─> AwaitingBackup ─ done ────┴─> Applying (up -d --no-deps)
//!                 └─ failed / timeout ─> Failed                └─> Gating ─ healthy ─> Succeeded
//!                                                                        └─ not ─> RollingBack ─> RolledBack
//! ```
//! One file per step: [`start`] (request, claim, prepare, approval), [`backup`], [`apply`]
//! (pre-deployment commands, apply, health gate, rollback), [`resume`] (what a restart, a
//! redelivery or the sweep finds); [`commands`] runs the repository's test and
//! pre-deployment commands; [`prior`] puts back what ran before a first deployment;
//! [`swap`] deploys start-first services behind HAProxy.

pub mod apply;
pub mod backup;
pub mod commands;
pub mod prior;
pub mod queue;
pub mod resume;
pub mod start;
pub mod swap;

use std::sync::Arc;

pub use steward_bus::Hold;
use steward_bus::{Bus, BusError, RecordStore, Versioned};
use steward_engine::Engine;
use steward_events::records::{DeployRecord, QueuedDeploy, DEPLOY_BUCKET};

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
    /// Deployment records, by environment, with the outbox machinery shared with the updater.
    pub records: RecordStore<DeployRecord>,
    /// The request waiting per environment while its deployment is under way (same bucket,
    /// keys `<environment>.queued`).
    pub queue: RecordStore<QueuedDeploy>,
    /// Settings.
    pub cfg: Arc<DeployerConfig>,
    /// CloudEvents source of what the deployer publishes.
    pub source: String,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow").field("cfg", &self.cfg).finish_non_exhaustive()
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
    /// Gitea's API did not answer: tried again.
    #[error("{0}")]
    Api(String),
    /// HAProxy's runtime API refused or did not answer a rollback's switch: tried again.
    #[error("{0}")]
    Switch(String),
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
        let records = RecordStore::open(&bus, DEPLOY_BUCKET, source.clone()).await?;
        let queue = RecordStore::open(&bus, DEPLOY_BUCKET, source.clone()).await?;
        Ok(Self { bus, engine, records, queue, cfg: Arc::new(cfg), source })
    }

    /// git on the repository an environment deploys from.
    pub fn git(&self, environment: &str) -> Git {
        let url = self.cfg.repository_of(environment).url.clone();
        Git { url, timeout: self.cfg.command_timeout }
    }

    /// The compose project of an environment.
    pub fn compose(&self, environment: &str) -> Compose {
        Compose {
            project: self.cfg.project_of(environment),
            dir: self.cfg.checkout_of(environment),
            files: vec![self.cfg.compose_file_of(environment).to_owned()],
            project_directory: None,
            timeout: self.cfg.command_timeout,
        }
    }

    /// The record of a deployment by id.
    pub async fn by_deploy_id(
        &self,
        id: uuid::Uuid,
    ) -> Result<Option<Versioned<DeployRecord>>, BusError> {
        self.records.find(|r| r.deploy_id == id).await
    }
}

/// Milliseconds since `t`, never negative.
pub fn ms_since(t: time::OffsetDateTime) -> u64 {
    let ms = (time::OffsetDateTime::now_utc() - t).whole_milliseconds();
    u64::try_from(ms).unwrap_or(0)
}
