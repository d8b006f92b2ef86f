//! What a path holds, read without reading its files: one record per entry (type, size,
//! times, inode, mode, owner, link count), listed by `find` inside the running container (GNU
//! `find -printf`, or busybox's `find -exec stat`). An incremental backup compares it with the
//! previous backup's tree and reads through the archive API only what changed (the backup
//! crate's splice); on Podman, whose archive read gives every entry root's owner, the owners
//! listed are put back in the archive's headers ([`crate::Engine::download_path`]).
//!
//! A listing is a hint, never trusted for content: anything odd in it (an unparsable or
//! duplicated record, a name outside the path, an entry type other than file, directory or
//! symbolic link, a hard-linked file) makes the backup read the whole path instead.

use crate::{Engine, ExecSpec};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};

/// Listing text beyond this (about a million entries) is not held: the path is read whole.
const MAX_LISTING: usize = 128 << 20;
/// What runs as root in the app's container is found in the system's directories only, not
/// in a directory of the image's `PATH` that the app could write.
pub const PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// `$1` is the path. The first line names the record format, the clock (seconds) before the
/// walk began and whether `tar` is there (changed entries are then read by one exec); records
/// follow, NUL-terminated from GNU find, newline-terminated from busybox's stat (whose names
/// cannot hold a newline unnoticed: see [`parse`]).
/// Without the tools it needs it exits 127, as a shell does for a missing command (and the
/// engines do for a missing shell: Docker says 126, Podman 127). With `$2` = `resolved` (a
/// one-shot's listing, whose root is another image's) the path must resolve to itself, its
/// directory through no symbolic link, else it exits 3: a link there resolves in the one-shot's
/// image, not in the app's container that the archive API reads.
pub(crate) const SCRIPT: &str = r#"set -u
for tool in find date; do
  command -v "$tool" >/dev/null 2>&1 || { echo "steward-listing: no $tool" >&2; exit 127; }
