//! The updater updating its own container. It cannot stop itself and then start its
//! successor, so the order changes: the successor is created and started next to it
//! (`HandingOver`), and the successor, at its start, takes the name, stops its predecessor and
//! concludes the update from the persisted record. Taking over is its health gate: it
//! started, read its configuration, reached NATS and its state. If it has not taken over
//! within `STEWARD_HEALTH_TIMEOUT`, the old updater removes it and reports the rollback. The
//! record's compare-and-set decides a race between the two.

use std::time::{Duration, Instant};

use steward_bus::{BusError, Versioned};
use steward_engine::Replacement;
use steward_events::records::{UpdateRecord, UpdateStep};

use super::{Flow, FlowError};

use super::rollback::LOG_LINES;

impl Flow {
    /// Whether container `id` is the one this updater runs in.
    pub fn is_own(&self, id: &str) -> bool {
        self.own_id.as_deref() == Some(id)
    }

    /// The old updater's half: start the successor and wait for it to take over.
    pub async fn hand_over(
        &self,
        v: Versioned<UpdateRecord>,
        image: &str,
    ) -> Result<(), FlowError> {
        let name = v.value.container.clone();
        let r = match self.engine.create_successor_of(&name, image).await {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("cannot create the new container: {e}");
                return self.fail(v, reason, vec![]).await;
            }
        };
        // Recorded before it starts: the successor looks for exactly this at its start.
        let mut record = v.value;
        record.new_id = Some(r.new_id.clone());
        record.step = UpdateStep::HandingOver;
        let v = self.records.save(record, v.revision).await?;
        if let Err(e) = self.engine.start(&r.new_id).await {
            let reason = format!("cannot start the new container: {e}");
            return self.abandon_handover(v, &r, reason).await;
        }
        tracing::info!(container = %name, successor = %r.new_id, "handing over to the new updater");
        let deadline = Instant::now() + self.cfg.health_timeout;
        loop {
            // The successor stops this container once it has taken over: this wait usually
            // ends with the process.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(now) = self.records.get(&name).await? else { return Ok(()) };
            if now.value.update_id != v.value.update_id || now.value.step != UpdateStep::HandingOver
            {
                return Ok(()); // taken over (or concluded)
            }
            if Instant::now() >= deadline {
                let reason = format!(
                    "the new updater did not take over within {:?}",
                    self.cfg.health_timeout
                );
                return self.abandon_handover(now, &r, reason).await;
            }
        }
    }

    /// Removes a successor that did not take over and reports the rollback, unless it took
    /// over meanwhile (the claim decides).
    async fn abandon_handover(
        &self,
        v: Versioned<UpdateRecord>,
        r: &Replacement,
        reason: String,
    ) -> Result<(), FlowError> {
        let mut record = v.value;
        record.step = UpdateStep::Gating;
        let v = match self.records.save(record, v.revision).await {
            Ok(v) => v,
            Err(BusError::Conflict { .. }) => return Ok(()), // the successor took over
            Err(e) => return Err(e.into()),
        };
        let log_tail = self.engine.logs_tail(&r.new_id, LOG_LINES).await.unwrap_or_default();
        self.engine.remove(&r.new_id, false).await?;
        self.rolled_back(v, reason, log_tail).await
    }

    /// At start: a handover this process is part of. The successor takes over and concludes;
    /// a restarted predecessor (or another updater, when the successor is not running)
    /// abandons it.
    pub(crate) async fn resume_handover(
        &self,
        v: Versioned<UpdateRecord>,
    ) -> Result<(), FlowError> {
        let (Some(old_id), Some(new_id)) = (v.value.old_id.clone(), v.value.new_id.clone()) else {
            return Ok(());
        };
        let r = Replacement { name: v.value.container.clone(), old_id, new_id };
        if !self.is_own(&r.new_id) {
            let successor_runs = self.engine.is_running(&r.new_id).await? == Some(true);
            if self.is_own(&r.old_id) || !successor_runs {
                let reason = "the updater restarted during the handover".to_owned();
                return self.abandon_handover(v, &r, reason).await;
            }
            return Ok(()); // the successor's own business
        }
        let mut record = v.value;
        record.step = UpdateStep::Gating;
        let v = match self.records.save(record, v.revision).await {
            Ok(v) => v,
            Err(BusError::Conflict { .. }) => return Ok(()), // abandoned: we are being removed
            Err(e) => return Err(e.into()),
        };
        tracing::info!(container = %r.name, "taking over from the previous updater");
        if let Err(e) = self.engine.take_over(&r).await {
            // The old updater runs again; this container goes once the rollback is recorded.
            let reason = format!("the new updater could not take over: {e}");
            self.rolled_back(v, reason, vec![]).await?;
            self.engine.remove(&r.new_id, false).await?;
            return Ok(());
        }
        steward_failpoints::failpoint!("takeover:done");
        self.succeed(v, &r).await
    }
}
