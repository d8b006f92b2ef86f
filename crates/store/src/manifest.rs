//! The manifest: what a backup holds, with a checksum of every stored object. It is uploaded
//! last; a backup without one is incomplete and is never listed as usable or restored.

use serde::{Deserialize, Serialize};
use steward_events::BackupReason;
use time::OffsetDateTime;

/// Name of the manifest inside a backup's directory.
pub const MANIFEST: &str = "manifest.json";
/// Written by a successful `verify`.
pub const VERIFIED: &str = "verified.json";
/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The format of a manifest with a component whose chunks are named by their digests
/// (`cdc2`, incremental backups that splice): builds before it refuse such a manifest, so
/// their chunk collection deletes nothing and their copy skips it (they would not see its
/// chunks). This build reads both.
pub const FORMAT_CHUNK_DIGESTS: u32 = 2;
/// Manifests are small; anything bigger is not one.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// One backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The backup's id (its directory).
    pub backup_id: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
    /// Why it was taken.
    pub reason: BackupReason,
    /// The Docker host it was taken from.
    pub docker_host: String,
    /// The host (`STEWARD_HOST`) whose engine it was taken from; none in manifests from
    /// before hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// What it holds.
    pub components: Vec<Component>,
}

/// What a component is, and what restoring it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// `pg_dump -Fc` of one database.
    Postgres {
        /// The database container.
        container: String,
        /// Its image at backup time (for a scratch server of the same version).
        image: String,
        /// `POSTGRES_USER`.
        user: String,
        /// `POSTGRES_DB`.
        database: String,
    },
    /// `pg_basebackup -Ft -X fetch` of a whole PostgreSQL cluster (`steward.backup.pitr`): a
    /// tar of the data directory's contents with the WAL it needs to be consistent, what a
    /// point-in-time recovery starts from. An older build cannot read a manifest holding one.
    PostgresBase {
        /// The database container.
        container: String,
        /// Its image at backup time (a server of the same major version is needed).
        image: String,
        /// `POSTGRES_USER`, who took it.
        user: String,
        /// The server's `data_directory` (a volume's or bind mount's root).
        data_dir: String,
        /// The timeline the backup started on.
        timeline: u32,
        /// Where WAL replay starts (`0/3000028`).
        start_lsn: String,
        /// The end of the WAL the backup needs to be consistent.
        stop_lsn: String,
    },
    /// One WAL segment (or timeline history file) of a `steward.backup.pitr` cluster, as
    /// `pg_receivewal` wrote it: not in a backup's manifest but in its own signed record
    /// beside the object (`wal/<container>/<file>.json`).
    Wal {
        /// The database container.
        container: String,
        /// The timeline the file belongs to.
        timeline: u32,
        /// The file's name in `pg_wal` (`000000010000000000000003`, `00000002.history`).
        file: String,
    },
    /// A tar of one path, as the Docker archive API gives it.
    Path {
        /// The container.
        container: String,
        /// The absolute path.
        path: String,
    },
    /// `docker inspect` of every container involved, as a JSON array: what a rebuild on an
    /// empty host needs (images by digest, env, mounts, networks, labels).
    Containers,
    /// The event stream and the state buckets, one JSON record a line (`steward_bus`'s
    /// export): the audit trail a rebuilt host gets back with `steward events import`.
    Events,
    /// The compose project's directory (`docker-compose.yml`, `.env`, templates), a tar read
    /// through a container that mounts it; only ever stored encrypted.
    Project {
        /// The container it was read through.
        container: String,
        /// The directory on the host (compose's working-directory label).
        working_dir: String,
    },
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Human name: `postgres/<container>`, `<container>:<path>`, `containers`.
    pub name: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: Kind,
    /// Object name relative to the prefix.
    pub object: String,
    /// `zstd`.
    pub encoding: String,
    /// Stored bytes.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes.
    pub stored_sha256: String,
    /// Bytes before compression.
    pub raw_size: u64,
    /// SHA-256 before compression.
    pub raw_sha256: String,
    /// For an archive: the version of the tar-entry rules every one of its entries passed as
    /// the backup was taken (the backup service's `tarcheck::RULES`). Signed with the rest, so
    /// a restore that finds its own version here need not open the archive to check its
    /// entries before it touches anything; absent in older manifests and for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries_checked: Option<u32>,
    /// For an incremental path: its tree (every entry's name, place in the archive and
    /// listing, sealed like the chunks), what the next backup reads instead of unchanged
    /// files. Absent in older manifests and for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeRef>,
}

