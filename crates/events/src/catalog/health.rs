//! Health transitions: `health.failed`, `health.recovered` (a container), and
//! `health.engine_failed`, `health.engine_recovered` (the Docker engine itself); self-healing:
//! `health.restarted`, `health.restart_limited`.

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

/// The health service restarted a container it had declared down, because the container is
/// labelled `steward.health.restart=true` (in the outage's flow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRestarted {
    /// Container name.
    pub container: String,
    /// Restarts of this container within the last hour, this one included.
    pub attempt: u32,
    /// What the failing check saw before the restart.
    pub reason: String,
}
container_payload!(HealthRestarted);

/// A container declared down was not restarted again: it used up its restarts for the hour
/// (`STEWARD_HEALTH_RESTART_LIMIT`). Restarting does not fix it; a human must look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRestartLimited {
    /// Container name.
    pub container: String,
    /// Restarts within the last hour.
    pub restarts: u32,
    /// What the failing check sees.
    pub reason: String,
}
container_payload!(HealthRestartLimited);

/// The Docker engine stopped answering: a call it took got no answer within its deadline, or
/// it could not be reached. Containers are not judged meanwhile (their rounds are neutral), so
/// this is the one notice of an outage of the engine itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineFailed {
    /// Where the engine is, e.g. `unix:///var/run/docker.sock`.
    pub engine: String,
    /// The call that did not answer, e.g. `list containers` or `inspect gitea`.
    pub call: String,
    /// What was seen, e.g. `engine did not answer list containers within 30s`.
    pub reason: String,
    /// Consecutive failed rounds before this transition was declared.
    pub consecutive_failures: u32,
}
impl Payload for EngineFailed {}

/// The Docker engine answers again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecovered {
    /// Where the engine is.
    pub engine: String,
    /// How long it did not answer.
    pub down_for_ms: u64,
}
impl Payload for EngineRecovered {}
