//! The container label contract, parsed.
//!
//! Operators configure Steward per container with labels (`steward.enable=true`,
//! `steward.update.policy=manual`, ...). This crate turns a container's labels into typed
//! settings or a [`LabelError`] naming the label and what is wrong with it, so a typo skips
//! that one container with a clear warning and affects nothing else.
//!
//! Invariant: pure data, no I/O. The seeds' older labels (`diun.enable`, `update.policy`)
//! are honoured; the `steward.*` label wins when both are set.

use std::collections::HashMap;
use std::fmt;

pub mod compose;

/// Watch this container.
pub const ENABLE: &str = "steward.enable";
/// Diun's opt-in label, honoured too.
pub const ENABLE_DIUN: &str = "diun.enable";
/// What to do with a newer image.
pub const POLICY: &str = "steward.update.policy";
/// The seeds' policy label, honoured too.
pub const POLICY_LEGACY: &str = "update.policy";
/// `false` skips the backup before an update.
pub const UPDATE_BACKUP: &str = "steward.update.backup";
/// HTTP probe for the health gate.
pub const HEALTH_URL: &str = "steward.health.url";
/// `true`: the health service restarts the container when it declares it down (bounded).
pub const HEALTH_RESTART: &str = "steward.health.restart";
/// A configuration check the health service runs by exec (`true` for `nginx -t`, or a
/// command line without shell), reporting a failure once and its recovery once.
pub const HEALTH_CHECK: &str = "steward.health.check";
/// The configuration check of `steward.health.check=true`.
pub const DEFAULT_HEALTH_CHECK: &str = "nginx -t";
/// Free space the health service watches in this container (`true`: the engine's data root,
/// seen as the container's `/`, and every volume it mounts; or a comma-separated list of
/// mount points, `/` included to mean the data root).
pub const HEALTH_DISK: &str = "steward.health.disk";
/// The TLS endpoints this container serves, whose certificates' expiry the health service
/// watches by handshake: comma-separated `HOST:PORT`, each optionally `NAME@HOST:PORT` to send
/// `NAME` as the server name (SNI) when connecting to `HOST`, and `nats://` before a NATS
/// server's port (it sends its `INFO` line in the clear before TLS: a hub's leaf-node port).
pub const HEALTH_TLS: &str = "steward.health.tls";
/// An automatic update waits until the new digest is this old (`3d`, `12h`).
pub const MIN_AGE: &str = "steward.update.min_age";
/// The longest `steward.update.min_age`: a bound that keeps the updater's date arithmetic
/// (event time + minimum age) far from overflowing. A day over a year, so `1y` (365.25 days
/// to humantime) and `365d` both pass.
pub const MAX_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);
/// Updates start only inside this window (`Sun 03:00-05:00`), host time zone.
pub const WINDOW: &str = "steward.update.window";
/// A shell command run by exec in the old container before it is stopped.
pub const PRE_HOOK: &str = "steward.update.pre";
/// In a compose file the deployer deploys: a test command (plain command and arguments, no
/// shell) run in a throw-away container of this service before anything is touched; the
/// deployment fails when it exits non-zero.
pub const DEPLOY_TEST: &str = "steward.deploy.test";
/// In a compose file the deployer deploys: a one-off command (plain command and arguments, no
/// shell; e.g. database migrations) run in a throw-away container of this service's new
/// definition after the pre-deployment backup and before the new version starts; the
/// deployment rolls back when it exits non-zero.
pub const DEPLOY_PRE: &str = "steward.deploy.pre";
/// How the update swaps containers: `stop-first` (the default: the old one stops, then the
/// new one starts) or `start-first` (the new one starts beside the old one and HAProxy is
/// switched to it; never for a service that cannot run twice, such as PostgreSQL or Gitea).
pub const STRATEGY: &str = "steward.update.strategy";
/// Start-first: the HAProxy backend that serves this container.
pub const HAPROXY_BACKEND: &str = "steward.haproxy.backend";
/// Start-first: the HAProxy server of this container in that backend (default: the container
/// name).
pub const HAPROXY_SERVER: &str = "steward.haproxy.server";
/// Start-first: the port the container serves on (inside its network).
pub const HAPROXY_PORT: &str = "steward.haproxy.port";
/// Start-first: the Docker network through which HAProxy reaches the container (default: its
/// only one).
pub const HAPROXY_NETWORK: &str = "steward.haproxy.network";

/// On a database container: dump it with `pg_dump` by exec.
pub const BACKUP_POSTGRES: &str = "steward.backup.postgres";
/// On an app container: archive these comma-separated absolute paths.
pub const BACKUP_PATHS: &str = "steward.backup.paths";
/// Stop the container while its paths are archived.
pub const BACKUP_STOP: &str = "steward.backup.stop";
/// On a database container with [`BACKUP_POSTGRES`]: also take physical base backups
/// (`pg_basebackup`), what point-in-time recovery builds on.
pub const BACKUP_PITR: &str = "steward.backup.pitr";
/// A command run by exec (as the container's user) after a restore, e.g. Gitea's
/// `gitea admin regenerate hooks`.
pub const RESTORE_POST: &str = "steward.restore.post";

/// On the certbot container: run the certificate renewal here (`true` for
/// [`DEFAULT_RENEW`], or a shell command).
pub const CERTS_RENEW: &str = "steward.certs.renew";
/// On the certbot container: the directory of the live certificates, compared before and
/// after the renewal (default `/etc/letsencrypt/live`).
pub const CERTS_PATH: &str = "steward.certs.path";
/// On a TLS server container: run this after a certificate changed (`true` for
/// [`DEFAULT_RELOAD`], or a shell command).
pub const CERTS_RELOAD: &str = "steward.certs.reload";
/// The renewal command of `steward.certs.renew=true`. Without `--no-random-sleep-on-renew`
/// certbot waits up to 8 minutes first when it has no terminal.
pub const DEFAULT_RENEW: &str = "certbot renew --non-interactive --no-random-sleep-on-renew";
/// The reload command of `steward.certs.reload=true`.
pub const DEFAULT_RELOAD: &str = "nginx -s reload";
/// Where certbot keeps the live certificates.
pub const DEFAULT_CERTS_PATH: &str = "/etc/letsencrypt/live";

