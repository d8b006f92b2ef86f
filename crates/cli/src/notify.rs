//! `steward notify test`: a test message through every channel the notifier has, and what
//! each channel answered.

use std::time::Duration;

use anyhow::bail;
use steward_events::{Event, EventData, NotifyTestRequested, Service};

use crate::Connection;

/// How long other channels' answers are waited for once the first has come.
const OTHER_CHANNELS: Duration = Duration::from_secs(5);

/// Asks for the test and prints each channel's outcome; fails when none answered within
/// `wait` or when any channel failed.
pub async fn test(conn: &Connection, wait: Duration) -> anyhow::Result<()> {
    let bus = conn.bus().await?;
    let event = Event::new(
        steward_settings::event_source(Service::Cli),
        NotifyTestRequested { by: crate::who() },
    );
    let mut follow = crate::backups::follow(&bus, &["notify.sent", "notify.failed"]).await?;
    bus.publish(&event).await?;
    eprintln!("test notification requested ({})", event.id);
    let mut answers: Vec<Event> = vec![];
    let mut until = tokio::time::Instant::now() + wait;
    loop {
        let next = tokio::time::timeout_at(until, follow.next()).await;
        let Ok(item) = next else { break };
        let Some(item) = item else { bail!("the event stream ended") };
        let Ok(e) = item?.event else { continue };
        if e.correlation_id != event.correlation_id {
            continue;
        }
        if answers.is_empty() {
            // The first channel answered: the others are on their way or not configured.
            until = tokio::time::Instant::now() + OTHER_CHANNELS;
        }
        answers.push(e);
    }
    if answers.is_empty() {
        return Err(anyhow::anyhow!(
            "no channel answered within {}: is steward-notifier running? (`steward events tail --subject 'notify.>'`)",
            humantime::format_duration(wait)
        ));
    }
    let mut failed = 0;
    for e in &answers {
        match &e.data {
            EventData::NotifySent(s) => {
                println!("{}: sent to {} ({})", s.channel, s.recipients.join(", "), s.title)
            }
            EventData::NotifyFailed(f) => {
                failed += 1;
                let more = if f.gave_up { "gave up" } else { "still retrying" };
                println!(
                    "{}: FAILED after {} attempt(s), {more}: {}",
                    f.channel, f.attempts, f.reason
                );
            }
            _ => {}
        }
    }
    if failed > 0 {
        bail!("{failed} channel(s) could not deliver the test notification");
    }
    Ok(())
}
