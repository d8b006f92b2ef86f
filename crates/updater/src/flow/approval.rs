//! `update.approved` / `update.rejected` for a pending manual update.

use steward_bus::Versioned;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::{UpdateApproved, UpdatePending, UpdateRejected};
use time::OffsetDateTime;

use super::{Flow, FlowError, Hold};

/// The `update.pending` that asks for `record`'s decision (never with the link: the notifier
/// asks for it when it mails).
pub(super) fn pending_of(record: &UpdateRecord, reminder: bool) -> UpdatePending {
    UpdatePending {
        update_id: record.update_id,
        container: record.container.clone(),
        image: record.image.clone(),
        current_digest: record.from_digest.clone(),
        new_digest: record.to_digest.clone(),
        new_tag: record.new_tag.clone(),
        approval_url: None,
        expires_at: record.approval_expires,
        runs: None,
        versions: record.versions.clone(),
        reminder,
    }
}

impl Flow {
    /// A human approved: the update begins.
    pub async fn on_approved(&self, a: &UpdateApproved) -> Result<(), FlowError> {
        let Some((v, _hold)) = self.decision_for(a.update_id).await? else { return Ok(()) };
        let mut v = v;
        v.value.approved_by = Some(a.by.clone());
        let settings = match self.settings(&v.value.container).await? {
            Ok(s) => s,
            Err(reason) => return self.fail(v, reason, vec![]).await,
        };
        tracing::info!(container = %v.value.container, by = %a.by, "update approved");
        // An approval says "yes", not "now": the window, the minimum age and the order of
        // dependencies hold as for an automatic update.
        self.begin_or_defer(v, &settings).await
    }

    /// A pending update whose approval link expires within the reminder's bound is mailed
    /// once more (`update.pending` with `reminder`), decided in the record with the event
    /// in its outbox like every other step, so it goes out once however often the sweep or
    /// a restart finds it.
    pub async fn remind_if_due(&self, v: Versioned<UpdateRecord>) -> Result<(), FlowError> {
        let (Some(links), Some(expires)) = (self.cfg.links.as_ref(), v.value.approval_expires)
        else {
            return Ok(());
        };
        let now = OffsetDateTime::now_utc();
        if v.value.step != UpdateStep::Pending
            || v.value.approval_reminded
            || !links.reminder_due(v.value.started_at, expires, now)
        {
            return Ok(());
        }
        let mut record = v.value;
        record.approval_reminded = true;
        let data = pending_of(&record, true);
        tracing::info!(container = %record.container, %expires, "approval link expires soon; reminding");
        self.records.stage(&mut record, data);
        self.records.announce(record, v.revision).await?;
        Ok(())
    }

    /// A human rejected: the container stays as it is.
    pub async fn on_rejected(&self, r: &UpdateRejected) -> Result<(), FlowError> {
        let Some((mut v, _hold)) = self.decision_for(r.update_id).await? else { return Ok(()) };
        tracing::info!(container = %v.value.container, by = %r.by, "update rejected");
        v.value.step = UpdateStep::Rejected;
        v.value.reason = Some(format!(
            "rejected by {}{}",
            r.by,
            r.reason.as_ref().map(|x| format!(": {x}")).unwrap_or_default()
        ));
        self.records.save(v.value, v.revision).await?;
        Ok(())
    }

    /// The pending update a decision is about, held by this task; `None` when there is
    /// nothing to decide (already decided, superseded, unknown). A decision that comes again
    /// after its flow failed half-way drives that flow on.
    async fn decision_for(
        &self,
        update_id: uuid::Uuid,
    ) -> Result<Option<(Versioned<UpdateRecord>, Hold)>, FlowError> {
        let Some(found) = self.by_update_id(update_id).await? else {
            tracing::warn!(%update_id, "no such update; ignoring");
            return Ok(None);
        };
        let name = found.value.container;
        let Some(hold) = self.records.hold(&name) else { return Err(FlowError::Busy(name)) };
        let v = match self.records.get(&name).await? {
            Some(v) if v.value.update_id == update_id => v,
            _ => {
                tracing::warn!(%update_id, "superseded by a newer update; ignoring");
                return Ok(None);
            }
        };
        if v.value.step != UpdateStep::Pending {
            tracing::warn!(%update_id, step = ?v.value.step, "not pending (already decided); ignoring");
            self.drive(v).await?;
            return Ok(None);
        }
        Ok(Some((v, hold)))
    }
}
