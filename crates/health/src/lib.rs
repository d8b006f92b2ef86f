//! steward-health: probes the stack and publishes `health.failed` / `health.recovered`.
//!
//! Every watched container (and every database or container with an HTTP probe label) is
//! probed on an interval ([`probe`]: running, restarts, HEALTHCHECK, `steward.health.url`,
//! `pg_isready` by exec). Each container's rounds feed a [`track::Track`], which declares it
//! down after N consecutive failures and up after M consecutive passes: only those
//! transitions become events, so an outage is one mail and flapping is none. Tracks live in a
//! KV bucket, so a restarted health service neither repeats nor forgets an outage.
//! `/metrics` carries `steward_health_up` and `steward_health_probe_latency_seconds` per
//! container. The Docker engine is a target of its own ([`engine`]): one that stops answering
//! is `health.engine_failed` once, and `health.engine_recovered` when it answers again.
//! [`host`] checks what is not a container's state: certificates' expiry, free space of the
//! data root and volumes, and configuration checks such as `nginx -t`, each condition told
//! once when it appears or changes level and once when it clears.

pub mod config;
pub mod engine;
pub mod host;
pub mod probe;
pub mod service;
pub mod track;

use steward_events::Service;

/// This service on the bus.
pub const SERVICE: Service = Service::Health;
