//! `steward events import FILE`: an export of the stream and the state buckets (as a backup
//! holds it, `steward-backup extract <id> events`) brought onto a fresh NATS, so `steward
//! audit` on a rebuilt host shows the old history.
//!
//! Every line is checked before anything is published (a bad one refuses the whole file);
//! each message keeps its `Nats-Msg-Id`, so importing again, or a file overlapping what the
//! stream holds, skips what is there; a value is written only where its key is empty. The
//! import runs before `steward setup` creates the services' consumers (it refuses a stream
//! that has them), so no service takes an old event for a new one.

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
    }
    Ok(())
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
