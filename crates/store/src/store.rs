//! The S3 side: multipart uploads of unbounded streams with bounded memory, downloads as
//! streams, listing and deleting backups.
//!
//! Invariants: an upload either completes (and its size and SHA-256 of the stored bytes are
//! returned) or is aborted; at most [`PARTS_IN_FLIGHT`] parts plus the one being filled are in
//! memory; the part size grows with the stream so a component stays under S3's 10,000 parts.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{
    RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use crate::config::S3Config;

/// The backup service's journal folder under the prefix (`journal` is not a backup id, so
/// listing never sees it); open multipart uploads are journaled in its `uploads/`.
pub const JOURNAL_DIR: &str = "journal";

/// What [`Store::locked_until`] answers for an object under a legal hold: no date ends it.
pub const LOCKED_FOR_GOOD: OffsetDateTime = time::macros::datetime!(9999-12-31 0:00 UTC);

/// Parts uploaded while the next one fills: one hides the request's latency behind the
/// compression of the next part; more only adds a part's memory each (measured: no faster).
pub const PARTS_IN_FLIGHT: usize = 1;
/// The first part size: S3's minimum. Two components upload at once, each holding the part
/// it fills and the one in flight, so this is most of a backup's memory.
pub const FIRST_PART: usize = 5 << 20;
/// S3's part limits.
const MAX_PARTS: i32 = 10_000;
const MAX_PART: usize = 5 << 30;

/// The size of part `n` (1-based): 5 MiB for the first thousand parts, doubling every
/// thousand after, so the 10,000 parts cover about 5 TiB while small streams use small parts.
pub fn part_size(n: i32) -> usize {
    let doublings = ((n.max(1) - 1) / 1000) as u32;
    FIRST_PART.saturating_mul(1usize << doublings.min(20)).min(MAX_PART)
}

/// An S3 request that failed after the SDK's bounded retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store answered with an error or could not be reached.
    #[error("S3 {op} of {key}: {reason}")]
    S3 {
        /// The operation.
        op: &'static str,
        /// The object key (or prefix).
        key: String,
        /// The SDK's full error chain.
        reason: String,
    },
    /// Reading the source stream failed.
    #[error("reading the data for {key}: {source}")]
    Source {
        /// The object key.
        key: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stored object cannot be decoded (unknown encoding, no or the wrong key).
    #[error("{reason} ({key})")]
    Unreadable {
        /// The object key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The object was replaced since its ETag was taken (a pinned read).
    #[error("{key} was replaced in the bucket since it was checked")]
    Changed {
        /// The object key.
        key: String,
    },
    /// The stream is larger than 10,000 parts can hold.
    #[error("{key} exceeds S3's 10,000-part limit")]
    TooLarge {
        /// The object key.
        key: String,
    },
}

fn s3(op: &'static str, key: &str, e: impl std::error::Error) -> StoreError {
    StoreError::S3 { op, key: key.to_owned(), reason: DisplayErrorContext(e).to_string() }
}

/// A multipart upload in progress, as journaled.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OpenUpload {
    key: String,
    upload_id: String,
}

impl OpenUpload {
    /// Its marker's name (the upload id hashed: ids are opaque strings).
    fn marker(&self) -> String {
        let id = hex::encode(Sha256::digest(self.upload_id.as_bytes()));
        format!("{JOURNAL_DIR}/uploads/{id}.json")
    }
}

/// Size and SHA-256 of stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// One bucket and prefix.
///
/// The SDK client is built on first use: an idle backup service then never pays for the
/// AWS configuration chain and TLS roots (measured: most of its idle memory).
#[derive(Debug, Clone)]
pub struct Store {
    client: Arc<OnceCell<Client>>,
    /// Whether the bucket has S3 Object Lock, asked once: its uploads then need Content-MD5.
    object_lock: Arc<OnceCell<bool>>,
    credentials: Option<aws_sdk_s3::config::Credentials>,
    endpoint: Option<String>,
    bucket: String,
    prefix: String,
}

impl Store {
    /// A store whose client comes from the standard AWS chain (environment, profile,
    /// instance role) when it is first needed, with bounded retries and timeouts so an
    /// unreachable store fails a backup instead of hanging it.
    pub fn lazy(config: &S3Config) -> Self {
        Self {
            client: Arc::default(),
            object_lock: Arc::default(),
            credentials: None,
            endpoint: config.endpoint.clone(),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
        }
    }

