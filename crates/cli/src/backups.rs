//! `steward backup now|list|verify` and `steward restore`: commands are events executed by
//! the backup service; the CLI publishes them and follows the correlated outcome. Listing
//! reads the bucket directly (read-only), with the backup service's S3 settings.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt as _;
use steward_bus::{Bus, ReplayQuery};
use steward_events::{
    BackupReason, BackupRequested, BackupResumeRequested, BackupTarget, Event, EventData,
    RestoreRequested, RestoreScope, Service, VerifyRequested,
};
use steward_settings::Env;
use steward_store::catalog::Standing;
use steward_store::config::{CopyConfig, S3Config, ENV_BUCKET, ENV_ENDPOINT, ENV_PREFIX};
use steward_store::signing::Trust;
use steward_store::store::Store;
use time::OffsetDateTime;

use crate::Connection;

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup now and wait for it.
    Now {
        /// Only these containers (and their compose project's databases); default: all.
        #[arg(long = "container")]
        containers: Vec<String>,
        /// How long to wait for the outcome.
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// List the stored backups.
    List {
        #[command(flatten)]
        s3: S3Args,
        /// Which target to list: the primary bucket or the second copy
        /// (STEWARD_BACKUP_COPY_*; the flags above then name the copy's bucket).
        #[arg(long, value_enum, default_value = "primary")]
        from: Target,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only backups taken on this host (their manifest names it); default every host.
        #[arg(long, value_parser = crate::hosts::parse)]
        host: Option<String>,
    },
    /// Download a backup, check every checksum and load its database dumps into a scratch
    /// server.
    Verify {
        /// A backup id, or `latest`.
        id: String,
        /// Read it from the primary bucket or from the second copy.
        #[arg(long, value_enum, default_value = "primary")]
        from: Target,
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// End this rebuilt host's backup pause (`steward kit import` set it) without a restore:
    /// the stack is kept as it is, and its next backup may become the latest. The backup
    /// service signs the record that ends it; the request and its outcome are in the audit.
    Resume {
        /// Why (kept in the audit trail and mailed).
        #[arg(long)]
        reason: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

/// A backup target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The primary bucket (STEWARD_S3_*).
    Primary,
    /// The second copy (STEWARD_BACKUP_COPY_*).
    Copy,
}

impl Target {
    fn target(self) -> BackupTarget {
        match self {
            Target::Primary => BackupTarget::Primary,
            Target::Copy => BackupTarget::Copy,
        }
    }
}

/// The bucket, as the backup service is configured: each flag stands for its variable and is
/// read and checked as the service reads it (`S3Config::read`).
#[derive(Debug, Args)]
pub struct S3Args {
    /// The bucket [env: STEWARD_S3_BUCKET].
    #[arg(long)]
    bucket: Option<String>,
    /// Key prefix [env: STEWARD_S3_PREFIX].
    #[arg(long)]
    prefix: Option<String>,
    /// Endpoint of an S3-compatible store [env: STEWARD_S3_ENDPOINT].
    #[arg(long)]
    endpoint: Option<String>,
}

impl S3Args {
    /// The bucket, and the public keys whose signatures `list` checks
    /// (`STEWARD_BACKUP_TRUSTED_KEYS`, the CLI never holds the private key).
    fn read(self) -> anyhow::Result<(S3Config, Trust, Vec<String>)> {
        let mut env = Env::from_process();
        for (name, flag) in
            [(ENV_BUCKET, self.bucket), (ENV_PREFIX, self.prefix), (ENV_ENDPOINT, self.endpoint)]
        {
            if let Some(value) = flag {
                env.set(name, value);
            }
        }
        let config = S3Config::read(&mut env);
        let trust = Trust::read(&mut env);
        let hosts = env.hosts();
        env.finish()?;
        Ok((config, trust, hosts))
    }

    /// The second copy's store (`STEWARD_BACKUP_COPY_*`, the flags standing for its bucket,
    /// prefix and endpoint), and the trusted keys: the copy is checked exactly as the primary.
    fn read_copy(self) -> anyhow::Result<(CopyConfig, Trust, Vec<String>)> {
        use steward_store::config::{ENV_COPY_BUCKET, ENV_COPY_ENDPOINT, ENV_COPY_PREFIX};
        let mut env = Env::from_process();
        for (name, flag) in [
            (ENV_COPY_BUCKET, self.bucket),
            (ENV_COPY_PREFIX, self.prefix),
            (ENV_COPY_ENDPOINT, self.endpoint),
        ] {
            if let Some(value) = flag {
                env.set(name, value);
            }
        }
        let copy = CopyConfig::read(&mut env);
        let trust = Trust::read(&mut env);
        let hosts = env.hosts();
        env.finish()?;
        let copy = copy.context(
            "no second copy is configured: set STEWARD_BACKUP_COPY_BUCKET (or --bucket) as the backup service has it",
        )?;
        Ok((copy, trust, hosts))
    }
}

/// What to restore.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Only {
    /// The database dumps.
    Db,
    /// The archived paths.
    Paths,
}

/// `steward restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A backup id, or `latest`.
    id: String,
    /// Restore only the databases or only the paths.
    #[arg(long)]
    only: Option<Only>,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Restore a backup whose manifest is not signed (taken before manifests were signed):
    /// only by id, never `latest`; every other check still applies.
    #[arg(long)]
    unsigned: bool,
    /// Take no safety backup of the data the restore replaces (a restore onto an empty host,
    /// where there is nothing to save; one is skipped anyway when the databases and paths are
    /// absent or empty). Without it, the restore cannot be undone.
    #[arg(long)]
    no_safety_backup: bool,
    /// Read the backup only from this target. Without it: the primary, falling back to the
    /// second copy when the primary has no usable manifest for the backup.
    #[arg(long, value_enum)]
    from: Option<Target>,
    /// Point-in-time recovery of the databases labelled steward.backup.pitr: `latest` (every
    /// shipped WAL segment) or an RFC 3339 time (`2026-11-30T08:59:00Z`, inclusive), replayed
    /// on the backup's base backup in a scratch server first. With `latest` as the id and a
    /// time: the newest backup taken before it.
    #[arg(long, value_parser = to_time)]
    to_time: Option<String>,
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// `latest` or an RFC 3339 time, as the backup service reads it.
fn to_time(s: &str) -> Result<String, String> {
    if s == "latest" {
        return Ok(s.to_owned());
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|_| s.to_owned())
        .map_err(|e| format!("neither latest nor an RFC 3339 time (2026-11-30T08:59:00Z): {e}"))
}

pub async fn run(cmd: BackupCommand, conn: &Connection) -> anyhow::Result<()> {
    match cmd {
        BackupCommand::Now { containers, wait } => {
            let data = BackupRequested {
                reason: BackupReason::Manual,
                containers,
                requested_by: Some(crate::who()),
            };
            let outcome =
                request(conn, None, data, &["backup.done", "backup.failed"], wait, "backing up")
                    .await?;
            match outcome.data {
                EventData::BackupDone(d) => {
                    println!(
                        "backup {} done: {} components, {} stored, {:.1} s",
                        d.backup_id,
                        d.components.len(),
                        bytes(d.size_bytes),
                        d.duration_ms as f64 / 1000.0
                    );
                    Ok(())
                }
                EventData::BackupFailed(f) => failed("backup failed", &f.reason, &f.stderr_tail),
                _ => bail!("unexpected outcome {}", outcome.event_type()),
            }
        }
        BackupCommand::List { s3, from, json, host } => list(s3, from, json, host).await,
        BackupCommand::Resume { reason, yes, wait } => resume(conn, reason, yes, wait).await,
        BackupCommand::Verify { id, from, wait } => {
            let data = VerifyRequested {
                backup_id: id,
                requested_by: Some(crate::who()),
                from: (from == Target::Copy).then_some(from.target()),
            };
            let outcome =
                request(conn, None, data, &["backup.verified", "verify.failed"], wait, "verifying")
                    .await?;
            match outcome.data {
                EventData::BackupVerified(v) => {
                    println!(
                        "backup {} verified{}: {} components match their checksums{}",
                        v.backup_id,
                        if v.from == Some(BackupTarget::Copy) { " in the second copy" } else { "" },
                        v.components_checked,
                        if v.database_restored { "; the database dumps load" } else { "" }
                    );
                    Ok(())
                }
                EventData::VerifyFailed(f) => failed("verification FAILED", &f.reason, &f.log_tail),
                _ => bail!("unexpected outcome {}", outcome.event_type()),
            }
        }
    }
}

/// Asks at a terminal (`what`, then `question`); refuses without one, as `why` needs `--yes`.
fn confirm(why: &str, question: &str, declined: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{why}; confirm with --yes when not at a terminal");
    }
    eprint!("{question} Continue? [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).context("reading the answer")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("{declined}");
    }
    Ok(())
}

