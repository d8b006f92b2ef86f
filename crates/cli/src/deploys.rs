//! `steward deploy list|approve|reject` and `steward deploy ENV COMMIT`: deployments from git
//! (issue 21). The list reads the deployer's `DEPLOYS` bucket (each environment's deployment,
//! and the push waiting for it); an approval, a rejection or a pin is an event
//! (`deploy.approved`, `deploy.rejected`, `deploy.pin_requested`), in the audit trail, that the
//! deployer acts on. Under host routing each goes to the host whose deployer keeps the
//! environment's record (the record's key is `<host>.<environment>`).

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use steward_bus::StateStore;
use steward_events::records::{DeployRecord, DeployStep, Outboxed, QueuedDeploy, DEPLOY_BUCKET};
use steward_events::{
    DeployApproved, DeployPinRequested, DeployRejected, Event, EventData, Service,
};

use crate::{who, Connection};

/// The outcomes of a pin's flow (`deploy.pending`: it waits for approval).
const PIN_OUTCOMES: [&str; 4] =
    ["deploy.pending", "deploy.succeeded", "deploy.rolled_back", "deploy.failed"];

/// `steward deploy ...`: a subcommand, or `ENV COMMIT` to pin an environment to a commit.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    cmd: Option<DeployCommand>,
    /// Pin ENV to COMMIT (a rollback to any earlier commit of its branch; the branch's head
    /// ends a pin): through the environment's policy like a push (a manual environment waits
    /// for approval); while the pin holds, pushes are refused with deploy.failed.
    #[arg(value_name = "ENV", requires = "commit")]
    environment: Option<String>,
    /// The full commit id (`git rev-parse COMMIT`).
    #[arg(value_name = "COMMIT")]
    commit: Option<String>,
    /// How long to wait for the outcome: the repository's test command (up to
    /// STEWARD_DEPLOY_TEST_TIMEOUT, 10 minutes by default) and a backup may come first.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    wait: Duration,
}

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
    /// Reject a deployment waiting for approval or for its deployment window: it ends with
    /// `deploy.failed`, nothing touched, and the next push waiting for the environment goes on.
    Reject {
        /// The environment or the deployment id, as `steward deploy list` shows them.
        id: String,
        /// Why (in the audit trail and the mail).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs a `steward deploy` command.
pub async fn run(args: DeployArgs, conn: &Connection) -> anyhow::Result<()> {
    match (args.cmd, args.environment, args.commit) {
        (Some(DeployCommand::List { json }), ..) => list(conn, json).await,
        (Some(DeployCommand::Approve { id }), ..) => approve(conn, &id).await,
        (Some(DeployCommand::Reject { id, reason }), ..) => reject(conn, &id, reason).await,
        (None, Some(env), Some(commit)) => pin(conn, &env, &commit, args.wait).await,
        _ => bail!("give a command (list, approve, reject) or ENV COMMIT; see --help"),
    }
}

/// Pins `env` to `commit` and prints the outcome.
async fn pin(conn: &Connection, env: &str, commit: &str, wait: Duration) -> anyhow::Result<()> {
    let commit = commit.trim().to_ascii_lowercase();
    let hex = commit.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex || !(commit.len() == 40 || commit.len() == 64) {
        bail!("{commit:?} is not a full commit id: give all its digits (`git rev-parse {commit}`)");
    }
    let (_, records, _) = read(conn).await?;
    let mine: Vec<&(Option<String>, DeployRecord)> =
        records.iter().filter(|(_, r)| r.change.environment == env).collect();
    let host = host_of(conn, &mine)?;
    // The deployer takes a request no later than the environment's last one for a replay
    // and drops it: with this machine's clock behind the one that stamped that request, the
    // pin would wait out `--wait` unanswered.
    let now = time::OffsetDateTime::now_utc();
    let latest = mine.iter().filter(|(h, _)| *h == host).map(|(_, r)| r.requested_at).max();
    if let Some(latest) = latest.filter(|latest| now <= *latest) {
        bail!(
            "this machine's clock ({now}) is behind the last request for {env} ({latest}): the deployer would take the pin for an old one and ignore it; set the clock right (NTP) and try again"
        );
    }
    let data = DeployPinRequested { environment: env.to_owned(), commit, by: who() };
    let outcome =
        crate::backups::request(conn, host.as_deref(), data, &PIN_OUTCOMES, wait, "deploying")
            .await?;
    #[allow(clippy::print_stdout)]
    match outcome.data {
        EventData::DeployPending(p) => {
            println!(
                "deployment {} of {} to {} waits for approval (`steward deploy approve {}`)",
                p.deploy_id,
                p.change.short_commit(),
                p.change.environment,
                p.change.environment
            );
            Ok(())
        }
        EventData::DeploySucceeded(s) => {
            println!(
                "{} runs {} ({}); services recreated: {}",
                s.change.environment,
                s.change.short_commit(),
                s.change.message.as_deref().unwrap_or(""),
                if s.services.is_empty() { "none".to_owned() } else { s.services.join(", ") }
            );
            Ok(())
        }
        EventData::DeployRolledBack(r) => bail!(
            "{} failed its health gate ({}); {} runs {} again",
            r.change.short_commit(),
            r.reason,
            r.change.environment,
            r.previous_commit.as_deref().unwrap_or("nothing")
        ),
        EventData::DeployFailed(f) => {
            bail!("not deployed, nothing touched: {}", f.reason)
        }
        _ => bail!("unexpected outcome {}", outcome.event_type()),
    }
}

/// The deployments and waiting pushes, by environment.
/// Under host routing each record comes with its host (its key's first part).
async fn read(
    conn: &Connection,
) -> anyhow::Result<(steward_bus::Bus, Vec<(Option<String>, DeployRecord)>, Vec<QueuedDeploy>)> {
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
        let (host, own) = match key.split_once('.').filter(|_| routed) {
            Some((host, own)) => (Some(host.to_owned()), own),
            None => (None, key.as_str()),
        };
        if DeployRecord::is_key(own) {
            records.extend(deploys.get(&key).await?.map(|v| (host, v.value)));
        } else if QueuedDeploy::is_key(own) {
            waiting.extend(slots.get(&key).await?.map(|v| v.value));
        }
    }
    records
        .sort_by(|(ha, a), (hb, b)| (&a.change.environment, ha).cmp(&(&b.change.environment, hb)));
    waiting.sort_by(|a, b| a.environment.cmp(&b.environment));
    Ok((bus, records, waiting))
}

