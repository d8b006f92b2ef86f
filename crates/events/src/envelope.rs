//! The CloudEvents 1.0 JSON envelope around every payload.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DecodeError, EncodeError, EventData};

/// The only CloudEvents version Steward speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Largest encoded event accepted, in bytes. Matches NATS' default `max_payload` (1 MiB):
/// anything larger could not have been published, so it is refused before parsing.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

const CONTENT_TYPE: &str = "application/json";

/// One Steward event: CloudEvents attributes plus a typed payload.
///
/// `correlation_id` ties together everything that belongs to one update, backup or restore;
/// `causation_id` is the id of the event that directly caused this one.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique id (UUIDv7 when minted by Steward); also the JetStream `Nats-Msg-Id`.
    pub id: Uuid,
    /// Who published it, e.g. `steward-watcher/gitea-host`.
    pub source: String,
    /// When it was created.
    pub time: OffsetDateTime,
    /// CloudEvents `subject`: the container the event is about, if one.
    pub subject: Option<String>,
    /// The flow this event belongs to.
    pub correlation_id: Uuid,
    /// The event that caused this one.
    pub causation_id: Option<Uuid>,
    /// The host (engine) it concerns, extension attribute `host` ([`crate::check_host`]): set
    /// by the bus for what an engine-bound agent publishes; `None` in events from before
    /// hosts, or from a central participant that names none.
    pub host: Option<String>,
    /// The typed payload; its variant decides `type`.
    pub data: EventData,
    /// W3C trace context of the span that published it (CloudEvents distributed tracing).
    pub trace: TraceContext,
}

/// The CloudEvents distributed-tracing extension: the W3C `traceparent` and `tracestate` of
/// the span that published an event, so that the span handling it joins the same trace.
///
/// Carried as text and never validated here: the tracing setup parses it, and a malformed
/// one starts a new trace rather than failing the event. Absent on events published with
/// tracing off (and on events older than it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// `00-<trace id>-<parent span id>-<flags>`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "trace_attribute"
    )]
    pub traceparent: Option<String>,
    /// Vendor entries, passed on with the traceparent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "trace_attribute"
    )]
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// No trace context at all.
    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none() && self.tracestate.is_none()
    }
}

/// Longest trace attribute kept (W3C's limit for `tracestate`; a `traceparent` is 55 bytes).
const MAX_TRACE_ATTRIBUTE: usize = 512;

/// A trace attribute as sent, or none if it is not a string or too long: a bad one must not
/// cost an event its delivery (it is only a hint which trace to join).
fn trace_attribute<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Lenient::deserialize(d)? {
        Lenient::Text(s) if s.len() <= MAX_TRACE_ATTRIBUTE => Some(s),
        _ => None,
    })
}

/// [`trace_attribute`] of the envelope's raw value: a string of at most
/// [`MAX_TRACE_ATTRIBUTE`] bytes, else none.
fn raw_trace_attribute(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?.get();
    // Escapes take up to 6 bytes a character: longer than that cannot be short enough.
    if raw.len() > MAX_TRACE_ATTRIBUTE.saturating_mul(6).saturating_add(2) {
        return None;
    }
    serde_json::from_str::<String>(raw).ok().filter(|s| s.len() <= MAX_TRACE_ATTRIBUTE)
}

