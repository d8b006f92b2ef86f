//! How far the running job is, for whoever waits on it (`steward restore`'s progress bar).
//!
//! The byte pipeline adds what it reads to the [`Meter`] of its [`Backups`](crate::Backups);
//! [`reporting`] publishes the meter while a job runs. Jobs never overlap (the service's
//! lock), so one meter per service is enough.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use steward_bus::{Bus, Progress};
use uuid::Uuid;

/// How often progress is published while a job runs.
const EVERY: Duration = Duration::from_millis(250);

/// The running job's phase, component and bytes.
#[derive(Debug, Default)]
pub struct Meter {
    /// Phase, item, total of the phase.
    state: Mutex<(String, String, Option<u64>)>,
    done: AtomicU64,
}

impl Meter {
    /// A new phase: bytes start from zero.
    pub fn phase(&self, phase: &str, total: Option<u64>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = (phase.to_owned(), String::new(), total);
        self.done.store(0, Ordering::Relaxed);
    }

    /// The component being worked on.
    pub fn item(&self, item: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = item.to_owned();
    }

    /// Bytes done.
    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Where the job is.
    pub fn snapshot(&self) -> Progress {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Progress {
            phase: state.0.clone(),
            item: state.1.clone(),
            done: self.done.load(Ordering::Relaxed),
            total: state.2,
        }
    }
}

/// Runs `job`, publishing `meter` in `correlation_id` whenever it changed (at most every
/// 250 ms) and once more at the end. Publishing failures only lose reports.
pub async fn reporting<F: Future>(
    bus: &Bus,
    correlation_id: Uuid,
    meter: &Meter,
    job: F,
) -> F::Output {
    let mut job = pin!(job);
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Progress> = None;
    loop {
        tokio::select! {
            out = &mut job => {
                let end = meter.snapshot();
                if last.as_ref() != Some(&end) {
                    let _ = bus.publish_progress(correlation_id, &end).await;
                }
                return out;
            }
            _ = tick.tick() => {
                let now = meter.snapshot();
                if !now.phase.is_empty() && last.as_ref() != Some(&now) {
                    if let Err(e) = bus.publish_progress(correlation_id, &now).await {
                        tracing::debug!(error = %e, "progress report lost");
                    }
                    last = Some(now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_restarts_the_count() {
        let meter = Meter::default();
        meter.phase("checking", Some(10));
        meter.item("db");
        meter.add(4);
        meter.add(6);
        assert_eq!(
            meter.snapshot(),
            Progress { phase: "checking".into(), item: "db".into(), done: 10, total: Some(10) }
        );
        meter.phase("restoring", None);
        assert_eq!((meter.snapshot().done, meter.snapshot().item.as_str()), (0, ""));
    }
}
