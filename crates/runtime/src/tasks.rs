//! The service's background tasks (schedules, sweeps, delivery loops, the HTTP server), owned
//! by the runtime so that shutdown waits for them instead of dropping them mid-work.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every task a service started, by name, until it ends.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<HashMap<u64, &'static str>>>,
    next_id: Arc<AtomicU64>,
}

/// Takes the task off the running list however it ends (returns, panics, is dropped).
struct Running {
    id: u64,
    running: Arc<Mutex<HashMap<u64, &'static str>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl Tasks {
    pub fn spawn<F>(&self, name: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(id, name);
        let guard = Running { id, running: self.running.clone() };
        self.tracker.spawn(async move {
            let _guard = guard;
            // A panic ends this task only; say which one it was.
            if let Err(panic) = std::panic::AssertUnwindSafe(work).catch_unwind().await {
                tracing::error!(task = name, error = %crate::consume::panicked(panic), "background task panicked");
            }
        });
    }

    /// Names of the tasks still running, sorted (a name may repeat).
    pub fn running(&self) -> Vec<&'static str> {
        let mut names: Vec<_> =
            self.running.lock().unwrap_or_else(|p| p.into_inner()).values().copied().collect();
        names.sort_unstable();
        names
    }

    /// Waits for every task until `deadline`, then names those that did not finish; they are
    /// abandoned with the process.
    pub async fn wait_until(&self, deadline: Instant) {
        self.tracker.close();
        let count = self.tracker.len();
        if count == 0 {
            return;
        }
        tracing::info!(tasks = ?self.running(), "waiting for background tasks to finish");
        if tokio::time::timeout_at(deadline, self.tracker.wait()).await.is_err() {
            for name in self.running() {
                tracing::warn!(
                    task = name,
                    "background task did not finish within the shutdown grace; abandoning it"
                );
            }
        }
    }
}

/// One deadline for the whole shutdown, fixed when it starts: the event in hand and the
/// background tasks share the grace period rather than getting it one after the other.
#[derive(Clone, Debug)]
pub(crate) struct Grace {
    token: CancellationToken,
    pub period: Duration,
    until: Arc<OnceLock<Instant>>,
}

impl Grace {
    pub fn new(token: CancellationToken, period: Duration) -> Self {
        Self { token, period, until: Arc::default() }
    }

    /// When the grace runs out; the first call after shutdown was requested fixes it.
    pub fn deadline(&self) -> Instant {
        *self.until.get_or_init(|| Instant::now() + self.period)
    }

    /// Fixes the deadline as soon as shutdown is requested, whatever else is busy.
    pub async fn start_on_cancel(&self) {
        self.token.cancelled().await;
        self.deadline();
    }
}
