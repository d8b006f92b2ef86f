//! A second backup of a path without reading what did not change. The path's listing
//! ([`super::listing`]) is compared with the previous backup's tree ([`super::tree`]): an entry
//! listed exactly as then (type, size, times, inode, mode, owner, links), and settled then
//! (its ctime second before that listing began, so no write after it was read can hide behind
//! an equal time), keeps the archive bytes it had. The new archive is those ranges of the old
//! one with the changed entries in between, each read alone through the archive API, in the
//! order the archive API writes them (names sorted per directory).
//!
//! Cutting the new archive gives exactly the chunks a full read would, without reading most
//! of it: a content-defined cut depends only on the bytes since the previous cut, so from a
//! cut the old archive also had, inside an unchanged range, every old chunk that ends inside
//! that range is cut again identically and is taken from the old index unread. Bytes are read
//! (from the old chunks or the engine) and cut only from the last old cut before a change
//! until the cutting meets an old cut again.
//!
//! Anything unexpected (an entry type the archive API writes differently, a file that changed
//! between the listing and its read, an old chunk that does not match its digest) makes it
//! give up with a [`Fallback`], and the path is read whole.

use std::collections::HashMap;
use std::io;

use bytes::{Bytes, BytesMut};
use fastcdc::v2020::{FastCDC, Normalization};
use futures::stream::{BoxStream, FuturesOrdered};
use futures::{FutureExt as _, StreamExt as _};
use sha2::{Digest as _, Sha256};
use steward_engine::Engine;
use steward_store::chunks::{Entry, Hash, Index};
use steward_store::store::{Store, StoreError};

use super::tree::{Tree, TreeEntry};
use super::{
    put_chunk, read_ahead, read_chunk, Ahead, Chunker, Known, Uploaded, AVG_CHUNK, MAX_CHUNK,
    MIN_CHUNK, PARALLEL,
};
use crate::encryption::Keys;
use crate::tarcheck::TarGuard;
use steward_engine::listing::{Kind, Listing, Stat};

const BLOCK: u64 = 512;
/// More changed entries than this, or more changed file bytes than half the path: reading the
/// whole path is cheaper than reading each alone.
const MAX_FRESH_ENTRIES: usize = 20_000;
/// Bytes added to the cutting window at a time: most cuts are found in the first.
const STEP: usize = AVG_CHUNK as usize;

/// Why the path is read whole instead.
#[derive(Debug)]
pub struct Fallback(pub String);

impl From<String> for Fallback {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// The previous backup of the path.
#[derive(Debug)]
pub struct Parent {
    /// Its chunks.
    pub index: Index,
    /// Its tree.
    pub tree: Tree,
    /// Its archive's length.
    pub raw_size: u64,
    /// Its chunks are sealed.
    pub encrypted: bool,
    /// Every entry of it passed the tar rules ([`crate::tarcheck::RULES`]).
    pub checked: bool,
}

/// What a splice stored (the index is not written yet).
#[derive(Debug)]
pub struct Spliced {
    /// The new archive's chunks.
    pub entries: Vec<Entry>,
    /// Their plaintext SHA-256s.
    pub digests: Vec<[u8; 32]>,
    /// The new tree's entries.
    pub tree: Vec<TreeEntry>,
    /// The new archive's length.
    pub size: u64,
    /// What was uploaded.
    pub uploaded: Uploaded,
    /// Entries read from the engine.
    pub fresh_entries: usize,
    /// Bytes read from the old chunks and the engine (the rest was not read).
    pub read: u64,
    /// Old chunks read: the chunk before each run of changed entries and the first one or two
    /// after it, whatever their sizes.
    pub old_chunks: usize,
    /// Every entry passes the tar rules (the old ones did, the read ones do).
    pub checked: bool,
}

/// Where the splice reads and writes.
pub struct Ctx<'a> {
    /// The bucket.
    pub store: &'a Store,
    /// Sealing keys.
    pub keys: &'a Keys,
    /// The engine the path is read from.
    pub engine: &'a Engine,
    /// The container.
    pub container: &'a str,
    /// The path (absolute).
    pub path: &'a str,
    /// Chunk naming.
    pub chunker: &'a Chunker,
    /// Chunks already stored.
    pub known: &'a Known,
    /// zstd level.
    pub level: i32,
    /// The listing's clock ([`Listing::started`]).
    pub started: i64,
    /// The container has `tar` ([`Listing::tar`]).
    pub tar: bool,
}

/// One piece of the new archive.
#[derive(Debug)]
enum Piece {
    /// Bytes `from..from+len` of the old archive.
    Old { from: u64, len: u64 },
    /// Bytes made here (a directory's header).
    Made(Bytes),
    /// An entry read alone through the archive API, renamed; as listed.
    Read { name: String, stat: Stat },
}

#[derive(Debug)]
struct Seg {
    /// Offset in the new archive.
    at: u64,
    len: u64,
    piece: Piece,
}

fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// A PAX `path` record's header block, when `name` does not fit a ustar name field.
fn pax_for(name: &str) -> Option<Vec<u8>> {
    if name.len() < 100 && name.is_ascii() {
        return None;
    }
    let body = |n: usize| format!("{n} path={name}\n");
    let mut n = body(0).len();
    while body(n).len() != n {
        n = body(n).len();
    }
    let record = body(n).into_bytes();
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_size(record.len() as u64);
    header.set_mode(0o644);
    header.as_old_mut().name[..14].copy_from_slice(b"PaxHeaders/pax");
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(&record);
    out.resize(out.len() + padding(record.len() as u64) as usize, 0);
    Some(out)
}

/// The header bytes of `name` before a header block (its PAX record, if any).
fn name_prefix_len(name: &str) -> u64 {
    pax_for(name).map_or(0, |p| p.len() as u64)
}

