//! Restore: check every checksum, then stop the app containers, recreate each database from
//! its dump, replace each path with its archive, start the containers and wait for health.
//!
//! Invariants: nothing is touched before the manifest is signed by a trusted key (or unsigned
//! and explicitly allowed), every container it names exists and carries the matching backup
//! label now (`guard`), and every component in scope has been downloaded, matched its
//! manifest and, for a path, had every tar entry checked (`tarcheck`); containers stopped
//! here are started again whether the restore succeeded or not.

use std::time::{Duration, Instant};

use steward_engine::ExecSpec;
use steward_events::RestoreScope;
use steward_probe::{Prober, Target, Verdict};
use steward_store::manifest::{Component, Kind, Manifest};

use crate::backup::{Backups, Failure};
use crate::journal::RestoreJournal;
use crate::pipeline;
use crate::verify::wait_ready;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup.
    pub manifest: Manifest,
    /// Components restored.
    pub restored: Vec<String>,
}

fn in_scope(c: &Component, scope: RestoreScope) -> bool {
    match (&c.kind, scope) {
        (Kind::Containers, _) => false,
        (Kind::Postgres { .. }, RestoreScope::All | RestoreScope::Db) => true,
        (Kind::Path { .. }, RestoreScope::All | RestoreScope::Paths) => true,
        _ => false,
    }
}

fn container_of(c: &Component) -> Option<&str> {
    match &c.kind {
        Kind::Postgres { container, .. } | Kind::Path { container, .. } => Some(container),
        Kind::Containers => None,
    }
}

/// The Gitea image's documented step after a restore: hooks carry absolute paths of the old
/// host, so pushes fail on a new one until they are regenerated.
const GITEA_REGENERATE: [&str; 6] =
    ["/usr/local/bin/gitea", "-c", "/data/gitea/conf/app.ini", "admin", "regenerate", "hooks"];

/// Containers a restore must not touch now, each with why (e.g. an update in its health
/// gate: stopping the app there would make the gate roll the update back mid-restore).
pub type Busy = std::collections::BTreeMap<String, String>;

impl Backups {
    /// Restores backup `id` (or `latest`).
    pub async fn restore(&self, id: &str, scope: RestoreScope) -> Result<Restored, Failure> {
        self.restore_unless_busy(id, scope, &Busy::new()).await
    }

    /// Restores backup `id` (or `latest`), refusing before anything is downloaded or touched
    /// when one of its containers is `busy`.
    pub async fn restore_unless_busy(
        &self,
        id: &str,
        scope: RestoreScope,
        busy: &Busy,
    ) -> Result<Restored, Failure> {
        self.restore_journaled(id, scope, false, busy, &mut RestoreJournal::none()).await
    }

    /// Restores backup `id` even if its manifest is unsigned (the operator's explicit choice
    /// for a backup taken before manifests were signed); every other check still applies.
    pub async fn restore_unsigned(
        &self,
        id: &str,
        scope: RestoreScope,
    ) -> Result<Restored, Failure> {
        self.restore_journaled(id, scope, true, &Busy::new(), &mut RestoreJournal::none()).await
    }

