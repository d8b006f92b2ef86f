//! The service around [`Backups`]: events in, events out, the schedule, one job at a time.
//!
//! Outcomes are events, not handler errors: a backup that fails because S3 is down is a
//! `backup.failed` (the requester must hear of it now), not a redelivery an hour later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use steward_bus::StateStore;
use steward_events::records::{UpdateRecord, UpdateStep, UPDATE_BUCKET};
use steward_events::{
    BackupComponent, BackupDone, BackupFailed, BackupPruned, BackupReason, BackupStale,
    BackupStarted, BackupTarget, BackupVerified, Event, EventData, RestoreDone, RestoreFailed,
    VerifyFailed,
};
use steward_runtime::{Context, Handler, HandlerError};
use steward_store::manifest;
use steward_store::store::Store;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::backup::Backups;
use crate::config::BackupConfig;
use crate::journal::{FlowRecord, Journal, RestoreJournal};
use crate::pitr::PointInTime;
use crate::progress;
use crate::restore::{Busy, RestoreOptions};

/// A WAL shipping failure is said (`backup.failed`) once it has lasted this many times
/// `STEWARD_PITR_MAX_LAG` (5 min by default): commits since are beyond the promised loss by
/// then, while a database restart or recreation by an update (no commits meanwhile) ends
/// before it.
pub const ALARM_AFTER_LAGS: u32 = 5;

/// The base backup after a WAL gap is tried this many times in all, [`ALARM_AFTER_LAGS`] times
/// `STEWARD_PITR_MAX_LAG` apart; each failure is its own `backup.failed`, and the last says
/// that the next scheduled backup is the next chance.
pub const GAP_BASE_ATTEMPTS: u32 = 3;

/// A cluster whose shipped WAL has a gap and no base backup taken since.
#[derive(Debug, Clone)]
struct GapBase {
    /// When the gap was said: a base backup taken after it is one recovery can start from.
    since: OffsetDateTime,
    /// Attempts that ended without such a base.
    attempts: u32,
    /// When the next attempt may start.
    due: Instant,
    /// An attempt is under way.
    running: bool,
}

/// The base backups WAL gaps still need, per container, and their attempts: the bookkeeping
/// of [`BackupService`]'s retries, apart from the backups themselves.
#[derive(Debug, Default)]
struct GapBases(std::collections::HashMap<String, GapBase>);

/// What an attempt at a gap's base backup leads to ([`GapBases::tried`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tried {
    /// A usable base was taken since the gap: no more attempts.
    Done,
    /// Tried again once due.
    Again { attempts: u32 },
    /// [`GAP_BASE_ATTEMPTS`] failed: given up (to be said).
    GivenUp { attempts: u32 },
    /// A later gap replaced the one it was for (its own attempts go on), or none is kept.
    Stale,
}

impl GapBases {
    /// A gap in `container`'s WAL, said at `since`: a base after it is needed, due at `now`.
    /// A later gap needs a base after it: the count starts again (an attempt under way
    /// stays marked: it is not started twice).
    fn gap(&mut self, container: &str, since: OffsetDateTime, now: Instant) {
        let running = self.0.get(container).is_some_and(|g| g.running);
        let gap = GapBase { since, attempts: 0, due: now, running };
        self.0.insert(container.to_owned(), gap);
    }

    /// The attempts due at `now` and not under way (each marked under way): per container,
    /// the gap it is for.
    fn due(&mut self, now: Instant) -> Vec<(String, OffsetDateTime)> {
        self.0
            .iter_mut()
            .filter(|(_, g)| !g.running && g.due <= now)
            .map(|(c, g)| {
                g.running = true;
                (c.clone(), g.since)
            })
            .collect()
    }

    /// An attempt at `container`'s base after the gap of `since` ended at `now`; `taken`:
    /// a usable base was taken since the gap. Failed ones are tried again `retry` later, up
    /// to [`GAP_BASE_ATTEMPTS`] in all.
    fn tried(
        &mut self,
        container: &str,
        since: OffsetDateTime,
        taken: bool,
        now: Instant,
        retry: Duration,
    ) -> Tried {
        let Some(g) = self.0.get_mut(container) else { return Tried::Stale };
        g.running = false;
        if g.since != since {
            return Tried::Stale; // a gap after this attempt began: its own attempts, the first due now
        }
        if taken {
            self.0.remove(container);
            return Tried::Done;
        }
        g.attempts = g.attempts.saturating_add(1);
        // A retry too far to represent (an absurd STEWARD_PITR_MAX_LAG) waits a day.
        g.due = now.checked_add(retry).unwrap_or(now + Duration::from_secs(86_400));
        let attempts = g.attempts;
        if attempts >= GAP_BASE_ATTEMPTS {
            self.0.remove(container);
            return Tried::GivenUp { attempts };
        }
        Tried::Again { attempts }
    }
}

/// The backup service's event handler.
#[derive(Debug, Clone)]
pub struct BackupService {
    backups: Backups,
    /// Backups, verifications and restores never overlap.
    lock: Arc<Mutex<()>>,
    /// WAL shipping pauses while a restore runs (it goes on during backups).
    shipping: Arc<Mutex<()>>,
    /// Per container, the base backup its WAL gap still needs (in memory: a restart of the
    /// service leaves it to the next scheduled backup).
    gap_bases: Arc<std::sync::Mutex<GapBases>>,
}

