//! Reading the stream back by time, for audits (`steward events replay`) and `events tail`.
//!
//! An ephemeral consumer without acks starts at the requested time; a replay ends at the
//! messages that were pending when it began (or at `until`), a tail follows new ones.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{
        pull::{self, MessagesErrorKind},
        AckPolicy, DeliverPolicy,
    },
};
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
    messages: StreamReader,
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
                Err(e) => return Some(Err(e)),
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

/// Consecutive times a reader reopens its consumer before it gives up (a message read resets
/// the count).
const REOPEN_LIMIT: u32 = 5;

/// An ephemeral, unacknowledged consumer of the stream read in order, what the audit's
/// replay and the backup's export both read with. The server may drop such a consumer under
/// the reader's feet (its idle heartbeats missed while either side was stalled, the consumer
/// deleted, the server restarted): the reader then opens a new one at the sequence after the
/// last message it delivered, so a long `backup verify` or `events tail` on a loaded host
/// does not fail on a hiccup (CI saw "missed idle heartbeat" end a CLI wait).
pub(crate) struct StreamReader {
    bus: Bus,
    filter_subject: String,
    /// The stream sequence of the last message delivered (or the one before the first).
    last_sequence: u64,
    /// `None` after the server dropped the consumer, until it is reopened.
    messages: Option<pull::Stream>,
    failures: u32,
}

impl StreamReader {
    /// The next message in stream order; `None` when the connection is gone.
    pub(crate) async fn next(&mut self) -> Option<Result<jetstream::Message, BusError>> {
        loop {
            let Some(messages) = &mut self.messages else {
                // A moment first: what dropped the consumer (a stall, a restart) may not be over.
                tokio::time::sleep(Duration::from_secs(1)).await;
                match self
                    .bus
                    .open_consumer(
                        DeliverPolicy::ByStartSequence {
                            start_sequence: self.last_sequence.saturating_add(1),
                        },
                        self.filter_subject.clone(),
                    )
                    .await
                {
                    Ok((messages, _, _)) => self.messages = Some(messages),
                    Err(e) => {
                        if !self.failed(&e) {
                            return Some(Err(e));
                        }
                    }
                }
                continue;
            };
            match messages.next().await? {
                Ok(msg) => {
                    if let Ok(info) = msg.info() {
                        self.last_sequence = info.stream_sequence;
                    }
                    self.failures = 0;
                    return Some(Ok(msg));
                }
                Err(e) if recoverable(e.kind()) => {
                    self.messages = None;
                    let e = BusError::nats("read the stream", e);
                    if !self.failed(&e) {
                        return Some(Err(e));
                    }
                }
                Err(e) => return Some(Err(BusError::nats("read the stream", e))),
            }
        }
    }

    /// Counts a failure; false once the limit is reached.
    fn failed(&mut self, e: &BusError) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures > REOPEN_LIMIT {
            return false;
        }
        tracing::warn!(error = %e, attempt = self.failures, after = self.last_sequence, "the stream's reader was dropped; reopening it after the last message read");
        true
    }
}

/// Errors after which the consumer is gone or silent, and a new one can carry on.
fn recoverable(kind: MessagesErrorKind) -> bool {
    matches!(
        kind,
        MessagesErrorKind::MissingHeartbeat
            | MessagesErrorKind::ConsumerDeleted
            | MessagesErrorKind::NoResponders
    )
}

impl Bus {
    /// A reader of the stream from `deliver_policy` (only `filter_subject` when not empty),
    /// and how many messages it has to deliver now.
    pub(crate) async fn read_stream(
        &self,
        deliver_policy: DeliverPolicy,
        filter_subject: String,
    ) -> Result<(StreamReader, u64), BusError> {
        let (messages, remaining, before_first) =
            self.open_consumer(deliver_policy, filter_subject.clone()).await?;
        let reader = StreamReader {
            bus: self.clone(),
            filter_subject,
            last_sequence: before_first,
            messages: Some(messages),
            failures: 0,
        };
        Ok((reader, remaining))
    }

    /// An ephemeral consumer's messages, how many it has pending, and the stream sequence
    /// before its first (the server reports it as delivered, whatever the policy).
    async fn open_consumer(
        &self,
        deliver_policy: DeliverPolicy,
        filter_subject: String,
    ) -> Result<(pull::Stream, u64, u64), BusError> {
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
        let info = consumer.info().await.map_err(|e| BusError::nats("consumer info", e))?;
        let (remaining, before_first) = (info.num_pending, info.delivered.stream_sequence);
        let messages = consumer
            .stream()
            .max_messages_per_batch(2000)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| BusError::nats("read the stream", e))?;
        Ok((messages, remaining, before_first))
    }
}
