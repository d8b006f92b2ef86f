//! Continuous WAL shipping of `steward.backup.pitr` clusters: what `--to-time` replays on top
//! of a base backup ([`crate::pitr`]).
//!
//! Only what a stock `postgres` image allows: a physical replication slot `steward_<name>`
//! (so the server keeps the WAL not yet received, bounded by `max_slot_wal_keep_size`, set by
//! `ALTER SYSTEM` and a reload: no restart), and `pg_receivewal --slot … --no-loop` started by
//! a detached exec inside the database container, writing into [`SPOOL`] inside the data
//! directory (on its volume, so it survives the container's recreation; `pg_basebackup` skips
//! `pgsql_tmp*` entries). The shipper ([`Backups::ship_wal`], every
//! [`PitrConfig::tick`](crate::config::PitrConfig::tick)) starts the receiver when the slot is
//! not active (the backup service's, PostgreSQL's or the container's restart), uploads each
//! complete segment and history file through the pipeline (zstd, age) as an immutable object
//! `wal/<container>/<file>.zst[.age]` with its signed record beside it (`<file>.json`, a
//! [`Component`] of kind `wal`, and `<file>.sig`, written first), and only then deletes it from
//! the spool. On a quiet server it asks `pg_switch_wal()` once WAL has waited in the current
//! segment for half of `STEWARD_PITR_MAX_LAG`.
//!
//! Invariants: a file leaves the spool only once its record is stored and signed (or a
//! stored record's checksum equals the file's); nothing is ever overwritten in the bucket (a
//! second, different file of the same name is an error, not an upload).

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use steward_engine::ExecSpec;
use steward_store::manifest::{self, Component, Kind};
use steward_store::signing::{Purpose, Signature};

use crate::backup::{Backups, Failure, PgLogin};
use crate::restore::psql;
use crate::targets::Target;

/// The receiver's directory inside the data directory (`pgsql_tmp` is what `pg_basebackup`
/// leaves out).
pub const SPOOL: &str = "pgsql_tmp_steward_wal";
/// Beside a container's WAL in the bucket: the segment up to which a hole was reported
/// already ([`ShipState`]'s `reported`), while it is not yet passed.
const REPORTED: &str = "gap-reported";
/// Records are small; anything bigger is not one.
const MAX_RECORD: usize = 64 << 10;
/// In a timeline history file's signed record: when its timeline began, as the shipper could
/// tell (RFC 3339). A replay to a time before it does not follow that timeline.
const CREATED: &str = "timeline_created";
/// Beside [`CREATED`]: `false` when it is only the time the file was shipped (the server was
/// on another timeline by then: the truth is earlier, by up to an outage). Absent in records
/// shipped before it was written: read as exact, the only way those records were read
/// before, and almost always right (the fallback needs a history shipped after its server
/// moved on); read as inexact, every time on a stretch such a timeline abandoned would be
/// refused, with no other way to it.
const CREATED_EXACT: &str = "timeline_created_exact";
/// In every WAL file's signed record: a time, on the database container's clock (the one
/// its commit times are read from), by which the file was complete: just after the spool
/// listing that found it, rounded up to the second (RFC 3339). Everything in the file was
/// written before, so no transaction in it committed later: a target time at or after it is
/// past what the file holds. Steward's own clock is not used: on another host (a remote
/// `DOCKER_HOST`) or after a step back it could be behind, and a reachable target refused.
const SHIPPED: &str = "shipped_at";
/// The first page's long header: an insert position this far into a segment means nothing
/// was written in it yet.
const LONG_PAGE_HEADER: u64 = 40;
/// Passes over a full spool in one round, each after one that shipped something, before the
/// receiver is stopped: a receiver catching up on a backlog writes while a pass ships.
const DRAIN_PASSES: u32 = 8;

/// After `pg_switch_wal()`, how long the round waits for the closed segment: up to
/// `SWITCHED_POLLS` looks at the spool, `SWITCHED_POLL` apart.
const SWITCHED_POLLS: u32 = 20;
const SWITCHED_POLL: std::time::Duration = std::time::Duration::from_millis(100);
/// What the receiver runs as: the owner of the data directory in the official image.
const OS_USER: &str = "postgres";

/// The replication slot of `container`: `steward_` and the name in PostgreSQL's slot
/// alphabet (lower-case letters, digits, `_`), within its 63 bytes.
pub fn slot_name(container: &str) -> String {
    let name: String = container
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(55)
        .collect();
    format!("steward_{name}")
}

/// Where every container's WAL is kept in the bucket, a directory each.
const WAL_ROOT: &str = "wal";

/// Where `container`'s WAL is kept in the bucket.
pub fn wal_dir(container: &str) -> String {
    format!("{WAL_ROOT}/{}", manifest::slug(container))
}

/// The timeline of a WAL file `pg_receivewal` completes: a segment (24 upper-case hex
/// digits, the first 8 its timeline) or a timeline history file (`00000002.history`); None
/// for anything else (`.partial`, strays).
pub fn wal_file_timeline(name: &str) -> Option<u32> {
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c));
    let timeline = match name.strip_suffix(".history") {
        Some(tl) if tl.len() == 8 && hex(tl) => tl,
        Some(_) => return None,
        None if name.len() == 24 && hex(name) => &name[..8],
        None => return None,
    };
    u32::from_str_radix(timeline, 16).ok().filter(|t| *t > 0)
}

/// Parses an LSN (`0/3000028`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_hexdigit());
    if !ok(hi) || !ok(lo) {
        return None;
    }
    let (hi, lo) = (u64::from_str_radix(hi, 16).ok()?, u64::from_str_radix(lo, 16).ok()?);
    Some((hi << 32) | lo)
}

/// What a WAL file's signed record says beyond its component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalExtra {
    /// A history file's: when its timeline began ([`CREATED`]).
    pub created: Option<time::OffsetDateTime>,
    /// Whether `created` is the start of the server first running on it rather than the
    /// (later) time it was shipped ([`CREATED_EXACT`]).
    pub created_exact: bool,
    /// When it was shipped ([`SHIPPED`]); None in records shipped before it was written.
    pub shipped_at: Option<time::OffsetDateTime>,
}

impl Default for WalExtra {
    fn default() -> Self {
        Self { created: None, created_exact: true, shipped_at: None }
    }
}

/// The shipper's memory between rounds (lost with the process: the lag timer restarts).
#[derive(Debug, Default)]
pub struct ShipState {
    /// Per container: the segment WAL was first seen waiting in, and when.
    waiting: HashMap<String, (u64, Instant)>,
    /// Per container: the last segment it shipped or found shipped.
    last: HashMap<String, String>,
    /// Per container whose slot was found `lost` (its gap reported): the server's segment
    /// then. The new receiver starts at or before it, so a hole found up to it is the one
    /// reported, not a second (which would be a second alarm and a second base backup). Kept
    /// in the bucket too ([`REPORTED`]): a restart in between must not say it again.
    reported: HashMap<String, String>,
    /// Containers whose persisted `reported` ([`REPORTED`]) was read by this process.
    recalled: std::collections::HashSet<String>,
    /// Per container whose receiver is stopped because its spool reached
    /// [`PitrConfig::spool_max_mb`](crate::config::PitrConfig::spool_max_mb): the spool's
    /// size then, in MiB.
    paused: HashMap<String, u64>,
}