impl BackupService {
    /// Connects to S3 and starts the schedule.
    pub async fn start(cfg: BackupConfig, ctx: &Context) -> anyhow::Result<Self> {
        let engine = ctx.engine.clone().context("the backup service needs Docker")?;
        // Hosts sharing a bucket keep apart: one host's retention or chunk collection must
        // never see another's backups.
        let cfg = match ctx.bus.host() {
            Some(host) if ctx.bus.config().routes_by_host() => {
                let cfg = cfg.for_host(host);
                tracing::info!(prefix = %cfg.s3.prefix, "host routing: this host's backups under their own prefix");
                cfg
            }
            _ => cfg,
        };
        let store = Store::lazy(&cfg.s3);
        let schedule = cfg.schedule.clone();
        let verify_schedule = cfg.verify_schedule.clone();
        let max_age = cfg.max_age;
        let backups = Backups::new(engine, store, cfg).with_bus(ctx.bus.clone());
        let service = Self {
            backups,
            lock: Default::default(),
            shipping: Default::default(),
            gap_bases: Default::default(),
        };
        let scheduled = service.clone();
        let ctx_for_schedule = ctx.clone();
        ctx.spawn("backup schedule", async move {
            scheduled.run_schedule(schedule, ctx_for_schedule).await
        });
        let (verifier, ctx_for_verify) = (service.clone(), ctx.clone());
        ctx.spawn("verify schedule", async move {
            verifier.run_verify_schedule(verify_schedule, ctx_for_verify).await
        });
        // A scheduled backup a killed process left is concluded now, not by the next job
        // (which may be a day away): nobody redelivers it.
        let (resumed, ctx_for_orphans) = (service.clone(), ctx.clone());
        ctx.spawn("interrupted backups", async move {
            let _one_at_a_time = resumed.lock.lock().await;
            resumed.conclude_orphans(&ctx_for_orphans).await;
            // A copy a killed process left unfinished is finished now, not by the next
            // backup: until then, losing the primary would lose the newest backup.
            if let Err(e) = resumed.second_copy(&ctx_for_orphans, None).await {
                tracing::warn!(error = %format!("{e:#}"), "could not report the second copy's state");
            }
        });
        let (watched, ctx_for_age) = (service.clone(), ctx.clone());
        ctx.spawn("backup age", async move { watched.watch_age(max_age, ctx_for_age).await });
        let (shipper, ctx_for_wal) = (service.clone(), ctx.clone());
        ctx.spawn("wal shipping", async move { shipper.ship_wal(ctx_for_wal).await });
        Ok(service)
    }

    /// A gap in `container`'s shipped WAL: said as a failed backup (critical, mailed), and a
    /// new backup (with its base) started so recovery has a start past the gap again.
    /// Says a WAL gap and takes a new base backup; whether the alarm was published.
    async fn after_wal_gap(
        &self,
        ctx: &Context,
        container: &str,
        gap: &str,
        upto: Option<&str>,
    ) -> bool {
        tracing::error!(container, gap, "a gap in the shipped WAL: point-in-time recovery cannot cross it; taking a new base backup");
        let data = steward_events::BackupFailed {
            backup_id: None,
            reason: format!(
                "WAL of {container}: {gap}; point-in-time recovery cannot cross this gap, a new base backup is being taken"
            ),
            stderr_tail: vec![],
        };
        let said = match self.publish(ctx, None, data).await {
            Ok(()) => {
                if let Some(upto) = upto {
                    self.backups.gap_said(container, upto).await;
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot report the WAL gap");
                false
            }
        };
        self.gap_bases().gap(container, OffsetDateTime::now_utc(), Instant::now());
        self.take_gap_bases(ctx);
        said
    }

    fn gap_bases(&self) -> std::sync::MutexGuard<'_, GapBases> {
        self.gap_bases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the base backup of every cluster whose WAL gap still needs one and whose
    /// attempt is due (each round of shipping looks).
    fn take_gap_bases(&self, ctx: &Context) {
        let due = self.gap_bases().due(Instant::now());
        for (container, since) in due {
            let (service, ctx_for_backup) = (self.clone(), ctx.clone());
            ctx.spawn("backup after a WAL gap", async move {
                let only = vec![container.clone()];
                if let Err(e) =
                    service.back_up(&ctx_for_backup, None, BackupReason::Schedule, &only).await
                {
                    tracing::error!(error = %format!("{e:#}"), "could not publish the outcome of the backup after a WAL gap");
                }
                service.gap_base_tried(&ctx_for_backup, &container, since).await;
            });
        }
    }

    /// After an attempt at `container`'s base backup after its gap: done when a usable backup
    /// with its base was taken since the gap (this attempt's or any other); otherwise tried
    /// again later, or, after [`GAP_BASE_ATTEMPTS`], given up with a `backup.failed` saying so.
    /// `since` is the gap this attempt was started for.
    async fn gap_base_tried(&self, ctx: &Context, container: &str, since: OffsetDateTime) {
        let taken = match self.backups.list().await {
            Ok(listed) => listed.iter().any(|l| {
                taken_since(l.taken_at, since)
                    && l.usable().is_some_and(|m| {
                        m.components.iter().any(|c| {
                            matches!(&c.kind, manifest::Kind::PostgresBase { container: b, .. } if b == container)
                        })
                    })
            }),
            Err(e) => {
                tracing::warn!(container, error = %e, "cannot tell whether the base backup after the WAL gap was taken");
                false
            }
        };
        let retry = self.backups.config().pitr.max_lag.saturating_mul(ALARM_AFTER_LAGS);
        let tried = self.gap_bases().tried(container, since, taken, Instant::now(), retry);
        let attempts = match tried {
            Tried::Done | Tried::Stale => return,
            Tried::Again { attempts } => {
                tracing::warn!(container, attempts, retry_in = ?retry, "the base backup after the WAL gap failed: it is tried again");
                return;
            }
            Tried::GivenUp { attempts } => attempts,
        };
        let reason = format!(
            "WAL of {container}: the base backup after its gap failed {attempts} times: point-in-time recovery cannot reach past the gap until a backup with a base succeeds (the next scheduled one, or steward backup now)"
        );
        tracing::error!(container, attempts, "gave up the base backup after the WAL gap");
        let data = BackupFailed { backup_id: None, reason, stderr_tail: vec![] };
        if let Err(e) = self.publish(ctx, None, data).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot report the base backup given up");
        }
    }

