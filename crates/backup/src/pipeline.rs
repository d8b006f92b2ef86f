//! The byte pipeline: engine stream → count and hash → zstd → age (when recipients are
//! configured) → S3, and back: S3 → hash → age → unzstd → hash → consumer, with the
//! checksums compared when the stream ends.
//!
//! Invariant: a component read back yields an `Err` item, never a clean end, when its bytes
//! do not match the manifest, so no consumer can mistake a corrupted or truncated object for
//! a good one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use async_compression::zstd::CParameter;
use async_compression::Level;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use steward_store::manifest::{Component, Kind};
use steward_store::store::{Store, StoreError, Stored};
use tokio::io::{AsyncRead, AsyncReadExt as _, BufReader, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::chunks;
use crate::encryption::{self, Keys};
use crate::progress::Meter;
use crate::tarcheck;

/// Bytes of input per zstd worker job. zstd's input ring holds the window (2 MiB at level 3)
/// or a job per worker, whichever is more, plus three jobs of slack; output buffers hold a
/// job each. 1 MiB jobs halve that against 2 MiB (two components compress at once).
const JOB_SIZE: u32 = 1 << 20;

/// Read size when decompressing.
const CHUNK: usize = 256 << 10;

/// What every byte path needs: where, how to seal, and what to report.
#[derive(Debug, Clone, Copy)]
pub struct Io<'a> {
    /// The bucket.
    pub store: &'a Store,
    /// Encryption keys.
    pub keys: &'a Keys,
    /// Raw bytes passed are added here.
    pub meter: &'a Arc<Meter>,
}

/// Size, SHA-256 and first bytes of what passed.
#[derive(Debug, Default)]
pub struct Tally {
    hasher: Sha256,
    size: u64,
    head: Vec<u8>,
}

impl Tally {
    fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        if self.head.len() < 16 {
            let take = (16 - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
        }
    }
}

/// A tally shared between the stream that feeds it and whoever reads the result, and
/// optionally a job's [`Meter`].
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<Mutex<Tally>>, Option<Arc<Meter>>);

/// What a [`Counter`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Bytes.
    pub size: u64,
    /// Hex SHA-256.
    pub sha256: String,
    /// The first up to 16 bytes (to recognise a format).
    pub head: Vec<u8>,
}

impl Counter {
    /// A counter that also adds to `meter`.
    pub fn metered(meter: &Arc<Meter>) -> Self {
        Self(Arc::default(), Some(meter.clone()))
    }

    pub(crate) fn update(&self, bytes: &[u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).update(bytes);
        if let Some(meter) = &self.1 {
            meter.add(bytes.len() as u64);
        }
    }

    /// The result so far.
    pub fn result(&self) -> Counted {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Counted {
            size: t.size,
            sha256: hex::encode(t.hasher.clone().finalize()),
            head: t.head.clone(),
        }
    }

    /// Counts a stream as it passes.
    pub fn count<S>(&self, stream: S) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let counter = self.clone();
        stream.inspect(move |item| {
            if let Ok(bytes) = item {
                counter.update(bytes);
            }
        })
    }

    /// Counts what is read through `inner`.
    pub fn reader<R: AsyncRead + Unpin>(&self, inner: R) -> CountingReader<R> {
        CountingReader { inner, counter: self.clone() }
    }
}

/// An [`AsyncRead`] that counts what passes.
#[derive(Debug)]
pub struct CountingReader<R> {
    inner: R,
    counter: Counter,
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            self.counter.update(new);
        }
        polled
    }
}

/// Compresses a stream with zstd on all cores.
pub fn compress<S>(stream: S, level: i32) -> impl AsyncRead + Send + Unpin
where
    S: Stream<Item = io::Result<Bytes>> + Send + Unpin,
{
    let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    ZstdEncoder::with_quality_and_params(
        StreamReader::new(stream),
        Level::Precise(level),
        // zstd's default job is 4 windows (8 MiB at level 3) per worker, in and out: smaller
        // jobs keep the service's memory flat at a negligible cost in ratio.
        &[CParameter::nb_workers(workers), CParameter::job_size(JOB_SIZE)],
    )
}

/// Compresses (and with recipients, encrypts) `stream` into object `name`: returns what
/// was stored and what went in. The component's encoding is [`Keys::encoding`].
pub async fn store_stream<S>(
    io: Io<'_>,
    name: &str,
    stream: S,
    level: i32,
) -> Result<(Stored, Counted), StoreError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let Io { store, keys, meter } = io;
    let raw = Counter::metered(meter);
    let counted = Box::pin(raw.count(stream));
    let sealed = keys
        .seal(compress(counted, level))
        .map_err(|source| StoreError::Source { key: store.key(name), source })?;
    let stored = store.upload(name, sealed).await?;
    Ok((stored, raw.result()))
}

/// A component's original bytes read back from the store. The stream ends with an `Err` if
/// the stored or the decompressed bytes do not match the manifest.
pub async fn read_component(
    io: Io<'_>,
    component: &Component,
) -> Result<BoxStream<'static, io::Result<Bytes>>, StoreError> {
    Ok(read_component_pinned(io, component, None).await?.0)
}