/// Writes `name` into a ustar header block (truncated when a PAX record carries it) and
/// fixes its checksum.
fn rename(block: &mut [u8; 512], name: &str) {
    let field = &mut block[..100];
    field.fill(0);
    let bytes = name.as_bytes();
    let n = bytes.len().min(99);
    field[..n].copy_from_slice(&bytes[..n]);
    if &block[257..263] == b"ustar\0" {
        // The ustar prefix would be joined to the name.
        block[345..500].fill(0);
    }
    block[148..156].fill(b' ');
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

/// A directory's entry made from its listing, as the archive API writes one.
fn dir_entry(name: &str, stat: &Stat) -> Result<Bytes, Fallback> {
    let name = format!("{name}/");
    let mut out = pax_for(&name).unwrap_or_default();
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(stat.perms);
    header.set_uid(u64::from(stat.uid));
    header.set_gid(u64::from(stat.gid));
    let mtime = u64::try_from(stat.mtime.seconds())
        .ok()
        .ok_or_else(|| Fallback(format!("{name}: a modification time before 1970")))?;
    header.set_mtime(mtime);
    header.set_size(0);
    let mut block = [0u8; 512];
    block.copy_from_slice(header.as_bytes());
    rename(&mut block, &name);
    out.extend_from_slice(&block);
    Ok(Bytes::from(out))
}

/// The bytes of data an entry of the archive API has: a file's.
fn data_size(stat: &Stat) -> u64 {
    match stat.kind {
        Kind::File => stat.size,
        _ => 0,
    }
}

/// The new archive: its pieces, its tree and its length.
type Plan = (Vec<Seg>, Vec<TreeEntry>, u64);

/// The pieces of the new archive and its tree, made of `listing`'s own names and stats (the
/// listing is not held beside it), or why it cannot be spliced, with the listing.
fn plan(parent: &Parent, listing: Listing) -> Result<Plan, (Fallback, Option<Listing>)> {
    match places(parent, &listing) {
        Ok((segs, places, total)) => {
            let entries = listing.into_entries().into_iter().zip(places);
            let tree = entries
                .map(|((name, stat), (start, len))| TreeEntry {
                    name,
                    start,
                    len,
                    stat: Some(stat),
                })
                .collect();
            Ok((segs, tree, total))
        }
        Err(f) => Err((f, Some(listing))),
    }
}

/// The listing an unfinished splice's tree was made of.
fn unplan(started: i64, tar: bool, tree: Vec<TreeEntry>) -> Option<Listing> {
    let entries = tree.into_iter().filter_map(|e| Some((e.name, e.stat?))).collect();
    Listing::new(started, tar, entries).ok()
}

/// Where each entry lies in the new archive: its start and length.
type Places = Vec<(u64, u64)>;

/// The pieces of the new archive, the place of each of `listing`'s entries in it, and its
/// length; or why it cannot be spliced.
fn places(parent: &Parent, listing: &Listing) -> Result<(Vec<Seg>, Places, u64), Fallback> {
    let old: HashMap<&str, &TreeEntry> =
        parent.tree.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let (mut segs, mut places, mut at) =
        (Vec::<Seg>::new(), Vec::with_capacity(listing.len()), 0u64);
    if parent.tree.spliced >= MAX_SPLICES {
        return Err(Fallback(format!(
            "{} backups in a row spliced: this one reads the path whole",
            parent.tree.spliced
        )));
    }
    if !parent.checked {
        return Err(Fallback("the previous backup's entries were not all checked".into()));
    }
    let (mut fresh, mut fresh_bytes, mut all_bytes) = (0usize, 0u64, 0u64);
    let overflow = || Fallback("the archive would be larger than 2^64 bytes".into());
    for (name, stat) in listing.iter() {
        match stat.kind {
            Kind::Other => {
                return Err(Fallback(format!("{name} is not a file, directory or link")))
            }
            Kind::File if stat.nlink > 1 => {
                return Err(Fallback(format!("{name} is hard-linked")));
            }
            _ => {}
        }
        all_bytes = all_bytes.saturating_add(stat.size);
        let settled = |e: &&&TreeEntry| {
            e.stat.as_ref() == Some(stat) && stat.ctime.seconds() < parent.tree.listed - 1
        };
        let (len, piece) = match old.get(name).filter(settled) {
            Some(e) => (e.len, Piece::Old { from: e.start, len: e.len }),
            None => {
                fresh += 1;
                match stat.kind {
                    Kind::Dir => {
                        let made = dir_entry(name, stat)?;
                        (made.len() as u64, Piece::Made(made))
                    }
                    _ => {
                        fresh_bytes = fresh_bytes.saturating_add(stat.size);
                        let size = data_size(stat);
                        let len = name_prefix_len(name)
                            .checked_add(BLOCK)
                            .and_then(|l| l.checked_add(size))
                            .and_then(|l| l.checked_add(padding(size)))
                            .ok_or_else(overflow)?;
                        (len, Piece::Read { name: name.to_owned(), stat: stat.clone() })
                    }
                }
            }
        };
        places.push((at, len));
        push(&mut segs, Seg { at, len, piece });
        at = at.checked_add(len).ok_or_else(overflow)?;
    }
    if fresh > MAX_FRESH_ENTRIES || fresh_bytes > all_bytes / 2 {
        return Err(Fallback(format!(
            "{fresh} entries ({fresh_bytes} bytes of files) changed: reading the whole path"
        )));
    }
    // The end-of-archive blocks, as the old archive had them.
    let end = parent.tree.entries.last().map_or(0, |e| e.start.saturating_add(e.len));
    let trailer = parent
        .raw_size
        .checked_sub(end)
        .filter(|t| *t >= 2 * BLOCK)
        .ok_or_else(|| Fallback("the old archive has no end-of-archive blocks".into()))?;
    push(&mut segs, Seg { at, len: trailer, piece: Piece::Old { from: end, len: trailer } });
    at = at.checked_add(trailer).ok_or_else(overflow)?;
    Ok((segs, places, at))
}

/// Appends `seg`, joined to the last one when both are consecutive old bytes.
fn push(segs: &mut Vec<Seg>, seg: Seg) {
    if let (Some(last), Piece::Old { from, len }) = (segs.last_mut(), &seg.piece) {
        if let Piece::Old { from: last_from, len: last_len } = &mut last.piece {
            if last_from.checked_add(*last_len) == Some(*from) {
                *last_len += len;
                last.len += len;
                return;
            }
        }
    }
    segs.push(seg);
}

/// Old chunks fetched ahead of the cutting: a few, and within a few average chunks' bytes, so
/// that what a splice holds does not grow with how large the chunks around its changes
/// happen to be. Five and 8 MiB (what a fetching task of its own held before) cut the 1 GiB
/// splice's time from 1.5-1.8 s to 1.0 s but raised its peak by 5-6 MiB (benchmarks.md).
const OLD_AHEAD: Ahead = Ahead { chunks: 3, bytes: 3 * AVG_CHUNK as u64 };
/// New chunks' plaintext bytes being named, sealed and sent at once, beside the [`PARALLEL`]
/// count (no chunk is larger, so one always fits).
pub const IN_FLIGHT: u64 = 4 * AVG_CHUNK as u64;
/// The largest size a ustar header's octal field holds (8 GiB - 1).
const MAX_OCTAL_SIZE: u64 = 0o77_777_777_777;
/// After this many splices in a row, the next backup reads the path whole: a change no
/// listing shows (a write through a shared mapping that moves no time) is bounded to a day
/// of hourly backups.
pub const MAX_SPLICES: u32 = 23;

/// Fetches old chunk `k` and checks its plaintext against the tree's digest.
async fn fetch_old(ctx: (Store, Keys), parent: (Entry, Hash, bool)) -> Result<Bytes, Fallback> {
    let ((store, keys), (entry, digest, encrypted)) = (ctx, parent);
    let object = entry.object();
    let (plain, got) = read_chunk(store, keys, entry, encrypted)
        .await
        .map_err(|e| Fallback(format!("reading an old chunk: {e}")))?;
    if got != digest {
        return Err(Fallback(format!("old chunk {object} does not match its digest")));
    }
    Ok(plain)
}

/// The old archive's chunks, read on demand, the last one kept; those `wanted` fetched ahead
/// in that order, within [`OLD_AHEAD`].
struct OldChunks<'a> {
    ctx: &'a Ctx<'a>,
    parent: &'a Parent,
    starts: Vec<u64>,
    cached: Option<(usize, Bytes)>,
    ahead: BoxStream<'static, (usize, Result<Bytes, Fallback>)>,
    peeked: Option<(usize, Result<Bytes, Fallback>)>,
    read: u64,
    chunks_read: usize,
}

