//! `steward deploy list|approve|reject`: deployments from git (issue 21). The list reads the
//! deployer's `DEPLOYS` bucket (each environment's deployment, and the push waiting for it);
//! an approval or a rejection is an event (`deploy.approved`, `deploy.rejected`), in the audit
//! trail, that the deployer acts on.

use std::io::Write;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use steward_bus::StateStore;
use steward_events::records::{DeployRecord, DeployStep, Outboxed, QueuedDeploy, DEPLOY_BUCKET};
use steward_events::{DeployApproved, DeployRejected, Event, EventData, Service};

use crate::{who, Connection};

/// `steward deploy ...`
#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Each environment's deployment (the one in hand, or the last) and the push waiting for it.
    List {
        /// One JSON record per line (the `DEPLOYS` records, then the waiting pushes).
        #[arg(long)]
        json: bool,
    },
    /// Approve a deployment waiting for approval: its environment, its id, or a unique prefix
    /// or suffix of the id (at least 4 characters).
    Approve {
        /// The environment or the deployment id, as `steward deploy list` shows them.
        id: String,
    },
    /// Reject a deployment waiting for approval: it ends with `deploy.failed`, nothing touched,
    /// and the next push waiting for the environment goes on.
    Reject {
        /// The environment or the deployment id, as `steward deploy list` shows them.
        id: String,
        /// Why (in the audit trail and the mail).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs a `steward deploy` command.
pub async fn run(cmd: DeployCommand, conn: &Connection) -> anyhow::Result<()> {
    match cmd {
        DeployCommand::List { json } => list(conn, json).await,
        DeployCommand::Approve { id } => approve(conn, &id).await,
        DeployCommand::Reject { id, reason } => reject(conn, &id, reason).await,
    }
}

/// The deployments and waiting pushes, by environment.
async fn read(
    conn: &Connection,
) -> anyhow::Result<(steward_bus::Bus, Vec<DeployRecord>, Vec<QueuedDeploy>)> {
    let bus = conn.bus().await?;
    let (mut records, mut waiting) = (vec![], vec![]);
    let Some(deploys) = StateStore::<DeployRecord>::open_existing(&bus, DEPLOY_BUCKET).await?
    else {
        return Ok((bus, records, waiting));
    };
    let slots = StateStore::<QueuedDeploy>::open_existing(&bus, DEPLOY_BUCKET)
        .await?
        .context("the DEPLOYS bucket went away")?;
    let routed = bus.config().routes_by_host();
    for key in deploys.keys().await? {
        // Under host routing a deployer's keys are `<host>.<key>`: judge the key's own shape.
        let own = if routed { key.split_once('.').map_or(key.as_str(), |(_, k)| k) } else { &key };
        if DeployRecord::is_key(own) {
            records.extend(deploys.get(&key).await?.map(|v| v.value));
        } else if QueuedDeploy::is_key(own) {
            waiting.extend(slots.get(&key).await?.map(|v| v.value));
        }
    }
    records.sort_by(|a, b| a.change.environment.cmp(&b.change.environment));
    waiting.sort_by(|a, b| a.environment.cmp(&b.environment));
    Ok((bus, records, waiting))
}

/// The commit a waiting push asks for.
fn waiting_commit(q: &QueuedDeploy) -> &str {
    match &q.request.data {
        EventData::DeployRequested(r) => r.change.short_commit(),
        _ => "?",
    }
}

async fn list(conn: &Connection, json: bool) -> anyhow::Result<()> {
    let (_, records, waiting) = read(conn).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        for r in &records {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        for q in &waiting {
            writeln!(out, "{}", serde_json::to_string(q)?)?;
        }
        out.flush()?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<36}  {:<15} {:<10} {:<10} {:<10} REASON",
        "ENVIRONMENT", "ID", "STEP", "COMMIT", "RUNNING", "WAITING"
    )?;
    for r in &records {
        let env = &r.change.environment;
        let next = waiting.iter().find(|q| q.environment == *env).map(waiting_commit);
        writeln!(
            out,
            "{:<12} {:<36}  {:<15} {:<10} {:<10} {:<10} {}",
            env,
            r.deploy_id,
            r.step.name(),
            r.change.short_commit(),
            r.now_running().map(|c| c.get(..10).unwrap_or(c)).unwrap_or("-"),
            next.unwrap_or("-"),
            r.reason.as_deref().unwrap_or("")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The deployment `id` names (environment, id, or a unique prefix or suffix of the id), if it
/// waits for approval.
fn pending<'a>(records: &'a [DeployRecord], id: &str) -> anyhow::Result<&'a DeployRecord> {
    let id = id.to_ascii_lowercase();
    let matches: Vec<&DeployRecord> = match records.iter().find(|r| r.change.environment == id) {
        Some(r) => vec![r],
        None if id.len() < 4 => {
            bail!("{id:?} is no environment and too short for an id (see `steward deploy list`)")
        }
        None => records
            .iter()
            .filter(|r| {
                let full = r.deploy_id.to_string();
                full.starts_with(&id) || full.ends_with(&id)
            })
            .collect(),
    };
    match matches.as_slice() {
        [] => bail!("no deployment {id} (see `steward deploy list`)"),
        [r] if r.step == DeployStep::Pending => Ok(r),
        [r] => bail!(
            "deployment {} of {} to {} is not waiting for approval (it is {})",
            r.deploy_id,
            r.change.short_commit(),
            r.change.environment,
            r.step.name()
        ),
        _ => bail!("{} deployments match {id}: give more characters", matches.len()),
    }
}

/// Publishes a human's decision on the deployment `id` names (it must wait for approval), in
/// its flow and its trace; the decided record.
async fn decide(
    conn: &Connection,
    id: &str,
    decision: impl FnOnce(&DeployRecord) -> EventData,
) -> anyhow::Result<DeployRecord> {
    let (bus, records, _) = read(conn).await?;
    let r = pending(&records, id)?;
    let event = Event::new(steward_settings::event_source(Service::Cli), decision(r))
        .with_correlation(r.correlation_id)
        .with_trace(r.trace.clone())
        .with_host(crate::hosts::target(conn, bus.config(), None)?);
    bus.publish(&event).await.with_context(|| format!("cannot publish {}", event.event_type()))?;
    Ok(r.clone())
}

async fn approve(conn: &Connection, id: &str) -> anyhow::Result<()> {
    let r =
        decide(conn, id, |r| DeployApproved { deploy_id: r.deploy_id, by: who() }.into()).await?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "approved deployment {} of {} to {} ({})",
            r.deploy_id,
            r.change.short_commit(),
            r.change.environment,
            r.change.message.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

async fn reject(conn: &Connection, id: &str, reason: Option<String>) -> anyhow::Result<()> {
    let reason = reason.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let r =
        decide(conn, id, |r| DeployRejected { deploy_id: r.deploy_id, by: who(), reason }.into())
            .await?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "rejected deployment {} of {} to {}; it ends with deploy.failed, nothing changed",
            r.deploy_id,
            r.change.short_commit(),
            r.change.environment
        );
    }
    Ok(())
}
