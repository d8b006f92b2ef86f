//! A host directory (a compose project's) read and written through the engine: a container
//! that bind-mounts it, created and never started (the archive API reads and writes through
//! the mounts of a stopped container). The updater runs in a container of its own and has
//! the Docker API but no view of the host's files; this gives it the one directory it needs,
//! for as long as it needs it, without a standing mount in its compose file.
//!
//! Podman's archive read gives every entry root's owner (docs/podman.md), so there a file's
//! owner is listed by a one-shot container of the same image with the directory mounted
//! read-only: a write-back keeps the owner the file has, or is refused, never made root's.

use std::io::Read as _;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::CreateContainerOptions;
use futures::StreamExt as _;

use crate::listing::{self, Kind};
use crate::{Engine, EngineError};
use steward_labels::PROJECT_HELPER;

/// Where the directory is mounted in the helper.
const AT: &str = "/project";
/// The largest file read this way: compose files and `.env` are a few KiB.
const MAX_FILE: usize = 1 << 20;

/// One file as the archive API gives it: content, and the owner and mode it is written back
/// with (so a write-back changes neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFile {
    /// Its bytes.
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
}

/// A host directory mounted in a created, never started helper container; removed with
/// [`ProjectDir::close`].
#[derive(Debug)]
pub struct ProjectDir {
    engine: Engine,
    id: String,
    dir: String,
    /// The helper's image, for the owner's listing on Podman.
    image: String,
    /// The helpers' label value.
    owner: String,
}

impl Engine {
    /// Mounts host directory `dir` (read-write) in a helper created from Steward's own image
    /// when this process runs in a container of the engine ([`Engine::own_image`]), else from
    /// container `like`'s (an image this host has; the helper never runs), labelled
    /// `steward.project-helper=<owner>`. A directory that does not exist on the host is an
    /// error, never created. Helpers of `owner` left by a process killed while it held one
    /// are removed first.
    pub async fn open_project_dir(
        &self,
        dir: &str,
        like: &str,
        owner: &str,
    ) -> Result<ProjectDir, EngineError> {
        let what = format!("mount {dir} in a helper container");
        let mine = |labels: &std::collections::HashMap<String, String>| {
            labels.get(PROJECT_HELPER).is_some_and(|o| o == owner)
        };
        // With their anonymous volumes: the image's `VOLUME`s (gitea's /data, postgres's
        // data directory) are created empty for every helper; the bind mount is left alone.
        for left in self.containers_and_stand_ins(mine).await? {
            self.remove(&left.id, true).await?;
        }
        let image = self.helper_image(like).await?;
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            entrypoint: Some(vec!["/steward-never-started".into()]),
            network_disabled: Some(true),
            labels: Some([(PROJECT_HELPER.to_owned(), owner.to_owned())].into()),
            host_config: Some(HostConfig {
                mounts: Some(vec![mount_at(dir, false)]),
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let docker = self.client()?;
        let created = self
            .timed(docker.create_container(None::<CreateContainerOptions>, body))
            .await
            .map_err(|e| self.call_failed(&what, e))?;
        Ok(ProjectDir {
            engine: self.clone(),
            id: created.id,
            dir: dir.to_owned(),
            image,
            owner: owner.to_owned(),
        })
    }
}

impl ProjectDir {
    /// The file at `rel` (relative to the directory, `/`-separated), or `None` when there is
    /// none. A directory, link or file over 1 MiB there is an error.
    pub async fn read(&self, rel: &str) -> Result<Option<ProjectFile>, EngineError> {
        let what = format!("read {rel} in {}", self.dir);
        if !self.engine.exists_in(&self.id, &format!("{AT}/{rel}")).await? {
            return Ok(None);
        }
        let mut tar = Vec::new();
        let mut stream = self.engine.download_path(&self.id, &format!("{AT}/{rel}"));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.engine.failed(&what, e))?;
            if tar.len().saturating_add(chunk.len()) > MAX_FILE.saturating_mul(2) {
                return Err(self.engine.failed(&what, "larger than 1 MiB"));
            }
            tar.extend_from_slice(&chunk);
        }
        let (mut file, size) = only_file(&tar).map_err(|e| self.engine.failed(&what, e))?;
        if self.engine.is_podman().await? {
            (file.uid, file.gid) = match self.listed_owner(rel, size, file.mode).await {
                Ok(owner) => owner,
                // An engine that did not answer is asked again later (the caller's retry);
                // one that could not list is a refusal.
                Err(OwnerUnknown::Engine(e)) if !matches!(e, EngineError::Operation { .. }) => {
                    return Err(e)
                }
                Err(OwnerUnknown::Engine(e)) => return Err(self.engine.failed(
                    &what,
                    format!("Podman's archive gives every file root's owner, and its own owner could not be listed: {e}"),
                )),
                Err(OwnerUnknown::Listing(why)) => return Err(self.engine.failed(
                    &what,
                    format!("Podman's archive gives every file root's owner, and its own owner could not be listed: {why}"),
                )),
            };
        }
        Ok(Some(file))
    }

