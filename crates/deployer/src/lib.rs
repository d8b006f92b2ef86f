//! steward-deployer: deploys a compose project from git, per environment.
//!
//! Sources of change: a push webhook ([`webhook`], signature checked) and polling
//! ([`poll`], `git ls-remote`); either publishes `deploy.requested`. The deployer consumes
//! it and runs the deployment state machine ([`flow`]): fetch the commit into the
//! environment's checkout, validate it (compose file, images), wait for approval in a
//! manual environment (`deploy.pending` → `deploy.approved`), back up first (the updater's
//! backup gate: `backup.requested` → `backup.done`), recreate only the services whose
//! definition changed, health-gate them with `steward-probe`, and roll back to the previous
//! commit's definitions on failure. A manual environment's `deploy.pending` is mailed with a
//! signed approval link ([`approval`]), as an image update's is. Git is the `git` binary ([`git`]); compose is
//! `docker-compose` ([`compose`]).

pub mod approval;
pub mod command;
pub mod compose;
pub mod config;
pub mod flow;
pub mod git;
pub mod gitea;
pub mod poll;
pub mod webhook;
pub mod writeback;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use steward_events::{Event, EventData, Service};
use steward_runtime::{Context, Handler, HandlerError};

use crate::config::DeployerConfig;
use crate::flow::{Flow, FlowError};

/// This service on the bus.
pub const SERVICE: Service = Service::Deployer;

/// How often unfinished deployments nobody holds are driven on.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The deployer's event handler.
#[derive(Debug)]
pub struct Deployer {
    flow: Flow,
}

impl Deployer {
    /// Checks `git` and `docker-compose` are there, opens the state, drives on what a
    /// previous instance left, serves the webhook and starts polling and the sweep.
    pub async fn start(cfg: DeployerConfig, ctx: &Context) -> anyhow::Result<Self> {
        let engine = ctx.engine.clone().context("the deployer needs Docker")?;
        for (program, arg) in [("git", "--version"), ("docker-compose", "version")] {
            crate::command::run(program, &[arg], None, Duration::from_secs(30))
                .await
                .with_context(|| format!("the deployer needs `{program}` on its PATH"))?;
        }
        std::fs::create_dir_all(&cfg.dir).with_context(|| {
            format!("cannot create {} ({})", cfg.dir.display(), config::ENV_DIR)
        })?;
        let flow = Flow::open(ctx.bus.clone(), engine, cfg, ctx.source()).await?;
        writeback::mark_checkouts(&flow);
        let refused = prometheus_client::metrics::family::Family::default();
        ctx.metrics.register(
            "deploy_webhook_refused",
            "Webhook requests refused for a missing or wrong signature",
            refused.clone(),
        );
        // One router for the HTTP port: the webhook and the approval page, each when set up.
        let mut routes = axum::Router::new();
        match flow.cfg.webhook_secret.clone() {
            Some(secret) => {
                routes = routes.merge(webhook::router(
                    ctx.bus.clone(),
                    flow.cfg.clone(),
                    secret,
                    ctx.source(),
                    refused,
                ));
                tracing::info!(path = webhook::PATH, "push webhook served");
            }
            None => tracing::info!("no {}: no webhook, polling only", config::ENV_WEBHOOK_SECRET),
        }
        match flow.cfg.links.clone() {
            Some(links) => {
                routes = routes.merge(approval::router(flow.clone(), links.clone()).await?);
                tracing::info!(path = approval::PATH, "deployment approval page served");
                let (flow, shutdown) = (flow.clone(), ctx.shutdown.clone());
                ctx.spawn("deployment approval link requests", async move {
                    if let Err(e) = approval::serve_links(flow, links, shutdown).await {
                        tracing::error!(error = %e, "approval links cannot be served: mails will not carry them");
                    }
                });
            }
            None => tracing::info!(
                "no {}/{}: deployments approved by CLI only",
                config::ENV_PUBLIC_URL,
                config::ENV_APPROVAL_SECRET
            ),
        }
        ctx.serve_routes(routes)?;
        let left = flow.resume().await;
        if !left.is_empty() {
            tracing::error!(count = left.len(), "interrupted deployments left for the sweep");
        }
        let sweeper = flow.clone();
        let shutdown = ctx.shutdown.clone();
        ctx.spawn("deployment sweeper", async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SWEEP_EVERY) => {}
                }
                sweeper.sweep().await;
            }
        });
        if let Some(every) = flow.cfg.poll_interval {
            let poller = flow.clone();
            let shutdown = ctx.shutdown.clone();
            ctx.spawn("repository polling", async move {
                let mut seen = BTreeMap::new();
                loop {
                    poll::poll_once(&poller, &mut seen).await;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                }
            });
        }
        Ok(Self { flow })
    }
}

fn retry(e: FlowError) -> HandlerError {
    HandlerError::Retry(e.into())
}

impl Handler for Deployer {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        match &event.data {
            EventData::DeployRequested(r) => self.flow.on_requested(&event, r).await.map_err(retry),
            EventData::DeployPinRequested(p) => self.flow.on_pin(&event, p).await.map_err(retry),
            EventData::DeployApproved(a) => self.flow.on_approved(a).await.map_err(retry),
            EventData::DeployRejected(r) => self.flow.on_rejected(r).await.map_err(retry),
            EventData::BackupDone(_) | EventData::BackupFailed(_) => {
                self.flow.on_backup_outcome(&event).await.map_err(retry)
            }
            EventData::UpdateWrittenBack(w) => {
                self.flow.on_written_back(&event, w).await.map_err(retry)
            }
            _ => Ok(()),
        }
    }
}
