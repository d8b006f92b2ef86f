//! The health gate: the new container proves itself, or the update is rolled back.
//!
//! "Healthy" is [`steward_probe`]'s, the health service's own meaning: rounds of the same
//! checks (running, no restart since the gate began, HEALTHCHECK not unhealthy,
//! `steward.health.url` 2xx/3xx without following redirects, `pg_isready` for a database),
//! with the same probe timeout (`STEWARD_HEALTH_PROBE_TIMEOUT`), until one passes within
//! `STEWARD_HEALTH_TIMEOUT`. A container that exits, restarts or whose HEALTHCHECK reports
//! unhealthy fails at once; a probe that fails is tried again until the deadline (the app may
//! still be starting). A container with no check of its own (no probe URL, no HEALTHCHECK,
//! not a database) must run without restarts for the grace period.

use std::time::Duration;

use steward_probe::{Prober, Target, Verdict};
use tokio::time::Instant;

use super::Flow;

/// Between two rounds of the gate.
const ROUND_PAUSE: Duration = Duration::from_millis(500);

impl Flow {
    /// `Ok` when the container is healthy; otherwise why not. `health_url` is the
    /// `steward.health.url` the update read (`steward_labels::health_url`, as the health
    /// service reads it); whether it is a database is read from the container's labels.
    pub async fn health_gate(&self, id: &str, health_url: Option<&str>) -> Result<(), String> {
        self.judge(id, health_url, "the new container").await
    }

    /// [`Flow::health_gate`] for any container, called `who` in the reasons (the rollback
    /// judges the old container the same way).
    pub async fn judge(&self, id: &str, health_url: Option<&str>, who: &str) -> Result<(), String> {
        let first = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
        let labels =
            self.engine.container_labels(id).await.map_err(|e| e.to_string())?.unwrap_or_default();
        let target =
            Target { url: Ok(health_url.map(str::to_owned)), ..Target::from_labels(&labels) };
        let prober =
            Prober::new(self.engine.clone(), &self.cfg.probe).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.cfg.health_timeout;
        let mut last: Option<String> = None;
        loop {
            let view = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
            let round = prober.round(id, &view, &target, Some(first.restart_count)).await;
            match round.verdict {
                Verdict::Pass if target.has_own_check(&view) => return Ok(()),
                Verdict::Pass => break,
                // The container's own verdict ends the wait early: a broken release is
                // rolled back in seconds, not after the whole timeout.
                Verdict::Fail(f) if f.check.is_final() => {
                    return Err(match last {
                        Some(last) => format!("{who}: {}; {last}", f.reason),
                        None => format!("{who}: {}", f.reason),
                    });
                }
                Verdict::Fail(f) => last = Some(f.reason),
                Verdict::Pending(why) => last = Some(why),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{who}: not healthy within {:?}: {}",
                    self.cfg.health_timeout,
                    last.as_deref().unwrap_or("no verdict")
                ));
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        // Nothing of its own to check: only time tells.
        let until = Instant::now() + self.cfg.health_grace;
        loop {
            let view = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
            if let Verdict::Fail(f) = steward_probe::judge_state(&view, Some(first.restart_count)) {
                return Err(format!("{who}: {}", f.reason));
            }
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}
