//! The health gate: the new container proves itself, or the update is rolled back.
//!
//! In order of preference: the `steward.health.url` HTTP probe; else the image's (or
//! operator's) HEALTHCHECK; else "running without restarts" for the grace period. A container
//! that exits, or whose HEALTHCHECK reports unhealthy (even while a probe is still waiting),
//! fails at once.

use std::time::Duration;

use tokio::time::Instant;

use super::Flow;

impl Flow {
    /// `Ok` when the container is healthy; otherwise why not.
    pub async fn health_gate(&self, id: &str, health_url: Option<&str>) -> Result<(), String> {
        let first = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + self.cfg.health_timeout;
        if let Some(url) = health_url {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string())?;
            let mut last = String::from("no answer yet");
            while Instant::now() < deadline {
                let view = self.still_running(id, first.restart_count).await?;
                // The image's own verdict ends the wait early: a broken release is rolled
                // back in seconds, not after the probe's whole timeout.
                if view.health.as_deref() == Some("unhealthy") {
                    return Err(format!("healthcheck reports unhealthy; {last}"));
                }
                match http.get(url).send().await {
                    Ok(r) if r.status().is_success() => return Ok(()),
                    Ok(r) => last = format!("GET {url} answered {}", r.status()),
                    Err(e) => last = format!("GET {url} failed: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            return Err(format!(
                "health probe did not pass within {:?}: {last}",
                self.cfg.health_timeout
            ));
        }
        if first.health.is_some() {
            while Instant::now() < deadline {
                let view = self.still_running(id, first.restart_count).await?;
                match view.health.as_deref() {
                    Some("healthy") => return Ok(()),
                    Some("unhealthy") => return Err("healthcheck reports unhealthy".into()),
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
            return Err(format!("not healthy within {:?}", self.cfg.health_timeout));
        }
        let until = Instant::now() + self.cfg.health_grace;
        while Instant::now() < until {
            self.still_running(id, first.restart_count).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.still_running(id, first.restart_count).await.map(|_| ())
    }

    async fn still_running(
        &self,
        id: &str,
        restarts: i64,
    ) -> Result<steward_engine::HealthView, String> {
        let view = self.engine.health_view(id).await.map_err(|e| e.to_string())?;
        if !view.running {
            return Err(format!(
                "the new container exited (code {})",
                view.exit_code.unwrap_or(-1)
            ));
        }
        if view.restart_count > restarts {
            return Err(format!(
                "the new container restarted {} time(s)",
                view.restart_count - restarts
            ));
        }
        Ok(view)
    }
}
