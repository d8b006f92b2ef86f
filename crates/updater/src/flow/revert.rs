//! `rollback.requested` (`steward rollback CONTAINER`): bring back the image the container ran
//! before its last successful update.
//!
//! A rollback is an update to the previous digest: it is claimed as an [`UpdateRecord`] of
//! kind `rollback` and then runs through exactly the same steps as any update (the backup
//! gate, the pull (skipped when the digest is still on the host), the swap, the health gate
//! and the automatic restore when the gate fails), with the same record, outbox, holds and
//! failpoints, so a kill at any step ends it as a kill ends an update. Its events are
//! `update.*` with `kind: rollback` and `requested_by`, in the request's flow (correlation id).
//!
//! Refused before anything is claimed, with `rollback.refused` in the request's flow: no such
//! container, a container Steward does not manage, no previous image recorded, an update of
//! the container in progress, the container already running the digest asked for.

use steward_bus::Versioned;
use steward_events::records::{UpdateRecord, UpdateStep};
use steward_events::{Digest, Event, RollbackRefused, RollbackRequested, UpdateKind};
use steward_imageref::ImageRef;

use super::{Flow, FlowError};

impl Flow {
    /// Handles a rollback request.
    pub async fn on_rollback_requested(
        &self,
        event: &Event,
        req: &RollbackRequested,
    ) -> Result<(), FlowError> {
        let name = req.container.as_str();
        let Some(_hold) = self.records.hold(name) else {
            // A task of this process works on the container: an update in progress is refused
            // at once; a short task (the sweep) is waited for by redelivery.
            return match self.records.get(name).await? {
                Some(v) if !v.value.step.is_terminal() && v.value.news_id != Some(event.id) => {
                    self.refuse(event, req, in_progress(name, v.value.step)).await
                }
                _ => Err(FlowError::Busy(name.to_owned())),
            };
        };
        let current = self.records.get(name).await?;
        if let Some(v) = current.as_ref().filter(|v| v.value.news_id == Some(event.id)) {
            // A redelivery: this rollback was claimed; its flow ended or is driven on.
            return Box::pin(self.drive(v.clone())).await;
        }
        match Box::pin(self.claim_rollback(event, req, current)).await? {
            Ok(v) => {
                let backup = match self.settings(name).await? {
                    Ok(s) => s.backup,
                    Err(reason) => return self.fail(v, reason, vec![]).await,
                };
                // Boxed: the update's whole flow is a large future (debug builds' stacks).
                Box::pin(self.begin(v, backup)).await
            }
            Err(reason) => self.refuse(event, req, reason).await,
        }
    }

    /// Checks the request and claims the container with a rollback record (step `Deferred`:
    /// `update.started` goes out with the step that follows, as for an automatic update).
    /// `Ok(Err(reason))`: refused, nothing claimed.
    async fn claim_rollback(
        &self,
        event: &Event,
        req: &RollbackRequested,
        current: Option<Versioned<UpdateRecord>>,
    ) -> Result<Result<Versioned<UpdateRecord>, String>, FlowError> {
        let name = req.container.as_str();
        let Some(container) = self.engine.brief(name).await? else {
            return Ok(Err(format!("no container {name} on this host")));
        };
        let managed = steward_labels::watched(&container.labels).unwrap_or(false);
        let Some(v) = current else {
            return Ok(Err(if managed {
                format!("no previous image is recorded for {name}: Steward has not updated it")
            } else {
                format!("{name} is not managed by Steward (no steward.enable=true label, never updated)")
            }));
        };
        if !v.value.step.is_terminal() {
            return Ok(Err(in_progress(name, v.value.step)));
        }
        let settings = match steward_labels::update_labels(&container.labels) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("{name} has bad update labels: {e}"))),
        };
        match ImageRef::parse(&container.image_ref) {
            Ok(image) if image.is_pinned() => {
                return Ok(Err(format!(
                "{name} is created from {}, pinned by digest: change its reference to roll it back",
                container.image_ref
            )))
            }
            Ok(_) => {}
            Err(e) => return Ok(Err(format!("{name}: {e}"))),
        }
        let recorded = v.value.rollback_target().cloned();
        let Some(target) = req.to_digest.clone().or_else(|| recorded.clone()) else {
            let why = match (v.value.step, v.value.kind) {
                (UpdateStep::Succeeded, UpdateKind::Rollback) => "it was rolled back already",
                _ => "its last update did not succeed and no earlier one is recorded",
            };
            return Ok(Err(format!("no previous image is recorded for {name}: {why}")));
        };
        let running = self.engine.running_digests(name).await?.unwrap_or_default();
        if running.iter().any(|d| *d == target.as_str()) {
            return Ok(Err(format!("{name} already runs {}", target.short())));
        }
        // What it runs now: the digest its last update went to, if that is it, else the one
        // its image is known by in the registry.
        let from = running
            .iter()
            .find(|d| **d == v.value.to_digest.as_str())
            .or_else(|| running.first())
            .and_then(|d| Digest::parse(d).ok());
        let Some(from) = from else {
            return Ok(Err(format!(
                "cannot tell which digest {name} runs (its image has no registry digest)"
            )));
        };
        let record = UpdateRecord {
            // Older news stays old: a replayed `image.updated` never undoes the rollback.
            news_time: v.value.news_time,
            kind: UpdateKind::Rollback,
            requested_by: Some(req.requested_by.clone()),
            // What was recorded stays what a later rollback brings back should this one fail
            // (also when this one was asked for another digest).
            previous_digest: recorded,
            // As the container was created from it: the swap checks it is still that.
            ..UpdateRecord::fresh(
                (uuid::Uuid::now_v7(), self.host()),
                event,
                (name, &container.image_ref),
                (&from, &target),
                settings.policy.as_str(),
                UpdateStep::Deferred,
            )
        };
        let revision = self.records.update(name, &record, v.revision).await?;
        steward_failpoints::failpoint!("claimed", record.step);
        tracing::info!(container = %name, to = %record.to_digest.short(), by = %req.requested_by, "rollback claimed");
        Ok(Ok(Versioned { value: record, revision }))
    }

    /// `rollback.refused` in the request's flow; nothing was claimed or touched.
    async fn refuse(
        &self,
        event: &Event,
        req: &RollbackRequested,
        reason: String,
    ) -> Result<(), FlowError> {
        tracing::warn!(container = %req.container, %reason, "rollback refused");
        let data = RollbackRefused {
            container: req.container.clone(),
            requested_by: Some(req.requested_by.clone()),
            reason,
        };
        self.bus.publish(&Event::caused_by(event, &self.source, data)).await?;
        Ok(())
    }
}

fn in_progress(name: &str, step: UpdateStep) -> String {
    let step = format!("{step:?}").to_lowercase();
    format!("an update of {name} is in progress ({step}); try again when it has ended (`steward updates`)")
}
