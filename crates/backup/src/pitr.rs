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

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use steward_engine::ExecSpec;
use steward_store::manifest::{self, Component, Kind};
use time::OffsetDateTime;

use crate::backup::{Backups, Failure};
use crate::pipeline;
use crate::restore::psql;
use crate::targets::Target;
use crate::wal::{segment_index, segment_name, wal_dir, wal_file_timeline, WalExtra};

/// Where the WAL to replay is put in the scratch server's data directory (left out of what
/// is copied back).
const REPLAY_DIR: &str = "pgsql_tmp_steward_replay";
/// The longest a scratch server may take to replay and promote.
const RECOVERY_LIMIT: Duration = Duration::from_secs(2 * 3600);

/// How far a point-in-time restore replays the shipped WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointInTime {
    /// Every shipped segment (the newest state the bucket holds).
    Latest,
    /// Up to and including the transactions committed at this time
    /// (`recovery_target_time`, inclusive).
    At(OffsetDateTime),
}

impl PointInTime {
    /// `latest` or an RFC 3339 time (`2026-11-30T08:00:00Z`).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim() == "latest" {
            return Ok(Self::Latest);
        }
        OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
            .map(Self::At)
            .map_err(|e| format!("{s:?} is neither latest nor an RFC 3339 time: {e}"))
    }
}

/// The WAL a replay needs ([`Backups::wal_to_replay`]).
#[derive(Debug)]
pub(crate) struct Replay {
    /// The records of the files to replay: the end timeline's history first, then the
    /// segments in order.
    pub files: Vec<Component>,
    /// Where the replay ends short of the newest WAL shipped (a hole), for a target time.
    pub gap: Option<String>,
    /// For a target time: what the replayed WAL ends with and which timelines begun later
    /// it leaves out ([`Short::why`]), to explain a server that stops short of the target.
    pub short: Option<Short>,
    /// The timeline it ends on (`recovery_target_timeline`).
    pub timeline: u32,
    /// What the operator should know of the replay chosen (a newer timeline `latest` does not
    /// reach from this base), for the restore's outcome.
    pub note: Option<String>,
}

/// Where the WAL a replay to a target time uses ends ([`Backups::wal_to_replay`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Short {
    /// The bucket's directory of the WAL.
    pub dir: String,
    /// The timeline the replay ends on.
    pub end: u32,
    /// The last segment replayed.
    pub last: String,
    /// When it was shipped (None: a record older than that field).
    pub shipped: Option<OffsetDateTime>,
    /// The hole the replay stops at, if any.
    pub gap: Option<String>,
    /// Timelines branching off the end's that began after the target, so not followed.
    pub skipped: Vec<Skipped>,
}

/// A timeline a replay to a target time did not follow: it began after the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Skipped {
    pub timeline: u32,
    /// When it began, as its history's signed record says.
    pub created: OffsetDateTime,
    /// Whether that is exact, or only the time the history was shipped (later than the truth).
    pub exact: bool,
    /// The first transaction of its parent it left out, when PostgreSQL wrote it.
    pub branched: Option<OffsetDateTime>,
}

impl Short {
    /// The refusal of target `t` when it is at or after the time the last segment was shipped:
    /// no transaction in the replayed WAL committed after it, so no replay reaches it. None
    /// when that cannot be told (a target before it, a record without the time).
    pub fn refusal(&self, t: OffsetDateTime) -> Option<String> {
        let shipped = self.shipped.filter(|s| t >= *s)?;
        let window = self.skipped.iter().find(|s| !s.exact).map(|s| {
            // The timeline began after its parent's last shipped segment (the parent ran
            // until the restore that began it) and after the transaction it left out.
            let from = s.branched.map_or(shipped, |b| b.max(shipped));
            format!(
                "; timeline {} began between {from} and {} (its history was shipped late, when the server had moved on, so its start is known only within that window): {t} is in that window, and may be on timeline {}",
                s.timeline, s.created, s.timeline
            )
        });
        Some(format!(
            "{t} is at or after the time the last segment the replay can use was shipped ({} at {shipped}): no transaction after {t} is in the bucket, so the replay cannot reach it ({}){}; restore to a time before {shipped}{}; nothing was changed",
            self.last,
            self.why(),
            window.unwrap_or_default(),
            self.otherwise(),
        ))
    }

    /// What the replayed WAL is, for a refusal or a failure.
    pub fn why(&self) -> String {
        let mut why = match &self.gap {
            Some(gap) => format!("the shipped WAL of {} has a gap ({gap})", self.dir),
            None => format!(
                "the bucket {} holds timeline {}'s WAL up to segment {}",
                self.dir, self.end, self.last
            ),
        };
        for s in &self.skipped {
            let (latest, began) = match s.exact {
                true => ("", "it began"),
                false => (" at the latest", "it may have begun"),
            };
            why.push_str(&format!(
                "; timeline {} (begun {}{latest}) is not followed: {began} after the target",
                s.timeline, s.created
            ));
        }
        why
    }

