//! What a restarted deployer, a redelivery or the sweep finds: every unfinished record that
//! no task holds is driven on one step.

use steward_bus::Versioned;
use steward_events::records::{DeployRecord, DeployStep};

use super::{Flow, FlowError};

impl Flow {
    /// Drives on every unfinished record no task holds; returns the environments that could
    /// not be (left to the sweep).
    pub async fn resume(&self) -> Vec<String> {
        let keys = match self.records.record_keys().await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list deployments");
                return vec![];
            }
        };
        let mut left = vec![];
        for key in keys {
            let Some(_hold) = self.records.hold(&key) else { continue };
            let result = match self.records.get(&key).await {
                Ok(Some(v)) => match self.drive(v).await {
                    Ok(()) => self.start_queued(&key).await,
                    Err(e) => Err(e),
                },
                Ok(None) => Ok(()),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = result {
                tracing::warn!(environment = %key, error = %e, "deployment not driven on; the sweep tries again");
                left.push(key);
            }
        }
        left
    }

    /// One step on from wherever `v` is (the caller holds it): publish the outbox; roll back
    /// what was between the apply and the verdict; prepare again, once, what was interrupted
    /// before anything was touched; expire a backup wait; start what waited for its window.
    pub async fn drive(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let v = self.records.flush(v).await?;
        let env = &v.value.change.environment;
        if !v.value.step.is_terminal()
            && self.cfg.environment(env).is_none()
            && self.cfg.repositories.len() > 1
        {
            // Which repository and compose project it came from is no longer known: nothing
            // is guessed (with one repository, it can only be that one's).
            let reason = format!(
                "environment {env} is no longer configured; its deployment is left as it was: finish it by hand"
            );
            return self.fail(v, reason, vec![]).await;
        }
        match v.value.step {
            DeployStep::Preparing => {
                if v.value.interruptions >= 1 {
                    return self
                        .fail(
                            v,
                            "interrupted twice while preparing; nothing was touched".into(),
                            vec![],
                        )
                        .await;
                }
                let mut record = v.value;
                record.interruptions = record.interruptions.saturating_add(1);
                let v = self.records.save(record, v.revision).await?;
                self.prepare(v).await
            }
            DeployStep::Pending => Ok(()),
            DeployStep::Deferred => self.start_if_due(v).await,
            DeployStep::AwaitingBackup => self.expire_backup(v).await,
            // Past its gate, only its old containers' removal was left.
            DeployStep::Applying | DeployStep::Gating if v.value.retiring => self.succeed(v).await,
            DeployStep::Applying | DeployStep::Gating => {
                self.roll_back(v, "the deployer stopped during the deployment".into(), vec![]).await
            }
            DeployStep::RollingBack => {
                let reason = v.value.reason.clone().unwrap_or_default();
                self.roll_back(v, reason, vec![]).await
            }
            DeployStep::Succeeded | DeployStep::RolledBack | DeployStep::Failed => Ok(()),
        }
    }

    /// The sweep: what nobody holds is driven on (outboxes, backup timeouts, kills, windows
    /// that opened).
    pub async fn sweep(&self) {
        let left = self.resume().await;
        if !left.is_empty() {
            tracing::debug!(?left, "sweep left deployments for later");
        }
    }
}
