//! `steward audit`: the stream as timelines. Every update, deployment, backup, verification,
//! restore and outage is one flow (one correlation id); each is shown with what it was about, its
//! outcome, its duration and its events in order.

use std::collections::BTreeSet;
use std::io::Write;

use clap::Args;
use steward_bus::ReplayQuery;
use steward_events::{Event, EventData};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{redact_event, summary};
use crate::when;
use crate::Connection;

/// `steward audit` options.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// From (RFC 3339, a date, or a duration ago such as 7d); default: everything retained.
    #[arg(long, value_parser = when::parse)]
    since: Option<OffsetDateTime>,
    /// Until (same forms).
    #[arg(long, value_parser = when::parse)]
    until: Option<OffsetDateTime>,
    /// Only flows that touched this container.
    #[arg(long)]
    container: Option<String>,
    /// Only flows of this kind: update, deploy, backup, verify, restore, health, certs, check.
    #[arg(long)]
    kind: Option<String>,
    /// Only flows on this host (an event of theirs names it); default every host.
    #[arg(long, value_parser = crate::hosts::parse)]
    host: Option<String>,
    /// One JSON object per flow and line.
    #[arg(long)]
    json: bool,
}

/// One flow.
#[derive(Debug)]
pub struct Flow {
    /// Correlation id.
    pub id: Uuid,
    /// Its events, in stream order.
    pub events: Vec<Event>,
}

impl Flow {
    /// What kind of flow this is, from the most telling event in it.
    pub fn kind(&self) -> &'static str {
        let has = |prefix: &str| self.events.iter().any(|e| e.event_type().starts_with(prefix));
        if has("update.") || has("image.") {
            "update"
        } else if has("deploy.") {
            // Before backups: a deployment's flow holds its backup gate's events.
            "deploy"
        } else if has("restore.") {
            "restore"
        } else if has("verify.") || has("backup.verified") {
            "verify"
        } else if has("backup.") {
            "backup"
        } else if has("health.") {
            "health"
        } else if has("certs.") {
            "certs"
        } else if has("watch.") {
            "check"
        } else {
            "other"
        }
    }

    /// How it ended (or `in progress`), from its last deciding event. Only events of the
    /// flow's own kind decide: an update, a deployment or a restore takes a backup first, and
    /// that backup's `backup.done` says nothing of how the flow itself ended.
    pub fn outcome(&self) -> String {
        let kind = self.kind();
        // A rejected deployment ends with `deploy.failed`; "rejected" says more.
        let rejected = self.events.iter().any(|e| matches!(e.data, EventData::DeployRejected(_)));
        let decided = self.events.iter().rev().find_map(|e| {
            Some(match (&e.data, kind) {
                (EventData::UpdateSucceeded(_), _) => "succeeded".into(),
                (EventData::UpdateRolledBack(_), _) => "rolled back".into(),
                (EventData::UpdateFailed(_), _) => "failed".into(),
                (EventData::UpdateRejected(_), _) => "rejected".into(),
                (EventData::UpdatePending(_), _) => "awaiting approval".into(),
                (EventData::DeploySucceeded(_), _) => "succeeded".into(),
                (EventData::DeployRolledBack(_), _) => "rolled back".into(),
                (EventData::DeployFailed(_), _) if !rejected => "failed".into(),
                (EventData::DeployFailed(_) | EventData::DeployRejected(_), _) => "rejected".into(),
                (EventData::DeployPending(_), _) => "awaiting approval".into(),
                (EventData::DeployDeferred(_), _) => "waiting for its window".into(),
                // Approved is not started: an update's or deployment's window may hold it back.
                (EventData::UpdateApproved(_) | EventData::DeployApproved(_), _) => {
                    "approved, not started".into()
                }
                (EventData::UpdateStarted(_) | EventData::DeployStarted(_), _) => {
                    "in progress".into()
                }
                (EventData::BackupDone(_), "backup") => "done".into(),
                (EventData::BackupFailed(_), "backup") => "failed".into(),
                (EventData::BackupVerified(_), "backup" | "verify") => "verified".into(),
                (EventData::BackupResumed(_), "backup") => "resumed".into(),
                (EventData::BackupResumeFailed(_), "backup") => "failed".into(),
                (EventData::VerifyFailed(_), _) => "failed verification".into(),
                (EventData::RestoreDone(_), _) => "done".into(),
                (EventData::RestoreFailed(_), _) => "failed".into(),
                (EventData::HealthFailed(_), _) => "down".into(),
                (EventData::HealthRecovered(_), _) => "recovered".into(),
                (EventData::EngineFailed(_), _) => "engine not answering".into(),
                (EventData::EngineRecovered(_), _) => "engine recovered".into(),
                (EventData::CertsChecked(c), _) if c.renewed.is_empty() => "none due".into(),
                (EventData::CertsChecked(_), _) => "renewed".into(),
                (EventData::CertsFailed(_), _) => "failed".into(),
                (EventData::ImageUpdated(_), "update") => "newer image found".into(),
                _ => return None,
            })
        });
        decided.unwrap_or_else(|| "in progress".into())
    }

    /// The hosts whose agents took part (none for a flow from before hosts, or the CLI's
    /// alone).
    pub fn hosts(&self) -> BTreeSet<String> {
        self.events.iter().filter_map(|e| e.host.clone()).collect()
    }

    /// Containers it touched.
    pub fn containers(&self) -> BTreeSet<String> {
        self.events.iter().filter_map(|e| e.container().map(str::to_owned)).collect()
    }

    fn started(&self) -> OffsetDateTime {
        self.events.first().map_or(OffsetDateTime::UNIX_EPOCH, |e| e.time)
    }

    fn duration_ms(&self) -> u64 {
        let end = self.events.last().map_or(self.started(), |e| e.time);
        (end - self.started()).whole_milliseconds().max(0) as u64
    }
}

