//! What a restarted updater finds: every update caught between pull and verdict is rolled
//! back, so each ends with a terminal event and exactly one container of that name on the
//! old image. Updates waiting for approval or a backup simply keep waiting.

use steward_engine::recreate::NEW_SUFFIX;
use steward_engine::Replacement;
use steward_events::records::UpdateStep;

use super::{Flow, FlowError};

impl Flow {
    /// Rolls back every update left in `Swapping` or `Gating`.
    pub async fn resume(&self) -> Result<(), FlowError> {
        for key in self.records.keys().await? {
            let Some(v) = self.records.get(&key).await? else { continue };
            if !matches!(v.value.step, UpdateStep::Swapping | UpdateStep::Gating) {
                continue;
            }
            let name = v.value.container.clone();
            let reason = "the updater restarted during the update".to_owned();
            let Some(old_id) = v.value.old_id.clone() else {
                // Not swapped yet (pull or earlier): nothing was touched.
                self.fail(v, format!("{reason}, before the containers were swapped"), vec![])
                    .await?;
                continue;
            };
            // The new container is the one now called `name` if the swap got that far, else
            // the one still under its temporary name (or none).
            let new_id = match (&v.value.new_id, self.engine.container_id(&name).await?) {
                (Some(id), _) => id.clone(),
                (None, Some(current)) if current != old_id => current,
                _ => format!("{name}{NEW_SUFFIX}"),
            };
            tracing::warn!(container = %name, "rolling back an update interrupted by a restart");
            let r = Replacement { name, old_id, new_id };
            let log_tail = self.engine.logs_tail(&r.new_id, 20).await.unwrap_or_default();
            self.engine.restore(&r).await?;
            self.rolled_back(v, Some(&r), reason, log_tail).await?;
        }
        Ok(())
    }
}
