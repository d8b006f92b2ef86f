//! Entry point of `steward-updater`: configuration, runtime, handler.

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    steward_runtime::main(
        steward_updater::SERVICE,
        |_env| (),
        |(), _ctx| async { Ok(steward_runtime::LogHandler) },
    )
    .await
}