    /// The other ways to a later time.
    pub fn otherwise(&self) -> String {
        if self.gap.is_some() {
            return ", or from a backup taken after the gap".into();
        }
        match self.skipped.iter().map(|s| s.created).max() {
            Some(created) => format!(", or at or after {created}"),
            None => {
                ", to latest, or once the next segment is shipped (within STEWARD_PITR_MAX_LAG)"
                    .into()
            }
        }
    }
}

/// A timeline history file: per line an ancestor timeline and the LSN where the next one
/// branched off it (`1\t0/3000000\tno recovery target specified`), oldest first; `#` lines
/// and empty ones skipped. None when a line does not read so.
pub fn parse_history(text: &str) -> Option<Vec<(u32, u64)>> {
    let mut out = vec![];
    for line in history_lines(text) {
        let mut fields = line.split_whitespace();
        let tli = fields.next()?.parse::<u32>().ok()?;
        let at = crate::wal::parse_lsn(fields.next()?)?;
        out.push((tli, at));
    }
    Some(out)
}

/// A history file's entries: its lines without blanks and comments.
fn history_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// When the branch off `parent` in a timeline history happened: the time PostgreSQL wrote
/// as the reason of `parent`'s line when the recovery stopped at a target time (`before
/// 2026-11-30 08:00:00.123456+00`: the first transaction it did not replay, the first one of
/// the stretch the new timeline abandoned). None for other reasons.
pub fn branch_time(text: &str, parent: u32) -> Option<OffsetDateTime> {
    let line = history_lines(text).find(|l| {
        l.split_whitespace().next().and_then(|t| t.parse::<u32>().ok()) == Some(parent)
    })?;
    let reason = line.splitn(3, char::is_whitespace).nth(2)?.trim();
    let shown = reason.strip_prefix("before ").or_else(|| reason.strip_prefix("after "))?;
    // `2026-11-30 08:00:00.123456+00` (or `+05:30`) as RFC 3339.
    let mut rfc = shown.trim().replacen(' ', "T", 1);
    let zone = rfc.rfind(['+', '-']).filter(|i| *i > 10)?;
    if rfc.len().saturating_sub(zone) == 3 {
        rfc.push_str(":00");
    }
    OffsetDateTime::parse(&rfc, &time::format_description::well_known::Rfc3339).ok()
}

/// At most the first 200 characters of `text` (what a failure's reason quotes of a file).
fn shortened(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

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
        let spec =
            ExecSpec { cmd: psql(user, "postgres", "SHOW data_directory"), ..Default::default() };
        let out =
            self.exec_checked(container, &spec, 5, component, "reading data_directory").await?;
        let dir = out.last().map(|l| l.trim().trim_end_matches('/')).unwrap_or_default();
        if !dir.starts_with('/') || dir.split('/').any(|p| p == "." || p == "..") {
            return Err(Failure::plain(format!(
                "{component}: the server's data_directory {dir:?} is not a plain absolute path"
            )));
        }
        Ok(dir.to_owned())
    }
}

impl Backups {
    /// The newest usable backup holding a base backup, taken before `t`.
    pub(crate) async fn newest_before(&self, t: OffsetDateTime) -> Result<String, Failure> {
        let listed = self.list().await.map_err(Failure::plain)?;
        listed
            .iter()
            .rev()
            .filter(|l| l.taken_at < t)
            .find(|l| {
                l.usable().is_some_and(|m| {
                    m.components.iter().any(|c| matches!(c.kind, Kind::PostgresBase { .. }))
                })
            })
            .map(|l| l.backup_id.clone())
            .ok_or_else(|| {
                Failure::plain(format!(
                    "no usable backup with a base backup was taken before {t}; nothing was changed"
                ))
            })
    }

