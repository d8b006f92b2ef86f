//! Entry point of `steward-health`: configuration, runtime, handler.

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    steward_runtime::main(
        steward_health::SERVICE,
        |_env| (),
        |(), _ctx| async { Ok(steward_runtime::LogHandler) },
    )
    .await
}