    /// Ships the WAL of every `steward.backup.pitr` cluster, every
    /// [`crate::config::PitrConfig::tick`] ([`crate::wal`]). A failure is logged when it
    /// starts, changes or ends, not every round; one that lasts [`ALARM_AFTER_LAGS`] times
    /// `STEWARD_PITR_MAX_LAG` is a `backup.failed`, once an episode, and so is a spool that
    /// has stayed at its cap that long.
    async fn ship_wal(self, ctx: Context) {
        let pitr = self.backups.config().pitr.clone();
        let tick = pitr.tick();
        let mut state = crate::wal::ShipState::default();
        let mut failing = crate::wal::Episodes::default();
        let mut full = crate::wal::Episodes::default();
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => {}
            }
            let _no_restore = self.shipping.lock().await;
            let rounds = match self.backups.ship_all(&mut state).await {
                Ok(rounds) => {
                    // The clusters were listed: that failure's episode ends, and so do those
                    // of clusters not in this round.
                    let mut present: std::collections::HashSet<&str> =
                        rounds.iter().map(|(c, _)| c.as_str()).collect();
                    present.insert("");
                    failing.only(&present);
                    if failing.ok("") {
                        tracing::info!("the PITR clusters can be listed again");
                    }
                    rounds
                }
                Err(f) => vec![(String::new(), Err(f))],
            };
            self.take_gap_bases(&ctx);
            for (container, round) in rounds {
                match round {
                    Ok(shipped) => {
                        if failing.ok(&container) {
                            tracing::info!(container = %container, "WAL shipping works again");
                        }
                        if let Some(gap) = shipped.gap {
                            let upto = shipped.gap_upto.as_deref();
                            if !self.after_wal_gap(&ctx, &container, &gap, upto).await {
                                state.unsay_gap(&container);
                            }
                        }
                    }
                    Err(f) => {
                        let now = Instant::now();
                        let after = pitr.max_lag.saturating_mul(ALARM_AFTER_LAGS);
                        let failed = failing.failed(&container, &f.reason, now, after);
                        if failed.new_reason {
                            tracing::error!(container = %container, error = %f.reason, stderr = ?f.stderr_tail, "WAL shipping failed");
                        }
                        let Some(lasted) = failed.alarm else { continue };
                        let who =
                            if container.is_empty() { "every cluster" } else { container.as_str() };
                        let reason = format!(
                            "WAL of {who}: shipping has failed for {}s, {ALARM_AFTER_LAGS} times STEWARD_PITR_MAX_LAG ({}s): commits since are not in the bucket and a restore cannot reach them; PostgreSQL keeps their WAL for the slot meanwhile: {}",
                            lasted.as_secs(),
                            pitr.max_lag.as_secs(),
                            f.reason
                        );
                        let data =
                            BackupFailed { backup_id: None, reason, stderr_tail: f.stderr_tail };
                        match self.publish(&ctx, None, data).await {
                            Ok(()) => failing.said(&container),
                            Err(e) => {
                                tracing::warn!(error = %format!("{e:#}"), "cannot report the WAL shipping failure")
                            }
                        }
                    }
                }
            }
            // A spool full for as long as a shipping failure is said (a burst that drains
            // within it is no alarm), once until it has room again.
            let spools: Vec<(String, u64)> =
                state.spool_full().map(|(c, mib)| (c.to_owned(), mib)).collect();
            full.only(&spools.iter().map(|(c, _)| c.as_str()).collect());
            for (container, mib) in spools {
                let after = pitr.max_lag.saturating_mul(ALARM_AFTER_LAGS);
                let Some(lasted) = full.failed(&container, "full", Instant::now(), after).alarm
                else {
                    continue;
                };
                let reason = format!(
                    "WAL of {container}: the receiver's spool holds {mib} MiB, STEWARD_PITR_SPOOL_MAX_MB ({} MiB) reached for {}s while uploads fail: the receiver is stopped, PostgreSQL keeps the WAL for its slot up to STEWARD_PITR_SLOT_KEEP_MB ({} MiB), beyond which it is lost (a gap); shipping resumes once uploads work",
                    pitr.spool_max_mb,
                    lasted.as_secs(),
                    pitr.slot_keep_mb
                );
                let data = BackupFailed { backup_id: None, reason, stderr_tail: vec![] };
                match self.publish(&ctx, None, data).await {
                    Ok(()) => full.said(&container),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot report the full WAL spool")
                    }
                }
            }
        }
    }

    /// Says `backup.stale` when the newest verified backup (checked after it was taken, or
    /// fully on the verification schedule) is older than `max_age`: once per newest verified
    /// backup (and once when there is none, counted from this start), so a missed, failing or
    /// unreadable nightly backup is one critical mail, not silence and not a mail per check.
    async fn watch_age(self, max_age: Duration, ctx: Context) {
        let started = OffsetDateTime::now_utc();
        let every = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        let bound = time::Duration::try_from(max_age).unwrap_or(time::Duration::MAX);
        let mut said: Option<Option<String>> = None;
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let listed = match self.backups.list().await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the backups to check their age");
                    continue;
                }
            };
            // Only a usable, verified backup counts: a forged or unreadable one must not
            // silence the alarm (verification marks are signed too).
            let newest = listed.iter().rev().find(|l| l.usable().is_some() && l.verified.is_some());
            let newest_id = newest.map(|l| l.backup_id.clone());
            let since = newest.map_or(started, |l| l.taken_at);
            if OffsetDateTime::now_utc() - since <= bound || said.as_ref() == Some(&newest_id) {
                continue;
            }
            tracing::error!(newest = ?newest_id, "no backup newer than {max_age:?}");
            let data = BackupStale {
                newest: newest_id.clone(),
                newest_at: newest.map(|l| l.taken_at),
                max_age_secs: max_age.as_secs(),
            };
            match self.publish(&ctx, None, data).await {
                Ok(()) => said = Some(newest_id),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot say the backups are stale")
                }
            }
        }
    }

    /// The backups.
    pub fn backups(&self) -> &Backups {
        &self.backups
    }

    async fn run_schedule(self, schedule: croner::Cron, ctx: Context) {
        let shutdown = ctx.shutdown.clone();
        steward_runtime::on_schedule(schedule, shutdown, "backup", || async {
            if let Err(e) = self.back_up(&ctx, None, BackupReason::Schedule, &[]).await {
                tracing::error!(error = %format!("{e:#}"), "could not publish the scheduled backup's outcome");
            }
        })
        .await
    }

    /// Verifies the newest backup fully on `schedule`, in a flow of its own.
    async fn run_verify_schedule(self, schedule: croner::Cron, ctx: Context) {
        let shutdown = ctx.shutdown.clone();
        steward_runtime::on_schedule(schedule, shutdown, "verification", || async {
            if let Err(e) = self.verify(&ctx, None, "latest", None).await {
                tracing::error!(error = %format!("{e:#}"), "could not publish the scheduled verification's outcome");
            }
        })
        .await
    }

    /// Pings the heartbeat, if one is configured, after a verified backup.
    async fn heartbeat(&self, id: &str) {
        let Some(heartbeat) = &self.backups.config().heartbeat else { return };
        match heartbeat.ping().await {
            Ok(()) => tracing::info!(backup = id, monitor = %heartbeat.origin(), "heartbeat sent"),
            Err(e) => {
                tracing::warn!(backup = id, error = %e, "heartbeat not sent: the monitor will report this host silent")
            }
        }
    }

    /// Right after a scheduled or manual backup: every component read back from the bucket
    /// and checked against the signed manifest (no database is loaded: that is the scheduled
    /// verification's), a signed mark, `backup.verified` or `verify.failed` in the backup's
    /// flow, then the heartbeat.
    async fn check_taken(
        &self,
        ctx: &Context,
        cause: Option<&Event>,
        m: &manifest::Manifest,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let id = &m.backup_id;
        let components: Vec<&manifest::Component> = m.components.iter().collect();
        let checked = match self.backups.check_all(&components).await {
            Ok(_) => {
                let mark = steward_store::catalog::VerifiedMark {
                    backup_id: id.clone(),
                    verified_at: OffsetDateTime::now_utc(),
                    database_restored: false,
                };
                self.backups.mark_verified(id, &mark).await.map_err(crate::Failure::plain)
            }
            Err(f) => Err(f),
        };
        match checked {
            Ok(()) => {
                let data = BackupVerified {
                    backup_id: id.clone(),
                    components_checked: u32::try_from(components.len()).unwrap_or(u32::MAX),
                    database_restored: false,
                    duration_ms: started.elapsed().as_millis() as u64,
                    from: None,
                };
                self.publish(ctx, cause, data).await?;
                self.heartbeat(id).await;
            }
            Err(f) => {
                tracing::error!(backup = %id, reason = %f.reason, "the backup just taken does not read back");
                let data = VerifyFailed {
                    backup_id: id.clone(),
                    reason: format!("read back right after the backup: {}", f.reason),
                    log_tail: f.stderr_tail,
                    from: None,
                };
                self.publish(ctx, cause, data).await?;
            }
        }
        Ok(())
    }

    async fn publish(
        &self,
        ctx: &Context,
        cause: Option<&Event>,
        data: impl Into<EventData>,
    ) -> anyhow::Result<()> {
        let event = match cause {
            Some(cause) => Event::caused_by(cause, ctx.source(), data),
            None => Event::new(ctx.source(), data),
        };
        ctx.bus.publish(&event).await?;
        Ok(())
    }

    /// Runs `job`, reporting its progress to whoever follows `cause`'s correlation.
    async fn reporting<F: std::future::Future>(
        &self,
        ctx: &Context,
        cause: &Event,
        job: F,
    ) -> F::Output {
        progress::reporting(&ctx.bus, cause.correlation_id, self.backups.meter(), job).await
    }

    /// One backup with its events; then retention.
    ///
    /// Journaled ([`crate::journal`]) under the request's event id (a scheduled backup's
    /// under its `backup.started`): a redelivered request whose run was killed resumes the
    /// same backup id (its objects deleted and taken again, or, with the manifest written,
    /// concluded as it is), and one whose outcome was decided publishes that outcome again,
    /// with the same event id, so the flow has exactly one terminal event.
    async fn back_up(
        &self,
        ctx: &Context,
        cause: Option<&Event>,
        reason: BackupReason,
        only: &[String],
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        self.conclude_orphans(ctx).await;
        let journal = self.journal();
        let previous = match cause {
            Some(cause) => match journal.get(&cause.id.to_string()).await {
                Ok(record) => record,
                Err(e) => {
                    let failed = BackupFailed {
                        backup_id: None,
                        reason: format!(
                            "could not read the backup's journal, nothing was stored: {e}"
                        ),
                        stderr_tail: vec![],
                    };
                    return self.publish(ctx, Some(cause), failed).await;
                }
            },
            None => None,
        };
        if let Some(kept) = previous.as_ref().and_then(|r| r.outcome.as_deref()) {
            // Decided before a crash: the same event again (the stream drops the duplicate).
            if let Some(outcome) = FlowRecord::event(kept) {
                ctx.bus.publish(&outcome).await?;
                steward_failpoints::failpoint!("backup:republished");
                return Ok(());
            }
        }
        let resumed = previous.is_some();
        let (key, mut record, started_event) = match previous {
            Some(record) => {
                steward_failpoints::failpoint!("backup:resumed");
                let started_event = record.started.as_deref().and_then(FlowRecord::event);
                let key = cause.map(|c| c.id.to_string()).unwrap_or_default();
                (key, record, started_event)
            }
            None => {
                let id = manifest::new_backup_id(OffsetDateTime::now_utc());
                let data = BackupStarted { backup_id: id.clone() };
                let event = match cause {
                    Some(cause) => Event::caused_by(cause, ctx.source(), data),
                    None => Event::new(ctx.source(), data),
                };
                let key = cause.map(|c| c.id).unwrap_or(event.id).to_string();
                let record = FlowRecord {
                    backup_id: id,
                    started: FlowRecord::keep(&event),
                    scheduled: cause.is_none(),
                    ..Default::default()
                };
                (key, record, Some(event))
            }
        };
        let id = record.backup_id.clone();
        // A scheduled backup's outcome is in the flow its `backup.started` opened.
        let flow_cause = cause.cloned().or_else(|| started_event.clone());
        // Killed after the manifest was written: the backup is complete.
        let complete = match resumed {
            true => self.backups.resolve(&id).await.ok(),
            false => None,
        };
        let outcome = if let Some(m) = complete {
            Ok(m)
        } else {
            if resumed {
                if let Err(e) = self.backups.store().delete_dir(&id).await {
                    tracing::warn!(backup = %id, error = %e, "could not delete what a killed run stored");
                }
                steward_failpoints::failpoint!("backup:cleaned");
            }
            let recorded = match resumed {
                true => Ok(()),
                false => journal.put(&key, &record).await,
            };
            match recorded {
                Err(e) => Err(crate::Failure::plain(format!(
                    "could not write the backup's journal, nothing was stored: {e}"
                ))),
                Ok(()) => {
                    steward_failpoints::failpoint!("backup:recorded");
                    if let Some(event) = &started_event {
                        ctx.bus.publish(event).await?;
                    }
                    steward_failpoints::failpoint!("backup:started");
                    let job = async {
                        self.backups.check_not_paused().await?;
                        self.backups.take(&id, reason, only).await
                    };
                    match cause {
                        Some(cause) => self.reporting(ctx, cause, job).await,
                        None => job.await,
                    }
                }
            }
        };
        let data: EventData = match &outcome {
            Ok(m) => {
                let duration_ms = started.elapsed().as_millis() as u64;
                done(self.backups.store(), &id, m, duration_ms).into()
            }
            Err(f) => {
                tracing::error!(backup = %id, reason = %f.reason, "backup failed");
                BackupFailed {
                    backup_id: Some(id.clone()),
                    reason: f.reason.clone(),
                    stderr_tail: f.stderr_tail.clone(),
                }
                .into()
            }
        };
        let event = match &flow_cause {
            Some(cause) => Event::caused_by(cause, ctx.source(), data),
            None => Event::new(ctx.source(), data),
        };
        self.conclude(&journal, &key, &mut record, &event).await;
        steward_failpoints::failpoint!("backup:outcome");
        ctx.bus.publish(&event).await?;
        if record.scheduled {
            self.published(&journal, &key, &mut record).await;
        }
        if outcome.is_err() {
            steward_failpoints::failpoint!("backup:failed");
            return Ok(());
        }
        steward_failpoints::failpoint!("backup:done");
        match self.backups.prune(OffsetDateTime::now_utc()).await {
            Ok((pruned, kept)) if !pruned.is_empty() => {
                self.publish(ctx, flow_cause.as_ref(), BackupPruned { backup_ids: pruned, kept })
                    .await?
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "retention could not prune; it tries again after the next backup")
            }
        }
        self.second_copy(ctx, Some(&id)).await?;
        // Last: the heartbeat it ends with also says the copy was written. (Retention before
        // it keeps the newest backup proven restorable, which this check does not make it.)
        if let (Ok(m), BackupReason::Schedule | BackupReason::Manual) = (&outcome, reason) {
            self.check_taken(ctx, flow_cause.as_ref(), m).await?;
        }
        Ok(())
    }

    /// After a backup is done in the primary: copies what the copy lacks (this backup, and
    /// any an earlier failed copy missed), then prunes the copy by the same policy. A failed
    /// copy is its own `backup.failed`, in a flow of its own (the requester already has its
    /// `backup.done`: the backup exists and an update may go on), mailed like any failed
    /// backup; the next job copies again. `id`: the backup just taken; `None` at start, when
    /// what a killed process left uncopied is caught up.
    async fn second_copy(&self, ctx: &Context, id: Option<&str>) -> anyhow::Result<()> {
        let Some(copy) = self.backups.from_copy() else { return Ok(()) };
        if let Err(reason) = self.backups.sync_copy().await {
            tracing::error!(backup = ?id, reason = %reason, "the second copy failed; the next backup copies it again");
            let complete = match id {
                Some(id) => format!("backup {id} itself is complete"),
                None => "the backups are complete".into(),
            };
            let data = BackupFailed {
                backup_id: id.map(str::to_owned),
                reason: format!(
                    "second copy: {reason}; {complete} in the primary bucket, and the next backup copies what the copy lacks"
                ),
                stderr_tail: vec![],
            };
            self.publish(ctx, None, data).await?;
        }
        // The primary's verification marks count for the copy (marks are written where a
        // backup was verified, usually the primary): both keep the newest verified backup.
        let verified: Vec<String> = match self.backups.primary().list().await {
            Ok(listed) => {
                listed.into_iter().filter(crate::catalog::proven).map(|l| l.backup_id).collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the primary; the copy is not pruned this time");
                return Ok(());
            }
        };
        match copy.prune_also_verified(OffsetDateTime::now_utc(), &verified).await {
            Ok((pruned, _)) if !pruned.is_empty() => {
                tracing::info!(pruned = ?pruned, "pruned from the second copy")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "retention could not prune the second copy; it tries again after the next backup")
            }
        }
        Ok(())
    }

    /// The backups read from `from`: `None` or `primary`, the primary; `copy`, the copy (an
    /// error when none is configured).
    fn reading(&self, from: Option<BackupTarget>) -> Result<Backups, crate::Failure> {
        match from {
            None | Some(BackupTarget::Primary) => Ok(self.backups.primary()),
            Some(BackupTarget::Copy) => self.backups.from_copy().ok_or_else(|| {
                crate::Failure::plain("no second copy is configured (STEWARD_BACKUP_COPY_BUCKET)")
            }),
            Some(BackupTarget::Other) => {
                Err(crate::Failure::plain("asked to read from a target this version does not know"))
            }
        }
    }

    /// Where a restore of `id` reads from: as asked; or, asked nothing, the primary unless it
    /// has no usable manifest for `id` (gone, refused) and the copy has one: then the copy,
    /// with why the primary was not used. The copy's signatures are checked exactly as the
    /// primary's (it is no more trusted).
    async fn restore_source(
        &self,
        from: Option<BackupTarget>,
        id: &str,
        allow_unsigned: bool,
    ) -> Result<(Backups, Option<String>), crate::Failure> {
        let chosen = self.reading(from)?;
        if from.is_some() {
            return Ok((chosen, None));
        }
        let Err(primary_says) = chosen.resolve_allowing(id, allow_unsigned).await else {
            return Ok((chosen, None));
        };
        let Some(copy) = self.backups.from_copy() else { return Ok((chosen, None)) };
        match copy.resolve_allowing(id, allow_unsigned).await {
            Ok(m) => {
                tracing::warn!(backup = %m.backup_id, primary = %primary_says,
                    "the primary has no usable manifest for this backup: restoring it from the second copy");
                Ok((copy, Some(primary_says)))
            }
            // Both refuse: the primary's reason is the one reported.
            Err(copy_says) => {
                tracing::warn!(backup = %id, copy = %copy_says, "the second copy cannot give this backup either");
                Ok((chosen, None))
            }
        }
    }

    fn journal(&self) -> Journal {
        Journal::new(self.backups.store().clone())
    }

    /// Records `outcome` as flow `key`'s terminal event, before it is published.
    async fn conclude(
        &self,
        journal: &Journal,
        key: &str,
        record: &mut FlowRecord,
        outcome: &Event,
    ) {
        if key.is_empty() {
            return;
        }
        record.outcome = FlowRecord::keep(outcome);
        record.concluded_at = Some(OffsetDateTime::now_utc());
        record.published = false;
        if let Err(e) = journal.put(key, record).await {
            tracing::warn!(error = %e, "could not record the outcome; a redelivery would repeat the flow");
        }
    }

    /// Records that the outcome of flow `key` was published (best effort: a failure only
    /// means it may be published once more, with the same id).
    async fn published(&self, journal: &Journal, key: &str, record: &mut FlowRecord) {
        record.published = true;
        if let Err(e) = journal.put(key, record).await {
            tracing::warn!(error = %e, "could not record that the outcome was published");
        }
    }

    /// What a killed run left, at start and before a job starts (either way the only job
    /// of the prefix): open multipart uploads are aborted; a scheduled backup that never
    /// concluded gets its `backup.done` (manifest written) or `backup.failed` (what it stored
    /// deleted), and one whose outcome was decided but not published gets it published (a
    /// requested one is concluded by its redelivery); records concluded long ago are
    /// forgotten. Best effort: the job goes on whatever happens.
    async fn conclude_orphans(&self, ctx: &Context) {
        let store = self.backups.store();
        if let Err(e) = store.abort_orphaned_uploads().await {
            tracing::warn!(error = %e, "could not abort the uploads a killed run left open");
        }
        let journal = self.journal();
        let records = match journal.all().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the journal");
                return;
            }
        };
        for (key, mut record) in records {
            if !record.scheduled {
                continue;
            }
            if let Some(kept) = record.outcome.as_deref().filter(|_| !record.published) {
                // Decided, then killed before it was published: the same event (same id:
                // the stream drops it if it did get out after all).
                let Some(event) = FlowRecord::event(kept) else { continue };
                match ctx.bus.publish(&event).await {
                    Ok(_) => self.published(&journal, &key, &mut record).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not publish an interrupted backup's outcome")
                    }
                }
                continue;
            }
            if record.outcome.is_some() {
                continue;
            }
            let Some(started) = record.started.as_deref().and_then(FlowRecord::event) else {
                continue;
            };
            let id = record.backup_id.clone();
            let complete = self.backups.resolve(&id).await.ok();
            if complete.is_none() {
                if let Err(e) = store.delete_dir(&id).await {
                    tracing::warn!(backup = %id, error = %e, "could not delete what a killed run stored");
                    continue;
                }
            }
            let data: EventData = match complete {
                Some(m) => done(store, &id, &m, 0).into(),
                None => BackupFailed {
                    backup_id: Some(id.clone()),
                    reason: "interrupted: the backup service stopped during this scheduled backup; what it had stored was deleted".into(),
                    stderr_tail: vec![],
                }
                .into(),
            };
            let event = Event::caused_by(&started, ctx.source(), data);
            self.conclude(&journal, &key, &mut record, &event).await;
            match ctx.bus.publish(&event).await {
                Ok(_) => self.published(&journal, &key, &mut record).await,
                Err(e) => {
                    tracing::warn!(backup = %id, error = %e, "could not publish an interrupted backup's outcome")
                }
            }
        }
        if let Err(e) = journal.forget_concluded(OffsetDateTime::now_utc()).await {
            tracing::warn!(error = %e, "could not forget old journal records");
        }
    }

    /// A verification (requested, or scheduled without a `cause`) and its outcome; the
    /// heartbeat after a success in the primary.
    async fn verify(
        &self,
        ctx: &Context,
        cause: Option<&Event>,
        id: &str,
        from: Option<BackupTarget>,
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let outcome = match (self.reading(from), cause) {
            (Ok(backups), Some(cause)) => self.reporting(ctx, cause, backups.verify(id)).await,
            (Ok(backups), None) => backups.verify(id).await,
            (Err(f), _) => Err(f),
        };
        let from = from.filter(|f| *f != BackupTarget::Primary);
        match outcome {
            Ok(v) => {
                let id = v.manifest.backup_id.clone();
                let data = BackupVerified {
                    backup_id: v.manifest.backup_id,
                    components_checked: v.components_checked,
                    database_restored: v.database_restored,
                    duration_ms: started.elapsed().as_millis() as u64,
                    from,
                };
                self.publish(ctx, cause, data).await?;
                if from.is_none() {
                    self.heartbeat(&id).await;
                }
                Ok(())
            }
            Err(f) => {
                tracing::error!(backup = %id, reason = %f.reason, "verification failed");
                let data = VerifyFailed {
                    backup_id: id.to_owned(),
                    reason: f.reason,
                    log_tail: f.stderr_tail,
                    from,
                };
                self.publish(ctx, cause, data).await
            }
        }
    }

    /// `steward backup resume`: this rebuilt host's backup pause ends without a restore
    /// ([`Backups::resume`]), never while a backup or restore runs.
    async fn resume(
        &self,
        ctx: &Context,
        cause: &Event,
        r: &steward_events::BackupResumeRequested,
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let by = r.requested_by.as_deref();
        let data: EventData = match self.backups.resume(by, r.reason.as_deref()).await {
            Ok(already) => steward_events::BackupResumed {
                token: self.backups.config().restore_pending.clone().unwrap_or_default(),
                requested_by: r.requested_by.clone(),
                reason: r.reason.clone(),
                already,
            }
            .into(),
            Err(f) => steward_events::BackupResumeFailed { reason: f.reason }.into(),
        };
        self.publish(ctx, Some(cause), data).await
    }

    /// One restore with its outcome, journaled under the request's event id: a redelivered
    /// request whose run was killed restores the same backup again, discarding the copies a
    /// run killed while loading left or finishing the swap a run killed after its commit point
    /// began (`restore::Backups::restore_journaled`), and starts what the killed run had
    /// stopped. One whose outcome was decided publishes that outcome again, with the same id.
    async fn restore(
        &self,
        ctx: &Context,
        cause: &Event,
        r: &steward_events::RestoreRequested,
    ) -> anyhow::Result<()> {
        let _one_at_a_time = self.lock.lock().await;
        let _no_shipping = self.shipping.lock().await;
        let started = Instant::now();
        let journal = self.journal();
        let key = cause.id.to_string();
        let previous = journal.get(&key).await;
        if let Some(kept) = previous.as_ref().ok().and_then(|r| r.as_ref()?.outcome.as_deref()) {
            if let Some(outcome) = FlowRecord::event(kept) {
                ctx.bus.publish(&outcome).await?;
                steward_failpoints::failpoint!("restore:republished");
                return Ok(());
            }
        }
        // A safety backup a killed attempt was uploading left its multipart uploads open.
        if let Err(e) = self.backups.store().abort_orphaned_uploads().await {
            tracing::warn!(error = %e, "could not abort the uploads a killed run left open");
        }
        let mut record = FlowRecord::default();
        let mut source: Option<(bool, Option<String>)> = None;
        let outcome = match previous {
            Err(e) => Err(crate::Failure::plain(format!(
                "could not read the restore's journal, nothing was changed: {e}"
            ))),
            Ok(previous) => {
                let mut steps = RestoreJournal::new(journal.clone(), key.clone(), previous);
                if steps.resumed() {
                    steward_failpoints::failpoint!("restore:resumed");
                    tracing::warn!(backup = %steps.record.backup_id, touched = ?steps.record.touched,
                        "restoring again: an earlier attempt was interrupted");
                }
                // A resumed restore restores the backup it resolved; it is looked for the
                // same way (primary first), so a resumed attempt reads where the first did
                // unless the primary changed meanwhile.
                let wanted = match steps.resumed() {
                    true => steps.record.backup_id.clone(),
                    false => r.backup_id.clone(),
                };
                let outcome = match updates_in_progress(ctx).await {
                    Ok(busy) => {
                        match self.restore_source(r.from, &wanted, r.allow_unsigned).await {
                            Ok((backups, fallback)) => {
                                source = Some((backups.reads_copy(), fallback));
                                let to_time = r.to_time.as_deref().map(PointInTime::parse);
                                let options = RestoreOptions {
                                    allow_unsigned: r.allow_unsigned,
                                    safety_backup: !r.no_safety_backup,
                                    physical: to_time.is_some(),
                                    to_time: to_time.clone().and_then(Result::ok),
                                };
                                match to_time {
                                    Some(Err(e)) => Err(crate::Failure::plain(format!(
                                        "to_time: {e}; nothing was changed"
                                    ))),
                                    _ => {
                                        let job = backups.restore_journaled(
                                            &r.backup_id,
                                            r.scope,
                                            options,
                                            &busy,
                                            &mut steps,
                                        );
                                        self.reporting(ctx, cause, job).await
                                    }
                                }
                            }
                            Err(f) => Err(f),
                        }
                    }
                    // Fail closed: restoring under a running update can lose both.
                    Err(e) => Err(crate::Failure::plain(format!(
                        "could not check for updates in progress, nothing was changed: {e:#}"
                    ))),
                };
                record = steps.record.clone();
                outcome.map_err(|mut f| {
                    // A restore that failed after its safety backup may have changed data:
                    // say how to put back what was there.
                    if let Some(safety) = &steps.record.safety_backup_id {
                        f.reason = format!(
                            "{}; the data from before this restore is in safety backup {safety} (steward restore {safety})",
                            f.reason
                        );
                    }
                    if !steps.record.touched.is_empty() {
                        f.reason = format!(
                            "{} (an interrupted earlier attempt of this restore had begun to overwrite {}: they may be partially restored; restore again)",
                            f.reason,
                            steps.record.touched.join(", ")
                        );
                    }
                    f
                })
            }
        };
        let (read_copy, fallback_reason) = source.unwrap_or_default();
        let from = read_copy.then_some(BackupTarget::Copy);
        let data: EventData = match outcome {
            Ok(done) => RestoreDone {
                backup_id: done.manifest.backup_id,
                restored: done.restored,
                duration_ms: started.elapsed().as_millis() as u64,
                safety_backup_id: done.safety_backup_id,
                from,
                fallback_reason,
                notes: done.notes,
            }
            .into(),
            Err(f) => {
                tracing::error!(backup = %r.backup_id, reason = %f.reason, "restore failed");
                RestoreFailed {
                    backup_id: r.backup_id.clone(),
                    reason: f.reason,
                    log_tail: f.stderr_tail,
                    safety_backup_id: record.safety_backup_id.clone(),
                    from,
                }
                .into()
            }
        };
        let succeeded = matches!(data, EventData::RestoreDone(_));
        let event = Event::caused_by(cause, ctx.source(), data);
        self.conclude(&journal, &key, &mut record, &event).await;
        steward_failpoints::failpoint!("restore:outcome");
        ctx.bus.publish(&event).await?;
        if succeeded {
            steward_failpoints::failpoint!("restore:done");
        } else {
            steward_failpoints::failpoint!("restore:failed");
        }
        Ok(())
    }
}

