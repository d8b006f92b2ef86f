//! The outbox: every notification to deliver, one entry per (channel, event), in a JetStream
//! KV bucket, so a notifier that dies keeps its queue and one that restarts never mails an
//! event twice.
//!
//! Invariants:
//! - an entry is created once (`create`); a redelivered event finds it and adds nothing;
//! - delivered and dropped entries stay (as `Sent` / `GaveUp`) for [`KEEP_DONE`], so an event
//!   redelivered after its mail went out is still recognised;
//! - every state change is compare-and-set, so two notifiers cannot both send one entry's
//!   next attempt unnoticed;
//! - an entry's message ([`MessageMark`]) is fixed before its first attempt and kept: after
//!   a crash between the server accepting a message and the entries being recorded as sent,
//!   the same entries go out again as the same message (same `Message-ID`, same `notify.sent`
//!   id), which mail clients and the stream's duplicate window recognise. SMTP cannot say
//!   whether a message it accepted was recorded, so this window is at-least-once: a lost
//!   critical mail is worse than a repeated one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steward_bus::{Bus, BusError, StateStore, Versioned};
use steward_events::Event;
use time::OffsetDateTime;
use tokio::sync::Mutex;

pub use steward_events::records::OUTBOX_BUCKET;
/// How long finished entries are kept to recognise redeliveries.
pub const KEEP_DONE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// SMTP.
    Email,
    /// JSON POST.
    Webhook,
}

impl ChannelKind {
    /// `email` / `webhook`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Webhook => "webhook",
        }
    }
}

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Waiting for (another) delivery attempt.
    Queued,
    /// Delivered.
    Sent,
    /// Not delivered within the retry bound.
    GaveUp,
}

/// One notification of one event on one channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The channel.
    pub channel: ChannelKind,
    /// The event, as its CloudEvents JSON (the stream's own encoding).
    pub event: String,
    /// When it was queued.
    #[serde(with = "time::serde::rfc3339")]
    pub queued_at: OffsetDateTime,
    /// Its state.
    pub state: EntryState,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Not before this time (backoff after a failure).
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt: OffsetDateTime,
    /// The last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Whether the first failure was already published as `notify.failed`.
    #[serde(default)]
    pub failure_reported: bool,
    /// When it reached `Sent` or `GaveUp`.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub done_at: Option<OffsetDateTime>,
    /// The message it goes out in, fixed before the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageMark>,
}

/// The message a batch of entries goes out in: every attempt (and a resend after a crash)
/// is the same message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMark {
    /// Its `Message-ID` (`<first event id.count@steward>`).
    pub message_id: String,
    /// The id its `notify.sent` is published with.
    pub sent_event: uuid::Uuid,
}

/// An entry with its key and revision, and its event decoded.
#[derive(Debug, Clone)]
pub struct Queued {
    /// KV key.
    pub key: String,
    /// The entry as read.
    pub entry: Versioned<Entry>,
    /// The decoded event.
    pub event: Event,
}

/// The outbox of one notifier.
#[derive(Clone)]
pub struct Outbox {
    store: StateStore<Entry>,
    /// Keys still `Queued`: what the delivery loops look at, without listing the bucket.
    queued: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("store", &self.store).finish_non_exhaustive()
    }
}

/// An event's entry on a channel: by its identity (type, host, id), not its id alone, so a
/// copy another participant published under the same id is another entry
/// ([`Event::identity`]).
pub fn key(channel: ChannelKind, event: &Event) -> String {
    format!("{}.{}", channel.as_str(), event.identity())
}

/// The key entries had before they named the type and host: an event queued under it before
/// an upgrade is not queued a second time.
fn legacy_key(channel: ChannelKind, event: &Event) -> String {
    format!("{}.{}", channel.as_str(), event.id)
}

impl Outbox {
    /// Opens the bucket and loads what a previous instance left queued.
    pub async fn open(bus: &Bus) -> Result<Self, BusError> {
        let store: StateStore<Entry> = StateStore::open(bus, OUTBOX_BUCKET).await?;
        let mut queued = BTreeSet::new();
        for key in store.keys().await? {
            if let Some(v) = store.get(&key).await? {
                if v.value.state == EntryState::Queued {
                    queued.insert(key);
                }
            }
        }
        if !queued.is_empty() {
            tracing::info!(count = queued.len(), "notifications left queued by a previous run");
        }
        Ok(Self { store, queued: Arc::new(Mutex::new(queued)) })
    }

