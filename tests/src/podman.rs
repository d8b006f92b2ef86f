//! What a Podman host has that the test bed's Podman service lacks (issue 22): the images
//! (built with Docker here, copied over as an operator would load them) and systemd, whose
//! timers run Podman's healthchecks. Without systemd `podman system service` runs none, and
//! compose's `depends_on: condition: service_healthy` waits for ever; [`HealthTimers`] plays
//! those timers for one compose project's containers, at each container's own interval, the
//! way Podman's transient systemd units do. Steward's own fallback for such hosts (the engine
//! runs a due check when it reads health) stays in play as well.

// Test helpers, named for what they do; a failure panics with what it saw.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use steward_testkit::podman::copy_images_from_docker;
use steward_testkit::podman::remote;

/// systemd's healthcheck timers for the running containers labelled `label` (`key=value`),
/// until dropped: each container's check runs at its own interval (Podman's default 30 s),
/// one run at a time per container, through the service (`podman healthcheck run`, which
/// records the result, streaks and retries as a timer's run does).
pub struct HealthTimers {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HealthTimers {
    pub fn start(socket: &str, label: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (socket, label, stopped) = (socket.to_owned(), label.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut timers: HashMap<String, Timer> = HashMap::new();
            while !stopped.load(Ordering::Relaxed) {
                let listed = remote(&socket)
                    .args(["ps", "-q", "--no-trunc", "--filter", &format!("label={label}")])
                    .output();
                // A list that failed says nothing: the timers stay as they are until the next.
                let running: Vec<String> = match listed {
                    Ok(o) if o.status.success() => {
                        String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect()
                    }
                    _ => timers.keys().cloned().collect(),
                };
                timers.retain(|id, _| running.contains(id));
                for id in running {
                    if !timers.contains_key(&id) {
                        // A read that failed is tried again on the next round.
                        let Some(every) = interval(&socket, &id) else { continue };
                        timers.insert(id.clone(), Timer { every, began: None, run: None });
                    }
                    let Some(timer) = timers.get_mut(&id) else { continue };
                    let Some(every) = timer.every else { continue };
                    if let Some(run) = &mut timer.run {
                        if matches!(run.try_wait(), Ok(None)) {
                            continue;
                        }
                        timer.run = None;
                    }
                    if timer.began.is_none_or(|began| began.elapsed() >= every) {
                        timer.began = Some(Instant::now());
                        timer.run = remote(&socket)
                            .args(["healthcheck", "run", &id])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                            .ok();
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            for timer in timers.into_values() {
                if let Some(mut run) = timer.run {
                    let _ = run.kill();
                    let _ = run.wait();
                }
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

/// One container's timer.
struct Timer {
    /// Its healthcheck's interval; `None`: it has none.
    every: Option<Duration>,
    /// When its last run began.
    began: Option<Instant>,
    /// The run in progress.
    run: Option<Child>,
}

/// A container's healthcheck interval (`Some(None)`: it has none); `None` when it could not
/// be read.
fn interval(socket: &str, id: &str) -> Option<Option<Duration>> {
    let out = remote(socket)
        .args(["inspect", "--format", "{{json .Config.Healthcheck}}", id])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    if config["Test"].as_array().is_none_or(|t| t.is_empty() || t[0] == "NONE") {
        return Some(None);
    }
    // Go's time.Duration: nanoseconds; 0 is Podman's default.
    match config["Interval"].as_u64().unwrap_or(0) {
        0 => Some(Some(Duration::from_secs(30))),
        ns => Some(Some(Duration::from_nanos(ns))),
    }
}

impl Drop for HealthTimers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