impl ShipState {
    /// The alarm of `container`'s lost slot could not be published: forget that it was said,
    /// so the new receiver's hole is found and said again (at least once, never not at all).
    pub fn unsay_gap(&mut self, container: &str) {
        self.reported.remove(container);
    }

    /// The containers whose receiver is stopped because their spool is full (uploads fail),
    /// each with the spool's size in MiB: the slot keeps their WAL in `pg_wal` meanwhile.
    pub fn spool_full(&self) -> impl Iterator<Item = (&str, u64)> {
        self.paused.iter().map(|(c, mib)| (c.as_str(), *mib))
    }
}

/// Failures that persist, said once an episode: from the first failed round of a key (a
/// container's shipping) to its next good one.
#[derive(Debug, Default)]
pub struct Episodes {
    open: HashMap<String, Episode>,
}

#[derive(Debug)]
struct Episode {
    since: Instant,
    reason: String,
    said: bool,
}

/// What a failed round means for its episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    /// The reason is not the one of the round before (worth a log line).
    pub new_reason: bool,
    /// The failure has lasted this long, at least the bound, and was not said yet: say it
    /// (then [`Episodes::said`]).
    pub alarm: Option<std::time::Duration>,
}

impl Episodes {
    /// A failed round of `key` at `now`: an alarm once the episode has lasted `after`.
    pub fn failed(
        &mut self,
        key: &str,
        reason: &str,
        now: Instant,
        after: std::time::Duration,
    ) -> Failing {
        let episode = self.open.entry(key.to_owned()).or_insert_with(|| Episode {
            since: now,
            reason: String::new(),
            said: false,
        });
        let new_reason = episode.reason != reason;
        if new_reason {
            episode.reason = reason.to_owned();
        }
        let lasted = now.saturating_duration_since(episode.since);
        let alarm = (!episode.said && lasted >= after).then_some(lasted);
        Failing { new_reason, alarm }
    }

    /// The alarm of `key`'s episode was published: not again until a good round ends it.
    pub fn said(&mut self, key: &str) {
        if let Some(e) = self.open.get_mut(key) {
            e.said = true;
        }
    }

    /// A good round of `key`: whether it ended an episode.
    pub fn ok(&mut self, key: &str) -> bool {
        self.open.remove(key).is_some()
    }

    /// A round that reached only `present`: the episodes of every other key end (a container
    /// stopped or removed meanwhile starts afresh when it is back, not with the old start).
    pub fn only(&mut self, present: &std::collections::HashSet<&str>) {
        self.open.retain(|k, _| present.contains(k.as_str()));
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Files uploaded (names in `pg_wal`).
    pub uploaded: Vec<String>,
    /// The receiver was (re)started.
    pub receiver_started: bool,
    /// `pg_switch_wal()` was asked.
    pub switched: bool,
    /// WAL that can no longer be shipped (the slot lost it, a segment missing before the one
    /// shipped): recovery cannot cross it, so a new base backup is needed.
    pub gap: Option<String>,
    /// A lost slot's hole, up to this segment: once the gap is said, [`Backups::gap_said`]
    /// keeps it in the bucket, so a restart does not say the new receiver's hole again.
    pub gap_upto: Option<String>,
}

/// The slot as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    active: bool,
    /// `reserved`, `extended`, `unreserved`, `lost` (empty when none is reported).
    wal_status: String,
}

impl Backups {
    /// One round of shipping for every running `steward.backup.pitr` container in scope:
    /// each container's outcome.
    pub async fn ship_all(
        &self,
        state: &mut ShipState,
    ) -> Result<Vec<(String, Result<Shipped, Failure>)>, Failure> {
        let plan = crate::targets::plan(&self.engine, self.config.scope.as_deref(), &[])
            .await
            .map_err(Failure::plain)?;
        let mut out = vec![];
        for t in plan.targets.iter().filter(|t| t.labels.pitr) {
            out.push((t.container.name.clone(), self.ship_wal(t, state).await));
        }
        Ok(out)
    }

    /// One round of shipping `t`'s WAL (see the module's documentation).
    pub async fn ship_wal(&self, t: &Target, state: &mut ShipState) -> Result<Shipped, Failure> {
        let name = &t.container.name;
        let what = format!("wal/{name}");
        let login = self.pg_login(name).await?;
        let data_dir = self.data_directory(&what, name, &login.user).await?;
        let spool = format!("{data_dir}/{SPOOL}");
        let slot_name = slot_name(name);
        let mut shipped = Shipped::default();
        self.keep_at_most(&what, name, &login).await?;
        let slot = self.slot(&what, name, &login, &slot_name).await?;
        if slot.as_ref().is_some_and(|s| s.wal_status == "lost") {
            let sql = "SELECT pg_walfile_name(pg_current_wal_insert_lsn())";
            let now = self.sql(&what, name, &login, sql).await?;
            if let Some(now) =
                now.last().map(|l| l.trim()).filter(|l| wal_file_timeline(l).is_some())
            {
                state.reported.insert(name.clone(), now.to_owned());
                state.recalled.insert(name.clone());
                // Kept in the bucket only once it is said (`gap_said`): a kill before that
                // must leave the hole to be found and said by the next process.
                shipped.gap_upto = Some(now.to_owned());
            }
            shipped.gap = Some(format!(
                "the replication slot {slot_name} lost WAL the shipper had not received (more than {} MiB waited)",
                self.config.pitr.slot_keep_mb
            ));
            self.stop_receiver(&what, name, &login, &slot_name).await?;
            let sql = format!("SELECT pg_drop_replication_slot('{slot_name}')");
            self.sql(&what, name, &login, &sql).await?;
            // Said now, before anything else of the round can fail: the gap travels only in
            // this answer, and the next round (which makes the new slot) finds no lost slot,
            // while `reported` keeps its first segment from being said again.
            return Ok(shipped);
        }
        let slot = match slot {
            Some(slot) => slot,
            None => {
                let sql = format!(
                    "SELECT pg_create_physical_replication_slot('{slot_name}', true) IS NOT NULL"
                );
                self.sql(&what, name, &login, &sql).await?;
                // A new slot starts at the server's position: the receiver must not resume a
                // partial segment of an older stream, which the server may no longer have.
                let clear = format!("rm -f -- {spool}/*.partial");
                let spec =
                    ExecSpec { cmd: vec!["sh".into(), "-c".into(), clear], ..Default::default() };
                self.exec_checked(name, &spec, 5, &what, "clearing the spool's partial file")
                    .await?;
                tracing::info!(container = %name, slot = %slot_name, "replication slot created");
                Slot { active: false, wal_status: "reserved".into() }
            }
        };
        // A spool at its cap (uploads failing) stops the receiver: PostgreSQL keeps the WAL
        // for the slot instead, bounded by `max_slot_wal_keep_size`, so the data volume holds
        // at most both bounds; the receiver starts again once the spool has room.
        let cap = u64::from(self.config.pitr.spool_max_mb);
        let mut spooled = self.spool_mib(&what, name, &spool).await?;
        if spooled >= cap {
            // What is there is shipped first: a receiver catching up on the slot's backlog
            // (after an outage of the uploads, or its own) fills the spool faster than a
            // round ships it, and stopping it then only delays the newest WAL. Only a spool
            // still full once its files are shipped, or one whose uploads fail, is full.
            // The receiver goes on writing while a pass ships, so a pass that shipped
            // something is followed by another (bounded), until the spool is under its cap:
            // one pass under load left it full again, and the receiver was stopped in the
            // middle of its catch-up (CI).
            for _ in 0..DRAIN_PASSES {
                match self.ship_spooled(&what, name, &login, &spool, state, &mut shipped).await {
                    Ok(any) => {
                        spooled = self.spool_mib(&what, name, &spool).await?;
                        if !any || spooled < cap {
                            break;
                        }
                    }
                    Err(f) => {
                        self.pause(&what, name, &login, &slot_name, slot.active, spooled, state)
                            .await?;
                        return Err(f);
                    }
                }
            }
        }
        if spooled >= cap {
            self.pause(&what, name, &login, &slot_name, slot.active, spooled, state).await?;
        } else {
            if state.paused.remove(name.as_str()).is_some() {
                tracing::info!(container = %name, spool_mib = spooled, "the WAL spool has room again: the receiver starts");
            }
            if !slot.active {
                self.start_receiver(&what, name, &login, &spool, &slot_name).await?;
                shipped.receiver_started = true;
            }
        }
        self.ship_spooled(&what, name, &login, &spool, state, &mut shipped).await?;
        shipped.switched = self.switch_if_waiting(&what, name, &login, state).await?;
        if shipped.switched {
            // The segment just closed reaches the spool within moments: shipped in this round,
            // not a tick later (a tick is up to a tenth of the lag bound).
            for _ in 0..SWITCHED_POLLS {
                tokio::time::sleep(SWITCHED_POLL).await;
                if self.ship_spooled(&what, name, &login, &spool, state, &mut shipped).await? {
                    break;
                }
            }
        }
        Ok(shipped)
    }