/// Which Steward installation owns the container (with `STEWARD_SCOPE`): several can share
/// one Docker host, as Watchtower's scopes allow.
pub const SCOPE: &str = "steward.scope";
/// Tag tracking: a regular expression selecting the tags to follow by semantic version.
pub const WATCH_TAGS: &str = "steward.watch.tags";

/// A label with a value Steward cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {label}={value:?}: {reason}")]
pub struct LabelError {
    /// The label.
    pub label: &'static str,
    /// Its value.
    pub value: String,
    /// What is expected instead.
    pub reason: String,
}

/// What to do when a newer image exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Apply it without asking.
    Automatic,
    /// Ask a human first.
    Manual,
    /// Only tell.
    #[default]
    Notify,
}

impl Policy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Automatic => "automatic",
            Policy::Manual => "manual",
            Policy::Notify => "notify",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which newer tags to follow.
#[derive(Debug, Clone)]
pub struct TagRule {
    pattern: regex::Regex,
}

impl TagRule {
    /// The regular expression as written.
    pub fn pattern(&self) -> &str {
        self.pattern.as_str()
    }

    /// Among `tags`, the highest semantic version matching the rule that is newer than
    /// `current` (itself a version tag), if any.
    pub fn newest<'a>(
        &self,
        current: &str,
        tags: impl IntoIterator<Item = &'a str>,
    ) -> Option<&'a str> {
        let current = version_of(current)?;
        tags.into_iter()
            .filter(|t| self.pattern.is_match(t))
            .filter_map(|t| version_of(t).map(|v| (v, t)))
            .filter(|(v, _)| *v > current)
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, t)| t)
    }
}

/// A tag read as a semantic version: `1.22.7`, `v1.22`, `1.22.7-rootless`. Missing minor or
/// patch numbers count as 0; anything after a `-` is a pre-release, sorted as semver says.
pub fn version_of(tag: &str) -> Option<semver::Version> {
    let tag = tag.strip_prefix('v').unwrap_or(tag);
    let (core, pre) = match tag.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (tag, None),
    };
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().transpose().ok()?.unwrap_or(0);
    let patch = parts.next().transpose().ok()?.unwrap_or(0);
    if parts.next().is_some() {
        return None;
    }
    let mut v = semver::Version::new(major, minor, patch);
    if let Some(pre) = pre {
        v.pre = semver::Prerelease::new(pre).ok()?;
    }
    Some(v)
}

/// The watch settings of one container.
#[derive(Debug, Clone)]
pub struct WatchLabels {
    /// Update policy.
    pub policy: Policy,
    /// Tag tracking, if asked for.
    pub tags: Option<TagRule>,
}

fn boolean(label: &'static str, value: &str) -> Result<bool, LabelError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => {
            Err(LabelError { label, value: value.into(), reason: "expected true or false".into() })
        }
    }
}

/// Whether the container opted in to watching (`steward.enable`, else `diun.enable`).
pub fn watched(labels: &HashMap<String, String>) -> Result<bool, LabelError> {
    match (labels.get(ENABLE), labels.get(ENABLE_DIUN)) {
        (Some(v), _) => boolean(ENABLE, v),
        (None, Some(v)) => boolean(ENABLE_DIUN, v),
        (None, None) => Ok(false),
    }
}

/// Compose's mark on the containers of `docker-compose run` (value `True`).
pub const COMPOSE_ONEOFF: &str = "com.docker.compose.oneoff";

/// Whether the container is a one-off of `docker-compose run` (a deployment's test or
/// migration, an operator's command): it carries its service's labels and healthcheck, but is
/// not the service, so it is never probed, restarted, updated or taken for the service.
pub fn one_off(labels: &HashMap<String, String>) -> bool {
    labels.get(COMPOSE_ONEOFF).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Steward's mark on its own short-lived containers (value: what each works for): a
/// listing's one-shot, a restore's, a verification's or a PITR replay's scratch, a helper
/// sharing a stopped container's volumes.
pub const HELPER: &str = "steward.helper";
/// The mark of the never-started helper that mounts a compose project's directory (value:
/// its owner, the update's id), told apart so that its owner can sweep its own leftovers.
pub const PROJECT_HELPER: &str = "steward.project-helper";

/// Whether the container only stands in for a service: a compose one-off (above) or one of
/// Steward's helpers. Both carry labels that are not theirs (a container inherits its
/// image's labels, so a helper of an image labelled `steward.enable` or
/// `steward.backup.paths` is labelled so too, for the seconds or minutes it lives), and
/// none is ever watched, probed, backed up, updated or taken for a service.
pub fn stand_in(labels: &HashMap<String, String>) -> bool {
    one_off(labels) || labels.contains_key(HELPER) || labels.contains_key(PROJECT_HELPER)
}

/// Whether the container belongs to `scope` (`None`: the installation without a scope, which
/// owns containers without a `steward.scope` label).
pub fn in_scope(labels: &HashMap<String, String>, scope: Option<&str>) -> bool {
    labels.get(SCOPE).map(String::as_str) == scope
}

/// True if any opt-in label is present (even a malformed one: worth a warning).
pub fn mentions_watch(labels: &HashMap<String, String>) -> bool {
    labels.contains_key(ENABLE) || labels.contains_key(ENABLE_DIUN)
}

/// The watch settings of a watched container.
pub fn watch_labels(labels: &HashMap<String, String>) -> Result<WatchLabels, LabelError> {
    let (label, raw) = match (labels.get(POLICY), labels.get(POLICY_LEGACY)) {
        (Some(v), _) => (POLICY, Some(v)),
        (None, Some(v)) => (POLICY_LEGACY, Some(v)),
        (None, None) => (POLICY, None),
    };
    let policy = match raw.map(|v| v.trim().to_ascii_lowercase()) {
        None => Policy::default(),
        Some(v) => match v.as_str() {
            "automatic" | "auto" => Policy::Automatic,
            "manual" => Policy::Manual,
            "notify" => Policy::Notify,
            _ => {
                return Err(LabelError {
                    label,
                    value: raw.cloned().unwrap_or_default(),
                    reason: "expected automatic, manual or notify".into(),
                })
            }
        },
    };
    let tags = match labels.get(WATCH_TAGS) {
        None => None,
        Some(v) => Some(TagRule {
            pattern: regex::Regex::new(v).map_err(|e| LabelError {
                label: WATCH_TAGS,
                value: v.clone(),
                reason: format!("not a regular expression: {e}"),
            })?,
        }),
    };
    Ok(WatchLabels { policy, tags })
}

/// How an update swaps the old container for the new one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The old container stops, then the new one starts under the name.
    #[default]
    StopFirst,
    /// The new container starts beside the old one, passes the health gate, HAProxy is
    /// switched to it, then the old one stops.
    StartFirst(HaproxyTarget),
}

