//! Records services keep in KV buckets that other participants read (the CLI's `status`).
//! Pure data like the events: the schema is shared, the bucket access lives in `bus`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{Digest, Event, TraceContext};

/// KV bucket (within the namespace) of [`WatchRecord`]s, keyed by container name (on the server
/// `<host>.<container>` under host routing: `steward_bus::StateStore` scopes an agent's keys).
pub const WATCH_BUCKET: &str = "WATCHER";
/// KV bucket of the health service's tracks (a restarted health service neither repeats nor
/// forgets a `health.failed`).
pub const HEALTH_BUCKET: &str = "HEALTH";
/// The watcher's registries failing in a row (key: hex of the registry host), so a failing
/// registry is told once per episode across restarts.
pub const REGISTRY_EPISODES_BUCKET: &str = "WATCH_REGISTRIES";
/// KV bucket of the notifier's outbox.
pub const OUTBOX_BUCKET: &str = "NOTIFY_OUTBOX";
/// KV bucket of the image update approval links already used, by update id (the updater's).
pub const USED_LINKS_BUCKET: &str = "APPROVAL_LINKS";
/// KV bucket of the deployment approval links already used, by deployment id (the
/// deployer's: a bucket of its own rather than keys in the updater's, so each service may
/// write only its own claims).
pub const USED_DEPLOY_LINKS_BUCKET: &str = "DEPLOY_LINKS";
/// KV bucket of the newer images the notifier has reported, per channel, image, tag and
/// digest: each is reported once, also when its containers are announced at different times.
pub const ANNOUNCED_BUCKET: &str = "NOTIFY_ANNOUNCED";

/// What the watcher knows about one watched container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// Container name.
    pub container: String,
    /// Image reference it runs.
    pub image: String,
    /// Its update policy label (`automatic`, `manual`, `notify`).
    pub policy: String,
    /// Digest it runs (from the local image's repo digests).
    pub running_digest: Option<Digest>,
    /// Newest digest the registry offers (for the tag, or the tracked newer tag).
    pub newest_digest: Option<Digest>,
    /// With tag tracking: the newer tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_tag: Option<String>,
    /// When `newest_digest` was first seen (for the minimum-age rule).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub newest_seen_at: Option<OffsetDateTime>,
    /// The last digest an `image.updated` was published for (never published twice).
    pub reported_digest: Option<Digest>,
    /// Last check.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// Why the last check failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The host whose engine runs the container (`STEWARD_HOST`); none in records from before
    /// hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// KV bucket (within the namespace) of [`UpdateRecord`]s, keyed by container name (host-scoped
/// under host routing, as [`WATCH_BUCKET`]): one update of a container at a time.
pub const UPDATE_BUCKET: &str = "UPDATES";

/// KV bucket of newer images that arrived while an update of their container was under way,
/// by container name: the newest one only, applied once that update has ended.
pub const UPDATE_QUEUE_BUCKET: &str = "UPDATE_QUEUE";

/// A newer image waiting for the update in progress of its container to end (an
/// `image.updated` is announced once per digest: dropped, it would never come again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedNews {
    /// The `image.updated` event, as published (one).
    #[serde(with = "outbox")]
    pub events: Vec<Event>,
}

/// Where an update is. The updater advances it only with compare-and-set writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStep {
    /// Manual policy: waiting for `update.approved` / `update.rejected`.
    Pending,
    /// Waiting for its minimum age or its maintenance window.
    Deferred,
    /// `backup.requested` published; waiting for its `backup.done` / `backup.failed`.
    AwaitingBackup,
    /// Pulling and swapping containers.
    Swapping,
    /// The new container runs; the health gate decides.
    Gating,
    /// The updater replacing its own container: the successor runs next to it and finishes
    /// the update itself, or is removed if it does not take over in time.
    HandingOver,
    /// Terminal: the new image runs and is healthy.
    Succeeded,
    /// Terminal: the old image runs again.
    RolledBack,
    /// Terminal: stopped before the container was touched.
    Failed,
    /// Terminal: a human said no.
    Rejected,
}

