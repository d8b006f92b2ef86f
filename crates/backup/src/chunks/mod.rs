//! Incremental path backups (`STEWARD_BACKUP_INCREMENTAL`): a path's tar stream, as the
//! Docker archive API gives it, is cut into content-defined chunks (FastCDC 2020: min 256 KiB,
//! average 1 MiB, max 4 MiB); each chunk is compressed with zstd, sealed with age when
//! recipients are configured, and stored once under `chunks/` ([`steward_store::chunks`]). The
//! component's object is its index: the ordered chunk list, whose size and SHA-256 the signed
//! manifest holds, and whose raw size and SHA-256 are those of the whole tar stream.
//!
//! A chunk's id is HMAC-SHA256 of its plaintext, keyed by a secret derived from the signing
//! key and the recipients when encrypting (so ids reveal no plaintext hash), SHA-256 of its
//! plaintext otherwise. A chunk whose id a usable (signed) backup's index lists is not
//! uploaded again: the new index names the same object.
//!
//! Invariants: a path is streamed, never held (at most [`PARALLEL`] chunks in flight when
//! stored, and a splice's within [`splice::IN_FLIGHT`] bytes; [`READ_AHEAD`]'s chunks and
//! bytes when read); an index is used only after its bytes matched the signed manifest; every
//! chunk read is checked against its size
//! and SHA-256 in that index before any of its plaintext is handed on (it is opened and
//! unpacked as its bytes arrive, straight into a buffer of its indexed size), and against its
//! plaintext size after; the whole stream is then checked by the pipeline against the manifest's raw
//! SHA-256, as every component is, so a restore refuses before it touches anything. A
//! backup records in the signed manifest whether every tar entry passed the restore's rules
//! (`Component::entries_checked`); for such a component a restore's check before the stop
//! proves the stored bytes only ([`check_stored`]), and the load checks everything again.

pub mod gc;
use steward_engine::listing::{self, Listing};
pub mod splice;
pub mod tree;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fastcdc::v2020::{AsyncStreamCDC, Normalization};
use futures::stream::BoxStream;
use futures::{FutureExt as _, Stream, StreamExt, TryStreamExt};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use steward_store::chunks::{sha256_of_object, Entry, Hash, Index};
use steward_store::manifest::{Component, Manifest};
use steward_store::signing::SigningKey;
use steward_store::store::{Store, StoreError, Stored};
use tokio_util::io::StreamReader;
use tree::Tree;

use crate::encryption::Keys;
use crate::pipeline::{Counted, Counter, Io};

/// The encoding of a chunked component whose chunks are compressed.
pub const CDC_ZSTD: &str = "cdc+zstd";
/// The encoding of a chunked component whose chunks are compressed and then encrypted.
pub const CDC_ZSTD_AGE: &str = "cdc+zstd+age";
/// [`CDC_ZSTD`] whose raw SHA-256 is that of its chunks' plaintext SHA-256s in order
/// ([`chunk_list_digest`]), so a backup that takes unchanged chunks unread can state it; with
/// a tree ([`tree`]).
pub const CDC2_ZSTD: &str = "cdc2+zstd";
/// [`CDC_ZSTD_AGE`], its raw SHA-256 as [`CDC2_ZSTD`]'s.
pub const CDC2_ZSTD_AGE: &str = "cdc2+zstd+age";

/// Chunk sizes: restic's are 512 KiB to 8 MiB; smaller keeps a 1 % change of small files
/// small, larger keeps the index and the request count small.
pub const MIN_CHUNK: u32 = 256 << 10;
/// Average chunk size.
pub const AVG_CHUNK: u32 = 1 << 20;
/// Largest chunk.
pub const MAX_CHUNK: u32 = 4 << 20;
/// Chunks compressed, sealed and transferred at once (memory: about 2 × [`MAX_CHUNK`] each).
pub const PARALLEL: usize = 4;
/// A chunk's zstd frame needs a window of at most this (log2): the largest chunk.
const WINDOW_LOG_MAX: u32 = MAX_CHUNK.ilog2();
/// An index is at most this long unpacked (4 TiB of path at 1 MiB average).
const MAX_INDEX_RAW: u64 = 1 << 30;

/// How every path backup cuts its stream: FastCDC 2020 at [`MIN_CHUNK`], [`AVG_CHUNK`] and
/// [`MAX_CHUNK`], normalization level 1, the gear table seeded by `seed` (derived from the
/// key, so the cut points depend on it too; 0 without one).
pub fn cutter<R: tokio::io::AsyncRead + Unpin>(reader: R, seed: u64) -> AsyncStreamCDC<R> {
    AsyncStreamCDC::with_level_and_seed(
        reader,
        MIN_CHUNK,
        AVG_CHUNK,
        MAX_CHUNK,
        Normalization::Level1,
        seed,
    )
}

/// Whether `encoding` is a chunked component's.
pub fn is_chunked(encoding: &str) -> bool {
    [CDC_ZSTD, CDC_ZSTD_AGE, CDC2_ZSTD, CDC2_ZSTD_AGE].contains(&encoding)
}

/// Whether a chunked component's chunks are sealed.
pub fn is_sealed(encoding: &str) -> bool {
    encoding == CDC_ZSTD_AGE || encoding == CDC2_ZSTD_AGE
}

/// Whether a chunked component's raw SHA-256 is [`chunk_list_digest`]'s.
pub fn hashes_chunks(encoding: &str) -> bool {
    encoding == CDC2_ZSTD || encoding == CDC2_ZSTD_AGE
}

/// SHA-256 (hex) of the chunks' plaintext SHA-256s, in order.
pub fn chunk_list_digest<'a>(digests: impl IntoIterator<Item = &'a [u8; 32]>) -> String {
    let mut h = Sha256::new();
    digests.into_iter().for_each(|d| h.update(d));
    hex::encode(h.finalize())
}

