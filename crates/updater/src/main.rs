//! Entry point of `steward-updater`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_updater::config::UpdaterConfig;
use steward_updater::Updater;

fn main() -> ExitCode {
    steward_runtime::block_on(
        steward_updater::SERVICE,
        steward_runtime::main(
            steward_updater::SERVICE,
            UpdaterConfig::read,
            |cfg, ctx| async move { Updater::start(cfg, &ctx).await },
        ),
    )
}
