//! Podman 4.3 archives a stopped container's volume mount point (`/data`) with its entries
//! named `/`, `/a.txt`, `/sub/b` where Docker (and Podman for a running container) names them
//! `data/`, `data/a.txt`, `data/sub/b`: the same tree with the directory's own name left out.
//! [`rewritten`] puts the name back on the way, so the copy is the one Docker would give and a
//! restore (which refuses absolute names) accepts it.
//!
//! Only names change: each header's name (and a hard link's target, which names an entry of
//! the same archive) gets the directory's name in front; a symbolic link's target is the
//! link's content and stays. A name that no longer fits the header's 100 bytes goes into a
//! PAX `path` record, as Go's writer (Podman's) does itself. Entry data passes through as it
//! came, without being held. What this does not expect (GNU long names, which Go never
//! writes; an entry not named from `/` among ones that are; a PAX header over 1 MiB) ends the
//! stream with an error rather than a copy that would restore elsewhere.
//!
//! Podman's archive read also gives every entry uid and gid 0 (it chowns to the exec user,
//! as `podman cp` does), and rounds each modification time to the nearest second where
//! Docker cuts it (Go's tar writer rounds when no format is asked for): a file changed at
//! 12:00:00.7 restores as changed at 12:00:01. Given the path as listed in the container
//! ([`crate::listing`]), the same pass writes each entry's listed owner into its header (and
//! blanks the user and group names, which some readers prefer to the numbers), and its
//! listed second where the archive's is that second rounded.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;

/// A PAX header's records, in order.
type Records = Vec<(String, String)>;

/// A tar header block.
pub(crate) const BLOCK: usize = 512;
/// A PAX header's data is held whole to rewrite it: at most this much.
const MAX_PAX: u64 = 1 << 20;
/// The largest id the header's 8-byte octal field holds; larger ones go in PAX records.
const MAX_OCTAL_ID: u32 = 0o7_777_777;

/// An entry as listed in the container: what Podman's archive loses (owner, the time's
/// second), and what tells the listed entry from another made under its name since (type,
/// size, permission bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listed {
    pub uid: u32,
    pub gid: u32,
    /// The modification time's whole seconds (cut, as Docker's archive gives it).
    pub mtime: i64,
    pub kind: crate::listing::Kind,
    pub size: u64,
    pub perms: u32,
    /// Hard links: a file with more has its second name archived as a link to the first.
    pub links: u64,
    /// Inode number: tells a link entry's target as the listed file the name was a link to.
    pub inode: u64,
}

impl From<&crate::listing::Stat> for Listed {
    fn from(s: &crate::listing::Stat) -> Self {
        let mtime = s.mtime.seconds();
        let (kind, size, perms, links, inode) = (s.kind, s.size, s.perms, s.nlink, s.inode);
        Self { uid: s.uid, gid: s.gid, mtime, kind, size, perms, links, inode }
    }
}

/// Whether an archived entry (type flag, data size, permission bits) is the one `listed`.
fn is_listed(listed: &Listed, typeflag: u8, size: u64, perms: Option<u32>) -> bool {
    use crate::listing::Kind;
    let kind_matches = match (listed.kind, typeflag) {
        (Kind::File, b'0' | 0) => listed.size == size,
        // A hard-linked file's second name: a link entry without data (its target is
        // checked too: [`Renamer::own`]). Left with Podman's root, its extraction would give
        // the file, under both names, to root.
        (Kind::File, b'1') => listed.links > 1 && size == 0,
        (Kind::Dir, b'5') | (Kind::Link, b'2') => true,
        _ => false,
    };
    kind_matches && perms == Some(listed.perms)
}

/// Entries as listed, by archive name (`data/a/b`, without a directory's trailing `/`).
pub(crate) type Owners = std::collections::HashMap<String, Listed>;

