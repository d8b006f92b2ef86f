//! Publishing: `Nats-Msg-Id` = event id, wait for the stream's ack, retry within a bound.
//!
//! Retrying with the *same* id is what makes retries safe: the stream drops a repeat within
//! its duplicate window, so a publish whose ack was lost is never stored twice.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::HeaderMap;
use bytes::Bytes;
use steward_events::Event;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::{Bus, BusError};

/// The stream's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Stream sequence of the stored message.
    pub sequence: u64,
    /// True if the stream already had this id (a retry or a second publish of one event).
    pub duplicate: bool,
    /// True if the stream that stored it is in another JetStream domain than this
    /// participant's (the centre's request stored on a host's leaf, under the leaf-node
    /// topology): `sequence` is that stream's, which this participant cannot read back.
    pub elsewhere: bool,
}

/// Publishes `event` in a `publish` span (the NATS call), whose trace context the event
/// carries: the span that handles the event is its child.
pub(crate) async fn publish_event(bus: &Bus, event: &Event) -> Result<Published, BusError> {
    let subject = bus.config().subject_of(event).map_err(|reason| BusError::PublishRefused {
        subject: event.event_type().to_owned(),
        reason,
    })?;
    let outside_trace = crate::trace::current().is_none();
    let span = tracing::info_span!("publish", otel.kind = "producer", messaging.system = "nats",
        messaging.destination.name = %subject, event.id = %event.id, "event.type" = event.event_type());
    // Outside any traced span (the approval page, the sweeper, an outbox flushed at start),
    // the publish continues the trace the event carries instead of starting a new one.
    if outside_trace && !event.trace.is_empty() {
        crate::trace::join(&span, event);
    }
    let stamped = span.in_scope(|| crate::trace::stamped(event));
    let event = stamped.as_ref().unwrap_or(event);
    // An agent's events carry its host; one that names a host already keeps it.
    let payload = match (&event.host, &bus.config().host) {
        (None, Some(host)) => event.clone().with_host(Some(host.clone())).encode()?,
        _ => event.encode()?,
    };
    let payload = Bytes::from(payload);
    let id = event.id.to_string();
    async {
        let published =
            publish_raw(bus, subject.clone(), HeaderMap::new(), payload.clone(), &id).await?;
        if !published.duplicate {
            return Ok(published);
        }
        let ours = |stored: &[u8]| same_event(stored, &payload);
        check_duplicate(
            bus,
            subject.clone(),
            HeaderMap::new(),
            payload.clone(),
            published,
            &id,
            ours,
        )
        .await
    }
    .instrument(span)
    .await
}

/// A duplicate ack says the stream holds *a* message with this id: ours (a retry whose ack
/// was lost, an outbox flushed again after a restart, an event rebuilt under its fixed id),
/// or another participant's that took the id first. The duplicate window is stream-wide and
/// staged ids are readable in every record's outbox, so any user could publish on its own
/// subject under an id another has staged, and the real event would be dropped unseen. The
/// stored message is read back: on the same subject and the same event (what it says, not
/// when or by which process it was built) it is ours; positively another, and the event goes
/// out again under a fresh, unguessable message id, stored twice at worst. A stored message
/// that cannot be read (an installation whose NATS authorization predates the read) leaves
/// the duplicate ack believed, with a warning.
/// `ours` judges a stored payload found on the same subject.
pub(crate) async fn check_duplicate(
    bus: &Bus,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    published: Published,
    id: &str,
    ours: impl Fn(&[u8]) -> bool,
) -> Result<Published, BusError> {
    // Stored in another domain's stream (a host's leaf): this participant's own stream holds
    // something else under that sequence, and reading it would take ours for another's and
    // publish the event again under a fresh id. Believed, as an unreadable one is.
    if published.elsewhere {
        tracing::debug!(%subject, msg_id = id, sequence = published.sequence,
            "acked as a duplicate by a stream of another JetStream domain: believed");
        return Ok(published);
    }
    let stored = async {
        let stream =
            bus.js().get_stream(&bus.namespace().stream).await.map_err(|e| e.to_string())?;
        stream.get_raw_message(published.sequence).await.map_err(|e| e.to_string())
    }
    .await;
    let stored = match stored {
        Ok(stored) => stored,
        Err(e) => {
            tracing::warn!(%subject, msg_id = id, error = %e,
                "acked as a duplicate and the stored message cannot be read back: believed (regenerate the NATS authorization: `steward nats-authorization`)");
            return Ok(published);
        }
    };
    if stored.subject.as_str() == subject && ours(&stored.payload) {
        return Ok(published);
    }
    let fresh = format!("{id}.{}", uuid::Uuid::new_v4().simple());
    tracing::error!(%subject, msg_id = id, fresh_msg_id = %fresh, taken_by = %stored.subject,
        sequence = stored.sequence,
        "publish taken as a duplicate of another message under this event's id; publishing again under a fresh message id");
    publish_raw(bus, subject, headers, payload, &fresh).await
}

/// Whether two payloads are one event: the same id, type, host, flow and data. When and by
/// which process it was built (`time`, `source`) and its trace context may differ: an event
/// rebuilt under its fixed id after a restart (`notify.sent`) is still that event.
fn same_event(a: &[u8], b: &[u8]) -> bool {
    let what = |e: Event| (e.id, e.host, e.correlation_id, e.causation_id, e.subject, e.data);
    match (Event::decode(a), Event::decode(b)) {
        (Ok(a), Ok(b)) => what(a) == what(b),
        _ => false,
    }
}

/// Publishes bytes with a message id, retrying until acked or `publish_timeout` has passed.
pub(crate) async fn publish_raw(
    bus: &Bus,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    msg_id: &str,
) -> Result<Published, BusError> {
    let started = Instant::now();
    let bound = bus.config().publish_timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        let message = PublishMessage::build()
            .payload(payload.clone())
            .headers(headers.clone())
            .message_id(msg_id);
        let attempt = async {
            let ack = bus.js().send_publish(subject.clone(), message).await?;
            ack.await
        };
        let last_error = match attempt.await {
            Ok(ack) => {
                let ours = bus.config().domain.as_deref().unwrap_or_default();
                let elsewhere = !ack.domain.is_empty() && ack.domain != ours;
                return Ok(Published {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                    elsewhere,
                });
            }
            Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                return Err(BusError::PublishRefused { subject, reason: e.to_string() })
            }
            Err(e) => e.to_string(),
        };
        let waited = started.elapsed();
        if waited + delay >= bound {
            return Err(BusError::PublishTimeout {
                subject,
                event_id: msg_id.to_owned(),
                waited,
                last_error,
            });
        }
        tracing::warn!(%subject, msg_id, error = %last_error, ?waited, "publish not acknowledged; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
