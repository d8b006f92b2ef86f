//! Rolling back: the failed container's last log lines are kept for the operator, the old
//! container runs again under its name and is judged by the same health check as the new
//! one, and `update.rolled_back` says why and whether the old one is healthy again.

use steward_bus::Versioned;
use steward_engine::Replacement;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::UpdateRolledBack;

use super::{Flow, FlowError};

/// Log lines of a new container carried in the event (and so in the operator's mail).
pub(super) const LOG_LINES: usize = 20;

impl Flow {
    /// Puts the old container back after a failed health gate.
    pub async fn roll_back(
        &self,
        v: Versioned<UpdateRecord>,
        r: &Replacement,
        reason: String,
    ) -> Result<(), FlowError> {
        let log_tail = self.engine.logs_tail(&r.new_id, LOG_LINES).await.unwrap_or_default();
        // Start-first: HAProxy goes back to the old container while it still runs, before
        // the new one is removed (a no-op when it was never switched).
        let mut reason = reason;
        let switched_back = match &v.value.haproxy {
            Some(h) => self.switch_back(h, &r.old_id).await,
            None => Ok(()),
        };
        steward_failpoints::failpoint!("restore");
        self.engine.restore(r).await?;
        steward_failpoints::failpoint!("restored");
        if let (Err(first), Some(h)) = (switched_back, &v.value.haproxy) {
            // Once more with the old container surely running again (at its address now).
            if let Err(e) = self.switch_back(h, &r.old_id).await {
                tracing::error!(container = %r.name, error = %e, first = %first, "HAProxy could not be switched back to the old container");
                reason = format!(
                    "{reason}; HAProxy could not be switched back to {}/{}: {e} (see docs/runbooks.md, HAProxy switched wrong)",
                    h.backend, h.old_server
                );
            }
        }
        // Dependents that joined the new container (or lost the old one) join the old again.
        let from = [r.new_id.as_str(), r.old_id.as_str(), r.name.as_str()];
        if let Err(e) = self.rejoin_dependents(&from, &r.old_id).await {
            tracing::error!(container = %r.name, error = %e, "a dependent container did not rejoin after the rollback");
        }
        // Before the verdict is recorded: a dependent whose own recreation a kill cut short
        // may have been left stopped, and after the verdict nobody would look again.
        for d in &v.value.dependents {
            if self.engine.is_running(d).await? == Some(false) {
                tracing::warn!(dependent = %d, "starting a dependent that ran before the update");
                self.engine.start(d).await?;
            }
        }
        let old_health = self.judge_old(r).await;
        self.conclude_rollback(v, reason, log_tail, old_health).await
    }

    /// Whether the old container is healthy again, judged as the gate judges: a rollback
    /// that leaves the service down on both images is the most urgent thing to report.
    async fn judge_old(&self, r: &Replacement) -> OldHealth {
        let labels = self.engine.container_labels(&r.old_id).await.ok().flatten();
        let url = labels.as_ref().and_then(|l| steward_labels::health_url(l).ok().flatten());
        match self.judge(&r.old_id, url, "the old container").await {
            Ok(()) => OldHealth { healthy: Some(true), reason: None, log_tail: vec![] },
            Err(reason) => {
                tracing::error!(container = %r.name, %reason, "the old container is not healthy after the rollback");
                let log_tail =
                    self.engine.logs_tail(&r.old_id, LOG_LINES).await.unwrap_or_default();
                OldHealth { healthy: Some(false), reason: Some(reason), log_tail }
            }
        }
    }

    /// Records and announces a rollback that has happened (the old container's health not
    /// judged: nothing was swapped, or the successor of a handover gave up).
    pub async fn rolled_back(
        &self,
        v: Versioned<UpdateRecord>,
        reason: String,
        log_tail: Vec<String>,
    ) -> Result<(), FlowError> {
        self.conclude_rollback(v, reason, log_tail, OldHealth::default()).await
    }

    async fn conclude_rollback(
        &self,
        v: Versioned<UpdateRecord>,
        reason: String,
        log_tail: Vec<String>,
        old: OldHealth,
    ) -> Result<(), FlowError> {
        let record = &v.value;
        tracing::error!(container = %record.container, %reason, "update rolled back");
        let data = UpdateRolledBack {
            update_id: record.update_id,
            container: record.container.clone(),
            image: record.image.clone(),
            from_digest: record.from_digest.clone(),
            to_digest: record.to_digest.clone(),
            reason: reason.clone(),
            log_tail,
            old_healthy: old.healthy,
            old_reason: old.reason,
            old_log_tail: old.log_tail,
            kind: record.kind,
            requested_by: record.requested_by.clone(),
        };
        self.records.conclude(v, UpdateStep::RolledBack, Some(reason), data).await?;
        Ok(())
    }
}

/// The old container's health after a rollback.
#[derive(Debug, Default)]
struct OldHealth {
    healthy: Option<bool>,
    reason: Option<String>,
    log_tail: Vec<String>,
}