/// Where HAProxy serves a start-first container. The names are HAProxy's to check
/// (`steward_haproxy::Name`), when the update runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyTarget {
    /// Its backend.
    pub backend: String,
    /// Its server in the backend; `None`: the container name.
    pub server: Option<String>,
    /// The port it serves on.
    pub port: u16,
    /// The Docker network HAProxy reaches it through; `None`: its only one.
    pub network: Option<String>,
}

/// How to update a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateLabels {
    /// Update policy.
    pub policy: Policy,
    /// Back up before updating (default true).
    pub backup: bool,
    /// HTTP probe for the health gate.
    pub health_url: Option<String>,
    /// Minimum age of a new digest before an automatic update.
    pub min_age: Option<std::time::Duration>,
    /// Maintenance window.
    pub window: Option<Window>,
    /// Command run in the old container before it is stopped.
    pub pre: Option<String>,
    /// Stop-first (default) or start-first behind HAProxy.
    pub strategy: Strategy,
}

impl UpdateLabels {
    /// When an image published at `published` is old enough for `steward.update.min_age`
    /// (`None` without one). Checked: a time near the end of the calendar saturates there
    /// (the update waits forever) instead of panicking.
    pub fn not_before(&self, published: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
        let age = self.min_age?;
        Some(published.saturating_add(age.try_into().unwrap_or(time::Duration::MAX)))
    }
}

/// A weekly maintenance window: some days (all when none are named), from a start to an end
/// time of day; an end before the start runs past midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    days: Vec<chrono::Weekday>,
    start: chrono::NaiveTime,
    end: chrono::NaiveTime,
}

impl Window {
    /// Parses `Sun 03:00-05:00`, `Sat,Sun 22:00-02:00`, `Mon-Fri 01:00-03:00`, `02:00-04:00`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let expected = || {
            "expected [DAYS] HH:MM-HH:MM, e.g. Sun 03:00-05:00 or Mon-Fri 01:00-03:00".to_owned()
        };
        let mut parts = s.split_whitespace();
        let (days, times) = match (parts.next(), parts.next(), parts.next()) {
            (Some(times), None, None) => (None, times),
            (Some(days), Some(times), None) => (Some(days), times),
            _ => return Err(expected()),
        };
        let (start, end) = times.split_once('-').ok_or_else(expected)?;
        let time = |t: &str| chrono::NaiveTime::parse_from_str(t, "%H:%M").map_err(|_| expected());
        let (start, end) = (time(start)?, time(end)?);
        if start == end {
            return Err("the window is empty: start and end are the same".into());
        }
        let day = |d: &str| {
            d.parse::<chrono::Weekday>().map_err(|_| format!("{d:?} is not a day (Mon, Tue, ...)"))
        };
        let mut list = vec![];
        for item in days.map(|d| d.split(',').collect::<Vec<_>>()).unwrap_or_default() {
            match item.split_once('-') {
                Some((from, to)) => {
                    let (mut d, to) = (day(from)?, day(to)?);
                    list.push(d);
                    while d != to {
                        d = d.succ();
                        list.push(d);
                    }
                }
                None => list.push(day(item)?),
            }
        }
        Ok(Self { days: list, start, end })
    }

    fn day_allowed(&self, d: chrono::Weekday) -> bool {
        self.days.is_empty() || self.days.contains(&d)
    }

    /// Whether `t` (local time) is inside the window.
    pub fn contains(&self, t: chrono::NaiveDateTime) -> bool {
        use chrono::Datelike;
        let (day, time) = (t.weekday(), t.time());
        if self.start < self.end {
            self.day_allowed(day) && time >= self.start && time < self.end
        } else {
            // Past midnight: the evening part belongs to its day, the morning part to the day before.
            (self.day_allowed(day) && time >= self.start)
                || (self.day_allowed(day.pred()) && time < self.end)
        }
    }

    /// The first moment at or after `t` inside the window (minute resolution).
    pub fn next_open(&self, t: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
        if self.contains(t) {
            return t;
        }
        let mut day = t.date();
        // Within 8 days every weekly window opens.
        for _ in 0..9 {
            let opening = day.and_time(self.start);
            if opening >= t && self.contains(opening) {
                return opening;
            }
            day = day.succ_opt().unwrap_or(day);
        }
        t
    }
}