/// `backup.done` for backup `id` whose manifest is `m`.
pub(crate) fn done(
    store: &Store,
    id: &str,
    m: &manifest::Manifest,
    duration_ms: u64,
) -> BackupDone {
    BackupDone {
        backup_id: id.to_owned(),
        manifest_key: store.key(&format!("{id}/{}", manifest::MANIFEST)),
        size_bytes: m.stored_size(),
        components: m
            .components
            .iter()
            .map(|c| BackupComponent {
                name: c.name.clone(),
                size_bytes: c.stored_size,
                sha256: c.stored_sha256.clone(),
            })
            .collect(),
        duration_ms,
    }
}

/// Containers whose update is swapping or in its health gate, from the updater's records.
async fn updates_in_progress(ctx: &Context) -> anyhow::Result<Busy> {
    let mut busy = Busy::new();
    // Read-only: the bucket is the updater's. None: no update ever ran.
    let Some(store) = StateStore::<UpdateRecord>::open_existing(&ctx.bus, UPDATE_BUCKET).await?
    else {
        return Ok(busy);
    };
    for key in store.keys().await? {
        let Some(record) = store.get(&key).await? else { continue };
        let r = record.value;
        let doing = match r.step {
            UpdateStep::Swapping => "swapping containers",
            UpdateStep::Gating => "in its health gate",
            UpdateStep::HandingOver => "handing over to its successor",
            _ => continue,
        };
        busy.insert(r.container, format!("update {} to {} is {doing}", r.update_id, r.to_digest));
    }
    Ok(busy)
}