    /// Builds the cluster of base backup `c` recovered to `to` in a scratch server of the
    /// same image (its WAL from the bucket, each file's signed record and checksums checked),
    /// proves it (promoted, answering queries, the replay's end logged), and copies its data
    /// directory into `staging` of the live container, which is not touched otherwise
    /// (`None`: only the proof, what `verify` does). Returns the time of the last transaction
    /// replayed (`none` when there was none).
    ///
    /// `wal_of` is the container whose shipped WAL is replayed: the one the backup recorded,
    /// which a restore onto a rebuilt host may have matched to a container named otherwise
    /// here (`c`'s container is then the new name; its WAL is still under the old one).
    pub(crate) async fn recover_into(
        &self,
        c: &Component,
        wal_of: &str,
        pin: Option<&str>,
        to: PointInTime,
        staging: Option<&str>,
    ) -> Result<String, Failure> {
        let Kind::PostgresBase { container, image, data_dir, .. } = &c.kind else {
            return Err(Failure::plain(format!("{}: not a base backup", c.name)));
        };
        let Replay { files, gap, short, timeline, .. } = self.wal_to_replay(c, wal_of, to).await?;
        let image = self.scratch_image(c, image, container).await?;
        let name = format!("steward-pitr-{}", manifest::slug(container));
        let replay = format!("{data_dir}/{REPLAY_DIR}");
        let mut cmd: Vec<String> = vec!["postgres".into()];
        let mut set = |k: &str, v: String| cmd.extend(["-c".into(), format!("{k}={v}")]);
        set("restore_command", format!("cp {replay}/%f %p"));
        set("recovery_target_action", "promote".into());
        // The path checked, not PostgreSQL's `latest` (the newest history file, which may
        // branch off before this base).
        set("recovery_target_timeline", timeline.to_string());
        set("archive_mode", "off".into());
        set("max_slot_wal_keep_size", "-1".into());
        if let PointInTime::At(t) = to {
            let t = t.to_offset(time::UtcOffset::UTC);
            // PostgreSQL's timestamptz input; microseconds are its precision.
            let format = time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]+00"
            );
            let shown =
                t.format(&format).map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
            set("recovery_target_time", shown);
        }
        // A leftover from a restore that died half-way would block the name.
        let _ = self.engine.remove(&name, true).await;
        let env = vec!["POSTGRES_PASSWORD=unused".into()];
        let scratch = self
            .engine
            .create_scratch(&name, &image, env, Some(cmd))
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        let result = self.recover_in(c, &scratch, pin, &files, to, staging).await;
        if let Err(e) = self.engine.remove(&scratch, true).await {
            tracing::warn!(container = %name, error = %e, "could not remove the scratch server");
        }
        result.map_err(|mut f| {
            // The server's own words ("recovery ended before configured recovery target was
            // reached") do not say why: a hole in the shipped WAL the target lies in or after,
            // or no transaction after the target in the WAL replayed (timelines begun later
            // not followed).
            let PointInTime::At(t) = to else { return f };
            if !f.stderr_tail.iter().any(|l| l.contains("before configured recovery target")) {
                return f;
            }
            let own = format!("{}: ", c.name);
            let server = f.reason.strip_prefix(&own).unwrap_or(&f.reason).to_owned();
            if let Some(gap) = &gap {
                f.reason = format!(
                    "{}: the shipped WAL of {wal_of} has a gap ({gap}): {t} is in it or after it, and no replay crosses it; restore to a time before the gap, or from a backup taken after it ({server})",
                    c.name
                );
            } else if let Some(short) = &short {
                // A target before the end's shipping time (not refused up front) with no
                // transaction after it in what was shipped.
                f.reason = format!(
                    "{}: the WAL replayed holds no transaction after {t}, so the server could not tell it had reached the target ({}); restore to an earlier time{} ({server})",
                    c.name,
                    short.why(),
                    short.otherwise(),
                );
            }
            f
        })
    }

    /// The WAL files to replay on base backup `c` and the timeline the replay ends on: the
    /// replay path is the base's timeline from the segment holding its end, then each later
    /// timeline from the segment holding its parent's switch point, up to the newest timeline
    /// whose history (read from the bucket) has the base's timeline ending after the base's
    /// end. Its segments must follow each other (a file on another timeline, such as the
    /// abandoned rest of a parent after its switch point, is not on it); the first missing
    /// one ends what can be replayed, and is the second value (`latest` is refused instead:
    /// it would silently stop short of the newest WAL shipped). The segment holding the
    /// base's end must be in the bucket whatever the target: the base's own copy of it ends
    /// there, so a replay without it stops at the base's end. A target time at or after the
    /// time the last segment it can use was shipped is refused too ([`Short::refusal`]: no
    /// transaction after it is in the bucket, and PostgreSQL would fail the recovery after
    /// the stack was stopped). Refusals say nothing was changed: they come before anything
    /// is. Only the records of what is replayed are read (and of the newest segment, for the
    /// segment size, and of the history files tried).
    pub(crate) async fn wal_to_replay(
        &self,
        c: &Component,
        container: &str,
        to: PointInTime,
    ) -> Result<Replay, Failure> {
        let Kind::PostgresBase { timeline, stop_lsn, .. } = &c.kind else {
            return Err(Failure::plain(format!("{}: not a base backup", c.name)));
        };
        let timeline = *timeline;
        let dir = wal_dir(container);
        let listed = self.reading.list_objects(&dir).await.map_err(Failure::plain)?;
        let names: std::collections::BTreeSet<String> = listed
            .iter()
            .filter_map(|o| o.strip_prefix(&format!("{dir}/"))?.strip_suffix(".json"))
            .filter(|f| wal_file_timeline(f).is_some_and(|t| t >= timeline))
            .map(str::to_owned)
            .collect();
        let stop = crate::wal::parse_lsn(stop_lsn)
            .ok_or_else(|| Failure::plain(format!("{}: unreadable end {stop_lsn}", c.name)))?;
        let missing_end = |segment: String| {
            Failure::plain(format!(
                "{}: the segment holding the base backup's end ({segment}, timeline {timeline}) is not in the bucket {dir}: no shipped WAL can be replayed on this base (is WAL shipping running?); nothing was changed",
                c.name
            ))
        };
        // The segment size from the newest segment's signed record: every segment of a
        // cluster has it.
        let on_base = |n: &&String| wal_file_timeline(n) == Some(timeline) && n.len() == 24;
        let Some(newest) = names.iter().rev().find(on_base) else {
            return Err(missing_end(format!("from {stop_lsn} on")));
        };
        let size = self.listed_record(container, newest).await?.raw_size;
        let first = stop.checked_div(size).unwrap_or(u64::MAX);
        // The path: (timeline, its first segment), ascending.
        let mut path = vec![(timeline, first)];
        let mut later: Vec<u32> = names
            .iter()
            .filter(|n| n.ends_with(".history"))
            .filter_map(|n| wal_file_timeline(n))
            .filter(|t| *t > timeline)
            .collect();
        later.sort_unstable_by(|a, b| b.cmp(a));
        let newest_timeline = later.first().copied();
        let mut later_all = later.clone();
        later_all.sort_unstable();
        // Timelines begun after a target time did not exist at it: the target lies on what
        // their parent was then (the stretch a restore later abandoned), not past their fork.
        let mut not_yet: Vec<(u32, time::OffsetDateTime, bool, String)> = vec![];
        for target in later.iter().copied() {
            let file = format!("{target:08X}.history");
            let (h, extra) = self
                .signed_wal_record(container, &file)
                .await?
                .ok_or_else(|| Failure::plain(format!("{dir}/{file}: gone while listed")))?;
            let created = extra.created;
            let text = self.history_text(&h).await?;
            let Some(chain) = parse_history(&text) else {
                return Err(Failure::plain(format!(
                    "{}: refused: unreadable timeline history: {:?}",
                    h.name,
                    shortened(&text)
                )));
            };
            let Some(from) = chain.iter().position(|(t, at)| *t == timeline && *at >= stop) else {
                continue; // a branch that does not pass through this base
            };
            if let (PointInTime::At(t), Some(created)) = (to, created) {
                if created > t {
                    not_yet.push((target, created, extra.created_exact, text));
                    continue;
                }
            }
            for (k, (_, at)) in chain.iter().enumerate().skip(from) {
                let next = chain.get(k + 1).map_or(target, |(t, _)| *t);
                path.push((next, at.checked_div(size).unwrap_or(u64::MAX)));
            }
            break;
        }
        let timeline_of =
            |segment: u64| path.iter().rev().find(|(_, begin)| *begin <= segment).map(|(t, _)| *t);
        let end = path.last().map_or(timeline, |(t, _)| *t);
        // A timeline above the path's end (a later restore forked it from before this base's
        // end) is not reached from this base: `latest` replays this base's own branch to its
        // end, which is what verifying this base, or undoing that restore with its safety
        // backup, asks for. Said in the log, so an operator who meant the newest state picks a
        // newer backup.
        let newer = newest_timeline.filter(|t| *t > end).or_else(|| {
            names.iter().filter_map(|n| wal_file_timeline(n)).filter(|t| *t > end).max()
        });
        let mut note = None;
        if let (PointInTime::Latest, Some(newer)) = (to, newer) {
            tracing::warn!(component = %c.name, timeline = end, newer, "the bucket holds a newer timeline this base does not reach: replaying this base's branch to its end");
            note = Some(format!(
                "{}: the bucket holds timeline {newer}, which this base does not reach (it branched off before the base's end): replayed this base's timeline {end} to its end; for the newest state restore a backup taken on timeline {newer}",
                c.name
            ));
        }
        let mut on_path: Vec<(u64, &String)> = names
            .iter()
            .filter(|n| n.len() == 24)
            .filter_map(|n| Some((segment_index(n, size)?, n)))
            .filter(|(i, n)| *i >= first && timeline_of(*i) == wal_file_timeline(n))
            .collect();
        on_path.sort();
        let mut wanted = vec![];
        let mut expected = first;
        let mut gap = None;
        for (number, name) in on_path {
            if number != expected {
                let e = timeline_of(expected)
                    .and_then(|t| segment_name(t, expected, size))
                    .unwrap_or_else(|| expected.to_string());
                if expected == first {
                    return Err(missing_end(e));
                }
                if to == PointInTime::Latest {
                    return Err(Failure::plain(format!(
                        "{}: WAL is missing from segment {e} on ({name} follows): the newest shipped state cannot be reached; restore to a time before the gap, nothing was changed",
                        c.name
                    )));
                }
                tracing::warn!(component = %c.name, missing_from = %e, "WAL missing: the replay ends before it");
                gap = Some(format!("segment {e} and on missing, {name} follows"));
                break;
            }
            expected = number.saturating_add(1);
            wanted.push(name.clone());
        }
        if expected == first {
            let e = segment_name(timeline, first, size).unwrap_or_else(|| first.to_string());
            return Err(missing_end(e));
        }
        if let PointInTime::At(t) = to {
            // A target past the fork of a timeline begun after it needs the parent's WAL past
            // the fork: without it PostgreSQL stops at the end of what it has, short of the
            // target (13 and later then fail the recovery, after the stack was stopped; older
            // ones call it success): refused here, before anything is touched.
            for (newer, created, _, text) in &not_yet {
                let Some(fork) = parse_history(text)
                    .and_then(|chain| chain.into_iter().find(|(p, _)| *p == end))
                    .map(|(_, at)| at)
                else {
                    continue;
                };
                let Some(left) = branch_time(text, end).filter(|left| t >= *left) else {
                    continue;
                };
                let fork_segment = fork.checked_div(size).unwrap_or(u64::MAX);
                if expected <= fork_segment {
                    let held = segment_name(end, expected.saturating_sub(1), size)
                        .unwrap_or_else(|| expected.to_string());
                    return Err(Failure::plain(format!(
                        "{}: {t} is on the stretch of timeline {end} that timeline {newer} (begun {created}) abandoned at {}, and the bucket {dir} holds timeline {end}'s WAL only up to segment {held}: the target cannot be reached; restore to a time before {left} or after {created}; nothing was changed",
                        c.name,
                        format_args!("{:X}/{:X}", fork >> 32, fork & 0xFFFF_FFFF),
                    )));
                }
            }
        }
        // Every history above the base's timeline, not only the end's: at promotion
        // PostgreSQL takes the first timeline number whose history `restore_command` cannot
        // find, and one taken already would make its WAL collide with the bucket's.
        let mut files: Vec<Component> = vec![];
        for t in later_all {
            files.push(self.listed_record(container, &format!("{t:08X}.history")).await?);
        }
        for name in &wanted {
            files.push(self.listed_record(container, name).await?);
        }
        let mut short = None;
        if let (PointInTime::At(t), Some(last)) = (to, wanted.last()) {
            // PostgreSQL reaches a target time only on a transaction that committed after it:
            // WAL shipped before the target holds none, and the server would replay it all and
            // fail (13 and later), after the stack was stopped. What the signed records tell
            // for sure: nothing in a file committed after it was shipped.
            let shipped = self.listed_extra(container, last).await?.shipped_at;
            let skipped = not_yet
                .iter()
                .filter(|(_, _, _, text)| {
                    parse_history(text).is_some_and(|chain| chain.iter().any(|(p, _)| *p == end))
                })
                .map(|(newer, created, exact, text)| Skipped {
                    timeline: *newer,
                    created: *created,
                    exact: *exact,
                    branched: branch_time(text, end),
                })
                .collect();
            let found = Short {
                dir: dir.clone(),
                end,
                last: last.clone(),
                shipped,
                gap: gap.clone(),
                skipped,
            };
            if let Some(refusal) = found.refusal(t) {
                return Err(Failure::plain(format!("{}: {refusal}", c.name)));
            }
            short = Some(found);
        }
        Ok(Replay { files, gap, short, timeline: end, note })
    }

    /// What the signed record of WAL file `name` of `container`, which was just listed, says
    /// beyond its component.
    async fn listed_extra(&self, container: &str, name: &str) -> Result<WalExtra, Failure> {
        let record = self.signed_wal_record(container, name).await?;
        record.map(|(_, extra)| extra).ok_or_else(|| {
            Failure::plain(format!("{}/{name}: gone while listed", wal_dir(container)))
        })
    }

    /// The signed record of WAL file `name` of `container`, which was just listed.
    async fn listed_record(&self, container: &str, name: &str) -> Result<Component, Failure> {
        self.wal_record(container, name).await?.ok_or_else(|| {
            Failure::plain(format!("{}/{name}: gone while listed", wal_dir(container)))
        })
    }

    /// A timeline history file's text (they are small: a line a timeline).
    async fn history_text(&self, record: &Component) -> Result<String, Failure> {
        const MAX_HISTORY: u64 = 1 << 20;
        let refused = |why: String| Failure::plain(format!("{}: refused: {why}", record.name));
        if record.raw_size > MAX_HISTORY {
            return Err(refused(format!("{} bytes is no timeline history", record.raw_size)));
        }
        let mut stream = pipeline::read_component(self.read_io(), record)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", record.name)))?;
        let mut out = vec![];
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(
                &chunk.map_err(|e| Failure::plain(format!("{}: {e}", record.name)))?,
            );
            if out.len() as u64 > MAX_HISTORY {
                return Err(refused("longer than its record says".into()));
            }
        }
        String::from_utf8(out).map_err(|e| refused(e.to_string()))
    }

    async fn recover_in(
        &self,
        c: &Component,
        scratch: &str,
        pin: Option<&str>,
        files: &[Component],
        to: PointInTime,
        staging: Option<&str>,
    ) -> Result<String, Failure> {
        let Kind::PostgresBase { container, user, data_dir, .. } = &c.kind else {
            return Err(Failure::plain(format!("{}: not a base backup", c.name)));
        };
        let (stream, _) = pipeline::read_component_pinned(self.read_io(), c, pin)
            .await
            .map_err(|e| Failure::plain(format!("{}: {e}", c.name)))?;
        self.engine
            .upload_tar(scratch, data_dir, stream)
            .await
            .map_err(|e| Failure::plain(format!("{}: into the scratch server: {e}", c.name)))?;
        for f in files {
            let Kind::Wal { file, .. } = &f.kind else { continue };
            let data = pipeline::read_component(self.read_io(), f)
                .await
                .map_err(|e| Failure::plain(format!("{}: {e}", f.name)))?;
            let tar = single_file_tar(&format!("{REPLAY_DIR}/{file}"), f.raw_size, data)
                .map_err(|e| Failure::plain(format!("{}: {e}", f.name)))?;
            self.engine
                .upload_tar(scratch, data_dir, tar)
                .await
                .map_err(|e| Failure::plain(format!("{}: into the scratch server: {e}", f.name)))?;
        }
        let signal = single_file_tar("recovery.signal", 0, futures::stream::empty().boxed())
            .map_err(Failure::plain)?;
        self.engine.upload_tar(scratch, data_dir, signal).await.map_err(Failure::plain)?;
        self.engine.start(scratch).await.map_err(Failure::plain)?;
        tracing::info!(component = %c.name, wal_files = files.len(), ?to, "replaying in a scratch server");
        let replayed = self.wait_promoted(c, scratch, user).await?;
        tracing::info!(component = %c.name, last_replayed_transaction = %replayed, "the scratch server is promoted and answers");
        let clean = ["rm", "-rf", "--", &format!("{data_dir}/{REPLAY_DIR}")].map(String::from);
        let spec = ExecSpec { cmd: clean.to_vec(), ..Default::default() };
        self.exec_checked(scratch, &spec, 5, &c.name, "cleaning the scratch server").await?;
        let Some(staging) = staging else { return Ok(replayed) };
        // A clean shutdown: the copy starts without recovery.
        self.engine.stop(scratch, 120).await.map_err(Failure::plain)?;
        let copy = crate::tarcheck::guarded(
            self.engine.download_path(scratch, data_dir),
            data_dir,
            &c.name,
        );
        self.engine.upload_tar(container, staging, copy).await.map_err(|e| {
            Failure::plain(format!("{}: copying the recovered cluster: {e}", c.name))
        })?;
        Ok(replayed)
    }

    /// Waits until the scratch server has left recovery and answers; the time of the last
    /// transaction it replayed (or `none`). A server that exits (a target the WAL does not
    /// reach, a missing segment) fails with its last log lines.
    async fn wait_promoted(
        &self,
        c: &Component,
        scratch: &str,
        user: &str,
    ) -> Result<String, Failure> {
        let started = Instant::now();
        let sql =
            "SELECT pg_is_in_recovery(), coalesce(pg_last_xact_replay_timestamp()::text, 'none')";
        loop {
            if self.engine.is_running(scratch).await.map_err(Failure::plain)? != Some(true) {
                let tail = self.engine.logs_tail(scratch, 20).await.unwrap_or_default();
                return Err(Failure {
                    reason: format!(
                        "{}: the recovered server stopped before it was promoted",
                        c.name
                    ),
                    stderr_tail: tail,
                });
            }
            let out = self.engine.exec(scratch, psql(user, "postgres", sql), 5).await;
            if let Some(out) = out.ok().filter(|o| o.exit_code == 0) {
                if let Some((recovering, at)) =
                    out.tail.last().and_then(|l| l.trim().split_once('|'))
                {
                    if recovering == "f" {
                        return Ok(at.to_owned());
                    }
                }
            }
            if started.elapsed() > RECOVERY_LIMIT {
                let tail = self.engine.logs_tail(scratch, 20).await.unwrap_or_default();
                return Err(Failure {
                    reason: format!("{}: not promoted after {RECOVERY_LIMIT:?}", c.name),
                    stderr_tail: tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// A tar holding one file `name` of `size` bytes read from `data`: what the archive API
/// takes. The data must be exactly `size` bytes (it is the signed raw size, checked by the
/// pipeline).
fn single_file_tar(
    name: &str,
    size: u64,
    data: futures::stream::BoxStream<'static, io::Result<Bytes>>,
) -> Result<futures::stream::BoxStream<'static, io::Result<Bytes>>, String> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name).map_err(|e| format!("{name}: {e}"))?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let head = Bytes::copy_from_slice(header.as_bytes());
    let pad = usize::try_from((512 - size % 512) % 512).unwrap_or(0);
    // The file's padding, then the two zero blocks that end an archive.
    let tail = Bytes::from(vec![0u8; pad + 1024]);
    Ok(futures::stream::once(async move { Ok(head) })
        .chain(data)
        .chain(futures::stream::once(async move { Ok(tail) }))
        .boxed())
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

    #[test]
    fn points_in_time_and_segment_numbers() {
        assert_eq!(PointInTime::parse("latest"), Ok(PointInTime::Latest));
        assert_eq!(
            PointInTime::parse("2026-11-30T08:00:00Z"),
            Ok(PointInTime::At(time::macros::datetime!(2026-11-30 08:00:00 UTC)))
        );
        assert!(PointInTime::parse("yesterday").is_err());
        let mib16 = 16 << 20;
        assert_eq!(segment_index("000000010000000000000003", mib16), Some(3));
        assert_eq!(segment_index("000000010000000100000000", mib16), Some(256));
        assert_eq!(segment_index("00000001", mib16), None);
        assert_eq!(segment_index("000000010000000000000003", 0), None);
    }

    #[test]
    fn reads_timeline_histories() {
        let text = "1\t0/3000158\tno recovery target specified\n\n# a comment\n2\t1/A0000000\tbefore 2026-11-30 08:00:00+00\n";
        assert_eq!(parse_history(text), Some(vec![(1, 0x300_0158), (2, (1 << 32) | 0xA000_0000)]));
        assert_eq!(parse_history(""), Some(vec![]));
        assert_eq!(parse_history("1\tx/3\treason"), None);
        assert_eq!(parse_history("one\t0/3\treason"), None);
        assert_eq!(parse_history("1"), None);
    }

    #[test]
    fn reads_when_a_timeline_branched_off() {
        let text = "1\t0/3000158\tbefore 2026-11-30 08:00:00.123456+00\n2\t0/5000000\tafter 2026-11-30 09:30:00+05:30\n3\t0/6000000\tno recovery target specified\n";
        assert_eq!(
            branch_time(text, 1),
            Some(time::macros::datetime!(2026-11-30 08:00:00.123456 UTC))
        );
        assert_eq!(branch_time(text, 2), Some(time::macros::datetime!(2026-11-30 04:00:00 UTC)));
        assert_eq!(branch_time(text, 3), None);
        assert_eq!(branch_time(text, 4), None);
        assert_eq!(branch_time("1\t0/3\tbefore yesterday", 1), None);
        // A failure quotes at most the start of a file.
        let long = "x".repeat(10_000);
        assert_eq!(shortened(&long).chars().count(), 201);
        assert_eq!(shortened("short"), "short");
    }

    /// Replays planned from signed WAL records planted in a bucket of the test bed's S3 (no
    /// PostgreSQL: the decisions before anything is touched).
    mod planned {
        use super::*;

        use time::macros::datetime;

        const MIB16: u64 = 16 << 20;

        fn base(container: &str) -> Component {
            let kind = crate::backup::testing::base_kind(container);
            Component {
                name: format!("postgres-base/{container}"),
                ..crate::backup::testing::component(kind)
            }
        }

        /// A segment's signed record (its object is not read by the planning).
        async fn segment(
            b: &Backups,
            container: &str,
            file: &str,
            shipped: Option<OffsetDateTime>,
        ) {
            let entry = Component {
                name: format!("wal/{container}/{file}"),
                kind: Kind::Wal {
                    container: container.into(),
                    timeline: wal_file_timeline(file).unwrap_or_default(),
                    file: file.into(),
                },
                object: format!("{}/{file}.zst", wal_dir(container)),
                encoding: "zstd".into(),
                stored_size: 1,
                stored_sha256: String::new(),
                raw_size: MIB16,
                raw_sha256: String::new(),
                entries_checked: None,
                tree: None,
            };
            let extra = WalExtra { shipped_at: shipped, ..Default::default() };
            b.put_wal_record(container, file, &entry, &extra)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }

        /// A history file, stored and recorded as the shipper does.
        async fn history(
            b: &Backups,
            container: &str,
            timeline: u32,
            text: &str,
            created: OffsetDateTime,
            exact: bool,
        ) {
            let file = format!("{timeline:08X}.history");
            let object = b.object_name(format!("{}/{file}.zst", wal_dir(container)));
            let data = futures::stream::once({
                let text = Bytes::from(text.to_owned());
                async move { Ok(text) }
            });
            let (stored, raw) = pipeline::store_stream(b.read_io(), &object, data, 3)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let kind = Kind::Wal { container: container.into(), timeline, file: file.clone() };
            let entry = b.entry(format!("wal/{container}/{file}"), kind, object, stored, raw);
            let extra = WalExtra {
                created: Some(created),
                created_exact: exact,
                shipped_at: Some(created),
            };
            b.put_wal_record(container, &file, &entry, &extra)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }

        fn seg(timeline: u32, n: u64) -> String {
            segment_name(timeline, n, MIB16).unwrap_or_default()
        }

        fn shipped(m: i64) -> OffsetDateTime {
            datetime!(2026-11-30 08:00:00 UTC) + time::Duration::minutes(m)
        }

        fn reason(r: Result<Replay, Failure>) -> String {
            r.err().map(|f| f.reason).unwrap_or_else(|| "planned, not refused".into())
        }

        #[tokio::test]
        async fn a_target_past_the_shipped_wal_of_the_live_timeline_is_refused() {
            let (b, store) = crate::backup::testing::backups().await;
            // Segments 2 to 4 shipped by 08:20.
            for (n, m) in [(2, 0), (3, 10), (4, 20)] {
                segment(&b, "live", &seg(1, n), Some(shipped(m))).await;
            }
            let c = base("live");
            let e = reason(b.wal_to_replay(&c, "live", PointInTime::At(shipped(21))).await);
            assert!(
                e.contains("no transaction after")
                    && e.contains(&seg(1, 4))
                    && e.contains("nothing was changed")
                    && e.contains("to latest"),
                "{e}"
            );
            // At the shipping time itself: nothing in the file committed after it.
            assert!(b.wal_to_replay(&c, "live", PointInTime::At(shipped(20))).await.is_err());
            // Before it: it may be reached (only the replay can tell).
            let r = b
                .wal_to_replay(&c, "live", PointInTime::At(shipped(19)))
                .await
                .unwrap_or_else(|f| panic!("{}", f.reason));
            assert_eq!((r.timeline, r.files.len()), (1, 3));
            assert!(b.wal_to_replay(&c, "live", PointInTime::Latest).await.is_ok());
            // Records shipped before `shipped_at` was written: it cannot be told, the replay
            // decides (the earlier behaviour).
            for n in [2, 3] {
                segment(&b, "old", &seg(1, n), None).await;
            }
            assert!(b
                .wal_to_replay(&base("old"), "old", PointInTime::At(shipped(600)))
                .await
                .is_ok());
            crate::backup::testing::done(store).await;
        }

        /// Timeline 2 forked in segment 3 of timeline 1 (its first transaction left out
        /// committed at 08:05) and began at 09:00 (`exact`, or only shipped then); timeline 1's
        /// abandoned rest reaches segment 4, shipped at 08:20. A target in between lies on
        /// timeline 1's unshipped tail: refused, where the old code replayed timeline 1 and
        /// PostgreSQL failed after the stop.
        async fn forked(exact: bool) {
            let (b, store) = crate::backup::testing::backups().await;
            let name = "db";
            let text = "1\t0/3000158\tbefore 2026-11-30 08:05:00+00\n";
            for (n, m) in [(2, 0), (3, 10), (4, 20)] {
                segment(&b, name, &seg(1, n), Some(shipped(m))).await;
            }
            history(&b, name, 2, text, shipped(60), exact).await;
            segment(&b, name, &seg(2, 3), Some(shipped(70))).await;
            let c = base(name);
            let e = reason(b.wal_to_replay(&c, name, PointInTime::At(shipped(30))).await);
            assert!(
                e.contains("timeline 2 (begun")
                    && e.contains("is not followed")
                    && e.contains("nothing was changed")
                    && e.contains("or at or after 2026-11-30 9:00:00.0 +00:00:00"),
                "{e}"
            );
            // A creation time known only as the time shipped: the window it lies in is named
            // (from the parent's last shipped segment: the timeline began after it).
            let window = "timeline 2 began between 2026-11-30 8:20:00.0 +00:00:00 and 2026-11-30 9:00:00.0 +00:00:00";
            assert_eq!(e.contains(window), !exact, "{e}");
            // On the abandoned stretch before what was shipped: replayed on timeline 1.
            let r = b
                .wal_to_replay(&c, name, PointInTime::At(shipped(15)))
                .await
                .unwrap_or_else(|f| panic!("{}", f.reason));
            assert_eq!(r.timeline, 1);
            // After the creation: timeline 2, whose segment was shipped later.
            let r = b
                .wal_to_replay(&c, name, PointInTime::At(shipped(65)))
                .await
                .unwrap_or_else(|f| panic!("{}", f.reason));
            assert_eq!(r.timeline, 2);
            crate::backup::testing::done(store).await;
        }

        #[tokio::test]
        async fn a_target_on_the_unshipped_tail_of_an_abandoned_timeline_is_refused() {
            forked(true).await;
        }

        #[tokio::test]
        async fn a_target_in_the_window_of_an_inexact_timeline_start_is_refused_naming_it() {
            forked(false).await;
        }
    }

    #[tokio::test]
    async fn a_single_file_tar_reads_back() {
        let data = futures::stream::once(async { Ok(Bytes::from_static(b"hello")) }).boxed();
        let tar = single_file_tar("dir/f", 5, data).unwrap_or_else(|e| panic!("{e}"));
        let bytes: Vec<u8> =
            tar.map(|c| c.unwrap_or_default().to_vec()).collect::<Vec<_>>().await.concat();
        assert_eq!(bytes.len() % 512, 0);
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entries = archive.entries().unwrap_or_else(|e| panic!("{e}"));
        let mut entry = entries.next().and_then(|e| e.ok()).unwrap_or_else(|| panic!("no entry"));
        assert_eq!(entry.path().ok().map(|p| p.display().to_string()).as_deref(), Some("dir/f"));
        let mut body = String::new();
        std::io::Read::read_to_string(&mut entry, &mut body).unwrap_or_default();
        assert_eq!(body, "hello");
    }
}