/// The `steward.health.url` of a container, if it has one: the one reading of the label for
/// the health service and the update gate.
pub fn health_url(labels: &HashMap<String, String>) -> Result<Option<&str>, LabelError> {
    match labels.get(HEALTH_URL) {
        None => Ok(None),
        Some(v) if v.starts_with("http://") || v.starts_with("https://") => Ok(Some(v)),
        Some(v) => Err(LabelError {
            label: HEALTH_URL,
            value: v.clone(),
            reason: "expected an http:// or https:// URL".into(),
        }),
    }
}

/// Whether the health service may restart the container when it is down
/// (`steward.health.restart`, default no).
pub fn health_restart(labels: &HashMap<String, String>) -> Result<bool, LabelError> {
    match labels.get(HEALTH_RESTART) {
        None => Ok(false),
        Some(v) => boolean(HEALTH_RESTART, v),
    }
}

/// The configuration check of `steward.health.check`, as the program and its arguments (no
/// shell: a check is one read-only command such as `nginx -t`); `None` without the label or
/// with `false`.
pub fn health_check(labels: &HashMap<String, String>) -> Result<Option<Vec<String>>, LabelError> {
    let Some(raw) = labels.get(HEALTH_CHECK) else { return Ok(None) };
    let v = raw.trim();
    if v.eq_ignore_ascii_case("false") {
        return Ok(None);
    }
    let line = if v.eq_ignore_ascii_case("true") { DEFAULT_HEALTH_CHECK } else { v };
    plain_command(HEALTH_CHECK, raw, line, "`nginx -t`").map(Some)
}

/// The deployment test of `steward.deploy.test` (a compose service's label), as the program
/// and its arguments (no shell, as [`health_check`]); `None` without the label.
pub fn deploy_test(labels: &HashMap<String, String>) -> Result<Option<Vec<String>>, LabelError> {
    let Some(raw) = labels.get(DEPLOY_TEST) else { return Ok(None) };
    plain_command(DEPLOY_TEST, raw, raw.trim(), "`pytest -q` or `npm test`").map(Some)
}

/// The pre-deployment command of `steward.deploy.pre` (a compose service's label), as the
/// program and its arguments (no shell, as [`deploy_test`]); `None` without the label.
pub fn deploy_pre(labels: &HashMap<String, String>) -> Result<Option<Vec<String>>, LabelError> {
    let Some(raw) = labels.get(DEPLOY_PRE) else { return Ok(None) };
    plain_command(DEPLOY_PRE, raw, raw.trim(), "`gitea migrate` or `./manage.py migrate`").map(Some)
}

/// `line` (the value of `label`, `raw`) as a program and its arguments.
fn plain_command(
    label: &'static str,
    raw: &str,
    line: &str,
    example: &str,
) -> Result<Vec<String>, LabelError> {
    let bad = |reason: String| LabelError { label, value: raw.to_owned(), reason };
    if line.is_empty() {
        return Err(bad(format!("expected a command such as {example}")));
    }
    // No shell runs it: quotes, pipes or variables would mean something else than they seem.
    if line.chars().any(|c| "\"'`$|&;<>(){}\\*?".contains(c)) {
        return Err(bad(format!(
            "expected a plain command and arguments (no shell syntax), such as {example}"
        )));
    }
    Ok(line.split_whitespace().map(str::to_owned).collect())
}

/// Which filesystems `steward.health.disk` asks to watch in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskWatch {
    /// `true`: `/` (the engine's data root) and every volume the container mounts.
    All,
    /// These mount points (absolute paths; `/` is the data root).
    Paths(Vec<String>),
}

/// The `steward.health.disk` of a container, if it has one (`false` is none).
pub fn health_disk(labels: &HashMap<String, String>) -> Result<Option<DiskWatch>, LabelError> {
    let Some(raw) = labels.get(HEALTH_DISK) else { return Ok(None) };
    let v = raw.trim();
    if v.eq_ignore_ascii_case("true") {
        return Ok(Some(DiskWatch::All));
    }
    if v.eq_ignore_ascii_case("false") {
        return Ok(None);
    }
    let paths: Vec<String> =
        v.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
    let good = |p: &String| {
        p.starts_with('/')
            && !p.split('/').any(|c| c == "..")
            && !p.chars().any(char::is_whitespace)
    };
    if paths.is_empty() || !paths.iter().all(good) {
        return Err(LabelError {
            label: HEALTH_DISK,
            value: raw.clone(),
            reason:
                "expected true, false or absolute mount points separated by commas, such as /,/data"
                    .into(),
        });
    }
    Ok(Some(DiskWatch::Paths(paths)))
}

/// One endpoint of `steward.health.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsEndpoint {
    /// The server name sent (SNI) and the certificate is for; `None`: the host's, when the
    /// host is a DNS name (an IP address sends none).
    pub server_name: Option<String>,
    /// Where to connect: a DNS name or an IP address (brackets removed).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// A NATS server's port (`nats://`): its `INFO` line comes before the TLS handshake.
    pub nats: bool,
}

impl fmt::Display for TlsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nats {
            write!(f, "{NATS_SCHEME}")?;
        }
        if let Some(name) = &self.server_name {
            write!(f, "{name}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A DNS name as a label value may hold one: letters, digits, `-`, `.`, `_` (a `*` would be a
/// pattern, not a name to ask for).
fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        && !s.starts_with(['.', '-'])
}

/// The prefix of a NATS server's endpoint in `steward.health.tls`.
const NATS_SCHEME: &str = "nats://";

fn tls_endpoint(entry: &str) -> Option<TlsEndpoint> {
    let (nats, entry) = match entry.strip_prefix(NATS_SCHEME) {
        Some(rest) => (true, rest),
        None => (false, entry),
    };
    let (server_name, address) = match entry.split_once('@') {
        Some((name, address)) => (Some(name), address),
        None => (None, entry),
    };
    if server_name.is_some_and(|n| !dns_name(n)) {
        return None;
    }
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            v6
        }
        None if dns_name(host) => host,
        None => return None,
    };
    Some(TlsEndpoint {
        server_name: server_name.map(str::to_owned),
        host: host.to_owned(),
        port,
        nats,
    })
}