/// How this installation cuts and names chunks.
#[derive(Clone)]
pub struct Chunker {
    /// The id key; `None`: ids are plain SHA-256 (nothing is encrypted anyway).
    key: Option<[u8; 32]>,
    /// [`Index::scheme`].
    scheme: String,
    /// Seeds FastCDC's gear table, so cut points depend on the key too.
    seed: u64,
}

impl std::fmt::Debug for Chunker {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("scheme", &self.scheme).finish()
    }
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

impl Chunker {
    /// The chunker of backups signed by `signing` and sealed with `keys`.
    pub fn new(signing: &SigningKey, keys: &Keys) -> Self {
        if !keys.encrypts() {
            return Self { key: None, scheme: "sha256".into(), seed: 0 };
        }
        let mut context = b"steward chunk id v1\n".to_vec();
        context.extend_from_slice(keys.recipients_text().as_bytes());
        let key = signing.derive(&context);
        let key_id = hex::encode(&hmac(&key, b"key id")[..8]);
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&hmac(&key, b"gear seed")[..8]);
        Self {
            key: Some(key),
            scheme: format!("hmac-sha256:{key_id}"),
            seed: u64::from_le_bytes(seed),
        }
    }

    /// The id of a chunk's plaintext.
    pub fn id(&self, plain: &[u8]) -> Hash {
        self.id_with(plain, &Sha256::digest(plain).into())
    }

    /// [`Chunker::id`] of `plain`, whose SHA-256 is `digest` (the id itself without a key).
    fn id_with(&self, plain: &[u8], digest: &Hash) -> Hash {
        match &self.key {
            Some(key) => hmac(key, plain),
            None => *digest,
        }
    }

    /// [`Index::scheme`] of this chunker's ids.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }
}

/// Chunks already stored, by id: those of every usable backup's indexes of this chunker's
/// scheme, and those this backup stored.
#[derive(Debug, Default, Clone)]
pub struct Known(Arc<Mutex<HashMap<Hash, Entry>>>);

impl Known {
    fn get(&self, id: &Hash) -> Option<Entry> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied()
    }

    fn insert(&self, e: Entry) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(e.id, e);
    }

    /// Forgets every chunk `stored` does not hold.
    fn retain(&self, stored: impl Fn(&Entry) -> bool) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, e| stored(e));
    }

    /// How many chunks are known.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What storing one component uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uploaded {
    /// Chunks in the component.
    pub chunks: u64,
    /// Chunks uploaded (not known before).
    pub new_chunks: u64,
    /// Stored bytes uploaded, the index included.
    pub bytes: u64,
}

fn source(store: &Store, name: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Unreadable { key: store.key(name), reason: reason.to_string() }
}

/// Cuts `stream` into chunks, stores the ones `known` lacks and the index as object `index`;
/// returns the index as stored, the whole stream as it passed, what was uploaded and each
/// chunk's plaintext SHA-256.
pub async fn store_chunked<S>(
    io: Io<'_>,
    chunker: &Chunker,
    known: &Known,
    index: &str,
    stream: S,
    level: i32,
) -> Result<(Stored, Counted, Uploaded, Vec<[u8; 32]>), StoreError>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    let Io { store, keys, meter } = io;
    let raw = Counter::metered(meter);
    let reader = StreamReader::new(Box::pin(raw.count(stream)));
    let mut cdc = cutter(reader, chunker.seed);
    let (mut entries, mut digests) = (vec![], vec![]);
    let mut uploaded = Uploaded::default();
    {
        let chunks = cdc.as_stream().map_err(|e| source(store, index, e)).map_ok(|chunk| {
            let naming = chunker.clone();
            async move {
                // Named off the stream's task, so one chunk's id is hashed while the next
                // chunk is cut.
                let (id, digest, plain) = tokio::task::spawn_blocking(move || {
                    let digest: [u8; 32] = Sha256::digest(&chunk.data).into();
                    let id = naming.id_with(&chunk.data, &digest);
                    (id, digest, chunk.data)
                })
                .await
                .map_err(|e| source(store, index, e))?;
                match known.get(&id) {
                    Some(e) => Ok((e, 0, digest)),
                    None => put_chunk(store, keys, id, plain, level)
                        .await
                        .map(|(e, sent)| (e, sent, digest)),
                }
            }
        });
        let mut chunks = std::pin::pin!(chunks.try_buffered(PARALLEL));
        while let Some((entry, sent, digest)) = chunks.try_next().await? {
            uploaded.chunks += 1;
            if sent > 0 {
                uploaded.new_chunks += 1;
                uploaded.bytes += sent;
                known.insert(entry);
            }
            entries.push(entry);
            digests.push(digest);
        }
    }
    let stored = put_index(store, index, chunker, entries, level).await?;
    uploaded.bytes += stored.size;
    Ok((stored, raw.result(), uploaded, digests))
}

/// Stores the index of `entries` as object `index`.
async fn put_index(
    store: &Store,
    index: &str,
    chunker: &Chunker,
    entries: Vec<Entry>,
    level: i32,
) -> Result<Stored, StoreError> {
    let body = Index { scheme: chunker.scheme.clone(), entries }.to_bytes();
    let body = zstd::bulk::compress(&body, level).map_err(|e| source(store, index, e))?;
    let stored = Stored { size: body.len() as u64, sha256: hex::encode(Sha256::digest(&body)) };
    store.put(index, Bytes::from(body)).await?;
    Ok(stored)
}

