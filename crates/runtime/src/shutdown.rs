//! Graceful shutdown: SIGTERM or SIGINT cancels one token that every task watches; a second
//! one ends the process at once.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// A signal this soon after the first is the same request: Ctrl-C in a terminal reaches every
/// process of the group, and the script that started them sends SIGTERM in its cleanup right
/// after; that must not cut their graceful shutdown short.
const SAME_REQUEST: Duration = Duration::from_secs(1);

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
        let (name, _) = signals.next().await;
        let first = Instant::now();
        tracing::info!(signal = name, "shutting down");
        trigger.cancel();
        loop {
            let (name, code) = signals.next().await;
            if first.elapsed() < SAME_REQUEST {
                tracing::info!(signal = name, "taken as part of the first request to stop");
                continue;
            }
            tracing::warn!(
                signal = name,
                "a second signal: exiting without finishing the shutdown"
            );
            // 128 + the signal's number, as a shell reports a process it ended.
            std::process::exit(code);
        }
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

    /// The next signal's name and the exit code a shell gives a process it ends.
    async fn next(&mut self) -> (&'static str, i32) {
        match &mut self.0 {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => ("SIGTERM", 143),
                _ = int.recv() => ("SIGINT", 130),
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
                ("SIGINT", 130)
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

    async fn next(&mut self) -> (&'static str, i32) {
        let _ = tokio::signal::ctrl_c().await;
        ("ctrl-c", 130)
    }
}
