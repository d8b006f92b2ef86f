//! `steward events tail|replay|publish`: the stream as an audit trail.

use std::io::Write;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use steward_bus::{ReplayQuery, Replayed};
use steward_events::{Event, EventData, Service};
use time::OffsetDateTime;

use crate::{when, Connection};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Follow new events as they arrive (Ctrl-C to stop).
    Tail(Filter),
    /// Print stored events in a time range, then stop.
    Replay(Filter),
    /// Publish one event (the payload is validated like any consumer would).
    Publish {
        /// Event type, e.g. `watch.requested`.
        event_type: String,
        /// The payload as JSON.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Join an existing flow (correlation id).
        #[arg(long)]
        correlation: Option<uuid::Uuid>,
    },
    /// Bring an export of the stream and the state buckets (a backup's `events` component)
    /// onto a fresh NATS, before `steward setup` creates the services' consumers.
    Import(crate::events_import::ImportArgs),
}

#[derive(Debug, Args)]
pub struct Filter {
    /// From (RFC 3339, a date, or a duration ago such as 2h); default: everything retained.
    #[arg(long, value_parser = when::parse)]
    since: Option<OffsetDateTime>,
    /// Until (same forms).
    #[arg(long, value_parser = when::parse)]
    until: Option<OffsetDateTime>,
    /// Only these event types (NATS wildcards allowed: `update.>`, `*.failed`, `dlq.>`).
    #[arg(long = "subject")]
    subjects: Vec<String>,
    /// Only events about this container.
    #[arg(long)]
    container: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: EventsCommand, conn: &Connection) -> anyhow::Result<()> {
    match cmd {
        EventsCommand::Tail(f) => print(conn, f, true).await,
        EventsCommand::Replay(f) => print(conn, f, false).await,
        EventsCommand::Import(args) => crate::events_import::run(args, conn).await,
        EventsCommand::Publish { event_type, data, correlation } => {
            let event = build_event(&event_type, &data, correlation)?;
            let bus = conn.bus().await?;
            let published = bus.publish(&event).await?;
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "published {} {} (stream sequence {})",
                    event.event_type(),
                    event.id,
                    published.sequence
                );
            }
            Ok(())
        }
    }
}

/// Builds an event from a type name and JSON payload, validated by the strict decoder.
fn build_event(
    event_type: &str,
    data: &str,
    correlation: Option<uuid::Uuid>,
) -> anyhow::Result<Event> {
    let data: serde_json::Value = serde_json::from_str(data).context("--data is not JSON")?;
    let id = uuid::Uuid::now_v7();
    let now = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .context("cannot format the current time")?;
    let envelope = serde_json::json!({
        "specversion": steward_events::SPEC_VERSION,
        "id": id,
        "source": steward_settings::event_source(Service::Cli),
        "type": event_type,
        "time": now,
        "correlationid": correlation.unwrap_or(id),
        "data": data,
    });
    let bytes = serde_json::to_vec(&envelope).context("cannot encode event")?;
    let mut event = Event::decode(&bytes).with_context(|| {
        format!("not a valid {event_type} event (known types: {})", EventData::ALL_TYPES.join(", "))
    })?;
    event.subject = event.data.container().map(str::to_owned);
    Ok(event)
}

async fn print(conn: &Connection, f: Filter, follow: bool) -> anyhow::Result<()> {
    let bus = conn.bus().await?;
    let query = ReplayQuery {
        since: f.since,
        until: f.until,
        subjects: f.subjects,
        container: f.container,
        follow,
    };
    let mut replay = bus.replay(query).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !f.json {
        writeln!(
            out,
            "{:<24} {:>7}  {:<18} {:<16} {:<8}  SUMMARY",
            "TIME (UTC)", "SEQ", "TYPE", "CONTAINER", "FLOW"
        )?;
    }
    let mut count = 0u64;
    while let Some(item) = replay.next().await {
        let mut item = item?;
        redact(&mut item);
        if f.json {
            writeln!(out, "{}", json_line(&item)?)?;
        } else {
            writeln!(out, "{}", table_line(&item))?;
        }
        count += 1;
        if follow {
            out.flush()?;
        }
    }
    out.flush()?;
    if !f.json {
        eprintln!("{count} event(s)");
    }
    Ok(())
}

/// Approval links hold live tokens: never print them.
fn redact(item: &mut Replayed) {
    if let Ok(event) = &mut item.event {
        redact_event(event);
    }
}

/// [`redact`] for one event.
pub(crate) fn redact_event(event: &mut Event) {
    if let EventData::UpdatePending(p) = &mut event.data {
        if p.approval_url.is_some() {
            p.approval_url = Some("<redacted>".into());
        }
    }
}

