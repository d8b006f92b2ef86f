//! A newer image that arrives while an update of its container is under way waits in the
//! `UPDATE_QUEUE` bucket (the newest one per container) and is taken up by the sweep once
//! that update has ended.
//!
//! Why: the watcher announces a digest once. Dropped because the container was busy, a
//! release would never be applied (until an even newer one came).
//!
//! Crash safety: the entry is removed only after its news was taken (and only if no newer
//! one replaced it meanwhile); a crash in between takes it again, which the news rules turn
//! into nothing (`news_id` is the running update's) or a drive of its flow.

use steward_bus::BusError;
use steward_events::records::{QueuedNews, UpdateStep};
use steward_events::{Event, EventData, ImageUpdated};

use super::{Flow, FlowError};

/// Attempts to write the queue entry against concurrent writers of the same container.
const WRITE_ATTEMPTS: usize = 3;

impl Flow {
    /// Keeps `event` to be applied when the container's update in progress has ended, unless
    /// the same or a newer image already waits.
    pub(super) async fn queue_news(
        &self,
        event: &Event,
        u: &ImageUpdated,
    ) -> Result<(), FlowError> {
        let entry = QueuedNews { events: vec![event.clone()] };
        for _ in 0..WRITE_ATTEMPTS {
            let written = match self.queue.get(&u.container).await? {
                Some(q) if q.value.events.iter().any(|e| e.time >= event.time) => {
                    tracing::info!(container = %u.container, "a newer image already waits for the update in progress");
                    return Ok(());
                }
                Some(q) => self.queue.update(&u.container, &entry, q.revision).await,
                None => self.queue.create(&u.container, &entry).await,
            };
            match written {
                Ok(_) => {
                    tracing::info!(container = %u.container, digest = %u.new_digest.short(),
                        "an update of this container is in progress; the newer image waits for it to end");
                    return Ok(());
                }
                Err(BusError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::Busy(u.container.clone()))
    }

    /// Takes up each waiting image whose container has no update in progress any more, each
    /// in a task of its own (an update takes minutes; the sweep goes on meanwhile).
    pub async fn run_queue(&self) -> Result<(), FlowError> {
        for key in self.queue.keys().await? {
            let Some(hold) = self.records.hold(&key) else { continue };
            let Some(q) = self.queue.get(&key).await? else { continue };
            if let Some(v) = self.records.get(&key).await? {
                if !v.value.step.is_terminal() && v.value.step != UpdateStep::Pending {
                    continue;
                }
            }
            let news = q.value.events.into_iter().next();
            let Some((event, u)) = news.and_then(|e| match &e.data {
                EventData::ImageUpdated(u) => Some((e.clone(), u.clone())),
                _ => None,
            }) else {
                // Not written by this code: nothing to apply.
                let _ = self.queue.delete_at(&key, q.revision).await;
                continue;
            };
            tracing::info!(container = %key, digest = %u.new_digest.short(),
                "the update before it has ended: taking up the newer image that waited");
            let flow = self.clone();
            // Not tracked for shutdown: an update cut by the process's end is driven on by
            // the next start, like any other.
            tokio::spawn(async move {
                match flow.take_news(&event, &u, hold).await {
                    Ok(()) => match flow.queue.delete_at(&key, q.revision).await {
                        Ok(()) | Err(BusError::Conflict { .. }) => {}
                        Err(e) => {
                            tracing::warn!(container = %key, error = %e, "cannot clear the queued image; it is taken again (a no-op)")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(container = %key, error = %e, "the queued image could not be taken up now; the sweep tries again")
                    }
                }
            });
        }
        Ok(())
    }
}
