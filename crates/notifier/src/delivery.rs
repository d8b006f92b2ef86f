//! The delivery loop of one channel: collects a burst, renders it, delivers it, and records
//! the outcome in the outbox and on the bus.
//!
//! - A burst: once the oldest queued entry has waited the group window (or a retry is due),
//!   everything queued goes out together: each approval request alone (its subject asks one
//!   question), everything else in one message (at most [`MAX_ITEMS`] per message).
//! - A failed attempt: the entries stay queued with exponential backoff (2 s doubling, at most
//!   [`MAX_BACKOFF`]); the first failure is published as `notify.failed` (still retrying), the
//!   last one, past the retry bound, as `notify.failed` with `gave_up`.

use std::sync::Arc;
use std::time::Duration;

use steward_bus::approval::{LinkKind, LinkReply};
use steward_bus::BusError;
use steward_events::{Event, EventData, NotifyFailed, NotifySent};
use steward_runtime::Context;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::channels::Channel;
use crate::message::{describe, describe_news, Item, Severity, Templates};
use crate::news::{self, Announcements};
use crate::outbox::{EntryState, MessageMark, Outbox, Queued};

/// Most items in one message.
pub const MAX_ITEMS: usize = 50;
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long the updater is given to answer for an approval link.
const LINK_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What one channel's loop needs.
#[derive(Clone)]
pub struct Delivery {
    /// The channel.
    pub channel: Channel,
    /// Whether its messages carry approval links (asked from the updater when rendered).
    pub approval_links: bool,
    /// Quiet hours: only critical notifications (and tests) go out during them.
    pub quiet: Option<steward_labels::Window>,
    /// The outbox.
    pub outbox: Outbox,
    /// The newer images already reported.
    pub announcements: Announcements,
    /// Templates.
    pub templates: Arc<Templates>,
    /// Burst window.
    pub window: Duration,
    /// Retry bound.
    pub retry_for: Duration,
    /// Woken when something is queued.
    pub wake: Arc<Notify>,
}

/// Whether `event` goes out during quiet hours: a critical one, or a test someone waits for.
fn passes_quiet_hours(event: &Event) -> bool {
    is_test(event) || describe(event).severity == Severity::Critical
}

fn is_test(event: &Event) -> bool {
    matches!(event.data, EventData::NotifyTestRequested(_))
}

