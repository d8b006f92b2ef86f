//! steward-probe: the one meaning of "this container is healthy".
//!
//! The health service (one [`Prober::round`] per container every interval) and the updater's
//! health gate (rounds until one passes, or its time is up) judge a container with the same
//! checks, the same classification and the same setting, so they never disagree about it.
//! A round's checks, in order; the first failure wins:
//!
//! 1. `running`: the container runs;
//! 2. `restarts`: its restart count did not grow since the caller's baseline;
//! 3. `docker-health`: its HEALTHCHECK does not report `unhealthy` (`starting` is no verdict
//!    yet: [`Verdict::Pending`]);
//! 4. `http`: its `steward.health.url` answers 2xx or 3xx within the probe timeout. Redirects
//!    are not followed: a redirect (typically to a login page, perhaps on an identity
//!    provider Steward cannot even reach) is the app answering; where it leads is not the app;
//! 5. `pg_isready`: a database (`steward.backup.postgres=true`) accepts connections.
//!
//! One setting, [`ProbeConfig`] (`STEWARD_HEALTH_PROBE_TIMEOUT`): the limit of one HTTP probe
//! and of one `pg_isready`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_engine::{Engine, HealthView};
use steward_labels::LabelError;
use steward_settings::Env;

/// Limit of one HTTP probe or `pg_isready`, for the health service and the update gate alike.
pub const ENV_PROBE_TIMEOUT: &str = "STEWARD_HEALTH_PROBE_TIMEOUT";
/// [`ENV_PROBE_TIMEOUT`]'s default.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// `pg_isready -t` counts whole seconds; a probe longer than this is no health check.
const TIMEOUT_BOUNDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(300);

/// The probe's settings, read in one place for every service that probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Limit of one HTTP probe or `pg_isready`.
    pub timeout: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { timeout: DEFAULT_PROBE_TIMEOUT }
    }
}

impl ProbeConfig {
    /// Reads [`ENV_PROBE_TIMEOUT`]; errors go to `env`.
    pub fn read(env: &mut Env) -> Self {
        let timeout = env.duration(ENV_PROBE_TIMEOUT, DEFAULT_PROBE_TIMEOUT);
        if !TIMEOUT_BOUNDS.contains(&timeout) {
            env.error(ENV_PROBE_TIMEOUT, &format!("{timeout:?}"), "from 1s to 5m");
        }
        Self { timeout }
    }
}

/// The probe could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The HTTP client (TLS roots) could not be built.
    #[error("cannot build the HTTP client of the health probe: {0}")]
    Client(#[from] reqwest::Error),
}

/// A check of a round, named as in `health.failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The container runs.
    Running,
    /// It did not restart since the baseline.
    Restarts,
    /// Its HEALTHCHECK does not report unhealthy.
    DockerHealth,
    /// `steward.health.url` answers 2xx or 3xx.
    Http,
    /// A database accepts connections.
    PgIsready,
}

impl Check {
    /// The name in `health.failed`'s `check`.
    pub fn name(self) -> &'static str {
        match self {
            Check::Running => "running",
            Check::Restarts => "restarts",
            Check::DockerHealth => "docker-health",
            Check::Http => "http",
            Check::PgIsready => "pg_isready",
        }
    }

    /// The container's own state said no: waiting longer does not change it (the update
    /// gate stops at once; an app still starting fails `http` or `pg_isready` instead).
    pub fn is_final(self) -> bool {
        matches!(self, Check::Running | Check::Restarts | Check::DockerHealth)
    }
}

/// A failed check and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Which check.
    pub check: Check,
    /// What it saw (URLs redacted: this goes into events).
    pub reason: String,
}

/// What a round found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// A check failed.
    Fail(Failure),
    /// No verdict yet: the HEALTHCHECK is still `starting`.
    Pending(String),
}

/// An HTTP status as the probe reads it: 2xx and 3xx are healthy (a redirect is the app
/// answering), anything else is not.
pub fn status_is_healthy(status: u16) -> bool {
    (200..400).contains(&status)
}

/// Docker's HEALTHCHECK status, as both callers read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerHealth {
    /// No HEALTHCHECK (or a status Docker may add later: no verdict from it).
    None,
    /// Not decided yet.
    Starting,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

