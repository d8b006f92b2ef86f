//! `steward status`: every watched container, its policy, running and newest digest, from the
//! watcher's records on the bus (the CLI needs no Docker access).

use std::io::Write;

use steward_bus::StateStore;
use steward_events::records::{WatchRecord, WATCH_BUCKET};

use crate::Connection;

pub async fn run(conn: &Connection, json: bool, host: Option<&str>) -> anyhow::Result<()> {
    let bus = conn.bus().await?;
    // Read-only: the bucket is the watcher's. None: nothing was ever checked.
    let store = StateStore::<WatchRecord>::open_existing(&bus, WATCH_BUCKET).await?;
    let mut records = vec![];
    if let Some(store) = &store {
        for key in store.keys().await? {
            if let Some(record) = store.get(&key).await? {
                let mut r = record.value;
                if bus.config().routes_by_host() {
                    // The key says whose it is (only that host's watcher may write it).
                    r.host = bus.config().host_of_key(&key).map(str::to_owned);
                }
                if crate::hosts::shown(host, r.host.as_deref()) {
                    records.push(r);
                }
            }
        }
    }
    records.sort_by(|a, b| (&a.container, &a.host).cmp(&(&b.container, &b.host)));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !json {
        writeln!(
            out,
            "{:<24} {:<16} {:<10} {:<13} {:<13} {:<20} NOTE",
            "CONTAINER", "HOST", "POLICY", "RUNNING", "NEWEST", "CHECKED (UTC)"
        )?;
    }
    for r in records {
        if json {
            writeln!(out, "{}", serde_json::to_string(&r)?)?;
            continue;
        }
        let short = |d: &Option<steward_events::Digest>| {
            d.as_ref().map_or("-".to_owned(), |d| d.short().to_owned())
        };
        let note = match (&r.last_error, &r.newest_digest) {
            (Some(e), _) => format!("last check failed: {e}"),
            (None, Some(newest)) if r.running_digest.as_ref() != Some(newest) => {
                match &r.newest_tag {
                    Some(tag) => format!("update available: {tag}"),
                    None => "update available".to_owned(),
                }
            }
            _ => "up to date".to_owned(),
        };
        let checked = crate::when::seconds(r.checked_at);
        writeln!(
            out,
            "{:<24} {:<16} {:<10} {:<13} {:<13} {:<20} {note}",
            r.container,
            crate::hosts::column(r.host.as_deref()),
            r.policy,
            short(&r.running_digest),
            short(&r.newest_digest),
            checked
        )?;
    }
    out.flush()?;
    Ok(())
}
