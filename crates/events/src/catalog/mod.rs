//! The catalog: every event type Steward knows, its subject and its typed payload.
//!
//! The table in `docs/events.md` is generated from the same list; the subject strings are a
//! contract with operators, scripts and NATS permissions, so they never change meaning.

mod backup;
mod certs;
mod deploy;
mod health;
mod notify;
mod restore;
mod update;
mod watch;

pub use backup::*;
pub use certs::*;
pub use deploy::*;
pub use health::*;
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
    ($( $(#[$doc:meta])* $variant:ident => $subject:literal : $payload:ident ),+ $(,)?) => {
        /// The typed payload of an event: one variant per event type of the catalog.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventData {
            $( $(#[$doc])* $variant($payload), )+
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
    ImageUpdated => "image.updated": ImageUpdated,
    /// Every check of a registry failed several full checks in a row.
    RegistryFailed => "watch.registry_failed": RegistryFailed,
    /// A registry told as failing answers again.
    RegistryRecovered => "watch.registry_recovered": RegistryRecovered,
    /// A manual-policy update waits for approval.
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
    UpdateWrittenBack => "update.written_back": UpdateWrittenBack,
    /// The update stopped before the container was touched (backup, pull or policy failure).
    UpdateFailed => "update.failed": UpdateFailed,
    /// The new image failed; the container runs the previous image again.
    UpdateRolledBack => "update.rolled_back": UpdateRolledBack,
    /// A human asks to bring back a container's previous image (`steward rollback`).
    RollbackRequested => "rollback.requested": RollbackRequested,
    /// A rollback was refused before anything was touched.
    RollbackRefused => "rollback.refused": RollbackRefused,
    /// Old images no container uses were removed.
    ImagePruned => "image.pruned": ImagePruned,
    /// Someone asks for a backup (the updater before an update, the schedule, the CLI).
    BackupRequested => "backup.requested": BackupRequested,
    /// The backup service began a backup.
    BackupStarted => "backup.started": BackupStarted,
    /// A backup is complete: every component and its manifest are stored.
    BackupDone => "backup.done": BackupDone,
    /// A backup failed; no manifest was written.
    BackupFailed => "backup.failed": BackupFailed,
    /// A backup was downloaded, checksummed and its database dump restored in a scratch server.
    BackupVerified => "backup.verified": BackupVerified,
    /// Backups removed by the retention policy.
    BackupPruned => "backup.pruned": BackupPruned,
    /// No complete backup is newer than the configured maximum age.
    BackupStale => "backup.stale": BackupStale,
    /// A human asks to end a rebuilt host's backup pause without a restore.
    BackupResumeRequested => "backup.resume_requested": BackupResumeRequested,
    /// A rebuilt host's backups run again without a restore (a signed record says so).
    BackupResumed => "backup.resumed": BackupResumed,
    /// A backup pause could not be ended.
    BackupResumeFailed => "backup.resume_failed": BackupResumeFailed,
    /// Someone asks to verify a backup.
    VerifyRequested => "verify.requested": VerifyRequested,
    /// A backup failed verification.
    VerifyFailed => "verify.failed": VerifyFailed,
    /// Someone asks to restore a backup.
    RestoreRequested => "restore.requested": RestoreRequested,
    /// A restore completed and the containers are healthy.
    RestoreDone => "restore.done": RestoreDone,
    /// A restore failed.
    RestoreFailed => "restore.failed": RestoreFailed,
    /// A container became unhealthy (a transition, not a repeated alarm).
    HealthFailed => "health.failed": HealthFailed,
    /// A container is healthy again.
    HealthRecovered => "health.recovered": HealthRecovered,
    /// A container declared down was restarted (`steward.health.restart=true`).
    HealthRestarted => "health.restarted": HealthRestarted,
    /// A container declared down used up its restarts for the hour.
    HealthRestartLimited => "health.restart_limited": HealthRestartLimited,
    /// The Docker engine stopped answering (a transition, not a repeated alarm).
    EngineFailed => "health.engine_failed": EngineFailed,
    /// The Docker engine answers again.
    EngineRecovered => "health.engine_recovered": EngineRecovered,
    /// A certificate the stack serves expires soon or has expired (on a change of level).
    CertExpiring => "health.cert_expiring": CertExpiring,
    /// A certificate reported as expiring is no longer (renewed, or gone).
    CertRenewed => "health.cert_renewed": CertRenewed,
    /// The Docker data root or a labelled volume is low on free space (on a change of level).
    DiskLow => "health.disk_low": DiskLow,
    /// A filesystem reported as low has enough free space again.
    DiskRecovered => "health.disk_recovered": DiskRecovered,
    /// A container's configuration check (`steward.health.check`, e.g. `nginx -t`) failed.
    ConfigInvalid => "health.config_invalid": ConfigInvalid,
    /// A container's configuration check passes again.
    ConfigRecovered => "health.config_recovered": ConfigRecovered,
    /// A notification was delivered.
    NotifySent => "notify.sent": NotifySent,
    /// A notification could not be delivered within its retry bound.
    NotifyFailed => "notify.failed": NotifyFailed,
    /// Someone asks for a test notification through every configured channel.
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
    DeployPinRequested => "deploy.pin_requested": DeployPinRequested,
    /// A deployment to a manually approved environment waits for approval.
    DeployPending => "deploy.pending": DeployPending,
    /// A human approved a pending deployment.
    DeployApproved => "deploy.approved": DeployApproved,
    /// A human rejected a pending deployment.
    DeployRejected => "deploy.rejected": DeployRejected,
    /// A deployment began.
    DeployStarted => "deploy.started": DeployStarted,
    /// The changed services run the commit and are healthy.
    DeploySucceeded => "deploy.succeeded": DeploySucceeded,
    /// A deployment stopped before any service was touched.
    DeployFailed => "deploy.failed": DeployFailed,
    /// The commit failed; the previous commit's definitions run again.
    DeployRolledBack => "deploy.rolled_back": DeployRolledBack,
}
