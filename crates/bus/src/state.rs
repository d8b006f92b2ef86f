//! Compare-and-set state for flows that two processes must never advance twice.
//!
//! Every write names the revision it read; a write based on a stale read fails with
//! [`BusError::Conflict`] instead of overwriting, so an updater that was thought dead and a
//! new instance cannot both advance one update.
//!
//! A call that meets NATS away (restarting, or a cluster electing the bucket's leader) is
//! retried for up to the bus's `publish_timeout`, as a publish is: a flow in the middle of an
//! update must not fail, and be rolled back, for a few seconds of failover. A write whose
//! answer was lost and that then meets its own value is taken as done.

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::Duration;

use crate::{Bus, BusError};

/// Which message of a subject [`StateStore::direct_get`] reads.
#[derive(Debug, Clone, Copy)]
enum Which {
    /// The newest.
    Newest,
    /// The first at or after this stream sequence (0: the oldest kept).
    AtOrAfter(u64),
}

/// A value and the revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Revision to pass to [`StateStore::update`].
    pub revision: u64,
}

/// A typed KV bucket of JSON values.
///
/// Under host routing an agent's store is its host's part of the bucket: every key it names
/// is `<host>.<key>` on the server (so two hosts' `gitea` records never collide, and the
/// server's permissions let it write only its host's keys), and it lists only those. A
/// central participant's store is the whole bucket, keys as stored.
pub struct StateStore<T> {
    kv: kv::Store,
    bucket: String,
    /// `<host>.` for an agent under host routing, else empty.
    scope: String,
    /// How long a call is retried while NATS is away.
    retry_for: Duration,
    /// At the hub, for a bucket the hosts' leaves feed: the settings the origin of each entry
    /// is judged by ([`crate::origin`]); `None` elsewhere.
    judged: Option<crate::BusConfig>,
    _value: PhantomData<fn() -> T>,
}

