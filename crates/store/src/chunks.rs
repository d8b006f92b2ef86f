//! The chunk store's format: incremental path backups are a list of content-defined chunks
//! (an index object in the backup's directory, whose SHA-256 the signed manifest holds), each
//! chunk stored once under `chunks/` and shared by every backup that contains it.
//!
//! A chunk object is named by the SHA-256 of its stored bytes (`chunks/<2 hex>/<64 hex>`),
//! so an object never changes under a name (two uploads of one name are the same bytes) and
//! anyone can check it. The index maps each chunk's *id* (a keyed hash of its plaintext, the
//! key that finds a chunk again in the next backup) to the object holding it.
//!
//! Invariants: no compression or encryption here (the backup service's); an index parses only
//! if every line is well formed and sizes are bounded, so a reader allocates at most
//! [`MAX_STORED_CHUNK`] per chunk.

/// Where chunk objects live, under the prefix (not a backup id, so listings skip it).
pub const CHUNKS_DIR: &str = "chunks";
/// First line of an index.
const HEADER: &str = "steward-chunks 1";
/// A chunk's plaintext is at most this long (the chunker's maximum is smaller).
pub const MAX_RAW_CHUNK: u64 = 8 << 20;
/// A chunk's stored bytes are at most this long (zstd's worst case plus age's overhead).
pub const MAX_STORED_CHUNK: u64 = MAX_RAW_CHUNK + (1 << 20);

/// A 32-byte hash (a chunk's id, a SHA-256), held as bytes: a backup holds several per
/// chunk of every retained backup, and as hex text each was four times larger.
pub type Hash = [u8; 32];

/// One chunk of a component, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Keyed hash of the plaintext: what finds it again in the next backup.
    pub id: Hash,
    /// Plaintext bytes.
    pub raw_size: u64,
    /// Stored bytes.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes: the object's name.
    pub stored_sha256: Hash,
}

impl Entry {
    /// The object holding this chunk.
    pub fn object(&self) -> String {
        object(&self.stored_sha256)
    }
}

/// `hash` in lowercase hex, as indexes and object names write it.
pub fn to_hex(hash: &Hash) -> String {
    hex::encode(hash)
}

/// The hash lowercase hex `s` writes (64 digits), if it is one.
pub fn from_hex(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    (is_hex64(s) && hex::decode_to_slice(s, &mut out).is_ok()).then_some(out)
}

/// A component's chunks, in order, and how their ids were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// `hmac-sha256:<key id>` or `sha256`: ids of two indexes compare only under one scheme.
    pub scheme: String,
    /// The chunks.
    pub entries: Vec<Entry>,
}

/// The object of the chunk whose stored bytes have SHA-256 `sha256`.
pub fn object(sha256: &Hash) -> String {
    let hex = to_hex(sha256);
    format!("{CHUNKS_DIR}/{}/{hex}", hex.get(..2).unwrap_or("__"))
}

/// The stored SHA-256 a chunk object's name says, if it is one.
pub fn sha256_of_object(name: &str) -> Option<Hash> {
    let rest = name.strip_prefix(CHUNKS_DIR)?.strip_prefix('/')?;
    let (dir, hash) = rest.split_once('/')?;
    (hash.get(..2) == Some(dir)).then(|| from_hex(hash)).flatten()
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Index {
    /// The index as stored (before compression): a header, the scheme, one chunk a line.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!("{HEADER}\n{}\n", self.scheme).into_bytes();
        for e in &self.entries {
            out.extend_from_slice(
                format!(
                    "{} {} {} {}\n",
                    to_hex(&e.id),
                    e.raw_size,
                    e.stored_size,
                    to_hex(&e.stored_sha256)
                )
                .as_bytes(),
            );
        }
        out
    }

    /// Parses an index, refusing anything malformed or out of bounds.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the chunk index is not text")?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(format!("not a chunk index (expected {HEADER:?} first)"));
        }
        let scheme = lines.next().ok_or("the chunk index has no id scheme")?.to_owned();
        if scheme != "sha256" && !scheme.starts_with("hmac-sha256:") {
            return Err(format!("unknown chunk id scheme {scheme:?}"));
        }
        let mut entries = vec![];
        for (n, line) in lines.enumerate() {
            let bad = |what: &str| format!("chunk index line {}: {what}", n + 3);
            let fields: Vec<&str> = line.split(' ').collect();
            let [id, raw, stored, sha] = fields.as_slice() else {
                return Err(bad("expected 4 fields"));
            };
            let size = |s: &str, max: u64| {
                s.parse::<u64>().ok().filter(|v| *v > 0 && *v <= max).ok_or_else(|| bad("bad size"))
            };
            let (Some(id), Some(sha)) = (from_hex(id), from_hex(sha)) else {
                return Err(bad("bad hash"));
            };
            entries.push(Entry {
                id,
                raw_size: size(raw, MAX_RAW_CHUNK)?,
                stored_size: size(stored, MAX_STORED_CHUNK)?,
                stored_sha256: sha,
            });
        }
        Ok(Self { scheme, entries })
    }

    /// The plaintext length of the whole component; `None` on overflow.
    pub fn raw_size(&self) -> Option<u64> {
        self.entries.iter().try_fold(0u64, |sum, e| sum.checked_add(e.raw_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> Entry {
        Entry {
            id: [n; 32],
            raw_size: 1 << 20,
            stored_size: 1000,
            stored_sha256: [n.wrapping_add(1); 32],
        }
    }

    #[test]
    fn indexes_round_trip() {
        let index = Index { scheme: "hmac-sha256:0011".into(), entries: vec![entry(1), entry(2)] };
        assert_eq!(Index::parse(&index.to_bytes()), Ok(index.clone()));
        assert_eq!(index.raw_size(), Some(2 << 20));
        let empty = Index { scheme: "sha256".into(), entries: vec![] };
        assert_eq!(Index::parse(&empty.to_bytes()), Ok(empty));
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let good = String::from_utf8(
            Index { scheme: "sha256".into(), entries: vec![entry(1)] }.to_bytes(),
        )
        .unwrap_or_default();
        for bad in [
            good.replace("steward-chunks 1", "steward-chunks 2"),
            good.replace("sha256\n", "md5\n"),
            good.replace(" 1048576 ", " 999999999999 "),
            good.replace(" 1048576 ", " 0 "),
            good.replace(" 1000 ", " -1 "),
            good.replace(&"02".repeat(32), "../../etc/passwd"),
            format!("{good}extra\n"),
        ] {
            assert!(Index::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_names_carry_the_stored_hash() {
        let e = entry(7);
        assert_eq!(e.object(), format!("chunks/08/{}", "08".repeat(32)));
        assert_eq!(sha256_of_object(&e.object()), Some(e.stored_sha256));
        assert_eq!(sha256_of_object(&format!("chunks/0A/{}", "0A".repeat(32))), None);
        assert_eq!(sha256_of_object("chunks/09/0808"), None);
        assert_eq!(sha256_of_object(&format!("chunks/09/{}", "08".repeat(32))), None);
        assert_eq!(sha256_of_object("20261123T020007Z-abcdef/manifest.json"), None);
    }
}
