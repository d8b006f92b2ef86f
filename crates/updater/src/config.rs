//! The updater's own settings, names and defaults in one place.

use std::time::Duration;

use steward_runtime::Env;

/// How long a requested pre-update backup is waited for.
pub const ENV_BACKUP_TIMEOUT: &str = "STEWARD_UPDATE_BACKUP_TIMEOUT";
/// How long the health gate waits for a healthcheck or HTTP probe to pass.
pub const ENV_HEALTH_TIMEOUT: &str = "STEWARD_HEALTH_TIMEOUT";
/// Without healthcheck or probe: how long the new container must run without restarting.
pub const ENV_HEALTH_GRACE: &str = "STEWARD_HEALTH_GRACE";
/// How long the `steward.update.pre` hook may run.
pub const ENV_HOOK_TIMEOUT: &str = "STEWARD_HOOK_TIMEOUT";

/// The updater's settings.
#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// Pre-update backup wait.
    pub backup_timeout: Duration,
    /// Health gate wait.
    pub health_timeout: Duration,
    /// "Running, no restarts" grace period.
    pub health_grace: Duration,
    /// Pre-update hook limit.
    pub hook_timeout: Duration,
}

impl UpdaterConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        Self {
            backup_timeout: env.duration(ENV_BACKUP_TIMEOUT, Duration::from_secs(30 * 60)),
            health_timeout: env.duration(ENV_HEALTH_TIMEOUT, Duration::from_secs(120)),
            health_grace: env.duration(ENV_HEALTH_GRACE, Duration::from_secs(30)),
            hook_timeout: env.duration(ENV_HOOK_TIMEOUT, Duration::from_secs(120)),
        }
    }
}
