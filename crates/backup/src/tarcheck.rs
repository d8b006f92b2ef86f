//! Every tar entry of a path's archive is checked before it reaches the engine: the archive of
//! `/data` (as the Docker archive API makes it: entries `data`, `data/…`) is extracted into
//! `/`, so an entry named `/etc/…`, `data/../…` or `etc/…`, a symbolic link pointing out of
//! `/data`, a hard link to something outside it or a device node would write where no backup
//! label allows.
//!
//! [`guarded`] passes a stream through a [`TarGuard`]: the bytes of a header (and of the GNU
//! long-name and PAX records before it) are held back until the header is checked, data bytes
//! pass once their header did, and the first bad entry ends the stream with an error.
//!
//! The guard reads headers as Go's `archive/tar` (the engine's) does: header checksums, the
//! ustar prefix, GNU `L`/`K` long names, PAX `path`/`linkpath`/`size`, no data for header-only
//! types; after the end-of-archive block only zeros may follow.

use std::io;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _};

const BLOCK: usize = 512;
/// Long names and PAX records are small; a bigger one is refused rather than buffered.
const MAX_META: u64 = 1 << 20;

/// The checking state of one archive.
#[derive(Debug)]
pub struct TarGuard {
    /// The path restored (`/data`): where links may point.
    dir: Vec<String>,
    /// Entries name the path's contents (`pg_basebackup`'s `PG_VERSION`, `base/1/…`), not
    /// the path itself (the archive API's `data/…`).
    contents: bool,
    /// Partial header block.
    block: Vec<u8>,
    /// Data (and padding) of a checked entry still to pass.
    skip: u64,
    /// A long-name or PAX entry being read.
    meta: Option<Meta>,
    long_name: Option<String>,
    long_link: Option<String>,
    pax_path: Option<String>,
    pax_link: Option<String>,
    pax_size: Option<u64>,
    /// Bytes seen.
    consumed: u64,
    /// Bytes that may be passed on (checked).
    safe: u64,
    /// The end-of-archive block was seen.
    ended: bool,
    /// Where the entry being read began (its first long-name or PAX header).
    entry_start: Option<u64>,
    /// Every entry's place, when recording ([`TarGuard::recording`]).
    seen: Option<Vec<Seen>>,
}

/// Where one entry lies in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its name, without a directory's trailing `/`.
    pub name: String,
    /// Offset of its first header.
    pub start: u64,
    /// Offset just past its data's padding.
    pub end: u64,
}

#[derive(Debug)]
struct Meta {
    kind: u8,
    data: Vec<u8>,
    remaining: u64,
    padding: u64,
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// `/data` → `["data"]`; `..` and `.` are never in a label's path.
fn components(path: &str) -> Vec<String> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").map(str::to_owned).collect()
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = text(field);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

/// A numeric field: octal, or base-256 when its first bit is set (GNU, for big sizes).
fn number(field: &[u8]) -> Result<u64, String> {
    match field.first() {
        Some(first) if first & 0x80 != 0 => {
            if first & 0x40 != 0 {
                return Err("a negative size".into());
            }
            let mut n: u64 = u64::from(first & 0x7f);
            for b in &field[1..] {
                n = n
                    .checked_mul(256)
                    .and_then(|n| n.checked_add(u64::from(*b)))
                    .ok_or("a size beyond 2^64")?;
            }
            Ok(n)
        }
        _ => octal(field).ok_or_else(|| "an unreadable size".into()),
    }
}

/// A PAX extended header's records (`LEN key=value\n`), in order.
pub fn pax_records(mut data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![];
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or("an unreadable PAX record")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|l| *l > space && *l <= data.len())
            .ok_or("an unreadable PAX record")?;
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").ok_or("an unreadable PAX record")?;
        let eq = record.iter().position(|b| *b == b'=').ok_or("an unreadable PAX record")?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
        out.push((key, value));
        data = &data[len..];
    }
    Ok(out)
}