/// The `steward.health.tls` of a container, if it has one (`false` is none).
pub fn health_tls(
    labels: &HashMap<String, String>,
) -> Result<Option<Vec<TlsEndpoint>>, LabelError> {
    let Some(raw) = labels.get(HEALTH_TLS) else { return Ok(None) };
    let v = raw.trim();
    if v.eq_ignore_ascii_case("false") {
        return Ok(None);
    }
    let mut out: Vec<TlsEndpoint> = vec![];
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some(endpoint) = tls_endpoint(entry) else {
            return Err(LabelError {
                label: HEALTH_TLS,
                value: raw.clone(),
                reason: format!(
                    "{entry:?}: expected HOST:PORT or NAME@HOST:PORT, comma-separated, each \
                     optionally after nats:// (a NATS server's port), such as \
                     git.example.com@nginx:443"
                ),
            });
        };
        if !out.contains(&endpoint) {
            out.push(endpoint);
        }
    }
    if out.is_empty() {
        return Err(LabelError {
            label: HEALTH_TLS,
            value: raw.clone(),
            reason:
                "expected false or HOST:PORT or NAME@HOST:PORT, such as git.example.com@nginx:443"
                    .into(),
        });
    }
    Ok(Some(out))
}

/// The update settings of a container.
pub fn update_labels(labels: &HashMap<String, String>) -> Result<UpdateLabels, LabelError> {
    let policy = watch_labels(labels)?.policy;
    let backup = match labels.get(UPDATE_BACKUP) {
        None => true,
        Some(v) => boolean(UPDATE_BACKUP, v)?,
    };
    let health_url = health_url(labels)?.map(str::to_owned);
    let min_age = match labels.get(MIN_AGE) {
        None => None,
        Some(v) => {
            let bad = |reason: String| LabelError { label: MIN_AGE, value: v.clone(), reason };
            let age = humantime::parse_duration(v.trim())
                .map_err(|e| bad(format!("{e} (examples: 3d, 12h)")))?;
            if age > MAX_MIN_AGE {
                return Err(bad("at most 1 year (1y): a longer wait is no update at all; \
                                use steward.update.policy=notify or manual instead"
                    .into()));
            }
            Some(age)
        }
    };
    let window = match labels.get(WINDOW) {
        None => None,
        Some(v) => Some(Window::parse(v).map_err(|reason| LabelError {
            label: WINDOW,
            value: v.clone(),
            reason,
        })?),
    };
    let pre = labels.get(PRE_HOOK).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let strategy = strategy(labels)?;
    Ok(UpdateLabels { policy, backup, health_url, min_age, window, pre, strategy })
}

/// The swap strategy of a container: `start-first` needs [`HAPROXY_BACKEND`] and
/// [`HAPROXY_PORT`].
pub fn strategy(labels: &HashMap<String, String>) -> Result<Strategy, LabelError> {
    let Some(v) = labels.get(STRATEGY) else { return Ok(Strategy::StopFirst) };
    let bad = |label, value: &str, reason: &str| LabelError {
        label,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    match v.trim() {
        "stop-first" => Ok(Strategy::StopFirst),
        "start-first" => {
            let text =
                |label| labels.get(label).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
            let backend = text(HAPROXY_BACKEND).ok_or_else(|| {
                bad(
                    STRATEGY,
                    v,
                    "start-first needs steward.haproxy.backend (the HAProxy backend serving it)",
                )
            })?;
            let port = text(HAPROXY_PORT).ok_or_else(|| {
                bad(STRATEGY, v, "start-first needs steward.haproxy.port (the port it serves on)")
            })?;
            let port = match port.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(bad(HAPROXY_PORT, &port, "a port, 1 to 65535")),
            };
            Ok(Strategy::StartFirst(HaproxyTarget {
                backend,
                server: text(HAPROXY_SERVER),
                port,
                network: text(HAPROXY_NETWORK),
            }))
        }
        _ => Err(bad(STRATEGY, v, "stop-first or start-first")),
    }
}

/// A container's part in the certificate renewal.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CertsLabels {
    /// The renewal command to run in it (a shell command line).
    pub renew: Option<String>,
    /// Its live certificates directory (meaningful with `renew`).
    pub path: String,
    /// The command that puts changed certificates in service.
    pub reload: Option<String>,
}

/// The certificate renewal settings of a container.
pub fn certs_labels(labels: &HashMap<String, String>) -> Result<CertsLabels, LabelError> {
    let command = |label: &'static str, default: &str| -> Result<Option<String>, LabelError> {
        match labels.get(label).map(|v| v.trim()) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(default.to_owned())),
            Some(v) if v.is_empty() || v.eq_ignore_ascii_case("false") => Ok(None),
            Some(v) => Ok(Some(v.to_owned())),
        }
    };
    let path = match labels.get(CERTS_PATH).map(|v| v.trim()) {
        None => DEFAULT_CERTS_PATH.to_owned(),
        Some(v) if v.starts_with('/') && !v.split('/').any(|c| c == "..") => {
            v.trim_end_matches('/').to_owned()
        }
        Some(v) => {
            return Err(LabelError {
                label: CERTS_PATH,
                value: v.to_owned(),
                reason: "expected an absolute path without `..`".into(),
            })
        }
    };
    Ok(CertsLabels {
        renew: command(CERTS_RENEW, DEFAULT_RENEW)?,
        path,
        reload: command(CERTS_RELOAD, DEFAULT_RELOAD)?,
    })
}

/// What to back up of one container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackupLabels {
    /// Dump its PostgreSQL database.
    pub postgres: bool,
    /// Archive these absolute paths.
    pub paths: Vec<String>,
    /// Stop it while the paths are archived.
    pub stop: bool,
    /// Base backups for point-in-time recovery too (only with `postgres`).
    pub pitr: bool,
}

