//! The regular check, on the cron schedule, in the host's time zone.

use tokio_util::sync::CancellationToken;

use crate::check::Checker;

/// Runs a check at every occurrence of `schedule` until shutdown.
pub async fn run(
    schedule: croner::Cron,
    checker: Checker,
    shutdown: CancellationToken,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
) {
    loop {
        let now = chrono::Local::now();
        let next = match schedule.find_next_occurrence(&now, false) {
            Ok(next) => next,
            Err(e) => {
                tracing::error!(error = %e, "schedule has no next occurrence; scheduled checks stop");
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tracing::info!(next = %next.to_rfc3339(), "next scheduled check");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let _guard = lock.lock().await;
        if let Err(e) = checker.run(None, None).await {
            tracing::error!(error = %format!("{e:#}"), "scheduled check failed");
        }
    }
}