    /// The owner of file `rel` as a one-shot container of the helper's image lists it (the
    /// directory mounted read-only; `find` as root, as the backups' listing), when the listed
    /// entry is the file read: a regular file of `size` bytes with permission bits `mode`.
    async fn listed_owner(
        &self,
        rel: &str,
        size: u64,
        mode: u32,
    ) -> Result<(u64, u64), OwnerUnknown> {
        let path = format!("{AT}/{rel}");
        let mounted =
            HostConfig { mounts: Some(vec![mount_at(&self.dir, true)]), ..Default::default() };
        // Labelled like the helper: one left by a kill goes with the helpers.
        let label = (PROJECT_HELPER, self.owner.as_str());
        let listing =
            listing::list_in_oneshot(&self.engine, &self.image, mounted, label, None, &path)
                .await??;
        let mut entries = listing.into_entries().into_iter().map(|(_, stat)| stat);
        let (Some(stat), None) = (entries.next(), entries.next()) else {
            return Err(OwnerUnknown::Listing("the listing is not of one file".into()));
        };
        if (stat.kind, stat.size, stat.perms) != (Kind::File, size, mode & 0o7777) {
            return Err(OwnerUnknown::Listing(format!(
                "the file changed while it was read (listed {:?} of {} bytes, mode {:o})",
                stat.kind, stat.size, stat.perms
            )));
        }
        Ok((u64::from(stat.uid), u64::from(stat.gid)))
    }

    /// Replaces the file at `rel` by `file` (its owner and mode as given). The whole file goes
    /// in one archive of one entry, sent at once: a kill of this process cannot cut it. (The
    /// engine extracts it in place, so it is not a rename: see docs/security.md.)
    pub async fn write(&self, rel: &str, file: &ProjectFile) -> Result<(), EngineError> {
        let what = format!("write {rel} in {}", self.dir);
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (format!("{AT}/{p}"), n),
            None => (AT.to_owned(), rel),
        };
        let mut header = tar::Header::new_gnu();
        header.set_size(file.content.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(file.uid);
        header.set_gid(file.gid);
        header.set_entry_type(tar::EntryType::Regular);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        header.set_mtime(mtime);
        let mut builder = tar::Builder::new(Vec::new());
        builder
            .append_data(&mut header, name, file.content.as_slice())
            .map_err(|e| self.engine.failed(&what, e))?;
        let tar = builder.into_inner().map_err(|e| self.engine.failed(&what, e))?;
        let body = futures::stream::once(async move { Ok(bytes::Bytes::from(tar)) });
        self.engine.upload_tar(&self.id, &parent, body).await
    }

    /// Whether `rel` exists (a file, directory or link) in the directory.
    pub async fn exists(&self, rel: &str) -> Result<bool, EngineError> {
        self.engine.exists_in(&self.id, &format!("{AT}/{rel}")).await
    }

    /// Removes the helper container, with the anonymous volumes its image declared.
    pub async fn close(self) -> Result<(), EngineError> {
        self.engine.remove(&self.id, true).await
    }
}

impl Engine {
    /// Whether `path` exists in a container (the archive API's `HEAD`).
    async fn exists_in(&self, container: &str, path: &str) -> Result<bool, EngineError> {
        use bollard::query_parameters::ContainerArchiveInfoOptions;
        let options = ContainerArchiveInfoOptions { path: path.to_owned() };
        match self.timed(self.client()?.get_container_archive_info(container, Some(options))).await
        {
            Ok(_) => Ok(true),
            Err(e) if crate::gone(&e) => Ok(false),
            Err(e) => Err(self.call_failed(&format!("look for {path} in {container}"), e)),
        }
    }
}

/// The one regular file in `tar` (at most 1 MiB), as its header says, and its size.
fn only_file(tar: &[u8]) -> Result<(ProjectFile, u64), String> {
    let mut archive = tar::Archive::new(tar);
    let mut entries = archive.entries().map_err(|e| e.to_string())?;
    let entry = entries.next().ok_or(
        "the engine sent an empty archive (can the engine's user read the file? a rootless \
         engine reads as the user it runs as)",
    )?;
    let mut entry = entry.map_err(|e| e.to_string())?;
    let header = entry.header().clone();
    if header.entry_type() != tar::EntryType::Regular {
        return Err("not a regular file".into());
    }
    let size = header.size().map_err(|e| e.to_string())?;
    if size > MAX_FILE as u64 {
        return Err("larger than 1 MiB".into());
    }
    let mut content = Vec::new();
    entry.read_to_end(&mut content).map_err(|e| e.to_string())?;
    let file = ProjectFile {
        content,
        mode: header.mode().map_err(|e| e.to_string())?,
        uid: header.uid().map_err(|e| e.to_string())?,
        gid: header.gid().map_err(|e| e.to_string())?,
    };
    Ok((file, size))
}

/// Why a file's owner is not known.
enum OwnerUnknown {
    /// The engine failed a call (it may answer later).
    Engine(EngineError),
    /// The listing failed or does not fit the file.
    Listing(String),
}

impl From<EngineError> for OwnerUnknown {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl From<String> for OwnerUnknown {
    fn from(why: String) -> Self {
        Self::Listing(why)
    }
}

/// Host directory `dir` bind-mounted at [`AT`]. A `Mount` of type bind, unlike `Binds`,
/// refuses a missing source instead of creating it as an empty root-owned directory.
fn mount_at(dir: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(AT.into()),
        source: Some(dir.to_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}
