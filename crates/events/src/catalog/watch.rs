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

/// Every check of a registry's images failed in `failed_checks` full checks in a row: newer
/// images there go unnoticed until it answers again. Told once per episode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryFailed {
    /// The registry host, e.g. `registry-1.docker.io`.
    pub registry: String,
    /// Full checks in a row in which no image there could be checked.
    pub failed_checks: u32,
    /// When the first of them ran.
    #[serde(with = "time::serde::rfc3339")]
    pub since: time::OffsetDateTime,
    /// The containers whose images live there.
    pub containers: Vec<String>,
    /// The last error.
    pub reason: String,
}

impl Payload for RegistryFailed {}

/// A registry told as failing answers again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRecovered {
    /// The registry host.
    pub registry: String,
    /// Full checks that had failed.
    pub failed_checks: u32,
    /// Since the first failed check.
    pub down_for_ms: u64,
}

impl Payload for RegistryRecovered {}