impl Handler for BackupService {
    async fn handle(&self, ctx: &Context, event: Event) -> Result<(), HandlerError> {
        let result = match &event.data {
            EventData::BackupRequested(r) => {
                self.back_up(ctx, Some(&event), r.reason, &r.containers).await
            }
            EventData::VerifyRequested(v) => {
                self.verify(ctx, Some(&event), &v.backup_id, v.from).await
            }
            EventData::RestoreRequested(r) => self.restore(ctx, &event, r).await,
            EventData::BackupResumeRequested(r) => self.resume(ctx, &event, r).await,
            _ => Ok(()),
        };
        // Only publishing can fail here: the bus is down, try again later.
        result.map_err(HandlerError::Retry)
    }
}

/// Whether a backup taken at `taken_at` (its id's time: whole seconds) was taken after a
/// gap seen at `since`: a base started in the gap's own second counts.
fn taken_since(taken_at: OffsetDateTime, since: OffsetDateTime) -> bool {
    taken_at >= since.replace_nanosecond(0).unwrap_or(since)
}

#[cfg(test)]
mod gap_tests {
    use super::*;

    #[test]
    fn a_base_in_the_gaps_own_second_counts() {
        let since = time::macros::datetime!(2026-12-01 03:00:00.700 UTC);
        let id_time = time::macros::datetime!(2026-12-01 03:00:00 UTC);
        assert!(taken_since(id_time, since));
        assert!(taken_since(id_time + time::Duration::seconds(1), since));
        assert!(!taken_since(id_time - time::Duration::seconds(1), since));
    }