/// Whether a header block's checksum matches (unsigned or, as old tars wrote it, signed).
pub fn checksum_ok(block: &[u8]) -> bool {
    if block.len() != BLOCK {
        return false;
    }
    let Some(stored) = octal(&block[148..156]) else { return false };
    let unsigned: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| if (148..156).contains(&i) { 32 } else { u64::from(*b) })
        .sum();
    let signed: i64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| if (148..156).contains(&i) { 32 } else { i64::from(*b as i8) })
        .sum();
    stored == unsigned || i64::try_from(stored).ok() == Some(signed)
}

/// A header block's size field (octal, or GNU base-256).
pub fn header_size(block: &[u8; BLOCK]) -> Result<u64, String> {
    number(&block[124..136])
}

impl TarGuard {
    /// A guard for the archive of absolute path `path`.
    pub fn new(path: &str) -> Self {
        Self {
            dir: components(path),
            contents: false,
            block: Vec::with_capacity(BLOCK),
            skip: 0,
            meta: None,
            long_name: None,
            long_link: None,
            pax_path: None,
            pax_link: None,
            pax_size: None,
            consumed: 0,
            safe: 0,
            ended: false,
            entry_start: None,
            seen: None,
        }
    }

    /// [`TarGuard::new`], also noting where each entry lies ([`Watch::seen`]).
    pub fn recording(path: &str) -> Self {
        Self { seen: Some(vec![]), ..Self::new(path) }
    }

    /// A guard for an archive of the contents of absolute path `path`, entries named
    /// relative to it (what `pg_basebackup -Ft` writes), extracted into the path itself.
    pub fn contents_of(path: &str) -> Self {
        Self { contents: true, ..Self::new(path) }
    }

    /// Bytes seen so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Bytes that may be passed on.
    pub fn safe(&self) -> u64 {
        self.safe
    }

