//! The safety backup a restore takes of the data it is about to replace, so every restore can
//! be undone (`steward restore <safety id>`).
//!
//! Invariants: it is taken after every check of the restore passed and before anything is
//! stopped or touched; its id is in the restore's journal before it is taken, so a resumed
//! restore finds it (complete when its manifest exists; otherwise its objects are deleted
//! and it is taken again under the same id) and a restore never has two; it holds every
//! component the restore replaces, or the restore is refused with nothing changed. It is
//! skipped only when asked (`--no-safety-backup`) or when there is nothing to save (no
//! database or an empty one, paths absent or empty), and that decision is journaled too.

use steward_events::BackupReason;
use steward_store::manifest::{self, Component, Kind};
use time::OffsetDateTime;

use crate::backup::{Backups, Failure};
use crate::journal::RestoreJournal;
use crate::restore::psql;
use crate::verify::wait_ready;

/// Says whether a path holds anything (`$0`): `data` or `empty`.
const HOLDS: &str =
    r#"if [ -d "$0" ] && [ -n "$(ls -A -- "$0")" ]; then echo data; else echo empty; fi"#;

impl Backups {
    /// Takes (or, resumed, finds) the safety backup of what `chosen` replaces; its id, or
    /// None when it is skipped.
    pub(crate) async fn safety_backup(
        &self,
        chosen: &[&Component],
        wanted: bool,
        journal: &mut RestoreJournal,
    ) -> Result<Option<String>, Failure> {
        let refused = |f: Failure| {
            Failure {
            reason: format!(
                "the safety backup failed, nothing was changed: {}; fix it, or restore with --no-safety-backup to go on without one",
                f.reason
            ),
            stderr_tail: f.stderr_tail,
        }
        };
        if let Some(id) = journal.record.safety_backup_id.clone() {
            // Safety backups are written to the primary, whatever the restore reads from.
            if self.primary().resolve(&id).await.is_ok() {
                tracing::info!(safety_backup = %id, "the safety backup an earlier attempt took is complete");
                return Ok(Some(id));
            }
            // Killed while it was taken: what it stored is deleted, and it is taken again.
            if let Err(e) = self.store.delete_dir(&id).await {
                tracing::warn!(safety_backup = %id, error = %e, "could not delete what a killed safety backup stored");
            }
            self.take_safety(&id, chosen).await.map_err(refused)?;
            return Ok(Some(id));
        }
        if journal.record.safety_skipped.is_some() {
            return Ok(None);
        }
        let skip = match wanted {
            false => Some("not asked for (--no-safety-backup)".to_owned()),
            true => match self.holds_data(chosen).await.map_err(refused)? {
                true => None,
                false => Some(
                    "nothing to save: the databases and paths it replaces are absent or empty"
                        .to_owned(),
                ),
            },
        };
        if let Some(why) = skip {
            tracing::warn!(reason = %why, "restoring without a safety backup");
            journal
                .skip_safety(&why)
                .await
                .map_err(|e| Failure::plain(format!("{e}, nothing was changed")))?;
            return Ok(None);
        }
        // Paused on a rebuilt host: the safety backup would become the latest.
        self.check_not_paused().await.map_err(refused)?;
        let id = manifest::new_backup_id(OffsetDateTime::now_utc());
        journal
            .safety(&id)
            .await
            .map_err(|e| Failure::plain(format!("{e}, nothing was changed")))?;
        steward_failpoints::failpoint!("restore:safety_recorded");
        self.take_safety(&id, chosen).await.map_err(refused)?;
        Ok(Some(id))
    }

    /// Backs up the containers of `chosen` as backup `id`, and checks it holds every
    /// component the restore replaces.
    async fn take_safety(&self, id: &str, chosen: &[&Component]) -> Result<(), Failure> {
        let mut only: Vec<String> = vec![];
        for c in chosen {
            let name = match &c.kind {
                Kind::Postgres { container, .. }
                | Kind::PostgresBase { container, .. }
                | Kind::Path { container, .. } => container,
                Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => {
                    continue
                }
            };
            if !only.contains(name) {
                only.push(name.clone());
            }
        }
        tracing::info!(safety_backup = id, containers = ?only, "taking the safety backup of what the restore replaces");
        let taken = self.take(id, BackupReason::PreRestore, &only).await?;
        let missing: Vec<&str> = chosen
            .iter()
            .filter(|c| !taken.components.iter().any(|t| t.name == c.name))
            .map(|c| c.name.as_str())
            .collect();
        if !missing.is_empty() {
            // Incomplete for the undo: not kept as if it were one.
            if let Err(e) = self.store.delete_dir(id).await {
                tracing::warn!(safety_backup = id, error = %e, "could not delete an unusable safety backup");
            }
            return Err(Failure::plain(format!(
                "it would not hold {} (not labelled for backup now?)",
                missing.join(", ")
            )));
        }
        tracing::info!(
            safety_backup = id,
            "safety backup complete: `steward restore {id}` undoes this restore"
        );
        Ok(())
    }

    /// Whether any database or path `chosen` replaces holds data now: a database that exists
    /// with a table, a path with an entry. A path not on a mount counts as data (it cannot be
    /// looked at without the app).
    async fn holds_data(&self, chosen: &[&Component]) -> Result<bool, Failure> {
        for c in chosen {
            match &c.kind {
                Kind::Postgres { container, user, database, .. } => {
                    self.engine.start(container).await.map_err(Failure::plain)?;
                    wait_ready(self, container, user, "postgres").await?;
                    if self.databases(c, container, user, &[database]).await?.is_empty() {
                        continue;
                    }
                    let sql = "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";
                    let out = self
                        .engine
                        .exec(container, psql(user, database, sql), 20)
                        .await
                        .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
                    Failure::check_exit(&out, format!("{}: counting its tables", c.name))?;
                    let tables = out.tail.last().map(|l| l.trim()).unwrap_or_default();
                    if tables != "0" {
                        return Ok(true);
                    }
                }
                Kind::Path { container, path } => {
                    if !self.on_mount(container, path).await? {
                        return Ok(true);
                    }
                    let image = self.helper_image(container).await?;
                    let out = self
                        .engine
                        .run_with_volumes_of(
                            container,
                            &image,
                            vec!["/bin/sh".into(), "-c".into()],
                            vec![HOLDS.to_owned(), path.clone()],
                            5,
                        )
                        .await
                        .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
                    Failure::check_exit(&out, format!("{}: looking at {path}", c.name))?;
                    if out.tail.iter().any(|l| l.trim() == "data") {
                        return Ok(true);
                    }
                }
                // A running cluster always holds something (its catalogs, its roles).
                Kind::PostgresBase { .. } => return Ok(true),
                Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => {}
            }
        }
        Ok(false)
    }
}
