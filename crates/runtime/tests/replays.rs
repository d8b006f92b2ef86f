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
    // Generous: it returns as soon as the event is seen; leaf-node copies under CI load are slow.
    let deadline = Instant::now() + Duration::from_secs(60);
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
    // Deliveries are handled concurrently and counted after their handler returns: the old
    // one's count, and the new one's, may land after the handler saw the new one (both seen
    // in CI under load), so the counts are awaited, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counted = |name| counter(&metrics, name) > 0;
    while !(counted("events_expired") && counted("events_handled")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counter(&metrics, "events_expired"), 1, "{}", metrics.render());
    assert_eq!(counter(&metrics, "events_handled"), 1);
    assert_eq!(recorder.0.lock().expect("lock").clone(), vec![new], "handled late: {old}");
    shutdown.cancel();
    task.await.expect("join").expect("clean exit");
}

/// A rebuilt hub (its volume lost, `steward setup` run again) copies each host's leaf history
/// from the start, every copy stored with the hub's current time, while the notifier's new
/// consumer already waits for new messages. An alert from a host older than the horizon (by
/// its own `time`) is not mailed as new; one made now is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_hub_does_not_hand_on_a_hosts_old_history_as_new() {
    use steward_events::HealthFailed;
    use steward_testkit::leaf::NatsLeaves;
    const A: &str = "vps-a";
    let hosts = vec![A.to_owned()];
    // The bus's own timeouts throughout: one-second request bounds failed in CI under load.
    let net = NatsLeaves::start(&hosts, |c| c);
    let leaf_setup = Bus::open(net.leaf_config_as(A, steward_bus::SETUP_USER), "setup")
        .await
        .expect("the leaf's setup user connects");
    leaf_setup.setup(&Setup::for_hosts(&hosts)).await.expect("the leaf provisions");
    let health = Service::Health;
    let cfg =
        BusConfig { host: Some(A.into()), ..net.leaf_config_as(A, &health.identity(Some(A))) };
    let agent = Bus::connect(cfg, health.binary()).await.expect("a's health agent connects");
    let alert = || {
        let data = HealthFailed {
            container: "gitea".into(),
            check: "http".into(),
            reason: "down".into(),
            consecutive_failures: 3,
        };
        Event::new("steward/test", data).with_host(Some(A.to_owned()))
    };
    // Made eight days ago (the horizon is the markers' seven days), in the leaf since.
    let mut old = alert();
    old.time -= Duration::from_secs(8 * 24 * 3600);
    agent.publish(&old).await.expect("the host's old alert");

    // The hub rebuilt: its setup creates the stream with its sources and the consumers.
    let hub_setup = Bus::open(net.hub_config_as(steward_bus::SETUP_USER), "setup")
        .await
        .expect("the hub's setup user connects");
    hub_setup.setup(&Setup::for_hosts(&hosts)).await.expect("the hub provisions");
    let recorder = Recorder::default();
    let mut env = Env::from_pairs(std::iter::empty::<(&str, &str)>());
    let mut rcfg = RuntimeConfig::read(Service::Notifier, &mut env);
    env.finish().expect("test config");
    rcfg.bus = net.hub_config_as(Service::Notifier.name());
    rcfg.http_addr = ([127, 0, 0, 1], free_port()).into();
    let shutdown = CancellationToken::new();
    let runtime = Runtime::start_with_shutdown(rcfg, shutdown.clone()).await.expect("starts");
    let metrics = runtime.metrics();
    let task = tokio::spawn(runtime.run(recorder.clone()));

    // The copy of the old alert races the consumer's creation: copied first, the consumer
    // (new messages only) never sees it; copied after, the horizon refuses it. Under CI load
    // the copy won, so the horizon is also made to decide for certain: an alert as old, copied
    // only now, after the consumer exists (a leaf's history reaches a hub in any order).
    let mut late = alert();
    late.time -= Duration::from_secs(8 * 24 * 3600);
    agent.publish(&late).await.expect("the host's old alert, copied late");
    // A new alert reaches the hub behind the old ones (a source copies in order).
    let new = alert();
    agent.publish(&new).await.expect("the host's new alert");
    let seen = seen_eventually(&recorder, new.id).await;
    assert_eq!(seen, vec![new.id], "{} or {} is a week old and was handed on", old.id, late.id);
    // Counted concurrently with the new one's handling (as above): awaited, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter(&metrics, "events_expired") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired = counter(&metrics, "events_expired");
    assert!(expired == 1 || expired == 2, "{}", metrics.render());
    assert_eq!(
        recorder.0.lock().expect("lock").clone(),
        vec![new.id],
        "an old alert, handled late"
    );
    shutdown.cancel();
    task.await.expect("join").expect("clean exit");
}
