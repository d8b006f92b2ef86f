//! Health transitions: `health.failed`, `health.recovered` (a container), and
//! `health.engine_failed`, `health.engine_recovered` (the Docker engine itself); self-healing:
//! `health.restarted`, `health.restart_limited`; host checks: `health.cert_expiring` /
//! `health.cert_renewed`, `health.disk_low` / `health.disk_recovered`,
//! `health.config_invalid` / `health.config_recovered`.

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

/// How urgent a host check's condition is (`health.cert_expiring`, `health.disk_low`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Past the warning threshold: act within days.
    Warning,
    /// Past the critical threshold (or already expired / full): act now.
    Critical,
}

impl Level {
    /// `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }
}

/// A served certificate's name begins so; a NATS server's endpoint is named as labelled.
const SERVED: &str = "tls://";
const NATS_SERVED: &str = "nats://";

/// The `certificate` of `health.cert_expiring` / `health.cert_renewed` for one served at
/// `endpoint` as labelled in `steward.health.tls`: `tls://ENDPOINT`, or a NATS server's
/// `nats://ENDPOINT` as it is; [`served_at`] reads it back.
pub fn served_certificate(endpoint: &str) -> String {
    match endpoint.starts_with(NATS_SERVED) {
        true => endpoint.to_owned(),
        false => format!("{SERVED}{endpoint}"),
    }
}

/// Where a `certificate` of `health.cert_expiring` / `health.cert_renewed` is served: the
/// endpoint of `tls://ENDPOINT` (a `steward.health.tls` endpoint), or a NATS server's
/// `nats://ENDPOINT` whole (the hub's leaf-node port); `None` for a file.
pub fn served_at(certificate: &str) -> Option<&str> {
    match certificate.strip_prefix(SERVED) {
        Some(endpoint) => Some(endpoint),
        None => certificate.starts_with(NATS_SERVED).then_some(certificate),
    }
}

/// A certificate the stack serves expires within a threshold (or has expired). Published when
/// a certificate's level changes (none → warning → critical), never every round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertExpiring {
    /// The container the certificate was read from (the one labelled `steward.certs.renew`),
    /// or the server labelled `steward.health.tls` that serves it.
    pub container: String,
    /// The certificate file, e.g. `/etc/letsencrypt/live/git.example.com/fullchain.pem`, or
    /// the endpoint serving it, `tls://git.example.com@nginx:443` or a NATS server's
    /// `nats://hub.example.org@nats-hub:7422` ([`served_at`]).
    pub certificate: String,
    /// The names it is for (subject alternative names, else the subject's common name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Its `notAfter`.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
    /// Whole days left (negative once expired).
    pub days_left: i64,
    /// `warning` or `critical`.
    pub level: Level,
}
container_payload!(CertExpiring);

/// A certificate reported by `health.cert_expiring` is beyond the warning threshold again
/// (renewed, or removed from the certificates directory), in the same flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRenewed {
    /// The container the certificate was read from.
    pub container: String,
    /// The certificate, named as in `health.cert_expiring`.
    pub certificate: String,
    /// The new `notAfter`; absent when the certificate is gone.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub not_after: Option<time::OffsetDateTime>,
}
container_payload!(CertRenewed);

/// A filesystem the stack writes to is running out of space: the Docker engine's data root or
/// a labelled volume. Published when its level changes, never every round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLow {
    /// What is low: `docker data root` or `volume NAME`.
    pub target: String,
    /// The running container the space was measured in, and the path in it.
    pub measured_in: String,
    /// Free bytes (available to unprivileged writers, as `df` shows them).
    pub free_bytes: u64,
    /// Size of the filesystem in bytes.
    pub total_bytes: u64,
    /// Free space in whole percent of the size.
    pub free_percent: u8,
    /// `warning` or `critical`.
    pub level: Level,
}
impl Payload for DiskLow {}

/// A filesystem reported by `health.disk_low` has enough free space again (same flow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskRecovered {
    /// What it is about: `docker data root` or `volume NAME`.
    pub target: String,
    /// Free bytes now.
    pub free_bytes: u64,
    /// Size of the filesystem in bytes.
    pub total_bytes: u64,
}
impl Payload for DiskRecovered {}

/// A container's configuration check (`steward.health.check`, e.g. `nginx -t`) failed: the
/// next reload or restart of that container would fail. Published once per failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigInvalid {
    /// Container name.
    pub container: String,
    /// The check command as run, e.g. `nginx -t`.
    pub command: String,
    /// Its exit code.
    pub exit_code: i64,
    /// The last lines of its output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_tail: Vec<String>,
}
container_payload!(ConfigInvalid);

/// A container's configuration check passes again (same flow as its `health.config_invalid`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecovered {
    /// Container name.
    pub container: String,
    /// The check command.
    pub command: String,
}
container_payload!(ConfigRecovered);