/// `tar` (whose first `head` bytes were read already) with every entry renamed from `/` to
/// `base/` when a base is given, and given its owner in `owners` when they are; `what` names
/// the read in errors.
pub(crate) fn rewritten(
    head: BytesMut,
    tar: BoxStream<'static, io::Result<Bytes>>,
    base: Option<String>,
    owners: Option<Owners>,
    what: String,
) -> BoxStream<'static, io::Result<Bytes>> {
    let renamer = Renamer {
        input: tar,
        buf: head,
        pass: 0,
        ended: false,
        failed: false,
        base,
        owners,
        unlisted: 0,
        linked: Default::default(),
        what,
    };
    futures::stream::unfold(renamer, |mut r| async move {
        let item = r.next_out().await?;
        r.failed = item.is_err();
        Some((item, r))
    })
    .boxed()
}

struct Renamer {
    input: BoxStream<'static, io::Result<Bytes>>,
    /// Read and not yet handed on.
    buf: BytesMut,
    /// Bytes of entry data (with padding) still to hand on as they are.
    pass: u64,
    /// The end-of-archive block was seen: the rest passes as it is.
    ended: bool,
    failed: bool,
    /// Entries are renamed from `/` to `base/`.
    base: Option<String>,
    /// Entries get these owners.
    owners: Option<Owners>,
    /// Entries met that the owners' listing lacks (new since): they keep the archive's.
    unlisted: u64,
    /// Hard-linked files given their listed owner so far: a link entry gets its name's
    /// listed owner only when its target is one of them, with the inode the name had.
    linked: std::collections::HashSet<String>,
    what: String,
}

impl Renamer {
    fn error(&self, why: impl std::fmt::Display) -> io::Error {
        let whose = match self.base {
            Some(_) => "an archive named from / (Podman's, of a stopped container's volume)",
            None => "Podman's archive",
        };
        io::Error::other(format!("{}: {whose} {why}", self.what))
    }