    #[test]
    fn a_gaps_base_is_tried_three_times_at_most_and_not_after_one_succeeds() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let retry = Duration::from_secs(300);
        let since = time::macros::datetime!(2026-12-01 03:00:00 UTC);
        let mut gaps = GapBases::default();
        gaps.gap("db", since, at(0));
        // Due at once, started once (not again while it runs).
        assert_eq!(gaps.due(at(0)), vec![("db".to_owned(), since)]);
        assert_eq!(gaps.due(at(1)), vec![]);
        assert_eq!(gaps.tried("db", since, false, at(10), retry), Tried::Again { attempts: 1 });
        // Not before the retry is due.
        assert_eq!(gaps.due(at(309)), vec![]);
        assert_eq!(gaps.due(at(310)).len(), 1);
        assert_eq!(gaps.tried("db", since, false, at(320), retry), Tried::Again { attempts: 2 });
        assert_eq!(gaps.due(at(620)).len(), 1);
        assert_eq!(
            gaps.tried("db", since, false, at(630), retry),
            Tried::GivenUp { attempts: GAP_BASE_ATTEMPTS }
        );
        // Given up: no fourth attempt.
        assert_eq!(gaps.due(at(100_000)), vec![]);

        // A base taken (by this attempt or any other) ends the retries.
        gaps.gap("db", since, at(0));
        assert_eq!(gaps.due(at(0)).len(), 1);
        assert_eq!(gaps.tried("db", since, false, at(10), retry), Tried::Again { attempts: 1 });
        assert_eq!(gaps.due(at(310)).len(), 1);
        assert_eq!(gaps.tried("db", since, true, at(320), retry), Tried::Done);
        assert_eq!(gaps.due(at(100_000)), vec![]);

