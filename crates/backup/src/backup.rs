//! One backup run: dump every database by exec, archive every path through the archive API,
//! save the containers' configuration, then write the manifest, last.
//!
//! Invariants: the manifest is written only when every component is stored and checked, after
//! its signature (`manifest.sig`, by the configured signing key); a
//! failed run deletes what it stored (best effort; retention removes what an unreachable
//! store kept); a container stopped for a consistent copy is started again whatever happens.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use steward_engine::{Engine, ExecSpec};
use steward_events::BackupReason;
use steward_store::manifest::{self, Component, Kind, Manifest};
use steward_store::signing::{Purpose, SIGNATURE};
use steward_store::store::{Store, Stored};
use time::OffsetDateTime;

use crate::config::BackupConfig;
use crate::pipeline::{self, Counted};
use crate::progress::Meter;
use crate::targets::{self, Target};

/// Lines of `pg_dump` stderr kept for the failure event.
const STDERR_LINES: usize = 20;

/// A failed backup, verification or restore: why, and the failing command's last stderr lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, naming the component.
    pub reason: String,
    /// Last stderr lines of the failing command.
    pub stderr_tail: Vec<String>,
}

impl Failure {
    /// `Ok` for a zero exit; otherwise a failure saying `<step> exited with N`, with the
    /// command's last output lines.
    pub fn check_exit(
        out: &steward_engine::ExecOutput,
        step: impl std::fmt::Display,
    ) -> Result<(), Failure> {
        if out.exit_code == 0 {
            return Ok(());
        }
        Err(Failure {
            reason: format!("{step} exited with {}", out.exit_code),
            stderr_tail: out.tail.clone(),
        })
    }

