//! `steward-backup extract <id|latest> <component> [--from-copy]`: one component's original
//! bytes on stdout, for what Steward does not restore by itself on a rebuilt host: the event
//! stream (`events`, for `steward events import`), the compose project (`project`, a tar) and
//! the containers' configuration (`containers`).
//!
//! Invariant: nothing reaches stdout before the whole component has been read and matched its
//! signed manifest; the bytes then written are those of the object checked (pinned by ETag),
//! checked again as they pass. One line may follow them, for `events`: the backup's own
//! `backup.done` ([`Completion`]), which its export cannot hold.

use std::io::Write;

use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use steward_bus::{ExportRecord, ExportedMessage};
use steward_events::{Event, EventData};
use steward_store::manifest::{Component, Kind, Manifest};
use steward_store::store::Store;
use time::OffsetDateTime;

use crate::backup::{Backups, Failure};
use crate::pipeline;

/// The longest export line looked at (an event is at most 1 MiB; JSON escaping can double it).
const MAX_LINE: usize = 3 << 20;

/// What an events component says of its own backup, read as its lines pass.
///
/// A backup exports the stream while it runs, so its own flow stops at `backup.started`: on a
/// rebuilt host the newest backup, the one restored, would show as begun. The signed manifest
/// proves it was completed, so the extract adds the `backup.done` the old host published after
/// the export: in the same flow (the started event's correlation, source and host), at the
/// export's time, with a duration up to the export (the manifest followed it), under an id
/// made from the backup's id (extracting and importing again adds nothing).
#[derive(Debug, Default)]
struct Completion {
    partial: Vec<u8>,
    /// The line being read is over [`MAX_LINE`]: skipped to its end.
    skipping: bool,
    exported_at: Option<OffsetDateTime>,
    started: Option<Event>,
    /// The export holds the backup's `backup.done` already: nothing to add.
    done: bool,
}

impl Completion {
    fn feed(&mut self, chunk: &[u8], backup_id: &str) {
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            let ends = piece.last() == Some(&b'\n');
            if self.skipping {
                self.skipping = !ends;
                continue;
            }
            self.partial.extend_from_slice(piece);
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                self.skipping = !ends;
                continue;
            }
            if ends {
                let line = std::mem::take(&mut self.partial);
                self.line(&line, backup_id);
            }
        }
    }

    /// Only the header and the lines naming this backup are parsed.
    fn line(&mut self, line: &[u8], backup_id: &str) {
        let Ok(text) = std::str::from_utf8(line) else { return };
        let header = self.exported_at.is_none() && text.contains("\"header\"");
        if !header && !text.contains(backup_id) {
            return;
        }
        match serde_json::from_str::<ExportRecord>(text) {
            Ok(ExportRecord::Header { exported_at, .. }) => self.exported_at = Some(exported_at),
            Ok(ExportRecord::Message(m)) => {
                let Ok(event) = Event::decode_for(&m.subject, &m.payload()) else { return };
                match &event.data {
                    EventData::BackupStarted(s) if s.backup_id == backup_id => {
                        self.started = Some(event)
                    }
                    EventData::BackupDone(d) if d.backup_id == backup_id => self.done = true,
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The line to add, if the export began this backup's flow and did not end it.
    fn record(self, store: &Store, manifest: &Manifest) -> Option<ExportRecord> {
        let (Some(at), Some(started), false) = (self.exported_at, self.started, self.done) else {
            return None;
        };
        let duration_ms = u64::try_from((at - started.time).whole_milliseconds()).unwrap_or(0);
        let data = crate::service::done(store, &manifest.backup_id, manifest, duration_ms);
        let mut event = Event::caused_by(&started, started.source.clone(), data);
        let digest = Sha256::digest(format!("backup.done {}", manifest.backup_id));
        let mut random = [0u8; 10];
        random.copy_from_slice(&digest[..10]);
        let millis = u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        event.id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        event.time = at;
        event.host = started.host.clone();
        ExportedMessage::of_event(0, at, &event).ok().map(ExportRecord::Message)
    }
}

/// The usage line.
pub const USAGE: &str = "usage: steward-backup extract <backup id|latest> <component> [--from-copy]\n  component: events, project, containers, or a component's name as `steward backup list` shows it";

/// The component of `manifest` called `name` (`project` for the only project component).
fn find<'a>(components: &'a [Component], name: &str) -> Result<&'a Component, String> {
    if let Some(c) = components.iter().find(|c| c.name == name) {
        return Ok(c);
    }
    let projects: Vec<&Component> =
        components.iter().filter(|c| matches!(c.kind, Kind::Project { .. })).collect();
    match (name, projects.as_slice()) {
        ("project", [one]) => Ok(one),
        ("project", []) => Err("the backup holds no compose project (backups taken unencrypted, or without a container that mounts the project, have none)".into()),
        _ => {
            let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
            Err(format!("no component {name:?}; it holds {}", names.join(", ")))
        }
    }
}

impl Backups {
    /// Writes component `name` of backup `id` to `out`, after checking it whole.
    pub async fn extract(
        &self,
        id: &str,
        name: &str,
        // A one-shot command's stdout: blocking writes are what it waits for anyway.
        out: &mut impl Write,
    ) -> Result<Component, Failure> {
        let manifest = self.resolve(id).await.map_err(Failure::plain)?;
        let c = find(&manifest.components, name).map_err(Failure::plain)?.clone();
        let pin =
            pipeline::check_component_pinned(self.read_io(), &c).await.map_err(Failure::plain)?;
        let (mut stream, _) = pipeline::read_component_pinned(self.read_io(), &c, pin.as_deref())
            .await
            .map_err(Failure::plain)?;
        let events = matches!(c.kind, Kind::Events);
        let mut completion = Completion::default();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
            if events {
                completion.feed(&chunk, &manifest.backup_id);
            }
            out.write_all(&chunk).map_err(|e| Failure::plain(format!("writing: {e}")))?;
        }
        if let Some(record) = events.then(|| completion.record(&self.store, &manifest)).flatten() {
            let mut line = serde_json::to_vec(&record).map_err(Failure::plain)?;
            line.push(b'\n');
            out.write_all(&line).map_err(|e| Failure::plain(format!("writing: {e}")))?;
        }
        out.flush().map_err(|e| Failure::plain(format!("writing: {e}")))?;
        Ok(c)
    }
}
