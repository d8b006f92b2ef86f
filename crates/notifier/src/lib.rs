//! steward-notifier: turns the events an operator must hear about into email and webhooks.
//!
//! The handler only queues: each wanted event becomes one [`outbox`] entry per channel, in a
//! KV bucket, and is acknowledged. One [`delivery`] loop per channel collects bursts into one
//! message, renders it ([`message`], templates in `templates/`), sends it ([`channels`]), and
//! publishes `notify.sent` or `notify.failed`. So a burst of ten failures is one mail, a dead
//! SMTP server delays mail instead of losing it, and a restart never mails an event twice.
//! Newer images of `notify` containers are reported once per image and digest, with every
//! container on it ([`news`]).
//!
//! The notifier holds no approval secret, and approval links are not in the stream: when it
//! renders an `update.pending`, it asks the updater for the link (NATS request and reply that
//! only these two may use). Mail carries it; webhooks only when the operator enabled it.

pub mod alerts;
pub mod channels;
pub mod config;
pub mod delivery;
pub mod message;
pub mod news;
pub mod outbox;
pub mod watchdog;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use steward_events::{Event, EventData, Service};
use steward_runtime::{Context, Handler, HandlerError};
use tokio::sync::Notify;

use crate::channels::Channel;
use crate::config::NotifierConfig;
use crate::delivery::Delivery;
use crate::message::Templates;
use crate::news::Announcements;
use crate::outbox::{ChannelKind, Outbox};

/// This service on the bus.
pub const SERVICE: Service = Service::Notifier;

/// The notifier's event handler.
#[derive(Debug)]
pub struct Notifier {
    outbox: Outbox,
    channels: Vec<ChannelKind>,
    events: Vec<&'static str>,
    wake: Arc<Notify>,
}

impl Notifier {
    /// Opens the outbox (with what a previous instance left queued) and starts one delivery
    /// loop per configured channel.
    pub async fn start(cfg: NotifierConfig, ctx: &Context) -> anyhow::Result<Self> {
        let outbox = Outbox::open(&ctx.bus).await.context("opening the outbox")?;
        let announcements =
            Announcements::open(&ctx.bus).await.context("opening the reported images")?;
        let templates = Arc::new(Templates::builtin().context("loading mail templates")?);
        let wake = Arc::new(Notify::new());
        let mut channels = vec![];
        if let Some(email) = cfg.email.clone() {
            channels.push(Channel::email(email));
        }
        if let Some(hook) = cfg.webhook.clone() {
            channels.push(Channel::webhook(hook).context("building the webhook client")?);
        }
        let kinds = channels.iter().map(Channel::kind).collect();
        let watch = watchdog::BusWatch {
            channels: channels.clone(),
            templates: templates.clone(),
            after: cfg.bus_down_after,
        };
        ctx.spawn("NATS watch", watch.run(ctx.clone()));
        if let Some(token) = &cfg.alerts_token {
            let source = ctx.source();
            let host = source.split_once('/').map_or(source.as_str(), |(_, h)| h).to_owned();
            let alerts = alerts::Alerts::new(token, channels.clone(), templates.clone(), host);
            ctx.serve_routes(alerts.router())?;
            tracing::info!(path = alerts::PATH, "taking Alertmanager's webhook");
        }
        for channel in channels {
            let approval_links = match channel.kind() {
                ChannelKind::Email => true,
                ChannelKind::Webhook => cfg.webhook_links,
            };
            let delivery = Delivery {
                channel,
                approval_links,
                quiet: cfg.quiet.clone(),
                outbox: outbox.clone(),
                announcements: announcements.clone(),
                templates: templates.clone(),
                window: cfg.group_window,
                retry_for: cfg.retry_for,
                wake: wake.clone(),
            };
            ctx.spawn("notification delivery", delivery.run(ctx.clone()));
        }
        let (purger, shutdown) = (outbox.clone(), ctx.shutdown.clone());
        let reported = announcements.clone();
        ctx.spawn("outbox purge", async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                }
                match purger.purge().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "old outbox entries removed"),
                    Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
                }
                let horizon = time::OffsetDateTime::now_utc() - news::KEEP_ANNOUNCED;
                match reported.purge(horizon).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(count = n, "old reported-image markers removed"),
                    Err(e) => tracing::warn!(error = %e, "reported-image purge failed"),
                }
            }
        });
        Ok(Self { outbox, channels: kinds, events: cfg.events, wake })
    }

    /// Whether `event` is notified: its type is configured, and an `image.updated` only for a
    /// container whose policy is `notify` (a manual one gets its approval request, an
    /// automatic one its outcome).
    pub fn wanted(&self, event: &Event) -> bool {
        // A test is asked for by the operator: whatever `STEWARD_NOTIFY_EVENTS` selects.
        if matches!(event.data, EventData::NotifyTestRequested(_)) {
            return true;
        }
        if !self.events.contains(&event.event_type()) {
            return false;
        }
        told_of(&event.data)
    }
}

/// Of a configured type, whether this event is told (the rest is in the audit trail).
fn told_of(data: &EventData) -> bool {
    match data {
        EventData::ImageUpdated(u) => u.policy.as_deref() == Some("notify"),
        // A definition written is in the audit trail; one that was not needs a human.
        EventData::UpdateWrittenBack(w) => w.refused.is_some(),
        // Refused, or waiting for a human to merge it.
        EventData::DeployWrittenBack(w) => w.refused.is_some() || w.pull_request.is_some(),
        _ => true,
    }
}

impl Handler for Notifier {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        if !self.wanted(&event) {
            return Ok(());
        }
        for channel in &self.channels {
            let fresh = self
                .outbox
                .enqueue(*channel, &event)
                .await
                .map_err(|e| HandlerError::Retry(e.into()))?;
            if !fresh {
                tracing::info!(channel = channel.as_str(), "already queued or sent; not again");
            }
        }
        steward_failpoints::failpoint!("notify:queued");
        self.wake.notify_waiters();
        Ok(())
    }
}

#[cfg(test)]
mod told_tests {
    use super::*;

    #[test]
    fn a_commit_back_is_told_when_refused_or_waiting_for_a_merge() {
        let Some(EventData::DeployWrittenBack(committed)) = steward_events::samples::all("web")
            .into_iter()
            .find(|d| matches!(d, EventData::DeployWrittenBack(_)))
        else {
            panic!("no sample")
        };
        assert!(!told_of(&EventData::DeployWrittenBack(committed.clone())), "a commit is mailed");
        let proposed = steward_events::DeployWrittenBack {
            pull_request: Some("https://git.example.com/ops/site/pulls/7".into()),
            proposal_branch: Some("steward/update-x".into()),
            ..committed.clone()
        };
        assert!(told_of(&EventData::DeployWrittenBack(proposed)), "a pull request is not mailed");
        let refused = steward_events::DeployWrittenBack {
            commit: None,
            refused: Some("the push was refused".into()),
            ..committed
        };
        assert!(told_of(&EventData::DeployWrittenBack(refused)));
    }
}
