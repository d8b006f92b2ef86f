//! One probe round of one container: the checks in order, the first failure wins.
//!
//! 1. `running`: the container runs (a container stopped for a labelled backup copy is
//!    paused, not failed; one that does not exist any more is only probed while it is down);
//! 2. `restarts`: its restart count did not grow since the last round (same container id);
//! 3. `docker-health`: its HEALTHCHECK does not report `unhealthy` (`starting` is neutral);
//! 4. `http`: the `steward.health.url` answers 2xx/3xx within the probe timeout (latency kept);
//! 5. `pg_isready`: a database (`steward.backup.postgres=true`) accepts connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use steward_engine::Engine;

use crate::engine::EngineRound;

/// What a round found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every check passed.
    Pass,
    /// A check failed: which, and what it saw.
    Fail {
        /// Check name.
        check: &'static str,
        /// Observation.
        reason: String,
    },
    /// Nothing to judge this round (starting up, or stopped for a backup copy).
    Neutral(String),
}

/// A round's verdict, with what it measured.
#[derive(Debug, Clone)]
pub struct Round {
    /// The verdict.
    pub verdict: Verdict,
    /// The container id seen (None when it does not exist).
    pub id: Option<String>,
    /// Its restart count.
    pub restarts: i64,
    /// HTTP probe latency, when probed.
    pub http_latency: Option<Duration>,
    /// Set when an engine call of this round did not answer: the container's round is
    /// neutral, and the engine's own track hears of it.
    pub engine: Option<EngineRound>,
}

/// Probes one container.
#[derive(Debug, Clone)]
pub struct Prober {
    engine: Engine,
    http: reqwest::Client,
    timeout: Duration,
}

impl Prober {
    /// A prober with `timeout` per HTTP probe and `pg_isready`.
    pub fn new(engine: Engine, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { engine, http, timeout })
    }

    /// Runs the checks on `name` (`labels` as listed; `last` is the id and restart count of
    /// the previous round; `backup_running` excuses a container stopped for a backup copy).
    pub async fn round(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
        last: Option<(&str, i64)>,
        backup_running: bool,
    ) -> Round {
        let mut round = Round {
            verdict: Verdict::Pass,
            id: None,
            restarts: 0,
            http_latency: None,
            engine: None,
        };
        let id = match self.engine.container_id(name).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                round.verdict = fail("running", "the container does not exist".into());
                return round;
            }
            Err(e) => {
                // Docker itself is away: say nothing about the container.
                round.engine = EngineRound::from_probe(&e);
                round.verdict = Verdict::Neutral(format!("cannot ask Docker: {e}"));
                return round;
            }
        };
        let view = match self.engine.health_view(&id).await {
            Ok(v) => v,
            Err(e) => {
                round.engine = EngineRound::from_probe(&e);
                round.verdict = Verdict::Neutral(format!("cannot inspect: {e}"));
                return round;
            }
        };
        round.id = Some(id.clone());
        round.restarts = view.restart_count;
        if !view.running {
            let stops_for_backup =
                steward_labels::backup_labels(labels).map(|b| b.stop).unwrap_or(false);
            round.verdict = if backup_running && stops_for_backup {
                Verdict::Neutral("stopped for a backup copy".into())
            } else {
                fail(
                    "running",
                    match view.exit_code {
                        Some(code) => format!("not running (exit code {code})"),
                        None => "not running".into(),
                    },
                )
            };
            return round;
        }
        if let Some((last_id, last_restarts)) = last {
            if last_id == id && view.restart_count > last_restarts {
                round.verdict = fail(
                    "restarts",
                    format!(
                        "restarted {} time(s) since the last probe",
                        view.restart_count - last_restarts
                    ),
                );
                return round;
            }
        }
        match view.health.as_deref() {
            Some("unhealthy") => {
                round.verdict = fail("docker-health", "HEALTHCHECK reports unhealthy".into());
                return round;
            }
            Some("starting") => {
                round.verdict = Verdict::Neutral("HEALTHCHECK still starting".into());
                return round;
            }
            _ => {}
        }
        if let Some(url) = labels.get(steward_labels::HEALTH_URL) {
            let started = Instant::now();
            let answer = self.http.get(url).send().await;
            let took = started.elapsed();
            round.http_latency = Some(took);
            // The reason goes into health.failed: a probe URL's credentials stay out of it.
            let url = steward_events::redact_url(url);
            let problem = match answer {
                Ok(r) if r.status().is_success() || r.status().is_redirection() => None,
                Ok(r) => Some(format!("GET {url} answered {}", r.status())),
                Err(e) if e.is_timeout() => {
                    Some(format!("GET {url}: no answer within {:?}", self.timeout))
                }
                Err(e) => Some(format!("GET {url} failed: {}", e.without_url())),
            };
            if let Some(reason) = problem {
                round.verdict = fail("http", reason);
                return round;
            }
        }
        let database = steward_labels::backup_labels(labels).map(|b| b.postgres).unwrap_or(false);
        if database {
            if let Some(reason) = self.pg_isready(&id).await {
                round.verdict = fail("pg_isready", reason);
            }
        }
        round
    }

    /// `None` when the server accepts connections; otherwise what `pg_isready` said.
    async fn pg_isready(&self, id: &str) -> Option<String> {
        let secs = self.timeout.as_secs().max(1).to_string();
        let cmd = ["pg_isready", "-h", "127.0.0.1", "-t", &secs].map(str::to_owned).to_vec();
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

fn fail(check: &'static str, reason: String) -> Verdict {
    Verdict::Fail { check, reason }
}
