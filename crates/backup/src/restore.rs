//! Restore: check every checksum (pinning each object's ETag), stop the app containers, load
//! each component beside the live data (a new database in one transaction, the archive into a
//! staging directory inside the path), then swap them in by renames, start the containers,
//! wait for health, and only then remove the data replaced.
//!
//! Invariants: nothing is touched before the manifest is signed by a trusted key (or unsigned
//! and explicitly allowed), every container it names exists and carries the matching backup
//! label now (`guard`), and every component in scope has been downloaded, matched its
//! manifest and, for a path, had every tar entry checked (`tarcheck`) — of a chunked path
//! whose signed manifest says its entries passed these rules when it was taken, every chunk's
//! stored bytes matched the signed index and the first chunk opened (`chunks::check_stored`:
//! the same plaintext, so the same verdict); the bytes loaded are
//! those checked (an object replaced since is refused) and are checked again as they load; the
//! live data is renamed away only once every copy is loaded (the journal's commit point,
//! [`SwapState::Swapping`]): a failure or kill before it leaves the live data untouched, one
//! after it is finished by the next attempt; containers stopped here are started again whether
//! the restore succeeded or not.

use std::time::{Duration, Instant};

use steward_engine::ExecSpec;
use steward_events::RestoreScope;
use steward_probe::{Prober, Target, Verdict};
use steward_store::manifest::{Component, Kind, Manifest};

use crate::backup::{Backups, Failure};
use crate::journal::{RestoreJournal, SwapState};
use crate::pipeline;
use crate::verify::{wait_ready, Pins};

/// Per base backup component (by name), the container whose shipped WAL a point-in-time
/// restore replays: the one the backup recorded.
type WalOf = std::collections::BTreeMap<String, String>;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup.
    pub manifest: Manifest,
    /// Components restored.
    pub restored: Vec<String>,
    /// The backup of what it replaced, taken before it touched anything.
    pub safety_backup_id: Option<String>,
    /// What the operator should know of how it was restored (`restore.done`'s `notes`).
    pub notes: Vec<String>,
}

/// How a restore goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreOptions {
    /// An unsigned backup named by id is restored too.
    pub allow_unsigned: bool,
    /// Take a safety backup of what the restore replaces first (skipped anyway when there is
    /// nothing to save: no database, an empty one, empty paths).
    pub safety_backup: bool,
    /// Databases come back from their base backups (whole clusters, `crate::pitr`) instead
    /// of their dumps; the database containers are stopped for the swap.
    pub physical: bool,
    /// With `physical`: the shipped WAL replayed on the base up to this point, in a scratch
    /// server first ([`crate::pitr`]); without it, the base alone.
    pub to_time: Option<crate::pitr::PointInTime>,
}

fn in_scope(c: &Component, scope: RestoreScope, physical: bool) -> bool {
    match (&c.kind, scope) {
        // Brought back by hand on a rebuilt host (`steward-backup extract`, docs/runbooks.md).
        (Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. }, _) => false,
        // A database comes back from its dump or from its base backup, never both.
        (Kind::Postgres { .. }, RestoreScope::All | RestoreScope::Db) => !physical,
        (Kind::PostgresBase { .. }, RestoreScope::All | RestoreScope::Db) => physical,
        (Kind::Path { .. }, RestoreScope::All | RestoreScope::Paths) => true,
        _ => false,
    }
}

