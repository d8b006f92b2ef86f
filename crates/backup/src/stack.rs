//! What a rebuilt host needs besides the data: the event stream with the state buckets (the
//! audit trail, the update records, the outboxes) and the compose project's own files.
//!
//! The stream is exported through the bus ([`steward_bus::Bus::export`]): one JSON record a
//! line, a component like any other (compressed, encrypted when configured, in the signed
//! manifest); `steward-backup extract <id> events` gives it back and `steward events import`
//! brings it onto a fresh NATS. The project directory is found through compose's
//! working-directory label on the containers in scope and read, through the engine's archive
//! API, from a running container of the project that bind-mounts exactly that directory (the
//! backup service's own, in the compose file). It holds `.env` and secrets: it is stored only
//! when backups are encrypted.

use std::io;

use bytes::Bytes;
use futures::StreamExt as _;
use steward_bus::{Bus, Export};
use steward_store::manifest::{self, Component, Kind};

use crate::backup::{Backups, Failure};
use crate::pipeline;

/// Records per chunk handed to the compressor (a stream holds many small messages).
const RECORDS_PER_CHUNK: usize = 512;

impl Backups {
    /// The stream and the state buckets as component `events`.
    pub(crate) async fn export_events(&self, id: &str, bus: &Bus) -> Result<Component, Failure> {
        let object = self.object_name(format!("{id}/events.ndjson.zst"));
        self.meter.item("events");
        let export = bus.export().await.map_err(|e| Failure::plain(format!("events: {e}")))?;
        let (stored, raw) =
            pipeline::store_stream(self.io(), &object, lines(export), self.config.zstd_level)
                .await
                .map_err(|e| Failure::plain(format!("events: {e}")))?;
        Ok(self.entry("events".into(), Kind::Events, object, stored, raw))
    }

    /// The compose project of the containers in `names`, as component `project:<dir>`, when
    /// backups are encrypted and a container of the project mounts its directory. Without, a
    /// warning says why it is left out (the rest of the backup is worth having all the same).
    pub(crate) async fn save_project(
        &self,
        id: &str,
        labels: &[&std::collections::HashMap<String, String>],
    ) -> Result<Vec<Component>, Failure> {
        let mut dirs: Vec<&str> = labels
            .iter()
            .filter_map(|l| l.get(steward_labels::compose::WORKING_DIR).map(String::as_str))
            .filter(|d| d.starts_with('/'))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        let mut out = vec![];
        for dir in dirs {
            if !self.config.keys.encrypts() {
                tracing::warn!(backup = id, project = dir, "the compose project's files are not backed up: they hold secrets (.env) and backups are not encrypted ({})", crate::config::ENV_AGE_RECIPIENTS);
                continue;
            }
            let Some((container, mounted_at)) = self.mounting(dir).await? else {
                tracing::warn!(backup = id, project = dir, "the compose project's files are not backed up: no running container of the project mounts its directory (the backup service's compose file should, read-only)");
                continue;
            };
            let component = format!("project:{dir}");
            let object = self.object_name(format!("{id}/project-{}.tar.zst", manifest::slug(dir)));
            self.meter.item(&component);
            let tar = self.engine.download_path_listed(&container, &mounted_at, None);
            let (stored, raw) =
                pipeline::store_stream(self.io(), &object, tar, self.config.zstd_level)
                    .await
                    .map_err(|e| Failure::plain(format!("{component}: {e}")))?;
            let kind = Kind::Project { container, working_dir: dir.to_owned() };
            out.push(self.entry(component, kind, object, stored, raw));
        }
        Ok(out)
    }

    /// A running container in scope of the project in `dir` that bind-mounts `dir`, and where.
    async fn mounting(&self, dir: &str) -> Result<Option<(String, String)>, Failure> {
        let scope = self.config.scope.as_deref();
        let wanted = |labels: &std::collections::HashMap<String, String>| {
            steward_labels::in_scope(labels, scope)
                && labels.get(steward_labels::compose::WORKING_DIR).map(String::as_str) == Some(dir)
        };
        let candidates = self.engine.running_containers(wanted).await.map_err(Failure::plain)?;
        for c in candidates {
            let inspect = self.engine.inspect_json(&c.name).await.map_err(Failure::plain)?;
            let mounts = inspect.get("Mounts").and_then(|m| m.as_array()).cloned();
            for m in mounts.unwrap_or_default() {
                let field = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                if field("Type") == "bind"
                    && field("Source").trim_end_matches('/') == dir.trim_end_matches('/')
                    && field("Destination").starts_with('/')
                {
                    return Ok(Some((c.name.clone(), field("Destination").to_owned())));
                }
            }
        }
        Ok(None)
    }
}

/// The export as lines of JSON, a chunk of records at a time; ends after an error.
fn lines(export: Export) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let records = futures::stream::unfold(Some(export), |export| async move {
        let mut export = export?;
        match export.next().await? {
            Ok(record) => {
                let line = serde_json::to_vec(&record).map_err(io::Error::other);
                Some((line, Some(export)))
            }
            Err(e) => Some((Err(io::Error::other(format!("reading the stream: {e}"))), None)),
        }
    });
    records.ready_chunks(RECORDS_PER_CHUNK).map(|chunk| {
        let mut buf = Vec::new();
        for line in chunk {
            buf.extend_from_slice(&line?);
            buf.push(b'\n');
        }
        Ok(Bytes::from(buf))
    })
}
