//! Pushes that arrive while their environment's deployment is under way. The newest waits in
//! the environment's slot ([`QueuedDeploy`], `<environment>.queued` in the `DEPLOYS` bucket)
//! and starts when that deployment ends; every older one is concluded at once with
//! `deploy.failed` (superseded). The slot is written without holding the environment's record,
//! so a deployment in hand is never disturbed, and a request is acknowledged once it is in the
//! slot: it is not sent back to the stream to run out of deliveries during a long health gate.

use steward_bus::{BusError, Versioned};
use steward_events::records::{DeployRecord, DeployStep, QueuedDeploy};
use steward_events::{Change, DeployFailed, Event};

use super::start::replaces_waiting;
use super::{Flow, FlowError};

/// A superseded request's `deploy.failed` has an id derived from the request's, so deciding it
/// again (a redelivery, a kill before the slot's outbox was cleared) is the same event, dropped
/// by the stream's duplicate window.
const SUPERSEDED_ID_MASK: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0002;

/// Whether a request for `change` published at `event`'s time is no news for the deployment
/// `r`: an older request, or (a push, not a `pin`) the commit it deploys. A pin of the commit
/// in hand is news: it pins it.
pub(super) fn not_news(r: &DeployRecord, event: &Event, change: &Change, pin: bool) -> bool {
    event.time <= r.requested_at || (!pin && r.change.commit == change.commit)
}

impl Flow {
    /// Puts `event` (a request for `change`) in its environment's slot: it waits there if it is
    /// newer than the request waiting (which is then superseded), else it is superseded itself.
    /// A push never takes the place of a waiting pin: it is refused, as while a pin holds.
    pub(super) async fn enqueue(
        &self,
        event: &Event,
        change: &Change,
        pin: Option<&str>,
    ) -> Result<(), FlowError> {
        let key = QueuedDeploy::key_of(&change.environment);
        let Some(v) = self.queue.get(&key).await? else {
            let slot = QueuedDeploy {
                environment: change.environment.clone(),
                request: event.clone(),
                outbox: vec![],
            };
            self.queue.create(&key, &slot).await?;
            steward_failpoints::failpoint!("queued");
            tracing::info!(environment = %change.environment, commit = %change.commit, "a deployment is under way; the request waits");
            return Ok(());
        };
        let waiting = v.value.request.clone();
        let Some((w, w_pin)) = self.request_of(&waiting) else {
            return Err(FlowError::Bus(BusError::CorruptState {
                bucket: "DEPLOYS".into(),
                key,
                reason: format!("the queued event is a {}", waiting.event_type()),
            }));
        };
        if waiting.id == event.id || (w.commit == change.commit && w_pin.is_some() == pin.is_some())
        {
            // A redelivery, or the same commit again (polling): it waits already.
            self.queue.flush(v).await?;
            return Ok(());
        }
        if (event.time, event.id) < (waiting.time, waiting.id) {
            tracing::info!(environment = %change.environment, commit = %change.commit, newer = %w.commit, "an older request than the one waiting; superseded");
            self.bus.publish(&self.superseded(event, change, &w)).await?;
            return Ok(());
        }
        if let (None, Some(by)) = (pin, &w_pin) {
            return self.refuse_pinned(event, change, &w.commit, by).await;
        }
        tracing::info!(environment = %change.environment, commit = %change.commit, superseded = %w.commit, "a newer request waits in place of the one waiting");
        let mut slot = v.value;
        let ended = self.superseded(&waiting, &w, change);
        slot.outbox.push(ended);
        slot.request = event.clone();
        self.queue.announce(slot, v.revision).await?;
        Ok(())
    }

    /// `deploy.failed` of `request` (for `change`), superseded by a request for `by`.
    fn superseded(&self, request: &Event, change: &Change, by: &Change) -> Event {
        let reason = format!(
            "superseded by {} (a newer push to {}) before it started",
            by.commit, by.branch
        );
        let data =
            DeployFailed { deploy_id: None, change: change.clone(), reason, log_tail: vec![] };
        let mut event = Event::caused_by(request, self.source.clone(), data);
        event.id = uuid::Uuid::from_u128(request.id.as_u128() ^ SUPERSEDED_ID_MASK);
        event
    }

    /// Starts the request waiting for `env` once its deployment is over (the caller holds the
    /// environment): claims it as the environment's record, then empties the slot (a kill
    /// between the two leaves a slot naming the record's own request: only emptied), then
    /// prepares it.
    pub async fn start_queued(&self, env: &str) -> Result<(), FlowError> {
        let key = QueuedDeploy::key_of(env);
        loop {
            let Some(slot) = self.queue.get(&key).await? else { return Ok(()) };
            let slot = self.queue.flush(slot).await?;
            let request = slot.value.request.clone();
            let current = self.records.get(env).await?;
            let asked = self.request_of(&request);
            // A deployment waiting for its window holds nothing newer back: the request
            // replaces it (`claim` ends it first), else it would deploy the older commit first.
            let replaces = |v: &Versioned<DeployRecord>| {
                v.value.step == DeployStep::Deferred
                    && asked.as_ref().is_some_and(|(change, pin)| {
                        replaces_waiting(&v.value, &request, change, pin.is_some()).is_some()
                    })
            };
            let claimed = match &current {
                Some(v) if v.value.request_id == request.id => None,
                Some(v) if !v.value.step.is_terminal() && !replaces(v) => return Ok(()),
                _ => match asked {
                    Some((change, pin)) => {
                        tracing::info!(environment = %env, commit = %change.commit, "the deployment ended; the waiting request starts");
                        self.claim(&request, &change, pin.as_deref(), current, true).await?
                    }
                    None => None,
                },
            };
            match self.queue.delete_at(&key, slot.revision).await {
                // A newer request took the slot meanwhile: it waits for this one.
                Ok(()) | Err(BusError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            steward_failpoints::failpoint!("dequeued");
            if let Some(v) = claimed {
                self.prepare(v).await?;
            }
        }
    }

    /// The request waiting for `env`, if any (for `steward` and polling).
    pub async fn queued(&self, env: &str) -> Result<Option<Versioned<QueuedDeploy>>, FlowError> {
        Ok(self.queue.get(&QueuedDeploy::key_of(env)).await?)
    }
}