/// Groups events into flows, ordered by their first event.
pub fn group(events: Vec<Event>) -> Vec<Flow> {
    let mut flows: Vec<Flow> = vec![];
    let mut index: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for event in events {
        match index.get(&event.correlation_id) {
            Some(&i) => flows[i].events.push(event),
            None => {
                index.insert(event.correlation_id, flows.len());
                flows.push(Flow { id: event.correlation_id, events: vec![event] });
            }
        }
    }
    flows
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn seconds(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
}

/// Runs `steward audit`.
pub async fn run(args: AuditArgs, conn: &Connection) -> anyhow::Result<()> {
    let bus = conn.bus().await?;
    let query = ReplayQuery { since: args.since, until: args.until, ..ReplayQuery::default() };
    let mut replay = bus.replay(query).await?;
    let mut events = vec![];
    while let Some(item) = replay.next().await {
        // Dead letters and undecodable messages are not part of any flow.
        if let Ok(mut event) = item?.event {
            redact_event(&mut event);
            events.push(event);
        }
    }
    let flows: Vec<Flow> = group(events)
        .into_iter()
        .filter(|f| args.container.as_ref().is_none_or(|c| f.containers().contains(c)))
        .filter(|f| args.kind.as_deref().is_none_or(|k| f.kind() == k))
        .filter(|f| args.host.as_ref().is_none_or(|h| f.hosts().contains(h)))
        .collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for flow in &flows {
        if args.json {
            writeln!(out, "{}", json(flow)?)?;
        } else {
            write_flow(&mut out, flow)?;
        }
    }
    out.flush()?;
    if !args.json {
        eprintln!("{} flow(s)", flows.len());
    }
    Ok(())
}

fn json(flow: &Flow) -> anyhow::Result<String> {
    let events: Vec<serde_json::Value> = flow
        .events
        .iter()
        .map(|e| Ok(serde_json::from_slice::<serde_json::Value>(&e.encode()?)?))
        .collect::<anyhow::Result<_>>()?;
    Ok(serde_json::json!({
        "correlation_id": flow.id,
        "kind": flow.kind(),
        "containers": flow.containers(),
        "hosts": flow.hosts(),
        "outcome": flow.outcome(),
        "started": rfc3339(flow.started()),
        "duration_ms": flow.duration_ms(),
        "events": events,
    })
    .to_string())
}

fn write_flow(out: &mut impl Write, flow: &Flow) -> std::io::Result<()> {
    let containers = flow.containers().into_iter().collect::<Vec<_>>().join(",");
    let hosts = flow.hosts().into_iter().collect::<Vec<_>>().join(",");
    writeln!(
        out,
        "{}  {:<7}  {:<16}  {:<20}  {:<18}  {:>8}  flow {}",
        rfc3339(flow.started()),
        flow.kind(),
        if hosts.is_empty() { "-".into() } else { hosts },
        if containers.is_empty() { "-".into() } else { containers },
        flow.outcome(),
        seconds(flow.duration_ms()),
        flow.id
    )?;
    let start = flow.started();
    for e in &flow.events {
        let offset = (e.time - start).whole_milliseconds().max(0) as u64;
        let by = e.source.split('/').next().unwrap_or_default();
        writeln!(
            out,
            "    +{:<8} {:<18} {:<17} {}",
            seconds(offset),
            e.event_type(),
            by,
            summary(&e.data)
        )?;
    }
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use steward_events::samples::all;

    use super::*;

    fn flow_of(types: &[&str]) -> Flow {
        let samples = all("gitea");
        let first = Event::new("t", samples[0].clone());
        let events = types
            .iter()
            .map(|t| {
                let data = samples.iter().find(|d| d.event_type() == *t).expect("sample").clone();
                Event::caused_by(&first, "t", data)
            })
            .collect();
        Flow { id: first.correlation_id, events }
    }

    #[test]
    fn kinds_and_outcomes_come_from_the_telling_events() {
        let f = flow_of(&[
            "watch.requested",
            "image.updated",
            "update.pending",
            "update.approved",
            "update.started",
            "update.succeeded",
            "notify.sent",
        ]);
        assert_eq!((f.kind(), f.outcome().as_str()), ("update", "succeeded"));
        let f = flow_of(&["watch.requested", "image.updated", "update.pending"]);
        assert_eq!(f.outcome(), "awaiting approval");
        let f = flow_of(&["backup.requested", "backup.started", "backup.failed", "notify.sent"]);
        assert_eq!((f.kind(), f.outcome().as_str()), ("backup", "failed"));
        let f = flow_of(&["restore.requested"]);
        assert_eq!((f.kind(), f.outcome().as_str()), ("restore", "in progress"));
        let f = flow_of(&["health.failed", "notify.sent", "health.recovered"]);
        assert_eq!((f.kind(), f.outcome().as_str()), ("health", "recovered"));
    }

    #[test]
    fn a_deployment_is_its_own_kind_and_its_backup_gate_decides_nothing() {
        let gate = ["deploy.requested", "backup.requested", "backup.started", "backup.done"];
        let f = flow_of(&gate);
        assert_eq!((f.kind(), f.outcome().as_str()), ("deploy", "in progress"));
        let f = flow_of(&[&gate[..], &["deploy.started", "deploy.succeeded"]].concat());
        assert_eq!((f.kind(), f.outcome().as_str()), ("deploy", "succeeded"));
        let f = flow_of(&[&gate[..], &["deploy.started", "deploy.rolled_back"]].concat());
        assert_eq!(f.outcome(), "rolled back");
        let f =
            flow_of(&["deploy.requested", "deploy.pending", "deploy.rejected", "deploy.failed"]);
        assert_eq!(f.outcome(), "rejected");
        let f = flow_of(&["deploy.requested", "deploy.failed"]);
        assert_eq!(f.outcome(), "failed");
        let f = flow_of(&["deploy.requested", "deploy.pending"]);
        assert_eq!(f.outcome(), "awaiting approval");
        // Approved, held back by a window: not "awaiting approval" any more, not yet started.
        let f = flow_of(&["deploy.requested", "deploy.pending", "deploy.approved"]);
        assert_eq!(f.outcome(), "approved, not started");
        let f = flow_of(&["deploy.pending", "deploy.approved", "deploy.started"]);
        assert_eq!(f.outcome(), "in progress");
        let f = flow_of(&["deploy.pending", "deploy.approved", "deploy.deferred"]);
        assert_eq!(f.outcome(), "waiting for its window");
        let f = flow_of(&["deploy.requested", "deploy.deferred", "deploy.started"]);
        assert_eq!(f.outcome(), "in progress");
        let f = flow_of(&["update.pending", "update.approved"]);
        assert_eq!((f.kind(), f.outcome().as_str()), ("update", "approved, not started"));
        // The same for an update backed up first, and a restore after its safety backup.
        let f = flow_of(&["update.approved", "backup.requested", "backup.done", "update.started"]);
        assert_eq!((f.kind(), f.outcome().as_str()), ("update", "in progress"));
        let f = flow_of(&["restore.requested", "backup.requested", "backup.done"]);
        assert_eq!((f.kind(), f.outcome().as_str()), ("restore", "in progress"));
    }

    #[test]
    fn events_group_by_correlation_in_order_of_first_appearance() {
        let a = Event::new("t", all("a")[0].clone());
        let b = Event::new("t", all("b")[0].clone());
        let a2 = Event::caused_by(&a, "t", all("a")[1].clone());
        let flows = group(vec![a.clone(), b.clone(), a2.clone()]);
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].events.iter().map(|e| e.id).collect::<Vec<_>>(), [a.id, a2.id]);
        assert_eq!(flows[1].events[0].id, b.id);
    }

    #[test]
    fn a_flow_names_the_hosts_whose_agents_took_part() {
        let mut flow = flow_of(&["watch.requested", "image.updated", "update.succeeded"]);
        assert!(flow.hosts().is_empty(), "events from before hosts name none");
        flow.events[1].host = Some("vps1".into());
        flow.events[2].host = Some("vps1".into());
        assert_eq!(flow.hosts().into_iter().collect::<Vec<_>>(), ["vps1"]);
        let mut line = vec![];
        write_flow(&mut line, &flow).expect("write");
        let header = String::from_utf8_lossy(&line).lines().next().unwrap_or_default().to_owned();
        assert_eq!(header.split_whitespace().nth(2), Some("vps1"), "{header}");
        let json: serde_json::Value = serde_json::from_str(&json(&flow).expect("json")).expect("v");
        assert_eq!(json["hosts"], serde_json::json!(["vps1"]));
    }
}
