//! Which container here a backup's container is, when it no longer has the same name: compose
//! v1 names a service's container `<project>_<service>_1`, compose v2 `<project>-<service>-1`,
//! so a backup taken under one is restored under the other (a host rebuilt on a newer
//! distribution) by the compose project and service its `containers` component recorded
//! (`com.docker.compose.project` / `.service`), never by a guess on the name.
//!
//! Invariant: a name is replaced only by the one container that runs the same service of the
//! same project now; none, several, or a backup that does not say which service it was is a
//! refusal naming them, before anything is touched.

use std::collections::{BTreeMap, HashMap};

use futures::StreamExt as _;
use steward_labels::compose;
use steward_store::manifest::{Component, Kind, Manifest};

use crate::backup::{Backups, Failure};
use crate::pipeline;

/// The largest `containers` component read (a `docker inspect` is a few KiB a container).
const MAX_CONTAINERS_JSON: u64 = 16 << 20;

/// Compose's project and service of each container in `inspects` (a `containers` component:
/// `docker inspect` objects), by container name; containers compose did not make are left out.
pub fn compose_services(inspects: &serde_json::Value) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for c in inspects.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(name) = c.get("Name").and_then(|n| n.as_str()) else { continue };
        let labels: HashMap<String, String> = c
            .pointer("/Config/Labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        if let Some(s) = compose::ComposeService::from_labels(&labels) {
            out.insert(name.trim_start_matches('/').to_owned(), (s.project, s.service));
        }
    }
    out
}

fn container_mut(c: &mut Component) -> Option<&mut String> {
    match &mut c.kind {
        Kind::Postgres { container, .. }
        | Kind::PostgresBase { container, .. }
        | Kind::Path { container, .. } => Some(container),
        // A WAL file is not restored into its container but replayed from the bucket.
        Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => None,
    }
}

impl Backups {
    /// `manifest` with each container a restore would touch that does not exist under its
    /// name here replaced by the container running the same compose service now; a refusal
    /// naming every one that matches none or several.
    pub async fn match_containers(&self, manifest: Manifest) -> Result<Manifest, Failure> {
        let (manifest, problems) = self.matched(manifest).await?;
        match problems.is_empty() {
            true => Ok(manifest),
            false => Err(Failure::plain(format!("{}; nothing was changed", problems.join("; ")))),
        }
    }

    /// [`Backups::match_containers`] for a restore resumed past its commit point, which
    /// finishes whatever holds now: each container matched where it can be, the others (and
    /// all of them when the backup's record cannot be read) left under the backup's names,
    /// so the swap that cannot be finished fails naming what it kept.
    pub(crate) async fn match_containers_leniently(&self, manifest: Manifest) -> Manifest {
        match self.matched(manifest.clone()).await {
            Ok((matched, problems)) => {
                for p in problems {
                    tracing::warn!(backup = %manifest.backup_id, problem = %p, "resumed restore");
                }
                matched
            }
            Err(e) => {
                tracing::warn!(backup = %manifest.backup_id, error = %e.reason, "resumed restore: containers kept under the backup's names");
                manifest
            }
        }
    }

    /// `manifest` with every container that could be matched renamed, and why each other
    /// could not.
    async fn matched(&self, mut manifest: Manifest) -> Result<(Manifest, Vec<String>), Failure> {
        let mut missing: Vec<String> = vec![];
        for c in manifest.components.iter_mut() {
            if let Some(name) = container_mut(c) {
                let exists =
                    self.engine.container_id(name).await.map_err(Failure::plain)?.is_some();
                if !exists && !missing.contains(name) {
                    missing.push(name.clone());
                }
            }
        }
        if missing.is_empty() {
            return Ok((manifest, vec![]));
        }
        let recorded = self.recorded_services(&manifest).await?;
        let here = self
            .engine
            .containers(|labels| compose::ComposeService::from_labels(labels).is_some())
            .await
            .map_err(Failure::plain)?;
        let mut renamed = BTreeMap::new();
        let mut problems = vec![];
        for old in &missing {
            let Some((project, service)) = recorded.get(old) else {
                problems.push(format!(
                    "container {old} does not exist, and the backup does not record its compose service: create the stack first (docker-compose up -d), then restore"
                ));
                continue;
            };
            let matches: Vec<&str> = here
                .iter()
                .filter(|c| {
                    compose::ComposeService::from_labels(&c.labels)
                        .is_some_and(|s| &s.project == project && &s.service == service)
                })
                .map(|c| c.name.as_str())
                .collect();
            match matches.as_slice() {
                [one] => {
                    tracing::info!(backup = %manifest.backup_id, was = %old, now = %one, project = %project, service = %service, "container matched by its compose service");
                    renamed.insert(old.clone(), (*one).to_owned());
                }
                [] => problems.push(format!(
                    "container {old} (compose project {project}, service {service}) does not exist and no container runs that service: create the stack first under the same project name (docker-compose up -d), then restore"
                )),
                several => problems.push(format!(
                    "container {old} (compose project {project}, service {service}) does not exist and {} containers run that service ({}): scale it to one, then restore",
                    several.len(),
                    several.join(", ")
                )),
            }
        }
        for c in manifest.components.iter_mut() {
            if let Some(name) = container_mut(c) {
                if let Some(now) = renamed.get(name.as_str()) {
                    *name = now.clone();
                }
            }
        }
        Ok((manifest, problems))
    }

    /// The compose services the backup's `containers` component records, read whole and
    /// checked against the manifest (empty when the backup has none).
    async fn recorded_services(
        &self,
        manifest: &Manifest,
    ) -> Result<BTreeMap<String, (String, String)>, Failure> {
        let Some(c) = manifest.components.iter().find(|c| c.kind == Kind::Containers) else {
            return Ok(BTreeMap::new());
        };
        if c.raw_size > MAX_CONTAINERS_JSON {
            return Err(Failure::plain(format!(
                "{}: {} bytes, more than a containers' configuration is ({MAX_CONTAINERS_JSON}); nothing was changed",
                c.name, c.raw_size
            )));
        }
        let (mut stream, _) = pipeline::read_component_pinned(self.read_io(), c, None)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
            if (bytes.len() as u64).saturating_add(chunk.len() as u64) > MAX_CONTAINERS_JSON {
                return Err(Failure::plain(format!("{}: larger than its manifest says", c.name)));
            }
            bytes.extend_from_slice(&chunk);
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::plain(format!("{}: not a docker inspect array: {e}", c.name)))?;
        Ok(compose_services(&json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_services_are_read_by_name_and_other_containers_left_out() {
        let json = serde_json::json!([
            {"Name": "/gitea_gitea_1", "Config": {"Labels": {
                "com.docker.compose.project": "gitea", "com.docker.compose.service": "gitea"}}},
            {"Name": "/plain", "Config": {"Labels": {"steward.enable": "true"}}},
            {"Name": "/gitea_run_1", "Config": {"Labels": {
                "com.docker.compose.project": "gitea", "com.docker.compose.service": "x",
                "com.docker.compose.oneoff": "True"}}},
            {"Config": {}},
            "not an object"
        ]);
        let got = compose_services(&json);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got.get("gitea_gitea_1"), Some(&("gitea".to_owned(), "gitea".to_owned())));
        assert!(compose_services(&serde_json::json!({"not": "an array"})).is_empty());
    }
}