impl DockerHealth {
    /// The status in `view`.
    pub fn of(view: &HealthView) -> Self {
        match view.health.as_deref() {
            Some("starting") => Self::Starting,
            Some("healthy") => Self::Healthy,
            Some("unhealthy") => Self::Unhealthy,
            _ => Self::None,
        }
    }
}

/// Checks 1 to 3, on the container's state alone (no I/O): `restarts_before` is the restart
/// count of the baseline (the last round of the same container, the start of the gate).
pub fn judge_state(view: &HealthView, restarts_before: Option<i64>) -> Verdict {
    if !view.running {
        let reason = match view.exit_code {
            Some(code) => format!("not running (exit code {code})"),
            None => "not running".into(),
        };
        return fail(Check::Running, reason);
    }
    if let Some(before) = restarts_before {
        if view.restart_count > before {
            let reason = format!("restarted {} time(s)", view.restart_count - before);
            return fail(Check::Restarts, reason);
        }
    }
    match DockerHealth::of(view) {
        DockerHealth::Unhealthy => {
            fail(Check::DockerHealth, "healthcheck reports unhealthy".into())
        }
        DockerHealth::Starting => Verdict::Pending("healthcheck still starting".into()),
        DockerHealth::None | DockerHealth::Healthy => Verdict::Pass,
    }
}

fn fail(check: Check, reason: String) -> Verdict {
    Verdict::Fail(Failure { check, reason })
}

/// One HTTP GET and what it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    /// From the request to the response's head, or to the failure.
    pub latency: Duration,
    /// The healthy status, or why not (URL redacted).
    pub outcome: Result<u16, String>,
}

/// The HTTP probe: no redirects followed, one timeout.
#[derive(Debug, Clone)]
pub struct HttpProbe {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpProbe {
    /// A probe with `cfg`'s timeout.
    pub fn new(cfg: &ProbeConfig) -> Result<Self, ProbeError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, timeout: cfg.timeout })
    }

    /// GETs `url` (the body is not read).
    pub async fn get(&self, url: &str) -> HttpCheck {
        let started = Instant::now();
        let answer = self.client.get(url).send().await;
        let latency = started.elapsed();
        // The reason goes into health.failed and update.rolled_back: credentials stay out.
        let shown = steward_events::redact_url(url);
        let outcome = match answer {
            Ok(r) if status_is_healthy(r.status().as_u16()) => Ok(r.status().as_u16()),
            Ok(r) => Err(format!("GET {shown} answered {}", r.status())),
            Err(e) if e.is_timeout() => {
                Err(format!("GET {shown}: no answer within {:?}", self.timeout))
            }
            Err(e) => Err(steward_events::redact_urls_in(&format!(
                "GET {shown} failed: {}",
                chain(&e.without_url())
            ))),
        };
        HttpCheck { latency, outcome }
    }
}

/// An error with its causes ("error sending request" alone does not say "connection refused").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// What a container asks to be probed with, from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `steward.health.url`, or the label's error (a bad label fails the `http` check).
    pub url: Result<Option<String>, LabelError>,
    /// `steward.backup.postgres=true`: `pg_isready` by exec.
    pub postgres: bool,
}

impl Target {
    /// The probe settings in `labels`.
    pub fn from_labels(labels: &HashMap<String, String>) -> Self {
        Self {
            url: steward_labels::health_url(labels).map(|u| u.map(str::to_owned)),
            // A malformed backup label fails the backup, which says so; here it only means
            // "not a database".
            postgres: steward_labels::backup_labels(labels).is_ok_and(|b| b.postgres),
        }
    }

    /// The container has a check of its own beyond running (a probe URL, `pg_isready`, or
    /// the HEALTHCHECK in `view`): a pass means something, without it only time tells.
    pub fn has_own_check(&self, view: &HealthView) -> bool {
        !matches!(self.url, Ok(None))
            || self.postgres
            || DockerHealth::of(view) != DockerHealth::None
    }
}

/// A round's verdict and what it measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The verdict.
    pub verdict: Verdict,
    /// Latency of the HTTP probe, when it ran.
    pub http_latency: Option<Duration>,
}

