//! A request: checked, claimed as the environment's record, then prepared (fetch, validate,
//! diff, images) without touching the stack; then approval or the start.

use steward_bus::Versioned;
use steward_events::records::{DeployRecord, DeployStep};
use steward_events::{
    BackupReason, BackupRequested, Change, DeployApproved, DeployFailed, DeployPending,
    DeployRejected, DeployRequested, DeployStarted, DeploySucceeded, Event,
};
use time::OffsetDateTime;

use super::queue::not_news;
use super::{Flow, FlowError};
use crate::compose::{HASH_LABEL, PROJECT_LABEL, SERVICE_LABEL};
use crate::config::Policy;
use crate::git::is_commit_id;

/// A refusal's event id is derived from its request's, so a redelivered request's refusal
/// is the same event (dropped by the stream's duplicate window).
const REFUSAL_ID_MASK: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0001;

impl Flow {
    /// `deploy.requested`: ignored when it is not news (an older or the same commit, an
    /// older request, a redelivery of what was done), else claimed and prepared.
    pub async fn on_requested(
        &self,
        event: &Event,
        req: &DeployRequested,
    ) -> Result<(), FlowError> {
        let change = &req.change;
        let env = self.cfg.environment(&change.environment);
        let refusal = match env {
            None => Some(format!("no environment {:?} is configured", change.environment)),
            Some(e) if e.branch != change.branch => Some(format!(
                "environment {} deploys branch {}, not {}",
                e.name, e.branch, change.branch
            )),
            Some(_) if !is_commit_id(&change.commit) => {
                Some(format!("{:?} is not a full commit id", change.commit))
            }
            Some(_) => None,
        };
        if let Some(reason) = refusal {
            // Nothing is claimed: the failure is the request's own answer (same id on a
            // redelivery, so the stream keeps one).
            tracing::warn!(environment = %change.environment, %reason, "deploy request refused");
            let mut failed = Event::caused_by(
                event,
                self.source.clone(),
                DeployFailed { deploy_id: None, change: change.clone(), reason, log_tail: vec![] },
            );
            failed.id = uuid::Uuid::from_u128(event.id.as_u128() ^ REFUSAL_ID_MASK);
            self.bus.publish(&failed).await?;
            return Ok(());
        }
        let key = change.environment.clone();
        let Some(_hold) = self.records.hold(&key) else {
            // A task of this process has the environment in hand: unless this is no news, it
            // waits in the slot (sent back to the stream, it could run out of deliveries
            // during a long health gate). A finished deployment is held only for a moment.
            let current = self.records.get(&key).await?;
            return match current {
                Some(v) if v.value.request_id == event.id || not_news(&v.value, event, change) => {
                    Ok(())
                }
                Some(v) if !v.value.step.is_terminal() => self.enqueue(event, change).await,
                _ => Err(FlowError::Busy(key)),
            };
        };
        let current = self.records.get(&key).await?;
        if let Some(v) = self.claim(event, change, current, false).await? {
            self.prepare(v).await?;
        }
        self.start_queued(&key).await
    }

    /// Claims the environment for `event` (a request for `change`; the caller holds the
    /// environment, whose record is `current`) and returns the new record, to be prepared;
    /// `None` when the request is not news, a redelivery, or waits in the slot (while a
    /// deployment is under way or another request waits, unless it is the one `from_queue`).
    pub(super) async fn claim(
        &self,
        event: &Event,
        change: &Change,
        mut current: Option<Versioned<DeployRecord>>,
        from_queue: bool,
    ) -> Result<Option<Versioned<DeployRecord>>, FlowError> {
        let key = change.environment.clone();
        if let Some(v) = current.clone() {
            let r = &v.value;
            let newer = r.request_id != event.id
                && event.time > r.requested_at
                && r.change.commit != change.commit;
            if newer && r.step == DeployStep::Pending {
                // A newer push replaces one still waiting for approval (nothing was touched):
                // the waiting one ends, and this one is claimed in its place.
                let reason = format!("superseded by {} before it was approved", change.commit);
                self.fail(v, reason, vec![]).await?;
                current = self.records.get(&key).await?;
            }
        }
        let mut deployed = None;
        if let Some(v) = &current {
            let r = &v.value;
            if r.request_id == event.id {
                // A redelivery of the request in hand: drive on whatever it left.
                self.drive(v.clone()).await?;
                return Ok(None);
            }
            if not_news(r, event, change) {
                tracing::info!(environment = %key, commit = %change.commit, "not news: an older or the same commit; ignored");
                return Ok(None);
            }
            if !from_queue && (!r.step.is_terminal() || self.queued(&key).await?.is_some()) {
                // One deployment of an environment at a time; the newest request waits.
                self.enqueue(event, change).await?;
                return Ok(None);
            }
            deployed = r.now_running().map(str::to_owned);
            if let Some(d) = &deployed {
                // An ancestor of what runs is older, whatever the request's time says (a
                // replay, a push of an old branch head): never a downgrade by accident.
                let dir = self.cfg.checkout_of(&key);
                if dir.join(".git").is_dir()
                    && self.git.is_ancestor(&dir, &change.commit, d).await.unwrap_or(false)
                {
                    tracing::info!(environment = %key, commit = %change.commit, running = %d, "an ancestor of the running commit; ignored");
                    return Ok(None);
                }
            }
        }
        let now = OffsetDateTime::now_utc();
        let record = DeployRecord {
            deploy_id: uuid::Uuid::now_v7(),
            change: change.clone(),
            deployed_commit: deployed,
            services: vec![],
            new_services: vec![],
            correlation_id: event.correlation_id,
            last_event_id: event.id,
            trace: event.trace.clone(),
            step: DeployStep::Preparing,
            requested_at: event.time,
            request_id: event.id,
            started_at: now,
            backup_deadline: None,
            approved_by: None,
            reason: None,
            interruptions: 0,
            outbox: vec![],
        };
        let revision = match &current {
            None => self.records.create(&key, &record).await?,
            Some(v) => self.records.update(&key, &record, v.revision).await?,
        };
        steward_failpoints::failpoint!("claimed:preparing");
        tracing::info!(environment = %key, commit = %change.commit, "deployment claimed");
        Ok(Some(Versioned { value: record, revision }))
    }

