//! `steward updates`, `steward approve ID`, `steward reject ID`: manual updates.
//! Approvals are events (`update.approved` / `update.rejected`), so they are in the audit
//! trail; the updater acts on them.

use std::io::Write;

use anyhow::bail;
use steward_bus::StateStore;
use steward_events::records::{UpdateRecord, UpdateStep, UPDATE_BUCKET};
use steward_events::{Event, Service, UpdateApproved, UpdateRejected};

use crate::{who, Connection};

async fn records(conn: &Connection) -> anyhow::Result<(steward_bus::Bus, Vec<UpdateRecord>)> {
    let bus = conn.bus().await?;
    let mut out = vec![];
    let Some(store) = StateStore::<UpdateRecord>::open_existing(&bus, UPDATE_BUCKET).await? else {
        return Ok((bus, out));
    };
    for key in store.keys().await? {
        if let Some(v) = store.get(&key).await? {
            let mut r = v.value;
            if bus.config().routes_by_host() {
                // The key says whose it is (only that host's updater may write it).
                r.host = bus.config().host_of_key(&key).map(str::to_owned);
            }
            out.push(r);
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    Ok((bus, out))
}

/// Lists updates in progress or waiting (all with `all`).
pub async fn list(
    conn: &Connection,
    all: bool,
    json: bool,
    host: Option<&str>,
) -> anyhow::Result<()> {
    let (_, records) = records(conn).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !json {
        writeln!(
            out,
            "{:<36}  {:<24} {:<16} {:<12} {:<27} REASON",
            "ID", "CONTAINER", "HOST", "STEP", "FROM -> TO"
        )?;
    }
    let shown = |r: &&UpdateRecord| crate::hosts::shown(host, r.host.as_deref());
    for r in records.iter().filter(|r| all || !r.step.is_terminal()).filter(shown) {
        if json {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
            continue;
        }
        let step = serde_json::to_value(r.step)?.as_str().unwrap_or_default().to_owned();
        let change = format!(
            "{} -> {}{}",
            r.from_digest.short(),
            r.to_digest.short(),
            r.new_tag.as_ref().map(|t| format!(" ({t})")).unwrap_or_default()
        );
        writeln!(
            out,
            "{:<36}  {:<24} {:<16} {:<12} {:<27} {}",
            r.update_id,
            r.container,
            crate::hosts::column(r.host.as_deref()),
            step,
            change,
            r.reason.as_deref().unwrap_or("")
        )?;
    }
    out.flush()?;
    Ok(())
}

/// The pending update an id names: the whole id, or a unique prefix or suffix of it.
fn pending<'a>(records: &'a [UpdateRecord], id: &str) -> anyhow::Result<&'a UpdateRecord> {
    let id = id.to_ascii_lowercase();
    if id.len() < 4 {
        bail!("update id {id:?} is too short: give at least 4 characters (see `steward updates`)");
    }
    // Ids are UUIDv7: their leading digits are a timestamp that updates found together share,
    // so the random tail is usually the handier short form.
    let matches: Vec<&UpdateRecord> = records
        .iter()
        .filter(|r| {
            let full = r.update_id.to_string();
            full.starts_with(&id) || full.ends_with(&id)
        })
        .collect();
    match matches.as_slice() {
        [] => bail!("no update {id} (see `steward updates --all`)"),
        [r] if r.step == UpdateStep::Pending => Ok(r),
        [r] => bail!(
            "update {} of {} is not waiting for approval (it is {:?})",
            r.update_id,
            r.container,
            r.step
        ),
        _ => bail!("{} updates match {id}: give more characters", matches.len()),
    }
}

/// Approves (or rejects) a pending update.
pub async fn decide(
    conn: &Connection,
    id: &str,
    approve: bool,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let (bus, records) = records(conn).await?;
    let r = pending(&records, id)?;
    let source = steward_settings::event_source(Service::Cli);
    let by = who();
    let event = if approve {
        Event::new(source, UpdateApproved { update_id: r.update_id, by })
    } else {
        Event::new(source, UpdateRejected { update_id: r.update_id, by, reason })
    }
    .with_correlation(r.correlation_id)
    .with_trace(r.trace.clone())
    // Under host routing, to the updater of the update's host, and only to it.
    .with_host(crate::hosts::target(conn, bus.config(), r.host.as_deref())?);
    match (bus.publish(&event).await, &event.host) {
        (Ok(_), _) => {}
        // Unacknowledged: under host routing the host's subjects may be stored on its own
        // server (a leaf node), unreachable while its link is down. Unconfirmed is not proven
        // undelivered (an acknowledgement can be lost), so the operator is told how to see
        // which; a repeat is safe, as the updater acts only on a decision for a pending update.
        (Err(e @ steward_bus::BusError::PublishTimeout { .. }), Some(host)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "host {host} did not confirm the decision (is its server unreachable from here, its link down?): it is most likely not delivered; `steward updates` shows whether the update still waits, and running this again is safe: the updater acts on one decision and ignores a repeat"
            )))
        }
        (Err(e), _) => return Err(anyhow::Error::new(e).context("cannot publish the decision")),
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{} update {} of {} ({} -> {})",
            if approve { "approved" } else { "rejected" },
            r.update_id,
            r.container,
            r.from_digest.short(),
            r.to_digest.short()
        );
    }
    Ok(())
}