fn json_line(item: &Replayed) -> anyhow::Result<String> {
    match &item.event {
        Ok(event) => Ok(String::from_utf8(event.encode()?)?),
        Err(e) => Ok(serde_json::json!({
            "sequence": item.sequence,
            "subject": item.event_type,
            "stored_at": fmt_time(item.stored_at),
            "dead_letter_reason": item.dead_letter_reason,
            "error": e.to_string(),
        })
        .to_string()),
    }
}

fn fmt_time(t: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
    );
    t.format(&f).unwrap_or_default()
}

fn table_line(item: &Replayed) -> String {
    let (container, flow, summary) = match &item.event {
        Ok(e) => (
            e.container().unwrap_or("-").to_owned(),
            e.correlation_id.simple().to_string()[24..].to_owned(),
            summary(&e.data),
        ),
        Err(err) => (
            "-".into(),
            "-".into(),
            match &item.dead_letter_reason {
                Some(reason) => format!("dead letter: {reason}"),
                None => format!("undecodable: {err}"),
            },
        ),
    };
    format!(
        "{:<24} {:>7}  {:<18} {:<16} {:<8}  {}",
        fmt_time(item.stored_at),
        item.sequence,
        item.event_type,
        container,
        flow,
        summary
    )
}

/// An enum as it is spelled on the wire (`pre_update`).
fn wire_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `rollback by WHO: ` for a rollback's `update.*` events, nothing for an update's.
fn rollback_by(kind: steward_events::UpdateKind, by: &Option<String>) -> String {
    match kind {
        steward_events::UpdateKind::Rollback => {
            format!("rollback by {}: ", by.as_deref().unwrap_or("?"))
        }
        steward_events::UpdateKind::Update => String::new(),
    }
}