    /// Fetch, validate, diff and check images; the stack is not touched. A failure ends the
    /// deployment with `deploy.failed`.
    pub async fn prepare(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let env = v.value.change.environment.clone();
        let commit = v.value.change.commit.clone();
        let dir = self.cfg.checkout_of(&env);
        let compose = self.compose(&env);
        let prepared = async {
            self.git.fetch(&dir, &v.value.change.branch, &commit).await?;
            self.git.checkout(&dir, &commit).await?;
            let info = self.git.info(&dir, &commit).await?;
            compose.validate().await?;
            let hashes = compose.hashes().await?;
            Ok::<_, crate::command::CommandError>((info, hashes, compose.images().await?))
        }
        .await;
        let (info, hashes, images) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("{e}");
                return self.fail(v, reason, e.tail).await;
            }
        };
        let running = self.running_hashes(&env).await?;
        let mut services = vec![];
        let mut new_services = vec![];
        for (service, hash) in &hashes {
            match running.get(service) {
                Some(h) if h == hash => {}
                Some(_) => services.push(service.clone()),
                None => {
                    services.push(service.clone());
                    new_services.push(service.clone());
                }
            }
        }
        // The images it names exist here or in their registry (pulled now, so the apply
        // does not wait for them).
        let mut missing = vec![];
        for s in &services {
            if let Some(image) = images.get(s) {
                if !self.engine.has_image(image).await? {
                    missing.push(s.clone());
                }
            }
        }
        if !missing.is_empty() {
            if let Err(e) = compose.pull(&missing).await {
                let reason = format!(
                    "an image of {} is neither here nor in its registry: {e}",
                    missing.join(", ")
                );
                return self.fail(v, reason, e.tail).await;
            }
        }
        let mut record = v.value;
        record.change.author = record.change.author.or(Some(info.author));
        record.change.message = record.change.message.or(Some(info.subject));
        record.services = services;
        record.new_services = new_services;
        if record.services.is_empty() {
            tracing::info!(environment = %env, commit = %commit, "no service changes; recorded as deployed");
            let data = DeploySucceeded {
                deploy_id: record.deploy_id,
                change: record.change.clone(),
                previous_commit: record.deployed_commit.clone(),
                services: vec![],
                duration_ms: super::ms_since(record.started_at),
            };
            self.records
                .conclude(
                    Versioned { value: record, revision: v.revision },
                    DeployStep::Succeeded,
                    None,
                    data,
                )
                .await?;
            return Ok(());
        }
        let manual = self.cfg.environment(&env).is_some_and(|e| e.policy == Policy::Manual);
        if manual && record.approved_by.is_none() {
            let data = DeployPending {
                deploy_id: record.deploy_id,
                change: record.change.clone(),
                previous_commit: record.deployed_commit.clone(),
                services: record.services.clone(),
            };
            self.records.stage(&mut record, data);
            record.step = DeployStep::Pending;
            self.records.announce(record, v.revision).await?;
            return Ok(());
        }
        self.begin(Versioned { value: record, revision: v.revision }).await
    }

    /// `deploy.started`, then the backup or straight to the apply.
    pub async fn begin(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let mut record = v.value;
        let data = DeployStarted {
            deploy_id: record.deploy_id,
            change: record.change.clone(),
            previous_commit: record.deployed_commit.clone(),
            services: record.services.clone(),
        };
        self.records.stage(&mut record, data);
        // What runs now of the changed services is what the backup covers (their compose
        // project's databases come with them: the backup service's own rule).
        let running = self.running_containers(&record.change.environment, &record.services).await?;
        if self.cfg.backup && !running.is_empty() {
            let data = BackupRequested {
                reason: BackupReason::PreUpdate,
                containers: running,
                requested_by: Some(self.source.clone()),
            };
            self.records.stage(&mut record, data);
            record.step = DeployStep::AwaitingBackup;
            record.backup_deadline = Some(OffsetDateTime::now_utc() + self.cfg.backup_timeout);
            self.records.announce(record, v.revision).await?;
            return Ok(());
        }
        record.step = DeployStep::Applying;
        let v = self.records.announce(record, v.revision).await?;
        self.apply(v).await
    }

    /// `deploy.approved`: a pending deployment starts.
    pub async fn on_approved(&self, a: &DeployApproved) -> Result<(), FlowError> {
        let Some(v) = self.by_deploy_id(a.deploy_id).await? else {
            tracing::warn!(deploy = %a.deploy_id, "approval of an unknown deployment; ignored");
            return Ok(());
        };
        let key = v.value.change.environment.clone();
        let Some(_hold) = self.records.hold(&key) else { return Err(FlowError::Busy(key)) };
        let Some(v) = self.records.get(&key).await? else { return Ok(()) };
        if v.value.deploy_id != a.deploy_id || v.value.step != DeployStep::Pending {
            return Ok(());
        }
        let mut record = v.value;
        record.approved_by = Some(a.by.clone());
        tracing::info!(deploy = %record.deploy_id, by = %a.by, "deployment approved");
        self.begin(Versioned { value: record, revision: v.revision }).await?;
        self.start_queued(&key).await
    }

    /// `deploy.rejected`: a pending deployment ends with `deploy.failed`, nothing touched, and
    /// the next push waiting for the environment (if any) goes on. A rejection of a deployment
    /// no longer pending (approved meanwhile, superseded, replayed) changes nothing.
    pub async fn on_rejected(&self, r: &DeployRejected) -> Result<(), FlowError> {
        let Some(v) = self.by_deploy_id(r.deploy_id).await? else {
            tracing::warn!(deploy = %r.deploy_id, "rejection of an unknown deployment; ignored");
            return Ok(());
        };
        let key = v.value.change.environment.clone();
        let Some(_hold) = self.records.hold(&key) else { return Err(FlowError::Busy(key)) };
        let Some(v) = self.records.get(&key).await? else { return Ok(()) };
        if v.value.deploy_id != r.deploy_id || v.value.step != DeployStep::Pending {
            tracing::info!(deploy = %r.deploy_id, "rejection of a deployment not waiting for approval; ignored");
            return Ok(());
        }
        let why = r.reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
        tracing::info!(deploy = %r.deploy_id, by = %r.by, "deployment rejected");
        self.fail(v, format!("rejected by {}{why}; nothing was changed", r.by), vec![]).await?;
        self.start_queued(&key).await
    }

    /// Ends a deployment that touched nothing: `deploy.failed`, the checkout back on the
    /// running commit (so a human's `docker-compose` there sees what runs).
    pub async fn fail(
        &self,
        v: Versioned<DeployRecord>,
        reason: String,
        log_tail: Vec<String>,
    ) -> Result<(), FlowError> {
        tracing::error!(environment = %v.value.change.environment, %reason, "deployment failed");
        if let Some(running) = &v.value.deployed_commit {
            let dir = self.cfg.checkout_of(&v.value.change.environment);
            if let Err(e) = self.git.checkout(&dir, running).await {
                tracing::warn!(error = %e, "checkout of the running commit failed");
            }
        }
        let data = DeployFailed {
            deploy_id: Some(v.value.deploy_id),
            change: v.value.change.clone(),
            reason: reason.clone(),
            log_tail,
        };
        self.records.conclude(v, DeployStep::Failed, Some(reason), data).await?;
        Ok(())
    }

    /// Service → configuration hash of the environment's containers now.
    pub async fn running_hashes(
        &self,
        env: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, FlowError> {
        let project = self.cfg.project_of(env);
        let containers =
            self.engine.containers(|l| l.get(PROJECT_LABEL).is_some_and(|p| *p == project)).await?;
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                Some((c.labels.get(SERVICE_LABEL)?.clone(), c.labels.get(HASH_LABEL)?.clone()))
            })
            .collect())
    }

    /// Names of the environment's containers of `services`.
    pub async fn running_containers(
        &self,
        env: &str,
        services: &[String],
    ) -> Result<Vec<String>, FlowError> {
        Ok(self.service_containers(env, services).await?.into_iter().map(|c| c.name).collect())
    }

    /// The environment's containers of `services` (stopped ones included).
    pub async fn service_containers(
        &self,
        env: &str,
        services: &[String],
    ) -> Result<Vec<steward_engine::ListedContainer>, steward_engine::EngineError> {
        let project = self.cfg.project_of(env);
        self.engine
            .containers(|l| {
                l.get(PROJECT_LABEL).is_some_and(|p| *p == project)
                    && l.get(SERVICE_LABEL).is_some_and(|s| services.contains(s))
            })
            .await
    }
}