    /// Checks the next bytes of the archive.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).unwrap_or(usize::MAX).min(bytes.len());
                bytes = &bytes[n..];
                self.advance(n);
                self.skip -= n as u64;
                self.safe = self.consumed;
                continue;
            }
            if let Some(meta) = &mut self.meta {
                let want = meta.remaining.saturating_add(meta.padding);
                let n = usize::try_from(want).unwrap_or(usize::MAX).min(bytes.len());
                let data = usize::try_from(meta.remaining).unwrap_or(usize::MAX).min(n);
                meta.data.extend_from_slice(&bytes[..data]);
                meta.remaining -= data as u64;
                meta.padding -= (n - data) as u64;
                bytes = &bytes[n..];
                let finished = meta.remaining == 0 && meta.padding == 0;
                self.advance(n);
                if finished {
                    self.end_meta()?;
                }
                continue;
            }
            let n = (BLOCK - self.block.len()).min(bytes.len());
            self.block.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.advance(n);
            if self.block.len() == BLOCK {
                let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
                self.header(&block)?;
            }
        }
        Ok(())
    }

    fn advance(&mut self, n: usize) {
        self.consumed = self.consumed.saturating_add(n as u64);
    }

    /// The archive ended: nothing may be left half-read.
    pub fn finish(&self) -> Result<(), String> {
        if !self.block.is_empty() || self.skip > 0 || self.meta.is_some() {
            return Err("the archive is cut short".into());
        }
        if self.long_name.is_some() || self.pax_path.is_some() {
            return Err("the archive ends after a long name without its entry".into());
        }
        Ok(())
    }

    fn header(&mut self, block: &[u8]) -> Result<(), String> {
        if block.iter().all(|b| *b == 0) {
            // End of archive (and the zeros that pad it to a record).
            self.ended = true;
            self.safe = self.consumed;
            return Ok(());
        }
        if self.ended {
            return Err("data after the end of the archive".into());
        }
        if octal(&block[148..156]).is_none() {
            return Err("an unreadable header checksum".into());
        }
        if !checksum_ok(block) {
            return Err("a header whose checksum does not match".into());
        }
        let kind = block[156];
        let size = number(&block[124..136])?;
        let header_at = self.consumed.saturating_sub(BLOCK as u64);
        if matches!(kind, b'L' | b'K' | b'x' | b'g') {
            self.entry_start.get_or_insert(header_at);
            if size > MAX_META {
                return Err(format!("a {size}-byte long name or PAX record"));
            }
            self.meta = Some(Meta { kind, data: vec![], remaining: size, padding: padding(size) });
            if size == 0 {
                self.end_meta()?;
            }
            return Ok(());
        }
        let name = match (self.pax_path.take(), self.long_name.take()) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => self.header_name(block),
        };
        let link = match (self.pax_link.take(), self.long_link.take()) {
            (Some(l), _) | (None, Some(l)) => l,
            (None, None) => text(&block[157..257]),
        };
        let size = self.pax_size.take().unwrap_or(size);
        let entry = self.check_name(&name).map_err(|e| format!("entry {name:?}: {e}"))?;
        let has_data = match kind {
            b'0' | 0 | b'7' => true,
            b'5' | b'6' => false,
            b'1' => {
                self.check_name(&link).map_err(|e| {
                    format!("entry {name:?}: a hard link to {link:?}, which is {e}")
                })?;
                false
            }
            b'2' => {
                self.check_symlink(&entry, &link)
                    .map_err(|e| format!("entry {name:?}: a symbolic link to {link:?}: {e}"))?;
                false
            }
            b'3' | b'4' => return Err(format!("entry {name:?}: a device node")),
            other => {
                return Err(format!(
                    "entry {name:?}: entry type {:?} is not allowed",
                    other as char
                ))
            }
        };
        // Go's reader gives header-only types no data, whatever their size says.
        if has_data {
            self.skip = size.checked_add(padding(size)).ok_or("a size beyond 2^64")?;
        }
        let start = self.entry_start.take().unwrap_or(header_at);
        if let Some(seen) = &mut self.seen {
            seen.push(Seen {
                name: name.trim_end_matches('/').to_owned(),
                start,
                end: self.consumed.saturating_add(self.skip),
            });
        }
        self.safe = self.consumed;
        Ok(())
    }

    /// The name, with the ustar prefix when the format has one (not GNU's, whose prefix field
    /// holds times).
    fn header_name(&self, block: &[u8]) -> String {
        block_name(block)
    }
}

/// A header block's name, with the ustar prefix when the format has one (not GNU's, whose
/// prefix field holds times).
pub fn block_name(block: &[u8]) -> String {
    let name = text(&block[0..100]);
    if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
        return name;
    }
    let prefix =
        if &block[508..512] == b"tar\0" { text(&block[345..476]) } else { text(&block[345..500]) };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

impl TarGuard {
    fn end_meta(&mut self) -> Result<(), String> {
        let Some(meta) = self.meta.take() else { return Ok(()) };
        let value = text(&meta.data);
        match meta.kind {
            b'L' => self.long_name = Some(value),
            b'K' => self.long_link = Some(value),
            b'x' => self.pax(&meta.data)?,
            // Global PAX headers: the engine ignores them.
            _ => {}
        }
        Ok(())
    }