    /// A failure without command output.
    pub fn plain(reason: impl std::fmt::Display) -> Self {
        Self { reason: reason.to_string(), stderr_tail: vec![] }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// How to log in to a database container ([`Backups::pg_login`]).
#[derive(Debug, Clone)]
pub(crate) struct PgLogin {
    /// `POSTGRES_USER` (default `postgres`).
    pub user: String,
    /// `POSTGRES_DB` (default: the user's).
    pub database: String,
    /// `PGPASSWORD=…` when the container has a password.
    pub env: Vec<String>,
}

/// Takes backups, verifies and restores them.
#[derive(Debug, Clone)]
pub struct Backups {
    pub(crate) engine: Engine,
    /// The primary: where backups are written, and the journal kept.
    pub(crate) store: Store,
    /// The second copy (`STEWARD_BACKUP_COPY_*`), written after each backup ([`crate::copy`]).
    pub(crate) copy: Option<Store>,
    /// Where listing, verifying and restoring read: the primary, or the copy
    /// ([`Backups::from_copy`]). Writes (backups, the journal) always go to the primary.
    pub(crate) reading: Store,
    /// Whether `reading` is the copy.
    pub(crate) reading_copy: bool,
    pub(crate) config: BackupConfig,
    pub(crate) meter: Arc<Meter>,
    /// The bus whose stream and state buckets each backup exports ([`Backups::with_bus`]).
    pub(crate) bus: Option<steward_bus::Bus>,
}

impl Backups {
    /// Backups of the containers in the configured scope, through `engine`, into `store`
    /// (and into the configured copy).
    pub fn new(engine: Engine, store: Store, config: BackupConfig) -> Self {
        let copy = config.copy.as_ref().map(Store::lazy_copy);
        let reading = store.clone();
        let meter = Arc::default();
        Self { engine, reading, reading_copy: false, store, copy, config, meter, bus: None }
    }

    /// The same, each backup also exporting `bus`'s stream and state buckets ([`crate::stack`]).
    pub fn with_bus(self, bus: steward_bus::Bus) -> Self {
        Self { bus: Some(bus), ..self }
    }

    /// The same, reading from the second copy; `None` when no copy is configured.
    pub fn from_copy(&self) -> Option<Self> {
        let copy = self.copy.clone()?;
        Some(Self { reading: copy, reading_copy: true, ..self.clone() })
    }

    /// The same, reading from the primary.
    pub fn primary(&self) -> Self {
        Self { reading: self.store.clone(), reading_copy: false, ..self.clone() }
    }

    /// Whether this reads from the copy.
    pub fn reads_copy(&self) -> bool {
        self.reading_copy
    }

    /// The second copy's store, if configured.
    pub fn copy_store(&self) -> Option<&Store> {
        self.copy.as_ref()
    }

    /// What a restore or verification reads through: the store it reads from.
    pub(crate) fn read_io(&self) -> pipeline::Io<'_> {
        pipeline::Io { store: &self.reading, keys: &self.config.keys, meter: &self.meter }
    }

    /// The settings.
    pub fn config(&self) -> &BackupConfig {
        &self.config
    }

    /// The running job's progress.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    pub(crate) fn io(&self) -> pipeline::Io<'_> {
        pipeline::Io { store: &self.store, keys: &self.config.keys, meter: &self.meter }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes backup `id`. On failure nothing of it is left usable.
    pub async fn take(
        &self,
        id: &str,
        reason: BackupReason,
        only: &[String],
    ) -> Result<Manifest, Failure> {
        let started = Instant::now();
        self.meter.phase("backing up", None);
        let taken_at = OffsetDateTime::now_utc();
        let result = self.take_components(id, only).await;
        let components = match result {
            Ok(c) => c,
            Err(e) => {
                if let Err(cleanup) = self.store.delete_dir(id).await {
                    tracing::warn!(backup = id, error = %cleanup, "could not delete the failed backup's objects; retention will");
                }
                return Err(e);
            }
        };
        let digests = components.iter().any(|c| crate::chunks::hashes_chunks(&c.encoding));
        let manifest = Manifest {
            format: if digests { manifest::FORMAT_CHUNK_DIGESTS } else { manifest::FORMAT },
            backup_id: id.to_owned(),
            taken_at,
            reason,
            docker_host: self.engine.host().to_owned(),
            host: self.bus.as_ref().and_then(|b| b.host()).map(str::to_owned),
            components,
        };
        let body = serde_json::to_vec_pretty(&manifest).map_err(Failure::plain)?;
        // The signature first: the manifest stays the last object, what makes a backup complete.
        let signature = self.config.signing.sign(Purpose::Manifest, &body);
        steward_failpoints::failpoint!("backup:manifest:before");
        let stored =
            match self.store.put(&format!("{id}/{SIGNATURE}"), Bytes::from(signature)).await {
                Ok(()) => {
                    self.store.put(&format!("{id}/{}", manifest::MANIFEST), Bytes::from(body)).await
                }
                Err(e) => Err(e),
            };
        if let Err(e) = stored {
            let _ = self.store.delete_dir(id).await;
            return Err(Failure::plain(e));
        }
        steward_failpoints::failpoint!("backup:manifest");
        tracing::info!(
            backup = id,
            components = manifest.components.len(),
            stored_bytes = manifest.stored_size(),
            seconds = started.elapsed().as_secs_f64(),
            "backup complete"
        );
        Ok(manifest)
    }

    async fn take_components(&self, id: &str, only: &[String]) -> Result<Vec<Component>, Failure> {
        let plan = targets::plan(&self.engine, self.config.scope.as_deref(), only)
            .await
            .map_err(Failure::plain)?;
        let mut components = vec![];
        for t in plan.targets.iter().filter(|t| t.labels.postgres) {
            components.push(self.dump_postgres(id, t).await?);
            steward_failpoints::failpoint!("backup:stored:database");
            if t.labels.pitr {
                components.push(self.base_backup(id, t).await?);
                steward_failpoints::failpoint!("backup:stored:base");
            }
        }
        for t in plan.targets.iter().filter(|t| !t.labels.paths.is_empty()) {
            components.extend(self.archive_paths(id, t).await?);
            steward_failpoints::failpoint!("backup:stored:paths");
        }
        components.push(self.save_configs(id, &plan.configs).await?);
        steward_failpoints::failpoint!("backup:stored:containers");
        let labels: Vec<_> = plan.targets.iter().map(|t| &t.container.labels).collect();
        components.extend(self.save_project(id, &labels).await?);
        // Last: the stream as of the end of the backup.
        if let Some(bus) = &self.bus {
            components.push(self.export_events(id, bus).await?);
        }
        Ok(components)
    }

    async fn dump_postgres(&self, id: &str, t: &Target) -> Result<Component, Failure> {
        let name = &t.container.name;
        let PgLogin { user, database, env } = self.pg_login(name).await?;
        // Uncompressed custom format: zstd compresses it better and faster than pg_dump's zlib.
        let spec = ExecSpec {
            cmd: ["pg_dump", "-Fc", "-Z0", "-U", &user, "-d", &database].map(String::from).to_vec(),
            env,
            user: None,
        };
        let component = format!("postgres/{name}");
        let object = self.object_name(format!("{id}/postgres-{}.dump.zst", manifest::slug(name)));
        tracing::info!(backup = id, component, "dumping");
        self.meter.item(&component);
        let (stored, raw, out) =
            self.store_exec_stdout(name, &spec, &object, &component, STDERR_LINES).await?;
        if raw.size == 0 || !raw.head.starts_with(b"PGDMP") {
            return Err(Failure {
                reason: format!(
                    "{component}: pg_dump produced {} bytes that are not a custom-format dump",
                    raw.size
                ),
                stderr_tail: out.tail,
            });
        }
        let kind = Kind::Postgres {
            container: name.clone(),
            image: t.container.image_id.clone(),
            user,
            database,
        };
        Ok(self.entry(component, kind, object, stored, raw))
    }

    /// Stores the stdout of `spec` run in `container` as `object`; the command's exit code is
    /// checked before the upload's result (a failing command often leaves a plausible-looking
    /// prefix). Returns what was stored, the raw bytes' count and the command's stderr tail.
    pub(crate) async fn store_exec_stdout(
        &self,
        container: &str,
        spec: &ExecSpec,
        object: &str,
        component: &str,
        keep_stderr: usize,
    ) -> Result<(Stored, Counted, steward_engine::ExecOutput), Failure> {
        let mut exec = self
            .engine
            .exec_stdout(container, spec, keep_stderr)
            .await
            .map_err(|e| Failure::plain(format!("{component}: {e}")))?;
        let stdout = std::mem::replace(&mut exec.stdout, Box::pin(futures::stream::empty()));
        let stored =
            pipeline::store_stream(self.io(), object, stdout, self.config.zstd_level).await;
        let out = exec.finish().await.map_err(|e| Failure::plain(format!("{component}: {e}")))?;
        let program = spec.cmd.first().map(String::as_str).unwrap_or_default();
        Failure::check_exit(&out, format!("{component}: {program}"))?;
        let (stored, raw) = stored.map_err(|e| Failure::plain(format!("{component}: {e}")))?;
        Ok((stored, raw, out))
    }

    /// Runs `spec` in `container` and checks its exit: its last `keep` output lines, or a
    /// failure naming `what` (an engine error) or `what: step` (a non-zero exit) with them.
    pub(crate) async fn exec_checked(
        &self,
        container: &str,
        spec: &ExecSpec,
        keep: usize,
        what: &str,
        step: impl std::fmt::Display,
    ) -> Result<Vec<String>, Failure> {
        let out = self
            .engine
            .exec_as(container, spec, keep)
            .await
            .map_err(|e| Failure::plain(format!("{what}: {e}")))?;
        Failure::check_exit(&out, format!("{what}: {step}"))?;
        Ok(out.tail)
    }

    /// Who a database's tools run as: the official image's `POSTGRES_USER`, `POSTGRES_DB`
    /// and `POSTGRES_PASSWORD` (as `PGPASSWORD`), read from the container.
    pub(crate) async fn pg_login(&self, container: &str) -> Result<PgLogin, Failure> {
        let env = self.engine.container_env(container).await.map_err(Failure::plain)?;
        let user = env.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".into());
        let database = env.get("POSTGRES_DB").cloned().unwrap_or_else(|| user.clone());
        let env = env
            .get("POSTGRES_PASSWORD")
            .map(|p| vec![format!("PGPASSWORD={p}")])
            .unwrap_or_default();
        Ok(PgLogin { user, database, env })
    }

    async fn archive_paths(&self, id: &str, t: &Target) -> Result<Vec<Component>, Failure> {
        let name = &t.container.name;
        if t.labels.stop {
            tracing::info!(backup = id, container = %name, "stopping for a consistent copy");
            let grace = self.config.stop_timeout.as_secs().min(i32::MAX as u64) as i32;
            if let Err(e) = self.engine.stop(name, grace).await {
                // It may be half-stopped: make sure it runs again before reporting.
                let _ = self.engine.start(name).await;
                return Err(Failure::plain(format!("{name}: {e}")));
            }
        }
        let copied = self.copy_paths(id, t).await;
        if t.labels.stop {
            if let Err(e) = self.engine.start(name).await {
                let copy = copied.as_ref().err().map(|c| format!("; the copy also failed: {c}"));
                return Err(Failure::plain(format!(
                    "{name} was stopped for the copy and could not be started again: {e}{}",
                    copy.unwrap_or_default()
                )));
            }
            tracing::info!(backup = id, container = %name, "started again");
        }
        copied
    }

    async fn copy_paths(&self, id: &str, t: &Target) -> Result<Vec<Component>, Failure> {
        let name = &t.container.name;
        let mut out = vec![];
        for path in &t.labels.paths {
            let component = format!("{name}:{path}");
            let object = self.object_name(format!(
                "{id}/path-{}-{}.tar.zst",
                manifest::slug(name),
                manifest::slug(path)
            ));
            tracing::info!(backup = id, component, "archiving");
            self.meter.item(&component);
            // On Podman, listed first for the owners its archive read loses.
            let tar = self.engine.download_path_listed(name, path, None);
            let kind = Kind::Path { container: name.clone(), path: path.clone() };
            if self.config.incremental {
                out.push(self.store_chunked(id, component, kind, tar).await?);
                continue;
            }
            let (stored, raw) =
                pipeline::store_stream(self.io(), &object, tar, self.config.zstd_level)
                    .await
                    .map_err(|e| Failure::plain(format!("{component}: {e}")))?;
            out.push(self.entry(component, kind, object, stored, raw));
        }
        Ok(out)
    }

    async fn save_configs(&self, id: &str, names: &[String]) -> Result<Component, Failure> {
        let mut all = Vec::with_capacity(names.len());
        for name in names {
            all.push(self.engine.inspect_json(name).await.map_err(Failure::plain)?);
        }
        let body = Bytes::from(serde_json::to_vec(&all).map_err(Failure::plain)?);
        let object = self.object_name(format!("{id}/containers.json.zst"));
        self.meter.item("containers");
        let stream = futures::stream::once(async move { Ok::<_, io::Error>(body) });
        let (stored, raw) =
            pipeline::store_stream(self.io(), &object, stream, self.config.zstd_level)
                .await
                .map_err(|e| Failure::plain(format!("containers: {e}")))?;
        Ok(self.entry("containers".into(), Kind::Containers, object, stored, raw))
    }
}

impl Backups {
    /// The object's name, marked `.age` when it is encrypted.
    pub(crate) fn object_name(&self, name: String) -> String {
        if self.config.keys.encrypts() {
            format!("{name}.age")
        } else {
            name
        }
    }