impl UpdateStep {
    /// No further step follows.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::RolledBack | Self::Failed | Self::Rejected)
    }
}

/// One update of one container, as persisted between events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRecord {
    /// The update, minted by the updater when it claims the container (never an id a
    /// publisher chose).
    pub update_id: Uuid,
    /// Container name.
    pub container: String,
    /// Image reference the container runs.
    pub image: String,
    /// Digest before.
    pub from_digest: Digest,
    /// Digest to apply.
    pub to_digest: Digest,
    /// With tag tracking, the newer tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
    /// Policy at the time.
    pub policy: String,
    /// The flow's correlation id.
    pub correlation_id: Uuid,
    /// The last event of this flow (causation of the next).
    pub last_event_id: Uuid,
    /// The trace context of the last event staged: a decision made outside a traced span
    /// (`steward approve`, the approval page) joins the flow's trace with it.
    #[serde(default, skip_serializing_if = "TraceContext::is_empty")]
    pub trace: TraceContext,
    /// Where it is.
    pub step: UpdateStep,
    /// When the update began.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Not before this time (minimum age of the new digest).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    /// Until when a requested backup is waited for.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub backup_deadline: Option<OffsetDateTime>,
    /// The container before the swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_id: Option<String>,
    /// The container after the swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_id: Option<String>,
    /// Why it ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who approved a manual update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Until when the approval link of a pending update is valid: the updater mints the
    /// same link again from it when the notifier asks (the link itself is never stored).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub approval_expires: Option<OffsetDateTime>,
    /// Whether the reminder of a pending update near its link's expiry was decided.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval_reminded: bool,
    /// The `image.updated` that started it (its redelivery finds this update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub news_id: Option<Uuid>,
    /// When the `image.updated` that started it was published: a replayed or redelivered
    /// older one never replaces a newer update.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub news_time: Option<OffsetDateTime>,
    /// Events decided with this step and not yet confirmed published (a transactional
    /// outbox): the record is written first, then they are published with these ids (the
    /// stream drops a repeat within its duplicate window), then cleared. Whoever finds them
    /// later (a restart, a redelivery, the sweep) publishes them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "outbox")]
    pub outbox: Vec<Event>,
    /// Containers in the old container's network namespace that were running when the swap
    /// began: whatever the outcome (and however often the updater is killed on the way), they
    /// run again at the end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependents: Vec<String>,
    /// Restarts that found this update before its swap; the second one ends it, so an update
    /// that kills the updater cannot do so forever.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interruptions: u32,
    /// The running and new release as the `image.updated` said (the approval page shows them).
    #[serde(flatten)]
    pub versions: crate::Versions,
    /// An update, or a `steward rollback` (run through the same steps).
    #[serde(default, skip_serializing_if = "crate::UpdateKind::is_update")]
    pub kind: crate::UpdateKind,
    /// Who asked for a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The digest the container ran before its last successful update, carried from record
    /// to record (a failed later update does not lose it): what `steward rollback` brings
    /// back. See [`UpdateRecord::rollback_target`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<Digest>,
    /// A succeeded update whose compose project is still to be told the new tag
    /// (`update.written_back` not yet decided): set with the success, cleared with that
    /// event, so a kill between the two writes it on the next start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub write_back: bool,
    /// The host whose engine runs the container (the updater's `STEWARD_HOST`); none in
    /// records from before hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A start-first swap: the HAProxy switch, saved before HAProxy is touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxySwitch>,
}