    /// Like [`Store::lazy`], with the client built now.
    pub async fn connect(config: &S3Config) -> Self {
        let store = Self::lazy(config);
        store.client().await;
        store
    }

    /// A client with fixed credentials instead of the chain (tests, benchmarks).
    pub async fn connect_static(config: &S3Config, access_key: &str, secret_key: &str) -> Self {
        let credentials =
            aws_sdk_s3::config::Credentials::new(access_key, secret_key, None, None, "static");
        let store = Self { credentials: Some(credentials), ..Self::lazy(config) };
        store.client().await;
        store
    }

    /// The second copy's store: its own credentials when configured, else the AWS chain.
    pub fn lazy_copy(config: &crate::config::CopyConfig) -> Self {
        let credentials = config.credentials.as_ref().map(|(id, secret)| {
            aws_sdk_s3::config::Credentials::new(id, secret, None, None, "steward-copy")
        });
        Self { credentials, ..Self::lazy(&config.s3) }
    }

    async fn client(&self) -> &Client {
        self.client.get_or_init(|| self.build_client()).await
    }

    async fn build_client(&self) -> Client {
        use aws_config::meta::region::RegionProviderChain;
        use aws_sdk_s3::config::retry::RetryConfig;
        use aws_sdk_s3::config::timeout::TimeoutConfig;
        let region = RegionProviderChain::default_provider().or_else("us-east-1");
        let shared = aws_config::from_env().region(region).load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(4)
                    .with_initial_backoff(Duration::from_millis(500)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            // S3-compatible stores differ in their support of the newer streaming checksums;
            // Steward checks its own SHA-256 of everything it stores.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // A restore feeding a slow `pg_restore` reads slowly; a dead connection still fails.
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(Duration::from_secs(120))
                    .build(),
            );
        if let Some(endpoint) = &self.endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        if let Some(credentials) = &self.credentials {
            builder = builder.credentials_provider(credentials.clone());
        }
        Client::from_conf(builder.build())
    }

