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
    steward_runtime::on_schedule(schedule, shutdown, "check", || async {
        let _guard = lock.lock().await;
        if let Err(e) = checker.run(None, None).await {
            tracing::error!(error = %format!("{e:#}"), "scheduled check failed");
        }
    })
    .await
}