/// Compresses and seals one chunk off the async threads, and stores it under its hash.
async fn put_chunk(
    store: &Store,
    keys: &Keys,
    id: Hash,
    plain: Vec<u8>,
    level: i32,
) -> Result<(Entry, u64), StoreError> {
    let raw_size = plain.len() as u64;
    let sealing = keys.clone();
    let (sealed, sha) = tokio::task::spawn_blocking(move || {
        let packed = zstd::bulk::compress(&plain, level)?;
        // Let go as soon as the next form exists: a chunk in flight holds at most two
        // (its plaintext is up to 4 MiB).
        drop(plain);
        let sealed = sealing.seal_bytes(packed)?;
        let sha: Hash = Sha256::digest(&sealed).into();
        Ok::<_, io::Error>((sealed, sha))
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r)
    .map_err(|e| source(store, steward_store::chunks::CHUNKS_DIR, e))?;
    let entry = Entry { id, raw_size, stored_size: sealed.len() as u64, stored_sha256: sha };
    store.put(&entry.object(), Bytes::from(sealed)).await?;
    Ok((entry, entry.stored_size))
}

/// The index of chunked `component`, after its bytes matched the signed manifest, with the
/// ETag read; `stored` counts its bytes. With `pin`, only the object of that ETag.
pub async fn read_index(
    store: &Store,
    component: &Component,
    pin: Option<&str>,
    stored: Option<&Counter>,
) -> Result<(Index, Option<String>), StoreError> {
    use tokio::io::AsyncReadExt as _;
    let unreadable = |reason: String| StoreError::Unreadable {
        key: store.key(&component.object),
        reason: format!("{}: {reason}", component.name),
    };
    let (body, etag) = crate::pipeline::get_component(store, component, pin).await?;
    let mut bytes = vec![];
    body.take(component.stored_size.saturating_add(1))
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| unreadable(format!("reading the chunk index: {e}")))?;
    if let Some(counter) = stored {
        counter.update(&bytes);
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    if bytes.len() as u64 != component.stored_size || sha != component.stored_sha256 {
        return Err(unreadable(format!(
            "refused: the chunk index ({} bytes, SHA-256 {sha}) does not match the signed manifest ({} bytes, SHA-256 {})",
            bytes.len(),
            component.stored_size,
            component.stored_sha256
        )));
    }
    // Streamed with a cap: a bulk decompression would reserve the whole cap up front.
    let mut raw = vec![];
    let decoder = zstd::stream::read::Decoder::new(bytes.as_slice())
        .map_err(|e| unreadable(format!("the chunk index does not unpack: {e}")))?;
    std::io::Read::read_to_end(&mut std::io::Read::take(decoder, MAX_INDEX_RAW + 1), &mut raw)
        .map_err(|e| unreadable(format!("the chunk index does not unpack: {e}")))?;
    if raw.len() as u64 > MAX_INDEX_RAW {
        return Err(unreadable("the chunk index unpacks to more than 1 GiB".into()));
    }
    let index = Index::parse(&raw).map_err(unreadable)?;
    if index.raw_size() != Some(component.raw_size) {
        return Err(unreadable(format!(
            "the chunk index adds up to {:?} bytes, the manifest says {}",
            index.raw_size(),
            component.raw_size
        )));
    }
    Ok((index, etag))
}

/// The plaintext of chunked `component`, chunk after chunk, each checked; `stored` counts
/// the index's bytes (what the manifest's stored checksum is of).
pub async fn read_chunked(
    io: Io<'_>,
    component: &Component,
    pin: Option<&str>,
    stored: &Counter,
) -> Result<(BoxStream<'static, io::Result<Bytes>>, Option<String>), StoreError> {
    let (index, etag) = read_index(io.store, component, pin, Some(stored)).await?;
    let store = io.store.clone();
    let keys = io.keys.clone();
    let encrypted = is_sealed(&component.encoding);
    let stream =
        read_ahead(index.entries.into_iter().map(|e| (e.raw_size, e)), READ_AHEAD, move |e| {
            read_chunk(store.clone(), keys.clone(), e, encrypted)
        });
    if !hashes_chunks(&component.encoding) {
        return Ok((stream.map_ok(|(plain, _)| plain).boxed(), etag));
    }
    // Each chunk's plaintext digest (taken as it was opened), in order; the list's digest is
    // checked at the end.
    let (expected, name) = (component.raw_sha256.clone(), component.name.clone());
    let list = Arc::new(Mutex::new(Sha256::new()));
    let (feed, end) = (list.clone(), list);
    let stream = stream
        .map_ok(move |(plain, digest)| {
            feed.lock().unwrap_or_else(|p| p.into_inner()).update(digest);
            plain
        })
        .chain(futures::stream::once(async move {
            let h = std::mem::take(&mut *end.lock().unwrap_or_else(|p| p.into_inner()));
            let got = hex::encode(h.finalize());
            (got != expected).then(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{name}: its chunks' digests ({got}) do not match the manifest ({expected})"),
                )
            })
        }).filter_map(|e| async move { e.map(Err) }));
    Ok((stream.boxed(), etag))
}

/// `work` as a task of its own, its result through the future returned: it goes on, on any
/// core, while its reader waits elsewhere. Dropping the handle ends the task at its next
/// await; work it handed to a blocking thread (a chunk being opened) runs to its end, bounded
/// by the chunk's size.
fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> futures::future::RemoteHandle<T> {
    let (task, result) = work.remote_handle();
    tokio::spawn(task);
    result
}

/// How far a read of chunks runs ahead of its reader: at most this many chunks, and this many
/// plaintext bytes of them (one larger chunk goes alone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ahead {
    pub(crate) chunks: usize,
    pub(crate) bytes: u64,
}

/// A restore's load. A chunk's fetch is mostly waiting on the bucket (one request each): four
/// in flight, polled only when the reader was (a restore's upload waits on the engine),
/// loaded a 4 GiB restore in 52.6 s against the whole object's 34.2 s; a count alone let
/// large chunks take the memory (eight: 71.5 MiB peak in the 1 GiB restore). Since a chunk in
/// flight holds its plaintext only (no sealed copy, no decoder window), 12 chunks and 16 MiB
/// loaded it in 32.3 s against 40.7 s with 8 and 8 MiB, at 61.7 MiB peak against 52.7
/// (benchmarks.md).
pub(crate) const READ_AHEAD: Ahead = Ahead { chunks: 12, bytes: 16 << 20 };

