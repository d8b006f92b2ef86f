//! The catalog: every event type Steward knows, its subject and its typed payload.
//!
//! `docs/events.md` is generated from the same list ([`markdown`]): each entry's doc comment
//! is its description there, so what a reader of the events should know about one is written
//! here, next to it. The subject strings are a contract with operators, scripts and NATS
//! permissions, so they never change meaning.

mod backup;
mod certs;
mod deploy;
mod health;
mod markdown;
mod notify;
mod restore;
mod update;
mod watch;

pub use backup::*;
pub use certs::*;
pub use deploy::*;
pub use health::*;
pub use markdown::{markdown, REGENERATE_EVENTS_MD};
pub use notify::*;
pub use restore::*;
pub use update::*;
pub use watch::*;

use serde_json::value::RawValue;

use crate::DecodeError;

/// A payload type of the catalog: knows its event type and, when it concerns one container,
/// that container's name (it becomes the CloudEvents `subject`, used to filter the audit trail).
pub trait Payload: serde::Serialize + serde::de::DeserializeOwned + Into<EventData> {
    /// The container this event is about, if exactly one.
    fn container(&self) -> Option<&str> {
        None
    }
}

macro_rules! catalog {
    ($( $(#[doc = $doc:literal])* $variant:ident => $subject:literal : $payload:ident ),+ $(,)?) => {
        /// The typed payload of an event: one variant per event type of the catalog.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventData {
            $( $(#[doc = $doc])* $variant($payload), )+
        }

        impl EventData {
            /// Every event type (subject) in the catalog, in catalog order.
            pub const ALL_TYPES: &'static [&'static str] = &[$($subject),+];

            /// This payload's event type, which is also its NATS subject.
            pub fn event_type(&self) -> &'static str {
                match self { $(Self::$variant(_) => $subject,)+ }
            }

            /// The container this event is about, if exactly one.
            pub fn container(&self) -> Option<&str> {
                match self { $(Self::$variant(p) => p.container(),)+ }
            }

            /// The image and the digests (from, to) this payload names, for trace attributes:
            /// the fields of those names (`current_digest`/`new_digest` in news).
            pub fn image_and_digests(&self) -> (Option<String>, Option<String>, Option<String>) {
                let Ok(serde_json::Value::Object(v)) = (match self {
                    $(Self::$variant(p) => serde_json::to_value(p),)+
                }) else {
                    return (None, None, None);
                };
                let text = |names: &[&str]| {
                    names.iter().find_map(|n| v.get(*n).and_then(|x| x.as_str()).map(str::to_owned))
                };
                (
                    text(&["image"]),
                    text(&["from_digest", "current_digest"]),
                    text(&["to_digest", "new_digest"]),
                )
            }

            /// Decodes `data` for the given `type`.
            pub(crate) fn from_json(event_type: &str, data: &RawValue) -> Result<Self, DecodeError> {
                match event_type {
                    $($subject => serde_json::from_str::<$payload>(data.get())
                        .map(Self::$variant)
                        .map_err(|source| DecodeError::Data { event_type: $subject, source }),)+
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }

            /// The catalog's description of `event_type`, as Markdown: the doc comment of its
            /// entry in the catalog (one line, then what a reader of the events should know),
            /// each line with its leading space; `None` for a type not in the catalog.
            /// [`markdown`] prints it in `docs/events.md`.
            pub fn description(event_type: &str) -> Option<&'static str> {
                match event_type {
                    $($subject => Some(concat!($($doc, "\n"),*)),)+
                    _ => None,
                }
            }

            /// This payload as indented JSON, its fields in declaration order (so the examples
            /// in `docs/events.md` do not depend on `serde_json`'s map features).
            pub(crate) fn to_json_pretty(&self) -> Result<String, serde_json::Error> {
                match self { $(Self::$variant(p) => serde_json::to_string_pretty(p),)+ }
            }

            /// Resolves a type name to its `&'static` form, if it is in the catalog.
            pub fn known_type(event_type: &str) -> Option<&'static str> {
                Self::ALL_TYPES.iter().copied().find(|t| *t == event_type)
            }

            pub(crate) fn to_json(&self) -> Result<Box<RawValue>, serde_json::Error> {
                match self { $(Self::$variant(p) => serde_json::value::to_raw_value(p),)+ }
            }
        }

        $(
            impl $payload {
                /// This payload's event type, which is also its NATS subject.
                pub const TYPE: &'static str = $subject;
            }

            impl From<$payload> for EventData {
                fn from(p: $payload) -> Self { Self::$variant(p) }
            }
        )+
    };
}

