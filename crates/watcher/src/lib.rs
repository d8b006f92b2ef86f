//! steward-watcher: finds newer images in registries and publishes `image.updated`.
//!
//! It checks on its cron schedule (`STEWARD_WATCH_SCHEDULE`) and when asked
//! (`watch.requested`, e.g. `steward check`): every running container labelled
//! `steward.enable=true` (or `diun.enable=true`) is compared with its registry
//! ([`check`]), through registry clients that authenticate, respect rate limits and time out
//! per registry ([`registry`]). Each new digest is published once; what the watcher knows is
//! kept in the `WATCHER` KV bucket, which `steward status` reads. On `update.succeeded` it
//! notes the container's new running digest.

pub mod check;
pub mod config;
pub mod episodes;
pub mod registry;
mod schedule;

use std::sync::Arc;

use anyhow::Context as _;
use prometheus_client::metrics::family::Family;
use steward_events::{Event, EventData, Service};
use steward_runtime::{Context, Handler, HandlerError};

use crate::check::Checker;
use crate::config::WatcherConfig;
use crate::episodes::Episodes;
use crate::registry::Registries;

/// This service on the bus.
pub const SERVICE: Service = Service::Watcher;

/// The watcher's event handler.
#[derive(Debug)]
pub struct Watcher {
    checker: Checker,
    episodes: Episodes,
    // Scheduled and requested checks never overlap.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Watcher {
    /// Builds the watcher and starts its schedule.
    pub async fn start(cfg: WatcherConfig, ctx: &Context) -> anyhow::Result<Self> {
        let engine = ctx.engine.clone().context("the watcher needs Docker")?;
        let outcomes = Family::default();
        ctx.metrics.register(
            "registry_checks",
            "Registry checks by registry and outcome",
            outcomes.clone(),
        );
        let checker = Checker {
            bus: ctx.bus.clone(),
            engine,
            registries: Arc::new(Registries::new(cfg.registry.clone())?),
            records: Checker::records(&ctx.bus).await?,
            concurrency: cfg.concurrency,
            outcomes,
            source: ctx.source(),
            scope: cfg.scope.clone(),
        };
        let episodes = Episodes::open(&ctx.bus, cfg.registry_failures, ctx.source()).await?;
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        ctx.spawn(
            "check schedule",
            schedule::run(
                cfg.schedule,
                checker.clone(),
                episodes.clone(),
                ctx.shutdown.clone(),
                lock.clone(),
            ),
        );
        Ok(Self { checker, episodes, lock })
    }
}

impl Handler for Watcher {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        match &event.data {
            EventData::WatchRequested(req) => {
                let _guard = self.lock.lock().await;
                let summary = self
                    .checker
                    .run(req.container.as_deref(), Some(&event))
                    .await
                    // Docker unreachable: worth trying again later.
                    .map_err(HandlerError::Retry)?;
                if req.container.is_none() {
                    if let Err(e) = self.episodes.after_check(&summary.registries).await {
                        tracing::warn!(error = %e, "cannot count the registries' failures");
                    }
                }
                Ok(())
            }
            EventData::UpdateSucceeded(done) => self
                .checker
                .note_running(&done.container, &done.to_digest)
                .await
                .map_err(|e| HandlerError::Retry(e.into())),
            _ => Ok(()),
        }
    }
}
