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
}
container_payload!(UpdateSucceeded);

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
}
container_payload!(UpdateRolledBack);