    /// Stops `name`'s receiver (when `active`) because its spool holds `spooled` MiB, at
    /// the cap: PostgreSQL keeps the WAL for the slot meanwhile.
    #[allow(clippy::too_many_arguments)]
    async fn pause(
        &self,
        what: &str,
        name: &str,
        login: &PgLogin,
        slot_name: &str,
        active: bool,
        spooled: u64,
        state: &mut ShipState,
    ) -> Result<(), Failure> {
        if state.paused.insert(name.to_owned(), spooled).is_none() {
            tracing::error!(container = %name, spool_mib = spooled, "the WAL spool is full: the receiver is stopped until uploads work again");
        }
        if active {
            self.stop_receiver(what, name, login, slot_name).await?;
        }
        Ok(())
    }

    /// Ships every complete file in the spool, oldest first, into `shipped`; whether there was
    /// any.
    async fn ship_spooled(
        &self,
        what: &str,
        name: &str,
        login: &PgLogin,
        spool: &str,
        state: &mut ShipState,
        shipped: &mut Shipped,
    ) -> Result<bool, Failure> {
        let (files, listed_at) = self.spooled(what, name, spool).await?;
        let any = !files.is_empty();
        for file in files {
            if let Some(missing) = self.missing_before(name, &file, state).await? {
                shipped.gap.get_or_insert(format!(
                    "segment {missing} was never shipped, {file} follows it"
                ));
            }
            if self.ship_file(what, name, login, spool, &file, listed_at).await? {
                shipped.uploaded.push(file);
            }
        }
        Ok(any)
    }

    /// Runs `sql` as the container's user; its output lines.
    async fn sql(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
        sql: &str,
    ) -> Result<Vec<String>, Failure> {
        let spec = ExecSpec {
            cmd: psql(&login.user, "postgres", sql),
            env: login.env.clone(),
            user: None,
        };
        let out = self.exec_checked(container, &spec, 20, what, "psql").await?;
        Ok(out)
    }

    async fn slot(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
        slot: &str,
    ) -> Result<Option<Slot>, Failure> {
        let sql = format!(
            "SELECT active, coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = '{slot}'"
        );
        let lines = self.sql(what, container, login, &sql).await?;
        Ok(lines.iter().find_map(|l| {
            let (active, status) = l.trim().split_once('|')?;
            Some(Slot { active: active == "t", wal_status: status.to_owned() })
        }))
    }

    /// Sets `max_slot_wal_keep_size` when it is not the configured bound (a reload, no
    /// restart).
    async fn keep_at_most(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
    ) -> Result<(), Failure> {
        let wanted = format!("{}MB", self.config.pitr.slot_keep_mb);
        let now = self.sql(what, container, login, "SHOW max_slot_wal_keep_size").await?;
        if now.last().map(|l| l.trim()) == Some(wanted.as_str())
            || now.last().and_then(|l| mib(l.trim()))
                == Some(u64::from(self.config.pitr.slot_keep_mb))
        {
            return Ok(());
        }
        let mut cmd = psql(
            &login.user,
            "postgres",
            &format!("ALTER SYSTEM SET max_slot_wal_keep_size = '{wanted}'"),
        );
        cmd.extend(["-c".into(), "SELECT pg_reload_conf()".into()]);
        let spec = ExecSpec { cmd, env: login.env.clone(), user: None };
        self.exec_checked(container, &spec, 20, what, "setting max_slot_wal_keep_size").await?;
        tracing::info!(container, max_slot_wal_keep_size = %wanted, "bounded the WAL a stalled shipper can make the server keep");
        Ok(())
    }