    /// PAX records: `LEN key=value\n`.
    fn pax(&mut self, data: &[u8]) -> Result<(), String> {
        for (key, value) in pax_records(data)? {
            match key.as_ref() {
                "path" => self.pax_path = Some(value),
                "linkpath" => self.pax_link = Some(value),
                "size" => {
                    self.pax_size = Some(value.parse().map_err(|_| "an unreadable PAX size")?)
                }
                k if k.starts_with("GNU.sparse") => return Err("a sparse file".into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// An entry name must be the path's own directory or inside it: relative, no `..`.
    /// Returns its components.
    fn check_name(&self, name: &str) -> Result<Vec<String>, String> {
        if name.starts_with('/') {
            return Err("an absolute path".into());
        }
        let parts = components(name);
        if parts.iter().any(|p| p == "..") {
            return Err("a path with '..'".into());
        }
        let root = self.dir.last().ok_or("the root directory")?;
        if self.contents {
            return Ok(std::iter::once(root.clone()).chain(parts).collect());
        }
        if parts.first() != Some(root) {
            return Err(format!("outside {}", self.shown()));
        }
        Ok(parts)
    }

    /// A link at `entry` (archive components) may point only into the path.
    fn check_symlink(&self, entry: &[String], target: &str) -> Result<(), String> {
        let outside = || format!("it points outside {}", self.shown());
        if target.is_empty() {
            return Err("an empty target".into());
        }
        // Absolute: a path in the container, resolved from `/`; relative: from the link's
        // directory, which in the container is the parent of the path plus the entry's.
        let mut at: Vec<String> = vec![];
        if !target.starts_with('/') {
            at.extend(self.dir[..self.dir.len().saturating_sub(1)].iter().cloned());
            at.extend(entry[..entry.len().saturating_sub(1)].iter().cloned());
        }
        for part in target.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                if at.pop().is_none() {
                    return Err(outside());
                }
            } else {
                at.push(part.to_owned());
            }
        }
        if at.len() < self.dir.len() || at[..self.dir.len()] != self.dir[..] {
            return Err(outside());
        }
        Ok(())
    }

    fn shown(&self) -> String {
        format!("/{}", self.dir.join("/"))
    }
}

/// `stream` (the archive of `path`) with every entry checked before its bytes pass; the first
/// bad entry ends it with an `InvalidData` error naming `component`.
pub fn guarded<S>(stream: S, path: &str, component: &str) -> BoxStream<'static, io::Result<Bytes>>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    guarded_by(stream, TarGuard::new(path), component)
}

/// [`guarded`] for an archive of the path's contents ([`TarGuard::contents_of`]).
pub fn guarded_contents<S>(
    stream: S,
    path: &str,
    component: &str,
) -> BoxStream<'static, io::Result<Bytes>>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    guarded_by(stream, TarGuard::contents_of(path), component)
}

fn guarded_by<S>(
    stream: S,
    guard: TarGuard,
    component: &str,
) -> BoxStream<'static, io::Result<Bytes>>
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    struct State {
        inner: BoxStream<'static, io::Result<Bytes>>,
        guard: TarGuard,
        held: Vec<u8>,
        done: bool,
        component: String,
    }
    let state = State {
        inner: stream.boxed(),
        guard,
        held: vec![],
        done: false,
        component: component.to_owned(),
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            let refused = |s: &State, e: String| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: refused: the archive holds {e}", s.component),
                )
            };
            match s.inner.next().await {
                Some(Ok(chunk)) => {
                    let start = s.guard.consumed().saturating_sub(s.held.len() as u64);
                    if let Err(e) = s.guard.feed(&chunk) {
                        s.done = true;
                        let err = refused(&s, e);
                        return Some((Err(err), s));
                    }
                    let safe =
                        usize::try_from(s.guard.safe().saturating_sub(start)).unwrap_or(usize::MAX);
                    // Nothing held back: the checked part of the chunk goes on as it is (no
                    // copy of every byte), only its unchecked tail is held.
                    if s.held.is_empty() {
                        let n = safe.min(chunk.len());
                        s.held.extend_from_slice(&chunk[n..]);
                        if n == 0 {
                            continue;
                        }
                        return Some((Ok(chunk.slice(..n)), s));
                    }
                    s.held.extend_from_slice(&chunk);
                    let n = safe.min(s.held.len());
                    if n == 0 {
                        continue;
                    }
                    let rest = s.held.split_off(n);
                    let out = std::mem::replace(&mut s.held, rest);
                    return Some((Ok(Bytes::from(out)), s));
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.done = true;
                    if let Err(e) = s.guard.finish() {
                        let err = refused(&s, e);
                        return Some((Err(err), s));
                    }
                    if s.held.is_empty() {
                        return None;
                    }
                    return Some((Ok(Bytes::from(std::mem::take(&mut s.held))), s));
                }
            }
        }
    })
    .boxed()
}