/// The HAProxy part of a start-first swap: which server serves before and after, and whether
/// traffic was moved. Until `switched`, an interrupted swap is rolled back (HAProxy switched
/// back to `old_server`, the new container removed); once `switched`, it is finished forward
/// (the new container passed its gate and serves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxySwitch {
    /// The admin socket.
    pub socket: String,
    /// The backend.
    pub backend: String,
    /// The server of the old container, and its address (`IP:PORT`).
    pub old_server: String,
    /// Its address.
    pub old_addr: String,
    /// The server of the new container (the other of `<server>` / `<server>-b`).
    pub new_server: String,
    /// The new container's address, once it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_addr: Option<String>,
    /// HAProxy serves the new container; the old one may be stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switched: bool,
}

impl UpdateRecord {
    /// A new update of `u.container` on `host` from the `image.updated` event `news`, at
    /// `step`.
    pub fn from_news(
        (update_id, host): (Uuid, Option<String>),
        news: &Event,
        u: &crate::ImageUpdated,
        policy: &str,
        step: UpdateStep,
    ) -> Self {
        Self {
            new_tag: u.new_tag.clone(),
            news_time: Some(news.time),
            versions: u.versions.clone(),
            ..Self::fresh(
                (update_id, host),
                news,
                (&u.container, &u.image),
                (&u.current_digest, &u.new_digest),
                policy,
                step,
            )
        }
    }

    /// A new update of `container` (created from `image`) on `host` from digest `from` to
    /// `to`, in the flow of `cause`, at `step`, with nothing else decided yet: the one place
    /// that lists what a fresh record holds.
    pub fn fresh(
        (update_id, host): (Uuid, Option<String>),
        cause: &Event,
        (container, image): (&str, &str),
        (from, to): (&Digest, &Digest),
        policy: &str,
        step: UpdateStep,
    ) -> Self {
        Self {
            update_id,
            container: container.to_owned(),
            image: image.to_owned(),
            from_digest: from.clone(),
            to_digest: to.clone(),
            new_tag: None,
            policy: policy.to_owned(),
            correlation_id: cause.correlation_id,
            last_event_id: cause.id,
            trace: cause.trace.clone(),
            step,
            started_at: OffsetDateTime::now_utc(),
            not_before: None,
            backup_deadline: None,
            old_id: None,
            new_id: None,
            reason: None,
            approved_by: None,
            approval_expires: None,
            approval_reminded: false,
            news_id: Some(cause.id),
            news_time: None,
            outbox: vec![],
            dependents: vec![],
            interruptions: 0,
            versions: Default::default(),
            kind: crate::UpdateKind::Update,
            requested_by: None,
            previous_digest: None,
            write_back: false,
            host,
            haproxy: None,
        }
    }

    /// What `steward rollback` brings back once this update is over: the digest the container
    /// ran before its last successful update. A successful update's is its `from_digest`; a
    /// successful rollback's is none (the container runs it again); otherwise the one carried.
    pub fn rollback_target(&self) -> Option<&Digest> {
        match (self.step, self.kind) {
            (UpdateStep::Succeeded, crate::UpdateKind::Update) => Some(&self.from_digest),
            (UpdateStep::Succeeded, crate::UpdateKind::Rollback) => None,
            _ => self.previous_digest.as_ref(),
        }
    }
}

/// KV bucket of [`DeployRecord`]s, keyed by environment: one deployment of an environment at
/// a time, and what it runs (written by the deployer only).
pub const DEPLOY_BUCKET: &str = "DEPLOYS";

/// Where a deployment is. The deployer advances it only with compare-and-set writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStep {
    /// Claimed: fetching the commit and validating it (nothing touched yet).
    Preparing,
    /// Manual environment: waiting for `deploy.approved`.
    Pending,
    /// A push's deployment (approved, in a manual environment) waiting for its environment's
    /// deployment window; the sweep starts it when the window opens (nothing touched yet).
    Deferred,
    /// `backup.requested` published; waiting for its outcome.
    AwaitingBackup,
    /// Recreating the changed services from the commit's definitions.
    Applying,
    /// The changed services run; the health gate decides.
    Gating,
    /// Putting the previous commit's definitions back.
    RollingBack,
    /// Terminal: the commit runs and is healthy.
    Succeeded,
    /// Terminal: the previous commit's definitions run again.
    RolledBack,
    /// Terminal: stopped before any service was touched.
    Failed,
}

