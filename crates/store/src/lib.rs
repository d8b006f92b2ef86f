//! steward-store: the backup bucket, shared by the backup service (which writes it) and the
//! `steward` CLI (which lists it).
//!
//! Where backups are ([`config::S3Config`]), the S3 side with bounded-memory multipart
//! uploads and streamed downloads ([`store`]), what a backup holds ([`manifest`]) and the
//! stored backups as listed ([`catalog`]).
//!
//! Invariants: no Docker, no NATS, no age or compression (those are the backup service's);
//! a backup without a manifest, or whose manifest is not signed by a trusted key
//! ([`signing`]), is never listed as usable.

pub mod catalog;
pub mod chunks;
pub mod config;
pub mod manifest;
pub mod signing;
pub mod store;
