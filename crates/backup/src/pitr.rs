//! Physical backups of a PostgreSQL cluster for point-in-time recovery
//! (`steward.backup.pitr=true`): the base backup, and restoring a cluster from it.
//!
//! The base backup is `pg_basebackup -D - -Ft -X fetch` run by exec as the container's
//! `POSTGRES_USER` (local replication connections are allowed by the stock image's
//! `pg_hba.conf`), its tar streamed through the same pipeline as every component; its start
//! and end in the WAL and its timeline come from `pg_basebackup --verbose` and are recorded in
//! the signed manifest. It sits beside the `pg_dump` component, which stays what `verify`
//! loads and what a plain restore uses.
//!
//! A restore from it ([`RestoreOptions::physical`](crate::restore::RestoreOptions)) goes
//! through the journaled restore: the database container is stopped with the apps, the tar is
//! extracted into `<data_dir>/.steward-restore-<tag>/<name>` (same volume: the swap is
//! renames), the data directory's entries are swapped for it by the path restore's script,
//! and the server started on it recovers from the backup's own WAL. The replaced cluster stays
//! in `<data_dir>/.steward-old-<tag>` until the restored one is healthy.
//!
//! Invariants: the data directory must be a mount's root or inside one (refused otherwise:
//! nothing to stage beside); every tar entry is checked to stay inside it
//! ([`crate::tarcheck::guarded_contents`]) before it reaches the engine.

use steward_engine::ExecSpec;
use steward_store::manifest::{self, Component, Kind};

use crate::backup::{Backups, Failure};
use crate::restore::psql;
use crate::targets::Target;

/// Lines of `pg_basebackup --verbose` stderr kept: its start and end points are among them.
const STDERR_LINES: usize = 40;

/// Where a base backup starts and ends in the WAL, as `pg_basebackup --verbose` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRange {
    /// The timeline it started on.
    pub timeline: u32,
    /// `write-ahead log start point`.
    pub start_lsn: String,
    /// `write-ahead log end point`.
    pub stop_lsn: String,
}

/// Reads the start point, timeline and end point from `pg_basebackup --verbose` stderr:
/// `pg_basebackup: write-ahead log start point: 0/3000028 on timeline 1` and
/// `pg_basebackup: write-ahead log end point: 0/3000100`.
pub fn wal_range(stderr: &[String]) -> Option<WalRange> {
    let mut start = None;
    let mut stop = None;
    for line in stderr {
        if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
            let (lsn, timeline) = rest.trim().split_once(" on timeline ")?;
            start = Some((lsn_text(lsn)?, timeline.trim().parse::<u32>().ok()?));
        } else if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
            stop = Some(lsn_text(rest.trim())?);
        }
    }
    let ((start_lsn, timeline), stop_lsn) = (start?, stop?);
    Some(WalRange { timeline, start_lsn, stop_lsn })
}

/// An LSN as PostgreSQL writes it (`0/3000028`: two hex numbers of at most 8 digits), or None.
fn lsn_text(s: &str) -> Option<String> {
    let (hi, lo) = s.split_once('/')?;
    let hex = |p: &str| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_hexdigit());
    (hex(hi) && hex(lo)).then(|| s.to_owned())
}

