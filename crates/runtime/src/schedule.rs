//! Jobs on a cron schedule (the watcher's checks, the backup service's backups), in the
//! host's time zone, until shutdown.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Runs `job` at every occurrence of `schedule` until `shutdown`; `what` names the job in
/// the logs ("check", "backup"). A job that overruns the next occurrence delays it, never
/// doubles it. `shutdown` is checked only between jobs, so a job in progress finishes: run
/// this with [`Context::spawn`](crate::Context::spawn) so that shutdown waits for it.
pub async fn on_schedule<F, Fut>(
    schedule: croner::Cron,
    shutdown: CancellationToken,
    what: &'static str,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let now = chrono::Local::now();
        let next = match schedule.find_next_occurrence(&now, false) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, job = what, "schedule has no next occurrence; scheduled runs stop");
                return;
            }
        };
        tracing::info!(next = %next.to_rfc3339(), job = what, "next scheduled run");
        tokio::select! {
            // A job due right now must not start after shutdown was requested.
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep((next - now).to_std().unwrap_or_default()) => {}
        }
        // Each run is a trace of its own (a scheduled check or backup is one flow).
        job().instrument(tracing::info_span!("scheduled", otel.name = what, job = what)).await;
    }
}