    /// [`Backups::restore_unless_busy`], recording in `journal` the backup it resolved, each
    /// container before it is stopped and each component before it is overwritten. A journal
    /// an interrupted attempt left makes this attempt restore the same backup and start the
    /// containers that attempt had stopped. `allow_unsigned`: an unsigned backup named by id
    /// is restored too.
    pub async fn restore_journaled(
        &self,
        id: &str,
        scope: RestoreScope,
        allow_unsigned: bool,
        busy: &Busy,
        journal: &mut RestoreJournal,
    ) -> Result<Restored, Failure> {
        // `latest` may name another backup by now: the interrupted attempt's is restored.
        let id = match journal.resumed() {
            true => journal.record.backup_id.clone(),
            false => id.to_owned(),
        };
        let manifest = self.resolve_allowing(&id, allow_unsigned).await.map_err(Failure::plain)?;
        let conflicts: Vec<String> = manifest
            .components
            .iter()
            .filter_map(container_of)
            .filter_map(|name| busy.get(name).map(|why| format!("{name}: {why}")))
            .collect();
        if !conflicts.is_empty() {
            return Err(Failure::plain(format!(
                "not now, nothing was changed: {}; restore when it has ended (steward updates)",
                conflicts.join("; ")
            )));
        }
        let chosen: Vec<&Component> =
            manifest.components.iter().filter(|c| in_scope(c, scope)).collect();
        if chosen.is_empty() {
            return Err(Failure::plain(format!(
                "backup {} holds nothing to restore for {scope:?}",
                manifest.backup_id
            )));
        }
        self.check_targets(&manifest).await?;
        tracing::info!(backup = %manifest.backup_id, components = chosen.len(), "checking checksums before touching anything");
        let total = chosen.iter().map(|c| c.raw_size).sum();
        self.meter.phase("checking", Some(total));
        self.check_all(&chosen).await?;
        for name in chosen.iter().filter_map(|c| container_of(c)) {
            if self.engine.is_running(name).await.map_err(Failure::plain)?.is_none() {
                return Err(Failure::plain(format!(
                    "container {name} does not exist: create the stack first (docker-compose up -d), then restore"
                )));
            }
        }
        steward_failpoints::failpoint!("restore:checked");
        journal
            .resolved(&manifest.backup_id)
            .await
            .map_err(|e| Failure::plain(format!("{e}, nothing was changed")))?;
        // Every app container of the backup is stopped, even for a database-only restore:
        // an app writing during the restore would mix old and new data.
        let mut apps: Vec<String> = vec![];
        for c in &manifest.components {
            if let Kind::Path { container, .. } = &c.kind {
                if !apps.contains(container) {
                    apps.push(container.clone());
                }
            }
        }
        let grace = self.config.stop_timeout.as_secs().min(i32::MAX as u64) as i32;
        // What an interrupted attempt stopped is started again by this one.
        let mut stopped: Vec<String> = journal.record.stopped.clone();
        let mut result = Ok(vec![]);
        for app in &apps {
            if self.engine.is_running(app).await.map_err(Failure::plain)? == Some(true) {
                if let Err(e) = journal.stopping(app).await {
                    result = Err(Failure::plain(format!("{e}, nothing was changed")));
                    break;
                }
                tracing::info!(container = %app, "stopping for the restore");
                if !stopped.contains(app) {
                    stopped.push(app.clone());
                }
                if let Err(e) = self.engine.stop(app, grace).await {
                    result = Err(Failure::plain(e));
                    break;
                }
                steward_failpoints::failpoint!("restore:stopped");
            }
        }
        if result.is_ok() {
            self.meter.phase("restoring", Some(total));
            result = self.restore_components(&chosen, journal).await;
        }
        // Started again whatever happened: a failed restore must not leave the stack down.
        for app in &stopped {
            if let Err(e) = self.engine.start(app).await {
                tracing::error!(container = %app, error = %e, "could not start the container again");
                if result.is_ok() {
                    result =
                        Err(Failure::plain(format!("restored, but {app} does not start: {e}")));
                }
            }
        }
        steward_failpoints::failpoint!("restore:started");
        let restored = result?;
        for app in &apps {
            self.wait_healthy(app).await?;
            self.after_restore(app).await?;
        }
        steward_failpoints::failpoint!("restore:healthy");
        Ok(Restored { manifest, restored })
    }

    async fn restore_components(
        &self,
        chosen: &[&Component],
        journal: &mut RestoreJournal,
    ) -> Result<Vec<String>, Failure> {
        let mut done = vec![];
        for c in chosen {
            if !matches!(c.kind, Kind::Containers) {
                journal.touching(&c.name).await.map_err(Failure::plain)?;
            }
            match &c.kind {
                Kind::Postgres { container, user, database, .. } => {
                    self.restore_database(c, container, user, database).await?;
                    steward_failpoints::failpoint!("restore:database");
                }
                Kind::Path { container, path } => {
                    self.restore_path(c, container, path).await?;
                    steward_failpoints::failpoint!("restore:path");
                }
                Kind::Containers => continue,
            }
            tracing::info!(component = %c.name, "restored");
            done.push(c.name.clone());
        }
        Ok(done)
    }

