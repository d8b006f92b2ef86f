//! Entry point of `steward-health`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_health::config::HealthConfig;
use steward_health::service::HealthService;

fn main() -> ExitCode {
    steward_runtime::block_on(
        steward_health::SERVICE,
        steward_runtime::main(steward_health::SERVICE, HealthConfig::read, |cfg, ctx| async move {
            HealthService::start(cfg, &ctx).await
        }),
    )
}
