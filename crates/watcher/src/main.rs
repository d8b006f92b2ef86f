//! Entry point of `steward-watcher`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_watcher::config::WatcherConfig;
use steward_watcher::Watcher;

fn main() -> ExitCode {
    steward_runtime::block_on(
        steward_watcher::SERVICE,
        steward_runtime::main(
            steward_watcher::SERVICE,
            WatcherConfig::read,
            |cfg, ctx| async move { Watcher::start(cfg, &ctx).await },
        ),
    )
}