/// Runs rounds: the container's state, then its HTTP probe and `pg_isready`.
#[derive(Debug, Clone)]
pub struct Prober {
    engine: Engine,
    http: HttpProbe,
    timeout: Duration,
}

impl Prober {
    /// A prober with `cfg`'s settings.
    pub fn new(engine: Engine, cfg: &ProbeConfig) -> Result<Self, ProbeError> {
        Ok(Self { engine, http: HttpProbe::new(cfg)?, timeout: cfg.timeout })
    }

    /// One round on the container `id`, whose state is `view` (the caller inspected it:
    /// what an engine error means is the caller's to say); `restarts_before` as for
    /// [`judge_state`].
    pub async fn round(
        &self,
        id: &str,
        view: &HealthView,
        target: &Target,
        restarts_before: Option<i64>,
    ) -> Round {
        let mut round = Round { verdict: judge_state(view, restarts_before), http_latency: None };
        if round.verdict != Verdict::Pass {
            return round;
        }
        match &target.url {
            Ok(None) => {}
            Err(e) => {
                round.verdict = fail(Check::Http, steward_events::redact_urls_in(&e.to_string()));
                return round;
            }
            Ok(Some(url)) => {
                let check = self.http.get(url).await;
                round.http_latency = Some(check.latency);
                if let Err(reason) = check.outcome {
                    round.verdict = fail(Check::Http, reason);
                    return round;
                }
            }
        }
        if target.postgres {
            if let Some(reason) = self.pg_isready(id).await {
                round.verdict = fail(Check::PgIsready, reason);
            }
        }
        round
    }