impl<'a> OldChunks<'a> {
    fn new(ctx: &'a Ctx<'a>, parent: &'a Parent, starts: Vec<u64>, wanted: Vec<usize>) -> Self {
        let fetches: Vec<_> = wanted
            .into_iter()
            .filter_map(|k| {
                let e = *parent.index.entries.get(k)?;
                let digest = *parent.tree.digests.get(k)?;
                let fetch =
                    (k, (ctx.store.clone(), ctx.keys.clone()), (e, digest, parent.encrypted));
                Some((e.raw_size, fetch))
            })
            .collect();
        let mut ahead = read_ahead(fetches.into_iter(), OLD_AHEAD, |(k, c, p)| async move {
            (k, fetch_old(c, p).await)
        })
        .boxed();
        // Polled once now, it starts the first fetches while the changed entries' read is
        // set up (the stream keeps its place when this poll is dropped); what it gave, if
        // anything, is kept.
        let peeked = ahead.next().now_or_never().flatten();
        Self { ctx, parent, starts, cached: None, ahead, peeked, read: 0, chunks_read: 0 }
    }

    /// Chunk `k`: fetched ahead when it was foreseen, else now.
    async fn chunk(&mut self, k: usize) -> Result<Bytes, Fallback> {
        loop {
            if self.peeked.is_none() {
                self.peeked = self.ahead.next().await;
            }
            match self.peeked.take() {
                Some((at, bytes)) if at == k => return bytes,
                // Foreseen, but the cutting met an old cut before it.
                Some((at, _)) if at < k => continue,
                later => {
                    self.peeked = later;
                    break;
                }
            }
        }
        let e = self.parent.index.entries.get(k).copied();
        let e = e.ok_or_else(|| Fallback("an offset past the old archive's end".into()))?;
        let digest = self.parent.tree.digests[k];
        let ctx = (self.ctx.store.clone(), self.ctx.keys.clone());
        fetch_old(ctx, (e, digest, self.parent.encrypted)).await
    }

    /// The chunk holding old offset `at`, and `at`'s offset in it.
    async fn at(&mut self, at: u64) -> Result<(Bytes, usize), Fallback> {
        let k = match self.starts.binary_search(&at) {
            Ok(k) => k,
            Err(k) => k
                .checked_sub(1)
                .ok_or_else(|| Fallback("an offset before the first chunk".into()))?,
        };
        let chunk = match &self.cached {
            Some((c, bytes)) if *c == k => bytes.clone(),
            _ => {
                let plain = self.chunk(k).await?;
                self.read = self.read.saturating_add(plain.len() as u64);
                self.chunks_read = self.chunks_read.saturating_add(1);
                self.cached = Some((k, plain.clone()));
                plain
            }
        };
        let offset = usize::try_from(at - self.starts[k]).unwrap_or(usize::MAX);
        if offset >= chunk.len() {
            return Err(Fallback("an offset past the old archive's end".into()));
        }
        Ok((chunk, offset))
    }
}

/// The old chunks the cutting will most likely read, in order: around each run of changed
/// entries, the chunk the old bytes before it end in, and the first two after it.
fn foreseen(segs: &[Seg], starts: &[u64]) -> Vec<usize> {
    let chunk_of = |at: u64| starts.partition_point(|s| *s <= at).checked_sub(1);
    let mut wanted: Vec<usize> = vec![];
    let mut add = |k: Option<usize>| {
        if let Some(k) = k.filter(|k| *k < starts.len()) {
            if wanted.last().is_none_or(|last| *last < k) {
                wanted.push(k);
            }
        }
    };
    for (i, seg) in segs.iter().enumerate() {
        if matches!(seg.piece, Piece::Old { .. }) {
            continue;
        }
        if let Some(Seg { piece: Piece::Old { from, len }, .. }) =
            i.checked_sub(1).map(|p| &segs[p])
        {
            add(chunk_of((from + len).saturating_sub(1)));
        }
        if let Some(Seg { piece: Piece::Old { from, .. }, .. }) = segs.get(i + 1) {
            let k = chunk_of(*from);
            add(k);
            add(k.map(|k| k + 1));
        }
    }
    wanted
}

/// An archive read entry after entry: the container's `tar` of every changed file and link
/// (one exec), or the archive API's of one entry.
struct TarCursor {
    stream: BoxStream<'static, io::Result<Bytes>>,
    pending: BytesMut,
}

impl TarCursor {
    /// At least `n` bytes pending.
    async fn fill(&mut self, n: usize) -> Result<(), Fallback> {
        while self.pending.len() < n {
            match self.stream.next().await {
                Some(Ok(b)) => self.pending.extend_from_slice(&b),
                Some(Err(e)) => return Err(Fallback(format!("reading a changed entry: {e}"))),
                None => {
                    return Err(Fallback("the archive of the changed entries ended early".into()))
                }
            }
        }
        Ok(())
    }

