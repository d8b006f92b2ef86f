//! One probe round of one container, as the health service sees it.
//!
//! What "healthy" means is [`steward_probe`]'s, shared with the update gate (running, no
//! restart since the last round of the same container, HEALTHCHECK not unhealthy,
//! `steward.health.url` 2xx/3xx without following redirects, `pg_isready` for databases).
//! What is the health service's own: a container that does not exist any more is only probed
//! while it is down; one stopped for a labelled backup copy is paused, not failed; an engine
//! that does not answer makes the round neutral and is tracked on its own.

use std::collections::HashMap;
use std::time::Duration;

use steward_engine::Engine;
use steward_probe::{ProbeConfig, ProbeError, Target};

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
    probe: steward_probe::Prober,
}

impl Prober {
    /// A prober with the shared probe settings.
    pub fn new(engine: Engine, cfg: &ProbeConfig) -> Result<Self, ProbeError> {
        Ok(Self { probe: steward_probe::Prober::new(engine.clone(), cfg)?, engine })
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
        if !view.running && backup_running {
            let stops_for_backup =
                steward_labels::backup_labels(labels).map(|b| b.stop).unwrap_or(false);
            if stops_for_backup {
                round.verdict = Verdict::Neutral("stopped for a backup copy".into());
                return round;
            }
        }
        // Restarts count against the last round of the same container only.
        let restarts_before = last.filter(|(last_id, _)| *last_id == id).map(|(_, r)| r);
        let judged =
            self.probe.round(&id, &view, &Target::from_labels(labels), restarts_before).await;
        round.http_latency = judged.http_latency;
        round.verdict = match judged.verdict {
            steward_probe::Verdict::Pass => Verdict::Pass,
            steward_probe::Verdict::Fail(f) => fail(f.check.name(), f.reason),
            steward_probe::Verdict::Pending(why) => Verdict::Neutral(why),
        };
        round
    }
}

fn fail(check: &'static str, reason: String) -> Verdict {
    Verdict::Fail { check, reason }
}
