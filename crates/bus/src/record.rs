//! A flow's records with their outboxes: the one implementation of "the record is the
//! decision, its events follow it" that the updater's and the deployer's state machines share.
//!
//! A step stages its events into the record ([`RecordStore::stage`]), saves the record by
//! compare-and-set ([`RecordStore::save`]), then publishes each staged event with its own id
//! as `Nats-Msg-Id` and clears the outbox ([`RecordStore::flush`]; both:
//! [`RecordStore::announce`]). A crash between the save and the clear leaves the events in the
//! saved record for whoever finds it next; publishing them again is dropped by the stream's
//! duplicate window, so an event is never lost and never stored twice. Failpoints:
//! `saved:<step>` after each save (named by [`Outboxed::saved_point`]) and
//! `published:<type>` after each publish; the crash matrices kill at them by name.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_events::records::{FlowRecord, Outboxed};
use steward_events::{Event, EventData};

use crate::{Bus, BusError, StateStore, Versioned};

/// A compare-and-set bucket of [`Outboxed`] records and the bus their events go to. Reads
/// (`get`, `keys`, `create`, `update`...) are the [`StateStore`]'s, through `Deref`.
pub struct RecordStore<T> {
    bus: Bus,
    state: StateStore<T>,
    source: String,
    /// Keys a task of this process works on right now (shared by the clones). A record that
    /// is not finished and not held here was left by a flow that died or gave up: whoever
    /// finds it (a start, a redelivery, the sweep) drives it on.
    held: Arc<Mutex<HashSet<String>>>,
}

impl<T> Clone for RecordStore<T> {
    fn clone(&self) -> Self {
        Self {
            bus: self.bus.clone(),
            state: self.state.clone(),
            source: self.source.clone(),
            held: self.held.clone(),
        }
    }
}

/// A task of this process works on a record's key until this is dropped.
#[derive(Debug)]
pub struct Hold {
    held: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl<T> std::fmt::Debug for RecordStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStore").field("state", &self.state).finish_non_exhaustive()
    }
}

impl<T> std::ops::Deref for RecordStore<T> {
    type Target = StateStore<T>;
    fn deref(&self) -> &StateStore<T> {
        &self.state
    }
}

impl<T: Outboxed + Serialize + DeserializeOwned> RecordStore<T> {
    /// Opens the bucket `name` (provisioned by `steward setup`); events staged are published
    /// with `source` as their CloudEvents source.
    pub async fn open(bus: &Bus, name: &str, source: String) -> Result<Self, BusError> {
        let state = StateStore::open(bus, name).await?;
        Ok(Self { bus: bus.clone(), state, source, held: Default::default() })
    }

    /// Claims `key` for a task of this process; `None` while another one works on it. Within
    /// the process this keeps a handler, the sweep and a start from acting on one record
    /// together; between processes, compare-and-set does.
    pub fn hold(&self, key: &str) -> Option<Hold> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(key.to_owned()).then(|| Hold { held: self.held.clone(), key: key.into() })
    }

    /// Saves the record with its outbox, then publishes the outbox and clears it. The saved
    /// record is the decision; a crash before the publish leaves the events in the outbox
    /// for whoever finds the record next.
    pub async fn announce(&self, record: T, revision: u64) -> Result<Versioned<T>, BusError> {
        let v = self.save(record, revision).await?;
        self.flush(v).await
    }

    /// Publishes what the record's outbox holds (again, with the same ids) and clears it.
    pub async fn flush(&self, v: Versioned<T>) -> Result<Versioned<T>, BusError> {
        if v.value.outbox().is_empty() {
            return Ok(v);
        }
        for event in v.value.outbox() {
            self.bus.publish(event).await?;
            steward_failpoints::failpoint!(&format!("published:{}", event.event_type()));
        }
        let mut record = v.value;
        record.outbox_mut().clear();
        self.save(record, v.revision).await
    }

    /// Writes `record` over the version read (compare-and-set); returns the new version.
    pub async fn save(&self, record: T, revision: u64) -> Result<Versioned<T>, BusError> {
        let revision = self.state.update(&record.key(), &record, revision).await?;
        steward_failpoints::failpoint!(&record.saved_point());
        Ok(Versioned { value: record, revision })
    }

    /// The first record `matches` (a flow found by an id other than its key: approvals name
    /// only the update or deployment id).
    pub async fn find(
        &self,
        matches: impl Fn(&T) -> bool,
    ) -> Result<Option<Versioned<T>>, BusError> {
        for key in self.record_keys().await? {
            if let Some(v) = self.state.get(&key).await? {
                if matches(&v.value) {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }

    /// The keys that hold a record of this type ([`Outboxed::is_key`]).
    pub async fn record_keys(&self) -> Result<Vec<String>, BusError> {
        let mut keys = self.state.keys().await?;
        keys.retain(|k| T::is_key(k));
        Ok(keys)
    }
}

impl<T: FlowRecord + Serialize + DeserializeOwned> RecordStore<T> {
    /// Adds `data` to the record's outbox as the next event of its flow (caused by the one
    /// before). It is published by [`RecordStore::announce`] once the record is saved.
    pub fn stage(&self, record: &mut T, data: impl Into<EventData>) {
        let mut event = Event::new(&self.source, data).with_correlation(record.correlation_id());
        let last = record.last_event_id_mut();
        event.causation_id = Some(*last);
        *last = event.id;
        // In the current span's trace, else the flow's (a step run outside a handled event);
        // kept for decisions made outside any span (`steward approve`, the approval page).
        let trace = record.trace_mut();
        event.trace = crate::trace::current().unwrap_or_else(|| trace.clone());
        trace.clone_from(&event.trace);
        record.outbox_mut().push(event);
    }

    /// Ends a flow: records the terminal step (and why), then announces its terminal event.
    pub async fn conclude(
        &self,
        v: Versioned<T>,
        step: T::Step,
        reason: Option<String>,
        data: impl Into<EventData>,
    ) -> Result<Versioned<T>, BusError> {
        let mut record = v.value;
        self.stage(&mut record, data);
        record.end(step, reason);
        self.announce(record, v.revision).await
    }
}