/// A component's second object (an incremental path's tree), checked like the first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeRef {
    /// Object name relative to the prefix.
    pub object: String,
    /// Stored bytes.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes.
    pub stored_sha256: String,
}

impl Manifest {
    /// Total stored bytes.
    pub fn stored_size(&self) -> u64 {
        self.components.iter().map(|c| c.stored_size).sum()
    }

    /// Parses a manifest, refusing formats this build does not know.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable manifest: {e}"))?;
        if m.format != FORMAT && m.format != FORMAT_CHUNK_DIGESTS {
            return Err(format!(
                "manifest format {} (this build reads {FORMAT} and {FORMAT_CHUNK_DIGESTS})",
                m.format
            ));
        }
        Ok(m)
    }
}

/// A new backup id: its UTC start time (so ids sort by age) and a random suffix.
pub fn new_backup_id(at: OffsetDateTime) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", format_id_time(at), &suffix[..6])
}

fn format_id_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// The start time encoded in a backup id, if it is one.
pub fn time_of_id(id: &str) -> Option<OffsetDateTime> {
    let stamp = id.get(..16)?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(stamp, &format).ok().map(|t| t.assume_utc())
}

/// A safe object-name fragment for a container name or path.
pub fn slug(s: &str) -> String {
    let slug: String = s
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    if slug.is_empty() {
        "_".into()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_time_and_sort_by_it() {
        let t = time::macros::datetime!(2026-11-23 02:00:07 UTC);
        let id = new_backup_id(t);
        assert!(id.starts_with("20261123T020007Z-"), "{id}");
        assert_eq!(time_of_id(&id), Some(t));
        assert!(new_backup_id(t + time::Duration::seconds(1)) > id);
        assert_eq!(time_of_id("not-a-backup"), None);
    }

    #[test]
    fn manifests_round_trip_and_refuse_other_formats() {
        let m = Manifest {
            format: FORMAT,
            backup_id: "20261123T020007Z-abcdef".into(),
            taken_at: time::macros::datetime!(2026-11-23 02:00:07 UTC),
            reason: BackupReason::Schedule,
            docker_host: "unix:///var/run/docker.sock".into(),
            host: Some("vps1".into()),
            components: vec![Component {
                name: "app:/data".into(),
                kind: Kind::Path { container: "app".into(), path: "/data".into() },
                object: "x/app-data.tar.zst".into(),
                encoding: "zstd".into(),
                stored_size: 1,
                stored_sha256: "a".repeat(64),
                raw_size: 2,
                raw_sha256: "b".repeat(64),
                entries_checked: None,
                tree: None,
            }],
        };
        let bytes = serde_json::to_vec(&m).unwrap_or_default();
        assert_eq!(Manifest::parse(&bytes), Ok(m.clone()));
        let digests = Manifest { format: FORMAT_CHUNK_DIGESTS, ..m.clone() };
        let bytes = serde_json::to_vec(&digests).unwrap_or_default();
        assert_eq!(Manifest::parse(&bytes), Ok(digests));
        let other = serde_json::to_vec(&Manifest { format: 3, ..m }).unwrap_or_default();
        assert!(Manifest::parse(&other).is_err_and(|e| e.contains("format 3")));
        assert!(Manifest::parse(b"{").is_err());
    }

    #[test]
    fn a_manifest_from_before_hosts_reads_with_none() {
        let old = r#"{"format":1,"backup_id":"20261123T020007Z-abcdef",
            "taken_at":"2026-11-23T02:00:07Z","reason":"schedule",
            "docker_host":"unix:///var/run/docker.sock","components":[]}"#;
        let m = Manifest::parse(old.as_bytes()).expect("an old manifest reads");
        assert_eq!(m.host, None);
        let text = serde_json::to_string(&m).unwrap_or_default();
        assert!(!text.contains("\"host\""), "{text}");
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("/var/lib/data"), "var_lib_data");
        assert_eq!(slug("gitea"), "gitea");
        assert_eq!(slug("/"), "_");
    }
}
