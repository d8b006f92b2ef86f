//! Applying updates: `update.*`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::Payload;
use crate::{Digest, Versions};

macro_rules! container_payload {
    ($ty:ident) => {
        impl Payload for $ty {
            fn container(&self) -> Option<&str> {
                Some(&self.container)
            }
        }
    };
}
pub(crate) use container_payload;

/// What an update flow does: apply a newer image (the default), or bring back the image a
/// container ran before its last successful update (`steward rollback`). A rollback runs
/// through the same steps, events and guarantees as an update; this says which one it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    /// A newer image, from `image.updated`.
    #[default]
    Update,
    /// The previous image, from `rollback.requested`.
    Rollback,
}

impl UpdateKind {
    /// Whether this is a plain update (the field is left out of the JSON then).
    pub fn is_update(&self) -> bool {
        *self == Self::Update
    }

    /// `update` or `rollback`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::Rollback => "rollback",
        }
    }
}

/// A human asks to bring back the image a container ran before its last successful update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequested {
    /// Container name.
    pub container: String,
    /// Who asked (`user@host`).
    pub requested_by: String,
    /// Another digest of the container's own repository to go back to, instead of the one
    /// recorded as its previous image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_digest: Option<Digest>,
}
container_payload!(RollbackRequested);

/// A rollback was refused before anything was claimed or touched (no previous image, an
/// update in progress, a container Steward does not manage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRefused {
    /// Container name.
    pub container: String,
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Why, for a human.
    pub reason: String,
}
container_payload!(RollbackRefused);

/// One image removed by the cleanup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrunedImage {
    /// Its id (`sha256:` of the image config).
    pub id: String,
    /// Its `repo@sha256:` references, as the engine listed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repo_digests: Vec<String>,
    /// Its size as the engine reported it.
    pub size_bytes: u64,
}

/// Old images of one repository that no container uses were removed (`STEWARD_KEEP_IMAGES`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePruned {
    /// The repository, as Docker names it (`gitea/gitea`, `127.0.0.1:5000/app`).
    pub repository: String,
    /// The container whose successful update led to the cleanup; absent for the cleanup at
    /// the updater's start and the daily one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What was removed.
    pub images: Vec<PrunedImage>,
    /// The sum of their sizes (shared layers may make the space really freed smaller).
    pub bytes_freed: u64,
    /// How many images of the repository are kept (the newest, besides those in use).
    pub kept: u32,
}

impl Payload for ImagePruned {
    fn container(&self) -> Option<&str> {
        self.container.as_deref()
    }
}

/// A manual-policy update waits for a human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePending {
    /// The id to pass to `steward approve` / `steward reject`.
    pub update_id: Uuid,
    /// Container name.
    pub container: String,
    /// Image reference.
    pub image: String,
    /// Digest running now.
    pub current_digest: Digest,
    /// Digest to update to.
    pub new_digest: Digest,
    /// With tag tracking, the newer tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
    /// Only in events of older versions: the signed approval link itself. A live token
    /// does not belong in a stream every service reads and keeps for a year, so the updater
    /// no longer sets it; the notifier asks the updater for the link when it mails
    /// (`steward_bus::approval`). Old events' links are redacted wherever they are shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_url: Option<String>,
    /// When the approval link expires; set when the updater serves links (a public URL and
    /// a secret are configured), so a notifier knows there is one to ask for.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// When an approved update will run, if not at once: its maintenance window, minimum age
    /// or the updates it waits for (an approval goes through the same gate as an automatic
    /// update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<String>,
    /// The running and new release, copied from the `image.updated` this update was made
    /// from, for the approval mail.
    #[serde(flatten)]
    pub versions: Versions,
    /// A reminder of an update still pending, its approval link near its expiry
    /// (`STEWARD_APPROVAL_REMIND_BEFORE`); the first `update.pending` has none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reminder: bool,
}
container_payload!(UpdatePending);

/// A human approved a pending update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateApproved {
    /// The pending update.
    pub update_id: Uuid,
    /// Who approved (CLI user@host, or `approval-page`).
    pub by: String,
}

