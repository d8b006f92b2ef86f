//! The byte pipeline: engine stream → count and hash → zstd → age (when recipients are
//! configured) → S3, and back: S3 → hash → age → unzstd → hash → consumer, with the
//! checksums compared when the stream ends.
//!
//! Invariant: a component read back yields an `Err` item, never a clean end, when its bytes
//! do not match the manifest, so no consumer can mistake a corrupted or truncated object for
//! a good one.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::tokio::bufread::ZstdDecoder;
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
    /// Sizes only: the stream's SHA-256 is checked another way (a chunk list's digests).
    unhashed: bool,
}

impl Tally {
    fn update(&mut self, bytes: &[u8]) {
        if !self.unhashed {
            self.hasher.update(bytes);
        }
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

    /// [`Counter::metered`] that does not hash: its `sha256` is of nothing.
    pub fn metered_unhashed(meter: &Arc<Meter>) -> Self {
        let tally = Tally { unhashed: true, ..Tally::default() };
        Self(Arc::new(Mutex::new(tally)), Some(meter.clone()))
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

/// Compressed bytes waiting for the uploader (each up to zstd's output block, ~128 KiB).
const COMPRESSED_IN_FLIGHT: usize = 8;

/// What the compressing thread hands on: bytes, then `End` once the zstd frame is complete.
enum Compressed {
    Bytes(Bytes),
    End,
}

/// Compresses a stream with zstd on all cores, on a blocking thread of its own that pulls the
/// stream (and so runs whatever counting is chained on it) and writes into zstd's streaming
/// encoder, which never flushes before the end.
///
/// Why not `async_compression`'s encoder: it flushes zstd whenever its input is not ready
/// (every time the engine's archive stream has nothing buffered), and a flush with worker
/// threads ends the current job early and waits for every job, on a runtime worker. Reading
/// and compressing then took turns instead of overlapping, the output grew by a third on the
/// 4 GiB bench set (tiny jobs lose the window), and a 4 GiB backup took 1.6x the shell
/// pipeline's time with CPUs idle (issue 25).
///
/// The reader yields an error, never a clean end, unless the frame was finished: a
/// compressor that failed or panicked cannot pass for a short, complete object.
pub fn compress<S>(stream: S, level: i32) -> impl AsyncRead + Send + Unpin
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Compressed>>(COMPRESSED_IN_FLIGHT);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let failed = tx.clone();
        if let Err(e) = compress_blocking(&runtime, stream, level, workers, Channel(tx)) {
            // The reader may be gone already (the upload failed): nothing to tell then.
            let _ = failed.blocking_send(Err(e));
        }
    });
    let compressed = futures::stream::unfold((rx, false), |(mut rx, ended)| async move {
        if ended {
            return None;
        }
        match rx.recv().await {
            Some(Ok(Compressed::Bytes(b))) => Some((Ok(b), (rx, false))),
            Some(Ok(Compressed::End)) => None,
            Some(Err(e)) => Some((Err(e), (rx, true))),
            None => Some((
                Err(io::Error::other("the compressor stopped before the end of its stream")),
                (rx, true),
            )),
        }
    });
    StreamReader::new(Box::pin(compressed))
}

/// The compressing thread's work: `stream` through zstd into `out`, then `End`.
fn compress_blocking<S>(
    runtime: &tokio::runtime::Handle,
    stream: S,
    level: i32,
    workers: u32,
    out: Channel,
) -> io::Result<()>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let mut stream = Box::pin(stream);
    let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
    encoder.multithread(workers)?;
    // zstd's default job is 4 windows (8 MiB at level 3) per worker, in and out: smaller
    // jobs keep the service's memory flat at a negligible cost in ratio.
    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(JOB_SIZE))?;
    while let Some(bytes) = runtime.block_on(stream.next()) {
        encoder.write_all(&bytes?)?;
    }
    let out = encoder.finish()?;
    out.0.blocking_send(Ok(Compressed::End)).map_err(|_| gone())
}

/// zstd's output, sent on to the reader.
struct Channel(tokio::sync::mpsc::Sender<io::Result<Compressed>>);

impl io::Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !buf.is_empty() {
            let bytes = Compressed::Bytes(Bytes::copy_from_slice(buf));
            self.0.blocking_send(Ok(bytes)).map_err(|_| gone())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the compressed stream's reader is gone")
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
    // A chunk list's digest is checked as its chunks are read (`chunks::read_chunked`).
    let raw = if chunks::hashes_chunks(&component.encoding) {
        Counter::metered_unhashed(meter)
    } else {
        Counter::metered(meter)
    };
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
    let plain = component.encoding == encryption::ZSTD
        || (chunks::is_chunked(&component.encoding) && !chunks::is_sealed(&component.encoding));
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
    } else if raw.size != expected.raw_size
        // A chunk list's digest is checked as its chunks are read (`chunks::read_chunked`).
        || (raw.sha256 != expected.raw_sha256 && !chunks::hashes_chunks(&expected.encoding))
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Text that compresses well only with what came before in the window: the same 64 KiB
    /// block of random hex again and again.
    fn repeated_text(total: usize) -> Vec<u8> {
        let block: Vec<u8> = (0..32 << 10)
            .flat_map(|i: u32| {
                let h = i.wrapping_mul(2_654_435_761).to_le_bytes();
                hex::encode(&h[..1]).into_bytes()
            })
            .collect();
        block.iter().copied().cycle().take(total).collect()
    }

    /// `data` as 32 KiB items, each after a moment with nothing ready (the engine's archive
    /// stream on a busy host).
    fn trickle(data: &[u8]) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let items: Vec<io::Result<Bytes>> =
            data.chunks(32 << 10).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(items).then(|item| async move {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            item
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_with_pauses_compresses_as_well_as_one_read_whole_and_round_trips() {
        let data = repeated_text(8 << 20);
        let mut out = vec![];
        compress(trickle(&data), 3).read_to_end(&mut out).await.expect("compress");
        assert_eq!(zstd::stream::decode_all(out.as_slice()).expect("decode"), data);
        let whole = zstd::bulk::compress(&data, 3).expect("bulk");
        // async_compression's encoder flushed zstd at every pause, cutting a job each time:
        // 3,359 bytes here against 1,059 read whole (1,058 now).
        assert!(
            out.len() <= whole.len() * 3 / 2,
            "{} bytes compressed against {} read whole",
            out.len(),
            whole.len()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_input_is_an_error_at_the_end_never_a_short_clean_stream() {
        let data = repeated_text(1 << 20);
        let failing = trickle(&data)
            .chain(futures::stream::iter([Err(io::Error::other("the engine's stream broke"))]));
        let mut out = vec![];
        let e = compress(failing, 3).read_to_end(&mut out).await.expect_err("an error");
        assert!(e.to_string().contains("the engine's stream broke"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_compressor_that_dies_is_an_error_not_an_end() {
        let data = repeated_text(1 << 20);
        let panicking = trickle(&data).chain(futures::stream::once(async {
            panic!("the compressing thread dies");
            #[allow(unreachable_code)]
            Ok(Bytes::new())
        }));
        let mut out = vec![];
        let e = compress(panicking, 3).read_to_end(&mut out).await.expect_err("an error");
        assert!(e.to_string().contains("stopped before the end"), "{e}");
    }
}