#[derive(Serialize)]
struct WireOut<'a> {
    specversion: &'static str,
    id: Uuid,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'static str,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    datacontenttype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    correlationid: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct WireIn<'a> {
    specversion: String,
    id: Uuid,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    time: OffsetDateTime,
    #[serde(default)]
    datacontenttype: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    correlationid: Uuid,
    #[serde(default)]
    causationid: Option<Uuid>,
    #[serde(default)]
    host: Option<String>,
    // Taken raw (skipped, not parsed, as unknown attributes were before): nesting, bad
    // escapes or any other value there cannot cost the event its decoding.
    #[serde(borrow, default)]
    traceparent: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tracestate: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

impl Event {
    /// A new event that starts its own flow (its correlation id is its own id).
    pub fn new(source: impl Into<String>, data: impl Into<EventData>) -> Self {
        let id = Uuid::now_v7();
        let data = data.into();
        Self {
            id,
            source: source.into(),
            time: OffsetDateTime::now_utc(),
            subject: data.container().map(str::to_owned),
            correlation_id: id,
            causation_id: None,
            host: None,
            data,
            trace: TraceContext::default(),
        }
    }

    /// A new event caused by `cause`: same flow, with `cause` as its causation, and in its
    /// trace (the bus replaces the trace context with the publishing span's, if one).
    pub fn caused_by(cause: &Event, source: impl Into<String>, data: impl Into<EventData>) -> Self {
        let mut event = Self::new(source, data);
        event.correlation_id = cause.correlation_id;
        event.causation_id = Some(cause.id);
        event.trace = cause.trace.clone();
        event
    }

    /// Puts this event into an existing flow.
    pub fn with_correlation(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// The same event about `host` (see [`Event::host`]).
    pub fn with_host(mut self, host: Option<String>) -> Self {
        self.host = host;
        self
    }

    /// Puts this event into an existing trace (that of the flow a decision belongs to).
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = trace;
        self
    }

    /// The event type, which is also the NATS subject.
    pub fn event_type(&self) -> &'static str {
        self.data.event_type()
    }

    /// What a handler records an event as handled (or queued) by: `<type>.<host|_>.<id>`,
    /// a valid KV key suffix. Not the id alone: any participant may publish, on a subject of
    /// its own, a message under an id it read in another's record, and a copy handled first
    /// must not make the real event (another type or host) look handled.
    pub fn identity(&self) -> String {
        format!(
            "{}.{}.{}",
            self.event_type(),
            self.host.as_deref().unwrap_or("_"),
            self.id.simple()
        )
    }

    /// The container this event concerns, if one.
    pub fn container(&self) -> Option<&str> {
        self.subject.as_deref().or_else(|| self.data.container())
    }

    /// Encodes the envelope as JSON, refusing results larger than [`MAX_EVENT_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let event_type = self.event_type();
        let json = |source| EncodeError::Json { event_type, source };
        let data = self.data.to_json().map_err(json)?;
        let wire = WireOut {
            specversion: SPEC_VERSION,
            id: self.id,
            source: &self.source,
            event_type,
            time: self.time,
            datacontenttype: CONTENT_TYPE,
            subject: self.subject.as_deref(),
            correlationid: self.correlation_id,
            causationid: self.causation_id,
            host: self.host.as_deref(),
            traceparent: self.trace.traceparent.as_deref(),
            tracestate: self.trace.tracestate.as_deref(),
            data: &data,
        };
        let bytes = serde_json::to_vec(&wire).map_err(json)?;
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(EncodeError::TooLarge {
                event_type,
                size: bytes.len(),
                limit: MAX_EVENT_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Decodes an envelope that arrived on the subject of `subject_type` (the NATS subject
    /// without the namespace prefix), refusing one whose `type` is any other: the subject is
    /// what the server's permissions checked, so it is the only type a consumer may trust.
    pub fn decode_for(subject_type: &str, bytes: &[u8]) -> Result<Self, DecodeError> {
        let event = Self::decode(bytes)?;
        if event.event_type() != subject_type {
            return Err(DecodeError::WrongSubject {
                subject: subject_type.to_owned(),
                declared: event.event_type().to_owned(),
            });
        }
        Ok(event)
    }

    /// Decodes an envelope that arrived on `subject` (the NATS subject without the namespace
    /// prefix: `<type>`, or `host.<host>.<type>` when addressed to one host, see
    /// [`crate::split_address`]), refusing one whose `type` is not the subject's type or, on
    /// an addressed subject, whose `host` is not the subject's host: the subject is what the
    /// server's permissions checked.
    pub fn decode_addressed(subject: &str, bytes: &[u8]) -> Result<Self, DecodeError> {
        let (host, event_type) = crate::split_address(subject);
        let event = Self::decode_for(event_type, bytes)?;
        match host {
            Some(host) if event.host.as_deref() != Some(host) => Err(DecodeError::WrongHost {
                subject: host.to_owned(),
                declared: event.host.clone(),
            }),
            _ => Ok(event),
        }
    }

    /// Decodes and validates an envelope. Never panics; every problem is a [`DecodeError`].
    ///
    /// Unknown *extra* attributes and payload fields are ignored, so a newer publisher can add
    /// fields without older consumers dead-lettering its events during a rolling upgrade.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(DecodeError::TooLarge { size: bytes.len(), limit: MAX_EVENT_BYTES });
        }
        let wire: WireIn<'_> = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
        if wire.specversion != SPEC_VERSION {
            return Err(DecodeError::SpecVersion(wire.specversion));
        }
        if let Some(ct) = wire.datacontenttype {
            // Parameters such as `; charset=utf-8` are allowed.
            if ct.split(';').next().map(str::trim) != Some(CONTENT_TYPE) {
                return Err(DecodeError::ContentType(ct));
            }
        }
        let event_type = EventData::known_type(&wire.event_type)
            .ok_or_else(|| DecodeError::UnknownType(wire.event_type.clone()))?;
        if let Some(host) = &wire.host {
            crate::check_host(host)
                .map_err(|rule| DecodeError::Host { host: host.clone(), rule })?;
        }
        let raw = wire.data.ok_or(DecodeError::MissingData(event_type))?;
        let data = EventData::from_json(event_type, raw)?;
        Ok(Self {
            id: wire.id,
            source: wire.source,
            time: wire.time,
            subject: wire.subject,
            correlation_id: wire.correlationid,
            causation_id: wire.causationid,
            host: wire.host,
            data,
            trace: TraceContext {
                traceparent: raw_trace_attribute(wire.traceparent),
                tracestate: raw_trace_attribute(wire.tracestate),
            },
        })
    }
}
