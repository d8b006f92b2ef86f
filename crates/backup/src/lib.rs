//! steward-backup: streams database dumps and data paths to S3, verifies and restores them.
//!
//! It consumes `backup.requested` (the updater before an update, `steward backup now`),
//! `verify.requested` and `restore.requested`, and backs up on its own schedule. A backup
//! ([`backup`]) streams `pg_dump` output and path archives from the engine through zstd into
//! S3 multipart uploads ([`pipeline`], [`steward_store::store`]), encrypted to the operator's
//! age recipients when configured ([`encryption`]), and writes its [`steward_store::manifest`]
//! last; a verification ([`verify`]) loads every dump into a scratch server; a restore
//! ([`restore`]) checks every checksum before it touches anything. Old backups are pruned by
//! [`retention`] after each scheduled backup.

pub mod backup;
pub mod catalog;
pub mod chunks;
pub mod config;
pub mod copy;
pub mod encryption;
pub mod extract;
pub mod guard;
pub mod heartbeat;
pub mod journal;
pub mod matching;
pub mod pause;
pub mod pipeline;
pub mod pitr;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod safety;
pub mod service;
pub mod stack;
pub mod tarcheck;
pub mod targets;
pub mod verify;
pub mod wal;

use steward_events::Service;

pub use backup::{Backups, Failure};
pub use service::BackupService;

/// This service on the bus.
pub const SERVICE: Service = Service::Backup;
