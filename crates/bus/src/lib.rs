//! Steward's event bus on NATS JetStream.
//!
//! - [`Bus::connect`] connects (reconnecting by itself forever) and looks up the `STEWARD`
//!   stream, which keeps every Steward subject on file storage. Only the provisioning identity
//!   ([`Bus::setup`], run by `steward setup`) creates or changes the stream, the services'
//!   durable consumers and the KV buckets; services look them up.
//! - [`Bus::publish`] sends an [`Event`] with `Nats-Msg-Id` = event id and waits for the
//!   stream's ack, retrying within a bound while NATS is away; a retry is never stored twice.
//! - [`Bus::inbox`] gives a service its durable pull consumer ([`Inbox`]): explicit acks,
//!   `ack_wait`, `max_deliver`, and [`Delivery::dead_letter`] for poison messages.
//! - [`Idempotency`] makes a handler's work happen once when an event is delivered twice;
//!   [`StateStore`] is a compare-and-set KV bucket for state machines, and [`RecordStore`]
//!   one of flow records whose events are published from an outbox they carry.
//! - [`Bus::replay`] reads the stream by start time for audits and `steward events`.
//! - [`Bus::publish_progress`] / [`Bus::watch_progress`]: lossy progress of long jobs, on
//!   plain NATS outside the stream.
//! - [`approval`]: approval links by request and reply, outside the stream (a live token is
//!   never an event).
//!
//! Invariant: only this crate talks to NATS. Everything it sends or reads on event subjects
//! is a [`steward_events::Event`].

pub mod approval;
mod config;
mod error;
mod export;
mod idempotency;
mod inbox;
mod origin;
mod permissions;
mod progress;
mod publish;
mod record;
mod replay;
mod server;
mod setup;
mod state;
mod stream;
pub mod subject;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
pub use config::{validate_url, BusConfig, Credentials, Namespace, Topology};
pub use error::BusError;
pub use export::{
    check_import, state_buckets, Export, ExportRecord, ExportedMessage, ExportedValue, ImportError,
    Imported, EXPORT_FORMAT,
};
pub use idempotency::{Idempotency, MARKER_TTL};
pub use inbox::{
    ConsumerSpec, Delivery, Inbox, DLQ_DELIVERIES, DLQ_REASON, DLQ_SEQUENCE, DLQ_SUBJECT,
};
pub use origin::{refused_origins, STREAM_SOURCE};
pub use permissions::{
    inbox_prefix, leaf_user, password_variable, setup_password_variable, user_password_variable,
    LeafLink, Permissions, SETUP_USER,
};
pub use progress::{Progress, PROGRESS_FAMILY};
pub use publish::Published;
pub use record::{Hold, RecordStore};
pub use replay::{Replay, ReplayQuery, Replayed};
pub use server::{
    Cluster, LinkTls, ServerFile, ServerFileError, LEAF_PORT, LEAF_URL_VARIABLE, ROUTES_MARKER,
    ROUTES_VARIABLE, ROUTE_PORT, ROUTE_USER,
};
pub use setup::{sourced_buckets, Setup, HANDLED_BUCKET};
pub use state::{StateStore, Versioned};
use steward_events::Event;
pub use stream::starting_subject;

/// A connection to NATS with the Steward stream in place. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: Arc<BusConfig>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Bus {
    /// Connects to NATS and looks up the stream (it does not create it: `steward setup` does).
    ///
    /// NATS being down at start, or the stream not there yet, is waited for up to
    /// `cfg.connect_timeout`, then this fails loudly (a missing stream is
    /// [`BusError::NotProvisioned`], naming `steward setup`); after that the client reconnects
    /// by itself for as long as the process lives.
    pub async fn connect(cfg: BusConfig, client_name: &str) -> Result<Self, BusError> {
        let bus = Self::open(cfg, client_name).await?;
        bus.await_stream(bus.cfg.connect_timeout).await?;
        Ok(bus)
    }

    /// Connects to NATS without looking for the stream: for the provisioning identity
    /// ([`Bus::setup`]), which is the one that creates it.
    pub async fn open(cfg: BusConfig, client_name: &str) -> Result<Self, BusError> {
        let url = cfg.url.clone();
        let name = client_name.to_owned();
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            // Replies come to a prefix of this user's own, so a NATS user may be allowed to
            // receive its replies without receiving everyone's.
            .custom_inbox_prefix(inbox_prefix(
                cfg.credentials.as_ref().map_or(client_name, |c| c.user.as_str()),
            ))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| {
                // Quick first retries so a NATS restart costs well under a second, capped at 2 s.
                Duration::from_millis((50u64 << attempts.min(6)).min(2000))
            })
            .event_callback(move |event| {
                let name = name.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(client = %name, "connected to NATS")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(client = %name, "disconnected from NATS; reconnecting")
                        }
                        // Permission violations arrive here, and only here: say so loudly.
                        async_nats::Event::ServerError(e) => {
                            tracing::error!(client = %name, error = %e, "NATS server error")
                        }
                        other => {
                            tracing::debug!(client = %name, event = %other, "NATS client event")
                        }
                    }
                }
            });
        if let Some(c) = &cfg.credentials {
            options = options.user_and_password(c.user.clone(), c.password.clone());
        }
        // A cluster's nodes as a list: the client tries each, and reconnects to any.
        let urls: Vec<String> = url.split(',').map(|u| u.trim().to_owned()).collect();
        let client = options.connect(urls).await.map_err(|e| BusError::Connect {
            url: steward_events::redact_url(&url),
            reason: steward_events::redact_urls_in(&e.to_string()),
        })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(cfg.request_timeout);
        Ok(Self { client, js, cfg: Arc::new(cfg) })
    }

    /// The configuration in force.
    pub fn config(&self) -> &BusConfig {
        &self.cfg
    }

    /// The host this agent looks after ([`BusConfig::host`]); `None` for a central participant.
    pub fn host(&self) -> Option<&str> {
        self.cfg.host.as_deref()
    }

    /// The namespace (stream name and subject prefix).
    pub fn namespace(&self) -> &Namespace {
        &self.cfg.namespace
    }

    /// True while the client holds a live connection to NATS (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Round trip to the server: proves NATS answers now, not just that a socket is open.
    pub async fn ping(&self, timeout: Duration) -> Result<(), BusError> {
        match tokio::time::timeout(timeout, self.client.flush()).await {
            Ok(Ok(())) if self.is_connected() => Ok(()),
            Ok(Ok(())) => Err(BusError::NotConnected),
            Ok(Err(e)) => Err(BusError::Nats { op: "flush", reason: e.to_string() }),
            Err(_) => Err(BusError::NotConnected),
        }
    }

    /// Publishes an event and waits for the stream's ack (see [`publish`](crate::publish)).
    pub async fn publish(&self, event: &Event) -> Result<Published, BusError> {
        publish::publish_event(self, event).await
    }

    /// Flushes what the client buffered; used before a short-lived process exits.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client.flush().await.map_err(|e| BusError::Nats { op: "flush", reason: e.to_string() })
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// The raw NATS client, for tests that must put non-Steward bytes on a subject.
    #[doc(hidden)]
    pub fn raw_client(&self) -> &async_nats::Client {
        &self.client
    }
}