/// `fetch` of each item (its plaintext size first) in order, at most `limit` ahead of the
/// reader, each fetched by a task of its own. Asked again after its end, it ends again (a
/// splice asks whenever it needs an old chunk past the foreseen ones).
pub(crate) fn read_ahead<X, T, F>(
    items: impl Iterator<Item = (u64, X)> + Send + 'static,
    limit: Ahead,
    fetch: impl FnMut(X) -> F + Send + 'static,
) -> impl Stream<Item = T> + Send + 'static
where
    X: Send + 'static,
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    use futures::future::RemoteHandle;
    use std::collections::VecDeque;
    type Items<X> = std::iter::Peekable<Box<dyn Iterator<Item = (u64, X)> + Send>>;
    struct State<X, G, T> {
        items: Items<X>,
        fetch: G,
        queue: VecDeque<(u64, RemoteHandle<T>)>,
        bytes: u64,
    }
    let items: Box<dyn Iterator<Item = (u64, X)> + Send> = Box::new(items);
    let state = State { items: items.peekable(), fetch, queue: VecDeque::new(), bytes: 0 };
    futures::stream::unfold(state, move |mut a| async move {
        while a.queue.len() < limit.chunks {
            let Some((size, _)) = a.items.peek() else { break };
            let bytes = a.bytes.saturating_add(*size);
            if !a.queue.is_empty() && bytes > limit.bytes {
                break;
            }
            let Some((size, item)) = a.items.next() else { break };
            a.queue.push_back((size, detached((a.fetch)(item))));
            a.bytes = bytes;
        }
        let (size, front) = a.queue.pop_front()?;
        let out = front.await;
        a.bytes = a.bytes.saturating_sub(size);
        Some((out, a))
    })
    // `unfold` panics when polled after its end.
    .fuse()
}

/// One chunk's plaintext and its SHA-256: its stored bytes checked against the index,
/// opened, unpacked to exactly its size.
async fn read_chunk(
    store: Store,
    keys: Keys,
    e: Entry,
    encrypted: bool,
) -> io::Result<(Bytes, [u8; 32])> {
    let bad = |reason: String| chunk_error(&e, reason);
    let raw_size = usize::try_from(e.raw_size).map_err(|_| bad("too large".into()))?;
    let sealed = tokio_util::io::SyncIoBridge::new(stored_body(&store, &e).await?);
    let entry = e;
    let plain = tokio::task::spawn_blocking(move || {
        let bad = |reason: String| chunk_error(&entry, reason);
        // Hashed, opened and unpacked as the stored bytes arrive: only the plain chunk is
        // held (the sealed one beside it was half of what a restore's chunks in flight held).
        // Nothing of it is handed on before the stored bytes proved to be the signed ones.
        let mut sealed = Hashing { inner: sealed, hasher: Sha256::new(), size: 0, failed: None };
        let unpack = |from: &mut dyn std::io::Read| unpack_chunk(from, raw_size);
        let plain = match encrypted {
            true => keys.open_reader(&mut sealed).and_then(|mut r| unpack(&mut r)),
            false => unpack(&mut sealed),
        };
        // The rest (a reader may stop before the end), so that every stored byte is checked
        // and a wrong object is named as such, not by what failed to open in it.
        let drained = std::io::copy(&mut sealed, &mut std::io::sink());
        // A failed read of the bucket is that failure (of its own kind), not a verdict on
        // bytes that never came.
        if let Some(failed) = sealed.failed.take() {
            let object = entry.object();
            return Err(io::Error::new(
                failed.kind(),
                format!("chunk {object}: reading it: {failed}"),
            ));
        }
        drained?;
        stored_as_indexed(&entry, sealed.size, sealed.hasher).map_err(bad)?;
        let plain = plain.map_err(bad)?;
        // Hashed here, off the async threads and beside the other chunks in flight.
        let digest: [u8; 32] = Sha256::digest(&plain).into();
        Ok::<_, io::Error>((plain, digest))
    })
    .await
    .map_err(io::Error::other)??;
    let (plain, digest) = plain;
    if plain.len() != raw_size {
        return Err(bad(format!("unpacks to {} bytes, the index says {raw_size}", plain.len())));
    }
    Ok((Bytes::from(plain), digest))
}

/// One zstd frame read from `from` to its end, unpacked into a buffer of exactly `raw_size`
/// (the signed index's) that the decoder writes into directly (zstd's stable output buffer):
/// a streaming decoder otherwise keeps a window of its own as large as the chunk, beside the
/// plaintext, for every chunk in flight. The frame must fit the buffer, end, and be all there
/// is (the caller compares the length).
fn unpack_chunk(from: &mut dyn std::io::Read, raw_size: usize) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer};
    let code = |e: usize| zstd::zstd_safe::get_error_name(e).to_owned();
    let mut dctx = DCtx::try_create().ok_or("no memory for a zstd decoder")?;
    // A chunk is packed whole, so its frame needs no window beyond the largest chunk;
    // unchecked bytes must not make the decoder reserve more.
    dctx.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX)).map_err(code)?;
    dctx.set_parameter(DParameter::StableOutBuffer(true)).map_err(code)?;
    // The size is the signed index's, which no index exceeds when it parses.
    let cap = raw_size.min(steward_store::chunks::MAX_RAW_CHUNK as usize);
    let mut plain: Vec<u8> = Vec::with_capacity(cap);
    let mut input = vec![0u8; DCtx::in_size()];
    // What the decoder still expects; 0 once the frame ended.
    let mut wants = 1;
    loop {
        let n = match from.read(&mut input) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("does not unpack (altered or cut short?): {e}")),
        };
        let Some(read) = input.get(..n) else { break };
        if read.is_empty() {
            break;
        }
        if wants == 0 {
            return Err("does not unpack: bytes after its frame".into());
        }
        let mut at = InBuffer::around(read);
        while at.pos() < read.len() && wants != 0 {
            let pos = plain.len();
            let mut out = OutBuffer::around_pos(&mut plain, pos);
            let before = (at.pos(), pos);
            // zstd refuses a frame larger than the buffer ("Destination buffer is too small").
            let too_large = |why: &str| {
                format!("does not unpack into the {raw_size} bytes the index says (altered or cut short?): {why}")
            };
            wants = dctx.decompress_stream(&mut out, &mut at).map_err(|e| too_large(&code(e)))?;
            if wants != 0 && (at.pos(), plain.len()) == before {
                return Err(too_large("no progress"));
            }
        }
        if at.pos() < read.len() {
            return Err("does not unpack: bytes after its frame".into());
        }
    }
    match wants {
        0 => Ok(plain),
        _ => Err("does not unpack: cut short".into()),
    }
}