    /// Drops and recreates the database, then loads the dump through `pg_restore`'s stdin.
    async fn restore_database(
        &self,
        c: &Component,
        container: &str,
        user: &str,
        database: &str,
    ) -> Result<(), Failure> {
        self.engine.start(container).await.map_err(Failure::plain)?;
        wait_ready(self, container, user, "postgres").await?;
        let run = |cmd: &[&str]| ExecSpec {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        // `--force` ends the sessions still connected (PostgreSQL 13+).
        for step in [
            run(&["dropdb", "--if-exists", "--force", "-U", user, database]),
            run(&["createdb", "-U", user, "-O", user, database]),
        ] {
            let out = self
                .engine
                .exec(container, step.cmd.clone(), 20)
                .await
                .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
            Failure::check_exit(&out, format!("{}: {}", c.name, step.cmd[0]))?;
            steward_failpoints::failpoint!(&format!("restore:{}", step.cmd[0]));
        }
        let stream = pipeline::read_component(self.io(), c).await.map_err(Failure::plain)?;
        let stream = midway(stream, "restore:pg_restore");
        let load = run(&["pg_restore", "--exit-on-error", "-U", user, "-d", database]);
        let out = self
            .engine
            .exec_stdin(container, &load, stream, 20)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        Failure::check_exit(&out, format!("{}: pg_restore", c.name))
    }

    /// Empties the path (a restore replaces, it does not merge), then extracts the archive.
    async fn restore_path(
        &self,
        c: &Component,
        container: &str,
        path: &str,
    ) -> Result<(), Failure> {
        let mounts = self.engine.mount_points(container).await.map_err(Failure::plain)?;
        let on_mount = mounts
            .iter()
            .any(|m| path == m || path.starts_with(&format!("{}/", m.trim_end_matches('/'))));
        if on_mount {
            let image = match &self.config.helper_image {
                Some(image) => image.clone(),
                None => self
                    .engine
                    .inspect_json(container)
                    .await
                    .map_err(Failure::plain)?
                    .pointer("/Image")
                    .and_then(|i| i.as_str())
                    .unwrap_or_default()
                    .to_owned(),
            };
            // `$0` is the path; the globs cover dot-files and match nothing harmlessly.
            let script = r#"rm -rf -- "$0"/* "$0"/.[!.]* "$0"/..?*"#;
            let out = self
                .engine
                .run_with_volumes_of(
                    container,
                    &image,
                    vec!["/bin/sh".into(), "-c".into()],
                    vec![script.into(), path.into()],
                    20,
                )
                .await
                .map_err(|e| {
                    Failure::plain(format!(
                        "{}: emptying {path} with a helper from {image}: {e} (set STEWARD_RESTORE_HELPER_IMAGE to an image with /bin/sh)",
                        c.name
                    ))
                })?;
            Failure::check_exit(&out, format!("{}: emptying {path}", c.name))?;
            steward_failpoints::failpoint!("restore:emptied");
        } else {
            tracing::warn!(component = %c.name, "{path} is not on a volume or bind mount: the archive is extracted over what is there");
        }
        let parent = match path.rsplit_once('/') {
            Some(("", _)) | None => "/".to_owned(),
            Some((parent, _)) => parent.to_owned(),
        };
        let stream = pipeline::read_component(self.io(), c).await.map_err(Failure::plain)?;
        let stream = midway(stream, "restore:extracting");
        self.engine
            .upload_tar(container, &parent, stream)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))
    }

    /// Waits for `container` to be healthy as the health service and the update gate judge
    /// it ([`steward_probe`]: running, no restart, HEALTHCHECK not unhealthy, its
    /// `steward.health.url`, `pg_isready` for a database), within the restore's own timeout.
    /// Any verdict but a pass is waited out (a restored app may take its time to start).
    async fn wait_healthy(&self, container: &str) -> Result<(), Failure> {
        let timeout = self.config.restore_health_timeout;
        let started = Instant::now();
        let labels = self
            .engine
            .container_labels(container)
            .await
            .map_err(Failure::plain)?
            .unwrap_or_default();
        let target = Target::from_labels(&labels);
        let prober = Prober::new(self.engine.clone(), &self.config.probe).map_err(|e| {
            Failure::plain(format!("restored, but {container} cannot be probed: {e}"))
        })?;
        let mut restarts = None;
        let mut steady_since: Option<Instant> = None;
        loop {
            let view = self.engine.health_view(container).await.map_err(Failure::plain)?;
            // Each round against the last: a restart fails one round and restarts the count.
            let round = prober.round(container, &view, &target, restarts).await;
            restarts = Some(view.restart_count);
            let last = match round.verdict {
                Verdict::Pass => {
                    // Without a check of its own, running for a few seconds is the best
                    // evidence there is.
                    let needed = if target.has_own_check(&view) {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(3)
                    };
                    let since = *steady_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= needed {
                        return Ok(());
                    }
                    "running for less than 3s".to_owned()
                }
                Verdict::Fail(f) => {
                    steady_since = None;
                    format!("{}: {}", f.check.name(), f.reason)
                }
                Verdict::Pending(why) => {
                    steady_since = None;
                    why
                }
            };
            if started.elapsed() > timeout {
                let tail = self.engine.logs_tail(container, 20).await.unwrap_or_default();
                return Err(Failure {
                    reason: format!(
                        "restored, but {container} is not healthy after {timeout:?}: {last}"
                    ),
                    stderr_tail: tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The container's `steward.restore.post` command, or Gitea's hook regeneration.
    async fn after_restore(&self, container: &str) -> Result<(), Failure> {
        let info = self.engine.inspect_json(container).await.map_err(Failure::plain)?;
        let label = info
            .pointer("/Config/Labels")
            .and_then(|l| l.get(steward_labels::RESTORE_POST))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let image = info.pointer("/Config/Image").and_then(|i| i.as_str()).unwrap_or_default();
        let (cmd, user): (Vec<String>, Option<String>) = match label {
            Some(cmd) if !cmd.trim().is_empty() => (vec!["/bin/sh".into(), "-c".into(), cmd], None),
            Some(_) => return Ok(()),
            None if is_gitea(image) => {
                (GITEA_REGENERATE.map(String::from).to_vec(), Some("git".into()))
            }
            None => return Ok(()),
        };
        let spec = ExecSpec { cmd, user, ..Default::default() };
        let out = self
            .engine
            .exec_as(container, &spec, 20)
            .await
            .map_err(|e| Failure::plain(format!("after restoring {container}: {e}")))?;
        Failure::check_exit(&out, format!("after restoring {container}: {:?}", spec.cmd))?;
        tracing::info!(container, "post-restore command done");
        Ok(())
    }
}

/// `stream`, with failpoint `name` reached as its second chunk passes: the consumer is
/// mid-way (part of the data in, the rest not).
fn midway<S>(stream: S, name: &'static str) -> futures::stream::BoxStream<'static, S::Item>
where
    S: futures::Stream + Send + 'static,
{
    use futures::StreamExt as _;
    let _ = name; // release builds have no failpoints
    let mut chunks = 0u32;
    stream
        .inspect(move |_| {
            chunks = chunks.saturating_add(1);
            if chunks == 2 {
                steward_failpoints::failpoint!(name);
            }
        })
        .boxed()
}

/// `gitea/gitea:1.22` (Docker Hub's, or a mirror's `…/gitea/gitea`),
/// `docker.gitea.com/gitea:1.23`, `gitea/gitea@sha256:…`; not the rootless variant, whose user
/// and paths differ (it takes `steward.restore.post`).
fn is_gitea(image: &str) -> bool {
    let Ok(r) = steward_imageref::ImageRef::parse(image) else { return false };
    let repo = r.repository();
    let gitea = repo == "gitea/gitea"
        || repo.ends_with("/gitea/gitea")
        || (r.registry() == "docker.gitea.com" && repo == "gitea");
    gitea && !r.tag().is_some_and(|t| t.contains("rootless"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_gitea_images() {
        assert!(is_gitea("gitea/gitea:1.22.6"));
        assert!(is_gitea("docker.io/gitea/gitea"));
        assert!(is_gitea("docker.gitea.com/gitea:1.23"));
        assert!(!is_gitea("gitea/gitea:1.22-rootless"));
        assert!(!is_gitea("nginx:1.27"));
        assert!(!is_gitea("127.0.0.1:5000/steward-test/app:v1"));
        // A mirror's copy is Gitea too.
        assert!(is_gitea("registry.example.com:5000/gitea/gitea:1.22"));
        assert!(is_gitea("127.0.0.1:5000/mirror/gitea/gitea"));
        let d = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        assert!(is_gitea(&format!("gitea/gitea@{d}")));
        assert!(is_gitea(&format!("docker.gitea.com/gitea:1.23@{d}")));
        // The old hand parser took the digest for the tag here and ran the rootful hook.
        assert!(!is_gitea(&format!("gitea/gitea:1.22-rootless@{d}")));
        // ... and matched any repository ending in `gitea/gitea`.
        assert!(!is_gitea("notgitea/gitea:1.22"));
        assert!(!is_gitea("ghcr.io/notgitea/gitea"));
        assert!(!is_gitea("gitea"));
        assert!(!is_gitea(""));
        assert!(!is_gitea("gitea/gitea:1.22 ; true"));
    }

    #[test]
    fn scopes_pick_components() {
        let c = |kind| Component {
            name: String::new(),
            kind,
            object: String::new(),
            encoding: "zstd".into(),
            stored_size: 0,
            stored_sha256: String::new(),
            raw_size: 0,
            raw_sha256: String::new(),
        };
        let db = c(Kind::Postgres {
            container: "db".into(),
            image: String::new(),
            user: "u".into(),
            database: "d".into(),
        });
        let path = c(Kind::Path { container: "app".into(), path: "/data".into() });
        let configs = c(Kind::Containers);
        assert!(in_scope(&db, RestoreScope::All) && in_scope(&db, RestoreScope::Db));
        assert!(!in_scope(&db, RestoreScope::Paths));
        assert!(in_scope(&path, RestoreScope::Paths) && !in_scope(&path, RestoreScope::Db));
        assert!(!in_scope(&configs, RestoreScope::All));
    }
}