    /// Ends the receiver streaming from `slot` (`--no-loop`: it exits).
    async fn stop_receiver(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
        slot: &str,
    ) -> Result<(), Failure> {
        let sql = format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"
        );
        self.sql(what, container, login, &sql).await?;
        Ok(())
    }

    /// What the spool holds on disk, in MiB (the partial segment included); 0 before the
    /// receiver first made it.
    async fn spool_mib(&self, what: &str, container: &str, spool: &str) -> Result<u64, Failure> {
        // `du` exits 1 when a file goes while it walks (the receiver renaming its partial
        // segment), with the total printed all the same: then the total counts. Any other
        // complaint (a directory it cannot read: the total would be too low) fails the round.
        let script = r#"if [ -d "$1" ]; then
  out=$(du -sk -- "$1" 2>/dev/null); status=$?
  if [ "$status" -ne 0 ]; then
    err=$(du -sk -- "$1" 2>&1 >/dev/null | grep -v 'No such file or directory')
    [ -z "$err" ] || { echo "$err" >&2; exit "$status"; }
  fi
  [ -n "$out" ] || exit 1
  echo "$out"
else echo 0; fi"#;
        let cmd = ["sh", "-c", script, "sh", spool].map(String::from).to_vec();
        let spec = ExecSpec { cmd, ..Default::default() };
        let out =
            self.exec_checked(container, &spec, 5, what, format!("measuring {spool}")).await?;
        let kib = out
            .last()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                Failure::plain(format!("{what}: unreadable size of {spool}: {out:?}"))
            })?;
        Ok(kib / 1024)
    }

    async fn start_receiver(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
        spool: &str,
        slot: &str,
    ) -> Result<(), Failure> {
        let mkdir = ExecSpec {
            cmd: ["mkdir", "-p", spool].map(String::from).to_vec(),
            env: vec![],
            user: Some(OS_USER.into()),
        };
        self.exec_checked(container, &mkdir, 5, what, format!("creating {spool}")).await?;
        let cmd = ["pg_receivewal", "-U", &login.user, "-D", spool, "--slot", slot, "--no-loop"];
        let spec = ExecSpec {
            cmd: cmd.map(String::from).to_vec(),
            env: login.env.clone(),
            user: Some(OS_USER.into()),
        };
        self.engine
            .exec_detached(container, &spec)
            .await
            .map_err(|e| Failure::plain(format!("{what}: {e}")))?;
        tracing::info!(container, slot, spool, "WAL receiver started");
        Ok(())
    }

    /// The complete files in the spool, oldest first (history files before their
    /// timeline's segments), and the container's time just after it listed them ([`SHIPPED`]).
    async fn spooled(
        &self,
        what: &str,
        container: &str,
        spool: &str,
    ) -> Result<(Vec<String>, Option<time::OffsetDateTime>), Failure> {
        // The time after the listing, so every file listed was complete by then; whole
        // seconds, which every `date` (busybox's too) prints.
        let script = r#"ls -1 -- "$1" && date -u +now=%s"#;
        let spec = ExecSpec {
            cmd: ["sh", "-c", script, "sh", spool].map(String::from).to_vec(),
            ..Default::default()
        };
        let out =
            self.exec_checked(container, &spec, 100_000, what, format!("listing {spool}")).await?;
        Ok(spool_listing(&out))
    }

    /// Ships one file unless it is stored already; whether it was uploaded. It leaves the
    /// spool once its signed record is stored.
    async fn ship_file(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
        spool: &str,
        file: &str,
        listed_at: Option<time::OffsetDateTime>,
    ) -> Result<bool, Failure> {
        let timeline = wal_file_timeline(file).unwrap_or_default();
        let dir = wal_dir(container);
        let path = format!("{spool}/{file}");
        let uploaded = match self.wal_record(container, file).await? {
            Some(stored) => {
                // Received again after a restart (pg_receivewal starts at the slot's
                // position): the same bytes, or something is wrong.
                let local = self.local_sha256(what, container, &path).await?;
                if local != stored.raw_sha256 {
                    return Err(Failure::plain(format!(
                        "{what}: {file} is stored already with other contents (sha256 {} in the bucket, {local} here): not overwritten",
                        stored.raw_sha256
                    )));
                }
                false
            }
            None => {
                let object = self.object_name(format!("{dir}/{file}.zst"));
                let spec = ExecSpec {
                    cmd: ["cat", "--", &path].map(String::from).to_vec(),
                    ..Default::default()
                };
                let component = format!("{what}/{file}");
                let (stored, raw, _) =
                    self.store_exec_stdout(container, &spec, &object, &component, 5).await?;
                if raw.size == 0 {
                    return Err(Failure::plain(format!("{component}: empty")));
                }
                let kind =
                    Kind::Wal { container: container.to_owned(), timeline, file: file.to_owned() };
                let entry = self.entry(component, kind, object, stored, raw);
                // No time from the container: no bound (a restore then leaves the question
                // to PostgreSQL), never one from another clock.
                let mut extra = WalExtra { shipped_at: listed_at, ..Default::default() };
                if file.ends_with(".history") {
                    let (created, exact) =
                        self.timeline_created(what, container, login, timeline).await?;
                    extra.created = Some(created);
                    extra.created_exact = exact;
                }
                self.put_wal_record(container, file, &entry, &extra).await?;
                true
            }
        };
        let spec = ExecSpec {
            cmd: ["rm", "-f", "--", &path].map(String::from).to_vec(),
            ..Default::default()
        };
        self.exec_checked(container, &spec, 5, what, format!("removing {file} from the spool"))
            .await?;
        if uploaded {
            tracing::info!(container, file, "WAL shipped");
        }
        Ok(uploaded)
    }

    /// The segment before `file` when it is not in the bucket although an earlier segment
    /// of the same timeline is (a hole the replay cannot cross); None otherwise, and for
    /// history files. A new timeline's first segments and a cluster's first shipped one have
    /// no earlier segment in the bucket: no gap.
    async fn missing_before(
        &self,
        container: &str,
        file: &str,
        state: &mut ShipState,
    ) -> Result<Option<String>, Failure> {
        if file.ends_with(".history") {
            return Ok(None);
        }
        let previous = previous_segment(file);
        let known = state.last.insert(container.to_owned(), file.to_owned());
        self.recall_reported(container, state).await?;
        let upto = state.reported.get(container).cloned();
        if upto.as_deref().is_some_and(|u| file > u) {
            // Passed: whatever hole lies before this file is judged below, once.
            self.forget_reported(container, state).await;
        }
        let Some(previous) = previous else { return Ok(None) };
        if known.as_deref() == Some(previous.as_str()) {
            return Ok(None);
        }
        if self.wal_record(container, &previous).await?.is_some() {
            return Ok(None);
        }
        let dir = wal_dir(container);
        let listed = self.store.list_objects(&dir).await.map_err(Failure::plain)?;
        let newest_earlier = listed
            .iter()
            .filter_map(|o| o.strip_prefix(&format!("{dir}/"))?.strip_suffix(".json"))
            .filter(|n| n.len() == 24 && n[..8] == file[..8] && *n < file)
            .max();
        let Some(newest_earlier) = newest_earlier else { return Ok(None) };
        if said_already(file, newest_earlier, upto.as_deref()) {
            // The lost slot's hole, reported already.
            if upto.as_deref().is_some_and(|u| file <= u) {
                self.forget_reported(container, state).await;
            }
            return Ok(None);
        }
        Ok(Some(previous))
    }

    /// Reads the reported gap a previous process kept in the bucket, once a process.
    async fn recall_reported(&self, container: &str, state: &mut ShipState) -> Result<(), Failure> {
        if !state.recalled.insert(container.to_owned()) {
            return Ok(());
        }
        let object = format!("{}/{REPORTED}", wal_dir(container));
        let read = async {
            use tokio::io::AsyncReadExt as _;
            let Some(body) = self.store.get(&object).await.map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let mut out = vec![];
            body.take(65).read_to_end(&mut out).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(Some(out))
        };
        let body = match read.await {
            Ok(body) => body,
            Err(e) => {
                // Unreachable now: asked again next round.
                state.recalled.remove(container);
                return Err(Failure::plain(format!("{object}: {e}")));
            }
        };
        let upto = body.map(|b| String::from_utf8_lossy(&b).trim().to_owned());
        // Only a segment's name: anything else (corrupt, foreign, a later format) is not
        // ours to trust, and must not stop shipping either.
        match upto {
            Some(u) if u.len() == 24 && wal_file_timeline(&u).is_some() => {
                state.reported.entry(container.to_owned()).or_insert(u);
            }
            Some(_) => tracing::warn!(object = %object, "not a segment name: ignored"),
            None => {}
        }
        Ok(())
    }

    /// The lost slot's gap of `container` (up to segment `upto`, [`Shipped::gap_upto`]) was
    /// said: kept in the bucket, so a restart before its hole is passed does not say it again.
    pub async fn gap_said(&self, container: &str, upto: &str) {
        let object = format!("{}/{REPORTED}", wal_dir(container));
        if let Err(e) = self.store.put(&object, Bytes::from(upto.to_owned())).await {
            // Said anyway; a restart before its hole is passed says it again.
            tracing::warn!(container, error = %e, "could not keep the reported gap in the bucket");
        }
    }

    /// The reported gap is passed: forgotten here and in the bucket (best effort: a stale
    /// one is passed again by the next segment).
    async fn forget_reported(&self, container: &str, state: &mut ShipState) {
        state.reported.remove(container);
        let object = format!("{}/{REPORTED}", wal_dir(container));
        if let Err(e) = self.store.delete(&object).await {
            tracing::warn!(container, error = %e, "could not remove the reported gap from the bucket");
        }
    }

    async fn local_sha256(
        &self,
        what: &str,
        container: &str,
        path: &str,
    ) -> Result<String, Failure> {
        let spec = ExecSpec {
            cmd: ["sha256sum", "--", path].map(String::from).to_vec(),
            ..Default::default()
        };
        let out = self.exec_checked(container, &spec, 5, what, format!("hashing {path}")).await?;
        let line = out.last().map(|l| l.trim()).unwrap_or_default();
        Ok(line.split_whitespace().next().unwrap_or_default().to_owned())
    }

    /// The signed record of `container`'s WAL file `file`, if one is stored. A record that
    /// is unsigned, badly signed, unreadable or not about this file is an error: the bucket
    /// is not trusted.
    pub async fn wal_record(
        &self,
        container: &str,
        file: &str,
    ) -> Result<Option<Component>, Failure> {
        Ok(self.signed_wal_record(container, file).await?.map(|(record, _)| record))
    }

    /// [`Backups::wal_record`], with what its record says beyond the component (shipped by a
    /// version that wrote it).
    pub(crate) async fn signed_wal_record(
        &self,
        container: &str,
        file: &str,
    ) -> Result<Option<(Component, WalExtra)>, Failure> {
        let dir = wal_dir(container);
        let store = &self.reading;
        let name = format!("{dir}/{file}.json");
        let Some(body) = store.get_small(&name, MAX_RECORD).await.map_err(Failure::plain)? else {
            return Ok(None);
        };
        let refused = |why: String| Failure::plain(format!("{name}: refused: {why}"));
        let signature = store
            .get_small(&format!("{dir}/{file}.sig"), MAX_RECORD)
            .await
            .map_err(Failure::plain)?;
        match self.config.trust.check(Purpose::Wal, &body, signature.as_deref()) {
            Signature::Signed { .. } => {}
            Signature::Unsigned => return Err(refused("it is not signed".into())),
            Signature::Unchecked => return Err(refused("no key is trusted to check it".into())),
            Signature::Bad { reason } => return Err(refused(reason)),
        }
        let entry: Component =
            serde_json::from_slice(&body).map_err(|e| refused(format!("unreadable: {e}")))?;
        let about = matches!(&entry.kind, Kind::Wal { container: c, file: f, .. } if c == container && f == file);
        if !about || !entry.object.starts_with(&format!("{dir}/{file}.zst")) {
            return Err(refused(format!("it does not describe {file} of {container}")));
        }
        let fields = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        let time_of = |key: &str| match fields.get(key).and_then(|c| c.as_str()) {
            None => Ok(None),
            Some(at) => {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map(Some)
                    .map_err(|e| refused(format!("{key} {at:?}: {e}")))
            }
        };
        let extra = WalExtra {
            created: time_of(CREATED)?,
            created_exact: fields.get(CREATED_EXACT).and_then(|v| v.as_bool()).unwrap_or(true),
            shipped_at: time_of(SHIPPED)?,
        };
        Ok(Some((entry, extra)))
    }

    /// Signs and stores the record of `container`'s WAL file `file` (`entry`, with `extra`):
    /// the signature first, so a record is never there without it.
    pub(crate) async fn put_wal_record(
        &self,
        container: &str,
        file: &str,
        entry: &Component,
        extra: &WalExtra,
    ) -> Result<(), Failure> {
        let dir = wal_dir(container);
        let mut body = serde_json::to_value(entry).map_err(Failure::plain)?;
        let shown = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339).map_err(Failure::plain)
        };
        if let Some(fields) = body.as_object_mut() {
            if let Some(at) = extra.shipped_at {
                fields.insert(SHIPPED.into(), shown(at)?.into());
            }
            if let Some(created) = extra.created {
                fields.insert(CREATED.into(), shown(created)?.into());
                fields.insert(CREATED_EXACT.into(), extra.created_exact.into());
            }
        }
        let body = serde_json::to_vec_pretty(&body).map_err(Failure::plain)?;
        let signature = self.config.signing.sign(Purpose::Wal, &body);
        let sig_name = format!("{dir}/{file}.sig");
        self.store.put(&sig_name, Bytes::from(signature)).await.map_err(Failure::plain)?;
        steward_failpoints::failpoint!("wal:signed");
        self.store
            .put(&format!("{dir}/{file}.json"), Bytes::from(body))
            .await
            .map_err(Failure::plain)?;
        steward_failpoints::failpoint!("wal:stored");
        Ok(())
    }

    /// When `timeline` began, for its history file's record: the start of the server now
    /// running on it (a restore starts the server on its new timeline after the old one's
    /// last commit and before the new one's first), or now when the server is on another
    /// timeline by now (shipped late: later than the truth, never earlier; the second value
    /// is then false: [`CREATED_EXACT`]). Both times are the database server's clock, like
    /// the commit times a target is compared with; Steward's own clock may be another.
    async fn timeline_created(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
        timeline: u32,
    ) -> Result<(time::OffsetDateTime, bool), Failure> {
        let sql = "SELECT timeline_id || '|' || coalesce(to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '') || '|' || to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM pg_control_checkpoint()";
        let lines = self.sql(what, container, login, sql).await?;
        timeline_began(&lines, timeline).ok_or_else(|| {
            Failure::plain(format!(
                "{what}: unreadable server times for timeline {timeline}'s history: {lines:?}"
            ))
        })
    }

    /// Asks `pg_switch_wal()` when WAL has waited in the current segment for half the
    /// maximum lag; whether it did.
    async fn switch_if_waiting(
        &self,
        what: &str,
        container: &str,
        login: &PgLogin,
        state: &mut ShipState,
    ) -> Result<bool, Failure> {
        let sql = "SELECT pg_current_wal_insert_lsn(), setting FROM pg_settings WHERE name = 'wal_segment_size'";
        let lines = self.sql(what, container, login, sql).await?;
        let parsed = lines.iter().find_map(|l| {
            let (lsn, size) = l.trim().split_once('|')?;
            Some((parse_lsn(lsn)?, size.parse::<u64>().ok().filter(|s| *s > 0)?))
        });
        let Some((lsn, segment_size)) = parsed else {
            return Err(Failure::plain(format!("{what}: unreadable WAL position {lines:?}")));
        };
        let segment = lsn / segment_size;
        if lsn % segment_size <= LONG_PAGE_HEADER {
            state.waiting.remove(container);
            return Ok(false);
        }
        let since = match state.waiting.get(container) {
            Some((s, since)) if *s == segment => *since,
            _ => {
                state.waiting.insert(container.to_owned(), (segment, Instant::now()));
                return Ok(false);
            }
        };
        if since.elapsed() < self.config.pitr.max_lag / 2 {
            return Ok(false);
        }
        self.sql(what, container, login, "SELECT pg_switch_wal()").await?;
        state.waiting.remove(container);
        tracing::debug!(container, "asked for a WAL switch: the lag bound is half spent");
        Ok(true)
    }
}

