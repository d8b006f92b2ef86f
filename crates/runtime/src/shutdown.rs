//! Graceful shutdown: SIGTERM or SIGINT cancels one token that every task watches; a second
//! one ends the process at once.

use tokio_util::sync::CancellationToken;

/// The exit code after a second signal: 128 + SIGTERM's number, as a shell reports it.
const EXIT_ON_SECOND_SIGNAL: i32 = 143;

/// Returns a token cancelled on the first SIGTERM or SIGINT. A second signal exits the
/// process without waiting for the graceful shutdown: once tokio handles a signal its default
/// action is gone, so without this only SIGKILL could stop a shutdown that hangs. Exiting
/// there is what a kill does, which every flow recovers from.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        // Installed once, before the first signal, so a second one sent right after the
        // first is not missed.
        let mut signals = Signals::install();
        let name = signals.next().await;
        tracing::info!(signal = name, "shutting down");
        trigger.cancel();
        let name = signals.next().await;
        tracing::warn!(signal = name, "a second signal: exiting without finishing the shutdown");
        std::process::exit(EXIT_ON_SECOND_SIGNAL);
    });
    token
}

/// SIGTERM and SIGINT as they arrive.
#[cfg(unix)]
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Self(Some((term, int))),
            _ => {
                tracing::error!(
                    "cannot install signal handlers; only Ctrl-C will stop this service"
                );
                Self(None)
            }
        }
    }

    async fn next(&mut self) -> &'static str {
        match &mut self.0 {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Self
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
