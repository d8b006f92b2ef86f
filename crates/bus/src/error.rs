//! Bus errors, each saying what was being done and on what.

use std::time::Duration;

/// Something the bus could not do.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The first connection could not be made.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// Server URL, credentials redacted.
        url: String,
        /// Client's reason.
        reason: String,
    },
    /// The stream, a durable consumer or a KV bucket is not there: only the provisioning
    /// identity (`steward setup`) creates them, services only look them up.
    #[error("{what} does not exist: run `steward setup` (it creates the stream, every service's consumer and the KV buckets)")]
    NotProvisioned {
        /// What is missing, e.g. `stream STEWARD` or `durable consumer updater on STEWARD`.
        what: String,
    },
    /// This participant's routing table (`STEWARD_HOSTS`) is not the one the stream was
    /// provisioned with.
    #[error("STEWARD_HOSTS is {ours} here, but `steward setup` provisioned stream {stream} with {provisioned}: give every participant the same STEWARD_HOSTS (and run `steward setup` with it)")]
    Misrouted {
        /// Stream name.
        stream: String,
        /// This participant's table.
        ours: String,
        /// The stream's.
        provisioned: String,
    },
    /// Not connected right now.
    #[error("not connected to NATS")]
    NotConnected,
    /// A request found nobody listening on its subject (NATS answered "no responders").
    #[error("nobody listens on {subject}")]
    NoResponders {
        /// The request's subject.
        subject: String,
    },
    /// The stream could not be created or updated.
    #[error("cannot create or update stream {stream}: {reason}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Server's reason.
        reason: String,
    },
    /// The event could not be encoded.
    #[error(transparent)]
    Encode(#[from] steward_events::EncodeError),
    /// A publish got no ack within the retry bound.
    #[error("publish of {event_id} to {subject} not acknowledged after {waited:?}: {last_error}")]
    PublishTimeout {
        /// Subject.
        subject: String,
        /// Nats-Msg-Id.
        event_id: String,
        /// Time spent retrying.
        waited: Duration,
        /// The last attempt's error.
        last_error: String,
    },
    /// A publish was refused for a reason a retry cannot fix.
    #[error("publish to {subject} refused: {reason}")]
    PublishRefused {
        /// Subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A KV compare-and-set lost: someone else changed the key first.
    #[error("state {key:?} in {bucket} changed concurrently (expected revision {expected:?})")]
    Conflict {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Revision we expected (None: expected absent).
        expected: Option<u64>,
    },
    /// A stored state value is not what the code expects.
    #[error("state {key:?} in {bucket} is unreadable: {reason}")]
    CorruptState {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Decoder's reason.
        reason: String,
    },
    /// Any other NATS operation failed.
    #[error("NATS {op} failed: {reason}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// Why.
        reason: String,
    },
}

impl BusError {
    pub(crate) fn nats(op: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Nats { op, reason: e.to_string() }
    }

    /// Whether trying again later may succeed: the server was slow or briefly away, as
    /// opposed to refusing, missing what `steward setup` makes, or misconfigured. (A service
    /// starting on a loaded host saw "get consumer failed: timed out" and exited.)
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NotConnected | Self::NoResponders { .. } | Self::PublishTimeout { .. } => true,
            // async-nats gives each operation its own error kinds; a timeout or a lost
            // connection reads the same in all of them.
            Self::Nats { reason, .. } => {
                ["timed out", "no responders", "disconnected", "not connected"]
                    .iter()
                    .any(|t| reason.contains(t))
            }
            _ => false,
        }
    }
}