        // A second gap while an attempt for the first runs: that attempt is stale (even if it
        // took a base: it was before the new gap), the new gap's count starts at 0, its first
        // attempt due once the running one has ended.
        let later = since + time::Duration::hours(1);
        gaps.gap("db", since, at(0));
        assert_eq!(gaps.due(at(0)).len(), 1);
        gaps.gap("db", later, at(5));
        assert_eq!(gaps.due(at(6)), vec![]);
        assert_eq!(gaps.tried("db", since, true, at(10), retry), Tried::Stale);
        assert_eq!(gaps.due(at(10)), vec![("db".to_owned(), later)]);
        for n in 1..GAP_BASE_ATTEMPTS {
            assert_eq!(gaps.tried("db", later, false, at(10), retry), Tried::Again { attempts: n });
            assert_eq!(gaps.due(at(10 + 300 * u64::from(n))).len(), 1);
        }
        assert!(matches!(gaps.tried("db", later, false, at(2000), retry), Tried::GivenUp { .. }));
        // Another container's gap is its own; an attempt for no kept gap is stale.
        assert_eq!(gaps.tried("other", since, false, at(0), retry), Tried::Stale);
        // A retry too far to represent waits a day instead of failing.
        gaps.gap("db", since, at(0));
        assert_eq!(gaps.due(at(0)).len(), 1);
        assert_eq!(
            gaps.tried("db", since, false, at(0), Duration::MAX),
            Tried::Again { attempts: 1 }
        );
        assert_eq!(gaps.due(at(86_399)), vec![]);
        assert_eq!(gaps.due(at(86_400)).len(), 1);
    }
}
