//! Reading the stream back by time, for audits (`steward events replay`) and `events tail`.
//!
//! An ephemeral consumer without acks starts at the requested time; a replay ends at the
//! messages that were pending when it began (or at `until`), a tail follows new ones.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use steward_events::{DecodeError, Event};
use time::OffsetDateTime;

use crate::{subject, Bus, BusError, DLQ_REASON};

/// What to read back.
#[derive(Debug, Clone, Default)]
pub struct ReplayQuery {
    /// From this stream time on (all retained events when `None`; only new ones if following).
    pub since: Option<OffsetDateTime>,
    /// Up to this stream time.
    pub until: Option<OffsetDateTime>,
    /// Event type patterns (`update.>`, `*.failed`, `dlq.>`); every event type when empty.
    pub subjects: Vec<String>,
    /// Only events about this container.
    pub container: Option<String>,
    /// Keep waiting for new events instead of stopping at the end.
    pub follow: bool,
}

/// One stored message, decoded.
#[derive(Debug)]
pub struct Replayed {
    /// Stream sequence.
    pub sequence: u64,
    /// When the stream stored it.
    pub stored_at: OffsetDateTime,
    /// Subject without the namespace prefix.
    pub event_type: String,
    /// The event, or why the stored bytes are not one (dead letters often are not).
    pub event: Result<Event, DecodeError>,
    /// For a dead letter: why it was dead-lettered.
    pub dead_letter_reason: Option<String>,
}

/// An open replay; call [`Replay::next`] until it returns `None`.
pub struct Replay {
    messages: pull::Stream,
    remaining: u64,
    query: ReplayQuery,
    ns: crate::Namespace,
    cfg: crate::BusConfig,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").field("remaining", &self.remaining).finish_non_exhaustive()
    }
}

impl Bus {
    /// Starts reading the stream for `query`.
    pub async fn replay(&self, query: ReplayQuery) -> Result<Replay, BusError> {
        let ns = self.namespace();
        let deliver_policy = match (query.since, query.follow) {
            (Some(start_time), _) => DeliverPolicy::ByStartTime { start_time },
            (None, true) => DeliverPolicy::New,
            (None, false) => DeliverPolicy::All,
        };
        // One pattern filters on the server; several are matched here (NATS 2.9 has one filter),
        // and so is any under host routing, where a type is on every host's subjects.
        let filter_subject = match query.subjects.as_slice() {
            [one] if !self.config().routes_by_host() => ns.subject(one),
            _ => String::new(),
        };
        let (messages, remaining) = self.read_stream(deliver_policy, filter_subject).await?;
        Ok(Replay { messages, remaining, query, ns: ns.clone(), cfg: self.config().clone() })
    }
}

impl Replay {
    /// Messages the server said were pending when the replay began.
    pub fn pending_at_start(&self) -> u64 {
        self.remaining
    }

    /// The next matching message; `None` at the end (never, when following).
    pub async fn next(&mut self) -> Option<Result<Replayed, BusError>> {
        loop {
            if !self.query.follow && self.remaining == 0 {
                return None;
            }
            let msg = match self.messages.next().await? {
                Ok(msg) => msg,
                Err(e) => return Some(Err(BusError::nats("replay", e))),
            };
            self.remaining = self.remaining.saturating_sub(1);
            let Ok(info) = msg.info() else { continue };
            let (sequence, stored_at) = (info.stream_sequence, info.published);
            if let Some(until) = self.query.until {
                if stored_at > until {
                    self.remaining = 0;
                    if self.query.follow {
                        return None;
                    }
                    continue;
                }
            }
            // At the hub, what a host's leaf brought about anything but that host is not shown.
            if !crate::origin::stream_message(
                &self.cfg,
                &msg.subject,
                msg.headers.as_ref(),
                "replay",
            ) {
                continue;
            }
            let subject = self.ns.unprefixed(msg.subject.as_str()).unwrap_or("").to_owned();
            let event_type = steward_events::split_address(&subject).1.to_owned();
            let wanted = if self.query.subjects.is_empty() {
                !subject::matches("dlq.>", &event_type)
            } else {
                self.query.subjects.iter().any(|p| subject::matches(p, &event_type))
            };
            if !wanted {
                continue;
            }
            // A dead letter keeps its original payload (its subject is `dlq.<consumer>`); any
            // other message must be of its subject's type, or it is shown as undecodable.
            let event = if subject::matches("dlq.>", &event_type) {
                Event::decode(&msg.payload)
            } else {
                Event::decode_addressed(&subject, &msg.payload)
            };
            if let Some(container) = &self.query.container {
                let about = event.as_ref().ok().and_then(|e| e.container());
                if about != Some(container.as_str()) {
                    continue;
                }
            }
            let dead_letter_reason =
                msg.headers.as_ref().and_then(|h| h.get(DLQ_REASON)).map(|v| v.as_str().to_owned());
            return Some(Ok(Replayed {
                sequence,
                stored_at,
                event_type,
                event,
                dead_letter_reason,
            }));
        }
    }
}

impl Bus {
    /// An ephemeral, unacknowledged consumer of the stream from `deliver_policy` (only
    /// `filter_subject` when not empty), read in order, and how many messages it has to
    /// deliver now: what the audit's replay and the backup's export both read with.
    pub(crate) async fn read_stream(
        &self,
        deliver_policy: DeliverPolicy,
        filter_subject: String,
    ) -> Result<(pull::Stream, u64), BusError> {
        let stream = self
            .js()
            .get_stream(&self.namespace().stream)
            .await
            .map_err(|e| BusError::nats("get stream", e))?;
        let mut consumer = stream
            .create_consumer(pull::Config {
                deliver_policy,
                ack_policy: AckPolicy::None,
                filter_subject,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::nats("create a reading consumer", e))?;
        let remaining =
            consumer.info().await.map_err(|e| BusError::nats("consumer info", e))?.num_pending;
        let messages = consumer
            .stream()
            .max_messages_per_batch(2000)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| BusError::nats("read the stream", e))?;
        Ok((messages, remaining))
    }
}
