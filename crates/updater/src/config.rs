//! The updater's own settings, names and defaults in one place.

use std::time::Duration;

use steward_runtime::Env;

use crate::renewal::RenewalConfig;
use steward_approval::links::DEFAULT_REMIND_BEFORE;
use steward_approval::{ApprovalLinks, LinkKind, LinkVars};

/// How long a requested pre-update backup is waited for.
pub const ENV_BACKUP_TIMEOUT: &str = "STEWARD_UPDATE_BACKUP_TIMEOUT";
/// How long the health gate waits for a healthcheck or HTTP probe to pass.
pub const ENV_HEALTH_TIMEOUT: &str = "STEWARD_HEALTH_TIMEOUT";
/// Without healthcheck or probe: how long the new container must run without restarting.
pub const ENV_HEALTH_GRACE: &str = "STEWARD_HEALTH_GRACE";
/// How long the `steward.update.pre` hook may run.
pub const ENV_HOOK_TIMEOUT: &str = "STEWARD_HOOK_TIMEOUT";
/// Base URL under which operators reach the updater's approval page (behind nginx): `https`,
/// or `http` to a loopback host only.
pub const ENV_PUBLIC_URL: &str = "STEWARD_PUBLIC_URL";
/// Key that signs approval links (at least 32 bytes; give it as `_FILE`).
pub const ENV_APPROVAL_SECRET: &str = "STEWARD_APPROVAL_SECRET";
/// How long an approval link stays valid (from 1m to 7d; default 72h).
pub const ENV_APPROVAL_TTL: &str = "STEWARD_APPROVAL_TTL";

/// How many images of a managed repository are kept (the newest; those in use and the one
/// `steward rollback` brings back always are): `0` turns the cleanup off.
pub const ENV_KEEP_IMAGES: &str = "STEWARD_KEEP_IMAGES";
/// How long an update must have stood (its containers running, not restarted, not
/// unhealthy) before the old images of its repository are removed (`0s`: at once).
pub const ENV_PRUNE_GRACE: &str = "STEWARD_PRUNE_GRACE";
/// A day: the update has seen a night's backup and a working day's use.
pub const DEFAULT_PRUNE_GRACE: Duration = Duration::from_secs(24 * 3600);
/// How long before its link expires a still pending update is mailed again (`0s`: never).
pub const ENV_APPROVAL_REMIND_BEFORE: &str = "STEWARD_APPROVAL_REMIND_BEFORE";
/// Whether a successful update to a newer tag is written into the compose project (the `.env`
/// variable or the `image:` line), so the next `compose up` keeps it (`true`|`false`).
pub const ENV_WRITE_BACK: &str = "STEWARD_UPDATE_WRITE_BACK";
/// On: without it, the next `compose up -d` silently brings the old tag back.
pub const DEFAULT_WRITE_BACK: bool = true;
/// The running image and the previous one.
pub const DEFAULT_KEEP_IMAGES: u32 = 2;
/// More than this is a typo, not a policy.
pub const MAX_KEEP_IMAGES: u32 = 1000;

/// Shared with the deployer's start-first deployments.
pub use steward_runtime::{ENV_HAPROXY_SOCKET, ENV_HAPROXY_SWITCH_TIMEOUT};

/// When the certificate renewal runs (cron, host time zone).
pub const ENV_CERTS_SCHEDULE: &str = "STEWARD_CERTS_SCHEDULE";
/// Weekly, Monday 04:00: outside the default update window and the nightly backup.
pub const DEFAULT_CERTS_SCHEDULE: &str = "0 4 * * 1";
/// How long the renewal command may run.
pub const ENV_CERTS_TIMEOUT: &str = "STEWARD_CERTS_TIMEOUT";

