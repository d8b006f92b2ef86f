//! Progress of long jobs (backups, verifications, restores) for whoever waits on them, on
//! plain NATS subjects `<prefix>progress.<correlation id>`.
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
    fn progress_subject(&self, correlation_id: Uuid) -> String {
        self.namespace().subject(&format!("{PROGRESS_FAMILY}.{}", correlation_id.simple()))
    }

    /// Reports progress of the job in `correlation_id`; nobody listening is fine.
    pub async fn publish_progress(
        &self,
        correlation_id: Uuid,
        progress: &Progress,
    ) -> Result<(), BusError> {
        let body = serde_json::to_vec(progress)
            .map_err(|e| BusError::Nats { op: "encode progress", reason: e.to_string() })?;
        self.client
            .publish(self.progress_subject(correlation_id), body.into())
            .await
            .map_err(|e| BusError::nats("publish progress", e))
    }

    /// The progress reports of the job in `correlation_id` from now on. Reports that do not
    /// decode are skipped.
    pub async fn watch_progress(
        &self,
        correlation_id: Uuid,
    ) -> Result<impl Stream<Item = Progress> + Send + Unpin + 'static, BusError> {
        let subscriber = self
            .client
            .subscribe(self.progress_subject(correlation_id))
            .await
            .map_err(|e| BusError::nats("subscribe to progress", e))?;
        Ok(subscriber
            .filter_map(|m| futures::future::ready(serde_json::from_slice(&m.payload).ok())))
    }
}
