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
/// How often the host checks run (certificates, free space, configuration checks).
pub const ENV_HOST_INTERVAL: &str = "STEWARD_HEALTH_HOST_INTERVAL";
/// A certificate expiring within this is a warning (`health.cert_expiring`).
pub const ENV_CERT_WARN: &str = "STEWARD_HEALTH_CERT_WARN";
/// A certificate expiring within this (or expired) is critical.
pub const ENV_CERT_CRITICAL: &str = "STEWARD_HEALTH_CERT_CRITICAL";
/// Free space below this (`10%` or a size such as `5GB`) is a warning (`health.disk_low`).
pub const ENV_DISK_WARN: &str = "STEWARD_HEALTH_DISK_WARN";
/// Free space below this is critical.
pub const ENV_DISK_CRITICAL: &str = "STEWARD_HEALTH_DISK_CRITICAL";
/// A `health.disk_low` level is left only once free space is this much above its threshold
/// (`2%` or a size; `0` turns it off), so space hovering at a threshold is told once.
pub const ENV_DISK_MARGIN: &str = "STEWARD_HEALTH_DISK_MARGIN";
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
    /// Certificates, free space and configuration checks.
    pub host: HostConfig,
}

/// The host checks' settings: how often, and when a condition is a warning or critical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// How often they run.
    pub interval: Duration,
    /// Certificate expiry within this: warning.
    pub cert_warn: Duration,
    /// Certificate expiry within this: critical.
    pub cert_critical: Duration,
    /// Free space below this: warning.
    pub disk_warn: Threshold,
    /// Free space below this: critical.
    pub disk_critical: Threshold,
    /// How far above a threshold free space must be to leave its level (hysteresis).
    pub disk_margin: Threshold,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            cert_warn: Duration::from_secs(14 * 86_400),
            cert_critical: Duration::from_secs(3 * 86_400),
            disk_warn: Threshold::Percent(10),
            disk_critical: Threshold::Percent(5),
            disk_margin: Threshold::Percent(2),
        }
    }
}

/// A free-space threshold: a share of the filesystem's size, or an absolute amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    /// Whole percent of the size (1 to 99).
    Percent(u8),
    /// Bytes.
    Bytes(u64),
}

impl Threshold {
    /// Whether `free` of `total` bytes is below the threshold.
    pub fn below(self, free: u64, total: u64) -> bool {
        self.below_with(Threshold::Bytes(0), free, total)
    }

    /// Whether `free` of `total` bytes is below the threshold raised by `margin`.
    pub fn below_with(self, margin: Threshold, free: u64, total: u64) -> bool {
        // In hundredths of a byte, so percentages compare exactly; u128 cannot overflow
        // (at most 2^64 × 100 twice).
        let scaled = |t: Threshold| match t {
            Threshold::Percent(p) => u128::from(total) * u128::from(p),
            Threshold::Bytes(b) => u128::from(b) * 100,
        };
        u128::from(free) * 100 < scaled(self) + scaled(margin)
    }

    /// Parses `10%`, `5GB`, `500MiB`, `1073741824` (bytes).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad =
            || format!("{s:?}: expected a percentage (1% to 99%) or a size such as 5GB or 500MiB");
        if let Some(p) = s.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if (1..=99).contains(&p) => Ok(Threshold::Percent(p)),
                _ => Err(bad()),
            };
        }
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let unit: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        number.checked_mul(unit).map(Threshold::Bytes).ok_or_else(bad)
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Percent(p) => write!(f, "{p}%"),
            Threshold::Bytes(b) => write!(f, "{b} bytes"),
        }
    }
}

