//! `steward-backup extract <id|latest> <component> [--from-copy]`: one component's original
//! bytes on stdout, for what Steward does not restore by itself on a rebuilt host: the event
//! stream (`events`, for `steward events import`), the compose project (`project`, a tar) and
//! the containers' configuration (`containers`).
//!
//! Invariant: nothing reaches stdout before the whole component has been read and matched its
//! signed manifest; the bytes then written are those of the object checked (pinned by ETag),
//! checked again as they pass.

use std::io::Write;

use futures::StreamExt as _;
use steward_store::manifest::{Component, Kind};

use crate::backup::{Backups, Failure};
use crate::pipeline;

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
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
            out.write_all(&chunk).map_err(|e| Failure::plain(format!("writing: {e}")))?;
        }
        out.flush().map_err(|e| Failure::plain(format!("writing: {e}")))?;
        Ok(c)
    }
}
