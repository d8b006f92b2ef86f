//! Verification: every component is downloaded and its checksums compared with the manifest;
//! every database dump is loaded into a throw-away server of the same image, so "verified"
//! means "restorable", not only "not corrupted".

use std::time::{Duration, Instant};

use steward_engine::ExecSpec;
use steward_store::catalog::VerifiedMark;
use steward_store::manifest::{self, Component, Kind, Manifest};
use time::OffsetDateTime;

use crate::backup::{Backups, Failure};
use crate::{chunks, pipeline};

/// The ETag of each object checked, by object name: a restore reads exactly these bytes
/// again (an object replaced in between is refused, not loaded).
pub type Pins = std::collections::BTreeMap<String, String>;

/// How long a scratch server may take to accept connections.
const SCRATCH_READY: Duration = Duration::from_secs(90);

/// What a verification proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The backup.
    pub manifest: Manifest,
    /// Components whose checksums matched.
    pub components_checked: u32,
    /// Whether database dumps were loaded.
    pub database_restored: bool,
}

impl Backups {
    /// Verifies backup `id` (or `latest`) and records the result next to its manifest.
    pub async fn verify(&self, id: &str) -> Result<Verified, Failure> {
        let manifest = self.resolve(id).await.map_err(Failure::plain)?;
        let id = manifest.backup_id.clone();
        let mut database_restored = false;
        let total = manifest.components.iter().map(|c| c.raw_size).sum();
        self.meter.phase("verifying", Some(total));
        // The archives and the rest first: a damaged one fails in seconds, before a scratch
        // server is started for the dumps.
        let mut ordered: Vec<&Component> = manifest.components.iter().collect();
        ordered
            .sort_by_key(|c| matches!(c.kind, Kind::Postgres { .. } | Kind::PostgresBase { .. }));
        for c in ordered {
            match &c.kind {
                Kind::Postgres { image, user, database, container } => {
                    self.load_into_scratch(&id, c, image, container, user, database).await?;
                    database_restored = true;
                }
                // The base with every shipped WAL file replayed in a scratch server: what a
                // restore to `latest` would build (a gap fails it).
                Kind::PostgresBase { container, .. } => {
                    let latest = crate::pitr::PointInTime::Latest;
                    let replayed = self.recover_into(c, container, None, latest, None).await?;
                    tracing::info!(backup = %id, component = %c.name, last_replayed_transaction = %replayed, "base backup and WAL replayed");
                    database_restored = true;
                }
                Kind::Path { .. }
                | Kind::Containers
                | Kind::Events
                | Kind::Project { .. }
                | Kind::Wal { .. } => {
                    pipeline::check_component(self.read_io(), c).await.map_err(Failure::plain)?
                }
            }
            tracing::info!(backup = %id, component = %c.name, "verified");
        }
        let mark = VerifiedMark {
            backup_id: id.clone(),
            verified_at: OffsetDateTime::now_utc(),
            database_restored,
        };
        self.mark_verified(&id, &mark).await.map_err(Failure::plain)?;
        Ok(Verified {
            components_checked: manifest.components.len() as u32,
            database_restored,
            manifest,
        })
    }

    /// Checks every component's checksums without loading anything: what a restore does
    /// before it touches a container (of a chunked archive whose entries passed when it was
    /// taken, the stored bytes: [`chunks::check_stored`]).
    /// Returns the ETags of the objects checked.
    pub async fn check_all(&self, components: &[&Component]) -> Result<Pins, Failure> {
        let mut pins = Pins::new();
        for c in components {
            let trusted = c.entries_checked == Some(crate::tarcheck::RULES);
            let etag = if trusted && chunks::is_chunked(&c.encoding) {
                chunks::check_stored(self.read_io(), c).await
            } else {
                pipeline::check_component_pinned(self.read_io(), c).await
            }
            .map_err(Failure::plain)?;
            if let Some(etag) = etag {
                pins.insert(c.object.clone(), etag);
            }
        }
        Ok(pins)
    }

    async fn load_into_scratch(
        &self,
        id: &str,
        c: &Component,
        image: &str,
        container: &str,
        user: &str,
        database: &str,
    ) -> Result<(), Failure> {
        let image = self.scratch_image(c, image, container).await?;
        let name = format!("steward-verify-{}-{}", manifest::slug(id), manifest::slug(container));
        let password = uuid::Uuid::new_v4().simple().to_string();
        let env = vec![
            format!("POSTGRES_USER={user}"),
            format!("POSTGRES_PASSWORD={password}"),
            format!("POSTGRES_DB={database}"),
        ];
        // A leftover from a verification that died half-way would block the name.
        let _ = self.engine.remove(&name, true).await;
        let scratch =
            self.engine.start_scratch(&name, &image, env).await.map_err(Failure::plain)?;
        let result = self.restore_into_scratch(&scratch, c, user, database).await;
        if let Err(e) = self.engine.remove(&scratch, true).await {
            tracing::warn!(container = %name, error = %e, "could not remove the scratch server");
        }
        result
    }

    /// The image component `c` was taken from (`image`), or the database container's current
    /// one: what a scratch server of the same version runs.
    pub(crate) async fn scratch_image(
        &self,
        c: &Component,
        image: &str,
        container: &str,
    ) -> Result<String, Failure> {
        if self.engine.has_image(image).await.map_err(Failure::plain)? {
            return Ok(image.to_owned());
        }
        self.engine
            .inspect_json(container)
            .await
            .ok()
            .and_then(|v| v.pointer("/Config/Image").and_then(|i| i.as_str()).map(str::to_owned))
            .ok_or_else(|| {
                Failure::plain(format!(
                    "{}: neither the image it was taken from ({image}) nor container {container} exists here",
                    c.name
                ))
            })
    }

    async fn restore_into_scratch(
        &self,
        scratch: &str,
        c: &Component,
        user: &str,
        database: &str,
    ) -> Result<(), Failure> {
        wait_ready(self, scratch, user, database).await?;
        let stream = pipeline::read_component(self.read_io(), c).await.map_err(Failure::plain)?;
        // Roles other than the dump's user do not exist in a scratch server: load the data,
        // not the ownership.
        let spec = ExecSpec {
            cmd: [
                "pg_restore",
                "--exit-on-error",
                "--no-owner",
                "--no-acl",
                "-U",
                user,
                "-d",
                database,
            ]
            .map(String::from)
            .to_vec(),
            ..Default::default()
        };
        let out = self
            .engine
            .exec_stdin(scratch, &spec, stream, 20)
            .await
            .map_err(|e| Failure::plain(format!("{}: loading the dump: {e}", c.name)))?;
        Failure::check_exit(&out, format!("{}: pg_restore into a scratch server", c.name))
    }
}

/// Waits until a PostgreSQL container accepts TCP connections: the official image's
/// first-start server listens on its socket only, so a socket check could pass too early.
pub(crate) async fn wait_ready(
    backups: &Backups,
    container: &str,
    user: &str,
    database: &str,
) -> Result<(), Failure> {
    let started = Instant::now();
    let spec = ExecSpec {
        cmd: ["pg_isready", "-h", "127.0.0.1", "-U", user, "-d", database]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    loop {
        let last = match backups.engine.exec(container, spec.cmd.clone(), 5).await {
            Ok(out) if out.exit_code == 0 => return Ok(()),
            Ok(out) => out.tail,
            Err(e) => vec![e.to_string()],
        };
        if started.elapsed() > SCRATCH_READY {
            return Err(Failure {
                reason: format!("PostgreSQL in {container} not ready after {SCRATCH_READY:?}"),
                stderr_tail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
