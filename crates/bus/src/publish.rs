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
        check_duplicate(bus, subject, payload, published, &id).await
    }
    .instrument(span)
    .await
}

/// A duplicate ack says the stream holds *a* message with this id: ours (a retry whose ack
/// was lost, an outbox flushed again after a restart), or another participant's that took
/// the id first. The duplicate window is stream-wide and staged ids are readable in every
/// record's outbox, so any user could publish on its own subject under an id another has
/// staged, and the real event would be dropped unseen. The stored message is read back: the
/// same subject and the same event (its trace context aside: a flush after a restart stamps
/// a new one) is ours; anything else, or a message that cannot be read, and the event goes
/// out under a fresh, unguessable message id. Consumers skip a second delivery of one event
/// id by their markers, so the worst case is the event stored twice, never lost.
async fn check_duplicate(
    bus: &Bus,
    subject: String,
    payload: Bytes,
    published: Published,
    id: &str,
) -> Result<Published, BusError> {
    let stored = async {
        let stream =
            bus.js().get_stream(&bus.namespace().stream).await.map_err(|e| e.to_string())?;
        stream.get_raw_message(published.sequence).await.map_err(|e| e.to_string())
    }
    .await;
    let why = match stored {
        Ok(stored)
            if stored.subject.as_str() == subject && same_event(&stored.payload, &payload) =>
        {
            return Ok(published)
        }
        Ok(stored) => format!(
            "the stream's message {} under this id is another (subject {})",
            stored.sequence, stored.subject
        ),
        Err(e) => format!("the stored message {} could not be read: {e}", published.sequence),
    };
    let fresh = format!("{id}.{}", uuid::Uuid::new_v4().simple());
    tracing::error!(%subject, msg_id = id, fresh_msg_id = %fresh, reason = %why,
        "publish taken as a duplicate of a message that is not this event; publishing again under a fresh message id");
    publish_raw(bus, subject, HeaderMap::new(), payload, &fresh).await
}

/// Whether two payloads are one event, their trace context aside.
fn same_event(a: &[u8], b: &[u8]) -> bool {
    match (Event::decode(a), Event::decode(b)) {
        (Ok(mut a), Ok(mut b)) => {
            a.trace = Default::default();
            b.trace = Default::default();
            a == b
        }
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
            Ok(ack) => return Ok(Published { sequence: ack.sequence, duplicate: ack.duplicate }),
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