/// The commit a waiting push asks for.
fn waiting_commit(q: &QueuedDeploy) -> &str {
    match &q.request.data {
        EventData::DeployRequested(r) => r.change.short_commit(),
        EventData::DeployPinRequested(p) => p.commit.get(..10).unwrap_or(&p.commit),
        _ => "?",
    }
}

async fn list(conn: &Connection, json: bool) -> anyhow::Result<()> {
    let (_, records, waiting) = read(conn).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        for (_, r) in &records {
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
    for (_, r) in &records {
        let env = &r.change.environment;
        let pinned =
            r.pinned_by.as_deref().filter(|_| r.is_pinned()).map(|by| format!("pinned by {by}"));
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
            pinned.as_deref().or(r.reason.as_deref()).unwrap_or("")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Under host routing, the host of the records an environment or id names: theirs when they
/// agree, else `STEWARD_HOST` when it is one of theirs (the same environment on several
/// hosts), else an error naming them; none found: the request's usual target.
fn host_of(
    conn: &Connection,
    found: &[&(Option<String>, DeployRecord)],
) -> anyhow::Result<Option<String>> {
    let mut hosts: Vec<&str> = found.iter().filter_map(|(h, _)| h.as_deref()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    match hosts.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).to_owned())),
        several => {
            let mut env = conn.env();
            let named = env.host();
            env.finish()?;
            match named.filter(|n| several.contains(&n.as_str())) {
                Some(n) => Ok(Some(n)),
                None => bail!(
                    "the environment is deployed on {}: name one with STEWARD_HOST=<host>",
                    several.join(", ")
                ),
            }
        }
    }
}