done
if [ "${2:-}" = resolved ]; then
  d=$1
  if [ -L "$d" ] || [ ! -d "$d" ]; then d=${1%/*}; fi
  [ -n "$d" ] || d=/
  [ "$(cd "$d" 2>/dev/null && pwd -P)" = "$d" ] \
    || { echo "steward-listing: $1 does not resolve to itself (a symbolic link, or missing)" >&2; exit 3; }
fi
tar=no
command -v tar >/dev/null 2>&1 && tar=tar
if find "$1" -maxdepth 0 -printf '' >/dev/null 2>&1; then
  printf 'steward-listing 1 nul %s %s\n' "$(date +%s)" "$tar"
  exec find "$1" -printf '%y %s %T@ %C@ %i %m %U %G %n %p\0'
fi
command -v stat >/dev/null 2>&1 || { echo "steward-listing: no stat" >&2; exit 127; }
printf 'steward-listing 1 line %s %s\n' "$(date +%s)" "$tar"
exec find "$1" -exec stat -c '%f %s %Y %Z %i %u %g %h %n' {} +
"#;

/// An entry's type, as far as a listing needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Link,
    /// A socket: the archive API leaves it out, and so does a listing.
    Socket,
    /// Anything else (device, FIFO, socket): never spliced.
    Other,
}

/// One entry as listed. Two listings of an unchanged entry are equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// Its type.
    pub kind: Kind,
    /// Bytes (a file's data).
    pub size: u64,
    /// Modification time as listed.
    pub mtime: Time,
    /// Status change time as listed: changes with every write, chmod, chown or rename.
    pub ctime: Time,
    /// Inode number.
    pub inode: u64,
    /// Permission bits (with set-id and sticky bits).
    pub perms: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links.
    pub nlink: u64,
}

/// A listed time: whole seconds since 1970 and nanoseconds, as `find` (`1700000000.5000000000`)
/// or busybox's `stat` (`1700000000`) printed it. Held as numbers, not the text: a path's
/// listing, its previous tree and its new tree are all in memory during a splice, three
/// times per entry. Written to a tree as text (`secs` or `secs.nnnnnnnnn`), so that trees
/// written before read alike; a tree read by a service that compares the text instead only
/// reads the entry again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    secs: i64,
    nanos: u32,
}

impl Time {
    /// Parses digits, optionally a `.` and digits (at most 18 before it; beyond nine after
    /// it, only the first nine count: no filesystem keeps finer times).
    pub fn parse(s: &str) -> Option<Self> {
        let (whole, fraction) = s.split_once('.').unwrap_or((s, "0"));
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !(digits(whole) && digits(fraction) && whole.len() <= 18) {
            return None;
        }
        let nanos = fraction
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(9)
            .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
        Some(Self { secs: whole.parse().ok()?, nanos })
    }

    /// Its whole seconds.
    pub fn seconds(&self) -> i64 {
        self.secs
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.nanos {
            0 => write!(f, "{}", self.secs),
            n => write!(f, "{}.{n:09}", self.secs),
        }
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("an unreadable time {text:?}")))
    }
}

/// A path's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The container's clock (seconds) before the walk began: an entry changed in or after
    /// that second may look unchanged to the next listing (the splice's rule).
    pub started: i64,
    /// The container has `tar`.
    pub tar: bool,
    /// Entries by archive name (`data`, `data/a/b`: as the archive API names them, without a
    /// directory's trailing `/`), each once, in [`walk_order`], held to their number: a
    /// splice holds a listing through its upload, and a hash table cost about twice this
    /// per entry.
    entries: Vec<(String, Stat)>,
}

/// Sorts archive names as the archive API walks a path: a directory, then its entries by
/// name (`data`, `data/a`, `data/a/b`, `data/a.txt`).
pub fn walk_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

impl Listing {
    /// A listing of `entries` (in any order); refused when one names an entry twice.
    pub fn new(started: i64, tar: bool, mut entries: Vec<(String, Stat)>) -> Result<Self, String> {
        entries.sort_by(|a, b| walk_order(&a.0, &b.0));
        if let Some(twice) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("{:?} is listed twice", twice[0].0));
        }
        entries.shrink_to_fit();
        Ok(Self { started, tar, entries })
    }

    /// Entry `name`'s listing.
    pub fn get(&self, name: &str) -> Option<&Stat> {
        let at = self.entries.binary_search_by(|(n, _)| walk_order(n, name)).ok()?;
        self.entries.get(at).map(|(_, stat)| stat)
    }

    /// How many entries it has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Its entries in walk order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Stat)> {
        self.entries.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// Its entries in walk order, owned.
    pub fn into_entries(self) -> Vec<(String, Stat)> {
        self.entries
    }
}

/// The archive name of absolute `listed` under `root` (`/srv/data/a` under `/srv/data` →
/// `data/a`), if it is `root` or inside it.
fn archive_name(root: &str, listed: &str) -> Option<String> {
    let root = root.trim_end_matches('/');
    let base_at = root.rfind('/')? + 1;
    let rest = listed.strip_prefix(root)?;
    if !(rest.is_empty() || rest.starts_with('/')) || rest.ends_with('/') {
        return None;
    }
    let name = format!("{}{rest}", &root[base_at..]);
    (!name.split('/').any(|c| c.is_empty() || c == "." || c == "..")).then_some(name)
}

fn octal(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok()
}

/// A GNU record: `%y %s %T@ %C@ %i %m %U %G %n %p`.
fn gnu(record: &str) -> Option<(String, Stat)> {
    let mut f = record.splitn(10, ' ');
    let kind = match f.next()? {
        "f" => Kind::File,
        "d" => Kind::Dir,
        "l" => Kind::Link,
        "s" => Kind::Socket,
        _ => Kind::Other,
    };
    fields(kind, None, &mut f)
}

/// A busybox record: `%f %s %Y %Z %i %u %g %h %n` (raw mode in hex).
fn busybox(record: &str) -> Option<(String, Stat)> {
    let mut f = record.splitn(9, ' ');
    let mode = u32::from_str_radix(f.next()?, 16).ok()?;
    let kind = match mode & 0o170000 {
        0o100000 => Kind::File,
        0o040000 => Kind::Dir,
        0o120000 => Kind::Link,
        0o140000 => Kind::Socket,
        _ => Kind::Other,
    };
    fields(kind, Some(mode), &mut f)
}

/// The fields both records share after the type: size, times, inode, the permission bits
/// (the GNU record's own field, or of busybox's `mode`), owner, links, then the name.
fn fields<'a>(
    kind: Kind,
    mode: Option<u32>,
    f: &mut impl Iterator<Item = &'a str>,
) -> Option<(String, Stat)> {
    let (size, mtime, ctime) =
        (f.next()?.parse().ok()?, Time::parse(f.next()?)?, Time::parse(f.next()?)?);
    let inode = f.next()?.parse().ok()?;
    let perms = match mode {
        Some(mode) => mode & 0o7777,
        None => octal(f.next()?)?,
    };
    let stat = Stat {
        kind,
        size,
        mtime,
        ctime,
        inode,
        perms,
        uid: f.next()?.parse().ok()?,
        gid: f.next()?.parse().ok()?,
        nlink: f.next()?.parse().ok()?,
    };
    Some((f.next()?.to_owned(), stat))
}

/// Parses what [`SCRIPT`] printed for `root`.
pub fn parse(root: &str, out: &[u8]) -> Result<Listing, String> {
    let newline = out.iter().position(|b| *b == b'\n').ok_or("no header line")?;
    let head = std::str::from_utf8(&out[..newline]).map_err(|_| "an unreadable header line")?;
    let fields: Vec<&str> = head.split(' ').collect();
    let (nul, started, tar) = match fields.as_slice() {
        ["steward-listing", "1", "nul", t, tar] => (true, t, *tar == "tar"),
        ["steward-listing", "1", "line", t, tar] => (false, t, *tar == "tar"),
        _ => return Err(format!("an unknown header line {head:?}")),
    };
    let started = started.parse::<i64>().map_err(|_| "an unreadable clock")?;
    let body = &out[newline + 1..];
    let separator = if nul { 0 } else { b'\n' };
    let body = body.strip_suffix(&[separator]).unwrap_or(body);
    let mut entries = vec![];
    if body.is_empty() {
        return Err("no entries (not even the path itself)".into());
    }
    for record in body.split(|b| *b == separator) {
        let record = std::str::from_utf8(record)
            .map_err(|_| "a name that is not UTF-8 (the archive's name may differ)")?;
        let (listed, stat) = if nul { gnu(record) } else { busybox(record) }.ok_or_else(|| {
            format!("an unreadable record {:?}", record.chars().take(120).collect::<String>())
        })?;
        let name = archive_name(root, &listed)
            .ok_or_else(|| format!("{listed:?} is not inside {root}"))?;
        if stat.kind == Kind::Socket {
            continue;
        }
        entries.push((name, stat));
    }
    Listing::new(started, tar, entries)
}

/// Lists `path` of `container` (as root, like the archive API reads it): by exec in it when
/// it runs and its image can (a shell, `find`, `date`); otherwise (stopped, or an image
/// without them: distroless, `scratch`) in a one-shot container sharing its volumes and
/// mounts read-only ([`list_in_oneshot`]), of Steward's own image when this process runs in
/// a container of the engine, else of the container's own image when it is stopped. That
/// needs the one-shot to see what the container sees ([`shared_at`], and the path resolving
/// to itself there): elsewhere it would list its image's files, the volume beneath a tmpfs,
/// or ids of another user namespace. A one-shot's listing says no `tar`: it is gone by the
/// time changed entries are read, and the container's own `tar` is unknown.
pub async fn list(engine: &Engine, container: &str, path: &str) -> Result<Listing, String> {
    let path = normal(path);
    let docker = engine.client().map_err(|e| e.to_string())?;
    let c = engine
        .timed(engine.inspect_container(&docker, container))
        .await
        .map_err(|e| format!("cannot inspect the container: {e}"))?;
    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    let cannot = if running {
        match list_by_exec(engine, container, path, false).await {
            Ok(listing) => return Ok(listing),
            Err(Unlisted::Failed(why)) => return Err(why),
            Err(Unlisted::Unrunnable(why)) => format!("its image cannot list it ({why})"),
        }
    } else {
        "it is stopped".to_owned()
    };
    shared_at(&c, path).map_err(|why| format!("{cannot}, and {why}"))?;
    let own = engine.own_image().await.map_err(|e| format!("{cannot}, and {e}"))?;
    let image = match (own, c.image) {
        (Some(own), _) => own,
        (None, Some(image)) if !running => image,
        _ => {
            return Err(format!(
                "{cannot}, and this process runs in no container of the engine whose image could"
            ))
        }
    };
    let Some(id) = c.id else { return Err("the engine did not say the container's id".into()) };
    let shared = bollard::models::HostConfig {
        volumes_from: Some(vec![format!("{id}:ro")]),
        ..Default::default()
    };
    let label = (steward_labels::HELPER, container);
    match list_in_oneshot(engine, &image, shared, label, Some(id.as_str()), path).await {
        Ok(Ok(listing)) => Ok(Listing { tar: false, ..listing }),
        Ok(Err(why)) => Err(format!("{cannot}; in a container of {image}: {why}")),
        Err(e) => Err(format!("{cannot}; {e}")),
    }
}

/// `path` without a trailing `/` (but `/`).
fn normal(path: &str) -> &str {
    match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    }
}

/// Whether what a one-shot sharing `c`'s volumes and mounts lists at `path` is what `c` has
/// there: `c` has the engine's default user namespace (the one-shot's: another one's ids are
/// not the listed ones), the deepest mount holding `path` is a volume or a bind of a host path,
/// and nothing unshared is mounted under it. A tmpfs is not shared (`VolumesFrom` shares
/// volumes and binds only), and the engines name `--tmpfs` in `HostConfig.Tmpfs`, not in
/// `Mounts`; Podman names other runtime mounts binds, of sources that are not paths.
fn shared_at(c: &bollard::models::ContainerInspectResponse, path: &str) -> Result<(), String> {
    let host = c.host_config.as_ref();
    if let Some(mode) = host.and_then(|h| h.userns_mode.as_deref()).filter(|m| !m.is_empty()) {
        return Err(format!("its user namespace ({mode}) is not the one another container gets"));
    }
    // `/` is the empty prefix: everything is within it.
    let within = |at: &str, p: &str| {
        let at = at.trim_end_matches('/');
        at.is_empty() || p == at || p.strip_prefix(at).is_some_and(|r| r.starts_with('/'))
    };
    let mut mounts: Vec<(&str, Option<&str>)> = vec![];
    for m in c.mounts.iter().flatten() {
        let Some(at) = m.destination.as_deref() else { continue };
        let shared = match m.typ.as_deref() {
            Some("volume") => true,
            Some("bind") => m.source.as_deref().is_some_and(|s| s.starts_with('/')),
            _ => false,
        };
        mounts.push((
            at.trim_end_matches('/'),
            (!shared).then(|| m.typ.as_deref().unwrap_or("unnamed")),
        ));
    }
    for at in host.and_then(|h| h.tmpfs.as_ref()).into_iter().flat_map(|t| t.keys()) {
        mounts.push((at.trim_end_matches('/'), Some("tmpfs")));
    }
    // Unshared last: of two at one place (a tmpfs in both lists) the last is the one held.
    mounts.sort_by_key(|(_, unshared)| unshared.is_some());
    let holding = mounts.iter().filter(|(at, _)| within(at, path)).max_by_key(|(at, _)| at.len());
    match holding {
        None => {
            return Err("the path is in its own layer, which no other container can share".into())
        }
        Some((at, Some(kind))) => {
            return Err(format!(
                "the path is on a {kind} mount at {at}, which no other container can share"
            ))
        }
        Some(_) => {}
    }
    match mounts.iter().find(|(at, unshared)| unshared.is_some() && *at != path && within(path, at))
    {
        Some((at, Some(kind))) => {
            Err(format!("a {kind} mount at {at} under the path is not shared"))
        }
        _ => Ok(()),
    }
}

/// Why an exec made no listing.
enum Unlisted {
    /// The container has no shell, `find`, `date` or `stat` (exit 126 or 127).
    Unrunnable(String),
    /// Anything else: the listing ran and failed, or the engine did.
    Failed(String),
}

/// Lists normalised `path` in running `container` by exec; `resolved`: see [`SCRIPT`].
async fn list_by_exec(
    engine: &Engine,
    container: &str,
    path: &str,
    resolved: bool,
) -> Result<Listing, Unlisted> {
    let mut cmd = vec!["/bin/sh".into(), "-c".into(), SCRIPT.into(), "steward-list".into()];
    cmd.push(path.into());
    if resolved {
        cmd.push("resolved".into());
    }
    let spec = ExecSpec { cmd, env: vec![PATH.into()], user: Some("0".into()) };
    let mut run = engine
        .exec_stdout(container, &spec, 5)
        .await
        .map_err(|e| Unlisted::Failed(e.to_string()))?;
    let mut out = vec![];
    // Podman ends the output of an exec whose shell is missing with a reset: the exit
    // code, read after it, says why.
    let mut broken = None;
    while let Some(part) = run.stdout.next().await {
        let part = match part {
            Ok(part) => part,
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        };
        if out.len().saturating_add(part.len()) > MAX_LISTING {
            return Err(Unlisted::Failed(format!(
                "the listing is longer than {} MiB",
                MAX_LISTING >> 20
            )));
        }
        out.extend_from_slice(&part);
    }
    let done = run.finish().await.map_err(|e| Unlisted::Failed(e.to_string()))?;
    let said = || done.tail.join(" | ");
    match (done.exit_code, broken) {
        // Docker says why an exec could not start on its stdout.
        (126 | 127, _) => {
            let first = out.split(|b| *b == b'\n').next().unwrap_or_default();
            let first = String::from_utf8_lossy(&first[..first.len().min(200)]);
            Err(Unlisted::Unrunnable([first.trim(), &said()].join(" ").trim().to_owned()))
        }
        (_, Some(e)) => Err(Unlisted::Failed(e)),
        (0, None) => parse(path, &out).map_err(Unlisted::Failed),
        (code, None) => {
            Err(Unlisted::Failed(format!("the listing exited with {code} ({})", said())))
        }
    }
}

/// Lists `path` in a one-shot container of `image` made for it, for files no running
/// container can list: a stopped container's volumes, a host directory bind-mounted
/// read-only (`host_config` says which; never a network). It runs as root with every
/// capability dropped but reading past permissions, gains none, idles until the listing has
/// run in it by exec (as [`list`]; the path must resolve to itself there, see [`SCRIPT`]), and
/// is removed with the anonymous volumes made for it (its image's `VOLUME`s), never one it
/// borrowed from container `borrowed` (`Engine::remove_helper`). One left by a kill ends within
/// the hour and the engine removes it (`AutoRemove`). Labelled `label`. Needs `/bin/sh`,
/// `sleep` and `find` in the image. The outer error is the engine's (a create or start that
/// failed, timed out or found no engine), the inner one the listing's.
pub(crate) async fn list_in_oneshot(
    engine: &Engine,
    image: &str,
    host_config: bollard::models::HostConfig,
    label: (&str, &str),
    borrowed: Option<&str>,
    path: &str,
) -> Result<Result<Listing, String>, crate::EngineError> {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptions, StartContainerOptions};
    let what = format!("start a container of {image} to list {path} in");
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(vec!["/bin/sh".into()]),
        cmd: Some(vec!["-c".into(), "exec sleep 3600".into()]),
        env: Some(vec![PATH.into()]),
        user: Some("0".into()),
        network_disabled: Some(true),
        labels: Some([(label.0.to_owned(), label.1.to_owned())].into()),
        // Not the image's healthcheck (Steward's: it would fail without a network).
        healthcheck: Some(bollard::models::HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        }),
        host_config: Some(bollard::models::HostConfig {
            network_mode: Some("none".into()),
            auto_remove: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(vec!["DAC_READ_SEARCH".into()]),
            // Unconfined by SELinux labels: the one-shot reads files labelled for another
            // container (`:Z`) or for the host; it writes nothing.
            security_opt: Some(vec!["no-new-privileges".into(), "label=disable".into()]),
            ..host_config
        }),
        ..Default::default()
    };
    let docker = engine.client()?;
    let created = engine
        .timed(docker.create_container(None::<CreateContainerOptions>, body))
        .await
        .map_err(|e| engine.call_failed(&what, e))?;
    let started =
        engine.timed(docker.start_container(&created.id, None::<StartContainerOptions>)).await;
    let listed = match started {
        Ok(()) => {
            Ok(list_by_exec(engine, &created.id, normal(path), true).await.map_err(|e| match e {
                Unlisted::Unrunnable(why) => format!("the image cannot list it ({why})"),
                Unlisted::Failed(why) => why,
            }))
        }
        Err(e) => Err(engine.call_failed(&what, e)),
    };
    let removed = match borrowed {
        Some(from) => Box::pin(engine.remove_helper(&created.id, from)).await,
        None => engine.remove(&created.id, true).await,
    };
    if let Err(e) = removed {
        tracing::warn!(container = %created.id, error = %e, "cannot remove the listing's container");
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(mounts: &[(&str, &str)]) -> bollard::models::ContainerInspectResponse {
        bollard::models::ContainerInspectResponse {
            mounts: Some(
                mounts
                    .iter()
                    .map(|(typ, at)| bollard::models::MountPoint {
                        typ: Some((*typ).into()),
                        destination: Some((*at).into()),
                        // A bind's source is a host path.
                        source: (*typ == "bind").then(|| format!("/srv/host{at}")),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A one-shot sharing the container's volumes lists what the container has at the path
    /// only where the path's mount is shared and nothing unshared is mounted under it.
    #[test]
    fn a_one_shot_lists_only_paths_whose_mounts_it_shares() {
        let c = mounted(&[("volume", "/data/"), ("bind", "/data/conf"), ("tmpfs", "/data/cache")]);
        assert_eq!(shared_at(&c, "/data/conf"), Ok(()));
        assert_eq!(shared_at(&c, "/data/repos"), Ok(()));
        // The tmpfs is not shared: the one-shot would list the volume beneath it.
        assert!(shared_at(&c, "/data").is_err_and(|e| e.contains("tmpfs mount at /data/cache")));
        assert!(
            shared_at(&c, "/data/cache/x").is_err_and(|e| e.contains("tmpfs mount at /data/cache"))
        );
        // Its own layer, and a name that merely begins like a mount.
        assert!(shared_at(&c, "/srv").is_err_and(|e| e.contains("own layer")));
        assert!(shared_at(&c, "/database").is_err_and(|e| e.contains("own layer")));
        assert!(shared_at(&mounted(&[]), "/data").is_err_and(|e| e.contains("own layer")));
        // Podman's image mounts are not shared either.
        assert!(shared_at(&mounted(&[("image", "/data")]), "/data").is_err());
        // `--tmpfs` (compose `tmpfs:`) is named in `HostConfig.Tmpfs` only, and wins over a
        // volume listed at the same place.
        let mut c = mounted(&[("volume", "/data"), ("volume", "/data/cache")]);
        c.host_config = Some(bollard::models::HostConfig {
            tmpfs: Some([("/data/cache".to_owned(), "rw".to_owned())].into()),
            ..Default::default()
        });
        assert!(shared_at(&c, "/data").is_err_and(|e| e.contains("tmpfs mount at /data/cache")));
        assert!(shared_at(&c, "/data/cache").is_err_and(|e| e.contains("on a tmpfs")));
        // Podman's runtime mounts are binds of sources that are not paths.
        let mut c = mounted(&[("volume", "/data"), ("bind", "/data/pts")]);
        assert_eq!(shared_at(&c, "/data"), Ok(()), "a bind of a host path is shared");
        if let Some(m) = c.mounts.as_mut().and_then(|m| m.get_mut(1)) {
            m.source = Some("devpts".into());
        }
        assert!(shared_at(&c, "/data").is_err_and(|e| e.contains("bind mount at /data/pts")));
        // `/` holds every mount under it.
        let c = mounted(&[("volume", "/"), ("tmpfs", "/run")]);
        assert!(shared_at(&c, "/").is_err_and(|e| e.contains("/run")));
        // Another user namespace than the one-shot's (Podman's `--uidmap`, `keep-id`).
        let mut c = mounted(&[("volume", "/data")]);
        c.host_config = Some(bollard::models::HostConfig {
            userns_mode: Some("private".into()),
            ..Default::default()
        });
        assert!(shared_at(&c, "/data").is_err_and(|e| e.contains("user namespace")));
    }

    #[test]
    fn names_are_the_archive_apis() {
        assert_eq!(archive_name("/data", "/data").as_deref(), Some("data"));
        assert_eq!(archive_name("/data/", "/data/a b/c").as_deref(), Some("data/a b/c"));
        assert_eq!(archive_name("/srv/data", "/srv/data/x").as_deref(), Some("data/x"));
        assert_eq!(archive_name("/data", "/database/x"), None);
        assert_eq!(archive_name("/data", "/data/../etc"), None);
        assert_eq!(archive_name("/data", "/data//x"), None);
        assert_eq!(archive_name("/data", "/other"), None);
    }

    #[test]
    fn gnu_and_busybox_records_read_alike() {
        let gnu_out = b"steward-listing 1 nul 1700000100 tar\n\
            d 4096 1700000000.5000000000 1700000001.2500000000 11 755 0 0 3 /data\0\
            f 12 1700000002.0000000000 1700000003.0000000000 12 4755 1000 1000 1 /data/a b\nc\0";
        let l = parse("/data", gnu_out).expect("parses");
        assert_eq!(l.started, 1_700_000_100);
        let f = l.get("data/a b\nc").expect("listed");
        assert_eq!((f.kind, f.size, f.perms, f.uid, f.nlink), (Kind::File, 12, 0o4755, 1000, 1));
        assert_eq!(f.ctime.seconds(), 1_700_000_003);
        let busybox_out = b"steward-listing 1 line 1700000100 no\n\
            41ed 4096 1700000000 1700000001 11 0 0 3 /data\n\
            a1ff 5 1700000000 1700000001 13 0 0 1 /data/l\n";
        let l = parse("/data", busybox_out).expect("parses");
        assert!(!l.tar);
        let get = |name: &str| l.get(name).expect("listed");
        assert_eq!((get("data").kind, get("data").perms), (Kind::Dir, 0o755));
        assert_eq!(get("data/l").kind, Kind::Link);
    }

    #[test]
    fn times_are_numbers_that_read_and_write_as_the_listing_printed_them() {
        let t = |s: &str| Time::parse(s).expect(s);
        // GNU's ten digits, busybox's whole seconds, a tree's nine: one time each.
        assert_eq!(t("1700000000.5000000000"), t("1700000000.500000000"));
        assert_eq!(t("1700000000.0000000000"), t("1700000000"));
        assert_ne!(t("1700000000.000000001"), t("1700000000"));
        assert_eq!(t("1700000000.5").seconds(), 1_700_000_000);
        assert_eq!(t("1700000000.25").to_string(), "1700000000.250000000");
        assert_eq!(t("1700000000.0000000000").to_string(), "1700000000");
        for bad in ["", ".5", "5.", "-1", "1e3", "1.2.3", "1234567890123456789", " 1"] {
            assert_eq!(Time::parse(bad), None, "{bad:?}");
        }
        // A tree written with the text keeps reading; an unreadable one is refused.
        let read: Time = serde_json::from_str("\"1700000000.5000000000\"").expect("reads");
        assert_eq!(read, t("1700000000.5"));
        assert_eq!(serde_json::to_string(&read).expect("writes"), "\"1700000000.500000000\"");
        assert!(serde_json::from_str::<Time>("\"soon\"").is_err());
        assert!(serde_json::from_str::<Time>("1700000000").is_err());
    }

    #[test]
    fn sockets_are_left_out_as_the_archive_api_leaves_them() {
        let out =
            b"steward-listing 1 line 5 tar\n41ed 1 1 1 1 0 0 2 /data\nc1ed 0 1 1 2 0 0 1 /data/s\n";
        let l = parse("/data", out).expect("parses");
        assert!(l.tar);
        assert_eq!(l.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["data"]);
    }

    #[test]
    fn entries_are_held_in_the_archive_apis_walk_order_and_found_by_name() {
        let stat = |inode| Stat {
            kind: Kind::File,
            size: 1,
            mtime: Time::parse("1").expect("a time"),
            ctime: Time::parse("1").expect("a time"),
            inode,
            perms: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
        };
        let names = ["data/b", "data/a/z", "data", "data/a", "data/a.txt", "data/a/b"];
        let entries = names.iter().zip(1..).map(|(n, i)| ((*n).to_owned(), stat(i))).collect();
        let l = Listing::new(5, true, entries).expect("a listing");
        let order: Vec<&str> = l.iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["data", "data/a", "data/a/b", "data/a/z", "data/a.txt", "data/b"]);
        for (name, inode) in names.iter().zip(1..) {
            assert_eq!(l.get(name).map(|s| s.inode), Some(inode), "{name}");
        }
        for absent in ["dat", "data/a/c", "data/c", "data/", ""] {
            assert_eq!(l.get(absent), None, "{absent}");
        }
        let twice = vec![("data/a".to_owned(), stat(1)), ("data/a".to_owned(), stat(2))];
        assert!(Listing::new(5, true, twice).is_err());
    }

    #[test]
    fn an_odd_listing_is_refused_not_guessed() {
        let refused = |out: &[u8]| parse("/data", out).expect_err("refused");
        // A busybox name with a newline splits into a record that does not parse.
        refused(b"steward-listing 1 line 5 no\n81a4 1 1 1 1 0 0 1 /data/a\nb\n");
        // ... or into one that names an entry twice.
        refused(
            b"steward-listing 1 line 5 no\n81a4 1 1 1 1 0 0 1 /data/a\n81a4 1 1 1 1 0 0 1 /data/a\n",
        );
        refused(b"steward-listing 1 line 5 no\n81a4 1 1 1 1 0 0 1 /etc/passwd\n");
        refused(b"steward-listing 2 line 5 no\n");
        refused(b"steward-listing 1 line 5\n81a4 1 1 1 1 0 0 1 /data\n");
        refused(b"steward-listing 1 line 5 no\n");
        refused(b"steward-listing 1 nul x tar\n");
        refused(b"steward-listing 1 line 5 no\n81a4 1 1e3 1 1 0 0 1 /data/a\n");
    }
}
