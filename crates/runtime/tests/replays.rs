//! Old events do not come back: a consumer re-created by `steward setup` starts at new events,
//! and a delivery older than the idempotency horizon (the handled markers' TTL) is acked and
//! ignored, never handed to a handler, whatever replays it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_bus::{Bus, BusConfig, Setup};
use steward_events::{Event, Service, WatchRequested};
use steward_runtime::{Context, Env, Handler, HandlerError, Metrics, Runtime, RuntimeConfig};
use steward_testkit::{bus_config, free_port, testbed, TestBus};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<uuid::Uuid>>>);

impl Handler for Recorder {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        self.0.lock().expect("lock").push(event.id);
        Ok(())
    }
}

/// The watcher's runtime (it consumes `watch.requested`) on `bus_cfg`, without Docker.
async fn start(
    bus_cfg: BusConfig,
    recorder: Recorder,
) -> (CancellationToken, Arc<Metrics>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut env = Env::from_pairs(std::iter::empty::<(&str, &str)>());
    let mut cfg = RuntimeConfig::read(Service::Watcher, &mut env);
    env.finish().expect("test config");
    cfg.bus = bus_cfg;
    cfg.http_addr = ([127, 0, 0, 1], free_port()).into();
    cfg.uses_docker = false;
    let shutdown = CancellationToken::new();
    let runtime = Runtime::start_with_shutdown(cfg, shutdown.clone()).await.expect("starts");
    let metrics = runtime.metrics();
    (shutdown, metrics, tokio::spawn(runtime.run(recorder)))
}

async fn publish(bus: &Bus) -> uuid::Uuid {
    let event = Event::new("test", WatchRequested::default());
    bus.publish(&event).await.expect("publish");
    event.id
}

async fn seen_eventually(recorder: &Recorder, id: uuid::Uuid) -> Vec<uuid::Uuid> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = recorder.0.lock().expect("lock").clone();
        if seen.contains(&id) || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counter(metrics: &Metrics, name: &str) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&format!("steward_{name}_total{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn a_consumer_recreated_by_setup_does_not_replay_the_retention() {
    let bus = TestBus::new("recreated").await;
    let old = publish(&bus).await;
    // The consumer is lost (deleted by hand, a restored NATS volume...) and setup runs again.
    let ns = bus.namespace().clone();
    let reply = bus
        .raw_client()
        .request(format!("$JS.API.CONSUMER.DELETE.{}.watcher", ns.stream), "".into())
        .await
        .expect("delete the watcher's consumer");
    assert!(String::from_utf8_lossy(&reply.payload).contains("\"success\":true"));
    bus.setup(&Setup::steward()).await.expect("setup again");

    let recorder = Recorder::default();
    let (shutdown, _metrics, task) = start(bus.config().clone(), recorder.clone()).await;
    let new = publish(&bus).await;
    let seen = seen_eventually(&recorder, new).await;
    assert_eq!(seen, vec![new], "only the new event; never {old} from the start of the stream");
    shutdown.cancel();
    task.await.expect("join").expect("clean exit");
}

#[tokio::test]
async fn a_delivery_older_than_the_idempotency_horizon_is_never_handled() {
    // Markers kept 2 s: an event stored 3 s ago could no longer be recognised as handled.
    let setup = Setup { marker_ttl: Duration::from_secs(2), ..Setup::steward() };
    let bus = TestBus::with_setup(bus_config(&testbed::nats_url(), "horizon"), &setup).await;
    let old = publish(&bus).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let recorder = Recorder::default();
    let (shutdown, metrics, task) = start(bus.config().clone(), recorder.clone()).await;
    let new = publish(&bus).await;
    let seen = seen_eventually(&recorder, new).await;
    assert_eq!(seen, vec![new], "{old} is beyond the horizon and was handed to the handler");
    assert_eq!(counter(&metrics, "events_expired"), 1, "{}", metrics.render());
    assert_eq!(counter(&metrics, "events_handled"), 1);
    shutdown.cancel();
    task.await.expect("join").expect("clean exit");
}
