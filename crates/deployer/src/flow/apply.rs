//! The apply: the changed services' pre-deployment commands run (`steward.deploy.pre`), then
//! only the changed services are recreated from the commit's definitions
//! (`up -d --no-deps`), health-gated with `steward-probe` (the one meaning of healthy), and
//! on failure the previous commit's definitions are put back.

use std::time::Duration;

use steward_bus::Versioned;
use steward_events::records::{DeployRecord, DeployStep};
use steward_events::{DeployRolledBack, DeploySucceeded};
use steward_probe::{Prober, Target, Verdict};
use tokio::time::Instant;

use super::{Flow, FlowError};

/// Between two rounds of the gate.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Log lines of a failed service kept for the rollback's event.
pub(super) const LOG_LINES: usize = 20;

impl Flow {
    /// Applies a record at `Applying`, gates it, and concludes or rolls back.
    pub async fn apply(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let env = v.value.change.environment.clone();
        let compose = self.compose(&env);
        let dir = self.cfg.checkout_of(&env);
        steward_failpoints::failpoint!("apply");
        let failed = |e: crate::command::CommandError| (e.to_string(), e.tail);
        if let Err((reason, tail)) =
            self.git(&env).checkout(&dir, &v.value.change.commit).await.map_err(failed)
        {
            return self.roll_back(v, reason, tail).await;
        }
        // Before the pre-deployment commands: a swap that cannot run ends it untouched.
        let v = match self.plan_swaps(v).await? {
            Ok(v) => v,
            Err((v, reason, tail)) => return self.roll_back(v, reason, tail).await,
        };
        let plain = v.value.plain_services();
        // Inside the backup gate (the backup is done), before the new version starts.
        let v = match self.run_pre(v).await? {
            Ok(v) => v,
            Err((v, (reason, tail))) => return self.roll_back(v, reason, tail).await,
        };
        // Saved before `up`, never after: a kill in between must roll back as if it began.
        let v = if v.value.up_begun {
            v
        } else {
            let mut record = v.value;
            record.up_begun = true;
            if record.deployed_commit.is_none() {
                record.prior = self.prior_services(&env, &plain).await?;
            }
            self.records.save(record, v.revision).await?
        };
        steward_failpoints::failpoint!("up");
        let applied = compose.up(&plain).await.map_err(failed);
        steward_failpoints::failpoint!("applied");
        if let Err((reason, tail)) = applied {
            return self.roll_back(v, reason, tail).await;
        }
        // The start-first services, one by one, each gated before HAProxy serves it.
        let mut v = v;
        for i in 0..v.value.swaps.len() {
            v = match self.swap_in(v, i).await? {
                Ok(v) => v,
                Err((v, reason, tail)) => return self.roll_back(v, reason, tail).await,
            };
        }
        let mut record = v.value;
        record.step = DeployStep::Gating;
        let v = self.records.save(record, v.revision).await?;
        steward_failpoints::failpoint!("gate");
        let gated = match self.gate(&env, &plain, "the new").await {
            Ok(()) => self.still_serving(&v.value).await.map_err(|why| (why, vec![])),
            Err(failed) => Err(failed),
        };
        match gated {
            Ok(()) => self.succeed(v).await,
            Err((reason, log_tail)) => self.roll_back(v, reason, log_tail).await,
        }
    }

    /// A deployment that passed its gate: its swaps' old containers removed (`retiring`,
    /// saved first, makes a restart finish this rather than roll back), then
    /// `deploy.succeeded`.
    pub async fn succeed(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let v = if v.value.swaps.is_empty() || v.value.retiring {
            v
        } else {
            let mut record = v.value;
            record.retiring = true;
            self.records.save(record, v.revision).await?
        };
        steward_failpoints::failpoint!("retire");
        self.retire(&v.value).await?;
        let record = &v.value;
        tracing::info!(environment = %record.change.environment, commit = %record.change.commit, services = ?record.services, "deployed");
        let data = DeploySucceeded {
            deploy_id: record.deploy_id,
            change: record.change.clone(),
            previous_commit: record.deployed_commit.clone(),
            services: record.services.clone(),
            duration_ms: super::ms_since(record.started_at),
        };
        self.records.conclude(v, DeployStep::Succeeded, None, data).await?;
        Ok(())
    }