impl Backups {
    /// Deletes the shipped WAL no retained base backup needs (retention, after the backups
    /// were pruned): a segment is kept when some base in `retained` of its container starts
    /// on its timeline or an earlier one, at or before it; history files are kept. WAL under
    /// a container name none of `retained` has a base of (a container renamed or recreated
    /// under another name since) is needed by none: a base taken later starts after all of
    /// it. Such WAL is kept, though, when `judged` is None (a manifest could not be read: it
    /// may hold a base of that name) or a manifest in it (read, but not usable, e.g. unsigned
    /// and restorable only by the explicit override) has a base of that name. Returns the
    /// files deleted.
    pub async fn prune_wal(
        &self,
        retained: &[&manifest::Manifest],
        judged: Option<&[&manifest::Manifest]>,
    ) -> Result<Vec<String>, Failure> {
        let store = &self.reading;
        // Per directory in the bucket: a container stored there, and its bases' starts.
        let mut bases: HashMap<String, (String, Vec<(u32, u64)>)> = HashMap::new();
        for c in retained.iter().flat_map(|m| &m.components) {
            if let Kind::PostgresBase { container, timeline, start_lsn, .. } = &c.kind {
                if let Some(start) = parse_lsn(start_lsn) {
                    let (_, starts) = bases
                        .entry(wal_dir(container))
                        .or_insert_with(|| (container.clone(), vec![]));
                    starts.push((*timeline, start));
                }
            }
        }
        let spared: std::collections::HashSet<String> = match judged {
            None => Default::default(),
            Some(judged) => judged
                .iter()
                .flat_map(|m| &m.components)
                .filter_map(|c| match &c.kind {
                    Kind::PostgresBase { container, .. } => Some(wal_dir(container)),
                    _ => None,
                })
                .collect(),
        };
        let all = store.list_objects(WAL_ROOT).await.map_err(Failure::plain)?;
        let dirs: std::collections::BTreeSet<&str> = all
            .iter()
            .filter_map(|o| o.strip_prefix(&format!("{WAL_ROOT}/"))?.split_once('/'))
            .map(|(slug, _)| slug)
            .collect();
        let mut deleted = vec![];
        for slug in dirs {
            let dir = format!("{WAL_ROOT}/{slug}");
            let Some((container, starts)) = bases
                .get(&dir)
                .cloned()
                .or_else(|| (judged.is_some() && !spared.contains(&dir)).then(Default::default))
            else {
                continue;
            };
            let listed: Vec<&String> =
                all.iter().filter(|o| o.starts_with(&format!("{dir}/"))).collect();
            let mut files: Vec<String> = listed
                .iter()
                .filter_map(|o| o.strip_prefix(&format!("{dir}/"))?.strip_suffix(".json"))
                .filter(|f| !f.ends_with(".history") && wal_file_timeline(f).is_some())
                .map(str::to_owned)
                .collect();
            files.sort();
            // The segment size from a signed record (every segment of a cluster has it); not
            // needed where no base is retained.
            let Some(first) = files.first() else { continue };
            let size = match starts.is_empty() {
                true => 0,
                false => match self.wal_record(&container, first).await?.map(|r| r.raw_size) {
                    Some(size) => size,
                    None => continue,
                },
            };
            for file in files {
                let needed = starts.iter().any(|(btl, start)| {
                    let (Some(tl), Some(n)) =
                        (wal_file_timeline(&file), segment_index(&file, size))
                    else {
                        return true; // unreadable: kept
                    };
                    tl >= *btl && n.saturating_add(1).saturating_mul(size) > *start
                });
                if needed {
                    continue;
                }
                // The record first: a file without one counts as not shipped, never as a
                // record without its object.
                store.delete(&format!("{dir}/{file}.json")).await.map_err(Failure::plain)?;
                store.delete(&format!("{dir}/{file}.sig")).await.map_err(Failure::plain)?;
                for o in listed.iter().filter(|o| o.starts_with(&format!("{dir}/{file}.zst"))) {
                    store.delete(o).await.map_err(Failure::plain)?;
                }
                deleted.push(format!("{dir}/{file}"));
            }
        }
        if !deleted.is_empty() {
            tracing::info!(files = deleted.len(), "pruned the WAL no retained base backup needs");
        }
        Ok(deleted)
    }
}

