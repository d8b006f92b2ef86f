//! The one outage the bus cannot report: NATS itself. The outbox, the stream and every other
//! service's events live there, so when the notifier's own connection has been down for
//! `STEWARD_NOTIFY_BUS_DOWN_AFTER`, it mails (and posts) directly, once, and once more when
//! the connection is back. Nothing is recorded (there is nowhere to record it): a notifier
//! restarted during the outage tells it again after the same delay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_runtime::Context;
use time::OffsetDateTime;

use crate::channels::Channel;
use crate::message::{Item, Severity, Templates};

/// How often the connection is looked at.
const TICK: Duration = Duration::from_secs(1);
/// Wait before trying again after a channel failed.
const RETRY: Duration = Duration::from_secs(30);

/// Watches the notifier's NATS connection.
pub struct BusWatch {
    /// Where to tell it.
    pub channels: Vec<Channel>,
    /// Templates.
    pub templates: Arc<Templates>,
    /// Down this long before it is told.
    pub after: Duration,
}

fn item(
    severity: Severity,
    kind: &'static str,
    headline: String,
    facts: Vec<(String, String)>,
    next: &str,
    host: &str,
) -> Item {
    Item {
        severity,
        kind,
        told: kind,
        id: uuid::Uuid::now_v7(),
        headline,
        container: None,
        when: OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        host: host.to_owned(),
        facts,
        log_tail: vec![],
        next: next.to_owned(),
        update_id: None,
        deploy_id: None,
        approval_url: None,
        needs_decision: false,
        release_notes: None,
    }
}

impl BusWatch {
    /// Runs until shutdown.
    pub async fn run(self, ctx: Context) {
        let source = ctx.source();
        let host = source.split_once('/').map_or(source.as_str(), |(_, h)| h).to_owned();
        // (since, as wall time) of the current outage; whether it was told; when to try again.
        let mut down: Option<(Instant, OffsetDateTime)> = None;
        let mut told = false;
        let mut not_before = Instant::now();
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            let connected = ctx.bus.is_connected();
            match (connected, down) {
                (true, None) => {}
                (true, Some((since, at))) => {
                    if told {
                        let headline = "Steward reaches NATS again".to_owned();
                        let facts = vec![
                            ("Down since".to_owned(), at.to_string()),
                            ("Down for".to_owned(), format!("{} s", since.elapsed().as_secs())),
                        ];
                        let next = "Nothing to do: queued notifications follow, and each service took up its work where it stopped.";
                        let m = item(Severity::Info, "bus.recovered", headline, facts, next, &host);
                        // Tried once: queued notifications follow anyway.
                        self.tell(m).await;
                    }
                    down = None;
                    told = false;
                }
                (false, None) => down = Some((Instant::now(), OffsetDateTime::now_utc())),
                (false, Some((since, at))) => {
                    if told || since.elapsed() < self.after || Instant::now() < not_before {
                        continue;
                    }
                    let headline = "Steward cannot reach NATS".to_owned();
                    let facts = vec![
                        ("Since".to_owned(), at.to_string()),
                        ("Server".to_owned(), ctx.bus.config().url.clone()),
                    ];
                    let next = "No update, backup, health report or mail through the bus happens until it is back. On the host: `docker compose ps nats` and `docker compose logs nats` (runbook: NATS was restarted or lost its connection). A notice follows when it is back.";
                    let m =
                        item(Severity::Critical, "bus.unreachable", headline, facts, next, &host);
                    if self.tell(m).await {
                        told = true;
                    } else {
                        not_before = Instant::now() + RETRY;
                    }
                }
            }
        }
    }

    /// Sends `item` on every channel; whether one took it.
    async fn tell(&self, item: Item) -> bool {
        let message = match self.templates.render(vec![item]) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "cannot render the NATS notice");
                return false;
            }
        };
        let message_id = format!("<{}.bus@steward>", uuid::Uuid::now_v7());
        crate::channels::tell_all(&self.channels, &message, &message_id, "NATS notice").await
    }
}
