//! `steward rollback CONTAINER`: the updater brings back the image the container ran before
//! its last successful update, through the same backup, swap and health gate as an update
//! (and puts the container back as it was when the old image fails its gate). The CLI only
//! asks (`rollback.requested`) and prints the outcome of the request's flow.

use std::time::Duration;

use anyhow::bail;
use steward_events::{Digest, EventData, RollbackRequested};

use crate::{backups, who, Connection};

/// The outcomes of a rollback's flow: refused before anything was touched, or the update
/// flow's terminal events.
const OUTCOMES: [&str; 4] =
    ["update.succeeded", "update.rolled_back", "update.failed", "rollback.refused"];

/// Asks for the rollback and waits for its outcome.
pub async fn run(
    conn: &Connection,
    container: String,
    to: Option<String>,
    wait: Duration,
) -> anyhow::Result<()> {
    let to_digest = match to {
        Some(d) => Some(Digest::parse(&d)?),
        None => None,
    };
    // Under host routing, to the updater of the host the container runs on.
    let host = crate::hosts::of_container(conn, &container).await?;
    let data = RollbackRequested { container, requested_by: who(), to_digest };
    let outcome =
        backups::request(conn, host.as_deref(), data, &OUTCOMES, wait, "rolling back").await?;
    match outcome.data {
        EventData::UpdateSucceeded(s) => {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "rolled back {} to {} (was {}) in {:.1}s; health gate passed",
                    s.container,
                    s.to_digest.short(),
                    s.from_digest.short(),
                    // Millisecond counts far below f64's exact range.
                    s.duration_ms as f64 / 1000.0
                );
            }
            Ok(())
        }
        EventData::UpdateRolledBack(r) => {
            let still = match r.old_healthy {
                Some(false) => format!(
                    "; the container it ran is NOT healthy either: {}",
                    r.old_reason.as_deref().unwrap_or("no reason given")
                ),
                _ => String::new(),
            };
            let reason = format!(
                "{} failed its health gate ({}); {} runs {} again{still}",
                r.to_digest.short(),
                r.reason,
                r.container,
                r.from_digest.short()
            );
            backups::failed("rollback UNDONE", &reason, &r.log_tail)
        }
        EventData::UpdateFailed(f) => {
            backups::failed("rollback FAILED (nothing was changed)", &f.reason, &f.log_tail)
        }
        EventData::RollbackRefused(r) => bail!("rollback refused: {}", r.reason),
        _ => bail!("unexpected outcome {}", outcome.event_type()),
    }
}