/// [`read_component`], with the object's ETag; with `pin`, only the object of that ETag
/// ([`StoreError::Changed`] if it was replaced since).
pub async fn read_component_pinned(
    io: Io<'_>,
    component: &Component,
    pin: Option<&str>,
) -> Result<(BoxStream<'static, io::Result<Bytes>>, Option<String>), StoreError> {
    let Io { store, keys, meter } = io;
    meter.item(&component.name);
    let unreadable = |reason: String| StoreError::Unreadable {
        key: store.key(&component.object),
        reason: format!("{}: {reason}", component.name),
    };
    refuse_plain(io, component)?;
    let stored = Counter::default();
    let raw = Counter::metered(meter);
    let (decoded, etag) = if chunks::is_chunked(&component.encoding) {
        chunks::read_chunked(io, component, pin, &stored).await?
    } else {
        let (body, etag) = get_component(store, component, pin).await?;
        // One byte more than signed is enough to tell a larger object from the right one.
        let body = body.take(component.stored_size.saturating_add(1));
        let body = BufReader::new(stored.reader(body));
        let compressed: Pin<Box<dyn AsyncRead + Send + Unpin>> = match component.encoding.as_str() {
            encryption::ZSTD => Box::pin(body),
            encryption::ZSTD_AGE => Box::pin(keys.decrypting(body).await.map_err(unreadable)?),
            other => return Err(unreadable(format!("unknown encoding {other:?}"))),
        };
        let decoded = ZstdDecoder::new(BufReader::new(compressed));
        (ReaderStream::with_capacity(decoded, CHUNK).boxed(), etag)
    };
    let decoded = capped(decoded, component);
    let bytes = raw.count(decoded);
    let expected = component.clone();
    let check =
        futures::stream::once(async move { mismatch(&expected, &stored.result(), &raw.result()) })
            .filter_map(|m| async move {
                m.map(|reason| Err(io::Error::new(io::ErrorKind::InvalidData, reason)))
            });
    let checked = bytes.chain(check);
    let stream = match &component.kind {
        Kind::Path { path, .. } => tarcheck::guarded(checked, path, &component.name),
        Kind::PostgresBase { data_dir, .. } => {
            tarcheck::guarded_contents(checked, data_dir, &component.name)
        }
        // Never unpacked onto a host by Steward: handed to the operator as they are.
        Kind::Postgres { .. }
        | Kind::Containers
        | Kind::Events
        | Kind::Project { .. }
        | Kind::Wal { .. } => checked.boxed(),
    };
    Ok((stream, etag))
}

/// Defence in depth behind the signature: with an identity configured this installation's
/// backups are encrypted, so a plain component is not one of them.
pub(crate) fn refuse_plain(io: Io<'_>, component: &Component) -> Result<(), StoreError> {
    let plain = component.encoding == encryption::ZSTD || component.encoding == chunks::CDC_ZSTD;
    if plain && io.keys.reads_encrypted() {
        return Err(StoreError::Unreadable {
            key: io.store.key(&component.object),
            reason: format!(
                "{}: refused: it is not encrypted, but an age identity is configured ({})",
                component.name,
                encryption::ENV_AGE_IDENTITY_FILE
            ),
        });
    }
    Ok(())
}

/// The object of `component` with its ETag (pinned to `pin`); a missing one is an error.
pub(crate) async fn get_component(
    store: &Store,
    component: &Component,
    pin: Option<&str>,
) -> Result<(impl tokio::io::AsyncBufRead + Send + Unpin + 'static, Option<String>), StoreError> {
    store.get_pinned(&component.object, pin).await?.ok_or_else(|| StoreError::S3 {
        op: "GetObject",
        key: store.key(&component.object),
        reason: "the object is missing".into(),
    })
}

/// `stream`, ended with an error as soon as it yields more than the component's signed raw
/// size: a small object that unpacks to far more (a zstd bomb) stops there.
fn capped<S>(stream: S, component: &Component) -> impl Stream<Item = io::Result<Bytes>> + Send
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    let limit = component.raw_size;
    let name = component.name.clone();
    stream.scan((0u64, false), move |(seen, over), item| {
        if *over {
            return futures::future::ready(None);
        }
        let item = match item {
            Ok(bytes) => match seen.checked_add(bytes.len() as u64) {
                Some(total) if total <= limit => {
                    *seen = total;
                    Ok(bytes)
                }
                _ => {
                    *over = true;
                    Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{name}: refused: it unpacks to more than the {limit} bytes its manifest says"),
                    ))
                }
            },
            Err(e) => Err(e),
        };
        futures::future::ready(Some(item))
    })
}

/// Why the bytes read do not match the manifest, if they do not.
fn mismatch(expected: &Component, stored: &Counted, raw: &Counted) -> Option<String> {
    if stored.size != expected.stored_size || stored.sha256 != expected.stored_sha256 {
        Some(format!(
            "{}: the stored object ({} bytes, SHA-256 {}) does not match the manifest ({} bytes, SHA-256 {})",
            expected.name, stored.size, stored.sha256, expected.stored_size, expected.stored_sha256
        ))
    } else if raw.size != expected.raw_size || raw.sha256 != expected.raw_sha256 {
        Some(format!(
            "{}: the unpacked data ({} bytes) does not match the manifest ({} bytes)",
            expected.name, raw.size, expected.raw_size
        ))
    } else {
        None
    }
}

/// Reads a component to the end, checking it; returns the error that stopped it.
pub async fn check_component(io: Io<'_>, component: &Component) -> Result<(), String> {
    check_component_pinned(io, component).await.map(|_| ())
}

/// [`check_component`], returning the ETag of the object checked (to pin a later read to
/// exactly these bytes).
pub async fn check_component_pinned(
    io: Io<'_>,
    component: &Component,
) -> Result<Option<String>, String> {
    let (mut stream, etag) =
        read_component_pinned(io, component, None).await.map_err(|e| e.to_string())?;
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            return Err(
                if e.kind() == io::ErrorKind::InvalidData && e.to_string().contains(&component.name)
                {
                    e.to_string()
                } else {
                    format!("{}: {e}", component.name)
                },
            );
        }
    }
    Ok(etag)
}
