//! The updater's own settings, names and defaults in one place.

use std::time::Duration;

use steward_runtime::Env;

use std::str::FromStr as _;

use crate::links::{ApprovalLinks, MIN_SECRET_LEN};
use crate::renewal::RenewalConfig;

/// How long a requested pre-update backup is waited for.
pub const ENV_BACKUP_TIMEOUT: &str = "STEWARD_UPDATE_BACKUP_TIMEOUT";
/// How long the health gate waits for a healthcheck or HTTP probe to pass.
pub const ENV_HEALTH_TIMEOUT: &str = "STEWARD_HEALTH_TIMEOUT";
/// Without healthcheck or probe: how long the new container must run without restarting.
pub const ENV_HEALTH_GRACE: &str = "STEWARD_HEALTH_GRACE";
/// How long the `steward.update.pre` hook may run.
pub const ENV_HOOK_TIMEOUT: &str = "STEWARD_HOOK_TIMEOUT";
/// Base URL under which operators reach the updater's approval page (behind nginx).
pub const ENV_PUBLIC_URL: &str = "STEWARD_PUBLIC_URL";
/// Key that signs approval links (at least 32 bytes; give it as `_FILE`).
pub const ENV_APPROVAL_SECRET: &str = "STEWARD_APPROVAL_SECRET";
/// How long an approval link stays valid.
pub const ENV_APPROVAL_TTL: &str = "STEWARD_APPROVAL_TTL";

/// When the certificate renewal runs (cron, host time zone).
pub const ENV_CERTS_SCHEDULE: &str = "STEWARD_CERTS_SCHEDULE";
/// Weekly, Monday 04:00: outside the default update window and the nightly backup.
pub const DEFAULT_CERTS_SCHEDULE: &str = "0 4 * * 1";
/// How long the renewal command may run.
pub const ENV_CERTS_TIMEOUT: &str = "STEWARD_CERTS_TIMEOUT";
/// Only containers labelled `steward.scope=<this>` take part in the certificate renewal.
pub const ENV_SCOPE: &str = "STEWARD_SCOPE";

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
    /// Signed approval links; `None` without a public URL and secret (CLI approvals only).
    pub links: Option<ApprovalLinks>,
    /// The certificate renewal job.
    pub renewal: RenewalConfig,
}

impl UpdaterConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        Self {
            backup_timeout: env.duration(ENV_BACKUP_TIMEOUT, Duration::from_secs(30 * 60)),
            health_timeout: env.duration(ENV_HEALTH_TIMEOUT, Duration::from_secs(120)),
            health_grace: env.duration(ENV_HEALTH_GRACE, Duration::from_secs(30)),
            hook_timeout: env.duration(ENV_HOOK_TIMEOUT, Duration::from_secs(120)),
            links: read_links(env),
            renewal: read_renewal(env),
        }
    }
}

impl Default for RenewalConfig {
    fn default() -> Self {
        Self {
            schedule: croner::Cron::from_str(DEFAULT_CERTS_SCHEDULE)
                .unwrap_or_else(|_| unreachable!("the default schedule parses")),
            timeout: Duration::from_secs(10 * 60),
            reload_timeout: Duration::from_secs(120),
            scope: None,
        }
    }
}

fn read_renewal(env: &mut Env) -> RenewalConfig {
    let default = RenewalConfig::default();
    let schedule = env.parse_with(ENV_CERTS_SCHEDULE, None, |s| {
        croner::Cron::from_str(s).map(Some).map_err(|e| format!("not a cron expression: {e}"))
    });
    RenewalConfig {
        schedule: schedule.unwrap_or(default.schedule),
        timeout: env.duration(ENV_CERTS_TIMEOUT, default.timeout),
        reload_timeout: env.duration(ENV_HOOK_TIMEOUT, default.reload_timeout),
        scope: env.optional(ENV_SCOPE).filter(|s| !s.is_empty()),
    }
}

fn read_links(env: &mut Env) -> Option<ApprovalLinks> {
    let url = env.optional(ENV_PUBLIC_URL).filter(|s| !s.is_empty());
    let secret = env.optional(ENV_APPROVAL_SECRET).filter(|s| !s.is_empty());
    let ttl = env.duration(ENV_APPROVAL_TTL, Duration::from_secs(72 * 3600));
    match (url, secret) {
        (None, None) => None,
        (Some(url), None) => {
            env.error(ENV_PUBLIC_URL, &url, format!("set without {ENV_APPROVAL_SECRET}"));
            None
        }
        (None, Some(_)) => {
            env.error(ENV_APPROVAL_SECRET, "***", format!("set without {ENV_PUBLIC_URL}"));
            None
        }
        (Some(url), Some(secret)) => {
            let parsed = reqwest::Url::parse(&url);
            if !parsed.as_ref().is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                env.error(
                    ENV_PUBLIC_URL,
                    &url,
                    "expected an http(s) URL, e.g. https://git.example.com/steward",
                );
                return None;
            }
            if secret.len() < MIN_SECRET_LEN {
                env.error(
                    ENV_APPROVAL_SECRET,
                    "***",
                    format!("{} bytes; at least {MIN_SECRET_LEN} are needed (e.g. `openssl rand -hex 32`)", secret.len()),
                );
                return None;
            }
            Some(ApprovalLinks::new(&url, secret.as_bytes(), ttl))
        }
    }
}