impl Backups {
    /// Of the backups retention would prune (`prune`), those whose base is the only way to
    /// times before a hole in its container's shipped WAL: the next newer base kept starts
    /// after a segment missing since this base's end (a new base after a gap the same day
    /// would otherwise replace it, and the times between its end and the hole with it). Only
    /// while its day is still retained (another backup of that UTC day is kept), so such
    /// bases age out with their day. Judged newest first: a base kept so is the next one of
    /// the older ones.
    pub(crate) async fn bases_before_holes(
        &self,
        listed: &[steward_store::catalog::Listed],
        prune: &[String],
    ) -> Result<Vec<String>, Failure> {
        struct Base<'a> {
            id: &'a str,
            taken_at: time::OffsetDateTime,
            timeline: u32,
            start: u64,
            stop: u64,
        }
        let mut bases: HashMap<&str, Vec<Base>> = HashMap::new();
        for l in listed {
            let Some(m) = l.usable() else { continue };
            for c in &m.components {
                if let Kind::PostgresBase { container, timeline, start_lsn, stop_lsn, .. } = &c.kind
                {
                    let (Some(start), Some(stop)) = (parse_lsn(start_lsn), parse_lsn(stop_lsn))
                    else {
                        continue;
                    };
                    let base = Base {
                        id: &l.backup_id,
                        taken_at: m.taken_at,
                        timeline: *timeline,
                        start,
                        stop,
                    };
                    bases.entry(container.as_str()).or_default().push(base);
                }
            }
        }
        let mut rescued: Vec<String> = vec![];
        for (container, mut bases) in bases {
            if !bases.iter().any(|b| prune.iter().any(|p| p == b.id)) {
                continue;
            }
            bases.sort_by_key(|b| b.taken_at);
            let dir = wal_dir(container);
            let listed_wal = self.reading.list_objects(&dir).await.map_err(Failure::plain)?;
            let names: std::collections::BTreeSet<&str> = listed_wal
                .iter()
                .filter_map(|o| o.strip_prefix(&format!("{dir}/"))?.strip_suffix(".json"))
                .filter(|f| f.len() == 24 && wal_file_timeline(f).is_some())
                .collect();
            let Some(newest) = names.iter().next_back() else { continue };
            let Some(size) = self.wal_record(container, newest).await?.map(|r| r.raw_size) else {
                continue;
            };
            for i in (0..bases.len()).rev() {
                let kept =
                    |id: &str| !prune.iter().any(|p| p == id) || rescued.iter().any(|r| r == id);
                let b = &bases[i];
                if kept(b.id) {
                    continue;
                }
                let Some(next) = bases[i + 1..].iter().find(|n| kept(n.id)) else { continue };
                let day = b.taken_at.to_offset(time::UtcOffset::UTC).date();
                let day_kept = listed.iter().any(|l| {
                    kept(&l.backup_id)
                        && l.usable().is_some_and(|m| {
                            m.taken_at.to_offset(time::UtcOffset::UTC).date() == day
                        })
                });
                if !day_kept || next.timeline != b.timeline {
                    continue;
                }
                let (from, to) = (b.stop / size.max(1), next.start / size.max(1));
                let Some(end) = segment_name(b.timeline, from, size) else { continue };
                if from >= to || !names.contains(end.as_str()) {
                    continue; // no time only this base reaches
                }
                let present = names
                    .iter()
                    .filter(|n| wal_file_timeline(n) == Some(b.timeline))
                    .filter_map(|n| segment_index(n, size))
                    .filter(|n| (from..to).contains(n))
                    .count();
                if (present as u64) < to - from {
                    rescued.push(b.id.to_owned());
                }
            }
        }
        Ok(rescued)
    }
}

