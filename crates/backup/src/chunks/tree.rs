//! An incremental path's tree: each archive entry's name, its place in the stored archive and
//! its listing when the backup was taken, and each chunk's plaintext SHA-256. The next backup
//! of the path reads it to take unchanged entries from this backup's chunks instead of the
//! engine ([`super::splice`]).
//!
//! Stored beside the index, compressed and sealed like a chunk (it names every file), its
//! size and SHA-256 in the signed manifest ([`TreeRef`]); refused unless it matches them and
//! is consistent with its index. A restore never needs it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use steward_store::chunks::{Hash, Index};
use steward_store::manifest::TreeRef;
use steward_store::store::{Store, StoreError};

use crate::encryption::Keys;
use steward_engine::listing::Stat;

/// A tree unpacks to at most this much JSON (about 2 million entries).
const MAX_TREE_RAW: u64 = 512 << 20;
/// Stored trees are at most this long.
const MAX_TREE_STORED: usize = 256 << 20;
const VERSION: u32 = 1;

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Archive name without a directory's trailing `/` (`data/a/b`).
    pub name: String,
    /// Offset of its first header (a PAX or long-name header when it has one) in the archive.
    pub start: u64,
    /// Its bytes: headers, data and padding.
    pub len: u64,
    /// Its listing when the backup was taken; `None` when the listing did not have it (then
    /// the next backup reads it again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<Stat>,
}

/// A path's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Format version.
    pub version: u32,
    /// The listing's clock: an entry whose ctime second is this or later may have changed
    /// after it was read, so it is read again next time.
    pub listed: i64,
    /// Entries in archive order.
    pub entries: Vec<TreeEntry>,
    /// Plaintext SHA-256 of each chunk of the index, in order (hex in the stored tree).
    #[serde(with = "hex_digests")]
    pub digests: Vec<Hash>,
    /// Backups in a row that spliced up to this one (0: this one read the path whole).
    #[serde(default)]
    pub spliced: u32,
}

impl Tree {
    /// The object beside index `index` (`…/path-x-y.chunks.zst` → `…/path-x-y.tree.zst`).
    pub fn object_for(index: &str) -> String {
        format!("{}.tree.zst", index.strip_suffix(".chunks.zst").unwrap_or(index))
    }

    /// Whether it describes `index` of `raw_size` bytes: a digest per chunk, entries in
    /// order, apart, and inside the archive.
    pub fn consistent(&self, index: &Index, raw_size: u64) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "tree version {} (this backup service reads {VERSION})",
                self.version
            ));
        }
        // Each digest is 32 bytes by its type: a stored tree with one that is not 64
        // lowercase hex digits does not parse (`hex_digests`).
        if self.digests.len() != index.entries.len() {
            return Err("the tree's chunk digests do not match its index".into());
        }
        // Entries (the path itself at least) one after the other from the start, then the
        // end-of-archive blocks.
        if self.entries.is_empty() {
            return Err("the tree has no entries".into());
        }
        let mut at = 0u64;
        for e in &self.entries {
            let end = e.start.checked_add(e.len).ok_or("an entry beyond 2^64")?;
            if e.start != at || end > raw_size || e.len == 0 {
                return Err(format!("entry {:?} is out of place in the tree", e.name));
            }
            at = end;
        }
        match raw_size.checked_sub(at) {
            Some(trailer) if (1024..=64 << 10).contains(&trailer) => Ok(()),
            _ => Err("the tree's entries do not end where the archive's end blocks begin".into()),
        }
    }
}

/// The digests as a list of hex texts, read without holding the texts.
mod hex_digests {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use steward_store::chunks::{from_hex, to_hex, Hash};

    pub fn serialize<S: Serializer>(digests: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(digests.iter().map(to_hex))
    }

    /// One digest, from its hex text.
    struct Digest(Hash);

    impl<'de> serde::Deserialize<'de> for Digest {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Text;
            impl Visitor<'_> for Text {
                type Value = Digest;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a SHA-256 in lowercase hex")
                }
                fn visit_str<E: Error>(self, v: &str) -> Result<Digest, E> {
                    from_hex(v).map(Digest).ok_or_else(|| E::custom("not a SHA-256 in hex"))
                }
            }
            d.deserialize_str(Text)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Vec<Hash>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of SHA-256s in hex")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Hash>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(Digest(d)) = seq.next_element()? {
                    out.push(d);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(List)
    }
}

