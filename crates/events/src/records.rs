//! Records services keep in KV buckets that other participants read (the CLI's `status`).
//! Pure data like the events: the schema is shared, the bucket access lives in `bus`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Digest;

/// KV bucket (within the namespace) of [`WatchRecord`]s, keyed by container name.
pub const WATCH_BUCKET: &str = "WATCHER";

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
}
