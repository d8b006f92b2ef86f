//! Entry point of `steward-health`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_health::config::HealthConfig;
use steward_health::service::HealthService;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    steward_runtime::main(steward_health::SERVICE, HealthConfig::read, |cfg, ctx| async move {
        HealthService::start(cfg, &ctx).await
    })
    .await
}