    /// The next entry's header block, its name (from a long-name or PAX record when it has
    /// one) and data size; refused when an extended header says more than a name (a renamed
    /// header would lose it: a size, times out of the header's range, attributes).
    async fn next_header(&mut self) -> Result<([u8; 512], String, u64), Fallback> {
        let (mut name, mut pax_size): (Option<String>, Option<String>) = (None, None);
        loop {
            self.fill(BLOCK as usize).await?;
            let mut block = [0u8; 512];
            block.copy_from_slice(&self.pending.split_to(BLOCK as usize));
            if !crate::tarcheck::checksum_ok(&block) {
                return Err(Fallback("a changed entry's header does not add up".into()));
            }
            let size = crate::tarcheck::header_size(&block).map_err(Fallback)?;
            let kind = block[156];
            if !matches!(kind, b'x' | b'L') {
                // A size the header's octal field cannot hold goes in a PAX record or in
                // base-256, which a renamed header would not carry.
                if pax_size.is_some() || size > MAX_OCTAL_SIZE || block[124] & 0x80 != 0 {
                    return Err(Fallback("a changed file of 8 GiB or more".into()));
                }
                let name = name.unwrap_or_else(|| crate::tarcheck::block_name(&block));
                return Ok((block, name, size));
            }
            let want = size
                .checked_add(padding(size))
                .filter(|w| *w <= 1 << 20)
                .ok_or_else(|| Fallback("a long extended header".into()))?;
            self.fill(want as usize).await?;
            let meta = self.pending.split_to(want as usize);
            let data = &meta[..size as usize];
            if kind == b'L' {
                let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
                name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
                continue;
            }
            for (key, value) in crate::tarcheck::pax_records(data).map_err(Fallback)? {
                match key.as_str() {
                    "path" => name = Some(value),
                    "size" => pax_size = Some(value),
                    other => {
                        return Err(Fallback(format!(
                            "a changed entry carries {other:?}, which a renamed header would lose"
                        )))
                    }
                }
            }
        }
    }
}

/// How changed files and links are read.
enum Changed {
    /// All in one `tar` run by exec in the container (in walk order), and that exec.
    Exec(TarCursor, Option<steward_engine::ExecStream>),
    /// Each through the archive API (a container without `tar`, or too many for one command).
    Api,
}

/// Changed files and links read in one exec at most this many (their names are arguments).
const MAX_EXEC_NAMES: usize = 2_000;
const MAX_EXEC_NAME_BYTES: usize = 256 << 10;

impl Changed {
    /// One `tar` of every changed file and link, in order, when the container can.
    async fn start(ctx: &Ctx<'_>, segs: &[Seg], tar: bool) -> Self {
        let names: Vec<&str> = segs
            .iter()
            .filter_map(|s| match &s.piece {
                Piece::Read { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let bytes: usize = names.iter().map(|n| n.len() + 1).sum();
        if !tar || names.is_empty() || names.len() > MAX_EXEC_NAMES || bytes > MAX_EXEC_NAME_BYTES {
            return Changed::Api;
        }
        let mut cmd = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            r#"cd "$1" && shift && exec tar -cf - -- "$@""#.to_owned(),
            "steward-read".to_owned(),
            format!("{}/", parent_dir(ctx.path)),
        ];
        cmd.extend(names.iter().map(|n| (*n).to_owned()));
        let spec = steward_engine::ExecSpec {
            cmd,
            env: vec![steward_engine::listing::PATH.into()],
            user: Some("0".into()),
        };
        match ctx.engine.exec_stdout(ctx.container, &spec, 5).await {
            Ok(mut run) => {
                let stream = std::mem::replace(&mut run.stdout, futures::stream::empty().boxed());
                Changed::Exec(TarCursor { stream, pending: BytesMut::new() }, Some(run))
            }
            Err(e) => {
                tracing::debug!(error = %e, "no tar in the container: changed entries read one by one");
                Changed::Api
            }
        }
    }

    /// The header and data size of changed entry `name` (of `kind`), with the cursor its data
    /// comes from next.
    async fn open<'c>(
        &'c mut self,
        ctx: &Ctx<'_>,
        (name, stat): (&str, &Stat),
        one: &'c mut Option<TarCursor>,
    ) -> Result<([u8; 512], u64, &'c mut TarCursor), Fallback> {
        let exec = matches!(self, Changed::Exec(..));
        let cursor = match self {
            Changed::Exec(cursor, _) => cursor,
            Changed::Api => {
                let path = format!("{}/{name}", parent_dir(ctx.path));
                // The entry as listed, named as this read names it (its last component):
                // what Podman's archive read loses is put back from it.
                let base = name.rsplit('/').next().unwrap_or(name).to_owned();
                let listing = Listing::new(ctx.started, ctx.tar, vec![(base, stat.clone())]).ok();
                let stream = ctx.engine.download_path_listed(ctx.container, &path, listing);
                one.insert(TarCursor { stream, pending: BytesMut::new() })
            }
        };
        let (block, found, size) = cursor.next_header().await?;
        if exec && found.trim_end_matches('/') != name {
            return Err(Fallback(format!("tar wrote {found:?} where {name:?} was expected")));
        }
        Ok((block, size, cursor))
    }

    /// Whether the exec (if any) ended well: `tar` says when a file changed as it read it.
    async fn finish(self) -> Result<(), Fallback> {
        let Changed::Exec(cursor, Some(run)) = self else { return Ok(()) };
        drop(cursor);
        match run.finish().await {
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => Err(Fallback(format!(
                "tar of the changed entries exited with {} ({})",
                out.exit_code,
                out.tail.join(" | ")
            ))),
            Err(e) => Err(Fallback(format!("tar of the changed entries: {e}"))),
        }
    }
}

/// The directory the path is archived from (`/srv/data` → `/srv`; `/data` → ``).
fn parent_dir(path: &str) -> &str {
    path.trim_end_matches('/').rsplit_once('/').map_or("", |(p, _)| p)
}

/// A changed entry being copied into the new archive: its renamed header, then data, then
/// padding.
struct Reading {
    made: Bytes,
    data_left: u64,
    padding_left: u64,
    /// The source archive's padding after the data, skipped.
    skip_left: u64,
}

impl Reading {
    /// Reads the header of changed entry `name` and checks it is what the listing said.
    fn check(
        block: &mut [u8; 512],
        size: u64,
        name: &str,
        kind: Kind,
        listed: u64,
    ) -> Result<Self, Fallback> {
        let (typeflag, want) = match kind {
            Kind::File => (b'0', listed),
            _ => (b'2', 0),
        };
        let found_type = if block[156] == 0 { b'0' } else { block[156] };
        let size = if found_type == b'0' { size } else { 0 };
        if found_type != typeflag || size != want {
            return Err(Fallback(format!(
                "{name} changed since it was listed (type {:?}, {size} bytes; listed {:?}, {want} bytes)",
                found_type as char, typeflag as char
            )));
        }
        let mut made = pax_for(name).unwrap_or_default();
        rename(block, name);
        made.extend_from_slice(block);
        Ok(Self {
            made: Bytes::from(made),
            data_left: want,
            padding_left: padding(want),
            skip_left: padding(want),
        })
    }