/// `steward backup resume`.
async fn resume(
    conn: &Connection,
    reason: Option<String>,
    yes: bool,
    wait: Duration,
) -> anyhow::Result<()> {
    if !yes {
        confirm(
            "resuming backups without a restore lets this host's stack become the latest backup",
            "End the backup pause without a restore: the next backup holds the stack as it is now and may become the latest.",
            "not resumed",
        )?;
    }
    let data = BackupResumeRequested { requested_by: Some(crate::who()), reason };
    let outcome =
        request(conn, None, data, &["backup.resumed", "backup.resume_failed"], wait, "resuming")
            .await?;
    match outcome.data {
        EventData::BackupResumed(r) if r.already => {
            println!("backups were not paused: the pause {} had ended already", r.token);
            Ok(())
        }
        EventData::BackupResumed(r) => {
            println!(
                "backups resumed: the pause {} ended without a restore (signed record in the bucket)",
                r.token
            );
            Ok(())
        }
        EventData::BackupResumeFailed(f) => failed("not resumed", &f.reason, &[]),
        _ => bail!("unexpected outcome {}", outcome.event_type()),
    }
}

pub async fn restore(args: RestoreArgs, conn: &Connection) -> anyhow::Result<()> {
    let scope = match args.only {
        None => RestoreScope::All,
        Some(Only::Db) => RestoreScope::Db,
        Some(Only::Paths) => RestoreScope::Paths,
    };
    if args.unsigned && args.id == "latest" {
        bail!("--unsigned needs a backup id, not latest: choose the unsigned backup you trust (steward backup list)");
    }
    if !args.yes {
        confirm(
            "a restore replaces live data",
            &format!(
                "Restore backup {} ({scope:?}): the app containers are stopped and their data REPLACED.",
                args.id
            ),
            "not restored",
        )?;
    }
    let data = RestoreRequested {
        backup_id: args.id,
        scope,
        requested_by: Some(crate::who()),
        allow_unsigned: args.unsigned,
        no_safety_backup: args.no_safety_backup,
        from: args.from.map(Target::target),
        to_time: args.to_time,
    };
    let outcome =
        request(conn, None, data, &["restore.done", "restore.failed"], args.wait, "restoring")
            .await?;
    match outcome.data {
        EventData::RestoreDone(d) => {
            println!(
                "restored backup {} ({}) in {:.1} s",
                d.backup_id,
                d.restored.join(", "),
                d.duration_ms as f64 / 1000.0
            );
            if d.from == Some(BackupTarget::Copy) {
                match &d.fallback_reason {
                    Some(why) => {
                        println!("read from the second copy: the primary could not give it ({why})")
                    }
                    None => println!("read from the second copy"),
                }
            }
            for note in &d.notes {
                println!("note: {note}");
            }
            match &d.safety_backup_id {
                Some(safety) => {
                    let only = match scope {
                        RestoreScope::All => "",
                        RestoreScope::Db => " --only db",
                        RestoreScope::Paths => " --only paths",
                    };
                    println!(
                        "the data it replaced is in safety backup {safety}; to undo this restore: steward restore {safety}{only}"
                    );
                }
                None => println!("no safety backup was taken: this restore cannot be undone"),
            }
            Ok(())
        }
        EventData::RestoreFailed(f) => {
            if let Some(safety) = &f.safety_backup_id {
                eprintln!("the data from before this restore is in safety backup {safety}: steward restore {safety}");
            }
            failed("restore FAILED", &f.reason, &f.log_tail)
        }
        _ => bail!("unexpected outcome {}", outcome.event_type()),
    }
}