/// The version of the rules a [`TarGuard`] applies. A backup records it for an archive whose
/// every entry passed ([`watched`]); a change that refuses more raises it, so a restore trusts
/// only verdicts of its own rules.
pub const RULES: u32 = 1;

/// What [`watched`] saw of an archive.
#[derive(Debug, Clone)]
pub struct Watch(std::sync::Arc<std::sync::Mutex<Watching>>);

#[derive(Debug)]
struct Watching {
    guard: TarGuard,
    refused: Option<String>,
    ended: bool,
}

impl Watch {
    fn with<T>(&self, f: impl FnOnce(&mut Watching) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// [`RULES`] when the archive ended and every entry passed; `None` otherwise.
    pub fn verdict(&self) -> Option<u32> {
        self.with(|w| (w.ended && w.refused.is_none()).then_some(RULES))
    }

    /// Why an entry did not pass, if one did not.
    pub fn refused(&self) -> Option<String> {
        self.with(|w| w.refused.clone())
    }

    /// Where each entry lay, when the guard was [`TarGuard::recording`] and the archive was
    /// read to its end without a refusal; taken once.
    pub fn seen(&self) -> Option<Vec<Seen>> {
        self.with(|w| if w.ended && w.refused.is_none() { w.guard.seen.take() } else { None })
    }
}

/// `stream` (an archive) passed on unchanged while `guard` reads it: what a backup uses to
/// record whether its archive would pass a restore's checks ([`Watch::verdict`]), without
/// refusing to store it (data that would not pass is still the operator's data).
pub fn watched<S>(stream: S, guard: TarGuard) -> (impl Stream<Item = io::Result<Bytes>>, Watch)
where
    S: Stream<Item = io::Result<Bytes>>,
{
    let watch = Watch(std::sync::Arc::new(std::sync::Mutex::new(Watching {
        guard,
        refused: None,
        ended: false,
    })));
    let (feed, end) = (watch.clone(), watch.clone());
    let stream = stream
        .inspect(move |item| {
            if let Ok(bytes) = item {
                feed.with(|w| {
                    if w.refused.is_none() {
                        w.refused = w.guard.feed(bytes).err();
                    }
                })
            }
        })
        .chain(futures::stream::poll_fn(move |_| {
            end.with(|w| {
                if !w.ended {
                    w.ended = true;
                    if w.refused.is_none() {
                        w.refused = w.guard.finish().err();
                    }
                }
            });
            std::task::Poll::Ready(None)
        }));
    (stream, watch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_testkit::tar::{entry, Entry};

    fn check(entries: &[Entry]) -> Result<(), String> {
        let archive = steward_testkit::tar::archive(entries);
        let mut guard = TarGuard::new("/data");
        // Fed in odd pieces: headers split across chunks.
        for piece in archive.chunks(301) {
            guard.feed(piece)?;
        }
        guard.finish()
    }

    /// What [`watched`] says of `archive` fed in pieces, and whether every byte passed
    /// unchanged; `whole`: read to its end (else the reader stops after the first piece).
    fn watch(archive: &[u8], whole: bool) -> (Option<u32>, Option<String>, bool) {
        let pieces: Vec<io::Result<Bytes>> =
            archive.chunks(301).map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        let (stream, watch) = watched(futures::stream::iter(pieces), TarGuard::new("/data"));
        let passed = futures::executor::block_on(async {
            let mut stream = std::pin::pin!(stream);
            let mut out = vec![];
            while let Some(Ok(bytes)) = stream.next().await {
                out.extend_from_slice(&bytes);
                if !whole {
                    break;
                }
            }
            out
        });
        (watch.verdict(), watch.refused(), passed == archive)
    }

    #[test]
    fn a_watched_archive_passes_unchanged_and_gets_a_verdict_only_when_whole_and_good() {
        let good = steward_testkit::tar::archive(&[
            entry::dir("data/"),
            entry::file("data/a.txt", &[7u8; 5000]),
            entry::symlink("data/up", "a.txt"),
        ]);
        assert_eq!(watch(&good, true), (Some(RULES), None, true));
        // Stopped early (a failed upload): no verdict.
        assert_eq!(watch(&good, false).0, None);
        // Cut short, or holding a link out of the path: passed on all the same, no verdict.
        let (verdict, why, passed) = watch(&good[..good.len() - 1500], true);
        assert_eq!((verdict, passed), (None, true));
        assert!(why.unwrap_or_default().contains("cut short"));
        let bad = steward_testkit::tar::archive(&[
            entry::dir("data/"),
            entry::symlink("data/out", "/etc"),
            entry::file("data/b.txt", b"after it"),
        ]);
        let (verdict, why, passed) = watch(&bad, true);
        assert_eq!((verdict, passed), (None, true));
        assert!(why.unwrap_or_default().contains("outside /data"));
    }

    #[test]
    fn a_docker_style_archive_passes() {
        let ok = [
            entry::dir("data/"),
            entry::file("data/a.txt", b"hello"),
            entry::dir("data/sub/"),
            entry::file(&format!("data/sub/{}", "x".repeat(150)), b"long name"),
            entry::symlink("data/sub/up", "../a.txt"),
            entry::symlink("data/abs", "/data/sub"),
            entry::hardlink("data/b.txt", "data/a.txt"),
        ];
        assert_eq!(check(&ok), Ok(()));
    }

    #[test]
    fn escaping_entries_are_refused() {
        let cases: Vec<(Entry, &str)> = vec![
            (entry::file("data/../etc/passwd", b"x"), "'..'"),
            (entry::file("/etc/passwd", b"x"), "absolute"),
            (entry::file("etc/passwd", b"x"), "outside /data"),
            (entry::file(&format!("data/{}/../../etc/x", "y".repeat(120)), b"x"), "'..'"),
            (entry::symlink("data/link", "/etc"), "outside /data"),
            (entry::symlink("data/link", "../etc"), "outside /data"),
            (entry::symlink("data/sub/link", "../../etc"), "outside /data"),
            (entry::symlink("data", "."), "outside /data"),
            (entry::hardlink("data/h", "etc/shadow"), "outside /data"),
            (entry::pax_path("data/ok", "../../etc/cron.d/x", b"x"), "'..'"),
            (entry::device("data/sda"), "device"),
        ];
        for (bad, why) in cases {
            let e = check(&[entry::dir("data/"), bad.clone()]).err().unwrap_or_default();
            assert!(e.contains(why), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn a_contents_archive_stays_inside_its_directory() {
        let check = |entries: &[Entry]| {
            let mut guard = TarGuard::contents_of("/var/lib/postgresql/data");
            guard.feed(&steward_testkit::tar::archive(entries))?;
            guard.finish()
        };
        let ok = [
            entry::file("backup_label", b"START WAL LOCATION"),
            entry::dir("./pg_wal/archive_status/"),
            entry::file("base/1/1259", b"x"),
            entry::symlink("pg_tblspc/16384", "/var/lib/postgresql/data/ts"),
            entry::hardlink("base/1/copy", "base/1/1259"),
        ];
        assert_eq!(check(&ok), Ok(()));
        let cases: Vec<(Entry, &str)> = vec![
            (entry::file("../etc/passwd", b"x"), "'..'"),
            (entry::file("/etc/passwd", b"x"), "absolute"),
            (entry::symlink("pg_tblspc/1", "/etc"), "outside /var/lib/postgresql/data"),
            (entry::symlink("pg_tblspc/1", "../../etc"), "outside"),
            (entry::hardlink("h", "../../../etc/shadow"), "'..'"),
            (entry::device("sda"), "device"),
        ];
        for (bad, why) in cases {
            let e = check(&[entry::file("PG_VERSION", b"15"), bad.clone()]).err();
            assert!(e.clone().unwrap_or_default().contains(why), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn a_corrupt_header_or_bytes_after_the_end_are_refused() {
        let mut archive = steward_testkit::tar::archive(&[entry::file("data/a", b"x")]);
        archive[10] ^= 1;
        let mut guard = TarGuard::new("/data");
        assert!(guard.feed(&archive).is_err_and(|e| e.contains("checksum")));
        let mut archive = steward_testkit::tar::archive(&[entry::file("data/a", b"x")]);
        let hidden = steward_testkit::tar::archive(&[entry::file("/etc/x", b"x")]);
        archive.extend_from_slice(&hidden);
        let mut guard = TarGuard::new("/data");
        assert!(guard.feed(&archive).is_err());
    }

    #[tokio::test]
    async fn the_guarded_stream_holds_a_header_back_until_it_is_checked() {
        let archive = steward_testkit::tar::archive(&[
            entry::file("data/a", &[7u8; 2000]),
            entry::file("/etc/passwd", b"root"),
        ]);
        // Everything up to the bad header passes; the header itself never does.
        let pieces: Vec<io::Result<Bytes>> =
            archive.chunks(100).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut out = guarded(futures::stream::iter(pieces), "/data", "app:/data");
        let mut passed = vec![];
        let mut error = None;
        while let Some(item) = out.next().await {
            match item {
                Ok(b) => passed.extend_from_slice(&b),
                Err(e) => error = Some(e.to_string()),
            }
        }
        assert_eq!(passed.len(), 512 + 2048, "only the good entry passed");
        assert!(error.is_some_and(|e| e.contains("app:/data") && e.contains("absolute")));
    }

    /// Checked parts of a piece pass without a copy, unchecked tails are held: whatever the
    /// cut, a good archive comes out byte for byte, and a bad header never does.
    #[tokio::test]
    async fn the_guarded_stream_passes_a_good_archive_unchanged_whatever_the_pieces() {
        let good = steward_testkit::tar::archive(&[
            entry::file("data/a", &[7u8; 2000]),
            entry::file("data/b", &[8u8; 5000]),
            entry::file("data/c", b""),
        ]);
        let mut bad = good[..good.len() - 1024].to_vec();
        bad.extend_from_slice(&steward_testkit::tar::archive(&[entry::file("../x", b"x")]));
        for size in [1, 100, 301, 512, 513, 4096, good.len()] {
            let run = |archive: Vec<u8>| async move {
                let pieces: Vec<io::Result<Bytes>> =
                    archive.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
                let mut out = guarded(futures::stream::iter(pieces), "/data", "app:/data");
                let (mut passed, mut error) = (vec![], None);
                while let Some(item) = out.next().await {
                    match item {
                        Ok(b) => passed.extend_from_slice(&b),
                        Err(e) => error = Some(e.to_string()),
                    }
                }
                (passed, error)
            };
            let (passed, error) = run(good.clone()).await;
            assert_eq!(error, None, "pieces of {size}");
            assert!(passed == good, "pieces of {size}: {} of {} bytes", passed.len(), good.len());
            let (passed, error) = run(bad.clone()).await;
            assert!(error.is_some(), "pieces of {size}: the bad archive passed");
            // The piece holding the bad header is refused whole: its checked head may go too.
            assert!(passed.len() <= good.len() - 1024, "pieces of {size}: past the bad header");
            assert!(bad.starts_with(&passed), "pieces of {size}: changed bytes");
        }
    }
}