    pub(crate) fn entry(
        &self,
        name: String,
        kind: Kind,
        object: String,
        stored: Stored,
        raw: Counted,
    ) -> Component {
        Component {
            name,
            kind,
            object,
            encoding: self.config.keys.encoding().into(),
            stored_size: stored.size,
            stored_sha256: stored.sha256,
            raw_size: raw.size,
            raw_sha256: raw.sha256,
            entries_checked: None,
            tree: None,
        }
    }
}

/// A [`Backups`] on a bucket of its own on the test bed's S3, with no engine behind it (it
/// fails every Docker call): for what only reads and writes the bucket.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub async fn backups() -> (Backups, Store) {
        use steward_store::config::{ENV_BUCKET, ENV_ENDPOINT};
        let bucket = steward_testkit::unique_name("steward-unit").to_lowercase().replace('_', "-");
        let endpoint = steward_testkit::testbed::require("STEWARD_TEST_S3_ENDPOINT");
        let mut env = steward_runtime::Env::from_pairs([
            (ENV_BUCKET, bucket.as_str()),
            (ENV_ENDPOINT, endpoint.as_str()),
        ]);
        let mut cfg = crate::config::BackupConfig::read(&mut env);
        cfg.trust = steward_store::signing::Trust::new(vec![cfg.signing.public()]);
        let store = Store::connect_static(
            &cfg.s3,
            &steward_testkit::testbed::require("STEWARD_TEST_S3_ACCESS_KEY"),
            &steward_testkit::testbed::require("STEWARD_TEST_S3_SECRET_KEY"),
        )
        .await;
        store.create_bucket().await.unwrap_or_else(|e| panic!("create bucket: {e}"));
        let engine = Engine::new("unix:///nonexistent", std::time::Duration::from_secs(1));
        (Backups::new(engine, store.clone(), cfg), store)
    }

    /// A backup's manifest with no components.
    pub fn manifest(id: &str, taken_at: OffsetDateTime) -> Manifest {
        Manifest {
            format: manifest::FORMAT,
            backup_id: id.into(),
            taken_at,
            reason: BackupReason::Schedule,
            docker_host: "test".into(),
            host: None,
            components: vec![],
        }
    }

    /// A component of `kind`, stored nowhere.
    pub fn component(kind: Kind) -> Component {
        Component {
            name: String::new(),
            kind,
            object: String::new(),
            encoding: "zstd".into(),
            stored_size: 0,
            stored_sha256: String::new(),
            raw_size: 0,
            raw_sha256: String::new(),
            entries_checked: None,
            tree: None,
        }
    }

    /// A base backup of `container` on timeline 1, ending in segment 2 (16 MiB segments).
    pub fn base_kind(container: &str) -> Kind {
        Kind::PostgresBase {
            container: container.into(),
            image: String::new(),
            user: "u".into(),
            data_dir: "/var/lib/postgresql/data".into(),
            timeline: 1,
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
        }
    }

    /// Removes the bucket and what is in it.
    pub async fn done(store: Store) {
        if let Err(e) = store.destroy().await {
            eprintln!("could not remove the test bucket: {e}");
        }
    }
}