    /// Queues `event` on `channel`; `false` when it was queued (or sent) before.
    pub async fn enqueue(&self, channel: ChannelKind, event: &Event) -> Result<bool, BusError> {
        let encoded = event.encode().map_err(|e| BusError::CorruptState {
            bucket: OUTBOX_BUCKET.into(),
            key: key(channel, event),
            reason: e.to_string(),
        })?;
        let now = OffsetDateTime::now_utc();
        let entry = Entry {
            channel,
            event: String::from_utf8_lossy(&encoded).into_owned(),
            queued_at: now,
            state: EntryState::Queued,
            attempts: 0,
            next_attempt: now,
            last_error: None,
            failure_reported: false,
            done_at: None,
            message: None,
        };
        if self.store.get(&legacy_key(channel, event)).await?.is_some() {
            return Ok(false);
        }
        let key = key(channel, event);
        match self.store.create(&key, &entry).await {
            Ok(_) => {
                self.queued.lock().await.insert(key);
                Ok(true)
            }
            Err(BusError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every queued entry of `channel`, oldest first. Entries whose event no longer decodes
    /// are dropped with a log line (they can never be rendered).
    pub async fn queued(&self, channel: ChannelKind) -> Result<Vec<Queued>, BusError> {
        let prefix = format!("{}.", channel.as_str());
        let keys: Vec<String> =
            self.queued.lock().await.iter().filter(|k| k.starts_with(&prefix)).cloned().collect();
        let mut out = vec![];
        for key in keys {
            let Some(entry) = self.store.get(&key).await? else {
                self.queued.lock().await.remove(&key);
                continue;
            };
            if entry.value.state != EntryState::Queued {
                self.queued.lock().await.remove(&key);
                continue;
            }
            match Event::decode(entry.value.event.as_bytes()) {
                Ok(event) => out.push(Queued { key, entry, event }),
                Err(e) => {
                    tracing::error!(%key, error = %e, "queued notification no longer decodes; dropping it");
                    self.mark_done(&key, entry, EntryState::GaveUp).await?;
                }
            }
        }
        out.sort_by_key(|q| q.entry.value.queued_at);
        Ok(out)
    }

    /// Fixes the message of every entry of `batch` that has none (or another one) before it
    /// is sent; returns the entries with their new revisions.
    pub async fn mark(
        &self,
        batch: Vec<Queued>,
        mark: &MessageMark,
    ) -> Result<Vec<Queued>, BusError> {
        let mut out = Vec::with_capacity(batch.len());
        for mut q in batch {
            if q.entry.value.message.as_ref() != Some(mark) {
                q.entry.value.message = Some(mark.clone());
                q.entry.revision =
                    self.store.update(&q.key, &q.entry.value, q.entry.revision).await?;
            }
            out.push(q);
        }
        Ok(out)
    }

    /// Records a delivered (`Sent`) or dropped (`GaveUp`) entry.
    pub async fn finish(&self, q: Queued, state: EntryState) -> Result<(), BusError> {
        self.mark_done(&q.key, q.entry, state).await
    }

    async fn mark_done(
        &self,
        key: &str,
        v: Versioned<Entry>,
        state: EntryState,
    ) -> Result<(), BusError> {
        let mut entry = v.value;
        entry.state = state;
        entry.done_at = Some(OffsetDateTime::now_utc());
        self.store.update(key, &entry, v.revision).await?;
        self.queued.lock().await.remove(key);
        Ok(())
    }

    /// Records a failed attempt; the entry stays queued until `next_attempt`.
    pub async fn failed(
        &self,
        q: Queued,
        error: &str,
        next_attempt: OffsetDateTime,
        reported: bool,
    ) -> Result<(), BusError> {
        let mut entry = q.entry.value;
        entry.attempts += 1;
        entry.last_error = Some(error.to_owned());
        entry.next_attempt = next_attempt;
        entry.failure_reported |= reported;
        self.store.update(&q.key, &entry, q.entry.revision).await?;
        Ok(())
    }

    /// Deletes finished entries older than [`KEEP_DONE`]; returns how many.
    pub async fn purge(&self) -> Result<usize, BusError> {
        let horizon = OffsetDateTime::now_utc() - KEEP_DONE;
        let mut purged = 0;
        for key in self.store.keys().await? {
            let Some(v) = self.store.get(&key).await? else { continue };
            if v.value.done_at.is_some_and(|t| t < horizon) {
                self.store.delete(&key).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// The entry of `event` on `channel`, if any (tests, diagnostics).
    pub async fn get(
        &self,
        channel: ChannelKind,
        event: &Event,
    ) -> Result<Option<Versioned<Entry>>, BusError> {
        self.store.get(&key(channel, event)).await
    }
}
