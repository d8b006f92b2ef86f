//! Progress of long jobs (backups, verifications, restores) for whoever waits on them, on
//! plain NATS subjects `<prefix>progress.<correlation id>`; under host routing
//! `<prefix>progress.<host>.<correlation id>`, the publishing agent's host: its NATS user may
//! publish there only, a leaf's link carries its host's only (docs/scaling.md), and the CLI
//! follows the host it asked, so another host cannot pass reports off as the job's.
//!
//! Not events: progress is outside the stream (no family `progress`), never stored, and
//! lossy by design. A watcher that misses a report sees the next; outcomes stay events.

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Bus, BusError};

/// Subject family of progress reports.
pub const PROGRESS_FAMILY: &str = "progress";

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// What the job does now, e.g. `checking`, `restoring`, `backing up`.
    pub phase: String,
    /// The component it works on.
    pub item: String,
    /// Bytes done in this phase.
    pub done: u64,
    /// Bytes the phase will take, when known.
    pub total: Option<u64>,
}

impl Bus {
    fn progress_subject(&self, host: Option<&str>, correlation_id: Uuid) -> String {
        let id = correlation_id.simple();
        match host {
            Some(host) => self.namespace().subject(&format!("{PROGRESS_FAMILY}.{host}.{id}")),
            None => self.namespace().subject(&format!("{PROGRESS_FAMILY}.{id}")),
        }
    }

    /// Reports progress of the job in `correlation_id` (on this agent's host's subject under
    /// host routing); nobody listening is fine.
    pub async fn publish_progress(
        &self,
        correlation_id: Uuid,
        progress: &Progress,
    ) -> Result<(), BusError> {
        let body = serde_json::to_vec(progress)
            .map_err(|e| BusError::Nats { op: "encode progress", reason: e.to_string() })?;
        self.client
            .publish(self.progress_subject(self.config().route_host(), correlation_id), body.into())
            .await
            .map_err(|e| BusError::nats("publish progress", e))
    }

    /// The progress reports of the job in `correlation_id` from now on, from `host`'s agent
    /// (the host the job was asked of under host routing, else `None`). Reports that do not
    /// decode are skipped.
    pub async fn watch_progress(
        &self,
        host: Option<&str>,
        correlation_id: Uuid,
    ) -> Result<impl Stream<Item = Progress> + Send + Unpin + 'static, BusError> {
        let subscriber = self
            .client
            .subscribe(self.progress_subject(host, correlation_id))
            .await
            .map_err(|e| BusError::nats("subscribe to progress", e))?;
        Ok(subscriber
            .filter_map(|m| futures::future::ready(serde_json::from_slice(&m.payload).ok())))
    }
}