/// A reader hashing and counting what passes through it, keeping the first error of its
/// source (the readers above it may turn it into one of their own, or read on).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    failed: Option<io::Error>,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(failed) = &self.failed {
            return Err(io::Error::new(failed.kind(), failed.to_string()));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
                return Err(e);
            }
        };
        let read = buf.get(..n).unwrap_or_default();
        self.hasher.update(read);
        self.size = self.size.saturating_add(read.len() as u64);
        Ok(n)
    }
}

/// Chunk `e`'s stored bytes hashed as they arrive, refused unless they are exactly those its
/// index records (size and SHA-256).
async fn fetch_checked(store: &Store, e: &Entry) -> io::Result<()> {
    use tokio::io::AsyncBufReadExt as _;
    let mut body = stored_body(store, e).await?;
    let (mut hasher, mut size) = (Sha256::new(), 0u64);
    loop {
        let part = body.fill_buf().await?;
        if part.is_empty() {
            break;
        }
        hasher.update(part);
        let n = part.len();
        size = size.saturating_add(n as u64);
        body.consume(n);
    }
    stored_as_indexed(e, size, hasher).map_err(|reason| chunk_error(e, reason))
}

/// Chunk `e`'s stored object, read up to one byte past its indexed size: a larger object
/// then tells itself from the right one.
async fn stored_body(
    store: &Store,
    e: &Entry,
) -> io::Result<impl tokio::io::AsyncBufRead + Send + Unpin + 'static> {
    use tokio::io::AsyncReadExt as _;
    match store.get(&e.object()).await {
        Ok(Some(body)) => Ok(body.take(e.stored_size.saturating_add(1))),
        Ok(None) => Err(chunk_error(e, "refused: it is missing from the bucket".into())),
        Err(err) => Err(chunk_error(e, err.to_string())),
    }
}

/// Whether the stored bytes read (`size` of them, hashed into `hasher`) are those `e` records.
fn stored_as_indexed(e: &Entry, size: u64, hasher: Sha256) -> Result<(), String> {
    let sha: Hash = hasher.finalize().into();
    match size == e.stored_size && sha == e.stored_sha256 {
        true => Ok(()),
        false => Err(format!(
            "refused: its bytes ({size} bytes, SHA-256 {}) do not match the signed index",
            hex::encode(sha)
        )),
    }
}

/// An error about chunk `e`'s bytes.
fn chunk_error(e: &Entry, reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunk {}: {reason}", e.object()))
}

/// Chunks a [`check_stored`] fetches at once: each holds a hasher, not the chunk.
const CHECK_PARALLEL: usize = 8;

/// A restore's check of chunked `component` before it touches anything, returning the
/// index's ETag: the index matches the signed manifest, every chunk it names is in the bucket
/// with exactly the bytes the index records, and the first chunk opens and unpacks (the
/// identity configured opens this backup). The chunks' bytes being the signed ones, their
/// plaintext is the one hashed into the manifest when the backup was taken; the load reads
/// every chunk again and checks all of it (each chunk, the whole stream's SHA-256, every tar
/// entry) into a staging copy that is discarded, before any swap, if anything fails.
/// `steward backup verify` reads everything ([`read_chunked`]).
pub async fn check_stored(io: Io<'_>, component: &Component) -> Result<Option<String>, String> {
    let failed = |e: &dyn std::fmt::Display| {
        let e = e.to_string();
        if e.contains(&component.name) {
            e
        } else {
            format!("{}: {e}", component.name)
        }
    };
    io.meter.item(&component.name);
    crate::pipeline::refuse_plain(io, component).map_err(|e| failed(&e))?;
    let (index, etag) =
        read_index(io.store, component, None, None).await.map_err(|e| failed(&e))?;
    let encrypted = is_sealed(&component.encoding);
    if let Some(first) = index.entries.first() {
        read_chunk(io.store.clone(), io.keys.clone(), *first, encrypted)
            .await
            .map_err(|e| failed(&e))?;
    }
    let store = io.store.clone();
    let mut checks = futures::stream::iter(index.entries)
        .map(|e| {
            let store = store.clone();
            detached(async move { fetch_checked(&store, &e).await.map(|()| e.raw_size) })
        })
        .buffer_unordered(CHECK_PARALLEL);
    while let Some(checked) = checks.next().await {
        io.meter.add(checked.map_err(|e| failed(&e))?);
    }
    Ok(etag)
}

/// The chunked components of `m`.
pub fn chunked_components(m: &Manifest) -> impl Iterator<Item = &Component> {
    m.components.iter().filter(|c| is_chunked(&c.encoding))
}

/// Marks a backup's directory before its first chunk is stored: a collection then sees a
/// backup in progress (its chunks are in no index yet) and deletes nothing.
pub const PENDING: &str = "chunks-pending";

/// The newest usable backup's component `name` of this host, engine and chunk scheme, with
/// its index, when it has a tree: what the next backup of the path splices from.
#[derive(Debug)]
struct Candidate {
    component: Component,
    index: Index,
    taken_at: time::OffsetDateTime,
}

