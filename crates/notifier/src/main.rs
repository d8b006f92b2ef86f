//! Entry point of `steward-notifier`: configuration, runtime, handler.

use std::process::ExitCode;

use steward_notifier::config::NotifierConfig;
use steward_notifier::Notifier;

fn main() -> ExitCode {
    steward_runtime::block_on(
        steward_notifier::SERVICE,
        steward_runtime::main(
            steward_notifier::SERVICE,
            NotifierConfig::read,
            |cfg, ctx| async move { Notifier::start(cfg, &ctx).await },
        ),
    )
}