/// Compresses and seals `tree`, stores it as `object` and returns its reference. Written
/// into the compressor as it is serialised: a whole JSON copy (about 230 bytes per entry,
/// grown by doubling) was the largest thing a splice held.
pub async fn put(
    store: &Store,
    keys: &Keys,
    object: &str,
    tree: Tree,
    level: i32,
) -> Result<TreeRef, StoreError> {
    use std::io::Write as _;
    let failed = |e: &dyn std::fmt::Display| StoreError::Unreadable {
        key: store.key(object),
        reason: format!("writing the tree: {e}"),
    };
    let sealing = keys.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        let mut packer = zstd::stream::write::Encoder::new(vec![], level)?;
        {
            let mut writer = std::io::BufWriter::new(&mut packer);
            serde_json::to_writer(&mut writer, &tree)?;
            writer.flush()?;
        }
        drop(tree);
        sealing.seal_bytes(packer.finish()?)
    })
    .await
    .map_err(|e| failed(&e))?
    .map_err(|e| failed(&e))?;
    let reference = TreeRef {
        object: object.to_owned(),
        stored_size: sealed.len() as u64,
        stored_sha256: hex::encode(Sha256::digest(&sealed)),
    };
    store.put(object, Bytes::from(sealed)).await?;
    Ok(reference)
}

/// The tree `reference` names, refused unless its bytes are the signed ones; `encrypted`:
/// sealed (opening it needs an identity).
pub async fn get(
    store: &Store,
    keys: &Keys,
    reference: &TreeRef,
    encrypted: bool,
) -> Result<Tree, String> {
    let limit = usize::try_from(reference.stored_size)
        .ok()
        .filter(|l| *l <= MAX_TREE_STORED)
        .ok_or("the tree is too large")?;
    let body = store
        .get_small(&reference.object, limit)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the tree is missing from the bucket")?;
    let sha = hex::encode(Sha256::digest(&body));
    if body.len() as u64 != reference.stored_size || sha != reference.stored_sha256 {
        return Err("the tree does not match the signed manifest".into());
    }
    let keys = keys.clone();
    tokio::task::spawn_blocking(move || {
        // Parsed as it unpacks: the JSON is never held whole.
        let unpack = |from: &mut dyn std::io::Read| {
            let decoder = zstd::stream::read::Decoder::new(from).map_err(|e| e.to_string())?;
            let mut json = std::io::BufReader::new(std::io::Read::take(decoder, MAX_TREE_RAW + 1));
            let tree = serde_json::from_reader::<_, Tree>(&mut json);
            if json.get_ref().limit() == 0 {
                return Err("the tree unpacks to more than 512 MiB".to_owned());
            }
            tree.map_err(|e| match e.classify() {
                serde_json::error::Category::Io => format!("the tree does not unpack: {e}"),
                _ => format!("an unreadable tree: {e}"),
            })
        };
        if encrypted {
            unpack(&mut keys.open_reader(body.as_slice())?)
        } else {
            unpack(&mut body.as_slice())
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_store::chunks::Entry;

    fn entry(name: &str, start: u64, len: u64) -> TreeEntry {
        TreeEntry { name: name.into(), start, len, stat: None }
    }

    #[test]
    fn a_tree_must_describe_its_index_exactly() {
        let index = Index {
            scheme: "sha256".into(),
            entries: vec![Entry {
                id: [0xaa; 32],
                raw_size: 3072,
                stored_size: 10,
                stored_sha256: [0xbb; 32],
            }],
        };
        let tree = |entries: Vec<TreeEntry>| Tree {
            version: VERSION,
            listed: 1,
            entries,
            digests: vec![[0xcc; 32]],
            spliced: 0,
        };
        let good = tree(vec![entry("data", 0, 512), entry("data/a", 512, 1536)]);
        assert_eq!(good.consistent(&index, 3072), Ok(()));
        // A gap, an overlap, no end blocks, an empty tree (the whole archive as "end").
        assert!(tree(vec![entry("data", 0, 512), entry("data/a", 1024, 1024)])
            .consistent(&index, 3072)
            .is_err());
        assert!(tree(vec![entry("data", 0, 1024), entry("data/a", 512, 1536)])
            .consistent(&index, 3072)
            .is_err());
        assert!(tree(vec![entry("data", 0, 512), entry("data/a", 512, 2560)])
            .consistent(&index, 3072)
            .is_err());
        assert!(tree(vec![]).consistent(&index, 3072).is_err());
        let mut no_digest = good.clone();
        no_digest.digests.clear();
        assert!(no_digest.consistent(&index, 3072).is_err());
    }

    #[test]
    fn digests_are_stored_as_hex_and_read_back_as_bytes() {
        let tree = Tree {
            version: VERSION,
            listed: 1,
            entries: vec![entry("data", 0, 512)],
            digests: vec![[0xcc; 32], [0x01; 32]],
            spliced: 2,
        };
        let json = serde_json::to_string(&tree).unwrap_or_default();
        assert!(
            json.contains(&format!(
                "\"digests\":[\"{}\",\"{}\"]",
                "cc".repeat(32),
                "01".repeat(32)
            )),
            "{json}"
        );
        let back: Tree = serde_json::from_reader(json.as_bytes()).expect("reads back");
        assert_eq!(back, tree);
        // Not hex, short, upper case (never written): refused, the path is then read whole.
        for bad in ["zz".repeat(32), "cc".repeat(31), "CC".repeat(32)] {
            let hostile = json.replace(&"cc".repeat(32), &bad);
            assert!(serde_json::from_reader::<_, Tree>(hostile.as_bytes()).is_err(), "{bad}");
        }
    }
}
