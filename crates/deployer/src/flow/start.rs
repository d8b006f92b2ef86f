//! A request: checked, claimed as the environment's record, then prepared (fetch, validate,
//! diff, images) without touching the stack; then approval or the start.

use steward_bus::Versioned;
use steward_events::records::{DeployRecord, DeployStep};
use steward_events::{
    BackupReason, BackupRequested, Change, DeployApproved, DeployDeferred, DeployFailed,
    DeployPending, DeployPinRequested, DeployRejected, DeployRequested, DeployStarted,
    DeploySucceeded, Event, EventData,
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
/// The same for a push refused because a pin holds its environment.
const PINNED_ID_MASK: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0003;

/// Whether a request for `change` (a pin when `pin`) replaces the deployment `r` while it
/// still waits, nothing touched: for approval (a newer request for another commit), or for
/// its window (also a pin of the same commit: a pin does not wait). `Some(what r waited for)`.
pub(super) fn replaces_waiting(
    r: &DeployRecord,
    event: &Event,
    change: &Change,
    pin: bool,
) -> Option<&'static str> {
    let newer = r.request_id != event.id && event.time > r.requested_at;
    let other = r.change.commit != change.commit;
    match r.step {
        DeployStep::Pending if newer && other => Some("it was approved"),
        DeployStep::Deferred if newer && (other || pin) => Some("its window opened"),
        _ => None,
    }
}

impl Flow {
    /// `deploy.requested` (a push, polling): see [`Flow::on_request`].
    pub async fn on_requested(
        &self,
        event: &Event,
        req: &DeployRequested,
    ) -> Result<(), FlowError> {
        self.on_request(event, &req.change, None).await
    }

    /// `deploy.pin_requested` (`steward deploy ENV COMMIT`): the same flow and policy as a
    /// push, for a commit that must be on the environment's branch; see [`Flow::on_request`].
    pub async fn on_pin(&self, event: &Event, pin: &DeployPinRequested) -> Result<(), FlowError> {
        self.on_request(event, &self.pin_change(pin), Some(&pin.by)).await
    }

    /// The change a pin asks for (the branch is the environment's; none when it has none,
    /// which the request's checks refuse).
    fn pin_change(&self, pin: &DeployPinRequested) -> Change {
        Change {
            repository: self.cfg.repository_of(&pin.environment).shown(),
            branch: self
                .cfg
                .environment(&pin.environment)
                .map(|e| e.branch.clone())
                .unwrap_or_default(),
            environment: pin.environment.clone(),
            commit: pin.commit.clone(),
            author: None,
            message: None,
        }
    }

    /// What a request event (a push's or a pin's, as the queue keeps it) asks for, and who
    /// pins it when it is a pin.
    pub fn request_of(&self, event: &Event) -> Option<(Change, Option<String>)> {
        match &event.data {
            EventData::DeployRequested(r) => Some((r.change.clone(), None)),
            EventData::DeployPinRequested(p) => Some((self.pin_change(p), Some(p.by.clone()))),
            _ => None,
        }
    }