    /// The full key of `name` (relative to the prefix).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Stores a stream under `name`, hashing what is stored.
    pub async fn upload(
        &self,
        name: &str,
        mut src: impl AsyncRead + Unpin,
    ) -> Result<Stored, StoreError> {
        let key = self.key(name);
        let first = read_part(&mut src, part_size(1), &key).await?;
        if first.len() < part_size(1) {
            let stored =
                Stored { size: first.len() as u64, sha256: hex::encode(Sha256::digest(&first)) };
            self.put(name, first.freeze()).await?;
            return Ok(stored);
        }
        let created = self
            .client()
            .await
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3("CreateMultipartUpload", &key, e))?;
        let upload_id = created
            .upload_id
            .ok_or_else(|| s3_plain("CreateMultipartUpload", &key, "no upload id in the answer"))?;
        // Journaled first: a process killed mid-upload leaves the marker, and the next job
        // aborts the upload (not every S3-compatible store lists multipart uploads).
        let open = OpenUpload { key: key.clone(), upload_id: upload_id.clone() };
        let marker = open.marker();
        let result = match self
            .put(&marker, Bytes::from(serde_json::to_vec(&open).unwrap_or_default()))
            .await
        {
            Ok(()) => self.upload_parts(&key, &upload_id, first, &mut src).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Best effort: a lifecycle rule cleans up what an unreachable store keeps.
            let _ = self.abort(&open).await;
        }
        if let Err(e) = self.delete(&marker).await {
            tracing::warn!(error = %e, "could not remove an upload's journal marker; the next job does");
        }
        result
    }

    async fn abort(&self, open: &OpenUpload) -> Result<(), StoreError> {
        match self
            .client()
            .await
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&open.key)
            .upload_id(&open.upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_upload()) => Ok(()),
            Err(e) => Err(s3("AbortMultipartUpload", &open.key, e)),
        }
    }

    /// Aborts the multipart uploads a killed run left open (journaled in
    /// `journal/uploads/`); returns how many. Call only while no upload of this prefix runs.
    pub async fn abort_orphaned_uploads(&self) -> Result<usize, StoreError> {
        let dir = format!("{JOURNAL_DIR}/uploads");
        let mut aborted = 0;
        for marker in self.list_objects(&dir).await? {
            let Some(body) = self.get_small(&marker, 64 << 10).await? else { continue };
            match serde_json::from_slice::<OpenUpload>(&body) {
                Ok(open) => {
                    self.abort(&open).await?;
                    tracing::info!(key = %open.key, "aborted a multipart upload a killed run left open");
                    aborted += 1;
                }
                Err(e) => {
                    tracing::warn!(marker, error = %e, "removing an unreadable upload marker")
                }
            }
            self.delete(&marker).await?;
        }
        Ok(aborted)
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        first: BytesMut,
        src: &mut (impl AsyncRead + Unpin),
    ) -> Result<Stored, StoreError> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut parts: Vec<CompletedPart> = vec![];
        let mut in_flight: JoinSet<Result<CompletedPart, StoreError>> = JoinSet::new();
        let mut part = first;
        let mut number = 1;
        // Where the upload's time went, for the benchmark's breakdown (debug log): filling
        // parts from the source, and waiting for parts in flight.
        let (mut filling, mut waiting) = (Duration::ZERO, Duration::ZERO);
        loop {
            if number > MAX_PARTS {
                return Err(StoreError::TooLarge { key: key.to_owned() });
            }
            hasher.update(&part);
            size += part.len() as u64;
            let request = self
                .client()
                .await
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .set_content_md5(self.content_md5(&part).await)
                .body(ByteStream::from(part.freeze()));
            let key_owned = key.to_owned();
            in_flight.spawn(async move {
                let answer = request.send().await.map_err(|e| s3("UploadPart", &key_owned, e))?;
                Ok(CompletedPart::builder().set_e_tag(answer.e_tag).part_number(number).build())
            });
            // PARTS_IN_FLIGHT stay in flight while the next part fills: wait for one to
            // finish when there are more.
            let started = std::time::Instant::now();
            while in_flight.len() > PARTS_IN_FLIGHT {
                parts.push(join_one(&mut in_flight, key).await?);
                steward_failpoints::failpoint!("backup:part");
            }
            waiting += started.elapsed();
            number += 1;
            let started = std::time::Instant::now();
            part = read_part(src, part_size(number), key).await?;
            filling += started.elapsed();
            if part.is_empty() {
                break;
            }
        }
        let started = std::time::Instant::now();
        while !in_flight.is_empty() {
            parts.push(join_one(&mut in_flight, key).await?);
            steward_failpoints::failpoint!("backup:part");
        }
        waiting += started.elapsed();
        tracing::debug!(
            key,
            parts = parts.len(),
            filling_s = filling.as_secs_f64(),
            waiting_s = waiting.as_secs_f64(),
            "parts uploaded"
        );
        parts.sort_by_key(|p| p.part_number);
        steward_failpoints::failpoint!("backup:completing");
        self.client()
            .await
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| s3("CompleteMultipartUpload", key, e))?;
        Ok(Stored { size, sha256: hex::encode(hasher.finalize()) })
    }

    /// Stores a small object in one request.
    pub async fn put(&self, name: &str, body: Bytes) -> Result<(), StoreError> {
        let key = self.key(name);
        self.client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_content_md5(self.content_md5(&body).await)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3("PutObject", &key, e))?;
        Ok(())
    }

    /// Reads an object as a stream; `Ok(None)` if it does not exist.
    pub async fn get(
        &self,
        name: &str,
    ) -> Result<Option<impl AsyncBufRead + Send + Unpin + 'static>, StoreError> {
        Ok(self.get_pinned(name, None).await?.map(|(body, _)| body))
    }

    /// Reads an object as a stream with its ETag; `Ok(None)` if it does not exist. With
    /// `if_match`, only the object whose ETag that is: one replaced since (the ETag of a
    /// restore's checked read) is [`StoreError::Changed`], not read.
    pub async fn get_pinned(
        &self,
        name: &str,
        if_match: Option<&str>,
    ) -> Result<Option<(impl AsyncBufRead + Send + Unpin + 'static, Option<String>)>, StoreError>
    {
        let key = self.key(name);
        let request = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_if_match(if_match.map(str::to_owned));
        match request.send().await {
            // Some S3-compatible servers ignore If-Match: the ETag answered is compared too.
            Ok(o) if if_match.is_some_and(|pin| o.e_tag.as_deref() != Some(pin)) => {
                Err(StoreError::Changed { key })
            }
            Ok(o) => Ok(Some((o.body.into_async_read(), o.e_tag))),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                Err(StoreError::Changed { key })
            }
            Err(e) => Err(s3("GetObject", &key, e)),
        }
    }

    /// Reads a small object whole; `Ok(None)` if it does not exist.
    pub async fn get_small(&self, name: &str, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(body) = self.get(name).await? else { return Ok(None) };
        let mut out = vec![];
        body.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| s3_plain("GetObject", &self.key(name), e))?;
        if out.len() > limit {
            return Err(s3_plain(
                "GetObject",
                &self.key(name),
                format!("larger than {limit} bytes"),
            ));
        }
        Ok(Some(out))
    }

    /// The "directories" directly under the prefix (backup ids), sorted.
    pub async fn list_dirs(&self) -> Result<Vec<String>, StoreError> {
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&self.prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        let mut out = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3("ListObjectsV2", &self.prefix, e))?;
            for p in page.common_prefixes.unwrap_or_default() {
                if let Some(dir) = p.prefix.as_deref().and_then(|p| p.strip_prefix(&self.prefix)) {
                    out.push(dir.trim_end_matches('/').to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The names (relative to the prefix) of every object under `dir/`.
    pub async fn list_objects(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let keys = self.keys_under(&self.key(&format!("{dir}/"))).await?;
        Ok(keys.iter().filter_map(|k| k.strip_prefix(&self.prefix)).map(str::to_owned).collect())
    }

    /// The names (relative to the prefix) and sizes (when the server gives them) of every
    /// object under `dir/`.
    pub async fn list_sized(&self, dir: &str) -> Result<Vec<(String, Option<u64>)>, StoreError> {
        let objects = self.objects_under(&self.key(&format!("{dir}/"))).await?;
        let relative = |(k, size): (String, Option<u64>)| {
            k.strip_prefix(&self.prefix).map(|name| (name.to_owned(), size))
        };
        Ok(objects.into_iter().filter_map(relative).collect())
    }

    /// The full keys of every object whose key starts with `prefix`.
    async fn keys_under(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.objects_under(prefix).await?.into_iter().map(|(k, _)| k).collect())
    }

    /// The full keys and sizes of every object whose key starts with `prefix` (a size the
    /// server leaves out, or gives as negative, is none).
    async fn objects_under(&self, prefix: &str) -> Result<Vec<(String, Option<u64>)>, StoreError> {
        let mut pages = self
            .client()
            .await
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut out = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3("ListObjectsV2", prefix, e))?;
            out.extend(page.contents.unwrap_or_default().into_iter().filter_map(|o| {
                let size = o.size.and_then(|s| u64::try_from(s).ok());
                o.key.map(|k| (k, size))
            }));
        }
        Ok(out)
    }

    /// Creates the bucket (tests and first runs against a fresh S3-compatible store; on AWS
    /// the bucket is provisioned with its policies by Terraform).
    pub async fn create_bucket(&self) -> Result<(), StoreError> {
        match self.client().await.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|e| {
                    e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(s3("CreateBucket", &self.bucket, e)),
        }
    }

    /// Deletes every object under the prefix and, with an empty prefix, the bucket.
    pub async fn destroy(&self) -> Result<(), StoreError> {
        let keys = self.keys_under(&self.prefix).await?;
        self.delete_keys(&keys, &self.prefix).await?;
        if self.prefix.is_empty() {
            self.client()
                .await
                .delete_bucket()
                .bucket(&self.bucket)
                .send()
                .await
                .map_err(|e| s3("DeleteBucket", &self.bucket, e))?;
        }
        Ok(())
    }

    /// The Content-MD5 header of `body` where the bucket needs one: S3 refuses an upload
    /// into a bucket with Object Lock (whose default retention locks it) without it. Other
    /// buckets are not made to pay for the hash.
    async fn content_md5(&self, body: &[u8]) -> Option<String> {
        use base64::Engine as _;
        use md5::Digest as _;
        let locked = *self.object_lock.get_or_init(|| self.has_object_lock()).await;
        locked.then(|| base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body)))
    }

    /// Whether the bucket has Object Lock enabled. A store that does not know the call (an
    /// S3-compatible server without Object Lock) or answers anything else has none, and an
    /// upload S3 then refuses names the missing header.
    async fn has_object_lock(&self) -> bool {
        let answer =
            self.client().await.get_object_lock_configuration().bucket(&self.bucket).send().await;
        let enabled = answer
            .ok()
            .and_then(|a| a.object_lock_configuration)
            .and_then(|c| c.object_lock_enabled);
        enabled.is_some_and(|e| e.as_str() == "Enabled")
    }

    /// Until when S3 Object Lock keeps object `name` from being deleted: its retention date,
    /// or [`LOCKED_FOR_GOOD`] under a legal hold; `None` when it is not locked (or the store
    /// has no Object Lock, or the object is gone). Retention asks before deleting a backup:
    /// in a locked bucket a delete only hides the object behind a delete marker, so a
    /// "pruned" backup would still be stored, and unlisted.
    pub async fn locked_until(&self, name: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let key = self.key(name);
        let head =
            match self.client().await.head_object().bucket(&self.bucket).key(&key).send().await {
                Ok(head) => head,
                Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {
                    return Ok(None)
                }
                Err(e) => return Err(s3("HeadObject", &key, e)),
            };
        if head.object_lock_legal_hold_status.as_ref().map(|s| s.as_str()) == Some("ON") {
            return Ok(Some(LOCKED_FOR_GOOD));
        }
        Ok(head
            .object_lock_retain_until_date
            .and_then(|d| OffsetDateTime::from_unix_timestamp(d.secs()).ok()))
    }

    /// Deletes one object (absent is fine).
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let key = self.key(name);
        self.client()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| s3("DeleteObject", &key, e))?;
        Ok(())
    }

    /// Deletes every object under `dir/`.
    pub async fn delete_dir(&self, dir: &str) -> Result<(), StoreError> {
        let keys = self.keys_under(&self.key(&format!("{dir}/"))).await?;
        self.delete_keys(&keys, dir).await
    }

    /// Deletes objects by full key, a thousand per request.
    async fn delete_keys(&self, keys: &[String], what: &str) -> Result<(), StoreError> {
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| s3("DeleteObjects", what, e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| s3("DeleteObjects", what, e))?;
            let answer = self
                .client()
                .await
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3("DeleteObjects", what, e))?;
            if let Some(error) = answer.errors.unwrap_or_default().first() {
                return Err(s3_plain(
                    "DeleteObjects",
                    error.key.as_deref().unwrap_or(what),
                    error.message.clone().unwrap_or_else(|| "refused".into()),
                ));
            }
        }
        Ok(())
    }
}

