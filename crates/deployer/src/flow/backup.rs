//! The pre-deployment backup: the same gate as an update's (`backup.requested`, its
//! correlated `backup.done` / `backup.failed`, a timeout), with the shared event types; the
//! stack is touched only after `backup.done`.

use steward_bus::Versioned;
use steward_events::records::{DeployRecord, DeployStep};
use steward_events::{Event, EventData};
use time::OffsetDateTime;

use super::{Flow, FlowError};

impl Flow {
    /// `backup.done` / `backup.failed` of a deployment's flow (same correlation id).
    pub async fn on_backup_outcome(&self, event: &Event) -> Result<(), FlowError> {
        for key in self.records.record_keys().await? {
            let Some(v) = self.records.get(&key).await? else { continue };
            if v.value.correlation_id != event.correlation_id {
                continue;
            }
            let Some(_hold) = self.records.hold(&key) else { return Err(FlowError::Busy(key)) };
            // Read again under the hold: another task may have moved it meanwhile.
            let Some(v) = self.records.get(&key).await? else { return Ok(()) };
            if v.value.correlation_id != event.correlation_id {
                return Ok(());
            }
            if v.value.step != DeployStep::AwaitingBackup {
                // A redelivery after the outcome was acted upon.
                return self.drive(v).await;
            }
            let outcome = match &event.data {
                EventData::BackupDone(done) => {
                    tracing::info!(environment = %key, backup = %done.backup_id, "pre-deployment backup done");
                    let mut record = v.value;
                    record.last_event_id = event.id;
                    record.begin_apply();
                    let v = self.records.save(record, v.revision).await?;
                    self.apply(v).await
                }
                EventData::BackupFailed(failed) => {
                    let reason = format!("pre-deployment backup failed: {}", failed.reason);
                    self.fail(v, reason, failed.stderr_tail.clone()).await
                }
                _ => Ok(()),
            };
            outcome?;
            return self.start_queued(&key).await;
        }
        Ok(())
    }

    /// Fails a deployment whose backup did not come in time (the caller holds it).
    pub async fn expire_backup(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let now = OffsetDateTime::now_utc();
        if v.value.step == DeployStep::AwaitingBackup
            && v.value.backup_deadline.is_some_and(|d| d < now)
        {
            let reason = format!(
                "no pre-deployment backup within {:?}; nothing was touched",
                self.cfg.backup_timeout
            );
            self.fail(v, reason, vec![]).await?;
        }
        Ok(())
    }
}