    /// `None` when the server accepts connections; otherwise what `pg_isready` said.
    async fn pg_isready(&self, id: &str) -> Option<String> {
        let secs = self.timeout.as_secs().max(1).to_string();
        let cmd = ["pg_isready", "-h", "127.0.0.1", "-t", &secs].map(str::to_owned).to_vec();
        // The exec's calls have the engine's deadline; the command gets its own on top.
        match tokio::time::timeout(
            self.timeout + Duration::from_secs(2),
            self.engine.exec(id, cmd, 3),
        )
        .await
        {
            Err(_) => Some(format!("pg_isready gave no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Some(format!("cannot run pg_isready: {e}")),
            Ok(Ok(out)) if out.exit_code == 0 => None,
            Ok(Ok(out)) => Some(format!(
                "pg_isready exited {} ({})",
                out.exit_code,
                match out.exit_code {
                    1 => "rejecting connections",
                    2 => "no response",
                    _ => "no attempt made",
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn view(running: bool, restarts: i64, health: Option<&str>) -> HealthView {
        HealthView {
            running,
            restart_count: restarts,
            health: health.map(str::to_owned),
            exit_code: (!running).then_some(1),
        }
    }

    fn failed(v: &Verdict) -> Option<Check> {
        match v {
            Verdict::Fail(f) => Some(f.check),
            _ => None,
        }
    }

    #[test]
    fn two_and_three_hundreds_are_healthy_the_rest_is_not() {
        for s in [200, 201, 204, 299, 300, 301, 302, 303, 304, 307, 308, 399] {
            assert!(status_is_healthy(s), "{s}");
        }
        for s in [100, 101, 199, 400, 401, 403, 404, 429, 500, 502, 503, 504] {
            assert!(!status_is_healthy(s), "{s}");
        }
    }

    #[test]
    fn the_state_checks_in_order() {
        assert_eq!(judge_state(&view(true, 0, None), Some(0)), Verdict::Pass);
        assert_eq!(judge_state(&view(true, 0, Some("healthy")), None), Verdict::Pass);
        assert_eq!(
            failed(&judge_state(&view(false, 3, Some("unhealthy")), Some(0))),
            Some(Check::Running)
        );
        assert_eq!(
            judge_state(&view(false, 0, None), None),
            Verdict::Fail(Failure {
                check: Check::Running,
                reason: "not running (exit code 1)".into()
            })
        );
        assert_eq!(
            failed(&judge_state(&view(true, 2, Some("healthy")), Some(1))),
            Some(Check::Restarts)
        );
        // Without a baseline (another container id), restarts say nothing.
        assert_eq!(judge_state(&view(true, 2, None), None), Verdict::Pass);
        assert_eq!(
            failed(&judge_state(&view(true, 0, Some("unhealthy")), Some(0))),
            Some(Check::DockerHealth)
        );
        assert!(matches!(
            judge_state(&view(true, 0, Some("starting")), Some(0)),
            Verdict::Pending(_)
        ));
        assert_eq!(DockerHealth::of(&view(true, 0, Some("none"))), DockerHealth::None);
        assert!(Check::Running.is_final() && Check::DockerHealth.is_final());
        assert!(!Check::Http.is_final() && !Check::PgIsready.is_final());
    }

    #[test]
    fn the_target_reads_the_labels_once() {
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let t = Target::from_labels(&labels(&[
            ("steward.health.url", "http://web:8080/"),
            ("steward.backup.postgres", "true"),
        ]));
        assert_eq!(
            (t.url.clone().ok().flatten().as_deref(), t.postgres),
            (Some("http://web:8080/"), true)
        );
        let bad = Target::from_labels(&labels(&[("steward.health.url", "web:8080")]));
        assert!(bad.url.is_err());
        let none = Target::from_labels(&labels(&[]));
        assert!(!none.has_own_check(&view(true, 0, None)));
        assert!(none.has_own_check(&view(true, 0, Some("healthy"))));
        assert!(bad.has_own_check(&view(true, 0, None)));
    }

    #[test]
    fn the_timeout_is_one_bounded_setting() {
        let read = |v: &str| {
            let mut env = Env::from_pairs([(ENV_PROBE_TIMEOUT, v)]);
            let cfg = ProbeConfig::read(&mut env);
            env.finish().map(|()| cfg).map_err(|e| e.to_string())
        };
        assert_eq!(read("2s"), Ok(ProbeConfig { timeout: Duration::from_secs(2) }));
        for bad in ["0s", "500ms", "1h", "soon"] {
            let e = read(bad).expect_err(bad);
            assert!(e.contains(ENV_PROBE_TIMEOUT), "{bad}: {e}");
        }
        let mut env = Env::from_pairs::<_, &str, &str>([]);
        assert_eq!(ProbeConfig::read(&mut env), ProbeConfig::default());
    }

    /// A server answering every connection with `head` after `delay`; its URL.
    async fn serve(head: &'static str, delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = conn.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let _ = conn.write_all(head.as_bytes()).await;
                });
            }
        });
        format!("http://127.0.0.1:{}/health", addr.port())
    }

    #[tokio::test]
    async fn a_redirect_is_an_answer_and_is_not_followed() {
        let probe =
            HttpProbe::new(&ProbeConfig { timeout: Duration::from_secs(2) }).expect("probe");
        let ok = serve("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Duration::ZERO).await;
        assert_eq!(probe.get(&ok).await.outcome, Ok(200));
        // Its target refuses connections: following it would fail the probe.
        let redirect = serve(
            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/login\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        assert_eq!(probe.get(&redirect).await.outcome, Ok(302));
        let error = serve(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        let outcome = probe.get(&error).await.outcome;
        assert_eq!(outcome, Err(format!("GET {error} answered 500 Internal Server Error")));
    }

    #[tokio::test]
    async fn slow_and_refused_fail_with_a_reason_and_no_credentials() {
        let probe =
            HttpProbe::new(&ProbeConfig { timeout: Duration::from_secs(1) }).expect("probe");
        let slow =
            serve("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Duration::from_secs(5)).await;
        let check = probe.get(&slow).await;
        assert_eq!(check.outcome, Err(format!("GET {slow}: no answer within 1s")));
        assert!(check.latency < Duration::from_secs(3), "{:?}", check.latency);
        let refused = probe.get("http://user:hunter2@127.0.0.1:1/health").await;
        let reason = refused.outcome.expect_err("refused");
        assert!(reason.starts_with("GET http://***@127.0.0.1:1/health failed: "), "{reason}");
        assert!(!reason.contains("hunter2"), "{reason}");
    }
}
