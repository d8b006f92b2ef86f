//! Entry point of `steward-watcher`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_watcher::config::WatcherConfig;
use steward_watcher::Watcher;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    steward_runtime::main(steward_watcher::SERVICE, WatcherConfig::read, |cfg, ctx| async move {
        Watcher::start(cfg, &ctx).await
    })
    .await
}