fn backoff(attempts: u32) -> Duration {
    let secs = 2u64.saturating_mul(1u64 << attempts.min(16).saturating_sub(1));
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

impl Delivery {
    /// Runs until shutdown.
    pub async fn run(self, ctx: Context) {
        let kind = self.channel.kind().as_str();
        tracing::info!(channel = kind, "delivery loop started");
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Err(e) = self.once(&ctx).await {
                tracing::warn!(channel = kind, error = %e, "delivery round failed; trying again");
            }
        }
    }

    /// One round: deliver what is due, if anything.
    pub async fn once(&self, ctx: &Context) -> Result<(), BusError> {
        let mut queued = self.outbox.queued(self.channel.kind()).await?;
        if self.quiet.as_ref().is_some_and(|w| w.contains(chrono::Local::now().naive_local())) {
            // Held, not dropped: when the quiet hours end they are due and go out together
            // (the morning digest).
            queued.retain(|q| passes_quiet_hours(&q.event));
        }
        let now = OffsetDateTime::now_utc();
        let due = queued.iter().any(|q| {
            let e = &q.entry.value;
            if e.attempts == 0 {
                // A test the operator waits for at the terminal does not wait for a burst.
                e.queued_at + self.window <= now || is_test(&q.event)
            } else {
                e.next_attempt <= now
            }
        });
        if !due {
            return Ok(());
        }
        // Entries whose message was fixed by an earlier attempt (or by a run that died while
        // sending it) go out as that same message again.
        let (marked, queued): (Vec<Queued>, Vec<Queued>) =
            queued.into_iter().partition(|q| q.entry.value.message.is_some());
        let mut batches: Vec<Vec<Queued>> = vec![];
        for q in marked {
            let id = q.entry.value.message.as_ref().map(|m| m.message_id.clone());
            match batches
                .iter_mut()
                .find(|b| b[0].entry.value.message.as_ref().map(|m| &m.message_id) == id.as_ref())
            {
                Some(b) => b.push(q),
                None => batches.push(vec![q]),
            }
        }
        // Approval requests and tests each go alone: one question (or one check) per message,
        // and the answer (`notify.sent`) is in that event's flow.
        let (decisions, rest): (Vec<Queued>, Vec<Queued>) = queued
            .into_iter()
            .partition(|q| is_test(&q.event) || describe(&q.event).needs_decision);
        batches.extend(decisions.into_iter().map(|q| vec![q]));
        // Items, not entries, are counted: the containers of one newer image stay together.
        let mut rest = news::group(rest).into_iter().peekable();
        while rest.peek().is_some() {
            batches.push(rest.by_ref().take(MAX_ITEMS).flatten().collect());
        }
        for batch in batches {
            // On shutdown, the message being sent finishes; the rest stay queued for the
            // next instance.
            if ctx.shutdown.is_cancelled() {
                break;
            }
            self.deliver(ctx, batch).await?;
        }
        Ok(())
    }

    async fn deliver(&self, ctx: &Context, batch: Vec<Queued>) -> Result<(), BusError> {
        let kind = self.channel.kind().as_str();
        // A newer image reported by an earlier message (another container on it announced
        // later) is not reported again.
        let (batch, reported) =
            self.announcements.split_announced(self.channel.kind(), batch).await?;
        for q in reported {
            tracing::info!(channel = kind, event = %q.event.id, "newer image already reported; not again");
            self.outbox.finish(q, EntryState::Sent).await?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let units = news::group(batch);
        let batch: Vec<Queued> = units.iter().flatten().cloned().collect();
        let about: Vec<uuid::Uuid> = batch.iter().map(|q| q.event.id).collect();
        let mut items = vec![];
        for unit in &units {
            let events: Vec<&Event> = unit.iter().map(|q| &q.event).collect();
            if news::key(events[0]).is_some() {
                items.push(describe_news(&events));
                continue;
            }
            let mut item = describe(events[0]);
            if self.approval_links {
                self.add_approval_link(ctx, events[0], &mut item).await;
            }
            items.push(item);
        }
        let message = match self.templates.render(items) {
            Ok(m) => m,
            Err(e) => {
                // A template bug will not fix itself: drop, loudly, rather than loop forever.
                tracing::error!(channel = kind, error = %e, "cannot render notification; dropping it");
                let attempts = batch.iter().map(|q| q.entry.value.attempts).max().unwrap_or(0);
                let reason = format!("cannot render: {e}");
                self.publish_failed(ctx, &batch[0].event, &about, &reason, attempts, true).await?;
                for q in batch {
                    self.outbox.finish(q, EntryState::GaveUp).await?;
                }
                return Ok(());
            }
        };
        let mark = batch.iter().find_map(|q| q.entry.value.message.clone()).unwrap_or_else(|| {
            MessageMark {
                message_id: format!("<{}.{}@steward>", about[0], about.len()),
                sent_event: uuid::Uuid::now_v7(),
            }
        });
        // Recorded before the attempt: whatever happens next, a later attempt is this message.
        let batch = self.outbox.mark(batch, &mark).await?;
        steward_failpoints::failpoint!("notify:sending");
        // The SMTP or webhook call, in the trace of the first event it tells of.
        let span = tracing::info_span!("deliver", otel.name = %format_args!("notify {kind}"),
            otel.kind = "client", channel = kind, events = about.len());
        steward_bus::trace::join(&span, &batch[0].event);
        match self.channel.deliver(&message, &mark.message_id).instrument(span).await {
            Ok(()) => {
                steward_failpoints::failpoint!("notify:delivered");
                tracing::info!(channel = kind, subject = %message.subject, events = about.len(), "notification sent");
                let sent = NotifySent {
                    channel: kind.to_owned(),
                    recipients: self.channel.recipients(),
                    title: message.subject.clone(),
                    about,
                };
                let mut sent = Event::caused_by(&batch[0].event, ctx.source(), sent);
                // A resend after a crash publishes the same event: the stream drops the repeat.
                sent.id = mark.sent_event;
                ctx.bus.publish(&sent).await?;
                steward_failpoints::failpoint!("notify:published");
                for unit in units.iter().filter(|u| news::key(&u[0].event).is_some()) {
                    let events: Vec<&Event> = unit.iter().map(|q| &q.event).collect();
                    if let Err(e) = self.announcements.mark(self.channel.kind(), &events).await {
                        // Sent all the same: at worst a container announced later on the same
                        // image is reported once more.
                        tracing::warn!(channel = kind, error = %e, "cannot record the reported image");
                    }
                }
                for q in batch {
                    self.outbox.finish(q, EntryState::Sent).await?;
                }
                steward_failpoints::failpoint!("notify:recorded");
            }
            Err(reason) => {
                let now = OffsetDateTime::now_utc();
                // Each entry has its own bound: a fresh event batched with an old one is not
                // dropped with it.
                let (expired, retried): (Vec<Queued>, Vec<Queued>) = batch
                    .into_iter()
                    .partition(|q| q.entry.value.queued_at + self.retry_for <= now);
                let attempts = |qs: &[Queued]| {
                    qs.iter().map(|q| q.entry.value.attempts + 1).max().unwrap_or(1)
                };
                let ids = |qs: &[Queued]| qs.iter().map(|q| q.event.id).collect::<Vec<_>>();
                tracing::warn!(channel = kind, %reason, dropped = expired.len(), retried = retried.len(), "notification not delivered");
                if let Some(first) = expired.first() {
                    self.publish_failed(
                        ctx,
                        &first.event,
                        &ids(&expired),
                        &reason,
                        attempts(&expired),
                        true,
                    )
                    .await?;
                }
                let unreported: Vec<&Queued> =
                    retried.iter().filter(|q| !q.entry.value.failure_reported).collect();
                if let Some(first) = unreported.first() {
                    let about: Vec<uuid::Uuid> = unreported.iter().map(|q| q.event.id).collect();
                    self.publish_failed(
                        ctx,
                        &first.event,
                        &about,
                        &reason,
                        attempts(&retried),
                        false,
                    )
                    .await?;
                }
                for q in expired {
                    self.outbox.finish(q, EntryState::GaveUp).await?;
                }
                for q in retried {
                    let next = now + backoff(q.entry.value.attempts + 1);
                    self.outbox.failed(q, &reason, next, true).await?;
                }
            }
        }
        Ok(())
    }

    /// Puts the approval link of a pending update or deployment into its item, asked now from
    /// the updater or the deployer (it is never stored: a link approves a production change).
    /// Without one, the item says why and how to decide on the host instead.
    async fn add_approval_link(&self, ctx: &Context, event: &Event, item: &mut Item) {
        let (kind, id) = match &event.data {
            // An update announced without a link (links off): nothing to ask.
            EventData::UpdatePending(p) if p.expires_at.is_some() => {
                (LinkKind::Update, p.update_id)
            }
            EventData::DeployPending(p) => (LinkKind::Deploy, p.deploy_id),
            _ => return,
        };
        match ctx
            .bus
            .request_approval_link(kind, id, event.host.as_deref(), LINK_REQUEST_TIMEOUT)
            .await
        {
            Ok(LinkReply::Link { url, expires_at }) => item.offer_link(url, expires_at),
            Ok(LinkReply::Unavailable { reason }) => item.without_link(&reason),
            // Deployment links are off unless the deployer has a public URL and a key (an
            // update's event says so itself): nobody listening is that, not a fault, and the
            // mail keeps the CLI's commands without a warning.
            Err(BusError::NoResponders { .. }) if kind == LinkKind::Deploy => {
                tracing::debug!(%id, "no deployer serves approval links: the CLI's commands only");
            }
            Err(e) => {
                let service = kind.server();
                tracing::warn!(error = %e, kind = kind.as_str(), %id, "no approval link from the {service}");
                item.without_link(&format!("the {service} did not answer ({e})"));
            }
        }
    }

    async fn publish_failed(
        &self,
        ctx: &Context,
        cause: &Event,
        about: &[uuid::Uuid],
        reason: &str,
        attempts: u32,
        gave_up: bool,
    ) -> Result<(), BusError> {
        let failed = NotifyFailed {
            channel: self.channel.kind().as_str().to_owned(),
            about: about.to_vec(),
            reason: reason.to_owned(),
            attempts,
            gave_up,
        };
        ctx.bus.publish(&Event::caused_by(cause, ctx.source(), failed)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_and_is_capped() {
        let got: Vec<u64> = (1..=10).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
