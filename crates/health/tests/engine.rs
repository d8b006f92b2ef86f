//! The Docker engine as a health target, against the real NATS test bed and a stall proxy in
//! front of the real engine: a hung engine is one `health.engine_failed` (its containers stay
//! unjudged), and its return one `health.engine_recovered` in the same flow.

mod common;

use std::time::Duration;

use common::{count, health_events, wait_for_event, Running};
use steward_engine::Engine;
use steward_events::EventData;
use steward_health::config::HostConfig;
use steward_testkit::docker::Container;
use steward_testkit::stall::StallProxy;
use steward_testkit::{unique_name, TestBus};

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

    let engine = Engine::new(proxy.docker_host(), Duration::from_secs(1));
    let _service =
        Running::start(&bus, common::config(&scope, HostConfig::default()), Some(engine)).await;

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
}
