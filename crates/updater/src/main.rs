//! Entry point of `steward-updater`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_updater::config::UpdaterConfig;
use steward_updater::Updater;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    steward_runtime::main(steward_updater::SERVICE, UpdaterConfig::read, |cfg, ctx| async move {
        Updater::start(cfg, &ctx).await
    })
    .await
}