    /// Puts the previous commit's definitions back for the changed services (and removes
    /// the services the commit added; on a first deployment, makes again what was started by
    /// hand and removes the rest), then `deploy.rolled_back`. A deployment whose `up` never
    /// began touches no container. Runs again from the start after a kill: every command in
    /// it is idempotent.
    pub async fn roll_back(
        &self,
        v: Versioned<DeployRecord>,
        reason: String,
        log_tail: Vec<String>,
    ) -> Result<(), FlowError> {
        let env = v.value.change.environment.clone();
        tracing::warn!(environment = %env, %reason, "deployment failed; rolling back");
        let v = if v.value.step == DeployStep::RollingBack {
            v
        } else {
            // A pre-deployment command a kill left running is said in the reason, saved before
            // its container is removed (below, on every pass), so a second kill keeps it.
            let left = self.pre_left(&v.value).await?;
            let stopped: Vec<&str> =
                left.iter().filter(|(_, running)| *running).map(|(s, _)| s.as_str()).collect();
            let reason = if stopped.is_empty() {
                reason.clone()
            } else {
                format!(
                    "{reason}; the pre-deployment command of {} was stopped before it ended \
                     (what it changed stays: {})",
                    stopped.join(", "),
                    Self::backup_note(&v.value)
                )
            };
            // Commands that ran to their end before the new version started: their changes
            // stay whatever the rollback does, and the operator must hear it.
            let reason = if v.value.pre_done.is_empty() {
                reason
            } else {
                format!(
                    "{reason}; the pre-deployment command of {} had run (what it changed \
                     stays: {})",
                    v.value.pre_done.join(", "),
                    Self::backup_note(&v.value)
                )
            };
            let mut record = v.value;
            record.step = DeployStep::RollingBack;
            record.reason = Some(reason);
            self.records.save(record, v.revision).await?
        };
        self.remove_pre(&v.value).await?;
        steward_failpoints::failpoint!("rollback");
        let compose = self.compose(&env);
        let dir = self.cfg.checkout_of(&env);
        let record = &v.value;
        let mut note = String::new();
        let plain = record.plain_services();
        let mut back = match &record.deployed_commit {
            // Nothing of the new version started: what runs is left as it is.
            _ if !record.up_begun => {
                if let Some(previous) = &record.deployed_commit {
                    self.git(&env).checkout(&dir, previous).await?;
                }
                vec![]
            }
            Some(previous) => {
                let (back, removed): (Vec<String>, Vec<String>) =
                    plain.iter().cloned().partition(|s| !record.new_services.contains(s));
                compose.remove(&removed).await?;
                self.git(&env).checkout(&dir, previous).await?;
                compose.up(&back).await?;
                back
            }
            // No previous commit: what ran before it was started by hand, or nothing.
            None => {
                let put = self.put_back_prior(record).await?;
                let removed: Vec<String> = plain
                    .iter()
                    .filter(|s| !put.back.contains(s) && !put.untouched.contains(s))
                    .cloned()
                    .collect();
                compose.remove(&removed).await?;
                if !put.untouched.is_empty() {
                    note.push_str(&format!(
                        "; {} never replaced: left as started",
                        put.untouched.join(", ")
                    ));
                }
                if !put.back.is_empty() {
                    note.push_str(&format!(
                        "; {} put back from the compose files they were started with",
                        put.back.join(", ")
                    ));
                }
                if !put.stopped.is_empty() {
                    note.push_str(&format!(
                        " ({} stopped again, as it was)",
                        put.stopped.join(", ")
                    ));
                }
                if !put.refused.is_empty() {
                    note.push_str(&format!("; removed, not put back: {}", put.refused.join(", ")));
                }
                // What was put back stopped has no health to check.
                put.back.into_iter().filter(|s| !put.stopped.contains(s)).collect()
            }
        };
        if record.up_begun {
            // Then HAProxy back on the start-first services' old containers (they never
            // stopped), their new ones removed: after the other services, whose previous
            // version the old containers may need to pass HAProxy's check.
            let undone = self.undo_swaps(record).await?;
            for n in undone.notes {
                note.push_str(&format!("; {n}"));
            }
            back.extend(undone.back);
        }
        steward_failpoints::failpoint!("rolled_back");
        let previous_healthy = if back.is_empty() {
            None
        } else {
            Some(self.gate(&env, &back, "the previous").await.is_ok())
        };
        let data = DeployRolledBack {
            deploy_id: record.deploy_id,
            change: record.change.clone(),
            previous_commit: record.deployed_commit.clone(),
            services: record.services.clone(),
            reason: format!("{}{note}", record.reason.clone().unwrap_or(reason)),
            log_tail,
            previous_healthy,
        };
        let reason = data.reason.clone();
        self.records.conclude(v, DeployStep::RolledBack, Some(reason), data).await?;
        Ok(())
    }

    /// Every container of `services` passes `steward-probe`'s rounds within the health
    /// timeout (a container with no check of its own: runs without restarting for the
    /// grace). `Err`: why not, and the failing container's last log lines.
    pub async fn gate(
        &self,
        env: &str,
        services: &[String],
        which: &str,
    ) -> Result<(), (String, Vec<String>)> {
        let containers =
            self.service_containers(env, services).await.map_err(|e| (e.to_string(), vec![]))?;
        for service in services {
            let Some(c) = containers
                .iter()
                .find(|c| c.labels.get(crate::compose::SERVICE_LABEL) == Some(service))
            else {
                return Err((format!("{which} {service}: no container"), vec![]));
            };
            if let Err(why) = self.judge(&c.id, &c.labels).await {
                let logs = self.engine.logs_tail(&c.id, LOG_LINES).await.unwrap_or_default();
                return Err((format!("{which} {service}: {why}"), logs));
            }
        }
        Ok(())
    }

    pub(super) async fn judge(
        &self,
        id: &str,
        labels: &std::collections::HashMap<String, String>,
    ) -> Result<(), String> {
        let first = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
        let target = Target::from_labels(labels);
        let prober =
            Prober::new(self.engine.clone(), &self.cfg.probe).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.cfg.health_timeout;
        let mut last: String;
        loop {
            let view = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
            let round = prober.round(id, &view, &target, Some(first.restart_count)).await;
            match round.verdict {
                Verdict::Pass if target.has_own_check(&view) => return Ok(()),
                Verdict::Pass => break,
                // The container's own verdict ends the wait early.
                Verdict::Fail(f) if f.check.is_final() => return Err(f.reason),
                Verdict::Fail(f) => last = f.reason,
                Verdict::Pending(why) => last = why,
            }
            if Instant::now() >= deadline {
                return Err(format!("not healthy within {:?}: {}", self.cfg.health_timeout, last));
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        // Nothing of its own to check: only time tells.
        let until = Instant::now() + self.cfg.health_grace;
        loop {
            let view = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
            if let Verdict::Fail(f) = steward_probe::judge_state(&view, Some(first.restart_count)) {
                return Err(f.reason);
            }
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}