/// The updater's settings.
#[derive(Debug, Clone)]
pub struct UpdaterConfig {
    /// Pre-update backup wait.
    pub backup_timeout: Duration,
    /// Health gate wait.
    pub health_timeout: Duration,
    /// "Running, no restarts" grace period.
    pub health_grace: Duration,
    /// One probe's settings, shared with the health service (`STEWARD_HEALTH_PROBE_TIMEOUT`).
    pub probe: steward_probe::ProbeConfig,
    /// Pre-update hook limit.
    pub hook_timeout: Duration,
    /// Signed approval links; `None` without a public URL and secret (CLI approvals only).
    pub links: Option<ApprovalLinks>,
    /// The certificate renewal job.
    pub renewal: RenewalConfig,
    /// Images kept per managed repository by the cleanup (`0`: no cleanup).
    pub keep_images: u32,
    /// How long an update stands before its repository's old images go.
    pub prune_grace: Duration,
    /// Write a newer tag into the compose project after a successful update.
    pub write_back: bool,
    /// HAProxy's admin socket, for start-first swaps.
    pub haproxy_socket: Option<std::path::PathBuf>,
    /// Each of the two waits of a start-first switch (new server up, old one drained).
    pub haproxy_switch_timeout: Duration,
}

impl UpdaterConfig {
    /// Reads the settings; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        Self {
            backup_timeout: env.duration(ENV_BACKUP_TIMEOUT, Duration::from_secs(30 * 60)),
            health_timeout: env.duration(ENV_HEALTH_TIMEOUT, Duration::from_secs(120)),
            health_grace: env.duration(ENV_HEALTH_GRACE, Duration::from_secs(30)),
            probe: steward_probe::ProbeConfig::read(env),
            hook_timeout: env.duration(ENV_HOOK_TIMEOUT, Duration::from_secs(120)),
            links: read_links(env),
            renewal: read_renewal(env),
            keep_images: env.parse_with(ENV_KEEP_IMAGES, DEFAULT_KEEP_IMAGES, |s| {
                match s.parse::<u32>() {
                    Ok(n) if n <= MAX_KEEP_IMAGES => Ok(n),
                    _ => Err(format!(
                        "a number of images from 0 (no cleanup) to {MAX_KEEP_IMAGES}; 2 keeps the running one and the previous"
                    )),
                }
            }),
            prune_grace: read_prune_grace(env),
            write_back: env.parse(ENV_WRITE_BACK, DEFAULT_WRITE_BACK),
            haproxy_socket: env.optional(ENV_HAPROXY_SOCKET).map(Into::into),
            haproxy_switch_timeout: env
                .duration(ENV_HAPROXY_SWITCH_TIMEOUT, Duration::from_secs(30)),
        }
    }
}

/// The most a grace may be: longer keeps every image of a repository updated weekly.
const MAX_PRUNE_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

fn read_prune_grace(env: &mut Env) -> Duration {
    let grace = env.duration(ENV_PRUNE_GRACE, DEFAULT_PRUNE_GRACE);
    if grace > MAX_PRUNE_GRACE {
        env.error(ENV_PRUNE_GRACE, &format!("{grace:?}"), "at most 30d (0s: at once)");
    }
    grace
}

impl Default for RenewalConfig {
    /// The defaults, as an unset environment reads them (one place for each).
    fn default() -> Self {
        read_renewal(&mut Env::from_pairs(std::iter::empty::<(String, String)>()))
    }
}

fn read_renewal(env: &mut Env) -> RenewalConfig {
    RenewalConfig {
        schedule: env.cron(ENV_CERTS_SCHEDULE, DEFAULT_CERTS_SCHEDULE),
        timeout: env.duration(ENV_CERTS_TIMEOUT, Duration::from_secs(10 * 60)),
        reload_timeout: env.duration(ENV_HOOK_TIMEOUT, Duration::from_secs(120)),
        scope: env.scope(),
    }
}

/// The updater's link settings (the deployer has its own: `steward_deployer::config`).
pub const LINK_VARS: LinkVars =
    LinkVars { public_url: ENV_PUBLIC_URL, secret: ENV_APPROVAL_SECRET, ttl: ENV_APPROVAL_TTL };