impl Payload for UpdateApproved {}

/// A human rejected a pending update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRejected {
    /// The pending update.
    pub update_id: Uuid,
    /// Who rejected.
    pub by: String,
    /// Optional reason given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Payload for UpdateRejected {}

/// The updater began applying an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStarted {
    /// The update.
    pub update_id: Uuid,
    /// Container name.
    pub container: String,
    /// Image reference.
    pub image: String,
    /// Digest before.
    pub from_digest: Digest,
    /// Digest after.
    pub to_digest: Digest,
    /// `rollback` when the flow is a `steward rollback` (absent: an update).
    #[serde(default, skip_serializing_if = "UpdateKind::is_update")]
    pub kind: UpdateKind,
    /// Who asked for a rollback (`user@host`); absent for an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}
container_payload!(UpdateStarted);

/// The update is done and the container is healthy on the new image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSucceeded {
    /// The update.
    pub update_id: Uuid,
    /// Container name.
    pub container: String,
    /// Image reference.
    pub image: String,
    /// Digest before.
    pub from_digest: Digest,
    /// Digest now running.
    pub to_digest: Digest,
    /// Wall time from `update.started`.
    pub duration_ms: u64,
    /// Who approved it (manual policy); `None` for an automatic update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// `rollback` when the flow is a `steward rollback` (absent: an update).
    #[serde(default, skip_serializing_if = "UpdateKind::is_update")]
    pub kind: UpdateKind,
    /// Who asked for a rollback (`user@host`); absent for an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}
container_payload!(UpdateSucceeded);

/// After a successful update to a newer tag: the compose project's definition of the service
/// (the `.env` variable or the compose file's `image:` line) now names what runs, so the next
/// `compose up` keeps it; or why it was not changed (`refused`), for a human to do by hand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateWrittenBack {
    /// The update.
    pub update_id: Uuid,
    /// Container name.
    pub container: String,
    /// The reference the container runs now (what was, or should be, written).
    pub image: String,
    /// The file changed, on the host (absent when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What was changed in it: `GITEA_IMAGE` (a variable) or `services.gitea.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why the definition was not changed (the update itself stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The reference the container ran before the update (what the definition named);
    /// absent in events from before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    /// `deployer`: the project is a checkout the deployer deploys from git, so nothing was
    /// written here; the deployer commits the change to the environment's branch and says so
    /// (`deploy.written_back`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<String>,
}
container_payload!(UpdateWrittenBack);

/// The update stopped before the running container was touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateFailed {
    /// The update.
    pub update_id: Uuid,
    /// Container name.
    pub container: String,
    /// Image reference.
    pub image: String,
    /// What went wrong, for a human.
    pub reason: String,
    /// Last lines of the relevant log, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// `rollback` when the flow is a `steward rollback` (absent: an update).
    #[serde(default, skip_serializing_if = "UpdateKind::is_update")]
    pub kind: UpdateKind,
    /// Who asked for a rollback (`user@host`); absent for an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}
container_payload!(UpdateFailed);

/// The new image failed its health gate and the previous one runs again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRolledBack {
    /// The update.
    pub update_id: Uuid,
    /// Container name.
    pub container: String,
    /// Image reference.
    pub image: String,
    /// Digest running again.
    pub from_digest: Digest,
    /// Digest that failed.
    pub to_digest: Digest,
    /// Why the new image was refused.
    pub reason: String,
    /// Last lines of the failed container's log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Whether the old container passed the health check again after the rollback; `false`
    /// means the service is down on both images (the most urgent thing Steward reports).
    /// `None`: not checked (nothing was swapped, or an event of an older version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_healthy: Option<bool>,
    /// When the old container is not healthy again: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_reason: Option<String>,
    /// When the old container is not healthy again: its last log lines.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub old_log_tail: Vec<String>,
    /// `rollback` when the flow is a `steward rollback` (absent: an update).
    #[serde(default, skip_serializing_if = "UpdateKind::is_update")]
    pub kind: UpdateKind,
    /// Who asked for a rollback (`user@host`); absent for an update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}
container_payload!(UpdateRolledBack);