/// Whether the hole before segment `file` (the newest stored segment of its timeline before
/// it is `newest_earlier`) is the lost slot's, said up to segment `upto`: `file` is at or
/// before `upto`, or the hole began at or before it (a receiver that starts at the server's
/// position rather than the new slot's, as `pg_receivewal` of PostgreSQL 14 and older does,
/// may start past `upto`: the same outage, said once).
fn said_already(file: &str, newest_earlier: &str, upto: Option<&str>) -> bool {
    let Some(upto) = upto else { return false };
    let same_timeline = upto.get(..8).is_some_and(|t| file.get(..8) == Some(t));
    file <= upto || (same_timeline && newest_earlier < upto)
}

/// The index of segment `name` (of `size` bytes) in its timeline: its LSN divided by the
/// segment size.
pub fn segment_index(name: &str, size: u64) -> Option<u64> {
    let log = u64::from_str_radix(name.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(name.get(16..24)?, 16).ok()?;
    let per_log = 0x1_0000_0000u64.checked_div(size).filter(|n| *n > 0)?;
    log.checked_mul(per_log)?.checked_add(seg)
}

/// The name of segment `index` (of `size` bytes) of `timeline`: the inverse of
/// [`segment_index`].
pub fn segment_name(timeline: u32, index: u64, size: u64) -> Option<String> {
    let per_log = 0x1_0000_0000u64.checked_div(size).filter(|n| *n > 0)?;
    let log = u32::try_from(index / per_log).ok()?;
    let seg = u32::try_from(index % per_log).ok()?;
    Some(format!("{timeline:08X}{log:08X}{seg:08X}"))
}

/// The name of the segment before `file` on its timeline, for the default 16 MiB segments
/// (256 a log file); None for the first or a name that is not a segment's.
fn previous_segment(file: &str) -> Option<String> {
    wal_file_timeline(file).filter(|_| file.len() == 24)?;
    let log = u32::from_str_radix(file.get(8..16)?, 16).ok()?;
    let seg = u32::from_str_radix(file.get(16..24)?, 16).ok()?;
    let (log, seg) = match seg.checked_sub(1) {
        Some(seg) => (log, seg),
        None => (log.checked_sub(1)?, 0xFF),
    };
    Some(format!("{}{log:08X}{seg:08X}", &file[..8]))
}

/// `8GB`, `8192MB`, `1TB` as PostgreSQL shows a size, in MiB.
fn mib(shown: &str) -> Option<u64> {
    let digits: String = shown.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits.parse().ok()?;
    match &shown[digits.len()..] {
        "MB" => Some(n),
        "GB" => n.checked_mul(1024),
        "TB" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// [`Backups::timeline_created`]'s answer from the server's `timeline|start|now` line: the
/// start when the checkpoint is on `timeline` (never later than now), now otherwise (not
/// exact); None when the line does not read.
fn timeline_began(lines: &[String], timeline: u32) -> Option<(time::OffsetDateTime, bool)> {
    let at = |s: &str| {
        time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339).ok()
    };
    lines.iter().find_map(|l| {
        let mut parts = l.trim().splitn(3, '|');
        let tl = parts.next()?.parse::<u32>().ok()?;
        let started = parts.next()?;
        let now = at(parts.next()?)?;
        match (tl == timeline).then(|| at(started)).flatten() {
            Some(s) => Some((s.min(now), true)),
            None => Some((now, false)),
        }
    })
}

/// The spool listing's files (WAL names only, sorted) and the time printed after them
/// (`date +now=%s`, rounded up by a second: the listing took part of it); no time when the
/// last line is not one (the marker tells a cut or missing line from a number).
fn spool_listing(lines: &[String]) -> (Vec<String>, Option<time::OffsetDateTime>) {
    let listed_at = lines
        .last()
        .and_then(|l| l.trim().strip_prefix("now=")?.parse::<i64>().ok())
        .and_then(|secs| secs.checked_add(1))
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok());
    let mut files: Vec<String> = lines
        .iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| wal_file_timeline(l).is_some())
        .collect();
    files.sort();
    (files, listed_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_file_names() {
        assert_eq!(wal_file_timeline("000000010000000000000003"), Some(1));
        assert_eq!(wal_file_timeline("0000000A00000001000000FF"), Some(10));
        assert_eq!(wal_file_timeline("00000002.history"), Some(2));
        for bad in [
            "000000010000000000000003.partial",
            "00000001000000000000000",
            "0000000100000000000000030",
            "000000010000000000000g03",
            "000000000000000000000003",
            "0000002.history",
            "../../etc/passwd",
            "",
        ] {
            assert_eq!(wal_file_timeline(bad), None, "{bad}");
        }
    }

    #[test]
    fn lsns_and_sizes() {
        assert_eq!(parse_lsn("0/3000028"), Some(0x300_0028));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("0/"), None);
        assert_eq!(parse_lsn("x/1"), None);
        assert_eq!(parse_lsn("123456789/1"), None);
        assert_eq!(mib("8GB"), Some(8192));
        assert_eq!(mib("8192MB"), Some(8192));
        assert_eq!(mib("-1"), None);
    }

    #[test]
    fn previous_segments() {
        let p = |f: &str| previous_segment(f);
        assert_eq!(p("000000010000000000000003").as_deref(), Some("000000010000000000000002"));
        assert_eq!(p("000000020000000100000000").as_deref(), Some("0000000200000000000000FF"));
        assert_eq!(p("000000010000000000000000"), None);
        assert_eq!(p("00000002.history"), None);
        let mib16 = 16 << 20;
        for name in ["000000010000000000000003", "0000000200000001000000FF"] {
            let index = segment_index(name, mib16).unwrap_or_default();
            let tl = wal_file_timeline(name).unwrap_or_default();
            assert_eq!(segment_name(tl, index, mib16).as_deref(), Some(name));
        }
        assert_eq!(segment_name(1, 3, 0), None);
    }

    #[test]
    fn a_persisting_failure_is_said_once_an_episode() {
        let lag = std::time::Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let mut e = Episodes::default();
        let f = e.failed("db", "S3 down", at(0), lag);
        assert_eq!(f, Failing { new_reason: true, alarm: None });
        let f = e.failed("db", "S3 down", at(30), lag);
        assert_eq!(f, Failing { new_reason: false, alarm: None });
        // Another container's episode is its own.
        assert_eq!(e.failed("other", "x", at(61), lag).alarm, None);
        // The bound reached: said, with how long it lasted; a publish that failed says it again.
        let f = e.failed("db", "S3 refuses", at(61), lag);
        assert_eq!(
            f,
            Failing { new_reason: true, alarm: Some(std::time::Duration::from_secs(61)) }
        );
        assert!(e.failed("db", "S3 refuses", at(62), lag).alarm.is_some());
        e.said("db");
        assert_eq!(e.failed("db", "S3 refuses", at(600), lag).alarm, None);
        // A good round ends the episode (once); the next failure starts a new one.
        assert!(e.ok("db"));
        assert!(!e.ok("db"));
        assert_eq!(e.failed("db", "S3 refuses", at(700), lag).alarm, None);
        assert!(e.failed("db", "S3 refuses", at(760), lag).alarm.is_some());
        // A round without the container (stopped for a while) ends its episode: back, its
        // first failure ("starting up") is a new episode, not an alarm at once.
        e.failed("other", "x", at(800), lag);
        e.only(&["other"].into_iter().collect());
        assert_eq!(e.failed("db", "starting up", at(900), lag).alarm, None);
        assert_eq!(
            e.failed("other", "x", at(900), lag).alarm,
            Some(std::time::Duration::from_secs(839))
        );
    }

    #[test]
    fn a_lost_slots_hole_is_said_once() {
        let seg = |n: u32| format!("00000001000000000000{n:04X}");
        // Nothing reported: a hole is a hole.
        assert!(!said_already(&seg(9), &seg(3), None));
        // The new receiver starts at or before the point reported (PostgreSQL 15 and later).
        assert!(said_already(&seg(7), &seg(3), Some(&seg(7))));
        assert!(said_already(&seg(6), &seg(3), Some(&seg(7))));
        // ... or past it (14 and older start at the server's position): the same hole, which
        // began before the point reported.
        assert!(said_already(&seg(9), &seg(3), Some(&seg(7))));
        // A hole that began after the point reported was passed is a new one.
        assert!(!said_already(&seg(12), &seg(8), Some(&seg(7))));
        assert!(!said_already(&seg(12), &seg(7), Some(&seg(7))));
        // Another timeline's hole is not the reported one.
        let other = "000000020000000000000009";
        assert!(!said_already(other, "000000020000000000000003", Some(&seg(0x10))));
    }

    /// The bound on what a shipped file holds comes from the container's clock, printed
    /// after the listing: a shipper whose own clock is behind the database's no longer makes
    /// a reachable target look unreachable.
    #[test]
    fn a_spool_listing_reads_its_files_and_the_containers_time_after_them() {
        let lines: Vec<String> = [
            "000000010000000000000004",
            "000000010000000000000003",
            "000000010000000000000005.partial",
            "00000002.history",
            "now=1796110000",
        ]
        .map(String::from)
        .to_vec();
        let (files, at) = spool_listing(&lines);
        assert_eq!(
            files,
            ["000000010000000000000003", "000000010000000000000004", "00000002.history"]
        );
        let expected = time::OffsetDateTime::from_unix_timestamp(1_796_110_001).ok();
        assert_eq!(at, expected, "rounded up past the listing's second");
        // No time printed (or not a number): no bound, never another clock's.
        let (files, at) = spool_listing(&lines[..4]);
        assert_eq!((files.len(), at), (3, None));
        let (_, at) = spool_listing(&["now=%s".to_owned()]);
        assert_eq!(at, None);
        assert_eq!(spool_listing(&[format!("now={}", i64::MAX)]).1, None);
        // A bare number is a cut line (or a file named so), never a time.
        assert_eq!(spool_listing(&["10000".to_owned()]).1, None);
    }

    /// A timeline's start and the fallback are both the server's clock (one query), never
    /// Steward's: a shipper whose clock is behind would date a timeline too early, and a
    /// target on the abandoned stretch would then follow the new timeline.
    #[test]
    fn a_timeline_began_when_its_server_started_on_the_servers_clock() {
        let line = |s: &str| vec![s.to_owned()];
        let t = |s: &str| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        };
        let on_it = line("2|2026-12-01T10:00:00.000000Z|2026-12-01T10:00:05.000000Z");
        assert_eq!(timeline_began(&on_it, 2), t("2026-12-01T10:00:00Z").map(|x| (x, true)));
        // Already on a later timeline: now, and said to be inexact.
        assert_eq!(timeline_began(&on_it, 1), t("2026-12-01T10:00:05Z").map(|x| (x, false)));
        // A start after now (a clock step) is capped at now.
        let stepped = line("2|2026-12-01T11:00:00.000000Z|2026-12-01T10:00:05.000000Z");
        assert_eq!(timeline_began(&stepped, 2), t("2026-12-01T10:00:05Z").map(|x| (x, true)));
        // No start known: now, inexact.
        let unknown = line("2||2026-12-01T10:00:05.000000Z");
        assert_eq!(timeline_began(&unknown, 2), t("2026-12-01T10:00:05Z").map(|x| (x, false)));
        // Unreadable: no answer (the file waits in the spool), never Steward's clock.
        assert_eq!(timeline_began(&line("2|2026-12-01T10:00:00.000000Z"), 2), None);
        assert_eq!(timeline_began(&line("x|a|b"), 2), None);
        assert_eq!(timeline_began(&[], 2), None);
    }

    #[test]
    fn slot_names_fit_postgres() {
        assert_eq!(slot_name("gitea-db"), "steward_gitea_db");
        let long = slot_name(&"X".repeat(100));
        assert!(long.len() <= 63 && long.starts_with("steward_xxx"), "{long}");
    }
}