impl crate::backup::Backups {
    /// Every chunk the usable backups list under `chunker`'s scheme: what a new backup need
    /// not upload again (unusable or unreadable indexes add nothing: the chunk is uploaded
    /// again, never trusted from an unsigned list); and the previous backup of component
    /// `name` to splice from, if one can be.
    async fn known_and_parent(
        &self,
        chunker: &Chunker,
        name: &str,
    ) -> Result<(Known, Option<splice::Parent>), StoreError> {
        let store = self.store();
        let now = time::OffsetDateTime::now_utc();
        let known = Known::default();
        let host = self.bus.as_ref().and_then(|b| b.host()).map(str::to_owned);
        let mut newest: Option<Candidate> = None;
        // Every object an index names (one id may be stored as several: sealing is
        // randomised), with its size.
        let mut named: HashMap<Hash, u64> = HashMap::new();
        for listed in steward_store::catalog::list(store, &self.config.trust, now).await? {
            let Some(m) = listed.usable() else { continue };
            let same_engine = m.docker_host == self.engine.host() && m.host == host;
            for c in chunked_components(m) {
                match read_index(store, c, None, None).await {
                    Ok((index, _)) if index.scheme == chunker.scheme => {
                        for e in &index.entries {
                            named.insert(e.stored_sha256, e.stored_size);
                            known.insert(*e);
                        }
                        let fits = same_engine
                            && c.name == name
                            && c.tree.is_some()
                            && hashes_chunks(&c.encoding)
                            && newest.as_ref().is_none_or(|n| n.taken_at < m.taken_at);
                        if fits {
                            newest = Some(Candidate {
                                component: c.clone(),
                                index,
                                taken_at: m.taken_at,
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(backup = %m.backup_id, component = %c.name, error = %e, "an index of a usable backup is unreadable; its chunks are uploaded again")
                    }
                }
            }
        }
        // An index vouches that a chunk was stored, not that it still is: one deleted under
        // it (by hand, by a lifecycle rule, by another tool) would otherwise be named by
        // every later backup without being uploaded again.
        let stored: HashMap<Hash, Option<u64>> = match named.is_empty() {
            true => HashMap::new(),
            false => store
                .list_sized(steward_store::chunks::CHUNKS_DIR)
                .await?
                .into_iter()
                .filter_map(|(object, size)| Some((sha256_of_object(&object)?, size)))
                .collect(),
        };
        let holds = |e: &Entry| match stored.get(&e.stored_sha256) {
            Some(Some(size)) => *size == e.stored_size,
            // A server that gives no size: present is all that can be told.
            Some(None) => true,
            None => false,
        };
        let mut gone: Vec<&Hash> = named
            .iter()
            .filter(|(object, size)| match stored.get(*object) {
                Some(Some(s)) => s != *size,
                Some(None) => false,
                None => true,
            })
            .map(|(object, _)| object)
            .collect();
        gone.sort();
        if let Some(first) = gone.first() {
            tracing::error!(
                component = name,
                chunks = gone.len(),
                first = %steward_store::chunks::object(first),
                "chunks named by signed backups are missing from the bucket or cut short: this backup stores again what it still reads of them; the older backups that name them fail verification (unless stored again under the same name: unencrypted chunks)"
            );
        }
        known.retain(holds);
        let Some(Candidate { component: c, index, .. }) = newest else { return Ok((known, None)) };
        let Some(reference) = &c.tree else { return Ok((known, None)) };
        if let Some(gone) = index.entries.iter().find(|e| !holds(e)) {
            tracing::warn!(component = name, chunk = %gone.object(), "a chunk of the previous backup is missing from the bucket: the path is read whole");
            return Ok((known, None));
        }
        let encrypted = is_sealed(&c.encoding);
        let parent = match tree::get(store, &self.config.keys, reference, encrypted).await {
            Ok(tree) => match tree.consistent(&index, c.raw_size) {
                Ok(()) => Some(splice::Parent {
                    index,
                    tree,
                    raw_size: c.raw_size,
                    encrypted,
                    checked: c.entries_checked == Some(crate::tarcheck::RULES),
                }),
                Err(why) => {
                    tracing::warn!(component = name, reason = %why, "the previous backup's tree is inconsistent: the path is read whole");
                    None
                }
            },
            Err(why) => {
                tracing::warn!(component = name, reason = %why, "the previous backup's tree cannot be read: the path is read whole");
                None
            }
        };
        Ok((known, parent))
    }

    /// Stores path `component` of backup `id` as chunks: its index is the component's object,
    /// its tree beside it. A path whose previous backup has a tree is spliced from it when its
    /// listing allows ([`splice`]); otherwise `tar` is read whole.
    pub(crate) async fn store_chunked<S>(
        &self,
        id: &str,
        component: String,
        kind: steward_store::manifest::Kind,
        tar: S,
    ) -> Result<Component, crate::Failure>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        use steward_store::manifest::Kind;
        let failed = |e: &dyn std::fmt::Display| crate::Failure::plain(format!("{component}: {e}"));
        let store = self.store();
        store.put(&format!("{id}/{PENDING}"), Bytes::new()).await.map_err(|e| failed(&e))?;
        let chunker = Chunker::new(&self.config.signing, &self.config.keys);
        let reading = std::time::Instant::now();
        let (known, parent) =
            self.known_and_parent(&chunker, &component).await.map_err(|e| failed(&e))?;
        let (known_seconds, streaming) =
            (reading.elapsed().as_secs_f64(), std::time::Instant::now());
        let object = match &kind {
            Kind::Path { container, path } => format!(
                "{id}/path-{}-{}.chunks.zst",
                steward_store::manifest::slug(container),
                steward_store::manifest::slug(path)
            ),
            _ => format!("{id}/{}.chunks.zst", steward_store::manifest::slug(&component)),
        };
        let encoding = if self.config.keys.encrypts() { CDC2_ZSTD_AGE } else { CDC2_ZSTD };
        let mut listing = match &kind {
            Kind::Path { container, path } => {
                match listing::list(&self.engine, container, path).await {
                    Ok(l) => Some(l),
                    Err(why) => {
                        tracing::info!(backup = id, component, reason = %why, "no listing of the path: it is read whole, and keeps no tree");
                        None
                    }
                }
            }
            _ => None,
        };
        steward_failpoints::failpoint!("chunks:listed");
        let level = self.config.zstd_level;
        // The splice takes the listing (its tree is made of the listing's names and stats,
        // moved, not copied), and gives it back when the path is read whole instead.
        let spliceable = |_: &mut Listing| parent.is_some() && matches!(kind, Kind::Path { .. });
        if let (Some(taken), Some(mut parent), Kind::Path { container, path }) =
            (listing.take_if(spliceable), parent, &kind)
        {
            let ctx = splice::Ctx {
                store,
                keys: &self.config.keys,
                engine: &self.engine,
                container,
                path,
                chunker: &chunker,
                known: &known,
                level,
                started: taken.started,
                tar: taken.tar,
            };
            match splice::splice(&ctx, &mut parent, taken).await.map_err(|e| failed(&e))? {
                Ok(done) => {
                    steward_failpoints::failpoint!("chunks:spliced");
                    let stored = put_index(store, &object, &chunker, done.entries, level)
                        .await
                        .map_err(|e| failed(&e))?;
                    let raw = (done.size, chunk_list_digest(&done.digests));
                    let tree = tree::Tree {
                        version: 1,
                        listed: ctx.started,
                        entries: done.tree,
                        digests: done.digests,
                        spliced: parent.tree.spliced.saturating_add(1),
                    };
                    let tree_ref = tree::put(
                        store,
                        &self.config.keys,
                        &Tree::object_for(&object),
                        tree,
                        level,
                    )
                    .await
                    .map_err(|e| failed(&e))?;
                    self.meter.add(done.size);
                    tracing::info!(
                        backup = id,
                        component,
                        chunks = done.uploaded.chunks,
                        new_chunks = done.uploaded.new_chunks,
                        uploaded_bytes = done.uploaded.bytes + stored.size + tree_ref.stored_size,
                        raw_bytes = done.size,
                        read_bytes = done.read,
                        old_chunks_read = done.old_chunks,
                        read_entries = done.fresh_entries,
                        known_seconds,
                        splice_seconds = streaming.elapsed().as_secs_f64(),
                        "stored as chunks, unchanged entries taken from the previous backup unread"
                    );
                    let checked = done.checked.then_some(crate::tarcheck::RULES);
                    let stored = (stored, Some(tree_ref));
                    return Ok(chunked_component(
                        component, kind, object, encoding, stored, raw, checked,
                    ));
                }
                Err((splice::Fallback(why), back)) => {
                    tracing::info!(backup = id, component, reason = %why, "the path is read whole");
                    listing = back;
                }
            }
        }
        // Whether every entry would pass a restore's tar check, recorded in the signed
        // manifest: a restore then proves the chunks' stored bytes only before it stops the
        // app ([`check_stored`]). Not a refusal: the data is stored either way.
        let (tar, watch) = match &kind {
            Kind::Path { path, .. } => {
                // Entries' places are noted only for a tree, which needs a listing.
                let guard = match &listing {
                    Some(_) => crate::tarcheck::TarGuard::recording(path),
                    None => crate::tarcheck::TarGuard::new(path),
                };
                let (tar, watch) = crate::tarcheck::watched(tar, guard);
                (tar.boxed(), Some(watch))
            }
            _ => (tar.boxed(), None),
        };
        let (stored, raw, mut uploaded, digests) =
            store_chunked(self.io(), &chunker, &known, &object, tar, level)
                .await
                .map_err(|e| failed(&e))?;
        let entries_checked = watch.as_ref().and_then(|w| w.verdict());
        if let Some(why) = watch.as_ref().and_then(|w| w.refused()) {
            tracing::warn!(backup = id, component, reason = %why, "an entry of the archive would not pass a restore's check: a restore of it will be refused");
        }
        let seen = watch.as_ref().and_then(|w| w.seen());
        let list_digest = chunk_list_digest(&digests);
        let tree = match (listing, seen) {
            (Some(listing), Some(seen)) => {
                let tree = tree::Tree {
                    version: 1,
                    listed: listing.started,
                    entries: seen
                        .into_iter()
                        .map(|s| tree::TreeEntry {
                            stat: listing.get(&s.name).cloned(),
                            name: s.name,
                            start: s.start,
                            len: s.end.saturating_sub(s.start),
                        })
                        .collect(),
                    digests,
                    spliced: 0,
                };
                drop(listing);
                let reference =
                    tree::put(store, &self.config.keys, &Tree::object_for(&object), tree, level)
                        .await
                        .map_err(|e| failed(&e))?;
                uploaded.bytes += reference.stored_size;
                Some(reference)
            }
            _ => None,
        };
        tracing::info!(
            backup = id,
            component,
            chunks = uploaded.chunks,
            new_chunks = uploaded.new_chunks,
            uploaded_bytes = uploaded.bytes,
            raw_bytes = raw.size,
            known_chunks = known.len(),
            known_seconds,
            stream_seconds = streaming.elapsed().as_secs_f64(),
            "stored as chunks"
        );
        let raw = (raw.size, list_digest);
        Ok(chunked_component(
            component,
            kind,
            object,
            encoding,
            (stored, tree),
            raw,
            entries_checked,
        ))
    }
}

/// A chunked component's manifest entry: its index `stored` (with its tree), its archive's
/// `raw` size and chunk list digest.
fn chunked_component(
    name: String,
    kind: steward_store::manifest::Kind,
    object: String,
    encoding: &str,
    (stored, tree): (Stored, Option<steward_store::manifest::TreeRef>),
    (raw_size, raw_sha256): (u64, String),
    entries_checked: Option<u32>,
) -> Component {
    Component {
        name,
        kind,
        object,
        encoding: encoding.into(),
        stored_size: stored.size,
        stored_sha256: stored.sha256,
        raw_size,
        raw_sha256,
        entries_checked,
        tree,
    }
}

impl crate::backup::Backups {
    /// Copies to `copy` every chunk of `c` (when chunked) it lacks, each checked against the
    /// index that the signed manifest vouches for. Chunk objects are named by their hash, so
    /// one there by name is the same bytes (and is checked whenever it is read).
    pub(crate) async fn copy_chunks(&self, copy: &Store, c: &Component) -> Result<(), String> {
        if !is_chunked(&c.encoding) {
            return Ok(());
        }
        let (index, _) =
            read_index(self.store(), c, None, None).await.map_err(|e| e.to_string())?;
        let there: std::collections::HashSet<String> = copy
            .list_objects(steward_store::chunks::CHUNKS_DIR)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let mut done = std::collections::HashSet::new();
        for e in &index.entries {
            let name = e.object();
            if there.contains(&name) || !done.insert(name.clone()) {
                continue;
            }
            let limit = usize::try_from(e.stored_size).map_err(|_| format!("{name}: too large"))?;
            let body = self
                .store()
                .get_small(&name, limit)
                .await
                .map_err(|err| err.to_string())?
                .ok_or_else(|| format!("{name} is gone from the primary"))?;
            if <Hash>::from(Sha256::digest(&body)) != e.stored_sha256 {
                return Err(format!("{name} in the primary does not match its signed index"));
            }
            copy.put(&name, Bytes::from(body)).await.map_err(|err| err.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack(packed: &[u8], raw_size: usize) -> Result<Vec<u8>, String> {
        // Fed in small reads, as a bucket's body arrives.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(1000);
                let (head, rest) = self.0.split_at(n);
                buf.get_mut(..n).unwrap_or_default().copy_from_slice(head);
                self.0 = rest;
                Ok(n)
            }
        }
        unpack_chunk(&mut Trickle(packed), raw_size)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8 ^ (i >> 12) as u8).collect()
    }

    #[test]
    fn a_chunk_unpacks_into_exactly_its_size() {
        for n in [1, 1000, 300_000, MAX_CHUNK as usize] {
            let plain = data(n);
            let packed = zstd::bulk::compress(&plain, 3).expect("compress");
            let out = unpack(&packed, n).expect("unpacks");
            assert_eq!(out, plain, "{n} bytes");
            assert_eq!(out.capacity(), n, "no more than the chunk is reserved");
        }
    }

    #[test]
    fn a_chunk_that_does_not_match_its_index_is_refused() {
        let plain = data(300_000);
        let packed = zstd::bulk::compress(&plain, 3).expect("compress");
        let larger = unpack(&packed, 299_999).expect_err("larger than the index");
        assert!(larger.contains("into the 299999 bytes the index says"), "{larger}");
        // Smaller than the index: the caller compares the length.
        assert_eq!(unpack(&packed, 300_001).map(|p| p.len()), Ok(300_000));
        let cut = unpack(&packed[..packed.len() - 10], 300_000).expect_err("cut short");
        assert!(cut.contains("cut short"), "{cut}");
        let mut twice = packed.clone();
        twice.extend_from_slice(&packed);
        let after = unpack(&twice, 600_000).expect_err("a second frame");
        assert!(after.contains("after its frame"), "{after}");
        let mut flipped = packed.clone();
        if let Some(b) = flipped.get_mut(packed.len() / 2) {
            *b ^= 0x55;
        }
        assert!(unpack(&flipped, 300_000).map(|p| p != plain).unwrap_or(true));
        assert!(unpack(b"not zstd at all", 10).is_err());
        assert!(unpack(b"", 10).expect_err("empty").contains("cut short"));
    }

    #[test]
    fn a_frame_asking_for_a_larger_window_is_refused() {
        // Packed in one stream with a 16 MiB window: more than a chunk may need.
        let plain = data(6 << 20);
        let mut enc = zstd::stream::write::Encoder::new(vec![], 19).expect("encoder");
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(24)).expect("window");
        std::io::Write::write_all(&mut enc, &plain).expect("write");
        let packed = enc.finish().expect("finish");
        let refused = unpack(&packed, MAX_CHUNK as usize).expect_err("window");
        assert!(refused.contains("does not unpack"), "{refused}");
    }

    /// What a read holds ahead of its reader stays within its limit in chunks and bytes (one
    /// larger chunk alone), whatever the sizes, and every item comes once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_ahead_holds_no_more_than_its_limit() {
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        const MIB: u64 = 1 << 20;
        // Four small ones first: only the count holds them to three.
        let sizes = [1, 1, 1, 1, 5, 1, 1, 2, 2, 2, 2, 3, 1, 4, 4, 1].map(|m| m * MIB);
        let limit = Ahead { chunks: 3, bytes: 4 * MIB };
        // Launched and not yet handed to the reader: (count, bytes), and the worst seen at a
        // launch (a lone chunk over the budget counted apart).
        let (count, bytes, consumed) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let worst = Arc::new(Mutex::new((0u64, 0u64)));
        let (c, b, d, w) = (count.clone(), bytes.clone(), consumed.clone(), worst.clone());
        let items = sizes.into_iter().enumerate().map(|(i, size)| (size, (i, size)));
        let stream = read_ahead(items, limit, move |(i, size)| {
            let launched = c.fetch_add(1, SeqCst) + 1;
            let held = b.fetch_add(size, SeqCst) + size;
            let outstanding = (launched - d.load(SeqCst), held);
            {
                let mut worst = w.lock().unwrap_or_else(|p| p.into_inner());
                if outstanding.0 > 1 {
                    *worst = (worst.0.max(outstanding.0), worst.1.max(outstanding.1));
                }
            }
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                (i, size)
            }
        });
        let mut stream = std::pin::pin!(stream);
        let mut got = vec![];
        while let Some((i, size)) = stream.next().await {
            // A slow reader: what it let run ahead (each a task of its own) is done meanwhile.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            consumed.fetch_add(1, SeqCst);
            bytes.fetch_sub(size, SeqCst);
            got.push(i);
        }
        assert_eq!(got, (0..sizes.len()).collect::<Vec<_>>(), "every item once, in order");
        // Asked again after its end (a splice does), it ends again.
        assert!(stream.next().await.is_none() && stream.next().await.is_none());
        let (chunks, held) = *worst.lock().unwrap_or_else(|p| p.into_inner());
        assert!(chunks <= 3, "{chunks} chunks ahead of the reader, the limit is 3");
        assert!(held <= 4 * MIB, "{} MiB ahead of the reader, the limit is 4", held / MIB);
        // It does run ahead (a limit of one would pass the bounds above too).
        assert_eq!(chunks, 3, "the reader was slow enough for three to be fetched ahead");
    }
}
