//! Entry point of `steward-backup`: configuration, runtime, handler.

// The AWS SDK's nested futures exceed the default depth when the layout of `main` is computed.
#![recursion_limit = "256"]

use std::process::ExitCode;

use steward_backup::config::BackupConfig;
use steward_backup::BackupService;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    steward_runtime::main(steward_backup::SERVICE, BackupConfig::read, |cfg, ctx| async move {
        BackupService::start(cfg, &ctx).await
    })
    .await
}