impl DeployStep {
    /// No further step follows.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::RolledBack | Self::Failed)
    }

    /// The step as the record, its failpoints and logs name it (`applying`, `rolling_back`).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// The deployment of one environment, as persisted between events (the record is the
/// decision: its outbox holds the events it decided until they are published).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// The deployment, minted by the deployer when it claims the environment.
    pub deploy_id: Uuid,
    /// What is being deployed.
    #[serde(flatten)]
    pub change: crate::Change,
    /// The commit the environment runs, as far as the deployer made it: the last commit that
    /// succeeded (carried from record to record; a failed or rolled back one keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_commit: Option<String>,
    /// The services whose definition changes (only these are recreated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Of those, the ones that did not exist in the deployed commit (a rollback removes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_services: Vec<String>,
    /// The changed services' pre-deployment commands (`steward.deploy.pre`), in the order they
    /// run before any of them is recreated: read with the rest of the commit's configuration
    /// when it was prepared (the commit does not change; the apply needs no second parse).
    /// `None`: prepared by a deployer that did not keep them; the apply reads them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_commands: Option<Vec<PreCommand>>,
    /// Whether the new version's `up` may have begun: saved just before it, after the
    /// pre-deployment commands. A rollback of a deployment that never got there leaves the
    /// running containers alone (on a first deployment they may be a stack started by hand,
    /// which the rollback would otherwise remove). Absent from the records of a deployer that
    /// did not keep it: read as begun, the rollback it would have done.
    #[serde(default = "begun")]
    pub up_begun: bool,
    /// An environment's first deployment (no deployed commit): the containers of the changed
    /// services it found running and did not make (a stack started by hand), read just before
    /// its `up`, so that a rollback can make them again from their own compose files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prior: Vec<PriorService>,
    /// The services whose pre-deployment command ran to its end, each saved as it ended: what
    /// they changed stays whatever the rollback does, and its reason says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_done: Vec<String>,
    /// The changed services deployed start-first behind HAProxy (a running container of them
    /// labelled `steward.update.strategy=start-first` in the commit), as the commit's labels
    /// name them when it was prepared; planned, made and switched one by one during the apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swaps: Vec<DeploySwap>,
    /// The deployment passed its gate and its swaps' old containers are being removed: a
    /// restart finishes that and concludes it succeeded (before this, a restart rolls back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retiring: bool,
    /// The flow's correlation id (the request's).
    pub correlation_id: Uuid,
    /// The last event of this flow (causation of the next).
    pub last_event_id: Uuid,
    /// The trace context of the last event staged (see [`UpdateRecord::trace`]).
    #[serde(default, skip_serializing_if = "TraceContext::is_empty")]
    pub trace: TraceContext,
    /// Where it is.
    pub step: DeployStep,
    /// When the request was published: an older request never replaces a newer deployment.
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    /// The request's event id (its redelivery finds this deployment).
    pub request_id: Uuid,
    /// When the deployment was claimed.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Until when a requested backup is waited for.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub backup_deadline: Option<OffsetDateTime>,
    /// Who approved a manual deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// Who pinned the environment to this commit (`deploy.pin_requested` of a commit behind
    /// its branch's head); see [`DeployRecord::is_pinned`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_by: Option<String>,
    /// A human's pin (also of the branch's head, which clears `pinned_by`): it does not wait
    /// for the environment's deployment window.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_hand: bool,
    /// Why it ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Restarts that found it before anything was touched; the second one ends it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interruptions: u32,
    /// Events decided and not yet confirmed published (see [`UpdateRecord::outbox`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "outbox")]
    pub outbox: Vec<Event>,
}

impl DeployRecord {
    /// The changed services recreated in place (`up -d`): all but the start-first swaps.
    pub fn plain_services(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|s| !self.swaps.iter().any(|w| w.service == **s))
            .cloned()
            .collect()
    }
}