/// One line a human can scan.
pub(crate) fn summary(data: &EventData) -> String {
    match data {
        EventData::WatchRequested(p) => format!("by {}", p.requested_by.as_deref().unwrap_or("?")),
        EventData::ImageUpdated(p) => {
            format!(
                "{} {} -> {}{}",
                p.image,
                p.current_digest.short(),
                p.new_digest.short(),
                p.new_tag.as_ref().map(|t| format!(" (tag {t})")).unwrap_or_default()
            )
        }
        EventData::UpdatePending(p) => format!(
            "update {} awaits approval ({} -> {})",
            p.update_id,
            p.current_digest.short(),
            p.new_digest.short()
        ),
        EventData::UpdateApproved(p) => format!("update {} approved by {}", p.update_id, p.by),
        EventData::UpdateRejected(p) => format!("update {} rejected by {}", p.update_id, p.by),
        EventData::UpdateStarted(p) => format!(
            "{}{} -> {}",
            rollback_by(p.kind, &p.requested_by),
            p.from_digest.short(),
            p.to_digest.short()
        ),
        EventData::UpdateSucceeded(p) => format!(
            "{}now {} ({} ms)",
            rollback_by(p.kind, &p.requested_by),
            p.to_digest.short(),
            p.duration_ms
        ),
        EventData::UpdateFailed(p) => {
            format!("{}{}", rollback_by(p.kind, &p.requested_by), p.reason)
        }
        EventData::UpdateWrittenBack(p) => match (&p.refused, &p.file) {
            (Some(why), _) => format!("{} not written back: {why}", p.image),
            (None, None) if p.committer.is_some() => format!(
                "{} to be committed by the {} (deployed from git)",
                p.image,
                p.committer.as_deref().unwrap_or_default()
            ),
            (None, Some(file)) => {
                format!("{} written to {} in {file}", p.image, p.key.as_deref().unwrap_or("it"))
            }
            (None, None) => format!("{} already named by the project", p.image),
        },
        EventData::UpdateRolledBack(p) => format!(
            "{}back on {}: {}",
            rollback_by(p.kind, &p.requested_by),
            p.from_digest.short(),
            p.reason
        ),
        EventData::RollbackRequested(p) => format!(
            "by {}{}",
            p.requested_by,
            p.to_digest.as_ref().map(|d| format!(" to {}", d.short())).unwrap_or_default()
        ),
        EventData::RollbackRefused(p) => p.reason.clone(),
        EventData::ImagePruned(p) => format!(
            "{}: {} removed, {} bytes, {} kept",
            p.repository,
            p.images.len(),
            p.bytes_freed,
            p.kept
        ),
        EventData::BackupRequested(p) => wire_name(&p.reason),
        EventData::BackupStarted(p) => p.backup_id.clone(),
        EventData::BackupDone(p) => {
            format!("{} {} bytes in {} components", p.backup_id, p.size_bytes, p.components.len())
        }
        EventData::BackupFailed(p) => p.reason.clone(),
        EventData::BackupVerified(p) => p.backup_id.clone(),
        EventData::VerifyRequested(p) => p.backup_id.clone(),
        EventData::VerifyFailed(p) => format!("{}: {}", p.backup_id, p.reason),
        EventData::BackupPruned(p) => format!("{} pruned, {} kept", p.backup_ids.len(), p.kept),
        EventData::RestoreRequested(p) => format!("{} ({})", p.backup_id, wire_name(&p.scope)),
        EventData::RestoreDone(p) => p.backup_id.clone(),
        EventData::RestoreFailed(p) => format!("{}: {}", p.backup_id, p.reason),
        EventData::HealthFailed(p) => format!("{}: {}", p.check, p.reason),
        EventData::HealthRecovered(p) => format!("after {} s", p.down_for_ms / 1000),
        EventData::BackupStale(p) => {
            format!("newest {}", p.newest.as_deref().unwrap_or("none"))
        }
        EventData::BackupResumeRequested(p) => format!(
            "by {}{}",
            p.requested_by.as_deref().unwrap_or("?"),
            p.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        EventData::BackupResumed(p) if p.already => format!("pause {} had ended already", p.token),
        EventData::BackupResumed(p) => format!(
            "pause {} ended without a restore by {}",
            p.token,
            p.requested_by.as_deref().unwrap_or("?")
        ),
        EventData::BackupResumeFailed(p) => p.reason.clone(),
        EventData::HealthRestarted(p) => format!("restart {} this hour: {}", p.attempt, p.reason),
        EventData::HealthRestartLimited(p) => {
            format!("{} restarts this hour, no more: {}", p.restarts, p.reason)
        }
        EventData::EngineFailed(p) => format!("{}: {}", p.engine, p.reason),
        EventData::EngineRecovered(p) => format!("{} after {} s", p.engine, p.down_for_ms / 1000),
        EventData::NotifySent(p) => {
            format!("{} to {}: {}", p.channel, p.recipients.join(","), p.title)
        }
        EventData::NotifyFailed(p) => format!("{}: {}", p.channel, p.reason),
        EventData::NotifyTestRequested(p) => format!("by {}", p.by),
        EventData::CertsRequested(p) => format!("by {}", p.requested_by.as_deref().unwrap_or("?")),
        EventData::CertsChecked(p) if p.renewed.is_empty() => "none due".into(),
        EventData::CertsChecked(p) => {
            format!("renewed {}; reloaded {}", p.renewed.join(","), p.reloaded.join(","))
        }
        EventData::CertsFailed(p) => p.reason.clone(),
        EventData::CertExpiring(p) => {
            format!("{} {}: {} days left", wire_name(&p.level), p.certificate, p.days_left)
        }
        EventData::CertRenewed(p) => p.certificate.clone(),
        EventData::RegistryFailed(p) => {
            format!("{}: {} checks in a row: {}", p.registry, p.failed_checks, p.reason)
        }
        EventData::RegistryRecovered(p) => {
            format!("{} after {} checks", p.registry, p.failed_checks)
        }
        EventData::DiskLow(p) => format!(
            "{} {}: {}% free ({} of {} bytes)",
            wire_name(&p.level),
            p.target,
            p.free_percent,
            p.free_bytes,
            p.total_bytes
        ),
        EventData::DiskRecovered(p) => format!("{}: {} bytes free", p.target, p.free_bytes),
        EventData::ConfigInvalid(p) => format!(
            "`{}` exit {}: {}",
            p.command,
            p.exit_code,
            p.output_tail.last().map(String::as_str).unwrap_or("")
        ),
        EventData::ConfigRecovered(p) => format!("`{}` passes", p.command),
        EventData::DeployRequested(p) => {
            format!("{} by {}", deploy_change(&p.change), p.requested_by.as_deref().unwrap_or("?"))
        }
        EventData::DeployPinRequested(p) => {
            format!(
                "pin {} to {} by {}",
                p.environment,
                p.commit.get(..10).unwrap_or(&p.commit),
                p.by
            )
        }
        EventData::DeployPending(p) => format!(
            "deploy {} awaits approval: {} ({}){}",
            p.deploy_id,
            deploy_change(&p.change),
            p.services.join(", "),
            p.pinned_by.as_deref().map(|by| format!(", pinned by {by}")).unwrap_or_default()
        ),
        EventData::DeployDeferred(p) => format!(
            "deploy {} waits for its window (opens {}): {} ({})",
            p.deploy_id,
            p.opens,
            deploy_change(&p.change),
            p.services.join(", ")
        ),
        EventData::DeployApproved(p) => format!("deploy {} approved by {}", p.deploy_id, p.by),
        EventData::DeployRejected(p) => format!(
            "deploy {} rejected by {}{}",
            p.deploy_id,
            p.by,
            p.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        ),
        EventData::DeployStarted(p) => {
            format!("{} ({})", deploy_change(&p.change), p.services.join(", "))
        }
        EventData::DeploySucceeded(p) => format!(
            "{} ({}) in {} s",
            deploy_change(&p.change),
            p.services.join(", "),
            p.duration_ms / 1000
        ),
        EventData::DeployFailed(p) => format!("{}: {}", deploy_change(&p.change), p.reason),
        EventData::DeployWrittenBack(p) => match (&p.refused, &p.commit) {
            (Some(why), _) => format!("{} not committed to {}: {why}", p.image, p.branch),
            (None, Some(_)) if p.pull_request.is_some() => format!(
                "{} proposed to {} as {} (from {})",
                p.image,
                p.branch,
                p.pull_request.as_deref().unwrap_or_default(),
                p.proposal_branch.as_deref().unwrap_or("its branch")
            ),
            (None, Some(c)) => format!(
                "{} committed to {} as {} ({} in {})",
                p.image,
                p.branch,
                c.get(..10).unwrap_or(c),
                p.key.as_deref().unwrap_or("it"),
                p.file.as_deref().unwrap_or("the compose file")
            ),
            (None, None) => format!("{} already named on {}", p.image, p.branch),
        },
        EventData::DeployRolledBack(p) => format!(
            "{} rolled back to {}: {}",
            deploy_change(&p.change),
            p.previous_commit.as_deref().map_or("nothing", |c| c.get(..10).unwrap_or(c)),
            p.reason
        ),
    }
}

/// `prod main@0c1d2e3f40 "message" (author)`: a deployment's commit on one line.
fn deploy_change(c: &steward_events::Change) -> String {
    let mut line = format!("{} {}@{}", c.environment, c.branch, c.short_commit());
    if let Some(m) = &c.message {
        line.push_str(&format!(" {m:?}"));
    }
    if let Some(a) = &c.author {
        line.push_str(&format!(" ({a})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{build_event, summary};
    use steward_events::{DeployWrittenBack, EventData, UpdateWrittenBack};

    #[test]
    fn write_backs_say_who_writes_and_what() {
        let id = uuid::Uuid::nil();
        let handed = UpdateWrittenBack {
            update_id: id,
            container: "site-prod-web-1".into(),
            image: "app:1.1".into(),
            file: None,
            key: None,
            refused: None,
            from_image: Some("app:1.0".into()),
            committer: Some("deployer".into()),
        };
        let line = summary(&EventData::UpdateWrittenBack(handed.clone()));
        assert_eq!(line, "app:1.1 to be committed by the deployer (deployed from git)");
        let named = UpdateWrittenBack { committer: None, ..handed };
        assert_eq!(
            summary(&EventData::UpdateWrittenBack(named)),
            "app:1.1 already named by the project"
        );
        let committed = DeployWrittenBack {
            update_id: id,
            environment: "prod".into(),
            branch: "main".into(),
            repository: "https://git.example.com/ops/site.git".into(),
            container: "site-prod-web-1".into(),
            image: "app:1.1".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            file: Some(".env".into()),
            key: Some("WEB_IMAGE".into()),
            refused: None,
            proposal_branch: None,
            pull_request: None,
        };
        let line = summary(&EventData::DeployWrittenBack(committed.clone()));
        assert_eq!(line, "app:1.1 committed to main as 0123456789 (WEB_IMAGE in .env)");
        let refused = DeployWrittenBack {
            commit: None,
            refused: Some("the push was refused".into()),
            ..committed.clone()
        };
        let line = summary(&EventData::DeployWrittenBack(refused));
        assert_eq!(line, "app:1.1 not committed to main: the push was refused");
        let proposed = DeployWrittenBack {
            proposal_branch: Some("steward/update-x".into()),
            pull_request: Some("https://git.example.com/ops/site/pulls/7".into()),
            ..committed
        };
        let line = summary(&EventData::DeployWrittenBack(proposed));
        assert_eq!(
            line,
            "app:1.1 proposed to main as https://git.example.com/ops/site/pulls/7 (from steward/update-x)"
        );
    }

    #[test]
    fn publish_validates_the_payload() {
        assert!(build_event("watch.requested", "{}", None).is_ok());
        let e =
            build_event("image.updated", r#"{"container":"x"}"#, None).expect_err("missing fields");
        assert!(format!("{e:#}").contains("image"), "{e:#}");
        assert!(build_event("no.such", "{}", None).is_err());
        assert!(build_event("watch.requested", "{not json", None).is_err());
    }
}
