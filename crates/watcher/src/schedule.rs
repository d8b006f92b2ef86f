//! The regular check, on the cron schedule, in the host's time zone.

use tokio_util::sync::CancellationToken;

use crate::check::Checker;
use crate::episodes::Episodes;

/// Runs a check at every occurrence of `schedule` until shutdown.
pub async fn run(
    schedule: croner::Cron,
    checker: Checker,
    episodes: Episodes,
    shutdown: CancellationToken,
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
) {
    steward_runtime::on_schedule(schedule, shutdown, "check", || async {
        let _guard = lock.lock().await;
        match checker.run(None, None).await {
            Ok(summary) => {
                if let Err(e) = episodes.after_check(&summary.registries).await {
                    tracing::warn!(error = %e, "cannot count the registries' failures");
                }
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"), "scheduled check failed"),
        }
    })
    .await
}