impl Backups {
    /// The base backup of `t`'s cluster, as a component of backup `id`.
    pub(crate) async fn base_backup(&self, id: &str, t: &Target) -> Result<Component, Failure> {
        let name = &t.container.name;
        let component = format!("postgres-base/{name}");
        let login = self.pg_login(name).await?;
        let data_dir = self.data_directory(&component, name, &login.user).await?;
        if !self.on_mount(name, &data_dir).await? {
            return Err(Failure::plain(format!(
                "{component}: the data directory {data_dir} is not on a volume or bind mount: a restore would have nowhere to stage it"
            )));
        }
        // `-c fast`: the checkpoint at once rather than spread over minutes; `-X fetch`: the
        // WAL written meanwhile inside the tar, so the base alone starts a consistent server.
        let cmd =
            ["pg_basebackup", "-U", &login.user, "-D", "-", "-Ft", "-X", "fetch", "-c", "fast"];
        let mut cmd: Vec<String> = cmd.map(String::from).to_vec();
        cmd.extend(["--verbose".into(), "--label".into(), format!("steward {id}")]);
        let spec = ExecSpec { cmd, env: login.env.clone(), user: None };
        let object =
            self.object_name(format!("{id}/postgres-base-{}.tar.zst", manifest::slug(name)));
        tracing::info!(backup = id, component, "taking the base backup");
        self.meter.item(&component);
        let (stored, raw, out) =
            self.store_exec_stdout(name, &spec, &object, &component, STDERR_LINES).await?;
        // pg_basebackup writes `backup_label` first: anything else is not a base backup.
        if raw.size == 0 || !raw.head.starts_with(b"backup_label") {
            return Err(Failure {
                reason: format!(
                    "{component}: pg_basebackup produced {} bytes that are not a base backup",
                    raw.size
                ),
                stderr_tail: out.tail,
            });
        }
        let Some(range) = wal_range(&out.tail) else {
            return Err(Failure {
                reason: format!("{component}: pg_basebackup did not report its WAL start and end"),
                stderr_tail: out.tail,
            });
        };
        tracing::info!(backup = id, component, start = %range.start_lsn, end = %range.stop_lsn, timeline = range.timeline, "base backup stored");
        let kind = Kind::PostgresBase {
            container: name.clone(),
            image: t.container.image_id.clone(),
            user: login.user,
            data_dir,
            timeline: range.timeline,
            start_lsn: range.start_lsn,
            stop_lsn: range.stop_lsn,
        };
        Ok(self.entry(component, kind, object, stored, raw))
    }

    /// The server's `data_directory` (not `PGDATA` from the environment: the server's own
    /// word), absolute and without `.` or `..`.
    pub(crate) async fn data_directory(
        &self,
        component: &str,
        container: &str,
        user: &str,
    ) -> Result<String, Failure> {
        let out = self
            .engine
            .exec(container, psql(user, "postgres", "SHOW data_directory"), 5)
            .await
            .map_err(|e| Failure::plain(format!("{component}: {e}")))?;
        Failure::check_exit(&out, format!("{component}: reading data_directory"))?;
        let dir = out.tail.last().map(|l| l.trim().trim_end_matches('/')).unwrap_or_default();
        if !dir.starts_with('/') || dir.split('/').any(|p| p == "." || p == "..") {
            return Err(Failure::plain(format!(
                "{component}: the server's data_directory {dir:?} is not a plain absolute path"
            )));
        }
        Ok(dir.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &[&str]) -> Vec<String> {
        s.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn reads_the_wal_range_from_verbose_output() {
        let out = lines(&[
            "pg_basebackup: initiating base backup, waiting for checkpoint to complete",
            "pg_basebackup: checkpoint completed",
            "pg_basebackup: write-ahead log start point: 0/3000028 on timeline 1",
            "pg_basebackup: write-ahead log end point: 0/3000100",
            "pg_basebackup: syncing data to disk ...",
            "pg_basebackup: base backup completed",
        ]);
        let range = wal_range(&out);
        assert_eq!(
            range,
            Some(WalRange {
                timeline: 1,
                start_lsn: "0/3000028".into(),
                stop_lsn: "0/3000100".into()
            })
        );
        // Missing or unreadable points: no range, the backup fails.
        assert_eq!(wal_range(&out[..3]), None);
        let bad = lines(&[
            "pg_basebackup: write-ahead log start point: 0/30G0028 on timeline 1",
            "pg_basebackup: write-ahead log end point: 0/3000100",
        ]);
        assert_eq!(wal_range(&bad), None);
        let bad = lines(&[
            "pg_basebackup: write-ahead log start point: 0/3000028 on timeline x",
            "pg_basebackup: write-ahead log end point: 0/3000100",
        ]);
        assert_eq!(wal_range(&bad), None);
        assert_eq!(lsn_text("123456789/0"), None);
        assert_eq!(lsn_text("/1"), None);
    }
}
