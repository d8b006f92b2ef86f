//! "Do this once per event id", across redeliveries and restarts.
//!
//! A marker `SCOPE.TYPE.HOST.EVENT_ID` ([`Event::identity`]) is written to a KV bucket *after* the work succeeded. A second
//! delivery finds the marker and skips the work. The marker is not a lock: a process that dies
//! between finishing the work and writing the marker will do the work again on redelivery, so
//! long flows additionally keep their own compare-and-set state ([`crate::StateStore`]).

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use steward_events::Event;
use uuid::Uuid;

use crate::{Bus, BusError};

/// How long a handled marker is kept (the `HANDLED` bucket's `max_age`, set by `steward
/// setup`): markers outlive every possible redelivery (`ack_wait` × `max_deliver` is
/// minutes). It is also the idempotency horizon: a delivery older than the markers' TTL can
/// no longer be recognised as handled, so the runtime never hands it to a handler.
pub const MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The handled-event markers of one scope (one consumer).
#[derive(Clone)]
pub struct Idempotency {
    kv: kv::Store,
    scope: String,
    horizon: Duration,
    /// How long a call is retried while NATS is away (the bus's `publish_timeout`).
    retry_for: Duration,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").field("scope", &self.scope).finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Opens the markers bucket (created by `steward setup`) for `scope`; a missing one is
    /// [`BusError::NotProvisioned`].
    pub async fn open(bus: &Bus, scope: &str) -> Result<Self, BusError> {
        let bucket = bus.namespace().bucket(crate::setup::HANDLED_BUCKET);
        let mut stream = match bus.js().get_stream(format!("KV_{bucket}")).await {
            Ok(stream) => stream,
            Err(e) => {
                use async_nats::jetstream::context::GetStreamErrorKind;
                return Err(match e.kind() {
                    GetStreamErrorKind::JetStream(j)
                        if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        BusError::NotProvisioned { what: format!("KV bucket {bucket}") }
                    }
                    _ => BusError::nats("open kv bucket", e),
                });
            }
        };
        let max_age =
            stream.info().await.map_err(|e| BusError::nats("kv bucket info", e))?.config.max_age;
        // A bucket without expiry keeps markers for ever: nothing is beyond the horizon.
        let horizon = if max_age.is_zero() { Duration::MAX } else { max_age };
        let kv = bus
            .js()
            .get_key_value(&bucket)
            .await
            .map_err(|e| BusError::nats("open kv bucket", e))?;
        let retry_for = bus.config().publish_timeout;
        Ok(Self { kv, scope: scope.to_owned(), horizon, retry_for })
    }

    /// How old a delivery may be and still be recognised as handled: the markers' TTL.
    pub fn horizon(&self) -> Duration {
        self.horizon
    }

    fn key(&self, event: &Event) -> String {
        format!("{}.{}", self.scope, event.identity())
    }

    /// The key markers had before they named the type and host (`<scope>.<id>`), still
    /// honoured: an event handled before an upgrade stays handled.
    fn legacy_key(&self, id: &Uuid) -> String {
        format!("{}.{}", self.scope, id.simple())
    }

    /// Whether `event` was already handled in this scope.
    pub async fn is_done(&self, event: &Event) -> Result<bool, BusError> {
        for key in [self.key(event), self.legacy_key(&event.id)] {
            let (entry, _) = crate::state::retry_transient(self.retry_for, "kv get", || async {
                self.kv.get(key.clone()).await.map_err(|e| BusError::nats("kv get", e))
            })
            .await;
            if entry?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Records that `event` was handled.
    pub async fn mark_done(&self, event: &Event) -> Result<(), BusError> {
        let key = self.key(event);
        crate::state::retry_transient(self.retry_for, "kv put", || async {
            self.kv
                .put(key.clone(), Bytes::from_static(b"1"))
                .await
                .map(|_| ())
                .map_err(|e| BusError::nats("kv put", e))
        })
        .await
        .0
    }

    /// Runs `work` unless `event` was handled before; marks it handled when `work` succeeds.
    /// Returns `None` when skipped.
    pub async fn once<T, E, F>(&self, event: &Event, work: F) -> Result<Option<T>, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: From<BusError>,
    {
        if self.is_done(event).await? {
            return Ok(None);
        }
        let out = work.await?;
        self.mark_done(event).await?;
        Ok(Some(out))
    }
}

/// Creates (or updates) a KV bucket's backing stream and opens it. Provisioning only.
///
/// The stream is declared here rather than with `create_key_value`: that call first asks for
/// account info, whose answer from nats-server 2.9 (Debian 12) async-nats 0.51 cannot parse.
/// The settings are the KV conventions (`KV_<bucket>`, `$KV.<bucket>.>`, direct get), except
/// rollups: nothing here purges a key, and a rollup published on any key a writer may use
/// (`Nats-Rollup: all`) would erase every other writer's keys (the idempotency markers that
/// every agent shares, another host's records).
pub(crate) async fn open_bucket(
    bus: &Bus,
    bucket: &str,
    max_age: Duration,
    history: i64,
) -> Result<kv::Store, BusError> {
    open_sourced_bucket(bus, bucket, max_age, history, None).await
}

/// [`open_bucket`], its stream fed by `sources` too (the hub's copy of the hosts' buckets
/// under the leaf-node topology).
pub(crate) async fn open_sourced_bucket(
    bus: &Bus,
    bucket: &str,
    max_age: Duration,
    history: i64,
    sources: Option<Vec<async_nats::jetstream::stream::Source>>,
) -> Result<kv::Store, BusError> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    let config = Config {
        name: format!("KV_{bucket}"),
        description: Some(format!("steward state: {bucket}")),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history.max(1),
        max_age,
        max_bytes: -1,
        max_message_size: -1,
        storage: StorageType::File,
        allow_rollup: false,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: bus.config().replicas,
        sources,
        ..Default::default()
    };
    // On a leaf, a new bucket begins like its stream (the hub sources the agents' buckets).
    bus.create_or_update_stream(config).await.map_err(|e| BusError::nats("create kv bucket", e))?;
    bus.js().get_key_value(bucket).await.map_err(|e| BusError::nats("open kv bucket", e))
}
