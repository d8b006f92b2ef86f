//! The service around [`Backups`]: events in, events out, the schedule, one job at a time.
//!
//! Outcomes are events, not handler errors: a backup that fails because S3 is down is a
//! `backup.failed` (the requester must hear of it now), not a redelivery an hour later.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use steward_bus::StateStore;
use steward_events::records::{UpdateRecord, UpdateStep, UPDATE_BUCKET};
use steward_events::{
    BackupComponent, BackupDone, BackupFailed, BackupPruned, BackupReason, BackupStarted,
    BackupVerified, Event, EventData, RestoreDone, RestoreFailed, VerifyFailed,
};
use steward_runtime::{Context, Handler, HandlerError};
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::backup::Backups;
use crate::config::BackupConfig;
use crate::manifest;
use crate::progress;
use crate::restore::Busy;
use crate::store::Store;

/// The backup service's event handler.
#[derive(Debug, Clone)]
pub struct BackupService {
    backups: Backups,
    /// Backups, verifications and restores never overlap.
    lock: Arc<Mutex<()>>,
}

impl BackupService {
    /// Connects to S3 and starts the schedule.
    pub async fn start(cfg: BackupConfig, ctx: &Context) -> anyhow::Result<Self> {
        let engine = ctx.engine.clone().context("the backup service needs Docker")?;
        let store = Store::lazy(&cfg.s3);
        let schedule = cfg.schedule.clone();
        let service = Self { backups: Backups::new(engine, store, cfg), lock: Default::default() };
        let scheduled = service.clone();
        let ctx_for_schedule = ctx.clone();
        ctx.spawn("backup schedule", async move {
            scheduled.run_schedule(schedule, ctx_for_schedule).await
        });
        Ok(service)
    }

    /// The backups.
    pub fn backups(&self) -> &Backups {
        &self.backups
    }

    async fn run_schedule(self, schedule: croner::Cron, ctx: Context) {
        let shutdown = ctx.shutdown.clone();
        steward_runtime::on_schedule(schedule, shutdown, "backup", || async {
            if let Err(e) = self.back_up(&ctx, None, BackupReason::Schedule, &[]).await {
                tracing::error!(error = %format!("{e:#}"), "could not publish the scheduled backup's outcome");
            }
        })
        .await
    }

    async fn publish(
        &self,
        ctx: &Context,
        cause: Option<&Event>,
        data: impl Into<EventData>,
    ) -> anyhow::Result<()> {
        let event = match cause {
            Some(cause) => Event::caused_by(cause, ctx.source(), data),
            None => Event::new(ctx.source(), data),
        };
        ctx.bus.publish(&event).await?;
        Ok(())
    }

    /// Runs `job`, reporting its progress to whoever follows `cause`'s correlation.
    async fn reporting<F: std::future::Future>(
        &self,
        ctx: &Context,
        cause: &Event,
        job: F,
    ) -> F::Output {
        progress::reporting(&ctx.bus, cause.correlation_id, self.backups.meter(), job).await
    }