impl HostConfig {
    /// Reads the host checks' settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let d = Self::default();
        let interval = env.duration(ENV_HOST_INTERVAL, d.interval);
        if interval < Duration::from_secs(1) {
            env.error(ENV_HOST_INTERVAL, &format!("{interval:?}"), "at least 1s");
        }
        let cert_warn = env.duration(ENV_CERT_WARN, d.cert_warn);
        let cert_critical = env.duration(ENV_CERT_CRITICAL, d.cert_critical);
        if cert_critical > cert_warn {
            env.error(
                ENV_CERT_CRITICAL,
                &format!("{cert_critical:?}"),
                format!("at most {ENV_CERT_WARN} ({cert_warn:?})"),
            );
        }
        let disk_warn = env.parse_with(ENV_DISK_WARN, d.disk_warn, Threshold::parse);
        let disk_critical = env.parse_with(ENV_DISK_CRITICAL, d.disk_critical, Threshold::parse);
        let looser = match (disk_warn, disk_critical) {
            (Threshold::Percent(w), Threshold::Percent(c)) => c > w,
            (Threshold::Bytes(w), Threshold::Bytes(c)) => c > w,
            // Different kinds cannot be compared without a size: both are checked.
            _ => false,
        };
        if looser {
            env.error(
                ENV_DISK_CRITICAL,
                &disk_critical.to_string(),
                format!("at most {ENV_DISK_WARN} ({disk_warn})"),
            );
        }
        let disk_margin = env.parse_with(ENV_DISK_MARGIN, d.disk_margin, |s| {
            if s.trim() == "0%" {
                Ok(Threshold::Bytes(0))
            } else {
                Threshold::parse(s)
            }
        });
        Self { interval, cert_warn, cert_critical, disk_warn, disk_critical, disk_margin }
    }
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
            host: HostConfig::read(env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_compare_without_overflow() {
        assert_eq!(Threshold::parse("10%"), Ok(Threshold::Percent(10)));
        assert_eq!(Threshold::parse("5GB"), Ok(Threshold::Bytes(5_000_000_000)));
        assert_eq!(Threshold::parse("500 MiB"), Ok(Threshold::Bytes(500 << 20)));
        assert_eq!(Threshold::parse("4096"), Ok(Threshold::Bytes(4096)));
        for bad in
            ["0%", "100%", "x", "5XB", "99999999999999999999", "18446744073709551615TB", "-1%"]
        {
            assert!(Threshold::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Threshold::Percent(10).below(9, 100));
        assert!(!Threshold::Percent(10).below(10, 100));
        assert!(!Threshold::Percent(10).below(u64::MAX, u64::MAX));
        assert!(Threshold::Bytes(1 << 30).below(1 << 29, u64::MAX));
        let (pct, two) = (Threshold::Percent(10), Threshold::Percent(2));
        assert!(pct.below_with(two, 11, 100) && !pct.below_with(two, 12, 100));
        assert!(Threshold::Bytes(100).below_with(two, 119, 1000));
        assert!(!Threshold::Bytes(100).below_with(Threshold::Bytes(20), 120, 1000));
        // 198% of the largest size: below, and no overflow.
        assert!(Threshold::Percent(99).below_with(Threshold::Percent(99), u64::MAX, u64::MAX));
    }

    #[test]
    fn host_settings_are_read_and_checked_together() {
        let mut env = Env::from_pairs([
            (ENV_CERT_WARN, "30d"),
            (ENV_CERT_CRITICAL, "7d"),
            (ENV_DISK_WARN, "20GB"),
            (ENV_DISK_CRITICAL, "5%"),
            (ENV_DISK_MARGIN, "1GB"),
        ]);
        let host = HostConfig::read(&mut env);
        assert!(env.finish().is_ok());
        assert_eq!(host.cert_warn, Duration::from_secs(30 * 86_400));
        assert_eq!(host.disk_warn, Threshold::Bytes(20_000_000_000));
        assert_eq!(host.disk_margin, Threshold::Bytes(1_000_000_000));
        let mut env = Env::from_pairs([(ENV_DISK_MARGIN, "0%")]);
        assert_eq!(HostConfig::read(&mut env).disk_margin, Threshold::Bytes(0), "0% turns it off");
        assert!(env.finish().is_ok());
        let mut env = Env::from_pairs([(ENV_DISK_MARGIN, "lots")]);
        HostConfig::read(&mut env);
        assert!(env.finish().is_err_and(|e| e.to_string().contains(ENV_DISK_MARGIN)));
        let mut env = Env::from_pairs([(ENV_CERT_CRITICAL, "20d"), (ENV_DISK_CRITICAL, "15%")]);
        HostConfig::read(&mut env);
        let errors = env.finish().expect_err("critical looser than warning").to_string();
        assert!(
            errors.contains(ENV_CERT_CRITICAL) && errors.contains(ENV_DISK_CRITICAL),
            "{errors}"
        );
    }
}