pub(crate) fn failed(what: &str, reason: &str, tail: &[String]) -> anyhow::Result<()> {
    for line in tail {
        eprintln!("  | {line}");
    }
    bail!("{what}: {reason}")
}

/// Publishes a command and waits for the first event of `outcomes` in its correlation,
/// showing a spinner with the elapsed time on a terminal.
/// Under host routing it goes to `about`'s host (that of the record it acts on), else the one
/// `STEWARD_HOST` names ([`crate::hosts::target`]).
pub(crate) async fn request(
    conn: &Connection,
    about: Option<&str>,
    data: impl Into<EventData>,
    outcomes: &[&str],
    wait: Duration,
    doing: &str,
) -> anyhow::Result<Event> {
    let bus = conn.bus().await?;
    let host = crate::hosts::target(conn, bus.config(), about)?;
    let event = Event::new(steward_settings::event_source(Service::Cli), data).with_host(host);
    // Follow before publishing, from a moment before: the outcome cannot slip past.
    let mut follow = follow(&bus, outcomes).await?;
    let mut progress = bus.watch_progress(event.host.as_deref(), event.correlation_id).await?;
    bus.publish(&event).await?;
    eprintln!("{} requested ({})", event.event_type(), event.id);
    let bar = progress_bar(doing);
    let outcome = tokio::time::timeout(wait, async {
        loop {
            tokio::select! {
                item = follow.next() => {
                    let Some(item) = item else { bail!("the event stream ended") };
                    if let Ok(e) = item?.event {
                        // Under host routing, only the addressed host's answer: another
                        // host's user could copy the correlation id from the stream.
                        let from_addressed = event.host.is_none() || e.host == event.host;
                        if e.correlation_id == event.correlation_id && from_addressed {
                            return Ok(e);
                        }
                    }
                }
                Some(p) = progress.next() => show_progress(&bar, &p),
            }
        }
    })
    .await;
    bar.finish_and_clear();
    outcome.with_context(|| {
        format!(
            "no outcome after {}; the service may still be working: watch `steward events tail --subject '{}'`",
            humantime::format_duration(wait),
            outcomes[0]
        )
    })?
}

