//! `steward events import FILE`: an export of the stream and the state buckets (as a backup
//! holds it, `steward-backup extract <id> events`) brought onto a fresh NATS, so `steward
//! audit` on a rebuilt host shows the old history.
//!
//! Every line is checked before anything is published (a bad one refuses the whole file);
//! each message keeps its `Nats-Msg-Id`, so importing again, or a file overlapping what the
//! stream holds, skips what is there; a value is written only where its key is empty. The
//! import runs before `steward setup` creates the services' consumers (it refuses a stream
//! that has them), so no service takes an old event for a new one. At the hub of the
//! leaf-node topology it imports the centre's own events and records only: a host's would
//! cross to the host's leaf, whose agents' consumers run, and the hub's sources bring every
//! host's history back from its leaf anyway (`steward_bus::Bus::import`, docs/runbooks.md
//! "A rebuilt centre under leaf nodes").

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use steward_bus::{Bus, ExportRecord};
use steward_events::Service;

use crate::Connection;

/// The longest line read: an event is at most 1 MiB, and JSON escaping can double it.
const MAX_LINE: u64 = 3 << 20;
/// Problems listed before the rest are counted.
const SHOWN: usize = 20;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export (`-` for stdin), e.g. from `steward-backup extract latest events`.
    file: PathBuf,
}

pub async fn run(args: ImportArgs, conn: &Connection) -> anyhow::Result<()> {
    let records = if args.file.as_os_str() == "-" {
        read(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        read(file)
    }?;
    let mut env = conn.env();
    let cfg = conn.read(&mut env);
    env.finish()?;
    let url = steward_events::redact_url(&cfg.url);
    // Not `connect`: on a fresh server the stream does not exist yet; the import creates it.
    let bus = Bus::open(cfg, Service::Cli.binary())
        .await
        .with_context(|| format!("cannot reach the bus at {url}"))?;
    let done = bus.import(&records).await?;
    #[allow(clippy::print_stdout)]
    {
        println!(
            "imported {} events ({} already in the stream, skipped) and {} values ({} keys held one already, kept)",
            done.messages, done.duplicates, done.values, done.values_kept
        );
        for line in left_out(&done, &bus.config().hosts) {
            println!("{line}");
        }
        if done.left_to_hub > 0 {
            println!(
                "left out on this host's leaf: {} of its events; the hub holds them, and published here they would reach it again as new (docs/runbooks.md, \"A rebuilt host under leaf nodes\")",
                done.left_to_hub
            );
        }
    }
    Ok(())
}

/// What the import left out at the hub, as lines for the operator (none when nothing was):
/// counted whether or not a host is named (a key of a host's record need not name it), and
/// the named hosts not in `known` (`STEWARD_HOSTS`).
fn left_out(done: &steward_bus::Imported, known: &[String]) -> Vec<String> {
    if done.left_to_leaves == 0 && done.values_left_to_leaves == 0 {
        return vec![];
    }
    let hosts: Vec<&str> = done.hosts_left.iter().map(String::as_str).collect();
    let named = if hosts.is_empty() { "none named".to_owned() } else { hosts.join(", ") };
    let mut lines = vec![format!(
        "left out at the hub: {} events and {} values of hosts ({named}); a host's history comes back from its leaf through the hub's sources, and published here it would reach the host's agents as new (docs/runbooks.md, \"A rebuilt centre under leaf nodes\")",
        done.left_to_leaves, done.values_left_to_leaves,
    )];
    let unknown: Vec<&str> =
        hosts.iter().copied().filter(|h| !known.iter().any(|k| k == h)).collect();
    if !unknown.is_empty() {
        lines.push(format!(
            "not hosts of this installation (STEWARD_HOSTS): {}; the export is not this centre's, or names hosts since removed",
            unknown.join(", ")
        ));
    }
    lines
}

/// Parses every line; refuses the file with the first problems by line number.
fn read(input: impl Read) -> anyhow::Result<Vec<ExportRecord>> {
    let mut reader = BufReader::new(input);
    let mut records = vec![];
    let mut problems = vec![];
    let mut line = Vec::new();
    for number in 1u64.. {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .context("cannot read the export")?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            anyhow::bail!(
                "refused, nothing was imported: line {number} is longer than {MAX_LINE} bytes"
            );
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<ExportRecord>(&line) {
            Ok(record) => records.push(record),
            Err(e) => problems.push(format!("line {number}: {e}")),
        }
    }
    if records.is_empty() && problems.is_empty() {
        anyhow::bail!("refused: the export is empty");
    }
    if !problems.is_empty() {
        let more = problems.len().saturating_sub(SHOWN);
        problems.truncate(SHOWN);
        if more > 0 {
            problems.push(format!("and {more} more"));
        }
        anyhow::bail!(
            "refused, nothing was imported: not a Steward export: {}",
            problems.join("; ")
        );
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_hub_left_out_is_said_even_with_no_host_named() {
        let known = vec!["vps-a".to_owned()];
        assert!(left_out(&steward_bus::Imported::default(), &known).is_empty());
        // A value of a host's bucket whose key names no host: left out, and said so.
        let keyless = steward_bus::Imported { values_left_to_leaves: 1, ..Default::default() };
        let lines = left_out(&keyless, &known);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0]
            .starts_with("left out at the hub: 0 events and 1 values of hosts (none named)"));
        let named = steward_bus::Imported {
            left_to_leaves: 2,
            hosts_left: ["vps-a".to_owned(), "vps-z".to_owned()].into(),
            ..Default::default()
        };
        let lines = left_out(&named, &known);
        assert!(lines[0].contains("2 events and 0 values of hosts (vps-a, vps-z)"), "{lines:?}");
        assert!(lines[1].starts_with("not hosts of this installation (STEWARD_HOSTS): vps-z;"));
    }
}
