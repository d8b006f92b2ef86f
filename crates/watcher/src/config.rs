//! The watcher's own settings, names and defaults in one place.

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

/// Full checks in a row with a registry failing before it is told.
pub const ENV_REGISTRY_FAILURES: &str = "STEWARD_WATCH_REGISTRY_FAILURES";

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
    /// Full checks in a row with a registry failing before `watch.registry_failed`.
    pub registry_failures: u32,
}

impl WatcherConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let schedule = env.cron(ENV_SCHEDULE, DEFAULT_SCHEDULE);
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
        let registry_failures =
            env.parse_with(ENV_REGISTRY_FAILURES, 3, |s| match s.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => Ok(n),
                _ => Err("a whole number from 1 to 100".into()),
            });
        Self { scope: env.scope(), schedule, concurrency, registry, registry_failures }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_parses_and_a_bad_one_is_named() {
        let mut env = Env::from_pairs(std::iter::empty::<(String, String)>());
        assert_eq!(WatcherConfig::read(&mut env).schedule.as_str(), DEFAULT_SCHEDULE);
        assert!(env.finish().is_ok());
        let mut env = Env::from_pairs([(ENV_SCHEDULE, "weekly")]);
        let _ = WatcherConfig::read(&mut env);
        let line = env.finish().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(line.contains("STEWARD_WATCH_SCHEDULE=\"weekly\""), "{line}");
    }
}
