//! The health service's settings, names and defaults in one place.

use std::time::Duration;

use steward_probe::ProbeConfig;
use steward_runtime::Env;

/// How often every container is probed.
pub const ENV_INTERVAL: &str = "STEWARD_HEALTH_INTERVAL";
/// Consecutive failed rounds before `health.failed`.
pub const ENV_FAILURES: &str = "STEWARD_HEALTH_FAILURES";
/// Consecutive passed rounds before `health.recovered`.
pub const ENV_RECOVERIES: &str = "STEWARD_HEALTH_RECOVERIES";
/// Most restarts of one container an hour by self-healing (`steward.health.restart=true`).
pub const ENV_RESTART_LIMIT: &str = "STEWARD_HEALTH_RESTART_LIMIT";
/// Limit of one HTTP probe or `pg_isready`: the probe's own setting, shared with the update gate.
pub use steward_probe::ENV_PROBE_TIMEOUT;

/// The health service's settings.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Probe interval.
    pub interval: Duration,
    /// Failures before declaring a container down.
    pub failures: u32,
    /// Passes before declaring it up again.
    pub recoveries: u32,
    /// The probe's settings (the same as the update gate's).
    pub probe: ProbeConfig,
    /// Scope label value.
    pub scope: Option<String>,
    /// Most self-healing restarts of one container an hour.
    pub restart_limit: u32,
}

fn count(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err("expected a whole number from 1 to 100".into()),
    }
}

impl HealthConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let interval = env.duration(ENV_INTERVAL, Duration::from_secs(30));
        if interval < Duration::from_secs(1) {
            env.error(ENV_INTERVAL, &format!("{interval:?}"), "at least 1s");
        }
        Self {
            interval,
            failures: env.parse_with(ENV_FAILURES, 3, count),
            recoveries: env.parse_with(ENV_RECOVERIES, 2, count),
            probe: ProbeConfig::read(env),
            scope: env.scope(),
            restart_limit: env.parse_with(ENV_RESTART_LIMIT, 3, |s| match s.parse::<u32>() {
                Ok(n) if n <= 60 => Ok(n),
                _ => Err("expected a whole number from 0 (never restart) to 60".to_owned()),
            }),
        }
    }
}
