//! Registry watching: `watch.requested`, `image.updated`.

use serde::{Deserialize, Serialize};

use super::Payload;
use crate::{Digest, Versions};

/// Check registries now, for one container or all watched ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchRequested {
    /// Only this container; all watched containers when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Who asked (user@host for the CLI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
}

impl Payload for WatchRequested {
    fn container(&self) -> Option<&str> {
        self.container.as_deref()
    }
}

/// A newer image exists for a watched container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageUpdated {
    /// Container name (without the leading `/`).
    pub container: String,
    /// The image reference the container was created from, e.g. `gitea/gitea:1.22`.
    pub image: String,
    /// Digest of the image the container runs now.
    pub current_digest: Digest,
    /// Digest now behind the tag (or behind `new_tag`).
    pub new_digest: Digest,
    /// With tag tracking: the newer tag (e.g. `1.22.7` after `1.22.6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_tag: Option<String>,
    /// The container's `steward.update.policy` as the watcher read it (`automatic`, `manual`,
    /// `notify`): the notifier reports `notify` ones. Absent in events of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// What the running and the new image say about themselves (`current_version`,
    /// `new_version`: version, build time, source, revision); absent when unknown.
    #[serde(flatten)]
    pub versions: Versions,
}

impl Payload for ImageUpdated {
    fn container(&self) -> Option<&str> {
        Some(&self.container)
    }
}