catalog! {
    /// A human or script asks the watcher to check registries now.
    WatchRequested => "watch.requested": WatchRequested,
    /// A newer image exists for a watched container (published once per new digest).
    ///
    /// `policy` is the container's `steward.update.policy` as the watcher read it; the notifier
    /// reports the `notify` ones (one report per image, tag and digest, naming every container
    /// on it). `current_version` and `new_version` are what the running image (its local
    /// labels) and the new one (its config in the registry, read only when a newer digest is
    /// found) say about themselves through the `org.opencontainers.image.*` labels: `version`,
    /// `created` (else the config's build time), `source`, `url`, `revision`. Each is absent
    /// when unknown: a registry or engine that does not answer never holds the announcement
    /// back. `update.pending` carries the same two, copied from the `image.updated` its update
    /// was made from.
    ImageUpdated => "image.updated": ImageUpdated,
    /// Every check of a registry failed several full checks in a row.
    ///
    /// No image of the registry could be checked in `STEWARD_WATCH_REGISTRY_FAILURES` (3) full
    /// checks in a row: newer images there go unnoticed. Told once per episode (the count is
    /// kept in the `WATCH_REGISTRIES` bucket, so a restart neither repeats nor forgets it); the
    /// first full check that reaches it again publishes `watch.registry_recovered`. A check of
    /// one container (`steward check NAME`) does not count.
    RegistryFailed => "watch.registry_failed": RegistryFailed,
    /// A registry told as failing answers again.
    ///
    /// The first full check that reaches a registry after its `watch.registry_failed`, in a
    /// flow of its own: `failed_checks` full checks in a row had failed, the first of them
    /// `down_for_ms` ago.
    RegistryRecovered => "watch.registry_recovered": RegistryRecovered,
    /// A manual-policy update waits for approval.
    ///
    /// `reminder: true` marks the reminder of an update still pending when its approval link
    /// nears its expiry (`STEWARD_APPROVAL_REMIND_BEFORE`, 24 h, and past half the link's
    /// life): the same question once more, in the update's flow, decided in its record so it
    /// is sent once.
    UpdatePending => "update.pending": UpdatePending,
    /// A human approved a pending update.
    UpdateApproved => "update.approved": UpdateApproved,
    /// A human rejected a pending update.
    UpdateRejected => "update.rejected": UpdateRejected,
    /// The updater began applying an update.
    UpdateStarted => "update.started": UpdateStarted,
    /// The container runs the new image and passed its health gate.
    UpdateSucceeded => "update.succeeded": UpdateSucceeded,
    /// After a success: the compose project names the new tag, or why not.
    ///
    /// When written: `"file": "/opt/gitea/.env"` and `"key": "GITEA_IMAGE"` (or
    /// `"services.gitea.image"` for a literal `image:` line) instead of `refused`. When it
    /// comes: see "Flows" above.
    UpdateWrittenBack => "update.written_back": UpdateWrittenBack,
    /// The update stopped before the container was touched (backup, pull or policy failure).
    UpdateFailed => "update.failed": UpdateFailed,
    /// The new image failed; the container runs the previous image again.
    ///
    /// `old_healthy` says whether the old container passed the same health check as the gate
    /// after the rollback. `false` (with `old_reason` and `old_log_tail`) means the service is
    /// down on both images; the notifier sends it as its most urgent mail ("DOWN: ...").
    /// Absent: nothing was swapped, or the event predates the check.
    UpdateRolledBack => "update.rolled_back": UpdateRolledBack,
    /// A human asks to bring back a container's previous image (`steward rollback`).
    ///
    /// `to_digest` (optional, `steward rollback --to`) names another digest of the container's
    /// own repository instead of the recorded previous image.
    RollbackRequested => "rollback.requested": RollbackRequested,
    /// A rollback was refused before anything was touched.
    RollbackRefused => "rollback.refused": RollbackRefused,
    /// Old images no container uses were removed.
    ///
    /// One per repository whose old images the updater removed (`STEWARD_KEEP_IMAGES`), in a
    /// flow of its own; `container` names the container whose successful update led to it,
    /// once that update stood for `STEWARD_PRUNE_GRACE` (absent for the cleanup at start and
    /// the daily one). `bytes_freed` is the sum of the images' sizes: layers shared with kept
    /// images stay, so the disk may gain less.
    ImagePruned => "image.pruned": ImagePruned,
    /// Someone asks for a backup (the updater before an update, the schedule, the CLI).
    BackupRequested => "backup.requested": BackupRequested,
    /// The backup service began a backup.
    BackupStarted => "backup.started": BackupStarted,
    /// A backup is complete: every component and its manifest are stored.
    ///
    /// Besides each database (`postgres/<container>`) and path (`<container>:<path>`), the
    /// components are `containers` (every involved container's `docker inspect`),
    /// `project:<dir>` (the compose project's directory; only when backups are encrypted) and
    /// `events` (the stream and the state buckets as of the end of the backup, for `steward
    /// events import`; the backup's own `backup.done` is in the next one's).
    BackupDone => "backup.done": BackupDone,
    /// A backup failed; no manifest was written.
    ///
    /// A gap in a `steward.backup.pitr` cluster's shipped WAL (its slot `lost`, or a segment
    /// never shipped before one that is: the slot dropped, the spool emptied by hand) is a
    /// `backup.failed` in a flow of its own, without `backup_id`, its `reason` starting `WAL of
    /// <container>:` and saying recovery cannot cross the gap; a backup of that container (with
    /// its base) starts right after, in a flow of its own (reason `schedule`). That backup,
    /// when it fails (its own `backup.failed` with its `backup_id`), is tried again five times
    /// `STEWARD_PITR_MAX_LAG` later, at most three times in all; then one more `backup.failed`
    /// without `backup_id`, its `reason` starting `WAL of <container>: the base backup after
    /// its gap failed`. One event a hole: a slot found `lost` is not reported again when the
    /// next segment shipped shows the same hole (also when the new receiver starts past the
    /// point reported, as PostgreSQL 14's does), also after a restart of the service (the
    /// memory is kept in the bucket).
    ///
    /// WAL shipping that fails for five times `STEWARD_PITR_MAX_LAG` (5 min with its default
    /// of 60 s; uploads refused, S3 or Docker unreachable; a database restart ends before it)
    /// is a `backup.failed` in a flow of its own, without `backup_id`, its `reason` starting
    /// `WAL of <container>: shipping has failed for` (`WAL of every cluster:` when the
    /// containers could not even be listed) and ending with the last error: once per episode,
    /// which a round that succeeds ends. A receiver stopped because its spool reached
    /// `STEWARD_PITR_SPOOL_MAX_MB` for as long (five times `STEWARD_PITR_MAX_LAG`: a burst the
    /// uploads drain sooner is none) is one more, its `reason` starting `WAL of <container>:
    /// the receiver's spool holds`, once until the spool has room again (in memory: a restart
    /// of the service may say it once more).
    ///
    /// With a second copy configured (`STEWARD_BACKUP_COPY_*`), a copy that could not be
    /// written is a `backup.failed` in a flow of its own (not the request's correlation, which
    /// already ended with `backup.done`), naming the backup that is complete in the primary,
    /// its `reason` starting with `second copy:`. The next backup copies what the copy lacks.
    ///
    /// On a rebuilt host whose backups are paused until its restore
    /// (`STEWARD_BACKUP_RESTORE_PENDING`, written by `steward kit import`), every backup,
    /// scheduled or requested, ends with a `backup.failed` whose `reason` begins `backups are
    /// paused until this rebuilt host's restore is done` and names the setting; nothing is
    /// stored.
    BackupFailed => "backup.failed": BackupFailed,
    /// A backup was downloaded, checksummed and its database dump restored in a scratch server.
    ///
    /// Published by a requested verification (`steward backup verify`), by the weekly
    /// scheduled one (`STEWARD_BACKUP_VERIFY_SCHEDULE`, a flow of its own, `database_restored:
    /// true` when the newest backup has dumps), and right after every scheduled or manual
    /// backup, in the backup's flow: every component read back and checked against the signed
    /// manifest, `database_restored: false`. A failure of either is `verify.failed` (mailed);
    /// the scheduled one names `latest` as `backup_id`, the one after a backup says "read back
    /// right after the backup". Each success in the primary is followed by the heartbeat
    /// (`STEWARD_BACKUP_HEARTBEAT_URL`).
    ///
    /// `from`: `copy` when the backup was read from the second copy; absent means the primary.
    BackupVerified => "backup.verified": BackupVerified,
    /// Backups removed by the retention policy.
    BackupPruned => "backup.pruned": BackupPruned,
    /// No verified backup is newer than the configured maximum age.
    ///
    /// The maximum age is `STEWARD_BACKUP_MAX_AGE` (default 26 h, `max_age_secs`): the nightly
    /// backup was missed, keeps failing, or does not read back (a backup counts once it has a
    /// signed verification mark: the check right after it, or a full verification). Checked by
    /// the backup service every quarter of that bound (at most every 10 min); said once per
    /// newest verified backup (`newest`; once when there is none, counted from the service's
    /// start), so one episode is one mail (critical).
    BackupStale => "backup.stale": BackupStale,
    /// A human asks to end a rebuilt host's backup pause without a restore.
    ///
    /// `steward backup resume [--reason TEXT] --yes`: a rebuilt host
    /// (`STEWARD_BACKUP_RESTORE_PENDING`, written by `steward kit import`) keeps its stack as
    /// it is instead of restoring. Of the NATS users that reach a service, only the CLI's may
    /// publish it (`compose/nats/authorization.conf`).
    BackupResumeRequested => "backup.resume_requested": BackupResumeRequested,
    /// A rebuilt host's backups run again without a restore (a signed record says so).
    ///
    /// The backup service wrote the signed record that ends the pause
    /// (`journal/restored/<token>.json` with `resumed_by`, `reason` and `resumed_at`, signed
    /// with the manifests' key, as a restore's): backups run again, also after a restart.
    /// `already`: the pause had ended before (a restore, an earlier resume), nothing was
    /// written. Mailed (warning): from now on this host's backups of its stack as it is become
    /// the latest.
    BackupResumed => "backup.resumed": BackupResumed,
    /// A backup pause could not be ended.
    ///
    /// Nothing changed: no pause is set on this host, or the record could not be read or
    /// written (backups stay paused; run it again).
    BackupResumeFailed => "backup.resume_failed": BackupResumeFailed,
    /// Someone asks to verify a backup.
    ///
    /// `from`: `primary` or `copy` reads the backup from that target; absent means the
    /// primary. `backup.verified` and `verify.failed` carry it on (absent: the primary).
    VerifyRequested => "verify.requested": VerifyRequested,
    /// A backup failed verification.
    VerifyFailed => "verify.failed": VerifyFailed,
    /// Someone asks to restore a backup.
    ///
    /// `from` (additive): `primary` or `copy` reads the backup from that target only. Absent:
    /// the primary, and the second copy when the primary has no usable manifest for the backup
    /// (gone, or refused: a bad signature, an edited manifest); the copy's signatures are
    /// checked exactly as the primary's.
    ///
    /// `to_time` (additive, issue 20): `latest` or an RFC 3339 time (`steward restore ID
    /// --to-time T|latest`). The databases labelled `steward.backup.pitr` come back from the
    /// backup's base backup (`postgres-base/<container>` in `restored`) with the shipped WAL
    /// replayed up to the time (inclusive) in a scratch server first, instead of from their
    /// dumps; with `backup_id` `latest` and a time, the newest usable backup with a base backup
    /// taken before it. An unreadable value, or a time the shipped WAL does not reach, is a
    /// `restore.failed` saying nothing was changed. An older backup service ignores the field
    /// (a restore from the dumps).
    RestoreRequested => "restore.requested": RestoreRequested,
    /// A restore completed and the containers are healthy.
    ///
    /// `from` and `fallback_reason` (additive): `from: "copy"` when the backup was read from
    /// the second copy (absent: the primary); `fallback_reason`, why the primary was not used
    /// when the restore fell back to the copy on its own. `notes` (additive, absent when
    /// empty): what the operator should know of how it was restored, e.g. a `--to-time latest`
    /// whose base does not reach the newest timeline in the bucket (`postgres-base/<container>:
    /// the bucket holds timeline 3, which this base does not reach …`: it replayed the base's
    /// own timeline to its end); a restore resumed after a kill reports the notes its first
    /// attempt found.
    ///
    /// `safety_backup_id` (additive): the backup of the data this restore replaced, taken
    /// before it touched anything; `steward restore <it>` undoes the restore. Absent when none
    /// was taken (`no_safety_backup: true` on `restore.requested`, or nothing to save). A
    /// `restore.failed` after a safety backup names it in `reason` and, additive, in
    /// `safety_backup_id`. A backup's `reason` may be `pre_restore` (the safety backup, in its
    /// manifest); a reason a reader does not know is read as `other`.
    RestoreDone => "restore.done": RestoreDone,
    /// A restore failed.
    ///
    /// `safety_backup_id` and `from` (additive): the safety backup taken before the restore
    /// touched anything (`steward restore <it>` puts back what was there), and `copy` when the
    /// backup was read from the second copy.
    RestoreFailed => "restore.failed": RestoreFailed,
    /// A container became unhealthy (a transition, not a repeated alarm).
    HealthFailed => "health.failed": HealthFailed,
    /// A container is healthy again.
    HealthRecovered => "health.recovered": HealthRecovered,
    /// A container declared down was restarted (`steward.health.restart=true`).
    ///
    /// In the outage's flow; `attempt` counts the container's restarts within the last hour.
    /// Back-off: the first restart at once, then 30 s, 1 min, 2 min ... after the
    /// previous one; at most `STEWARD_HEALTH_RESTART_LIMIT` (default 3) per hour, then
    /// `health.restart_limited` once per outage.
    HealthRestarted => "health.restarted": HealthRestarted,
    /// A container declared down used up its restarts for the hour.
    HealthRestartLimited => "health.restart_limited": HealthRestartLimited,
    /// The Docker engine stopped answering (a transition, not a repeated alarm).
    EngineFailed => "health.engine_failed": EngineFailed,
    /// The Docker engine answers again.
    EngineRecovered => "health.engine_recovered": EngineRecovered,
    /// A certificate the stack serves expires soon or has expired (on a change of level).
    ///
    /// Checked every `STEWARD_HEALTH_HOST_INTERVAL` (5 min) in the live directory of the
    /// container labelled `steward.certs.renew` (`steward.certs.path`, default
    /// `/etc/letsencrypt/live`): each lineage's `fullchain.pem`, its leaf certificate's
    /// `notAfter`. `level` is `warning` within `STEWARD_HEALTH_CERT_WARN` (14 days) and
    /// `critical` within `STEWARD_HEALTH_CERT_CRITICAL` (3 days) or once expired (`days_left`
    /// negative). The certificates the stack serves are checked the same way by a TLS
    /// handshake with each endpoint labelled `steward.health.tls`: then `container` is the
    /// labelled server and `certificate` is `tls://ENDPOINT` as labelled (e.g.
    /// `tls://git.example.com@nginx:443`), or a NATS server's endpoint as labelled (the hub's
    /// leaf-node port: `nats://hub.example.org@nats-hub:7422`). Published when a certificate's
    /// level changes (none → warning → critical), never every round; later events of the same
    /// certificate carry the first one's correlation id. The notifier mails `critical` ones as
    /// critical.
    CertExpiring => "health.cert_expiring": CertExpiring,
    /// A certificate reported as expiring is no longer (renewed, or gone).
    ///
    /// The certificate of an earlier `health.cert_expiring` is beyond the warning threshold
    /// again (renewed, or served renewed), or is gone from the live directory or no longer
    /// labelled (`not_after` absent); same flow.
    CertRenewed => "health.cert_renewed": CertRenewed,
    /// The Docker data root or a labelled volume is low on free space (on a change of level).
    ///
    /// Free space measured by `df -Pk` by exec in the running containers labelled
    /// `steward.health.disk`: `/` there is the engine's data root (`target` `docker data
    /// root`), a volume's mount point the volume (`volume NAME`), another path
    /// `CONTAINER:PATH`. `level` is `warning` below `STEWARD_HEALTH_DISK_WARN` (10%) and
    /// `critical` below `STEWARD_HEALTH_DISK_CRITICAL` (5%); each is a percentage or a size.
    /// Published when the level changes; critical ones are mailed as critical. A level is left
    /// only once free space is `STEWARD_HEALTH_DISK_MARGIN` (2%) above its threshold, so free
    /// space hovering at a threshold is one event, not one per round.
    DiskLow => "health.disk_low": DiskLow,
    /// A filesystem reported as low has enough free space again.
    ///
    /// A filesystem of an earlier `health.disk_low` is above the warning threshold plus
    /// `STEWARD_HEALTH_DISK_MARGIN` again; same flow. A filesystem no longer labelled goes
    /// without an event.
    DiskRecovered => "health.disk_recovered": DiskRecovered,
    /// A container's configuration check (`steward.health.check`, e.g. `nginx -t`) failed.
    ///
    /// The container's `steward.health.check` (`true` is `nginx -t`), run by exec each host
    /// round, exited non-zero: the running server keeps its last good configuration, but its
    /// next reload or restart fails. Once per failure, with the output's tail; an exec that
    /// could not be made says nothing either way.
    ConfigInvalid => "health.config_invalid": ConfigInvalid,
    /// A container's configuration check passes again.
    ///
    /// The check passes again; same flow as its `health.config_invalid`.
    ConfigRecovered => "health.config_recovered": ConfigRecovered,
    /// A notification was delivered.
    NotifySent => "notify.sent": NotifySent,
    /// A notification could not be delivered within its retry bound.
    NotifyFailed => "notify.failed": NotifyFailed,
    /// Someone asks for a test notification through every configured channel.
    ///
    /// `steward notify test`: the notifier sends a test message through every configured
    /// channel at once (no group window) and answers with a `notify.sent` or `notify.failed`
    /// per channel, in the request's flow.
    NotifyTestRequested => "notify.test_requested": NotifyTestRequested,
    /// Someone asks for the certificate renewal to run now.
    CertsRequested => "certs.requested": CertsRequested,
    /// The certificate renewal ran; changed certificates were reloaded.
    CertsChecked => "certs.checked": CertsChecked,
    /// The certificate renewal or a reload after it failed.
    CertsFailed => "certs.failed": CertsFailed,
    /// A commit should be deployed (push webhook, polling, or a human).
    DeployRequested => "deploy.requested": DeployRequested,
    /// A human pins an environment to a commit of its branch (`steward deploy ENV COMMIT`).
    ///
    /// A rollback to any earlier commit, or, naming the branch's head, the end of a pin; of the
    /// NATS users that reach a service, only the CLI's may publish it. It runs through the
    /// environment's policy like a push (`deploy.pending` in a manual environment, with
    /// `pinned_by`), and ends like any deployment flow. A commit that is not the branch's head
    /// or one of its ancestors, or that the repository does not have, ends with
    /// `deploy.failed`, nothing touched. While the pinned commit runs (or its deployment is
    /// under way), a push to the branch is refused with `deploy.failed` without `deploy_id`,
    /// `reason` "ENV is pinned to COMMIT by WHO (steward deploy): ... is not deployed; ..."
    /// (mailed); a pin that ended failed or rolled back holds nothing. A pin older than the
    /// request in hand, or a redelivered one, is ignored; a pin of the commit that runs is news
    /// (it pins it).
    DeployPinRequested => "deploy.pin_requested": DeployPinRequested,
    /// A deployment to a manually approved environment waits for approval.
    DeployPending => "deploy.pending": DeployPending,
    /// A deployment that could start (automatic, or approved) waits for its window.
    ///
    /// The environment has a deployment window (`STEWARD_DEPLOY_WINDOWS`) and it is closed:
    /// nothing is touched until the deployer's sweep finds it open, then `deploy.started`
    /// follows in the same flow. A newer push or a pin replaces it (`deploy.failed`,
    /// "superseded ... before its window opened"), `steward deploy reject` ends it; a pin
    /// never waits. Once per deployment, also across restarts (the record's outbox).
    DeployDeferred => "deploy.deferred": DeployDeferred,
    /// A human approved a pending deployment.
    ///
    /// `steward deploy approve ENV|ID` (`by` is `user@host`), or the signed link of the
    /// `deploy.pending` mail, published by the deployer's approval page (`by` is
    /// `approval-page`; the link itself is never in an event, see `docs/security.md`). The
    /// deployer treats both alike. `deploy.rejected` comes from the same two places.
    DeployApproved => "deploy.approved": DeployApproved,
    /// A human rejected a pending deployment.
    ///
    /// `steward deploy reject ENV|ID [--reason TEXT]`, or the mailed link's page: the deployer
    /// ends it with `deploy.failed` ("rejected by ...; nothing was changed"), and the next push
    /// waiting for the environment goes on. A rejection of a deployment no longer pending is
    /// ignored.
    DeployRejected => "deploy.rejected": DeployRejected,
    /// A deployment began.
    DeployStarted => "deploy.started": DeployStarted,
    /// The changed services run the commit and are healthy.
    DeploySucceeded => "deploy.succeeded": DeploySucceeded,
    /// A deployment stopped before any service was touched.
    DeployFailed => "deploy.failed": DeployFailed,
    /// The commit failed; the previous commit's definitions run again (on a first deployment:
    /// what was started by hand, from its own compose files).
    DeployRolledBack => "deploy.rolled_back": DeployRolledBack,
    /// An image update of a service deployed from git, committed to its environment's branch
    /// (or proposed to it as a pull request).
    ///
    /// After `update.written_back` with `"committer": "deployer"` (in the update's flow): the
    /// deployer changed the service's `image:` line or `.env` variable in a commit of its own
    /// (trailer `Steward-Update: <update_id>`) and pushed it to the branch, so the next
    /// deployment keeps the new version. `commit` is that commit (also when a repeat found it
    /// already there); `refused` says why nothing was committed (the push was refused, the
    /// branch names another version, the container was recreated since), and is mailed. With
    /// a Gitea token (`STEWARD_DEPLOY_GITEA_TOKEN`) the commit goes to a branch of its own,
    /// `proposal_branch` (`steward/update-<update_id>`), and `pull_request` is the page of
    /// the pull request opened from it into `branch`: mailed too, since the branch names the
    /// old version until a human merges it. `commit` is then the proposal's commit, or the
    /// branch's own once the trailer is found there (merged).
    DeployWrittenBack => "deploy.written_back": DeployWrittenBack,
}
