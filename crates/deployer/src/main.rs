//! Entry point of `steward-deployer`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_deployer::config::DeployerConfig;
use steward_deployer::Deployer;

fn main() -> ExitCode {
    steward_runtime::block_on(
        steward_deployer::SERVICE,
        steward_runtime::main(
            steward_deployer::SERVICE,
            DeployerConfig::read,
            |cfg, ctx| async move { Deployer::start(cfg, &ctx).await },
        ),
    )
}
