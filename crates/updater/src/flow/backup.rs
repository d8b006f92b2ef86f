//! The pre-update backup: request it, wait for its outcome (correlated), give up after the
//! timeout without touching the container.

use steward_bus::Versioned;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::{BackupReason, BackupRequested, Event, EventData, UpdateFailed};
use time::OffsetDateTime;

use super::{Flow, FlowError};

impl Flow {
    /// Publishes `backup.requested` and waits for its outcome.
    pub async fn request_backup(
        &self,
        mut record: UpdateRecord,
        revision: u64,
    ) -> Result<(), FlowError> {
        let data = BackupRequested {
            reason: BackupReason::PreUpdate,
            containers: vec![record.container.clone()],
            requested_by: Some(self.source.clone()),
        };
        self.records.stage(&mut record, data);
        record.step = UpdateStep::AwaitingBackup;
        record.backup_deadline = Some(OffsetDateTime::now_utc() + self.cfg.backup_timeout);
        self.records.announce(record, revision).await?;
        Ok(())
    }

    /// `backup.done` / `backup.failed` of this flow (same correlation id).
    pub async fn on_backup_outcome(&self, event: &Event) -> Result<(), FlowError> {
        for key in self.records.keys().await? {
            let Some(v) = self.records.get(&key).await? else { continue };
            if v.value.correlation_id != event.correlation_id {
                continue;
            }
            let Some(_hold) = self.records.hold(&key) else {
                return Err(FlowError::Busy(key));
            };
            // Read again under the hold: another task may have moved it meanwhile.
            let Some(v) = self.records.get(&key).await? else { return Ok(()) };
            if v.value.correlation_id != event.correlation_id {
                return Ok(());
            }
            if v.value.step != UpdateStep::AwaitingBackup {
                // A redelivery after this outcome was acted upon: the flow ended, or was
                // left by a task that failed half-way and is driven on now.
                return self.drive(v).await;
            }
            return match &event.data {
                EventData::BackupDone(done) => {
                    tracing::info!(container = %key, backup = %done.backup_id, "pre-update backup done");
                    let mut record = v.value;
                    record.last_event_id = event.id;
                    record.step = UpdateStep::Swapping;
                    let v = self.records.save(record, v.revision).await?;
                    self.apply(v).await
                }
                EventData::BackupFailed(failed) => {
                    self.fail(
                        v,
                        format!("pre-update backup failed: {}", failed.reason),
                        failed.stderr_tail.clone(),
                    )
                    .await
                }
                _ => Ok(()),
            };
        }
        Ok(())
    }

    /// Fails an update whose backup did not come in time (the caller holds it).
    pub(crate) async fn expire_backup(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        let now = OffsetDateTime::now_utc();
        if v.value.step == UpdateStep::AwaitingBackup
            && v.value.backup_deadline.is_some_and(|d| d < now)
        {
            let reason = format!(
                "no pre-update backup within {:?}; container left as it was",
                self.cfg.backup_timeout
            );
            self.fail(v, reason, vec![]).await?;
        }
        Ok(())
    }

    /// Ends an update that never touched the container: `update.failed`.
    pub async fn fail(
        &self,
        v: Versioned<UpdateRecord>,
        reason: String,
        log_tail: Vec<String>,
    ) -> Result<(), FlowError> {
        let record = &v.value;
        tracing::error!(container = %record.container, %reason, "update failed");
        let data = UpdateFailed {
            update_id: record.update_id,
            container: record.container.clone(),
            image: record.image.clone(),
            reason: reason.clone(),
            log_tail,
            kind: record.kind,
            requested_by: record.requested_by.clone(),
        };
        self.records.conclude(v, UpdateStep::Failed, Some(reason), data).await?;
        Ok(())
    }
}
