//! steward-updater: applies newer images per policy, safely.
//!
//! It consumes `image.updated` and, by the container's `steward.update.policy`, does nothing
//! (`notify`), asks first (`manual`: `update.pending`, then `update.approved` /
//! `update.rejected`; the approval link itself is given only to the notifier, on request:
//! [`link_server`]), or goes ahead (`automatic`): backup first (unless
//! `steward.update.backup=false`), pull the checked digest, recreate the container with its
//! exact configuration, health-gate it, and end with `update.succeeded` or roll back
//! (`update.rolled_back`, with the failed container's last log lines). The state machine is in
//! [`flow`]; each update is persisted so a restarted updater rolls back what it was doing.
//!
//! It also renews TLS certificates ([`renewal`]): weekly and on `certs.requested`, certbot's
//! `renew` by exec, and a reload of nginx only when a certificate changed.

pub mod config;
pub mod flow;
pub mod link_server;
pub mod page;
pub mod renewal;
pub mod writeback;

use std::time::Duration;

use anyhow::Context as _;
use steward_events::{Event, EventData, Service};
use steward_runtime::{Context, Handler, HandlerError};

use crate::config::UpdaterConfig;
use crate::flow::{Flow, FlowError};
use crate::renewal::Renewal;

/// This service on the bus.
pub const SERVICE: Service = Service::Updater;

/// The updater's event handler.
#[derive(Debug)]
pub struct Updater {
    flow: Flow,
    renewal: Renewal,
}

impl Updater {
    /// Opens the state, drives on what a previous instance left half-done, and starts the
    /// sweep (outboxes, backup timeouts, deferred updates whose minimum age or window has
    /// come, flows a failed step left, leftover swap containers).
    pub async fn start(cfg: UpdaterConfig, ctx: &Context) -> anyhow::Result<Self> {
        let engine = ctx.engine.clone().context("the updater needs Docker")?;
        let links = cfg.links.clone();
        let renewal =
            Renewal::new(ctx.bus.clone(), engine.clone(), ctx.source(), cfg.renewal.clone());
        ctx.spawn(
            "certificate renewal schedule",
            renewal.clone().run_schedule(ctx.shutdown.clone()),
        );
        let flow = Flow::open(ctx.bus.clone(), engine, cfg, ctx.source()).await?;
        match links {
            Some(links) => {
                ctx.serve_routes(page::router(flow.clone(), links.clone()).await?)?;
                tracing::info!("approval page served at /approve/");
                let (flow, shutdown) = (flow.clone(), ctx.shutdown.clone());
                ctx.spawn("approval link requests", async move {
                    if let Err(e) = link_server::serve(flow, links, shutdown).await {
                        tracing::error!(error = %e, "approval links cannot be served: mails will not carry them");
                    }
                });
            }
            None => tracing::info!(
                "no STEWARD_PUBLIC_URL/STEWARD_APPROVAL_SECRET: approvals by CLI only"
            ),
        }
        // One container's trouble never stops the service: what cannot be finished now is
        // logged and left to the sweep.
        let unfinished = flow.resume().await;
        if !unfinished.is_empty() {
            tracing::error!(count = unfinished.len(), "interrupted updates left for the sweep");
        }
        // Old images: at start, then daily (and after every successful update).
        let pruner = flow.clone();
        let shutdown = ctx.shutdown.clone();
        ctx.spawn("image cleanup", async move {
            loop {
                if let Err(e) = pruner.prune(None).await {
                    tracing::warn!(error = %e, "image cleanup failed; tried again tomorrow");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
                }
            }
        });
        let sweeper = flow.clone();
        let shutdown = ctx.shutdown.clone();
        ctx.spawn("update sweeper", async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                if let Err(e) = sweeper.sweep().await {
                    tracing::warn!(error = %e, "update sweep failed");
                }
            }
        });
        Ok(Self { flow, renewal })
    }
}

fn retry(e: FlowError) -> HandlerError {
    HandlerError::Retry(e.into())
}

impl Handler for Updater {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        match &event.data {
            EventData::ImageUpdated(u) => {
                self.flow.on_image_updated(&event, u).await.map_err(retry)
            }
            EventData::UpdateApproved(a) => self.flow.on_approved(a).await.map_err(retry),
            EventData::UpdateRejected(r) => self.flow.on_rejected(r).await.map_err(retry),
            EventData::BackupDone(_) | EventData::BackupFailed(_) => {
                self.flow.on_backup_outcome(&event).await.map_err(retry)
            }
            EventData::RollbackRequested(r) => {
                self.flow.on_rollback_requested(&event, r).await.map_err(retry)
            }
            EventData::CertsRequested(_) => {
                self.renewal.run(Some(&event)).await.map_err(|e| HandlerError::Retry(e.into()))
            }
            _ => Ok(()),
        }
    }
}
