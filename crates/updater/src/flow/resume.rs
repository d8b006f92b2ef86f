//! What a restarted updater finds: every update caught between pull and verdict is rolled
//! back, so each ends with a terminal event and exactly one container of that name on the
//! old image (or, for the updater's own container, on the new one when this process is the
//! successor that takes over), its network-namespace dependents back in that container's namespace (also one
//! whose own recreation was cut short). Updates waiting for approval or a backup simply keep
//! waiting.

use steward_engine::recreate::NEW_SUFFIX;
use steward_engine::Replacement;
use steward_events::records::UpdateStep;

use super::{Flow, FlowError};

impl Flow {
    /// Rolls back every update left in `Swapping` or `Gating`.
    pub async fn resume(&self) -> Result<(), FlowError> {
        for key in self.records.keys().await? {
            let Some(v) = self.records.get(&key).await? else { continue };
            if v.value.step == UpdateStep::HandingOver {
                self.resume_handover(v).await?;
                continue;
            }
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
            // A dependent caught half-way through joining the new container (or back the old
            // one) gets its name back first, so the rollback's rejoin finds it.
            let repaired = self
                .engine
                .repair_rejoins(&[r.old_id.as_str(), r.new_id.as_str(), &r.name])
                .await?;
            self.roll_back(v, &r, reason).await?;
            for dependent in repaired {
                tracing::warn!(%dependent, "a dependent's interrupted recreation was repaired");
                if self.engine.is_running(&dependent).await? == Some(false) {
                    self.engine.start(&dependent).await?;
                }
            }
        }
        Ok(())
    }
}