/// One service's start-first swap in a deployment: its container made beside the old one by
/// compose (`--scale SERVICE=2 --no-recreate`), gated, HAProxy switched to it; the old one is
/// removed only once the whole deployment passed its gate. Until then a rollback switches
/// HAProxy back to the old container (which never stopped) and removes the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySwap {
    /// The compose service.
    pub service: String,
    /// The HAProxy backend serving it (`steward.haproxy.backend`).
    pub backend: String,
    /// Its server in the backend (`steward.haproxy.server`; it alternates with `<server>-b`).
    pub server: String,
    /// The port it serves on in its network (`steward.haproxy.port`).
    pub port: u16,
    /// The network HAProxy reaches it on (`steward.haproxy.network`; `None`: its only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The container serving before the deployment, once planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_id: Option<String>,
    /// The container compose made from the commit's definition, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_id: Option<String>,
    /// The HAProxy side, planned with `old_id` (before anything is touched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxySwitch>,
}

/// A service's container as compose made it outside the deployer: its project directory,
/// compose files and configuration hash (compose's own labels on the container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorService {
    /// The compose service.
    pub service: String,
    /// The container's id: while it is still the service's container, the deployment did
    /// not replace it, and the rollback leaves it alone.
    pub container: String,
    /// The project directory it was made in.
    pub working_dir: String,
    /// The compose files it was made from.
    pub config_files: Vec<String>,
    /// The hash of the configuration it was made from: it is made again only while its files
    /// still give that configuration.
    pub config_hash: String,
    /// Whether it ran: one stopped by hand is put back stopped (records from before this
    /// field: running, as the rollback then made them).
    #[serde(default = "running")]
    pub running: bool,
}

fn running() -> bool {
    true
}

/// A service's pre-deployment command in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreCommand {
    /// The compose service.
    pub service: String,
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
}

impl DeployRecord {
    /// Moves it to `Applying` with nothing of the apply done yet: a record an older deployer
    /// kept waiting (pending, deferred, awaiting its backup) has no marks and would read as
    /// applied ([`DeployRecord::up_begun`]).
    pub fn begin_apply(&mut self) {
        self.step = DeployStep::Applying;
        self.up_begun = false;
        self.prior.clear();
        self.pre_done.clear();
    }

    /// The commit the environment runs once this record is over: its own after a success,
    /// else the one carried.
    pub fn now_running(&self) -> Option<&str> {
        match self.step {
            DeployStep::Succeeded => Some(&self.change.commit),
            _ => self.deployed_commit.as_deref(),
        }
    }

    /// Whether the environment holds a pinned commit: a pin under way or running. A pin that
    /// did not end running its commit (refused, rejected, rolled back) holds nothing: the
    /// environment follows its branch again.
    pub fn is_pinned(&self) -> bool {
        self.pinned_by.is_some()
            && !matches!(self.step, DeployStep::Failed | DeployStep::RolledBack)
    }
}

/// A record that carries the events it decided (a transactional outbox) until they are
/// published, kept by `steward_bus::RecordStore` (save by compare-and-set, publish with their
/// own ids, clear). Pure accessors: the machinery is the store's.
pub trait Outboxed {
    /// The record's key in its bucket.
    fn key(&self) -> String;
    /// Whether `key` of the record's bucket holds a record of this type (a bucket may keep
    /// other values beside, under keys of their own shape).
    fn is_key(key: &str) -> bool {
        let _ = key;
        true
    }
    /// Events decided and not yet confirmed published.
    fn outbox(&self) -> &[Event];
    /// The same, to stage into or clear.
    fn outbox_mut(&mut self) -> &mut Vec<Event>;
    /// The failpoint passed once the record is saved, `saved:<step>` (the crash tests kill at
    /// it by name: it never changes).
    fn saved_point(&self) -> String;
}