fn read_links(env: &mut Env) -> Option<ApprovalLinks> {
    let links = steward_approval::read_links(env, LinkKind::Update, &LINK_VARS)?;
    let remind = env.duration(ENV_APPROVAL_REMIND_BEFORE, DEFAULT_REMIND_BEFORE);
    Some(links.with_reminder(remind))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn read(pairs: &[(&str, &str)]) -> Result<UpdaterConfig, String> {
        let mut env = Env::from_pairs(pairs.iter().copied());
        let cfg = UpdaterConfig::read(&mut env);
        env.finish().map(|()| cfg).map_err(|e| e.to_string())
    }

    fn with_url(url: &str) -> Result<UpdaterConfig, String> {
        read(&[(ENV_PUBLIC_URL, url), (ENV_APPROVAL_SECRET, SECRET)])
    }

    #[test]
    fn public_url_is_https_unless_loopback() {
        for url in ["http://git.example.com/steward", "http://10.0.0.5:9102", "ftp://x/"] {
            let e = with_url(url).expect_err(url);
            assert!(e.contains(ENV_PUBLIC_URL) && e.contains("https"), "{url}: {e}");
        }
        for url in [
            "https://git.example.com/steward",
            "http://127.0.0.1:9102",
            "http://localhost:9102/steward",
            "http://[::1]:9102",
        ] {
            let cfg = with_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert!(cfg.links.is_some(), "{url}");
        }
    }

    #[test]
    fn keep_images_defaults_to_two_and_refuses_nonsense() {
        assert_eq!(read(&[]).map(|c| c.keep_images), Ok(DEFAULT_KEEP_IMAGES));
        assert_eq!(read(&[(ENV_KEEP_IMAGES, "0")]).map(|c| c.keep_images), Ok(0));
        for bad in ["-1", "two", "1001", "1e3"] {
            let e = read(&[(ENV_KEEP_IMAGES, bad)]).expect_err(bad);
            assert!(e.contains(ENV_KEEP_IMAGES), "{bad}: {e}");
        }
        assert_eq!(read(&[]).map(|c| c.prune_grace), Ok(DEFAULT_PRUNE_GRACE));
        assert_eq!(read(&[(ENV_PRUNE_GRACE, "0s")]).map(|c| c.prune_grace), Ok(Duration::ZERO));
        for bad in ["31d", "soon", "-1h"] {
            let e = read(&[(ENV_PRUNE_GRACE, bad)]).expect_err(bad);
            assert!(e.contains(ENV_PRUNE_GRACE), "{bad}: {e}");
        }
    }

    #[test]
    fn the_default_certs_schedule_parses() {
        let cfg = read(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.renewal.schedule.as_str(), DEFAULT_CERTS_SCHEDULE);
        let e = read(&[(ENV_CERTS_SCHEDULE, "mondays")]).expect_err("a bad schedule");
        assert!(e.contains("STEWARD_CERTS_SCHEDULE=\"mondays\": not a cron"), "{e}");
    }

    #[test]
    fn approval_ttl_is_bounded_to_seven_days() {
        let at = |ttl: &str| {
            read(&[
                (ENV_PUBLIC_URL, "https://git.example.com/steward"),
                (ENV_APPROVAL_SECRET, SECRET),
                (ENV_APPROVAL_TTL, ttl),
            ])
        };
        for ttl in ["8d", "1000000y", "0s", "30s"] {
            let e = at(ttl).expect_err(ttl);
            assert!(e.contains(ENV_APPROVAL_TTL) && e.contains("7d"), "{ttl}: {e}");
        }
        for ttl in ["1m", "72h", "7d"] {
            at(ttl).unwrap_or_else(|e| panic!("{ttl}: {e}"));
        }
        // Bounded even when links are not configured: a later URL must not make it valid.
        assert!(read(&[(ENV_APPROVAL_TTL, "30d")]).is_err());
    }
}