/// Runs `attempt` again while it fails with a NATS error, backing off (50 ms doubling to
/// 2 s) for up to `bound`; a conflict or an unreadable value is an answer, returned at once.
/// Also says whether an attempt was repeated (a write's first attempt may have landed).
pub(crate) async fn retry_transient<R, F, Fut>(
    bound: Duration,
    what: &str,
    mut attempt: F,
) -> (Result<R, BusError>, bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, BusError>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut retried = false;
    loop {
        match attempt().await {
            Err(e @ BusError::Nats { .. }) if started.elapsed() + delay < bound => {
                tracing::warn!(error = %e, what, "NATS not answering; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                retried = true;
            }
            other => return (other, retried),
        }
    }
}

impl<T> Clone for StateStore<T> {
    fn clone(&self) -> Self {
        Self {
            kv: self.kv.clone(),
            bucket: self.bucket.clone(),
            scope: self.scope.clone(),
            retry_for: self.retry_for,
            judged: self.judged.clone(),
            _value: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for StateStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore").field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> StateStore<T> {
    /// Opens the bucket `name` of this namespace, which `steward setup` created
    /// ([`Bus::setup`]); a missing one is [`BusError::NotProvisioned`]. Whether this process
    /// may write it is the NATS user's permissions' business: a service writes only its own.
    pub async fn open(bus: &Bus, name: &str) -> Result<Self, BusError> {
        match Self::open_existing(bus, name).await? {
            Some(store) => Ok(store),
            None => Err(BusError::NotProvisioned {
                what: format!("KV bucket {}", bus.namespace().bucket(name)),
            }),
        }
    }

    /// Opens the bucket `name` without creating or reconfiguring it (no service may). `None`:
    /// it does not exist.
    pub async fn open_existing(bus: &Bus, name: &str) -> Result<Option<Self>, BusError> {
        let bucket = bus.namespace().bucket(name);
        let Some(kv) = existing_kv(bus, &bucket).await? else { return Ok(None) };
        let scope = bus.config().route_host().map(|h| format!("{h}.")).unwrap_or_default();
        let retry_for = bus.config().publish_timeout;
        let judged = (matches!(bus.config().topology(), crate::Topology::Hub { .. })
            && crate::setup::sourced_buckets().contains(&name))
        .then(|| bus.config().clone());
        Ok(Some(Self { kv, bucket, scope, retry_for, judged, _value: PhantomData }))
    }

    /// The key on the server.
    fn scoped(&self, key: &str) -> String {
        format!("{}{key}", self.scope)
    }

    fn encode(&self, key: &str, value: &T) -> Result<Bytes, BusError> {
        serde_json::to_vec(value).map(Bytes::from).map_err(|e| BusError::CorruptState {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The current value, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Versioned<T>>, BusError> {
        let Some(entry) = self.entry(key).await? else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let value = serde_json::from_slice(&entry.value).map_err(|e| BusError::CorruptState {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Some(Versioned { value, revision: entry.revision }))
    }

    /// The raw entry of `key` (a value or a delete marker), retried while NATS is away.
    async fn entry(&self, key: &str) -> Result<Option<kv::Entry>, BusError> {
        let scoped = self.scoped(key);
        if let Some(cfg) = &self.judged {
            return self.judged_entry(cfg, scoped).await;
        }
        retry_transient(self.retry_for, "kv entry", || async {
            self.kv.entry(scoped.clone()).await.map_err(|e| BusError::nats("kv entry", e))
        })
        .await
        .0
    }

    /// [`entry`](Self::entry) at the hub: read with its headers (a KV entry carries none). A
    /// revision a host's leaf brought under another host's key (or a key of no host) is not
    /// the key's: the newest revision that passes is ([`crate::origin`]), if the bucket still
    /// keeps one (5 per key), else the key is absent.
    async fn judged_entry(
        &self,
        cfg: &crate::BusConfig,
        key: String,
    ) -> Result<Option<kv::Entry>, BusError> {
        let subject = format!("$KV.{}.{key}", self.bucket);
        let stream = format!("KV_{}", self.bucket);
        let Some(last) = self.direct_get(&subject, Which::Newest).await? else { return Ok(None) };
        let passes = |m: &async_nats::jetstream::message::StreamMessage| {
            crate::origin::bucket_entry(cfg, &stream, &key, Some(&m.headers), "state")
        };
        if passes(&last) {
            return Ok(Some(self.kv_entry(key, last)));
        }
        // Walk the key's kept revisions, oldest first, keeping the newest that passes.
        let mut kept = None;
        let mut next = self.direct_get(&subject, Which::AtOrAfter(0)).await?;
        while let Some(m) = next {
            let sequence = m.sequence;
            if sequence >= last.sequence {
                break;
            }
            if passes(&m) {
                kept = Some(m);
            }
            next = self.direct_get(&subject, Which::AtOrAfter(sequence.saturating_add(1))).await?;
        }
        Ok(kept.map(|m| self.kv_entry(key, m)))
    }

    /// One message of the bucket's stream on `subject` with its headers, retried while NATS
    /// is away; `None`: there is none.
    async fn direct_get(
        &self,
        subject: &str,
        which: Which,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, BusError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        retry_transient(self.retry_for, "kv entry", || async {
            let got = match which {
                Which::Newest => self.kv.stream.direct_get_last_for_subject(subject).await,
                Which::AtOrAfter(0) => self.kv.stream.direct_get_first_for_subject(subject).await,
                Which::AtOrAfter(seq) => {
                    self.kv.stream.direct_get_next_for_subject(subject, Some(seq)).await
                }
            };
            match got {
                Ok(m) => Ok(Some(m)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(BusError::nats("kv entry", e)),
            }
        })
        .await
        .0
    }

    fn kv_entry(&self, key: String, m: async_nats::jetstream::message::StreamMessage) -> kv::Entry {
        let operation = match m.headers.get("KV-Operation").map(|v| v.as_str()) {
            Some("DEL") => kv::Operation::Delete,
            Some("PURGE") => kv::Operation::Purge,
            _ => kv::Operation::Put,
        };
        kv::Entry {
            bucket: self.bucket.clone(),
            key,
            value: m.payload,
            revision: m.sequence,
            delta: 0,
            created: m.time,
            operation,
            seen_current: false,
        }
    }

    /// The answer to a write of `key` that expected `expected` and met something else.
    fn conflict(&self, key: &str, expected: Option<u64>) -> BusError {
        BusError::Conflict { bucket: self.bucket.clone(), key: key.to_owned(), expected }
    }

    /// After a conflict met by a repeated write: the revision at which `key` holds exactly
    /// `bytes` (the write's first attempt landed, its answer was lost), else the conflict.
    async fn landed(&self, key: &str, bytes: &Bytes, conflict: BusError) -> Result<u64, BusError> {
        match self.entry(key).await? {
            Some(e) if e.operation == kv::Operation::Put && e.value == *bytes => Ok(e.revision),
            _ => Err(conflict),
        }
    }

    /// Stores `value` only if `key` has none; returns the new revision.
    pub async fn create(&self, key: &str, value: &T) -> Result<u64, BusError> {
        let bytes = self.encode(key, value)?;
        let scoped = self.scoped(key);
        let (result, retried) = retry_transient(self.retry_for, "kv create", || async {
            self.kv.create(scoped.clone(), bytes.clone()).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => self.conflict(key, None),
                _ => BusError::nats("kv create", e),
            })
        })
        .await;
        match result {
            Err(conflict @ BusError::Conflict { .. }) if retried => {
                self.landed(key, &bytes, conflict).await
            }
            other => other,
        }
    }

    /// Stores `value` only if `key` is still at `revision`; returns the new revision.
    pub async fn update(&self, key: &str, value: &T, revision: u64) -> Result<u64, BusError> {
        let bytes = self.encode(key, value)?;
        let scoped = self.scoped(key);
        let (result, retried) = retry_transient(self.retry_for, "kv update", || async {
            self.kv.update(scoped.clone(), bytes.clone(), revision).await.map_err(|e| {
                match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => self.conflict(key, Some(revision)),
                    _ => BusError::nats("kv update", e),
                }
            })
        })
        .await;
        match result {
            Err(conflict @ BusError::Conflict { .. }) if retried => {
                self.landed(key, &bytes, conflict).await
            }
            other => other,
        }
    }

    /// Stores `value` whatever the key holds (for state only one process writes).
    pub async fn put(&self, key: &str, value: &T) -> Result<u64, BusError> {
        let bytes = self.encode(key, value)?;
        let scoped = self.scoped(key);
        retry_transient(self.retry_for, "kv put", || async {
            self.kv
                .put(scoped.clone(), bytes.clone())
                .await
                .map_err(|e| BusError::nats("kv put", e))
        })
        .await
        .0
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), BusError> {
        let scoped = self.scoped(key);
        retry_transient(self.retry_for, "kv delete", || async {
            self.kv.delete(scoped.clone()).await.map_err(|e| BusError::nats("kv delete", e))
        })
        .await
        .0
    }

    /// Removes `key` only if it is still at `revision` (a newer value stays).
    pub async fn delete_at(&self, key: &str, revision: u64) -> Result<(), BusError> {
        let scoped = self.scoped(key);
        let (result, retried) = retry_transient(self.retry_for, "kv delete", || async {
            self.kv.delete_expect_revision(scoped.clone(), Some(revision)).await.map_err(
                |e| match e.kind() {
                    kv::DeleteErrorKind::WrongLastRevision => self.conflict(key, Some(revision)),
                    _ => BusError::nats("kv delete", e),
                },
            )
        })
        .await;
        match result {
            // A repeated delete meeting the key gone: the first one landed.
            Err(conflict @ BusError::Conflict { .. }) if retried => match self.get(key).await? {
                None => Ok(()),
                Some(_) => Err(conflict),
            },
            other => other,
        }
    }

    /// Every key's current value, read in one pass (one ordered consumer streaming the last
    /// value per key) instead of a request per key. Waits at most `bound` for the stream.
    pub async fn all(
        &self,
        bound: std::time::Duration,
    ) -> Result<std::collections::HashMap<String, Versioned<T>>, BusError> {
        use futures::StreamExt as _;
        let mut out = std::collections::HashMap::new();
        if self.judged.is_some() {
            // At the hub each entry's origin is judged, which a watch's entries do not show:
            // key by key (the centre reads a few records per host). No central caller reads a
            // whole bucket this way today: the CLI's listings (`status`, `updates`, `deploys`,
            // `hosts`) read `keys` and `get` themselves, at the same cost, and the one caller of
            // `all` is the watcher, on its own leaf. Kept so that a reader at the hub gets the
            // judged values rather than a watch's unjudged ones (tested at the hub in
            // `leaf_nodes.rs`, `an_import_at_a_rebuilt_hub_gives_no_host_an_old_event`).
            let read = async {
                for key in self.keys().await? {
                    if let Some(v) = self.get(&key).await? {
                        out.insert(key, v);
                    }
                }
                Ok::<_, BusError>(())
            };
            tokio::time::timeout(bound, read)
                .await
                .map_err(|_| BusError::nats("kv read all", "timed out"))??;
            return Ok(out);
        }
        // Fresh from the server (`Store::status` answers from what `open` saw).
        let info = self.kv.stream.get_info().await.map_err(|e| BusError::nats("kv status", e))?;
        if info.state.messages == 0 {
            // An empty stream delivers nothing, not even an end.
            return Ok(out);
        }
        if !self.scope.is_empty() {
            // Nor does a host's part of the bucket without a key.
            let mut subjects = self
                .kv
                .stream
                .info_with_subjects(format!("$KV.{}.{}>", self.bucket, self.scope))
                .await
                .map_err(|e| BusError::nats("kv status", e))?;
            if subjects.try_next().await.map_err(|e| BusError::nats("kv status", e))?.is_none() {
                return Ok(out);
            }
        }
        let mut watch = self
            .kv
            .watch_with_history(format!("{}>", self.scope))
            .await
            .map_err(|e| BusError::nats("kv read all", e))?;
        let read = async {
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| BusError::nats("kv read all", e))?;
                let last = entry.delta == 0;
                let key = entry.key.strip_prefix(self.scope.as_str()).unwrap_or(&entry.key);
                let key = key.to_owned();
                if entry.operation == kv::Operation::Put {
                    let value = serde_json::from_slice(&entry.value).map_err(|e| {
                        BusError::CorruptState {
                            bucket: self.bucket.clone(),
                            key: entry.key.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    out.insert(key, Versioned { value, revision: entry.revision });
                } else {
                    out.remove(&key);
                }
                if last {
                    break;
                }
            }
            Ok::<_, BusError>(())
        };
        tokio::time::timeout(bound, read)
            .await
            .map_err(|_| BusError::nats("kv read all", "timed out"))??;
        Ok(out)
    }

    /// Every key that holds a value (of this agent's host, under host routing).
    pub async fn keys(&self) -> Result<Vec<String>, BusError> {
        let keys = self.kv.keys().await.map_err(|e| BusError::nats("kv keys", e))?;
        let keys: Vec<String> =
            keys.try_collect().await.map_err(|e| BusError::nats("kv keys", e))?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(self.scope.as_str()).map(str::to_owned))
            .collect())
    }
}

/// The KV bucket named `bucket` (the namespace's full name), or `None` when the server says it
/// does not exist. Any other failure (a server that does not answer in time, a denied
/// request) is an error: never taken for a missing bucket.
pub(crate) async fn existing_kv(
    bus: &Bus,
    bucket: &str,
) -> Result<Option<async_nats::jetstream::kv::Store>, BusError> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::ErrorCode;
    match bus.js().get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                return Ok(None)
            }
            _ => return Err(BusError::nats("open kv bucket", format!("{bucket}: {e}"))),
        },
    }
    bus.js()
        .get_key_value(bucket)
        .await
        .map(Some)
        .map_err(|e| BusError::nats("open kv bucket", format!("{bucket}: {e}")))
}
