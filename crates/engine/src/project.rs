//! A host directory (a compose project's) read and written through the engine: a container
//! that bind-mounts it, created and never started (the archive API reads and writes through
//! the mounts of a stopped container). The updater runs in a container of its own and has
//! the Docker API but no view of the host's files; this gives it the one directory it needs,
//! for as long as it needs it, without a standing mount in its compose file.

use std::io::Read as _;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::CreateContainerOptions;
use futures::StreamExt as _;

use crate::{Engine, EngineError};

/// The label of a project directory's helper: who made it (the updater: the update's id).
pub const PROJECT_HELPER: &str = "steward.project-helper";
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
}

impl Engine {
    /// Mounts host directory `dir` (read-write) in a helper created from the image of container
    /// `like` (an image this host has; the helper never runs), labelled
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
        for left in self.containers(mine).await? {
            self.remove(&left.id, true).await?;
        }
        let image = self
            .brief(like)
            .await?
            .ok_or_else(|| self.failed(&what, format!("no container {like} to take the image of")))?
            .image_id;
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: Some(vec!["/steward-never-started".into()]),
            network_disabled: Some(true),
            labels: Some([(PROJECT_HELPER.to_owned(), owner.to_owned())].into()),
            host_config: Some(HostConfig {
                // A `Mount` of type bind, unlike `Binds`, refuses a missing source instead of
                // creating it as an empty root-owned directory on the host.
                mounts: Some(vec![Mount {
                    target: Some(AT.into()),
                    source: Some(dir.to_owned()),
                    typ: Some(MountType::BIND),
                    read_only: Some(false),
                    ..Default::default()
                }]),
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
        Ok(ProjectDir { engine: self.clone(), id: created.id, dir: dir.to_owned() })
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
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().map_err(|e| self.engine.failed(&what, e))?;
        let Some(entry) = entries.next() else {
            return Err(self.engine.failed(&what, "the engine sent an empty archive"));
        };
        let mut entry = entry.map_err(|e| self.engine.failed(&what, e))?;
        let header = entry.header().clone();
        if header.entry_type() != tar::EntryType::Regular {
            return Err(self.engine.failed(&what, "not a regular file"));
        }
        let size = header.size().map_err(|e| self.engine.failed(&what, e))?;
        if size > MAX_FILE as u64 {
            return Err(self.engine.failed(&what, "larger than 1 MiB"));
        }
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(|e| self.engine.failed(&what, e))?;
        let field = |r: std::io::Result<u64>| r.map_err(|e| self.engine.failed(&what, e));
        Ok(Some(ProjectFile {
            content,
            mode: header.mode().map_err(|e| self.engine.failed(&what, e))?,
            uid: field(header.uid())?,
            gid: field(header.gid())?,
        }))
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
