//! What the health service's tests share: the service started on the real NATS test bed, and
//! its events read back from the stream.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use steward_engine::Engine;
use steward_events::{Event, Service};
use steward_health::config::{HealthConfig, HostConfig};
use steward_health::service::HealthService;
use steward_runtime::{Env, Runtime, RuntimeConfig};
use steward_testkit::{free_port, stored_events, TestBus};
use tokio_util::sync::CancellationToken;

/// The `health.*` events stored so far.
pub async fn health_events(bus: &TestBus) -> Vec<Event> {
    stored_events(bus)
        .await
        .into_iter()
        .filter(|e| e.data.event_type().starts_with("health."))
        .collect()
}

/// How many of `events` are of `event_type`.
pub fn count(events: &[Event], event_type: &str) -> usize {
    events.iter().filter(|e| e.data.event_type() == event_type).count()
}

/// Waits up to `bound` for the `nth` (0-based) event of `event_type`.
pub async fn wait_for_nth(bus: &TestBus, event_type: &str, nth: usize, bound: Duration) -> Event {
    let started = Instant::now();
    loop {
        let events = health_events(bus).await;
        if let Some(e) = events.iter().filter(|e| e.data.event_type() == event_type).nth(nth) {
            return e.clone();
        }
        assert!(started.elapsed() < bound, "no {event_type} #{nth} within {bound:?}: {events:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits up to `bound` for an event of `event_type`.
pub async fn wait_for_event(bus: &TestBus, event_type: &str, bound: Duration) -> Event {
    wait_for_nth(bus, event_type, 0, bound).await
}

/// Settings for a test: 1 s rounds, the given scope and host checks.
pub fn config(scope: &str, host: HostConfig) -> HealthConfig {
    HealthConfig {
        interval: Duration::from_secs(1),
        failures: 2,
        recoveries: 2,
        probe: steward_probe::ProbeConfig { timeout: Duration::from_secs(2) },
        scope: Some(scope.to_owned()),
        restart_limit: 3,
        host,
    }
}

/// A running health service on `bus`; stops when dropped.
pub struct Running {
    /// Its `/metrics`.
    pub metrics_url: String,
    shutdown: CancellationToken,
    _runtime: Runtime,
    _service: HealthService,
}

impl Running {
    /// Starts the service with `cfg`, talking to Docker through `engine` (the test bed's own
    /// when `None`).
    pub async fn start(bus: &TestBus, cfg: HealthConfig, engine: Option<Engine>) -> Self {
        let mut env = Env::from_pairs([("STEWARD_LOG", "warn")]);
        let mut rcfg = RuntimeConfig::read(Service::Health, &mut env);
        env.finish().expect("test config");
        rcfg.bus = bus.config().clone();
        rcfg.http_addr = ([127, 0, 0, 1], free_port()).into();
        let metrics_url = format!("http://{}/metrics", rcfg.http_addr);
        rcfg.uses_docker = engine.is_none();
        let shutdown = CancellationToken::new();
        let runtime = Runtime::start_with_shutdown(rcfg, shutdown.clone()).await.expect("runtime");
        let mut ctx = runtime.context().clone();
        if engine.is_some() {
            ctx.engine = engine;
        }
        let service = HealthService::start(cfg, &ctx).await.expect("health starts");
        Self { metrics_url, shutdown, _runtime: runtime, _service: service }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The value of the first sample of `name` on `url` whose labels contain `with`.
pub async fn gauge(url: &str, name: &str, with: &str) -> Option<f64> {
    let body = reqwest::get(url).await.ok()?.text().await.ok()?;
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(with))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A Docker volume removed on drop.
pub struct Volume(pub String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["volume", "rm", "-f", &self.0]).output();
    }
}