/// An [`Outboxed`] record of a flow (the updater's [`UpdateRecord`], the deployer's
/// [`DeployRecord`]): its events are one correlated chain, and it ends at a terminal step.
pub trait FlowRecord: Outboxed {
    /// Where the flow is.
    type Step: Copy;
    /// The flow's correlation id.
    fn correlation_id(&self) -> Uuid;
    /// The last event of the flow (the causation of the next one staged).
    fn last_event_id_mut(&mut self) -> &mut Uuid;
    /// The trace context of the last event staged (that of the next one, if it is staged
    /// outside a traced span).
    fn trace_mut(&mut self) -> &mut TraceContext;
    /// Ends the flow: its terminal `step` and why.
    fn end(&mut self, step: Self::Step, reason: Option<String>);
}

impl Outboxed for UpdateRecord {
    fn key(&self) -> String {
        self.container.clone()
    }
    fn outbox(&self) -> &[Event] {
        &self.outbox
    }
    fn outbox_mut(&mut self) -> &mut Vec<Event> {
        &mut self.outbox
    }
    fn saved_point(&self) -> String {
        // The step's Debug name in lower case (`saved:awaitingbackup`): the name the updater's
        // points always had.
        format!("saved:{:?}", self.step).to_lowercase()
    }
}

impl FlowRecord for UpdateRecord {
    type Step = UpdateStep;
    fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }
    fn last_event_id_mut(&mut self) -> &mut Uuid {
        &mut self.last_event_id
    }
    fn trace_mut(&mut self) -> &mut TraceContext {
        &mut self.trace
    }
    fn end(&mut self, step: UpdateStep, reason: Option<String>) {
        debug_assert!(step.is_terminal());
        self.step = step;
        self.reason = reason;
    }
}

impl Outboxed for DeployRecord {
    fn key(&self) -> String {
        self.change.environment.clone()
    }
    fn is_key(key: &str) -> bool {
        // Environment names have no dot; `<environment>.queued` is a [`QueuedDeploy`].
        !key.contains('.')
    }
    fn outbox(&self) -> &[Event] {
        &self.outbox
    }
    fn outbox_mut(&mut self) -> &mut Vec<Event> {
        &mut self.outbox
    }
    fn saved_point(&self) -> String {
        // The step's wire name (`saved:awaiting_backup`).
        format!("saved:{}", self.step.name())
    }
}

impl FlowRecord for DeployRecord {
    type Step = DeployStep;
    fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }
    fn last_event_id_mut(&mut self) -> &mut Uuid {
        &mut self.last_event_id
    }
    fn trace_mut(&mut self) -> &mut TraceContext {
        &mut self.trace
    }
    fn end(&mut self, step: DeployStep, reason: Option<String>) {
        debug_assert!(step.is_terminal());
        self.step = step;
        self.reason = reason;
    }
}

/// The newest `deploy.requested` that came while its environment's deployment was under way,
/// kept in the `DEPLOYS` bucket under [`QueuedDeploy::key_of`] (written by the deployer
/// without holding the environment's record, so a deployment in hand is never disturbed). It
/// starts once that deployment ends; a newer request takes its place, and the one it displaces
/// is concluded with `deploy.failed` (superseded), staged in this slot's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedDeploy {
    /// The environment.
    pub environment: String,
    /// The request waiting, as published.
    #[serde(with = "one_event")]
    pub request: Event,
    /// Events decided and not yet confirmed published (the displaced requests' ends).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "outbox")]
    pub outbox: Vec<Event>,
}

impl QueuedDeploy {
    /// The slot's key: `<environment>.queued` (environment names have no dot).
    pub fn key_of(environment: &str) -> String {
        format!("{environment}.queued")
    }
}

