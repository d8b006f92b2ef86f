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
    publish_raw(bus, subject, HeaderMap::new(), payload, &event.id.to_string())
        .instrument(span)
        .await
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
