//! The Steward event catalog.
//!
//! Every message on the bus is an [`Event`]: a CloudEvents 1.0 JSON envelope whose `type` is
//! also the NATS subject and whose `data` is one of the typed payloads of [`EventData`].
//! Decoding is strict and bounded ([`Event::decode`]): an unknown type, a missing field, a
//! wrong `specversion` or an oversized message is a [`DecodeError`], never a panic.
//!
//! Invariant: this crate is pure data. It does no I/O and knows nothing of NATS or Docker, so
//! every service, the CLI and the tests agree on one vocabulary.

pub mod catalog;
mod envelope;
mod error;
mod host;
pub mod records;
pub mod redact;
pub mod release;
mod routing;
pub mod samples;
mod types;

pub use catalog::*;
pub use envelope::{Event, TraceContext, MAX_EVENT_BYTES, SPEC_VERSION};
pub use error::{DecodeError, EncodeError};
pub use host::{
    address, check_host, check_hosts, host_from_name, split_address, HOST_FAMILY, HOST_RULE,
    HUB_DOMAIN, MAX_HOST_LEN,
};
pub use redact::{redact_url, redact_urls_in};
pub use release::{release_notes, ImageVersion, Versions};
pub use routing::Service;
pub use types::{Digest, DigestError};