fn s3_plain(op: &'static str, key: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::S3 { op, key: key.to_owned(), reason: reason.to_string() }
}

async fn join_one(
    set: &mut JoinSet<Result<CompletedPart, StoreError>>,
    key: &str,
) -> Result<CompletedPart, StoreError> {
    match set.join_next().await {
        Some(Ok(part)) => part,
        Some(Err(e)) => Err(s3_plain("UploadPart", key, e)),
        None => Err(s3_plain("UploadPart", key, "no part in flight")),
    }
}

/// Reads until `size` bytes or the end of the stream.
async fn read_part(
    src: &mut (impl AsyncRead + Unpin),
    size: usize,
    key: &str,
) -> Result<BytesMut, StoreError> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let n = src
            .read_buf(&mut buf)
            .await
            .map_err(|source| StoreError::Source { key: key.to_owned(), source })?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_and_ten_thousand_hold_terabytes() {
        assert_eq!(part_size(1), 5 << 20);
        assert_eq!(part_size(1000), 5 << 20);
        assert_eq!(part_size(1001), 10 << 20);
        let total: u128 = (1..=MAX_PARTS).map(|n| part_size(n) as u128).sum();
        assert!(total > 4 << 40, "10,000 parts hold only {total} bytes");
        assert!((1..=MAX_PARTS).all(|n| part_size(n) >= 5 << 20 && part_size(n) <= MAX_PART));
    }
}