impl BackupLabels {
    /// Whether there is anything to back up.
    pub fn any(&self) -> bool {
        self.postgres || !self.paths.is_empty()
    }
}

/// Reads the backup labels; a container without them backs up nothing.
pub fn backup_labels(labels: &HashMap<String, String>) -> Result<BackupLabels, LabelError> {
    let postgres = match labels.get(BACKUP_POSTGRES) {
        Some(v) => boolean(BACKUP_POSTGRES, v)?,
        None => false,
    };
    let stop = match labels.get(BACKUP_STOP) {
        Some(v) => boolean(BACKUP_STOP, v)?,
        None => false,
    };
    let pitr = match labels.get(BACKUP_PITR) {
        Some(v) => boolean(BACKUP_PITR, v)?,
        None => false,
    };
    if pitr && !postgres {
        return Err(LabelError {
            label: BACKUP_PITR,
            value: labels.get(BACKUP_PITR).cloned().unwrap_or_default(),
            reason: format!("needs {BACKUP_POSTGRES}=true on the same container"),
        });
    }
    let mut paths = vec![];
    if let Some(value) = labels.get(BACKUP_PATHS) {
        for path in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |reason: &str| LabelError {
                label: BACKUP_PATHS,
                value: value.clone(),
                reason: format!("{path:?}: {reason}"),
            };
            if !path.starts_with('/') {
                return Err(bad("paths must be absolute"));
            }
            if path.split('/').any(|c| c == ".." || c == ".") {
                return Err(bad("no '.' or '..' components"));
            }
            let path = path.trim_end_matches('/');
            if path.is_empty() {
                return Err(bad("the root directory cannot be archived; name the data paths"));
            }
            if !paths.iter().any(|p: &String| p == path) {
                paths.push(path.to_owned());
            }
        }
    }
    Ok(BackupLabels { postgres, paths, stop, pitr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn opt_in_and_policy_with_legacy_labels() {
        assert_eq!(watched(&labels(&[("diun.enable", "true")])), Ok(true));
        assert_eq!(
            watched(&labels(&[("steward.enable", "false"), ("diun.enable", "true")])),
            Ok(false)
        );
        assert_eq!(watched(&labels(&[])), Ok(false));
        let err = watched(&labels(&[("steward.enable", "yep")])).expect_err("bad");
        assert_eq!(err.to_string(), "label steward.enable=\"yep\": expected true or false");

        let p = |pairs| watch_labels(&labels(pairs)).map(|w| w.policy);
        assert_eq!(p(&[]), Ok(Policy::Notify));
        assert_eq!(p(&[("update.policy", "manual")]), Ok(Policy::Manual));
        assert_eq!(
            p(&[("update.policy", "manual"), ("steward.update.policy", "Automatic")]),
            Ok(Policy::Automatic)
        );
        let err = p(&[("steward.update.policy", "sometimes")]).expect_err("bad");
        assert!(err.to_string().contains("expected automatic, manual or notify"));
    }

    #[test]
    fn tag_rule_picks_the_highest_newer_matching_version() {
        let w = watch_labels(&labels(&[("steward.watch.tags", r"^1\.22\.\d+$")])).expect("ok");
        let rule = w.tags.expect("rule");
        let tags = ["1.22.5", "1.22.6", "1.22.7", "1.22.10", "1.23.0", "latest", "1.22.9-rc1"];
        assert_eq!(rule.newest("1.22.6", tags), Some("1.22.10"));
        assert_eq!(rule.newest("1.22.10", tags), None);
        assert_eq!(
            rule.newest("latest", tags),
            None,
            "a non-version current tag cannot be compared"
        );
        assert!(watch_labels(&labels(&[("steward.watch.tags", "1.(")])).is_err());
    }

    #[test]
    fn update_labels_default_to_a_backup_and_check_the_probe() {
        let u = update_labels(&labels(&[("steward.update.policy", "automatic")])).expect("ok");
        assert_eq!((u.policy, u.backup, u.health_url), (Policy::Automatic, true, None));
        let u = update_labels(&labels(&[
            ("steward.update.backup", "false"),
            ("steward.health.url", "http://web:8080/"),
        ]))
        .expect("ok");
        assert!(!u.backup);
        assert_eq!(u.health_url.as_deref(), Some("http://web:8080/"));
        assert!(update_labels(&labels(&[("steward.health.url", "web:8080")])).is_err());
        assert!(update_labels(&labels(&[("steward.update.backup", "perhaps")])).is_err());
    }

    #[test]
    fn start_first_needs_a_backend_and_a_port_and_stop_first_stays_the_default() {
        fn s(pairs: &[(&str, &str)]) -> Result<Strategy, LabelError> {
            update_labels(&labels(pairs)).map(|u| u.strategy)
        }
        assert_eq!(s(&[]), Ok(Strategy::StopFirst));
        assert_eq!(s(&[("steward.update.strategy", "stop-first")]), Ok(Strategy::StopFirst));
        assert_eq!(
            s(&[
                ("steward.update.strategy", "start-first"),
                ("steward.haproxy.backend", "web"),
                ("steward.haproxy.port", "8080"),
            ]),
            Ok(Strategy::StartFirst(HaproxyTarget {
                backend: "web".into(),
                server: None,
                port: 8080,
                network: None
            }))
        );
        let err = s(&[("steward.update.strategy", "start-first")]).expect_err("no backend");
        assert!(err.to_string().contains("steward.haproxy.backend"), "{err}");
        let err =
            s(&[("steward.update.strategy", "start-first"), ("steward.haproxy.backend", "web")])
                .expect_err("no port");
        assert!(err.to_string().contains("steward.haproxy.port"), "{err}");
        for port in ["0", "70000", "http"] {
            assert!(s(&[
                ("steward.update.strategy", "start-first"),
                ("steward.haproxy.backend", "web"),
                ("steward.haproxy.port", port),
            ])
            .is_err());
        }
        assert!(s(&[("steward.update.strategy", "blue-green")]).is_err());
    }

    fn at(s: &str) -> chrono::NaiveDateTime {
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("time")
    }

    #[test]
    fn windows_open_on_their_days_and_wrap_past_midnight() {
        // 2026-11-22 is a Sunday.
        let w = Window::parse("Sun 03:00-05:00").expect("window");
        assert!(w.contains(at("2026-11-22 03:00")) && w.contains(at("2026-11-22 04:59")));
        assert!(!w.contains(at("2026-11-22 05:00")) && !w.contains(at("2026-11-23 03:30")));
        assert_eq!(w.next_open(at("2026-11-23 10:00")), at("2026-11-29 03:00"));
        assert_eq!(w.next_open(at("2026-11-22 04:00")), at("2026-11-22 04:00"));

        let night = Window::parse("Sat,Sun 22:00-02:00").expect("window");
        assert!(night.contains(at("2026-11-22 23:00")), "Sunday evening");
        assert!(night.contains(at("2026-11-23 01:00")), "Sunday's night into Monday");
        assert!(!night.contains(at("2026-11-24 01:00")), "Monday's night is not in it");

        let weekdays = Window::parse("Mon-Fri 01:00-03:00").expect("window");
        assert!(
            weekdays.contains(at("2026-11-27 02:00")) && !weekdays.contains(at("2026-11-28 02:00"))
        );
        assert!(Window::parse("02:00-04:00").expect("daily").contains(at("2026-11-28 02:30")));
        for bad in
            ["Sun", "Sun 3-5", "Someday 03:00-05:00", "Sun 03:00-03:00", "Sun 03:00-05:00 extra"]
        {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        let e = update_labels(&labels(&[("steward.update.window", "Sunday morning")]))
            .expect_err("bad");
        assert!(e.to_string().starts_with("label steward.update.window="), "{e}");
        let u = update_labels(&labels(&[("steward.update.min_age", "3d")])).expect("ok");
        assert_eq!(u.min_age, Some(std::time::Duration::from_secs(3 * 86400)));
        assert!(update_labels(&labels(&[("steward.update.min_age", "soon")])).is_err());
        for year in ["1y", "365d", "366d"] {
            update_labels(&labels(&[("steward.update.min_age", year)])).expect(year);
        }
        let published = time::OffsetDateTime::now_utc();
        assert_eq!(u.not_before(published), Some(published + time::Duration::days(3)));
        let end = time::PrimitiveDateTime::MAX.assume_utc();
        assert_eq!(u.not_before(end), Some(end), "saturates at the end of the calendar");
        let huge = UpdateLabels { min_age: Some(std::time::Duration::MAX), ..u.clone() };
        assert_eq!(huge.not_before(published), Some(end));
        assert_eq!(update_labels(&labels(&[])).expect("none").not_before(published), None);
        for absurd in ["1000000y", "367d", "584542046090y"] {
            let e =
                update_labels(&labels(&[("steward.update.min_age", absurd)])).expect_err(absurd);
            assert_eq!(e.label, MIN_AGE);
            assert!(e.to_string().contains("at most 1 year"), "{e}");
        }
    }

    #[test]
    fn versions_are_read_leniently() {
        assert_eq!(version_of("v1.22"), Some(semver::Version::new(1, 22, 0)));
        assert!(version_of("1.22.7-rootless").is_some_and(|v| !v.pre.is_empty()));
        assert_eq!(version_of("bookworm"), None);
        assert_eq!(version_of("1.2.3.4"), None);
    }

    #[test]
    fn backup_labels_parse_and_refuse_bad_paths() {
        let l = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let none = backup_labels(&l(&[])).unwrap_or_default();
        assert!(!none.any());
        let b =
            backup_labels(&l(&[(BACKUP_PATHS, "/data/, /etc/app,/data"), (BACKUP_STOP, "true")]))
                .unwrap_or_default();
        assert_eq!(b.paths, vec!["/data", "/etc/app"]);
        assert!(b.stop && !b.postgres && b.any());
        assert!(backup_labels(&l(&[(BACKUP_POSTGRES, "true")])).is_ok_and(|b| b.postgres));
        for bad in ["data", "/data/../etc", "/", "/./x"] {
            let e = backup_labels(&l(&[(BACKUP_PATHS, bad)]));
            assert!(e.as_ref().is_err_and(|e| e.label == BACKUP_PATHS), "{bad}: {e:?}");
        }
        assert!(backup_labels(&l(&[(BACKUP_STOP, "maybe")])).is_err());
        let pitr = backup_labels(&l(&[(BACKUP_POSTGRES, "true"), (BACKUP_PITR, "true")]));
        assert!(pitr.is_ok_and(|b| b.postgres && b.pitr));
        // A base backup without the dump beside it is refused: the dump is what verify loads.
        let e = backup_labels(&l(&[(BACKUP_PITR, "true")])).expect_err("refused");
        assert!(e.to_string().contains("needs steward.backup.postgres=true"), "{e}");
        assert!(backup_labels(&l(&[(BACKUP_POSTGRES, "true"), (BACKUP_PITR, "x")])).is_err());
    }

    #[test]
    fn health_check_and_disk_labels_parse_or_say_what_is_wrong() {
        let check = |v: &str| health_check(&labels(&[("steward.health.check", v)]));
        assert_eq!(check("true"), Ok(Some(vec!["nginx".to_owned(), "-t".to_owned()])));
        assert_eq!(
            check(" nginx  -t -q "),
            Ok(Some(vec!["nginx".into(), "-t".into(), "-q".into()]))
        );
        assert_eq!(check("false"), Ok(None));
        assert_eq!(health_check(&labels(&[])), Ok(None));
        for bad in ["", "nginx -t && rm -rf /", "sh -c 'x'", "echo $HOME"] {
            let e = check(bad).expect_err(bad);
            assert_eq!(e.label, HEALTH_CHECK);
        }
        let disk = |v: &str| health_disk(&labels(&[("steward.health.disk", v)]));
        assert_eq!(disk("TRUE"), Ok(Some(DiskWatch::All)));
        assert_eq!(disk("false"), Ok(None));
        assert_eq!(disk("/, /data"), Ok(Some(DiskWatch::Paths(vec!["/".into(), "/data".into()]))));
        for bad in ["", "data", "/a/../b", "yes", "/a b"] {
            assert!(disk(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn compose_one_offs_are_told_from_services() {
        assert!(one_off(&labels(&[(COMPOSE_ONEOFF, "True")])));
        assert!(!one_off(&labels(&[(COMPOSE_ONEOFF, "False")])));
        assert!(!one_off(&labels(&[])));
    }

    #[test]
    fn helpers_and_one_offs_stand_in_and_services_do_not() {
        let service = [(ENABLE, "true"), (BACKUP_PATHS, "/data"), (SCOPE, "s")];
        assert!(!stand_in(&labels(&service)));
        for mark in [(HELPER, "gitea"), (PROJECT_HELPER, "u-1"), (COMPOSE_ONEOFF, "True")] {
            let mut l = labels(&service);
            l.insert(mark.0.into(), mark.1.into());
            assert!(stand_in(&l), "{mark:?}");
        }
        assert!(!stand_in(&labels(&[(COMPOSE_ONEOFF, "False")])));
    }

    #[test]
    fn deployment_commands_are_plain_commands_and_name_their_label() {
        let pre = |v: &str| deploy_pre(&labels(&[(DEPLOY_PRE, v)]));
        assert_eq!(pre(" gitea  migrate "), Ok(Some(vec!["gitea".into(), "migrate".into()])));
        assert_eq!(deploy_pre(&labels(&[(DEPLOY_TEST, "pytest")])), Ok(None));
        // "true" is no default here: it is the program `true`.
        assert_eq!(pre("true"), Ok(Some(vec!["true".into()])));
        for bad in ["", "  ", "migrate; rm -rf /", "sh -c 'migrate'", "migrate > /log"] {
            let e = pre(bad).expect_err(bad);
            assert_eq!(e.label, DEPLOY_PRE, "{bad:?}");
            assert!(e.to_string().contains(DEPLOY_PRE), "{e}");
        }
        let test = deploy_test(&labels(&[(DEPLOY_TEST, "npm test")]));
        assert_eq!(test, Ok(Some(vec!["npm".into(), "test".into()])));
        assert_eq!(
            deploy_test(&labels(&[(DEPLOY_TEST, "a|b")])).map_err(|e| e.label),
            Err(DEPLOY_TEST)
        );
    }

    #[test]
    fn health_tls_endpoints_parse_or_say_what_is_wrong() {
        let tls = |v: &str| health_tls(&labels(&[("steward.health.tls", v)]));
        let e = |name: Option<&str>, host: &str, port| TlsEndpoint {
            server_name: name.map(str::to_owned),
            host: host.into(),
            port,
            nats: false,
        };
        assert_eq!(
            tls("git.example.com@nginx:443, 127.0.0.1:8443,[::1]:443,127.0.0.1:8443"),
            Ok(Some(vec![
                e(Some("git.example.com"), "nginx", 443),
                e(None, "127.0.0.1", 8443),
                e(None, "::1", 443)
            ]))
        );
        assert_eq!(
            tls("nats://hub.example.com@nats-hub:7422,nats-hub:7422"),
            Ok(Some(vec![
                TlsEndpoint { nats: true, ..e(Some("hub.example.com"), "nats-hub", 7422) },
                e(None, "nats-hub", 7422)
            ]))
        );
        let shown: Vec<String> = tls("a.example@nginx:443,[::1]:8443,nats://h@nats:7422")
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            ["a.example@nginx:443", "[::1]:8443", "nats://h@nats:7422"],
            "shown as written"
        );
        assert_eq!(tls("false"), Ok(None));
        assert_eq!(health_tls(&labels(&[])), Ok(None));
        for bad in [
            "",
            "nginx",
            "nginx:0",
            "nginx:99999",
            "nginx:https",
            "*.x@nginx:443",
            "[::1:443",
            "[nope]:443",
            "a b:443",
            "true",
            "x@@y:1",
            "a|b:443",
            "@nginx:443",
            "nats://",
            "nats://nats",
            "tls://nginx:443",
            "nats://nats://h:4222",
        ] {
            assert!(tls(bad).is_err_and(|e| e.label == HEALTH_TLS), "{bad:?} accepted");
        }
    }

    #[test]
    fn certs_labels_take_true_for_the_defaults_or_a_command() {
        let c = certs_labels(&labels(&[("steward.certs.renew", "true")])).expect("labels");
        assert_eq!(c.renew.as_deref(), Some(DEFAULT_RENEW));
        assert_eq!(c.path, DEFAULT_CERTS_PATH);
        assert_eq!(c.reload, None);
        let c = certs_labels(&labels(&[
            ("steward.certs.reload", "nginx -s reload && echo ok"),
            ("steward.certs.path", "/certs/live/"),
        ]))
        .expect("labels");
        assert_eq!(c.reload.as_deref(), Some("nginx -s reload && echo ok"));
        assert_eq!(c.path, "/certs/live");
        assert_eq!(
            certs_labels(&labels(&[("steward.certs.renew", "false")])).map(|c| c.renew),
            Ok(None)
        );
        let e =
            certs_labels(&labels(&[("steward.certs.path", "live/../etc")])).expect_err("relative");
        assert!(e.to_string().starts_with("label steward.certs.path="), "{e}");
    }
}
