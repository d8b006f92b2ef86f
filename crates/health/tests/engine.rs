//! The Docker engine as a health target, against the real NATS test bed and a stall proxy in
//! front of the real engine: a hung engine is one `health.engine_failed` (its containers stay
//! unjudged), and its return one `health.engine_recovered` in the same flow.

use std::time::{Duration, Instant};

use steward_engine::Engine;
use steward_events::{Event, EventData, Service};
use steward_health::config::HealthConfig;
use steward_health::service::HealthService;
use steward_runtime::{Env, Runtime, RuntimeConfig};
use steward_testkit::docker::Container;
use steward_testkit::stall::StallProxy;
use steward_testkit::{free_port, stored_events, unique_name, TestBus};
use tokio_util::sync::CancellationToken;

async fn health_events(bus: &TestBus) -> Vec<Event> {
    stored_events(bus)
        .await
        .into_iter()
        .filter(|e| e.data.event_type().starts_with("health."))
        .collect()
}

fn count(events: &[Event], event_type: &str) -> usize {
    events.iter().filter(|e| e.data.event_type() == event_type).count()
}

/// Waits up to `bound` for an event of `event_type`.
async fn wait_for_event(bus: &TestBus, event_type: &str, bound: Duration) -> Event {
    let started = Instant::now();
    loop {
        let events = health_events(bus).await;
        if let Some(e) = events.iter().find(|e| e.data.event_type() == event_type) {
            return e.clone();
        }
        assert!(started.elapsed() < bound, "no {event_type} within {bound:?}: {events:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_is_reported_once_and_its_return_once() {
    let bus = TestBus::new("health-engine").await;
    let scope = unique_name("scope");
    let scope_label = format!("steward.scope={scope}");
    let _app = Container::run(
        &unique_name("health-engine"),
        &["--label", "steward.enable=true", "--label", &scope_label, "steward-test/app:v1"],
    );
    let proxy = StallProxy::docker();

    let mut env = Env::from_pairs([("STEWARD_LOG", "warn")]);
    let mut cfg = RuntimeConfig::read(Service::Health, &mut env);
    env.finish().expect("test config");
    cfg.bus = bus.config().clone();
    cfg.http_addr = ([127, 0, 0, 1], free_port()).into();
    cfg.uses_docker = false;
    let shutdown = CancellationToken::new();
    let runtime = Runtime::start_with_shutdown(cfg, shutdown.clone()).await.expect("runtime");
    let mut ctx = runtime.context().clone();
    ctx.engine = Some(Engine::new(proxy.docker_host(), Duration::from_secs(1)));
    let health = HealthConfig {
        interval: Duration::from_secs(1),
        failures: 2,
        recoveries: 2,
        probe: steward_probe::ProbeConfig { timeout: Duration::from_secs(2) },
        scope: Some(scope),
        restart_limit: 3,
        host: steward_health::config::HostConfig::default(),
    };
    let _service = HealthService::start(health, &ctx).await.expect("health starts");

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(health_events(&bus).await, vec![], "a healthy engine and container are quiet");

    proxy.stall();
    let failed = wait_for_event(&bus, "health.engine_failed", Duration::from_secs(30)).await;
    let EventData::EngineFailed(f) = &failed.data else { unreachable!() };
    assert_eq!(f.engine, proxy.docker_host());
    assert_eq!(f.reason, format!("engine did not answer {} within 1s", f.call));
    assert_eq!(f.consecutive_failures, 2);
    // More silent rounds: no repeated alarm, and nothing said about the container.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let events = health_events(&bus).await;
    assert_eq!(count(&events, "health.engine_failed"), 1, "{events:?}");
    assert_eq!(count(&events, "health.failed"), 0, "{events:?}");

    proxy.resume();
    let recovered = wait_for_event(&bus, "health.engine_recovered", Duration::from_secs(30)).await;
    assert_eq!(recovered.correlation_id, failed.correlation_id, "one flow in the audit");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let events = health_events(&bus).await;
    let types: Vec<_> = events.iter().map(|e| e.data.event_type()).collect();
    assert_eq!(types, ["health.engine_failed", "health.engine_recovered"]);

    shutdown.cancel();
    drop(runtime);
}
