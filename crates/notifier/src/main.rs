//! Entry point of `steward-notifier`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_notifier::config::NotifierConfig;
use steward_notifier::Notifier;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    steward_runtime::main(steward_notifier::SERVICE, NotifierConfig::read, |cfg, ctx| async move {
        Notifier::start(cfg, &ctx).await
    })
    .await
}