impl Outboxed for QueuedDeploy {
    fn key(&self) -> String {
        Self::key_of(&self.environment)
    }
    fn is_key(key: &str) -> bool {
        key.ends_with(".queued")
    }
    fn outbox(&self) -> &[Event] {
        &self.outbox
    }
    fn outbox_mut(&mut self) -> &mut Vec<Event> {
        &mut self.outbox
    }
    fn saved_point(&self) -> String {
        "saved:queued".into()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// [`DeployRecord::up_begun`] of a record that does not say.
fn begun() -> bool {
    true
}

/// The outbox as the events' own wire form, so a record holds exactly what is published.
mod outbox {
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    use crate::Event;

    pub fn serialize<S: Serializer>(events: &[Event], s: S) -> Result<S::Ok, S::Error> {
        let mut raw = Vec::with_capacity(events.len());
        for e in events {
            let bytes = e.encode().map_err(S::Error::custom)?;
            let text = String::from_utf8(bytes).map_err(S::Error::custom)?;
            raw.push(RawValue::from_string(text).map_err(S::Error::custom)?);
        }
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
        let raw = Vec::<Box<RawValue>>::deserialize(d)?;
        raw.iter().map(|r| Event::decode(r.get().as_bytes()).map_err(D::Error::custom)).collect()
    }
}

/// One event in its own wire form (see [`outbox`]).
mod one_event {
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    use crate::Event;

    pub fn serialize<S: Serializer>(event: &Event, s: S) -> Result<S::Ok, S::Error> {
        let text = String::from_utf8(event.encode().map_err(S::Error::custom)?)
            .map_err(S::Error::custom)?;
        RawValue::from_string(text).map_err(S::Error::custom)?.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Event::decode(raw.get().as_bytes()).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod compatibility {
    //! The records are an API between services (see `docs/architecture.md`, "Shared
    //! records"): a record written by an older version reads, and so does one a newer version
    //! wrote with a field this one does not know.

    use super::*;

    const OLD_WATCH: &str = r#"{"container":"gitea","image":"gitea/gitea:1.22","policy":"manual",
        "running_digest":null,"newest_digest":null,"reported_digest":null,
        "checked_at":"2026-11-01T03:00:00Z"}"#;

    const OLD_UPDATE: &str = r#"{"update_id":"01a20903-c44e-766b-a4d4-a8f046d03cf5",
        "container":"gitea","image":"gitea/gitea:1.22",
        "from_digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "to_digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "policy":"manual","correlation_id":"01a20903-c44e-766b-a4d4-a8f046d03cf6",
        "last_event_id":"01a20903-c44e-766b-a4d4-a8f046d03cf7","step":"pending",
        "started_at":"2026-11-01T03:00:01Z"}"#;

    #[test]
    fn records_of_the_first_version_still_read() {
        let w: WatchRecord = serde_json::from_str(OLD_WATCH).expect("old watch record");
        assert_eq!(w.newest_seen_at, None);
        let u: UpdateRecord = serde_json::from_str(OLD_UPDATE).expect("old update record");
        assert_eq!(u.step, UpdateStep::Pending);
        assert!(u.outbox.is_empty() && u.dependents.is_empty() && u.approval_expires.is_none());
    }

    #[test]
    fn records_carry_their_host_and_older_ones_have_none() {
        let w: WatchRecord = serde_json::from_str(OLD_WATCH).expect("old watch record");
        let u: UpdateRecord = serde_json::from_str(OLD_UPDATE).expect("old update record");
        assert_eq!((w.host.as_deref(), u.host.as_deref()), (None, None));
        let text = serde_json::to_string(&u).expect("encode");
        assert!(!text.contains("\"host\""), "no host, no field: an older reader sees the same");
        let on_vps1 = |text: &str| text.replacen('{', r#"{"host":"vps1","#, 1);
        let w: WatchRecord = serde_json::from_str(&on_vps1(OLD_WATCH)).expect("watch record");
        let u: UpdateRecord = serde_json::from_str(&on_vps1(OLD_UPDATE)).expect("update record");
        assert_eq!((w.host.as_deref(), u.host.as_deref()), (Some("vps1"), Some("vps1")));
        let again: UpdateRecord =
            serde_json::from_str(&serde_json::to_string(&u).expect("encode")).expect("decode");
        assert_eq!(again.host.as_deref(), Some("vps1"));
    }

    #[test]
    fn a_field_added_by_a_newer_version_is_ignored() {
        let newer = OLD_UPDATE.replacen('{', r#"{"added_later":{"any":["shape"]},"#, 1);
        let u: UpdateRecord = serde_json::from_str(&newer).expect("newer update record");
        assert_eq!(u.container, "gitea");
        let newer = OLD_WATCH.replacen('{', r#"{"added_later":1,"#, 1);
        serde_json::from_str::<WatchRecord>(&newer).expect("newer watch record");
    }

    #[test]
    fn what_a_record_writes_reads_back() {
        let u: UpdateRecord = serde_json::from_str(OLD_UPDATE).expect("old update record");
        let again: UpdateRecord =
            serde_json::from_str(&serde_json::to_string(&u).expect("encode")).expect("decode");
        assert_eq!(again.update_id, u.update_id);
        assert_eq!(again.step, u.step);
    }

    #[test]
    fn saved_failpoints_keep_their_names() {
        // The crash matrices kill at these names: the updater's are the step's Debug name in
        // lower case, the deployer's its wire name.
        let mut u: UpdateRecord = serde_json::from_str(OLD_UPDATE).expect("old update record");
        u.step = UpdateStep::AwaitingBackup;
        assert_eq!(u.saved_point(), "saved:awaitingbackup");
        u.end(UpdateStep::RolledBack, Some("unhealthy".into()));
        assert_eq!(u.saved_point(), "saved:rolledback");
        assert_eq!(u.reason.as_deref(), Some("unhealthy"));
        assert_eq!(DeployStep::AwaitingBackup.name(), "awaiting_backup");
        assert_eq!(DeployStep::RollingBack.name(), "rolling_back");
    }

    #[test]
    fn a_deploy_record_from_before_the_up_mark_reads_as_begun() {
        // An older deployer's record at `applying` may have run `up`: its rollback must do
        // what that deployer would have done. A record that says so keeps what it says.
        let id = uuid::Uuid::new_v4();
        let mut old = serde_json::json!({
            "deploy_id": id, "repository": "git://127.0.0.1/app", "branch": "dev",
            "environment": "dev", "commit": "a".repeat(40), "correlation_id": id,
            "last_event_id": id, "step": "applying", "requested_at": "2026-12-01T10:00:00Z",
            "request_id": id, "started_at": "2026-12-01T10:00:00Z",
        });
        let r: DeployRecord = serde_json::from_value(old.clone()).expect("an older record");
        assert!(r.up_begun);
        old["up_begun"] = serde_json::Value::Bool(false);
        let r: DeployRecord = serde_json::from_value(old).expect("a newer record");
        assert!(!r.up_begun);
        let again: DeployRecord =
            serde_json::from_str(&serde_json::to_string(&r).expect("encode")).expect("decode");
        assert!(!again.up_begun, "a record that says not begun must read back so");
    }

    #[test]
    fn a_queued_deploy_keeps_its_request_as_published() {
        let data = crate::samples::all("web")
            .into_iter()
            .find(|d| matches!(d, crate::EventData::DeployRequested(_)))
            .expect("a deploy.requested sample");
        let request = Event::new("steward-deployer/test", data);
        let slot =
            QueuedDeploy { environment: "prod".into(), request: request.clone(), outbox: vec![] };
        let text = serde_json::to_string(&slot).expect("encode");
        let again: QueuedDeploy = serde_json::from_str(&text).expect("decode");
        assert_eq!(again, slot);
        assert_eq!(again.key(), "prod.queued");
        assert!(QueuedDeploy::is_key("prod.queued") && !DeployRecord::is_key("prod.queued"));
        assert!(DeployRecord::is_key("prod") && !QueuedDeploy::is_key("prod"));
    }
}