    /// Up to `max` next bytes (never none before its end).
    async fn next(&mut self, cursor: &mut TarCursor, max: usize) -> Result<Bytes, Fallback> {
        if !self.made.is_empty() {
            let n = max.min(self.made.len());
            return Ok(self.made.split_to(n));
        }
        if self.data_left > 0 {
            if cursor.pending.is_empty() {
                cursor.fill(1).await?;
            }
            let left = usize::try_from(self.data_left).unwrap_or(usize::MAX);
            let n = max.min(cursor.pending.len()).min(left);
            self.data_left -= n as u64;
            let data = cursor.pending.split_to(n).freeze();
            if self.data_left == 0 {
                // The source's padding, so the cursor stands at the next header.
                let skip = self.skip_left as usize;
                cursor.fill(skip).await?;
                let _ = cursor.pending.split_to(skip);
                self.skip_left = 0;
            }
            return Ok(data);
        }
        let n = max.min(self.padding_left as usize);
        self.padding_left -= n as u64;
        Ok(Bytes::from(vec![0u8; n]))
    }
}

/// The new archive, read in order on demand.
struct Source<'a> {
    ctx: &'a Ctx<'a>,
    segs: &'a [Seg],
    /// Next byte to read (offset in the new archive).
    at: u64,
    seg: usize,
    old: OldChunks<'a>,
    changed: Changed,
    one: Option<TarCursor>,
    reading: Option<Reading>,
    guard: TarGuard,
    guard_failed: Option<String>,
    fresh_read: u64,
}

impl<'a> Source<'a> {
    fn current(&mut self) -> Option<&'a Seg> {
        let segs = self.segs;
        while segs.get(self.seg).is_some_and(|s| self.at >= s.at + s.len) {
            self.seg += 1;
            self.reading = None;
        }
        segs.get(self.seg)
    }

    /// Appends `want` bytes to `buf`.
    async fn read(&mut self, buf: &mut Vec<u8>, mut want: usize) -> Result<(), Fallback> {
        while want > 0 {
            let Some(seg) = self.current() else {
                return Err(Fallback("read past the new archive's end".into()));
            };
            let within = self.at - seg.at;
            let left = usize::try_from(seg.len - within).unwrap_or(usize::MAX);
            let got = match &seg.piece {
                Piece::Old { from, .. } => {
                    let (chunk, offset) = self.old.at(from + within).await?;
                    let n = want.min(left).min(chunk.len() - offset);
                    chunk.slice(offset..offset + n)
                }
                Piece::Made(bytes) => {
                    let offset = within as usize;
                    bytes.slice(offset..offset + want.min(left))
                }
                Piece::Read { name, stat } => {
                    if self.reading.is_none() {
                        let (mut block, found, _) =
                            self.changed.open(self.ctx, (name, stat), &mut self.one).await?;
                        let size = data_size(stat);
                        self.reading =
                            Some(Reading::check(&mut block, found, name, stat.kind, size)?);
                    }
                    let cursor = match (&mut self.changed, &mut self.one) {
                        (Changed::Exec(cursor, _), _) => cursor,
                        (Changed::Api, Some(cursor)) => cursor,
                        (Changed::Api, None) => return Err(Fallback("no reader".into())),
                    };
                    let reading =
                        self.reading.as_mut().ok_or_else(|| Fallback("no reader".into()))?;
                    reading.next(cursor, want.min(left)).await?
                }
            };
            if got.is_empty() {
                return Err(Fallback("an empty read".into()));
            }
            if !matches!(seg.piece, Piece::Old { .. }) {
                self.fresh_read = self.fresh_read.saturating_add(got.len() as u64);
                if self.guard_failed.is_none() {
                    self.guard_failed = self.guard.feed(&got).err();
                }
            }
            buf.extend_from_slice(&got);
            self.at += got.len() as u64;
            want -= got.len();
        }
        Ok(())
    }

    /// Skips `n` bytes of old archive without reading them.
    fn skip(&mut self, n: u64) -> Result<(), Fallback> {
        let end = self.at.checked_add(n).ok_or_else(|| Fallback("a skip past 2^64".into()))?;
        match self.current() {
            Some(Seg { at, len, piece: Piece::Old { .. } }) if end <= at + len => {
                self.at = end;
                Ok(())
            }
            _ => Err(Fallback("a skip over bytes that are not old".into())),
        }
    }
}

/// The old chunk that a cut at new offset `pos` would cut again, if any: `pos` lies in old
/// bytes at an old cut, and that chunk ends inside the same old bytes (the old archive's last
/// chunk only where both archives end with it, as it was cut by the end).
fn reusable(segs: &[Seg], starts: &[u64], parent: &Parent, pos: u64, total: u64) -> Option<usize> {
    let i = segs.partition_point(|s| s.at + s.len <= pos);
    let seg = segs.get(i)?;
    let Piece::Old { from, len } = &seg.piece else { return None };
    let old_at = from + (pos - seg.at);
    let k = starts.binary_search(&old_at).ok()?;
    let size = parent.index.entries[k].raw_size;
    let end = old_at.checked_add(size)?;
    // Every byte of the chunk must be these old bytes: one reaching past them would stand
    // for new bytes it does not hold (the old archive's last chunk too, when the archive
    // kept its length). And a cut is decided on the byte after it too: a chunk ending where
    // the old bytes end is cut again only if it ends both archives (checked below).
    let old_end = from.checked_add(*len)?;
    if end > old_end || (end == old_end && end != parent.raw_size) {
        return None;
    }
    if k + 1 == parent.index.entries.len() && !(end == parent.raw_size && pos + size == total) {
        return None;
    }
    Some(k)
}

/// Where the next cut after the start of `window` falls; `None` when more bytes are needed
/// to tell (`at_end`: the window holds the rest of the archive).
fn cut(window: &[u8], seed: u64, at_end: bool) -> Option<usize> {
    let cdc = FastCDC::with_level_and_seed(
        window,
        MIN_CHUNK,
        AVG_CHUNK,
        MAX_CHUNK,
        Normalization::Level1,
        seed,
    );
    let (_, n) = cdc.cut(0, window.len());
    (n < window.len() || at_end || window.len() >= MAX_CHUNK as usize).then_some(n)
}

type Stored = (Entry, u64, [u8; 32]);