/// The deployment `id` names (environment, id, or a unique prefix or suffix of the id), if it
/// waits for approval (or, for a rejection, `or_window`, for its deployment window), and the
/// host whose deployer keeps it (under host routing).
fn pending<'a>(
    conn: &Connection,
    records: &'a [(Option<String>, DeployRecord)],
    id: &str,
    or_window: bool,
) -> anyhow::Result<(Option<String>, &'a DeployRecord)> {
    let id = id.to_ascii_lowercase();
    let by_env: Vec<&(Option<String>, DeployRecord)> =
        records.iter().filter(|(_, r)| r.change.environment == id).collect();
    let matches: Vec<&(Option<String>, DeployRecord)> = if !by_env.is_empty() {
        let host = host_of(conn, &by_env)?;
        by_env.into_iter().filter(|(h, _)| host.is_none() || *h == host).take(1).collect()
    } else if id.len() < 4 {
        bail!("{id:?} is no environment and too short for an id (see `steward deploy list`)")
    } else {
        records
            .iter()
            .filter(|(_, r)| {
                let full = r.deploy_id.to_string();
                full.starts_with(&id) || full.ends_with(&id)
            })
            .collect()
    };
    match matches.as_slice() {
        [] => bail!("no deployment {id} (see `steward deploy list`)"),
        [(h, r)] if or_window && r.step == DeployStep::Deferred => Ok((h.clone(), r)),
        [(_, r)] if r.step == DeployStep::Deferred => bail!(
            "deployment {} of {} to {} needs no approval: it waits for its deployment window ({}); \
             `steward deploy reject {}` cancels it, `steward deploy {} COMMIT` deploys now",
            r.deploy_id,
            r.change.short_commit(),
            r.change.environment,
            r.reason.as_deref().unwrap_or("deferred"),
            r.change.environment,
            r.change.environment
        ),
        [(_, r)] if r.step == DeployStep::Pending && r.approved_by.is_some() => bail!(
            "deployment {} of {} to {} was already approved (by {}); its test and start are under \
             way: nothing more to decide",
            r.deploy_id,
            r.change.short_commit(),
            r.change.environment,
            r.approved_by.as_deref().unwrap_or_default()
        ),
        [(h, r)] if r.step == DeployStep::Pending => Ok((h.clone(), r)),
        [(_, r)] => bail!(
            "deployment {} of {} to {} is not waiting for approval (it is {})",
            r.deploy_id,
            r.change.short_commit(),
            r.change.environment,
            r.step.name()
        ),
        _ => bail!("{} deployments match {id}: give more characters", matches.len()),
    }
}

/// Publishes a human's decision on the deployment `id` names (it must wait for approval, or
/// `or_window` for its window), in its flow and its trace, to the host whose deployer keeps
/// it; the decided record.
async fn decide(
    conn: &Connection,
    id: &str,
    or_window: bool,
    decision: impl FnOnce(&DeployRecord) -> EventData,
) -> anyhow::Result<DeployRecord> {
    let (bus, records, _) = read(conn).await?;
    let (host, r) = pending(conn, &records, id, or_window)?;
    let event = Event::new(steward_settings::event_source(Service::Cli), decision(r))
        .with_correlation(r.correlation_id)
        .with_trace(r.trace.clone())
        .with_host(crate::hosts::target(conn, bus.config(), host.as_deref())?);
    bus.publish(&event).await.with_context(|| format!("cannot publish {}", event.event_type()))?;
    Ok(r.clone())
}

async fn approve(conn: &Connection, id: &str) -> anyhow::Result<()> {
    let r =
        decide(conn, id, false, |r| DeployApproved { deploy_id: r.deploy_id, by: who() }.into())
            .await?;
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
    let r = decide(conn, id, true, |r| {
        DeployRejected { deploy_id: r.deploy_id, by: who(), reason }.into()
    })
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
