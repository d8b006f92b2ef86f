//! Health transitions: `health.failed`, `health.recovered`.

use serde::{Deserialize, Serialize};

use super::update::container_payload;
use super::Payload;

/// A container became unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFailed {
    /// Container name.
    pub container: String,
    /// Which probe failed: `docker-health`, `http`, `running`, `pg_isready`.
    pub check: String,
    /// What the probe saw.
    pub reason: String,
    /// Consecutive failures before this transition was declared.
    pub consecutive_failures: u32,
}
container_payload!(HealthFailed);

/// A container is healthy again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecovered {
    /// Container name.
    pub container: String,
    /// How long it was down.
    pub down_for_ms: u64,
}
container_payload!(HealthRecovered);