fn container_of(c: &Component) -> Option<&str> {
    match &c.kind {
        Kind::Postgres { container, .. }
        | Kind::PostgresBase { container, .. }
        | Kind::Path { container, .. } => Some(container),
        Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => None,
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
    /// Restores backup `id` (or `latest`), without a safety backup (the library's call; the
    /// service takes one: [`RestoreOptions`]).
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
        let options = RestoreOptions::default();
        self.restore_journaled(id, scope, options, busy, &mut RestoreJournal::none()).await
    }

    /// Restores backup `id` even if its manifest is unsigned (the operator's explicit choice
    /// for a backup taken before manifests were signed); every other check still applies.
    pub async fn restore_unsigned(
        &self,
        id: &str,
        scope: RestoreScope,
    ) -> Result<Restored, Failure> {
        let options = RestoreOptions { allow_unsigned: true, ..Default::default() };
        self.restore_journaled(id, scope, options, &Busy::new(), &mut RestoreJournal::none()).await
    }

    /// [`Backups::restore_unless_busy`], recording in `journal` the backup it resolved, its
    /// safety backup before it is taken, each container before it is stopped and each stage of
    /// the swap. A journal an interrupted attempt left makes this attempt restore the same
    /// backup, keep the same safety backup and start the containers that attempt had stopped.
    pub async fn restore_journaled(
        &self,
        id: &str,
        scope: RestoreScope,
        options: RestoreOptions,
        busy: &Busy,
        journal: &mut RestoreJournal,
    ) -> Result<Restored, Failure> {
        let result = self.restore_attempt(id, scope, options, busy, journal).await;
        match &result {
            // Only a whole restore ends a rebuilt host's pause: after `--only db` its paths
            // are still empty, and a backup now would become `latest` without them.
            Ok(done) if scope == RestoreScope::All => self.end_pause(&done.manifest).await,
            Ok(_) => {}
            Err(_) => {
                self.discard_loading_copies(scope, options, journal).await;
                self.drop_unfinished_safety(journal).await;
            }
        }
        result
    }

    /// A failed restore whose safety backup a killed attempt began and this one did not
    /// finish (e.g. the container went away meanwhile): its objects are deleted, so no
    /// incomplete backup is left, and it is not named as the way back. Only when the listing
    /// proves the manifest absent: a read error keeps everything.
    async fn drop_unfinished_safety(&self, journal: &mut RestoreJournal) {
        let Some(id) = journal.record.safety_backup_id.clone() else { return };
        // Safety backups are written to the primary, whatever the restore reads from.
        let store = &self.store;
        let objects = match store.list_objects(&id).await {
            Ok(objects) => objects,
            Err(e) => {
                tracing::warn!(safety_backup = %id, error = %e, "cannot tell whether the safety backup is complete");
                return;
            }
        };
        if objects.iter().any(|o| o.ends_with(&format!("/{}", steward_store::manifest::MANIFEST))) {
            return;
        }
        if let Err(e) = store.delete_dir(&id).await {
            tracing::warn!(safety_backup = %id, error = %e, "could not delete an unfinished safety backup");
            return;
        }
        tracing::info!(safety_backup = %id, "deleted the safety backup an interrupted attempt had begun");
        journal.record.safety_backup_id = None;
    }

    /// A failed attempt that was still loading (its own or an interrupted earlier one's,
    /// e.g. when a container went away meanwhile) leaves no copy beside the live data, which
    /// it never touched. Best effort: what cannot be removed is logged, and removed by the
    /// next restore of the same flow.
    async fn discard_loading_copies(
        &self,
        scope: RestoreScope,
        options: RestoreOptions,
        journal: &RestoreJournal,
    ) {
        let Some(swap) = journal.record.swap.as_ref().filter(|s| s.state == SwapState::Loading)
        else {
            return;
        };
        let Ok(manifest) =
            self.resolve_allowing(&journal.record.backup_id, options.allow_unsigned).await
        else {
            return;
        };
        let manifest = self.match_containers_leniently(manifest).await;
        for c in manifest.components.iter().filter(|c| in_scope(c, scope, options.physical)) {
            if let Err(e) = self.discard_copy(c, &swap.tag).await {
                tracing::warn!(component = %c.name, error = %e.reason, "could not remove the restore's copy");
            }
        }
    }

    async fn restore_attempt(
        &self,
        id: &str,
        scope: RestoreScope,
        options: RestoreOptions,
        busy: &Busy,
        journal: &mut RestoreJournal,
    ) -> Result<Restored, Failure> {
        let allow_unsigned = options.allow_unsigned;
        // `latest` may name another backup by now: the interrupted attempt's is restored.
        let id = match (journal.resumed(), options.to_time) {
            (true, _) => journal.record.backup_id.clone(),
            // The base a recovery to T starts from must be older than T.
            (false, Some(crate::pitr::PointInTime::At(t))) if id == "latest" => {
                self.newest_before(t).await?
            }
            (false, _) => id.to_owned(),
        };
        let manifest = self.resolve_allowing(&id, allow_unsigned).await.map_err(Failure::plain)?;
        // Shipped WAL is kept under the container the backup recorded, whatever the matching
        // below names it here.
        let wal_of: WalOf = manifest
            .components
            .iter()
            .filter_map(|c| match &c.kind {
                Kind::PostgresBase { container, .. } => Some((c.name.clone(), container.clone())),
                _ => None,
            })
            .collect();
        // A swap an interrupted attempt began is finished whatever holds now: stopping there
        // would leave the data half swapped. That attempt checked everything before it began.
        let committed = journal.record.swap.as_ref().is_some_and(|s| s.state != SwapState::Loading);
        // Containers named otherwise here (compose v1 against v2) by their compose service.
        let manifest = match committed {
            false => self.match_containers(manifest).await?,
            true => self.match_containers_leniently(manifest).await,
        };
        let chosen: Vec<&Component> =
            manifest.components.iter().filter(|c| in_scope(c, scope, options.physical)).collect();
        let mut pins = Pins::new();
        let mut notes = vec![];
        if !committed {
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
            if chosen.is_empty() {
                return Err(Failure::plain(format!(
                    "backup {} holds nothing to restore for {scope:?}",
                    manifest.backup_id
                )));
            }
            self.check_targets(&manifest).await?;
            // The shipped WAL a point-in-time restore needs, before the downloads, the safety
            // backup and the stop: a refused restore costs and touches nothing. The replay
            // checks again (the bucket may change meanwhile).
            if let Some(to) = options.to_time {
                for c in chosen.iter().filter(|c| matches!(c.kind, Kind::PostgresBase { .. })) {
                    let Some(wal_of) = wal_of.get(&c.name) else { continue };
                    match self.wal_to_replay(c, wal_of, to).await {
                        Ok(replay) => notes.extend(replay.note),
                        Err(mut f) => {
                            if !f.reason.contains("nothing was changed") {
                                f.reason = format!("{}; nothing was changed", f.reason);
                            }
                            return Err(f);
                        }
                    }
                }
            }
            tracing::info!(backup = %manifest.backup_id, components = chosen.len(), "checking checksums before touching anything");
            let total = chosen.iter().map(|c| c.raw_size).sum();
            self.meter.phase("checking", Some(total));
            pins = self.check_all(&chosen).await.map_err(|mut f| {
                f.reason = format!("{}; nothing was changed", f.reason);
                f
            })?;
            for name in chosen.iter().filter_map(|c| container_of(c)) {
                if self.engine.is_running(name).await.map_err(Failure::plain)?.is_none() {
                    return Err(Failure::plain(format!(
                        "container {name} does not exist: create the stack first (docker-compose up -d), then restore"
                    )));
                }
            }
        }
        steward_failpoints::failpoint!("restore:checked");
        journal
            .resolved(&manifest.backup_id)
            .await
            .map_err(|e| Failure::plain(format!("{e}, nothing was changed")))?;
        // Past the commit point the checks that found them did not run again: the attempt
        // that ran them kept them.
        match committed {
            false => journal
                .noted(&notes)
                .await
                .map_err(|e| Failure::plain(format!("{e}, nothing was changed")))?,
            true => notes = journal.record.notes.clone(),
        }
        // Before anything is stopped or touched (and after every check, so a refused restore
        // leaves no backup behind); past the commit point it was taken already.
        if !committed {
            self.safety_backup(&chosen, options.safety_backup, journal).await?;
            steward_failpoints::failpoint!("restore:safety");
        }
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
        // A cluster restored from its base backup is swapped with its server stopped: after
        // the apps, started again before them.
        let servers: Vec<String> = chosen
            .iter()
            .filter_map(|c| match &c.kind {
                Kind::PostgresBase { container, .. } => Some(container.clone()),
                _ => None,
            })
            .collect();
        for server in &servers {
            if !apps.contains(server) {
                apps.push(server.clone());
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
            let total = chosen.iter().map(|c| c.raw_size).sum();
            self.meter.phase("restoring", Some(total));
            let replay = options.to_time.map(|to| (to, &wal_of));
            result = self.restore_components(&chosen, &pins, replay, journal).await;
        }
        // Started again whatever happened: a failed restore must not leave the stack down.
        // Database servers first: the apps need them.
        stopped.sort_by_key(|c| !servers.contains(c));
        apps.sort_by_key(|c| !servers.contains(c));
        for app in &stopped {
            if let Err(e) = self.engine.start(app).await {
                tracing::error!(container = %app, error = %e, "could not start the container again");
                if result.is_ok() {
                    let tag = journal.record.swap.as_ref().map(|s| s.tag.as_str()).unwrap_or("");
                    result = Err(Failure::plain(format!(
                        "restored, but {app} does not start: {e}; {}",
                        kept(&chosen, tag)
                    )));
                }
            }
        }
        steward_failpoints::failpoint!("restore:started");
        let restored = result?;
        // The previous data is kept until the restore has succeeded: an unhealthy app can
        // still be put back by hand.
        let tag = journal.record.swap.as_ref().map(|s| s.tag.clone()).unwrap_or_default();
        for app in &apps {
            let healthy = match self.wait_healthy(app).await {
                Ok(()) => self.after_restore(app).await,
                Err(e) => Err(e),
            };
            if let Err(mut f) = healthy {
                f.reason = format!("{}; {}", f.reason, kept(&chosen, &tag));
                return Err(f);
            }
        }
        steward_failpoints::failpoint!("restore:healthy");
        for c in &chosen {
            if let Err(e) = self.remove_previous(c, &tag).await {
                tracing::warn!(component = %c.name, error = %e, "restored, but the previous data could not be removed");
            }
        }
        steward_failpoints::failpoint!("restore:cleaned");
        let safety_backup_id = journal.record.safety_backup_id.clone();
        Ok(Restored { manifest, restored, safety_backup_id, notes })
    }

    /// Loads every component beside the live data, then (the journal's commit point) swaps
    /// them in. A failure while loading discards the copies: the live data was never
    /// touched. A resumed attempt past the commit point only finishes the swaps.
    async fn restore_components(
        &self,
        chosen: &[&Component],
        pins: &Pins,
        replay: Option<(crate::pitr::PointInTime, &WalOf)>,
        journal: &mut RestoreJournal,
    ) -> Result<Vec<String>, Failure> {
        let state = journal.record.swap.as_ref().map(|s| s.state);
        if !matches!(state, Some(SwapState::Swapping | SwapState::Swapped)) {
            let tag = journal
                .stage(SwapState::Loading)
                .await
                .map_err(|e| Failure::plain(format!("{e}, nothing was changed")))?;
            steward_failpoints::failpoint!("restore:loading");
            if let Err(mut f) = self.load_all(chosen, pins, replay, &tag).await {
                for c in chosen {
                    if let Err(e) = self.discard_copy(c, &tag).await {
                        tracing::warn!(component = %c.name, error = %e, "could not remove the restore's copy");
                    }
                }
                f.reason = format!("{}; nothing was changed", f.reason);
                return Err(f);
            }
        }
        if state != Some(SwapState::Swapped) {
            let tag = journal.stage(SwapState::Swapping).await.map_err(|e| {
                Failure::plain(format!("{e}; nothing was changed, the restored copies are discarded by the next restore"))
            })?;
            steward_failpoints::failpoint!("restore:swapping");
            // What was swapped in keeps its previous data beside it until the restore ends:
            // a restore failing now says where, so nothing is left unnamed.
            for (i, c) in chosen.iter().enumerate() {
                if let Err(mut f) = self.swap_in(c, pins, &tag).await {
                    f.reason = format!(
                        "{}: the swap did not finish (each component holds either its previous data or the backup's); restore again",
                        f.reason
                    );
                    if i > 0 {
                        f.reason = format!("{}; {}", f.reason, kept(&chosen[..i], &tag));
                    }
                    return Err(f);
                }
            }
            journal.stage(SwapState::Swapped).await.map_err(Failure::plain)?;
            steward_failpoints::failpoint!("restore:swapped");
        }
        Ok(chosen.iter().map(|c| c.name.clone()).collect())
    }

    async fn load_all(
        &self,
        chosen: &[&Component],
        pins: &Pins,
        replay: Option<(crate::pitr::PointInTime, &WalOf)>,
        tag: &str,
    ) -> Result<(), Failure> {
        for c in chosen {
            let pin = pins.get(&c.object).map(String::as_str);
            match &c.kind {
                Kind::Postgres { container, user, database, .. } => {
                    self.load_database(c, container, user, database, pin, tag).await?;
                    steward_failpoints::failpoint!("restore:database_loaded");
                }
                Kind::Path { container, path } => {
                    self.load_path(c, container, path, pin, tag).await?;
                    steward_failpoints::failpoint!("restore:path_loaded");
                }
                Kind::PostgresBase { container, data_dir, .. } => {
                    match replay {
                        None => self.load_base(c, container, data_dir, pin, tag).await?,
                        Some((to, wal_of)) => {
                            let wal_of = wal_of.get(&c.name).unwrap_or(container);
                            let side = self.base_sides(c, container, data_dir, tag).await?;
                            self.in_volumes(
                                c,
                                container,
                                PREPARE,
                                &side.args(),
                                "preparing the restore's copy",
                            )
                            .await?;
                            self.recover_into(c, wal_of, pin, to, Some(&side.staging)).await?;
                            self.in_volumes(
                                c,
                                container,
                                STAGED_BASE,
                                &side.args(),
                                "checking the restore's copy",
                            )
                            .await?;
                        }
                    }
                    steward_failpoints::failpoint!("restore:base_loaded");
                }
                Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => {
                    continue
                }
            }
            tracing::info!(component = %c.name, "loaded beside the live data");
        }
        Ok(())
    }

    /// Swaps component `c`'s copy in (idempotent: a resumed attempt runs it again).
    async fn swap_in(&self, c: &Component, pins: &Pins, tag: &str) -> Result<(), Failure> {
        match &c.kind {
            Kind::Postgres { container, user, database, .. } => {
                self.swap_database(c, container, user, database, tag).await?;
                steward_failpoints::failpoint!("restore:database_swapped");
            }
            Kind::Path { container, path } => {
                let pin = pins.get(&c.object).map(String::as_str);
                self.swap_path(c, container, path, pin, tag).await?;
                steward_failpoints::failpoint!("restore:path_swapped");
            }
            Kind::PostgresBase { container, data_dir, .. } => {
                let side = self.base_sides(c, container, data_dir, tag).await?;
                self.in_volumes(c, container, SWAP, &side.args(), "swapping in the cluster")
                    .await?;
                steward_failpoints::failpoint!("restore:base_swapped");
            }
            Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => {
                return Ok(())
            }
        }
        tracing::info!(component = %c.name, "swapped in");
        Ok(())
    }

    async fn run_in(&self, c: &Component, container: &str, cmd: &[&str]) -> Result<(), Failure> {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        let out = self
            .engine
            .exec(container, cmd.clone(), 20)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        Failure::check_exit(&out, format!("{}: {}", c.name, cmd.join(" ")))
    }

    /// Loads the dump into a new database `<db>_steward_restore_<tag>` in one transaction,
    /// from exactly the object checked (`pin`), and checks the result opens.
    async fn load_database(
        &self,
        c: &Component,
        container: &str,
        user: &str,
        database: &str,
        pin: Option<&str>,
        tag: &str,
    ) -> Result<(), Failure> {
        self.engine.start(container).await.map_err(Failure::plain)?;
        wait_ready(self, container, user, "postgres").await?;
        let new = side_name(database, "restore", tag);
        // `--force` ends the sessions still connected (PostgreSQL 13+); a copy an interrupted
        // attempt left is replaced.
        self.run_in(c, container, &["dropdb", "--if-exists", "--force", "-U", user, &new]).await?;
        self.run_in(c, container, &["createdb", "-U", user, "-O", user, &new]).await?;
        steward_failpoints::failpoint!("restore:createdb");
        let (stream, _) = pipeline::read_component_pinned(self.read_io(), c, pin)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        let (stream, caught) = catching(midway(stream, "restore:pg_restore"));
        // One transaction: the copy holds the whole dump or nothing.
        let load = ExecSpec {
            cmd: ["pg_restore", "--single-transaction", "--exit-on-error", "-U", user, "-d", &new]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        };
        let out = self
            .engine
            .exec_stdin(container, &load, stream, 20)
            .await
            .map_err(|e| caught.or(Failure::plain(format!("{}: {e}", c.name))))?;
        Failure::check_exit(&out, format!("{}: pg_restore", c.name)).map_err(|f| caught.or(f))?;
        let sql = "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";
        let out = self
            .engine
            .exec(container, psql(user, &new, sql), 20)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        Failure::check_exit(&out, format!("{}: opening the restored copy", c.name))?;
        let tables = out.tail.last().map(|l| l.trim().to_owned()).unwrap_or_default();
        tracing::info!(component = %c.name, database = %new, tables = %tables, "restored copy opens");
        Ok(())
    }

    /// Which of `names` exist on the server of `container`.
    pub(crate) async fn databases(
        &self,
        c: &Component,
        container: &str,
        user: &str,
        names: &[&str],
    ) -> Result<Vec<String>, Failure> {
        let list: Vec<String> = names.iter().map(|n| literal(n)).collect();
        let sql = format!("SELECT datname FROM pg_database WHERE datname IN ({})", list.join(", "));
        let out = self
            .engine
            .exec(container, psql(user, "postgres", &sql), 20)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        Failure::check_exit(&out, format!("{}: listing databases", c.name))?;
        Ok(out.tail.iter().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect())
    }

    /// Renames the live database to `<db>_steward_old_<tag>` and the copy to `<db>` in one
    /// transaction (from the `postgres` database: PostgreSQL does not rename the database a
    /// session is connected to). Done already when the copy no longer exists.
    async fn swap_database(
        &self,
        c: &Component,
        container: &str,
        user: &str,
        database: &str,
        tag: &str,
    ) -> Result<(), Failure> {
        self.engine.start(container).await.map_err(Failure::plain)?;
        wait_ready(self, container, user, "postgres").await?;
        let new = side_name(database, "restore", tag);
        let old = side_name(database, "old", tag);
        let mut last = Failure::plain(format!("{}: the swap was not tried", c.name));
        for _ in 0..10 {
            let exist = self.databases(c, container, user, &[database, &new, &old]).await?;
            let has = |n: &str| exist.iter().any(|e| e == n);
            if !has(&new) {
                return match has(database) {
                    true => Ok(()),
                    false => Err(Failure::plain(format!(
                        "{}: neither {database} nor its restored copy {new} exists",
                        c.name
                    ))),
                };
            }
            if has(&old) {
                return Err(Failure::plain(format!(
                    "{}: both {new} and {old} exist: swap them by hand",
                    c.name
                )));
            }
            let names = [literal(database), literal(&new)].join(", ");
            let terminate = format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname IN ({names}) AND pid <> pg_backend_pid()"
            );
            let rename = match has(database) {
                true => format!(
                    "BEGIN; ALTER DATABASE {} RENAME TO {}; ALTER DATABASE {} RENAME TO {}; COMMIT;",
                    ident(database),
                    ident(&old),
                    ident(&new),
                    ident(database)
                ),
                false => format!("ALTER DATABASE {} RENAME TO {}", ident(&new), ident(database)),
            };
            let mut cmd = psql(user, "postgres", &terminate);
            cmd.extend(["-c".to_owned(), rename]);
            let out = self
                .engine
                .exec(container, cmd, 20)
                .await
                .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
            match Failure::check_exit(&out, format!("{}: renaming the databases", c.name)) {
                Ok(()) => return Ok(()),
                // A terminated session may still be leaving ("being accessed by other users").
                Err(f) => last = f,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last)
    }

    /// An image with `/bin/sh` for the helpers that share `container`'s volumes: the one set,
    /// else Steward's own when this service runs in a container of the engine (an app's image
    /// may have no shell), else the container's own.
    pub(crate) async fn helper_image(&self, container: &str) -> Result<String, Failure> {
        if let Some(image) = &self.config.helper_image {
            return Ok(image.clone());
        }
        self.engine.helper_image(container).await.map_err(Failure::plain)
    }

    /// Runs `script` with `args` ($0, $1, …) in a helper with `container`'s volumes.
    pub(crate) async fn in_volumes(
        &self,
        c: &Component,
        container: &str,
        script: &str,
        args: &[&str],
        what: &str,
    ) -> Result<(), Failure> {
        let image = self.helper_image(container).await?;
        let mut argv = vec![script.to_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let out = self
            .engine
            .run_with_volumes_of(container, &image, vec!["/bin/sh".into(), "-c".into()], argv, 20)
            .await
            .map_err(|e| {
                Failure::plain(format!(
                    "{}: {what} with a helper from {image}: {e} (set STEWARD_RESTORE_HELPER_IMAGE to an image with /bin/sh)",
                    c.name
                ))
            })?;
        Failure::check_exit(&out, format!("{}: {what}", c.name))
    }

    pub(crate) async fn on_mount(&self, container: &str, path: &str) -> Result<bool, Failure> {
        let mounts = self.engine.mount_points(container).await.map_err(Failure::plain)?;
        Ok(mounts
            .iter()
            .any(|m| path == m || path.starts_with(&format!("{}/", m.trim_end_matches('/')))))
    }

    /// Extracts the archive into `<path>/.steward-restore-<tag>/`: inside the path, so on
    /// the same filesystem even when the path is a volume's root (whose sibling would be
    /// outside the volume), and swapping is renames only.
    async fn load_path(
        &self,
        c: &Component,
        container: &str,
        path: &str,
        pin: Option<&str>,
        tag: &str,
    ) -> Result<(), Failure> {
        let Some(side) = Sides::of(path, tag) else {
            return Err(Failure::plain(format!("{}: refused: cannot restore {path}", c.name)));
        };
        if !self.on_mount(container, &side.path).await? {
            // Extracted over what is there at the swap: nothing to stage it beside.
            return Ok(());
        }
        let staging = side.staging.clone();
        self.stage(c, container, &side, pin, &staging, [PREPARE, STAGED]).await
    }

    /// Prepares the staging directory (`scripts[0]`), extracts component `c` from exactly
    /// the object checked into `into`, and checks the copy (`scripts[1]`).
    async fn stage(
        &self,
        c: &Component,
        container: &str,
        side: &Sides,
        pin: Option<&str>,
        into: &str,
        scripts: [&str; 2],
    ) -> Result<(), Failure> {
        self.in_volumes(c, container, scripts[0], &side.args(), "preparing the restore's copy")
            .await?;
        steward_failpoints::failpoint!("restore:staged");
        let (stream, _) = pipeline::read_component_pinned(self.read_io(), c, pin)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        let (stream, caught) = catching(midway(stream, "restore:extracting"));
        self.engine
            .upload_tar(container, into, stream)
            .await
            .map_err(|e| caught.or(Failure::plain(format!("{}: {e}", c.name))))?;
        self.in_volumes(c, container, scripts[1], &side.args(), "checking the restore's copy").await
    }

    /// The names beside a cluster's data directory, which must be on a mount (a cluster is
    /// never extracted over a live one).
    pub(crate) async fn base_sides(
        &self,
        c: &Component,
        container: &str,
        data_dir: &str,
        tag: &str,
    ) -> Result<Sides, Failure> {
        match Sides::of(data_dir, tag) {
            Some(side) if self.on_mount(container, &side.path).await? => Ok(side),
            _ => Err(Failure::plain(format!(
                "{}: refused: the data directory {data_dir} is not on a volume or bind mount of {container}",
                c.name
            ))),
        }
    }

    /// Extracts a base backup into `<data_dir>/.steward-restore-<tag>/<name>`, from exactly
    /// the object checked, each entry checked to stay inside; checks it holds a cluster.
    async fn load_base(
        &self,
        c: &Component,
        container: &str,
        data_dir: &str,
        pin: Option<&str>,
        tag: &str,
    ) -> Result<(), Failure> {
        let side = self.base_sides(c, container, data_dir, tag).await?;
        let copy = format!("{}/{}", side.staging, side.name);
        self.stage(c, container, &side, pin, &copy, [PREPARE_BASE, STAGED_BASE]).await
    }

    /// Moves the live entries into `<path>/.steward-old-<tag>/`, then the copy's into the
    /// path (see [`SWAP`]).
    async fn swap_path(
        &self,
        c: &Component,
        container: &str,
        path: &str,
        pin: Option<&str>,
        tag: &str,
    ) -> Result<(), Failure> {
        let Some(side) = Sides::of(path, tag) else {
            return Err(Failure::plain(format!("{}: refused: cannot restore {path}", c.name)));
        };
        if self.on_mount(container, &side.path).await? {
            return self.in_volumes(c, container, SWAP, &side.args(), "swapping in the copy").await;
        }
        tracing::warn!(component = %c.name, "{path} is not on a volume or bind mount: the archive is extracted over what is there");
        let parent = match side.path.rsplit_once('/') {
            Some(("", _)) | None => "/".to_owned(),
            Some((parent, _)) => parent.to_owned(),
        };
        let (stream, _) = pipeline::read_component_pinned(self.read_io(), c, pin)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        let stream = midway(stream, "restore:extracting");
        self.engine
            .upload_tar(container, &parent, stream)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))
    }

    /// Removes a copy a failed load left (the live data was not touched).
    async fn discard_copy(&self, c: &Component, tag: &str) -> Result<(), Failure> {
        match &c.kind {
            Kind::Postgres { container, user, database, .. } => {
                let new = side_name(database, "restore", tag);
                self.run_in(c, container, &["dropdb", "--if-exists", "--force", "-U", user, &new])
                    .await
            }
            Kind::Path { container, path } => match Sides::of(path, tag) {
                Some(side) if self.on_mount(container, &side.path).await? => {
                    self.in_volumes(c, container, DISCARD, &side.args(), "removing the copy").await
                }
                _ => Ok(()),
            },
            Kind::PostgresBase { container, data_dir, .. } => {
                let side = self.base_sides(c, container, data_dir, tag).await?;
                self.in_volumes(c, container, DISCARD, &side.args(), "removing the copy").await
            }
            Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => Ok(()),
        }
    }

    /// Removes the data a successful restore replaced.
    async fn remove_previous(&self, c: &Component, tag: &str) -> Result<(), Failure> {
        match &c.kind {
            Kind::Postgres { container, user, database, .. } => {
                let old = side_name(database, "old", tag);
                self.run_in(c, container, &["dropdb", "--if-exists", "--force", "-U", user, &old])
                    .await
            }
            Kind::Path { container, path } => match Sides::of(path, tag) {
                Some(side) if self.on_mount(container, &side.path).await? => {
                    self.in_volumes(c, container, CLEAN, &side.args(), "removing the previous data")
                        .await
                }
                _ => Ok(()),
            },
            Kind::PostgresBase { container, data_dir, .. } => {
                let side = self.base_sides(c, container, data_dir, tag).await?;
                self.in_volumes(c, container, CLEAN, &side.args(), "removing the previous cluster")
                    .await
            }
            Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => Ok(()),
        }
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

/// The names beside a restored path: `$0` the path, `$1` the staging directory (the
/// archive is extracted into it, so the copy is `$1/$3`), `$2` where the live entries go.
#[derive(Debug)]
pub(crate) struct Sides {
    pub(crate) path: String,
    pub(crate) staging: String,
    pub(crate) old: String,
    pub(crate) name: String,
}

impl Sides {
    fn of(path: &str, tag: &str) -> Option<Self> {
        let path = path.trim_end_matches('/');
        let (_, name) = path.rsplit_once('/')?;
        if name.is_empty() || name == "." || name == ".." {
            return None;
        }
        Some(Self {
            staging: format!("{path}/.steward-restore-{tag}"),
            old: format!("{path}/.steward-old-{tag}"),
            name: name.to_owned(),
            path: path.to_owned(),
        })
    }

    fn args(&self) -> [&str; 4] {
        [&self.path, &self.staging, &self.old, &self.name]
    }
}

/// Removes a staging directory an interrupted attempt left, and creates it.
const PREPARE: &str = r#"rm -rf -- "$1" && mkdir -p -- "$1""#;
/// The archive held the path.
const STAGED: &str = r#"[ -d "$1/$3" ] || { echo "the archive does not hold $3" >&2; exit 3; }"#;
/// The swap: every live entry (but the restore's own directories) into `$2`, a marker, then
/// every entry of the copy into the path, then the staging directory removed. Renames within
/// one filesystem only. Run again after an interruption it finishes: the marker says the
/// live entries are all out, so what is in the path then is the copy's.
const SWAP: &str = r#"n="$1/$3"
if [ ! -e "$2/.steward-swapping" ]; then
  [ -d "$n" ] || { echo "no restored copy at $n" >&2; exit 3; }
  mkdir -p -- "$2" || exit 1
  for e in "$0"/* "$0"/.[!.]* "$0"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    case "$e" in "$1"|"$2") continue;; esac
    mv -- "$e" "$2/" || exit 1
  done
  : > "$2/.steward-swapping" || exit 1
  sync
fi
if [ -d "$n" ]; then
  for e in "$n"/* "$n"/.[!.]* "$n"/..?*; do
    [ -e "$e" ] || [ -L "$e" ] || continue
    mv -- "$e" "$0/" || exit 1
  done
fi
rm -rf -- "$1"
sync"#;
/// [`PREPARE`], with the directory the base backup's entries go into.
const PREPARE_BASE: &str = r#"rm -rf -- "$1" && mkdir -p -- "$1/$3""#;
/// The copy holds a cluster (taken by `pg_basebackup`, or recovered from one).
const STAGED_BASE: &str = r#"for f in PG_VERSION global/pg_control; do
  [ -f "$1/$3/$f" ] || { echo "the base backup holds no $f" >&2; exit 3; }
done"#;
/// A copy that will not be swapped in.
const DISCARD: &str = r#"rm -rf -- "$1""#;
/// The data a successful restore replaced.
const CLEAN: &str = r#"rm -rf -- "$2" "$1""#;

/// `<database>_steward_<what>_<tag>`, within PostgreSQL's 63-byte names (the database's part
/// shortened).
fn side_name(database: &str, what: &str, tag: &str) -> String {
    let suffix = format!("_steward_{what}_{tag}");
    let room = 63usize.saturating_sub(suffix.len());
    let mut end = database.len().min(room);
    while !database.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    format!("{}{suffix}", &database[..end])
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

pub(crate) fn psql(user: &str, database: &str, sql: &str) -> Vec<String> {
    ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database, "-tA", "-c", sql]
        .map(String::from)
        .to_vec()
}

/// Where the data a restore replaced is kept (until it succeeds).
fn kept(chosen: &[&Component], tag: &str) -> String {
    let places: Vec<String> = chosen
        .iter()
        .filter_map(|c| match &c.kind {
            Kind::Postgres { database, .. } => {
                Some(format!("database {}", side_name(database, "old", tag)))
            }
            Kind::Path { container, path }
            | Kind::PostgresBase { container, data_dir: path, .. } => {
                Sides::of(path, tag).map(|s| format!("{container}:{}", s.old))
            }
            Kind::Containers | Kind::Events | Kind::Project { .. } | Kind::Wal { .. } => None,
        })
        .collect();
    format!("the data it replaced is kept in {}", places.join(", "))
}

/// The first error a stream yielded, if any: the reason a consumer that failed on it (the
/// engine reports only that the upload broke) really failed.
#[derive(Debug, Clone, Default)]
struct Caught(std::sync::Arc<std::sync::Mutex<Option<String>>>);

impl Caught {
    /// The stream's error as the failure, or `otherwise`.
    fn or(&self, otherwise: Failure) -> Failure {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(reason) => Failure { reason, stderr_tail: otherwise.stderr_tail },
            None => otherwise,
        }
    }
}

/// `stream`, with its first error kept in the [`Caught`] returned.
fn catching(
    stream: futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
) -> (futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, Caught) {
    use futures::StreamExt as _;
    let caught = Caught::default();
    let slot = caught.clone();
    let stream = stream
        .inspect(move |item| {
            if let Err(e) = item {
                let mut first = slot.0.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        })
        .boxed();
    (stream, caught)
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

    /// A restore resumed past its commit point (killed after the swap began) reports the
    /// notes the interrupted attempt's checks found: it does not run them again.
    #[tokio::test]
    async fn a_resumed_restore_reports_the_notes_its_first_attempt_found() {
        use steward_store::manifest::MANIFEST;
        use steward_store::signing::{Purpose, SIGNATURE};
        let (b, store) = crate::backup::testing::backups().await;
        // A backup with nothing in scope: the resumed attempt stops and starts nothing.
        let at = time::macros::datetime!(2026-11-30 08:00:00 UTC);
        let id = steward_store::manifest::new_backup_id(at);
        let m = crate::backup::testing::manifest(&id, at);
        let body = serde_json::to_vec(&m).unwrap_or_default();
        let signature = b.config.signing.sign(Purpose::Manifest, &body);
        for (name, bytes) in [(SIGNATURE, signature), (MANIFEST, body)] {
            store
                .put(&format!("{id}/{name}"), bytes.into())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let note = "postgres-base/db: the bucket holds timeline 3, which this base does not reach"
            .to_owned();
        let mut journal = RestoreJournal::none();
        journal.record = crate::journal::FlowRecord {
            backup_id: id.clone(),
            notes: vec![note.clone()],
            swap: Some(crate::journal::Swap { tag: "t".into(), state: SwapState::Swapped }),
            ..Default::default()
        };
        let options = RestoreOptions { physical: true, ..Default::default() };
        let restored = b
            .restore_journaled("latest", RestoreScope::Db, options, &Busy::new(), &mut journal)
            .await
            .unwrap_or_else(|f| panic!("{}", f.reason));
        assert_eq!(restored.manifest.backup_id, id);
        assert_eq!(restored.notes, vec![note]);
        crate::backup::testing::done(store).await;
    }

    #[test]
    fn scopes_pick_components() {
        let c = crate::backup::testing::component;
        let db = c(Kind::Postgres {
            container: "db".into(),
            image: String::new(),
            user: "u".into(),
            database: "d".into(),
        });
        let path = c(Kind::Path { container: "app".into(), path: "/data".into() });
        let configs = c(Kind::Containers);
        let base = c(crate::backup::testing::base_kind("db"));
        for physical in [false, true] {
            let in_scope = |c, scope| in_scope(c, scope, physical);
            assert_eq!(in_scope(&db, RestoreScope::All), !physical);
            assert_eq!(in_scope(&db, RestoreScope::Db), !physical);
            assert!(!in_scope(&db, RestoreScope::Paths));
            // The dump or the base, never both.
            assert_eq!(in_scope(&base, RestoreScope::All), physical);
            assert_eq!(in_scope(&base, RestoreScope::Db), physical);
            assert!(!in_scope(&base, RestoreScope::Paths));
            assert!(in_scope(&path, RestoreScope::Paths) && !in_scope(&path, RestoreScope::Db));
            assert!(in_scope(&path, RestoreScope::All));
            assert!(!in_scope(&configs, RestoreScope::All));
        }
    }
}
