//! Why an event could not be encoded or decoded.

/// A message on the bus that is not a valid Steward event.
///
/// Each variant names what was wrong so a dead-letter entry tells the operator why.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`crate::MAX_EVENT_BYTES`]; refused before parsing.
    #[error("event of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// Not a JSON object with the CloudEvents attributes Steward requires.
    #[error("invalid CloudEvents envelope: {0}")]
    Envelope(#[source] serde_json::Error),
    /// `specversion` other than 1.0.
    #[error("unsupported CloudEvents specversion {0:?} (expected \"1.0\")")]
    SpecVersion(String),
    /// `datacontenttype` other than JSON.
    #[error("unsupported datacontenttype {0:?} (expected \"application/json\")")]
    ContentType(String),
    /// `type` is not in the catalog.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The envelope has no `data` member.
    #[error("{0} event has no data")]
    MissingData(&'static str),
    /// The envelope's `type` is not the type of the subject it arrived on: a participant
    /// allowed to publish one subject smuggled in an event of a type it may not publish.
    #[error(
        "subject {subject:?} carries an event of type {declared:?}: the type must be the subject"
    )]
    WrongSubject {
        /// The event type the subject stands for.
        subject: String,
        /// The `type` the envelope declares.
        declared: String,
    },
    /// The subject is addressed to one host and the envelope names another (or none): a
    /// participant allowed to publish for one host smuggled in an event about another.
    #[error("subject of host {subject:?} carries an event of host {declared:?}: the host must be the subject's")]
    WrongHost {
        /// The host the subject is addressed to.
        subject: String,
        /// The `host` the envelope declares.
        declared: Option<String>,
    },
    /// The `host` attribute is not a host name.
    #[error("invalid host {host:?}: {rule}")]
    Host {
        /// The attribute as it came (an event is at most 1 MiB).
        host: String,
        /// What a host name may be.
        rule: String,
    },
    /// `data` does not match the payload of its type (missing or mistyped field).
    #[error("invalid data for {event_type}: {source}")]
    Data {
        /// The event type whose payload failed.
        event_type: &'static str,
        /// serde's description, which names the field.
        #[source]
        source: serde_json::Error,
    },
}

/// An event that cannot be put on the bus.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Serialization failed (cannot happen for the catalog's own types, but is not assumed).
    #[error("cannot serialize {event_type} event: {source}")]
    Json {
        /// The event type.
        event_type: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The encoded event is larger than [`crate::MAX_EVENT_BYTES`]; consumers would refuse it.
    #[error("{event_type} event of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The event type.
        event_type: &'static str,
        /// Encoded size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
}