    /// One backup with its events; then retention.
    async fn back_up(
        &self,
        ctx: &Context,
        cause: Option<&Event>,
        reason: BackupReason,
        only: &[String],
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let id = manifest::new_backup_id(OffsetDateTime::now_utc());
        self.publish(ctx, cause, BackupStarted { backup_id: id.clone() }).await?;
        steward_failpoints::failpoint!("backup:started");
        let job = self.backups.take(&id, reason, only);
        let outcome = match cause {
            Some(cause) => self.reporting(ctx, cause, job).await,
            None => job.await,
        };
        match outcome {
            Ok(m) => {
                let done = BackupDone {
                    backup_id: id.clone(),
                    manifest_key: self.backups.store().key(&format!("{id}/{}", manifest::MANIFEST)),
                    size_bytes: m.stored_size(),
                    components: m
                        .components
                        .iter()
                        .map(|c| BackupComponent {
                            name: c.name.clone(),
                            size_bytes: c.stored_size,
                            sha256: c.stored_sha256.clone(),
                        })
                        .collect(),
                    duration_ms: started.elapsed().as_millis() as u64,
                };
                self.publish(ctx, cause, done).await?;
                steward_failpoints::failpoint!("backup:done");
                match self.backups.prune(OffsetDateTime::now_utc()).await {
                    Ok((pruned, kept)) if !pruned.is_empty() => {
                        self.publish(ctx, cause, BackupPruned { backup_ids: pruned, kept }).await?
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "retention could not prune; it tries again after the next backup")
                    }
                }
            }
            Err(f) => {
                tracing::error!(backup = %id, reason = %f.reason, "backup failed");
                let failed = BackupFailed {
                    backup_id: Some(id),
                    reason: f.reason,
                    stderr_tail: f.stderr_tail,
                };
                self.publish(ctx, cause, failed).await?;
                steward_failpoints::failpoint!("backup:failed");
            }
        }
        Ok(())
    }

    async fn verify(&self, ctx: &Context, cause: &Event, id: &str) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        match self.reporting(ctx, cause, self.backups.verify(id)).await {
            Ok(v) => {
                let data = BackupVerified {
                    backup_id: v.manifest.backup_id,
                    components_checked: v.components_checked,
                    database_restored: v.database_restored,
                    duration_ms: started.elapsed().as_millis() as u64,
                };
                self.publish(ctx, Some(cause), data).await
            }
            Err(f) => {
                tracing::error!(backup = %id, reason = %f.reason, "verification failed");
                let data = VerifyFailed {
                    backup_id: id.to_owned(),
                    reason: f.reason,
                    log_tail: f.stderr_tail,
                };
                self.publish(ctx, Some(cause), data).await
            }
        }
    }

    async fn restore(
        &self,
        ctx: &Context,
        cause: &Event,
        r: &steward_events::RestoreRequested,
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let outcome = match updates_in_progress(ctx).await {
            Ok(busy) => {
                let job = self.backups.restore_unless_busy(&r.backup_id, r.scope, &busy);
                self.reporting(ctx, cause, job).await
            }
            // Fail closed: restoring under a running update can lose both.
            Err(e) => Err(crate::Failure::plain(format!(
                "could not check for updates in progress, nothing was changed: {e:#}"
            ))),
        };
        match outcome {
            Ok(done) => {
                let data = RestoreDone {
                    backup_id: done.manifest.backup_id,
                    restored: done.restored,
                    duration_ms: started.elapsed().as_millis() as u64,
                };
                self.publish(ctx, Some(cause), data).await?;
                steward_failpoints::failpoint!("restore:done");
                Ok(())
            }
            Err(f) => {
                tracing::error!(backup = %r.backup_id, reason = %f.reason, "restore failed");
                let data = RestoreFailed {
                    backup_id: r.backup_id.clone(),
                    reason: f.reason,
                    log_tail: f.stderr_tail,
                };
                self.publish(ctx, Some(cause), data).await?;
                steward_failpoints::failpoint!("restore:failed");
                Ok(())
            }
        }
    }
}

/// Containers whose update is swapping or in its health gate, from the updater's records.
async fn updates_in_progress(ctx: &Context) -> anyhow::Result<Busy> {
    let mut busy = Busy::new();
    // Read-only: the bucket is the updater's. None: no update ever ran.
    let Some(store) = StateStore::<UpdateRecord>::open_existing(&ctx.bus, UPDATE_BUCKET).await?
    else {
        return Ok(busy);
    };
    for key in store.keys().await? {
        let Some(record) = store.get(&key).await? else { continue };
        let r = record.value;
        let doing = match r.step {
            UpdateStep::Swapping => "swapping containers",
            UpdateStep::Gating => "in its health gate",
            UpdateStep::HandingOver => "handing over to its successor",
            _ => continue,
        };
        busy.insert(r.container, format!("update {} to {} is {doing}", r.update_id, r.to_digest));
    }
    Ok(busy)
}

impl Handler for BackupService {
    async fn handle(&self, ctx: &Context, event: Event) -> Result<(), HandlerError> {
        let result = match &event.data {
            EventData::BackupRequested(r) => {
                self.back_up(ctx, Some(&event), r.reason, &r.containers).await
            }
            EventData::VerifyRequested(v) => self.verify(ctx, &event, &v.backup_id).await,
            EventData::RestoreRequested(r) => self.restore(ctx, &event, r).await,
            _ => Ok(()),
        };
        // Only publishing can fail here: the bus is down, try again later.
        result.map_err(HandlerError::Retry)
    }
}