    /// A request for `change` (pinned by `pin`, when a human pins): ignored when it is not
    /// news (an older request, a redelivery of what was done; for a push also an older or the
    /// same commit), refused while a pin holds the environment (a push), else claimed and
    /// prepared.
    pub async fn on_request(
        &self,
        event: &Event,
        change: &Change,
        pin: Option<&str>,
    ) -> Result<(), FlowError> {
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
            return self.refuse(event, change, reason, REFUSAL_ID_MASK).await;
        }
        let key = change.environment.clone();
        let Some(_hold) = self.records.hold(&key) else {
            // A task of this process has the environment in hand: unless this is no news, it
            // waits in the slot (sent back to the stream, it could run out of deliveries
            // during a long health gate). A finished deployment is held only for a moment.
            let current = self.records.get(&key).await?;
            return match current {
                Some(v)
                    if v.value.request_id == event.id
                        || not_news(&v.value, event, change, pin.is_some()) =>
                {
                    Ok(())
                }
                Some(v) if pin.is_none() && v.value.is_pinned() => {
                    let r = &v.value;
                    let by = r.pinned_by.as_deref().unwrap_or_default();
                    self.refuse_pinned(event, change, &r.change.commit, by).await
                }
                Some(v) if !v.value.step.is_terminal() => self.enqueue(event, change, pin).await,
                _ => Err(FlowError::Busy(key)),
            };
        };
        let current = self.records.get(&key).await?;
        if let Some(v) = self.claim(event, change, pin, current, false).await? {
            self.prepare(v).await?;
        }
        self.start_queued(&key).await
    }

    /// Answers `event` (a request for `change`) with `deploy.failed` without claiming
    /// anything; its id is derived from the request's (with `mask`), so a redelivery's answer
    /// is the same event, dropped by the stream's duplicate window.
    async fn refuse(
        &self,
        event: &Event,
        change: &Change,
        reason: String,
        mask: u128,
    ) -> Result<(), FlowError> {
        let mut failed = Event::caused_by(
            event,
            self.source.clone(),
            DeployFailed { deploy_id: None, change: change.clone(), reason, log_tail: vec![] },
        );
        failed.id = uuid::Uuid::from_u128(event.id.as_u128() ^ mask);
        self.bus.publish(&failed).await?;
        Ok(())
    }

    /// A push while a pin of `pinned` by `by` holds its environment (or waits for it):
    /// refused, saying so, so that a pin is never undone silently.
    pub(super) async fn refuse_pinned(
        &self,
        event: &Event,
        change: &Change,
        pinned: &str,
        by: &str,
    ) -> Result<(), FlowError> {
        let env = &change.environment;
        let reason = format!(
            "{env} is pinned to {} by {by} (steward deploy): {} of {} is not deployed; `steward deploy {env} <the branch's head>` deploys the head and follows the branch again",
            pinned.get(..10).unwrap_or(pinned),
            change.short_commit(),
            change.branch,
        );
        tracing::warn!(environment = %env, commit = %change.commit, "a push while the environment is pinned; refused");
        self.refuse(event, change, reason, PINNED_ID_MASK).await
    }

    /// Claims the environment for `event` (a request for `change`; the caller holds the
    /// environment, whose record is `current`) and returns the new record, to be prepared;
    /// `None` when the request is not news, a redelivery, or waits in the slot (while a
    /// deployment is under way or another request waits, unless it is the one `from_queue`).
    pub(super) async fn claim(
        &self,
        event: &Event,
        change: &Change,
        pin: Option<&str>,
        mut current: Option<Versioned<DeployRecord>>,
        from_queue: bool,
    ) -> Result<Option<Versioned<DeployRecord>>, FlowError> {
        let key = change.environment.clone();
        if let Some(v) = current.clone() {
            let r = &v.value;
            let news = r.request_id != event.id && !not_news(r, event, change, pin.is_some());
            if news && pin.is_none() && r.is_pinned() {
                let by = r.pinned_by.as_deref().unwrap_or_default();
                self.refuse_pinned(event, change, &r.change.commit, by).await?;
                return Ok(None);
            }
            if let Some(before) = replaces_waiting(r, event, change, pin.is_some()) {
                // A newer request replaces one still waiting for approval or for its window
                // (nothing was touched): the waiting one ends, and this one is claimed in its
                // place.
                let by = match pin {
                    Some(by) => format!("a pin of {} by {by}", change.commit),
                    None => change.commit.clone(),
                };
                let reason = format!("superseded by {by} before {before}");
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
            if not_news(r, event, change, pin.is_some()) {
                tracing::info!(environment = %key, commit = %change.commit, "not news: an older or the same commit; ignored");
                return Ok(None);
            }
            if !from_queue && (!r.step.is_terminal() || self.queued(&key).await?.is_some()) {
                // One deployment of an environment at a time; the newest request waits.
                self.enqueue(event, change, pin).await?;
                return Ok(None);
            }
            deployed = r.now_running().map(str::to_owned);
            // A pin goes back on purpose; its commit's place in the branch is checked once
            // fetched.
            if let Some(d) = deployed.as_ref().filter(|_| pin.is_none()) {
                // An ancestor of what runs is older, whatever the request's time says (a
                // replay, a push of an old branch head): never a downgrade by accident.
                let dir = self.cfg.checkout_of(&key);
                if dir.join(".git").is_dir()
                    && self.git(&key).is_ancestor(&dir, &change.commit, d).await.unwrap_or(false)
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
            pre_commands: None,
            up_begun: false,
            prior: vec![],
            pre_done: vec![],
            swaps: vec![],
            retiring: false,
            correlation_id: event.correlation_id,
            last_event_id: event.id,
            trace: event.trace.clone(),
            step: DeployStep::Preparing,
            requested_at: event.time,
            request_id: event.id,
            started_at: now,
            backup_deadline: None,
            approved_by: None,
            pinned_by: pin.map(str::to_owned),
            by_hand: pin.is_some(),
            reason: None,
            interruptions: 0,
            outbox: vec![],
        };
        let revision = match &current {
            None => self.records.create(&key, &record).await?,
            Some(v) => self.records.update(&key, &record, v.revision).await?,
        };
        steward_failpoints::failpoint!("claimed:preparing");
        tracing::info!(environment = %key, commit = %change.commit, pinned_by = ?pin, "deployment claimed");
        Ok(Some(Versioned { value: record, revision }))
    }

    /// Fetch, validate, diff and check images; the stack is not touched. A failure ends the
    /// deployment with `deploy.failed`.
    pub async fn prepare(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let env = v.value.change.environment.clone();
        let commit = v.value.change.commit.clone();
        let dir = self.cfg.checkout_of(&env);
        let compose = self.compose(&env);
        let branch = v.value.change.branch.clone();
        let pinned = v.value.pinned_by.is_some();
        let prepared = async {
            self.git(&env).fetch(&dir, &branch, &commit).await?;
            let project = self.cfg.project_of(&env);
            crate::git::mark(&dir, self.cfg.compose_file_of(&env), &project)?;
            // A pin names any commit: it must be the branch's head or one of its ancestors
            // (a commit of another branch, or one a force-push removed, is refused).
            let head = self.git(&env).fetched_head(&dir, &branch).await?;
            if pinned && !self.git(&env).is_ancestor(&dir, &commit, &head).await? {
                return Err(crate::command::CommandError {
                    command: format!("git merge-base --is-ancestor {commit} origin/{branch}"),
                    reason: format!("{commit} is not on the history of branch {branch}"),
                    tail: vec![],
                    code: Some(1),
                });
            }
            self.git(&env).checkout(&dir, &commit).await?;
            let info = self.git(&env).info(&dir, &commit).await?;
            let config = compose.config().await?;
            let hashes = compose.hashes().await?;
            Ok::<_, crate::command::CommandError>((info, hashes, config, head))
        }
        .await;
        let (info, hashes, config, head) = match prepared {
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
        let images = config.images();
        let deployed = v.value.deployed_commit.as_deref();
        let services =
            self.without_running_images(&env, deployed, services, &new_services, &images).await?;
        let missing = self.absent_images(&services, &images).await?;
        if !missing.is_empty() {
            let (why, tail) = match compose.pull(&missing).await {
                Err(e) => (Some(e.to_string()), e.tail),
                // A pull that exits 0 without the image (docker-compose against Podman).
                Ok(out) => match self.absent_images(&missing, &images).await? {
                    absent if absent.is_empty() => (None, vec![]),
                    absent => (
                        Some(format!("`docker-compose pull` ended without {}", absent.join(", "))),
                        crate::command::tail(&format!("{}\n{}", out.stderr, out.stdout)),
                    ),
                },
            };
            if let Some(why) = why {
                let reason = format!(
                    "an image of {} is neither here nor in its registry: {why}",
                    missing.join(", ")
                );
                return self.fail(v, reason, tail).await;
            }
        }
        // A pre-deployment command that could not run is found now, before anything is
        // touched, not after the backup.
        let pre_commands = match super::commands::pre_commands(&config.labels(), &services) {
            Ok(commands) => commands,
            Err(reason) => return self.fail(v, reason, vec![]).await,
        };
        // So is a start-first service that cannot be swapped.
        let swaps = match self.swaps_of(&config, &services, &new_services) {
            Ok(swaps) => swaps,
            Err(reason) => return self.fail(v, reason, vec![]).await,
        };
        // The test runs the commit's compose file (its volumes, privileges and image): in an
        // environment that needs an approval, only once a human approved (`on_approved`),
        // never on a push alone.
        let manual = self.cfg.environment(&env).is_some_and(|e| e.policy == Policy::Manual);
        let held_back = manual && v.value.approved_by.is_none();
        if !services.is_empty() && !held_back {
            if let Err((reason, tail)) =
                self.test_commit(&env, &v.value.deploy_id, &config.labels()).await
            {
                return self.fail(v, reason, tail).await;
            }
        }
        let mut record = v.value;
        if record.pinned_by.is_some() && head == commit {
            // Pinning the head is following the branch again: no pin holds pushes back.
            tracing::info!(environment = %env, commit = %commit, "pinned to the branch's head: the environment follows its branch again");
            record.pinned_by = None;
        }
        record.change.author = record.change.author.or(Some(info.author));
        record.change.message = record.change.message.or(Some(info.subject));
        record.services = services;
        record.new_services = new_services;
        record.pre_commands = Some(pre_commands);
        record.swaps = swaps;
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
        if manual && record.approved_by.is_none() {
            let data = DeployPending {
                deploy_id: record.deploy_id,
                change: record.change.clone(),
                previous_commit: record.deployed_commit.clone(),
                services: record.services.clone(),
                pinned_by: record.pinned_by.clone(),
            };
            self.records.stage(&mut record, data);
            record.step = DeployStep::Pending;
            self.records.announce(record, v.revision).await?;
            return Ok(());
        }
        self.begin_or_defer(Versioned { value: record, revision: v.revision }).await
    }

    /// When the deployment `r` would wait for its environment's window: `None` when it may
    /// start now. A pin never waits: a human asked for it now (most often a rollback), as an
    /// updater's rollback asked by a human does not.
    pub fn waits_until(&self, r: &DeployRecord) -> Option<chrono::NaiveDateTime> {
        if r.by_hand {
            return None;
        }
        let env = self.cfg.environment(&r.change.environment)?;
        env.waits_until(chrono::Local::now().naive_local())
    }

    /// Starts now, or waits in `Deferred` (`deploy.deferred`, nothing touched) until the
    /// sweep finds the environment's window open ([`Flow::start_if_due`]).
    pub async fn begin_or_defer(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        let Some(until) = self.waits_until(&v.value) else { return self.begin(v).await };
        let mut record = v.value;
        let opens = until.format("%Y-%m-%d %H:%M").to_string();
        let env = &record.change.environment;
        let reason = format!("waiting: the deployment window of {env} opens {opens}");
        tracing::info!(environment = %env, commit = %record.change.commit, %reason, "deployment deferred");
        let data = DeployDeferred {
            deploy_id: record.deploy_id,
            change: record.change.clone(),
            previous_commit: record.deployed_commit.clone(),
            services: record.services.clone(),
            opens,
            approved_by: record.approved_by.clone(),
        };
        self.records.stage(&mut record, data);
        record.step = DeployStep::Deferred;
        record.reason = Some(reason);
        self.records.announce(record, v.revision).await?;
        Ok(())
    }

    /// Starts a deferred deployment once its window is open (the caller holds it).
    pub(super) async fn start_if_due(&self, v: Versioned<DeployRecord>) -> Result<(), FlowError> {
        if self.waits_until(&v.value).is_some() {
            return Ok(());
        }
        tracing::info!(environment = %v.value.change.environment, commit = %v.value.change.commit, "the deployment window is open; the deferred deployment starts");
        let mut record = v.value;
        record.reason = None;
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
        record.begin_apply();
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
        // Taken, nothing done yet: a kill here leaves the approval to be delivered again.
        steward_failpoints::failpoint!("approving");
        let mut v = v;
        if v.value.approved_by.is_none() {
            // Saved before the repository's test (minutes, up to its timeout): from here the
            // CLI refuses a second decision and the approval page does not call it lost, and a
            // rejection arriving meanwhile is ignored (`on_rejected`).
            let mut record = v.value;
            record.approved_by = Some(a.by.clone());
            v = self.records.save(record, v.revision).await?;
        }
        tracing::info!(deploy = %v.value.deploy_id, by = %a.by, "deployment approved");
        // The repository's test, held back until now (a kill during it: the approval is
        // delivered again and the test runs again, its container removed first).
        let tested = match self.compose(&key).config().await {
            Ok(config) => self.test_commit(&key, &v.value.deploy_id, &config.labels()).await,
            Err(e) => Err((e.to_string(), e.tail)),
        };
        if let Err((reason, tail)) = tested {
            self.fail(v, reason, tail).await?;
            return self.start_queued(&key).await;
        }
        self.begin_or_defer(v).await?;
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
        // Waiting for a human, or (approved or automatic) for its window: nothing touched yet,
        // so a rejection can still end it.
        let waiting = match v.value.step {
            DeployStep::Pending => v.value.approved_by.is_none(),
            DeployStep::Deferred => true,
            _ => false,
        };
        if v.value.deploy_id != r.deploy_id || !waiting {
            tracing::info!(deploy = %r.deploy_id, "rejection of a deployment not waiting for approval or its window (approved and under way, or over); ignored");
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
            if let Err(e) = self.git(&v.value.change.environment).checkout(&dir, running).await {
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

    /// The environment's containers of `services` (stopped ones included; the engine leaves
    /// out one-offs of `docker-compose run`, such as a test or a migration: not the service).
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

    /// Those of `services` whose image (`images`: each service's) the engine does not have.
    async fn absent_images(
        &self,
        services: &[String],
        images: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<String>, FlowError> {
        let mut absent = vec![];
        for s in services {
            if let Some(image) = images.get(s) {
                if !self.engine.has_image(image).await? {
                    absent.push(s.clone());
                }
            }
        }
        Ok(absent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_events::DeployPinRequested;

    fn waiting(step: DeployStep, commit: char, requested: Event) -> DeployRecord {
        let at =
            requested.time.format(&time::format_description::well_known::Rfc3339).expect("formats");
        serde_json::from_value(serde_json::json!({
            "deploy_id": uuid::Uuid::new_v4(), "repository": "git://127.0.0.1/app",
            "branch": "dev", "environment": "dev", "commit": commit.to_string().repeat(40),
            "correlation_id": requested.id, "last_event_id": requested.id,
            "step": step, "requested_at": at, "request_id": requested.id, "started_at": at,
        }))
        .expect("a deploy record")
    }

    fn change(commit: char) -> Change {
        Change {
            repository: "git://127.0.0.1/app".into(),
            branch: "dev".into(),
            environment: "dev".into(),
            commit: commit.to_string().repeat(40),
            author: None,
            message: None,
        }
    }

    fn request(after: &Event, seconds: i64) -> Event {
        let data = DeployPinRequested {
            environment: "dev".into(),
            commit: "c".repeat(40),
            by: "t".into(),
        };
        let mut e = Event::new("test", data);
        e.time = after.time + time::Duration::seconds(seconds);
        e
    }

    #[test]
    fn a_newer_request_replaces_a_waiting_deployment_a_pin_also_of_the_same_commit() {
        let first = Event::new(
            "test",
            DeployPinRequested {
                environment: "dev".into(),
                commit: "a".repeat(40),
                by: "t".into(),
            },
        );
        let (newer, older) = (request(&first, 5), request(&first, -5));
        let pending = waiting(DeployStep::Pending, 'a', first.clone());
        let deferred = waiting(DeployStep::Deferred, 'a', first.clone());
        let (same, other) = (change('a'), change('b'));
        // Waiting for approval: a newer request for another commit.
        assert_eq!(replaces_waiting(&pending, &newer, &other, false), Some("it was approved"));
        assert_eq!(replaces_waiting(&pending, &newer, &same, true), None);
        assert_eq!(replaces_waiting(&pending, &older, &other, false), None);
        // Waiting for its window: also a pin of the same commit (a pin does not wait).
        assert_eq!(replaces_waiting(&deferred, &newer, &other, false), Some("its window opened"));
        assert_eq!(replaces_waiting(&deferred, &newer, &same, true), Some("its window opened"));
        assert_eq!(replaces_waiting(&deferred, &newer, &same, false), None);
        assert_eq!(replaces_waiting(&deferred, &older, &other, true), None);
        assert_eq!(replaces_waiting(&deferred, &first, &other, false), None, "a redelivery");
        // Under way: nothing replaces it (the request waits in the slot).
        for step in [DeployStep::Preparing, DeployStep::AwaitingBackup, DeployStep::Gating] {
            assert_eq!(
                replaces_waiting(&waiting(step, 'a', first.clone()), &newer, &other, true),
                None
            );
        }
    }
}
