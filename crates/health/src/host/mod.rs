//! Host checks: the conditions of the stack beyond "is the container up" that an operator
//! must hear about before they become an outage.
//!
//! - [`certs`]: the expiry of the certificates in the certbot container's live directory (the
//!   container labelled `steward.certs.renew`, the same one and path the updater renews),
//!   `health.cert_expiring` / `health.cert_renewed`;
//! - [`tls`]: the expiry of the certificates the stack serves, read by a TLS handshake with
//!   the endpoints of `steward.health.tls`, the same events and thresholds as the files';
//! - [`disk`]: free space of the engine's data root and of volumes, measured by `df` in the
//!   containers labelled `steward.health.disk`, `health.disk_low` / `health.disk_recovered`;
//! - [`config`]: a configuration check by exec (`steward.health.check=nginx -t`),
//!   `health.config_invalid` / `health.config_recovered`.
//!
//! Every check yields [`Finding`]s; [`conditions`] turns them into transitions, so each
//! condition is one event when it appears or changes level, and one when it clears, across
//! restarts (the open conditions are kept in the `HEALTH` bucket).

pub mod certs;
pub mod conditions;
pub mod config;
pub mod disk;
pub mod gauges;
pub mod tls;

use steward_events::{EventData, Level};

/// What a check saw of one condition this round.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Nothing wrong.
    Fine,
    /// Wrong, at this level.
    Alert(Level),
    /// Could not be checked this round (an exec or a read failed): an open condition stays
    /// open, none is opened.
    Unknown,
}

/// One condition as a check saw it, with the events that would tell its change.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Stable key of the condition (`cert|CONTAINER|FILE`, `tls|CONTAINER|ENDPOINT`, `disk|TARGET`,
    /// `config|CONTAINER`).
    pub key: String,
    /// What was seen.
    pub seen: Seen,
    /// The event telling it appeared or changed level (used with [`Seen::Alert`]).
    pub alert: Option<EventData>,
    /// The event telling it cleared (used with [`Seen::Fine`]).
    pub recovery: Option<EventData>,
}

impl Finding {
    /// A condition that could not be checked this round.
    pub fn unknown(key: String) -> Self {
        Self { key, seen: Seen::Unknown, alert: None, recovery: None }
    }
}

/// What one check found, and which keys it speaks for: an open condition under `covers` that
/// is not among `findings` is gone (its subject no longer exists or is no longer labelled).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The conditions seen.
    pub findings: Vec<Finding>,
    /// Key prefixes this report is complete for.
    pub covers: Vec<String>,
}