    /// At least `n` bytes in `buf`, unless the input ends first (`false`).
    async fn fill(&mut self, n: usize) -> io::Result<bool> {
        while self.buf.len() < n {
            match self.input.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(e),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn next_out(&mut self) -> Option<io::Result<Bytes>> {
        if self.failed {
            return None;
        }
        if self.pass > 0 || self.ended {
            return self.pass_on().await;
        }
        match self.entry().await {
            Ok(Some(out)) => Some(Ok(out)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Entry data (or everything after the end block) as it came.
    async fn pass_on(&mut self) -> Option<io::Result<Bytes>> {
        if self.buf.is_empty() {
            match self.input.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(e)),
                None if self.ended => return None,
                None => return Some(Err(self.error("ends inside an entry's data"))),
            }
        }
        if self.ended && self.buf.iter().any(|b| *b != 0) {
            // Entries after an end block would pass unrenamed: a reader might take them.
            return Some(Err(self.error("has entries after its end")));
        }
        let n = if self.ended {
            self.buf.len()
        } else {
            usize::try_from(self.pass).unwrap_or(usize::MAX).min(self.buf.len())
        };
        if !self.ended {
            self.pass -= n as u64;
        }
        Some(Ok(self.buf.split_to(n).freeze()))
    }

    /// The next entry's headers, renamed; `None` at the input's clean end.
    async fn entry(&mut self) -> io::Result<Option<Bytes>> {
        if !self.fill(BLOCK).await? {
            if self.buf.is_empty() {
                return Ok(None);
            }
            return Err(self.error("ends inside a header"));
        }
        let mut header: [u8; BLOCK] = block(&self.buf.split_to(BLOCK));
        if header.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(Some(Bytes::copy_from_slice(&header)));
        }
        self.checked(&header)?;
        let mut pax: Option<([u8; BLOCK], Records)> = None;
        if header[156] == b'x' {
            let size = size_of(&header).ok_or_else(|| self.error("has a bad size field"))?;
            if size > MAX_PAX {
                return Err(self.error(format_args!("has a PAX header of {size} bytes")));
            }
            let padded = self.padded(size)?;
            if !self.fill(padded).await? {
                return Err(self.error("ends inside a PAX header"));
            }
            let data = self.buf.split_to(padded);
            let records = data
                .get(..usize::try_from(size).unwrap_or(usize::MAX))
                .and_then(parse_pax)
                .ok_or_else(|| self.error("has a PAX header that does not parse"))?;
            pax = Some((header, records));
            if !self.fill(BLOCK).await? {
                return Err(self.error("ends after a PAX header"));
            }
            header = block(&self.buf.split_to(BLOCK));
            self.checked(&header)?;
        }
        match header[156] {
            b'L' | b'K' => return Err(self.error("has a GNU long name (not renamed)")),
            b'x' => return Err(self.error("has two PAX headers in a row")),
            b'g' if pax.is_some() => return Err(self.error("has a PAX header before a global one")),
            b'g' => {
                // Global records apply to every entry: passed on as they are.
                let size = size_of(&header).ok_or_else(|| self.error("has a bad size field"))?;
                self.pass = self.padded(size)? as u64;
                return Ok(Some(Bytes::copy_from_slice(&header)));
            }
            _ => {}
        }
        let (pax_header, mut records) = match pax {
            Some((h, r)) => (Some(h), r),
            None => (None, vec![]),
        };
        let record = |records: &[(String, String)], key: &str| {
            records.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        };
        // A PAX size is the entry's (Go writes one for 8 GiB and more, with 0 in the header).
        let size = match record(&records, "size") {
            Some(v) => v.parse().map_err(|_| self.error(format_args!("has a PAX size {v:?}")))?,
            None => size_of(&header).ok_or_else(|| self.error("has a bad size field"))?,
        };
        let name = match record(&records, "path") {
            Some(name) => name,
            None => header_name(&header).ok_or_else(|| self.error("has a name not in UTF-8"))?,
        };
        let new_name = match &self.base {
            Some(_) => {
                let new_name = self.rename(&name)?;
                set_record(&mut records, "path", &new_name, new_name.len() > 100);
                set_field(&mut header[..100], &new_name);
                if is_ustar(&header) {
                    header[345..500].fill(0);
                }
                new_name
            }
            None => name,
        };
        let mut target = None;
        if header[156] == b'1' && (self.base.is_some() || self.owners.is_some()) {
            let link = match record(&records, "linkpath") {
                Some(link) => link,
                None => field(&header[157..257])
                    .ok_or_else(|| self.error("has a link target not in UTF-8"))?,
            };
            target = Some(match &self.base {
                Some(_) => {
                    let new_link = self.rename(&link)?;
                    set_record(&mut records, "linkpath", &new_link, new_link.len() > 100);
                    set_field(&mut header[157..257], &new_link);
                    new_link
                }
                None => link,
            });
        }
        self.own(&new_name, size, target.as_deref(), &mut header, &mut records);
        // Links, devices, directories and FIFOs carry no data whatever their size says (as
        // Go's reader takes them: what follows is the next header). The size written is 0,
        // so that every reader agrees (some skip a size's worth of data there).
        let header_only = matches!(header[156], b'1'..=b'6');
        if header_only {
            set_field(&mut header[124..136], &format!("{:011o}", 0));
            records.retain(|(k, _)| k != "size");
        }
        checksum(&mut header);
        let mut out = BytesMut::new();
        if !records.is_empty() {
            let data = format_pax(&records);
            let mut h = pax_header.unwrap_or_else(|| new_pax_header(&header));
            set_field(&mut h[124..136], &format!("{:011o}", data.len()));
            checksum(&mut h);
            out.extend_from_slice(&h);
            out.extend_from_slice(&data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.extend_from_slice(&header);
        self.pass = if header_only { 0 } else { self.padded(size)? as u64 };
        Ok(Some(out.freeze()))
    }

    /// Writes the listed owner of entry `name` (a link to `target` if a hard link) into its
    /// header (or records, for ids the header cannot hold), when owners are given.
    fn own(
        &mut self,
        name: &str,
        size: u64,
        target: Option<&str>,
        header: &mut [u8; BLOCK],
        records: &mut Records,
    ) {
        let Some(owners) = &self.owners else { return };
        let mode = octal(&header[100..108]);
        let perms = mode.and_then(|m| u32::try_from(m & 0o7777).ok());
        let name = name.trim_end_matches('/');
        let typeflag = header[156];
        // A link entry's owner and mode go onto its target's inode at extraction: only a
        // target that is the listed file this name was a link to (given its own listed owner
        // above, with the same inode) may take them. Another (a name swapped after the
        // listing for a link to a file of one's own) keeps root's, without set-id bits.
        let linked = |l: &Listed| {
            typeflag != b'1'
                || target.map(|t| t.trim_end_matches('/')).is_some_and(|t| {
                    self.linked.contains(t) && owners.get(t).is_some_and(|o| o.inode == l.inode)
                })
        };
        let listed = owners.get(name);
        let Some(&Listed { uid, gid, mtime, kind, links, .. }) =
            listed.filter(|l| is_listed(l, typeflag, size, perms) && linked(l))
        else {
            // Made or replaced since the listing: not the listed entry's owner. Podman's
            // (root) stays, and a set-id bit would give root's rights to whoever wrote it.
            if self.unlisted == 0 {
                tracing::warn!(read = %self.what, entry = name, "an entry was made or replaced after the path was listed: it keeps the owner Podman's archive gives (root), without set-id bits");
            }
            self.unlisted = self.unlisted.saturating_add(1);
            if let Some(mode) = mode.filter(|m| m & 0o6000 != 0) {
                set_field(&mut header[100..108], &format!("{:07o}", mode & !0o6000));
            }
            return;
        };
        if kind == crate::listing::Kind::File && links > 1 && typeflag != b'1' {
            self.linked.insert(name.to_owned());
        }
        for (key, id, at) in [("uid", uid, 108..116), ("gid", gid, 116..124)] {
            let fits = id <= MAX_OCTAL_ID;
            set_record(records, key, &id.to_string(), !fits);
            set_field(&mut header[at], &format!("{:07o}", if fits { id } else { 0 }));
        }
        // uname and gname (ustar's and GNU's): readers that map names take them first.
        header[265..329].fill(0);
        records.retain(|(k, _)| k != "uname" && k != "gname");
        // A time rounded up by one second is put back; one further off changed since the
        // listing (the archive's is newer), and one with a fraction is exact already.
        let archived = octal(&header[136..148]).and_then(|t| i64::try_from(t).ok());
        if let Some(archived) = archived {
            let exact = records.iter().any(|(k, _)| k == "mtime");
            if !exact && mtime.checked_add(1) == Some(archived) {
                set_field(&mut header[136..148], &format!("{mtime:011o}"));
            }
        }
    }

    /// `/` → `base/`, `/x` → `base/x`; a name with a `..` component is refused (it would
    /// leave `base/`).
    fn rename(&self, name: &str) -> io::Result<String> {
        let base = self.base.as_deref().unwrap_or_default();
        match name.strip_prefix('/') {
            Some(rest) if !rest.split('/').any(|c| c == "..") => Ok(format!("{base}/{rest}")),
            Some(_) => Err(self.error(format_args!("has an entry named {name:?}"))),
            None => Err(self.error(format_args!("also has an entry named {name:?}"))),
        }
    }

    /// `size` rounded up to whole blocks.
    fn padded(&self, size: u64) -> io::Result<usize> {
        size.checked_next_multiple_of(BLOCK as u64)
            .and_then(|p| usize::try_from(p).ok())
            .ok_or_else(|| self.error(format_args!("has an entry of {size} bytes")))
    }

    /// A header whose checksum is right (one that is not was damaged: renaming it would
    /// give it a right one).
    fn checked(&self, header: &[u8; BLOCK]) -> io::Result<()> {
        let stored = octal(&header[148..156]);
        let mut blank = *header;
        blank[148..156].fill(b' ');
        let sum: u64 = blank.iter().map(|b| u64::from(*b)).sum();
        if stored != Some(sum) {
            return Err(self.error("has a header whose checksum is wrong"));
        }
        Ok(())
    }
}

fn block(bytes: &[u8]) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b.copy_from_slice(&bytes[..BLOCK]);
    b
}

/// A NUL-terminated header field; `None` when it is not UTF-8 (never changed silently).
fn field(f: &[u8]) -> Option<String> {
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    String::from_utf8(f[..end].to_vec()).ok()
}

/// Whether the header is POSIX ustar (GNU's `ustar  ` keeps other fields where the prefix is).
fn is_ustar(header: &[u8; BLOCK]) -> bool {
    &header[257..263] == b"ustar\0"
}

/// The header's name, with the ustar prefix; `None` when it is not UTF-8.
pub(crate) fn header_name(header: &[u8; BLOCK]) -> Option<String> {
    let prefix = if is_ustar(header) { field(&header[345..500])? } else { String::new() };
    let name = field(&header[..100])?;
    Some(if prefix.is_empty() { name } else { format!("{prefix}/{name}") })
}

/// A NUL- or space-padded octal field.
fn octal(f: &[u8]) -> Option<u64> {
    u64::from_str_radix(field(f)?.trim_matches([' ', '\0']), 8).ok()
}

/// Writes `value` into `f`, cut to its length (a PAX record then holds it whole).
fn set_field(f: &mut [u8], value: &str) {
    f.fill(0);
    let v = value.as_bytes();
    let n = v.len().min(f.len());
    f[..n].copy_from_slice(&v[..n]);
}

/// Sets `key` to `value` where a record holds it already, or adds it when `needed`.
fn set_record(records: &mut Vec<(String, String)>, key: &str, value: &str, needed: bool) {
    match records.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value.to_owned(),
        None if needed => records.push((key.to_owned(), value.to_owned())),
        None => {}
    }
}

/// The size field: octal, or base-256 (a first byte with its high bit set) for large sizes.
fn size_of(header: &[u8; BLOCK]) -> Option<u64> {
    let f = &header[124..136];
    if f[0] & 0x80 != 0 {
        return f[1..].iter().try_fold(u64::from(f[0] & 0x7f), |acc, b| {
            acc.checked_mul(256)?.checked_add(u64::from(*b))
        });
    }
    let text = field(f)?;
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn checksum(header: &mut [u8; BLOCK]) {
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// `LEN key=value\n` records.
fn parse_pax(mut data: &[u8]) -> Option<Vec<(String, String)>> {
    let mut records = vec![];
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = std::str::from_utf8(&data[space + 1..len - 1]).ok()?;
        let (k, v) = record.split_once('=')?;
        // Readers take the last of two records of a key, this the first: neither is trusted.
        if records.iter().any(|(key, _)| key == k) {
            return None;
        }
        records.push((k.to_owned(), v.to_owned()));
        data = &data[len..];
    }
    Some(records)
}

fn format_pax(records: &[(String, String)]) -> Vec<u8> {
    let mut out = vec![];
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        // The length counts its own digits.
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        out.extend_from_slice(format!("{len}{body}").as_bytes());
    }
    out
}

/// A PAX header for `entry` (Go's form: `PaxHeaders.0/NAME`, the entry's mode and times).
fn new_pax_header(entry: &[u8; BLOCK]) -> [u8; BLOCK] {
    let mut h = *entry;
    let name = field(&entry[..100]).unwrap_or_default();
    let short = name.rsplit('/').find(|s| !s.is_empty()).unwrap_or("x");
    set_field(&mut h[..100], &format!("PaxHeaders.0/{short}"));
    h[156] = b'x';
    h[157..257].fill(0);
    h[345..500].fill(0);
    h
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt as _;
    use steward_testkit::tar::{archive, entry};

    use super::*;

    /// `tar` through the renamer, fed in chunks of `size`.
    async fn through(tar: &[u8], size: usize) -> io::Result<Vec<u8>> {
        let chunks: Vec<io::Result<Bytes>> =
            tar.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let out = rewritten(
            BytesMut::new(),
            futures::stream::iter(chunks).boxed(),
            Some("data".into()),
            None,
            "read /data of c".into(),
        );
        let parts: Vec<Bytes> = out.try_collect().await?;
        Ok(parts.concat())
    }

    /// Every entry's (path, kind, link, content) as the `tar` crate reads them.
    fn entries(tar: &[u8]) -> Vec<(String, u8, String, Vec<u8>)> {
        let mut a = tar::Archive::new(tar);
        let mut out = vec![];
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").to_string_lossy().into_owned();
            let link = e.link_name().expect("link").map(|l| l.to_string_lossy().into_owned());
            let kind = e.header().entry_type().as_byte();
            let mut data = vec![];
            std::io::Read::read_to_end(&mut e, &mut data).expect("data");
            out.push((path, kind, link.unwrap_or_default(), data));
        }
        out
    }

    #[tokio::test]
    async fn podmans_names_get_the_directorys_name_and_nothing_else_changes() {
        let long = format!("/{}", "n".repeat(97));
        let tar = archive(&[
            entry::dir("/"),
            entry::file("/a.txt", b"hello"),
            entry::dir("/sub"),
            entry::file("/sub/b", &vec![7u8; 1500]),
            entry::hardlink("/h", "/a.txt"),
            entry::symlink("/s", "/etc/passwd"),
            entry::file(&long, b"long"),
            entry::pax_path("/p-short", "/pax/named", b"p"),
        ]);
        let want = vec![
            ("data/".to_owned(), b'5', String::new(), vec![]),
            ("data/a.txt".into(), b'0', String::new(), b"hello".to_vec()),
            ("data/sub".into(), b'5', String::new(), vec![]),
            ("data/sub/b".into(), b'0', String::new(), vec![7u8; 1500]),
            ("data/h".into(), b'1', "data/a.txt".into(), vec![]),
            // A symbolic link's target is its content, not a name in the archive.
            ("data/s".into(), b'2', "/etc/passwd".into(), vec![]),
            (format!("data{long}"), b'0', String::new(), b"long".to_vec()),
            ("data/pax/named".into(), b'0', String::new(), b"p".to_vec()),
        ];
        let mut outputs = vec![];
        for size in [1, 7, 512, 4096, 1 << 20] {
            let out = through(&tar, size).await.expect("renamed");
            assert_eq!(entries(&out), want, "chunks of {size}");
            outputs.push(out);
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]), "the same bytes whatever the chunking");
    }

    #[tokio::test]
    async fn what_cannot_be_renamed_ends_the_stream_with_an_error() {
        let mixed = archive(&[entry::dir("/"), entry::file("elsewhere", b"x")]);
        let e = through(&mixed, 512).await.expect_err("mixed");
        assert!(e.to_string().contains("also has an entry named \"elsewhere\""), "{e}");
        let mut cut = archive(&[entry::dir("/"), entry::file("/a", &[1u8; 2000])]);
        cut.truncate(1200);
        let e = through(&cut, 100).await.expect_err("cut");
        assert!(e.to_string().contains("ends inside an entry's data"), "{e}");
        let gnu = archive(&[entry::dir("/"), entry::file(&format!("/{}", "g".repeat(120)), b"")]);
        let e = through(&gnu, 512).await.expect_err("GNU long name");
        assert!(e.to_string().contains("GNU long name"), "{e}");
    }

    /// Block `n` of `tar` with its size field set to `size` (checksum made right again).
    fn with_size(mut tar: Vec<u8>, n: usize, size: u64) -> Vec<u8> {
        let at = n * BLOCK;
        let mut header = block(&tar[at..at + BLOCK]);
        set_field(&mut header[124..136], &format!("{size:011o}"));
        checksum(&mut header);
        tar[at..at + BLOCK].copy_from_slice(&header);
        tar
    }

    #[tokio::test]
    async fn a_hostile_archive_never_passes_a_name_unrenamed() {
        // A directory claiming data: the next block is still a header, and renamed (a reader
        // takes it as one; skipped as data, it would have passed as `/hidden`).
        let tar = archive(&[entry::dir("/"), entry::dir("/d"), entry::file("/hidden", b"h")]);
        let out = through(&with_size(tar, 1, 512), 512).await.expect("renamed");
        let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["data/", "data/d", "data/hidden"]);
        // Out of the directory, a damaged header, entries after the end: refused.
        for (tar, why) in [
            (archive(&[entry::dir("/"), entry::file("/../etc/x", b"x")]), "\"/../etc/x\""),
            (archive(&[entry::dir("/"), entry::hardlink("/h", "/../x")]), "\"/../x\""),
            (
                {
                    let mut t = archive(&[entry::dir("/"), entry::file("/a", b"x")]);
                    t[BLOCK + 3] ^= 1;
                    t
                },
                "checksum is wrong",
            ),
            (
                {
                    let mut t = archive(&[entry::dir("/")]);
                    t.extend_from_slice(&archive(&[entry::file("/late", b"x")]));
                    t
                },
                "entries after its end",
            ),
        ] {
            let e = through(&tar, 4096).await.expect_err(why);
            assert!(e.to_string().contains(why), "{e}");
        }
        // A size that does not fit: an error, not an overflow.
        let tar = archive(&[entry::dir("/"), entry::file("/big", b"")]);
        let mut big = tar.clone();
        let at = BLOCK;
        big[at + 124] = 0xff;
        big[at + 125..at + 136].fill(0xff);
        let mut header = block(&big[at..at + BLOCK]);
        checksum(&mut header);
        big[at..at + BLOCK].copy_from_slice(&header);
        let e = through(&big, 4096).await.expect_err("too big");
        assert!(e.to_string().contains("bad size") || e.to_string().contains("bytes"), "{e}");
    }

    #[tokio::test]
    async fn a_pax_size_is_the_entrys() {
        // Go writes a file of 8 GiB or more with its size in a PAX record and 0 in the header.
        let mut tar = archive(&[entry::dir("/"), entry::pax_path("/f", "/f", &[9u8; 600])]);
        // The PAX header is block 1, its data block 2, the file's header block 3.
        let records = format_pax(&[("path".into(), "/f".into()), ("size".into(), "600".into())]);
        let mut data = records.clone();
        data.resize(BLOCK, 0);
        tar[2 * BLOCK..3 * BLOCK].copy_from_slice(&data);
        let tar = with_size(with_size(tar, 1, records.len() as u64), 3, 0);
        let out = through(&tar, 100).await.expect("renamed");
        assert_eq!(entries(&out)[1], ("data/f".into(), b'0', String::new(), vec![9u8; 600]));
    }

    #[test]
    fn pax_records_round_trip_with_their_self_counting_lengths() {
        let records = vec![("path".to_owned(), "x".repeat(95)), ("mtime".into(), "1.5".into())];
        let data = format_pax(&records);
        assert_eq!(parse_pax(&data), Some(records));
        assert_eq!(parse_pax(b"9 path=a\n"), Some(vec![("path".into(), "a".into())]));
        assert_eq!(parse_pax(b"99 path=a\n"), None);
        assert_eq!(parse_pax(b"9 path=a\n9 path=b\n"), None, "a key twice");
    }
}
