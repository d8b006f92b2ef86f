//! The watcher's own settings, names and defaults in one place.

use std::str::FromStr;
use std::time::Duration;

use steward_runtime::Env;

use crate::registry::RegistryConfig;

/// Cron expression of the regular check (host time zone).
pub const ENV_SCHEDULE: &str = "STEWARD_WATCH_SCHEDULE";
/// Containers checked at once.
pub const ENV_CONCURRENCY: &str = "STEWARD_WATCH_CONCURRENCY";
/// Timeout of one registry request.
pub const ENV_REGISTRY_TIMEOUT: &str = "STEWARD_REGISTRY_TIMEOUT";
/// Longest `Retry-After` waited for within one check.
pub const ENV_REGISTRY_MAX_WAIT: &str = "STEWARD_REGISTRY_MAX_WAIT";
/// Registries reached over plain HTTP (comma-separated hosts; loopback ones always are).
pub const ENV_REGISTRY_INSECURE: &str = "STEWARD_REGISTRY_INSECURE";

/// Only containers labelled `steward.scope=<this>` (unset: only containers without the label).
pub const ENV_SCOPE: &str = "STEWARD_SCOPE";

/// Sunday 03:00.
pub const DEFAULT_SCHEDULE: &str = "0 3 * * 0";

/// The watcher's settings.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// When to check.
    pub schedule: croner::Cron,
    /// Containers checked at once.
    pub concurrency: usize,
    /// Registry client settings.
    pub registry: RegistryConfig,
    /// The installation's scope.
    pub scope: Option<String>,
}

impl WatcherConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let default_schedule = croner::Cron::from_str(DEFAULT_SCHEDULE).ok();
        let schedule = env.parse_with(ENV_SCHEDULE, default_schedule, |s| {
            croner::Cron::from_str(s).map(Some).map_err(|e| format!("not a cron expression: {e}"))
        });
        let concurrency = env.parse_with(ENV_CONCURRENCY, 8, |s| match s.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => Ok(n),
            _ => Err("a whole number from 1 to 64".into()),
        });
        let insecure = env
            .string(ENV_REGISTRY_INSECURE, "")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let registry = RegistryConfig {
            timeout: env.duration(ENV_REGISTRY_TIMEOUT, Duration::from_secs(10)),
            max_wait: env.duration(ENV_REGISTRY_MAX_WAIT, Duration::from_secs(60)),
            insecure,
        };
        let scope = env.optional(ENV_SCOPE).filter(|s| !s.is_empty());
        Self {
            scope,
            // The default always parses; a bad value was reported to `env` above.
            schedule: schedule.unwrap_or_else(|| {
                croner::Cron::from_str("0 3 * * 0").unwrap_or_else(|_| unreachable!())
            }),
            concurrency,
            registry,
        }
    }
}