pub(crate) async fn follow(bus: &Bus, outcomes: &[&str]) -> anyhow::Result<steward_bus::Replay> {
    let query = ReplayQuery {
        since: Some(OffsetDateTime::now_utc() - time::Duration::seconds(2)),
        subjects: outcomes.iter().map(|s| s.to_string()).collect(),
        follow: true,
        ..Default::default()
    };
    Ok(bus.replay(query).await?)
}

/// A spinner with the elapsed time until the service reports bytes, on a terminal only.
fn progress_bar(doing: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(style("{spinner} {msg} {elapsed}"));
    bar.set_message(doing.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// Bytes against the phase's total when the service knows it, bytes and rate otherwise.
fn show_progress(bar: &indicatif::ProgressBar, p: &steward_bus::Progress) {
    let phase_changed = bar.message().split(':').next() != Some(p.phase.as_str());
    if phase_changed {
        bar.reset();
        match p.total {
            Some(total) => {
                bar.set_length(total);
                bar.set_style(style(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                ));
            }
            None => {
                bar.set_style(style("{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}"))
            }
        }
    }
    bar.set_message(format!("{}: {}", p.phase, p.item));
    bar.set_position(p.done);
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

async fn list(s3: S3Args, from: Target, json: bool, host: Option<String>) -> anyhow::Result<()> {
    use steward_store::config::host_prefix;
    // The prefix itself (a single host's backups, and those from before host routing), and
    // under routing each host's own prefix (`--host`: only that one's).
    let stores = match from {
        Target::Primary => {
            let (config, trust, hosts) = s3.read()?;
            let mut stores = vec![(Store::connect(&config).await, trust.clone())];
            for h in hosts.iter().filter(|h| crate::hosts::shown(host.as_deref(), Some(h))) {
                let prefix = host_prefix(&config.prefix, h);
                let store = Store::connect(&S3Config { prefix, ..config.clone() }).await;
                // As that host's service judges them: another host's manifest is refused.
                stores.push((store, trust.clone().for_host(h)));
            }
            stores
        }
        Target::Copy => {
            let (copy, trust, hosts) = s3.read_copy()?;
            let mut stores = vec![(Store::lazy_copy(&copy), trust.clone())];
            for h in hosts.iter().filter(|h| crate::hosts::shown(host.as_deref(), Some(h))) {
                let mut of_host = copy.clone();
                of_host.s3.prefix = host_prefix(&copy.s3.prefix, h);
                stores.push((Store::lazy_copy(&of_host), trust.clone().for_host(h)));
            }
            stores
        }
    };
    let mut listed = vec![];
    for (store, trust) in &stores {
        listed.extend(steward_store::catalog::list(store, trust, OffsetDateTime::now_utc()).await?);
    }
    listed.sort_by(|a, b| (a.taken_at, &a.backup_id).cmp(&(b.taken_at, &b.backup_id)));
    // A backup without a readable manifest names no host: only the unfiltered list shows it.
    let host_of =
        |l: &steward_store::catalog::Listed| l.manifest.as_ref().and_then(|m| m.host.clone());
    listed.retain(|l| crate::hosts::shown(host.as_deref(), host_of(l).as_deref()));
    let mut out = std::io::stdout().lock();
    if json {
        for l in &listed {
            writeln!(out, "{}", serde_json::to_string(l)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:<16} {:<20} {:>10} {:>10}  {:<9} COMPONENTS",
        "ID", "HOST", "TAKEN (UTC)", "SIZE", "REASON", "VERIFIED"
    )?;
    for l in listed {
        let taken = crate::when::seconds(l.taken_at);
        let host = host_of(&l);
        let host = crate::hosts::column(host.as_deref());
        // Only a usable backup's manifest is shown as what it holds: the rest say why not.
        let note = match &l.standing {
            Standing::Usable { .. } | Standing::Incomplete => "",
            Standing::Unchecked => "(signature not checked: set STEWARD_BACKUP_TRUSTED_KEYS) ",
            Standing::Unsigned => {
                writeln!(
                    out,
                    "{:<24} {:<16} {:<20} {:>10} {:>10}  {:<9} UNSIGNED: never latest; restorable by id with --unsigned if you know it is yours",
                    l.backup_id, host, taken, "-", "-", "-"
                )?;
                continue;
            }
            Standing::Refused { reason } => {
                writeln!(
                    out,
                    "{:<24} {:<16} {:<20} {:>10} {:>10}  {:<9} REFUSED: {reason}",
                    l.backup_id, host, taken, "-", "-", "-"
                )?;
                continue;
            }
        };
        match &l.manifest {
            Some(m) => {
                let names: Vec<&str> = m.components.iter().map(|c| c.name.as_str()).collect();
                let reason = serde_json::to_value(m.reason)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<24} {:<16} {:<20} {:>10} {:>10}  {:<9} {note}{}",
                    l.backup_id,
                    host,
                    taken,
                    bytes(m.stored_size()),
                    reason,
                    if l.verified.is_some() { "yes" } else { "no" },
                    names.join(", ")
                )?;
            }
            None => writeln!(
                out,
                "{:<24} {:<16} {:<20} {:>10} {:>10}  {:<9} incomplete (no manifest): never used",
                l.backup_id, host, taken, "-", "-", "-"
            )?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn to_time_takes_latest_or_an_rfc3339_time() {
        assert_eq!(super::to_time("latest").as_deref(), Ok("latest"));
        assert_eq!(super::to_time("2026-11-30T08:59:00Z").as_deref(), Ok("2026-11-30T08:59:00Z"));
        assert!(super::to_time("2026-11-30T08:59:00+01:00").is_ok());
        for bad in ["", "yesterday", "2026-11-30", "2026-11-30 08:59:00", "LATEST"] {
            let e = super::to_time(bad).err().unwrap_or_default();
            assert!(e.contains("neither latest nor an RFC 3339 time"), "{bad}: {e}");
        }
    }
}