/// Splices the new archive of `ctx.path` from `parent` and `listing`; when it cannot, why,
/// with the listing back (`None` only if it could not be made again, which a listing of
/// distinct names always can).
pub async fn splice(
    ctx: &Ctx<'_>,
    parent: &mut Parent,
    listing: Listing,
) -> Result<Result<Spliced, (Fallback, Option<Listing>)>, StoreError> {
    let (started, tar) = (listing.started, listing.tar);
    let (segs, tree, total) = match plan(parent, listing) {
        Ok(p) => p,
        Err(back) => return Ok(Err(back)),
    };
    // The plan holds what the old entries said and the new tree holds the listing's entries;
    // the rest reads only the old chunks. Of the three lists of every entry (listing, old
    // tree, new tree), one is left through the upload.
    drop(std::mem::take(&mut parent.tree.entries));
    Ok(match upload(ctx, parent, &segs, total, tar).await? {
        Ok(done) => Ok(Spliced { tree, ..done }),
        Err(f) => Err((f, unplan(started, tar, tree))),
    })
}

/// Cuts, reads and stores the new archive of `segs`: [`Spliced`] without its tree.
async fn upload(
    ctx: &Ctx<'_>,
    parent: &Parent,
    segs: &[Seg],
    total: u64,
    tar: bool,
) -> Result<Result<Spliced, Fallback>, StoreError> {
    let fresh_entries = segs.iter().filter(|s| !matches!(s.piece, Piece::Old { .. })).count();
    let mut starts = Vec::with_capacity(parent.index.entries.len());
    let mut at = 0u64;
    for e in &parent.index.entries {
        starts.push(at);
        at = at.saturating_add(e.raw_size);
    }
    let old = OldChunks::new(ctx, parent, starts.clone(), foreseen(segs, &starts));
    let changed = Changed::start(ctx, segs, tar).await;
    let mut source = Source {
        ctx,
        segs,
        at: 0,
        seg: 0,
        old,
        changed,
        one: None,
        reading: None,
        guard: TarGuard::new(ctx.path),
        guard_failed: None,
        fresh_read: 0,
    };
    let mut pending: FuturesOrdered<futures::future::BoxFuture<'_, Result<Stored, StoreError>>> =
        FuturesOrdered::new();
    // The plaintext bytes each pending chunk holds (0 for an old one taken unread), in order.
    let (mut holding, mut held) = (std::collections::VecDeque::<u64>::new(), 0u64);
    let (mut entries, mut digests, mut uploaded) = (vec![], vec![], Uploaded::default());
    let mut take = |stored: Stored, uploaded: &mut Uploaded| {
        let (entry, sent, digest) = stored;
        uploaded.chunks += 1;
        if sent > 0 {
            uploaded.new_chunks += 1;
            uploaded.bytes += sent;
            ctx.known.insert(entry);
        }
        entries.push(entry);
        digests.push(digest);
    };
    let (mut pos, mut buf) = (0u64, Vec::<u8>::new());
    while pos < total {
        if let Some(k) = reusable(segs, &starts, parent, pos, total) {
            let (e, digest) = (parent.index.entries[k], parent.tree.digests[k]);
            let size = e.raw_size;
            let from_buf = usize::try_from(size).unwrap_or(usize::MAX).min(buf.len());
            buf.drain(..from_buf);
            if size > from_buf as u64 {
                if let Err(f) = source.skip(size - from_buf as u64) {
                    return Ok(Err(f));
                }
            }
            pending.push_back(futures::future::ready(Ok((e, 0, digest))).boxed());
            holding.push_back(0);
            pos += size;
        } else {
            let rest = usize::try_from(total - pos).unwrap_or(usize::MAX);
            let n = loop {
                let at_end = buf.len() >= rest;
                if let Some(n) = cut(&buf[..buf.len().min(rest)], ctx.chunker.seed, at_end) {
                    break n;
                }
                let want = STEP.min(rest - buf.len()).min(MAX_CHUNK as usize - buf.len());
                if let Err(f) = source.read(&mut buf, want).await {
                    return Ok(Err(f));
                }
            };
            let plain: Vec<u8> = buf.drain(..n).collect();
            pos += n as u64;
            holding.push_back(n as u64);
            held = held.saturating_add(n as u64);
            let (naming, store, keys, level) =
                (ctx.chunker.clone(), ctx.store, ctx.keys, ctx.level);
            pending.push_back(
                async move {
                    let (id, digest, plain) = tokio::task::spawn_blocking(move || {
                        let digest: [u8; 32] = Sha256::digest(&plain).into();
                        (naming.id(&plain), digest, plain)
                    })
                    .await
                    .map_err(|e| StoreError::Unreadable {
                        key: store.key("chunks"),
                        reason: e.to_string(),
                    })?;
                    match ctx.known.get(&id) {
                        Some(e) => Ok((e, 0, digest)),
                        None => put_chunk(store, keys, id, plain, level)
                            .await
                            .map(|(e, sent)| (e, sent, digest)),
                    }
                }
                .boxed(),
            );
        }
        while pending.len() >= PARALLEL || (held > IN_FLIGHT && !pending.is_empty()) {
            if let Some(stored) = pending.next().await {
                held = held.saturating_sub(holding.pop_front().unwrap_or(0));
                take(stored?, &mut uploaded);
            }
        }
    }
    while let Some(stored) = pending.next().await {
        take(stored?, &mut uploaded);
    }
    let Source { changed, guard, guard_failed, old, fresh_read, .. } = source;
    if let Err(f) = changed.finish().await {
        return Ok(Err(f));
    }
    if let Some(why) = guard_failed.or_else(|| guard.finish().err()) {
        return Ok(Err(Fallback(format!(
            "a changed entry would not pass a restore's check: {why}"
        ))));
    }
    let checked = parent.checked;
    let read = old.read.saturating_add(fresh_read);
    let old_chunks = old.chunks_read;
    Ok(Ok(Spliced {
        entries,
        digests,
        // The plan's ([`splice`]).
        tree: vec![],
        size: total,
        uploaded,
        fresh_entries,
        read,
        old_chunks,
        checked,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(s: &str) -> steward_engine::listing::Time {
        steward_engine::listing::Time::parse(s).expect("a time")
    }

    fn stat(kind: Kind, size: u64, ctime: &str) -> Stat {
        Stat {
            kind,
            size,
            mtime: time("1700000000"),
            ctime: time(ctime),
            inode: 7,
            perms: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
        }
    }

    /// A parent whose archive holds `data` (a directory) then `entries` of 1 KiB each, listed
    /// at second 2000, and ends with 1 KiB of end-of-archive blocks.
    fn parent(entries: &[(&str, Stat)]) -> Parent {
        let mut tree = vec![TreeEntry {
            name: "data".into(),
            start: 0,
            len: 512,
            stat: Some(stat(Kind::Dir, 4096, "1000")),
        }];
        for (i, (name, s)) in entries.iter().enumerate() {
            tree.push(TreeEntry {
                name: (*name).into(),
                start: 512 + 1024 * i as u64,
                len: 1024,
                stat: Some(s.clone()),
            });
        }
        let raw_size = 512 + 1024 * entries.len() as u64 + 1024;
        Parent {
            index: Index { scheme: "sha256".into(), entries: vec![] },
            tree: Tree { version: 1, listed: 2000, entries: tree, digests: vec![], spliced: 0 },
            raw_size,
            encrypted: false,
            checked: true,
        }
    }

    fn listing(entries: &[(&str, Stat)]) -> Listing {
        let mut all: Vec<(String, Stat)> =
            entries.iter().map(|(n, s)| ((*n).to_owned(), s.clone())).collect();
        all.push(("data".into(), stat(Kind::Dir, 4096, "1000")));
        Listing::new(3000, true, all).expect("a listing")
    }

    fn kinds(segs: &[Seg]) -> Vec<String> {
        segs.iter()
            .map(|s| match &s.piece {
                Piece::Old { from, len } => format!("old {from}+{len}"),
                Piece::Made(b) => format!("made {}", b.len()),
                Piece::Read { name, .. } => format!("read {name}"),
            })
            .collect()
    }

    fn chunk(raw_size: u64) -> Entry {
        Entry { id: [0; 32], raw_size, stored_size: 1, stored_sha256: [0; 32] }
    }

    #[test]
    fn an_old_chunk_is_reused_only_over_old_bytes_the_last_one_too() {
        let a = stat(Kind::File, 100, "1500");
        let changed = stat(Kind::File, 100, "2500");
        let mut p = parent(&[("data/a", a.clone()), ("data/b", a.clone()), ("data/c", a.clone())]);
        // Two old chunks: the directory's header, then the rest to the end (the last).
        p.index.entries = vec![chunk(512), chunk(p.raw_size - 512)];
        let starts = [0, 512];
        // b rewritten with its size: the new archive is as long as the old one, and its
        // last chunk would run over b's new bytes.
        let now = listing(&[("data/a", a.clone()), ("data/b", changed), ("data/c", a.clone())]);
        let (segs, _, total) = plan(&p, now).expect("planned");
        assert_eq!(total, p.raw_size);
        assert_eq!(kinds(&segs), ["old 0+1536", "read data/b", "old 2560+2048"]);
        assert_eq!(reusable(&segs, &starts, &p, 512, total), None, "the last chunk spans b");
        // The first chunk ends inside the old bytes: reused.
        assert_eq!(reusable(&segs, &starts, &p, 0, total), Some(0));
        // Nothing changed: the last chunk ends both archives, and is reused.
        let same = listing(&[("data/a", a.clone()), ("data/b", a.clone()), ("data/c", a)]);
        let (segs, _, total) = plan(&p, same).expect("planned");
        assert_eq!(kinds(&segs), [format!("old 0+{}", p.raw_size)]);
        assert_eq!(reusable(&segs, &starts, &p, 512, total), Some(1));
    }

    #[test]
    fn only_entries_listed_as_before_and_settled_then_are_taken_unread() {
        let a = stat(Kind::File, 100, "1500");
        let racy = stat(Kind::File, 100, "2000");
        let p = parent(&[("data/a", a.clone()), ("data/b", racy.clone()), ("data/c", a.clone())]);
        // Unchanged a and c, b changed in the second the old listing began (its stat equal).
        let (segs, tree, total) =
            plan(&p, listing(&[("data/a", a.clone()), ("data/b", racy), ("data/c", a.clone())]))
                .expect("planned");
        assert_eq!(kinds(&segs), ["old 0+1536", "read data/b", "old 2560+2048"]);
        assert_eq!(total, 4608, "the same length: b's new entry is as long as its old one");
        assert_eq!(tree.iter().map(|e| e.start).collect::<Vec<_>>(), [0, 512, 1536, 2560]);

        // c's ctime moved (a chmod): read; a new directory: made; a gone: left out.
        let chmod = stat(Kind::File, 100, "2500");
        let (segs, _, _) = plan(
            &p,
            listing(&[
                ("data/c", chmod),
                ("data/b", a.clone()),
                ("data/new", stat(Kind::Dir, 0, "2500")),
            ]),
        )
        .expect("planned");
        assert_eq!(
            kinds(&segs),
            ["old 0+512", "read data/b", "read data/c", "made 512", "old 3584+1024"]
        );
    }

    #[test]
    fn the_new_tree_is_the_listing_itself_and_a_fallback_gives_the_listing_back() {
        let a = stat(Kind::File, 100, "1500");
        let p = parent(&[("data/a", a.clone()), ("data/c", a.clone())]);
        let b = stat(Kind::File, 100, "2500");
        let now = listing(&[("data/c", a.clone()), ("data/b", b), ("data/a", a.clone())]);
        let (_, tree, _) = plan(&p, now.clone()).expect("planned");
        let names: Vec<&str> = tree.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["data", "data/a", "data/b", "data/c"]);
        assert!(tree.iter().all(|e| e.stat.as_ref() == now.get(&e.name)));
        // Held to its length: it is held through the whole upload.
        assert_eq!(tree.capacity(), tree.len());
        // A splice that fails later makes the listing again from its tree, for the whole read.
        assert_eq!(unplan(now.started, now.tar, tree), Some(now));
        // One refused at once gives it back as it came.
        let refused = listing(&[("data/a", Stat { nlink: 2, ..a })]);
        let (_, back) = plan(&p, refused.clone()).expect_err("a hard link");
        assert_eq!(back, Some(refused));
    }

    #[test]
    fn what_the_archive_api_writes_otherwise_is_never_spliced() {
        let a = stat(Kind::File, 100, "1500");
        let p = parent(&[("data/a", a.clone())]);
        let linked = Stat { nlink: 2, ..a.clone() };
        assert!(plan(&p, listing(&[("data/a", linked)])).is_err(), "a hard link");
        let fifo = stat(Kind::Other, 0, "1500");
        assert!(plan(&p, listing(&[("data/a", a.clone()), ("data/p", fifo)])).is_err(), "a FIFO");
        // Most of the bytes changed: cheaper to read whole.
        let big = stat(Kind::File, 1 << 20, "2500");
        assert!(plan(&p, listing(&[("data/a", a), ("data/big", big)])).is_err(), "mostly new");
        // A day of splices in a row, or a parent whose entries did not all pass the rules.
        let mut tired = parent(&[("data/a", stat(Kind::File, 100, "1500"))]);
        tired.tree.spliced = MAX_SPLICES;
        assert!(plan(&tired, listing(&[("data/a", stat(Kind::File, 100, "1500"))])).is_err());
        let unchecked =
            Parent { checked: false, ..parent(&[("data/a", stat(Kind::File, 100, "1500"))]) };
        assert!(plan(&unchecked, listing(&[("data/a", stat(Kind::File, 100, "1500"))])).is_err());
        // An old archive without its end blocks is not trusted.
        let short =
            Parent { raw_size: 512 + 1024, ..parent(&[("data/a", stat(Kind::File, 100, "1500"))]) };
        assert!(plan(&short, listing(&[("data/a", stat(Kind::File, 100, "1500"))])).is_err());
    }

    #[test]
    fn the_old_chunks_around_each_change_are_foreseen_in_order() {
        // Old chunks at 0, 100, 200, 300, 400; the new archive: old 0..250, a changed
        // entry, old 300..420, a made header, old 420..500.
        let starts = [0, 100, 200, 300, 400];
        let seg = |at, len, piece| Seg { at, len, piece };
        let segs = [
            seg(0, 250, Piece::Old { from: 0, len: 250 }),
            seg(250, 10, Piece::Read { name: "data/x".into(), stat: stat(Kind::File, 1, "1") }),
            seg(260, 120, Piece::Old { from: 300, len: 120 }),
            seg(380, 512, Piece::Made(Bytes::from(vec![0u8; 512]))),
            seg(892, 80, Piece::Old { from: 420, len: 80 }),
        ];
        // Before x: the chunk holding 249 (2); after it: 3 and 4; before the header: the
        // chunk holding 419 (4, already there); after it: 4 and past the end.
        assert_eq!(foreseen(&segs, &starts), [2, 3, 4]);
    }

    /// The first header the cursor reads from `archive`.
    fn first_header(archive: Vec<u8>) -> Result<(String, u64), String> {
        let stream = futures::stream::once(async move { Ok(Bytes::from(archive)) }).boxed();
        let mut cursor = TarCursor { stream, pending: BytesMut::new() };
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(cursor.next_header()).map(|(_, name, size)| (name, size)).map_err(|f| f.0)
    }

    /// A PAX header carrying `records`, then a file header named `short` of `size` bytes.
    fn with_pax(records: &[(&str, &str)], short: &str, size: u64) -> Vec<u8> {
        let mut body = vec![];
        for (k, v) in records {
            let line = |n: usize| format!("{n} {k}={v}\n");
            let mut n = line(0).len();
            while line(n).len() != n {
                n = line(n).len();
            }
            body.extend_from_slice(line(n).as_bytes());
        }
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(body.len() as u64);
        pax.set_cksum();
        let mut out = pax.as_bytes().to_vec();
        out.extend_from_slice(&body);
        out.resize(out.len() + padding(body.len() as u64) as usize, 0);
        let mut file = tar::Header::new_ustar();
        file.set_path(short).expect("path");
        file.set_size(size);
        file.set_cksum();
        out.extend_from_slice(file.as_bytes());
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    #[test]
    fn a_changed_entry_whose_header_carries_more_than_a_name_is_read_whole() {
        let long = format!("data/{}", "n".repeat(120));
        assert_eq!(first_header(with_pax(&[("path", &long)], "x", 5)), Ok((long, 5)));
        // A size beyond the octal field (8 GiB or more): a renamed header would say 0.
        let huge = first_header(with_pax(&[("size", "9000000000")], "data/big", 0));
        assert!(huge.expect_err("refused").contains("8 GiB"));
        for key in ["mtime", "SCHILY.xattr.security.capability", "uname"] {
            let refused = first_header(with_pax(&[(key, "1")], "data/f", 1));
            assert!(refused.is_err(), "{key}");
        }
        let mut bad = with_pax(&[("path", "data/x")], "x", 1);
        bad[1024 + 10] ^= 1; // the file header's name, under its checksum
        assert!(first_header(bad).expect_err("refused").contains("add up"));
    }

    #[test]
    fn a_cut_found_in_a_short_window_is_the_cut_of_a_full_one() {
        let mut data = vec![0u8; 12 << 20];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for seed in [0u64, 42] {
            // The cuts of a whole stream, as the full read makes them.
            let whole: Vec<usize> = FastCDC::with_level_and_seed(
                &data,
                MIN_CHUNK,
                AVG_CHUNK,
                MAX_CHUNK,
                Normalization::Level1,
                seed,
            )
            .map(|c| c.length)
            .collect();
            // The same cuts found window by window, growing each by STEP.
            let (mut at, mut found) = (0usize, vec![]);
            while at < data.len() {
                let mut end = (at + STEP).min(data.len());
                let n = loop {
                    let window = &data[at..end];
                    if let Some(n) = cut(window, seed, end == data.len()) {
                        break n;
                    }
                    end = (end + STEP).min(data.len()).min(at + MAX_CHUNK as usize);
                };
                found.push(n);
                at += n;
            }
            assert_eq!(found, whole, "seed {seed}");
        }
    }

    #[test]
    fn a_renamed_header_is_valid_and_long_names_get_a_pax_record() {
        let long = format!("data/{}", "x".repeat(150));
        let stat = Stat {
            kind: Kind::Dir,
            size: 0,
            mtime: time("1700000000.5"),
            ctime: time("1700000000"),
            inode: 1,
            perms: 0o2755,
            uid: 1000,
            gid: 1000,
            nlink: 2,
        };
        for name in ["data/short", long.as_str()] {
            let made = dir_entry(name, &stat).expect("made");
            let mut archive = made.to_vec();
            archive.extend_from_slice(&[0u8; 1024]);
            let mut reader = tar::Archive::new(archive.as_slice());
            let entries: Vec<_> = reader.entries().expect("entries").collect();
            assert_eq!(entries.len(), 1);
            let e = entries.into_iter().next().expect("one").expect("readable");
            assert_eq!(e.path().expect("path").to_str(), Some(format!("{name}/").as_str()));
            assert_eq!(e.header().mode().expect("mode"), 0o2755);
            assert_eq!(e.header().mtime().expect("mtime"), 1_700_000_000);
            assert_eq!(made.len() as u64, name_prefix_len(&format!("{name}/")) + BLOCK);
        }
    }
}
