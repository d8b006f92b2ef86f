//! Rolling back: the failed container's last log lines are kept for the operator, the old
//! container runs again under its name, and `update.rolled_back` says why.

use steward_bus::Versioned;
use steward_engine::Replacement;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::UpdateRolledBack;

use super::{Flow, FlowError};

/// Log lines carried in the event (and so in the operator's mail).
const LOG_LINES: usize = 20;

impl Flow {
    /// Puts the old container back after a failed health gate.
    pub async fn roll_back(
        &self,
        v: Versioned<UpdateRecord>,
        r: &Replacement,
        reason: String,
    ) -> Result<(), FlowError> {
        let log_tail = self.engine.logs_tail(&r.new_id, LOG_LINES).await.unwrap_or_default();
        steward_failpoints::failpoint!("restore");
        self.engine.restore(r).await?;
        steward_failpoints::failpoint!("restored");
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
        self.rolled_back(v, Some(r), reason, log_tail).await
    }

    /// Records and announces a rollback that has happened.
    pub async fn rolled_back(
        &self,
        v: Versioned<UpdateRecord>,
        r: Option<&Replacement>,
        reason: String,
        log_tail: Vec<String>,
    ) -> Result<(), FlowError> {
        let record = &v.value;
        tracing::error!(container = %record.container, %reason, "update rolled back");
        if let Some(r) = r {
            // The old one must really be back; if it is not, the operator must hear of it.
            if let Ok(view) = self.engine.health_view(&r.old_id).await {
                if !view.running {
                    tracing::error!(container = %record.container, "the old container did not come back");
                }
            }
        }
        let data = UpdateRolledBack {
            update_id: record.update_id,
            container: record.container.clone(),
            image: record.image.clone(),
            from_digest: record.from_digest.clone(),
            to_digest: record.to_digest.clone(),
            reason: reason.clone(),
            log_tail,
        };
        self.conclude(v, UpdateStep::RolledBack, Some(reason), data).await?;
        Ok(())
    }
}
