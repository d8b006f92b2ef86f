//! `update.approved` / `update.rejected` for a pending manual update.

use steward_events::records::UpdateStep;
use steward_events::{UpdateApproved, UpdateRejected};

use super::{Flow, FlowError};

impl Flow {
    /// A human approved: the update begins.
    pub async fn on_approved(&self, a: &UpdateApproved) -> Result<(), FlowError> {
        let Some(mut v) = self.pending(a.update_id).await? else { return Ok(()) };
        v.value.approved_by = Some(a.by.clone());
        let backup = match self.engine.container_labels(&v.value.container).await? {
            Some(labels) => {
                steward_labels::update_labels(&labels).map(|l| l.backup).unwrap_or(true)
            }
            None => true,
        };
        tracing::info!(container = %v.value.container, by = %a.by, "update approved");
        self.begin(v, backup).await
    }

    /// A human rejected: the container stays as it is.
    pub async fn on_rejected(&self, r: &UpdateRejected) -> Result<(), FlowError> {
        let Some(mut v) = self.pending(r.update_id).await? else { return Ok(()) };
        tracing::info!(container = %v.value.container, by = %r.by, "update rejected");
        v.value.step = UpdateStep::Rejected;
        v.value.reason = Some(format!(
            "rejected by {}{}",
            r.by,
            r.reason.as_ref().map(|x| format!(": {x}")).unwrap_or_default()
        ));
        self.save(v.value, v.revision).await?;
        Ok(())
    }

    async fn pending(
        &self,
        update_id: uuid::Uuid,
    ) -> Result<Option<steward_bus::Versioned<steward_events::records::UpdateRecord>>, FlowError>
    {
        match self.by_update_id(update_id).await? {
            Some(v) if v.value.step == UpdateStep::Pending => Ok(Some(v)),
            Some(v) => {
                tracing::warn!(%update_id, step = ?v.value.step, "not pending (already decided or superseded); ignoring");
                Ok(None)
            }
            None => {
                tracing::warn!(%update_id, "no such update; ignoring");
                Ok(None)
            }
        }
    }
}
