//! The consume loop against real NATS: outages, redelivery, dead letters, graceful shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_bus::{Bus, BusConfig, ConsumerSpec, ReplayQuery};
use steward_events::{Event, Service, WatchRequested};
use steward_runtime::{Context, Env, Handler, HandlerError, Metrics, Runtime, RuntimeConfig};
use steward_testkit::{bus_config, free_port, NatsServer, TestBus};
use tokio_util::sync::CancellationToken;

/// Records every event id it is given; can be told to sleep, fail or reject.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<uuid::Uuid>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

#[derive(Clone, Copy, Default)]
enum Behaviour {
    #[default]
    Succeed,
    Sleep(Duration),
    Retry,
    Reject,
    Panic,
}

impl Recorder {
    fn with(b: Behaviour) -> Self {
        let r = Self::default();
        *r.behaviour.lock().expect("lock") = b;
        r
    }
    fn seen(&self) -> Vec<uuid::Uuid> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Handler for Recorder {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        self.seen.lock().expect("lock").push(event.id);
        let behaviour = *self.behaviour.lock().expect("lock");
        match behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::Sleep(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Behaviour::Retry => Err(HandlerError::Retry(anyhow::anyhow!("dependency down"))),
            Behaviour::Reject => {
                Err(HandlerError::Reject(anyhow::anyhow!("container name is empty")))
            }
            Behaviour::Panic => panic!("boom in handler"),
        }
    }
}

/// A watcher-shaped service (consumes `watch.requested`) on `bus_cfg`, without Docker.
fn config(bus_cfg: BusConfig, tweak: &[(&str, &str)]) -> RuntimeConfig {
    let mut env = Env::from_pairs(tweak.iter().copied());
    let mut cfg = RuntimeConfig::read(Service::Watcher, &mut env);
    env.finish().expect("test config");
    cfg.bus = bus_cfg;
    cfg.http_addr = ([127, 0, 0, 1], free_port()).into();
    cfg.uses_docker = false;
    cfg
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Arc<Metrics>,
}

async fn start(cfg: RuntimeConfig, handler: Recorder) -> Running {
    let shutdown = CancellationToken::new();
    let runtime =
        Runtime::start_with_shutdown(cfg, shutdown.clone()).await.expect("runtime starts");
    let metrics = runtime.metrics();
    let task = tokio::spawn(runtime.run(handler));
    Running { shutdown, task, metrics }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops within 30 s")
            .expect("join")
            .expect("clean exit");
    }
}

async fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn counter(metrics: &Metrics, name: &str) -> u64 {
    // Sum of `steward_<name>_total` over label sets, read from the exposition text.
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(&format!("steward_{name}_total{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn publish_n(bus: &Bus, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = vec![];
    for _ in 0..n {
        let event = Event::new("test", WatchRequested::default());
        bus.publish(&event).await.expect("publish");
        ids.push(event.id);
    }
    ids
}

#[tokio::test]
async fn nats_killed_and_restarted_mid_stream_loses_nothing_and_handles_nothing_twice() {
    let mut server = NatsServer::start();
    let cfg = bus_config(&server.url(), "restart");
    let publisher_bus = TestBus::with_config(cfg.clone()).await;
    let recorder = Recorder::default();
    let running = start(config(cfg, &[("STEWARD_ACK_WAIT", "2s")]), recorder.clone()).await;

    // Publish in the background while NATS goes down and comes back.
    let producer = {
        let bus = publisher_bus.bus.clone();
        tokio::spawn(async move {
            let mut ids = vec![];
            for _ in 0..300 {
                ids.extend(publish_n(&bus, 1).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    wait_until("the first events", Duration::from_secs(10), || recorder.seen().len() > 50).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.start_again();
    let sent = tokio::time::timeout(Duration::from_secs(60), producer)
        .await
        .expect("producer done")
        .expect("join");
    assert_eq!(sent.len(), 300);

    wait_until("every event handled", Duration::from_secs(60), || {
        let seen = recorder.seen();
        sent.iter().all(|id| seen.contains(id))
    })
    .await;
    // Give redeliveries of unconfirmed acks (ack_wait 2 s) time to show up if they would.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = recorder.seen();
    let mut counts: HashMap<uuid::Uuid, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(*id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(counts.len(), 300, "no event lost, none extra");
    assert_eq!(counter(&running.metrics, "events_handled"), 300);
    running.stop().await;
}

#[tokio::test]
async fn a_service_starting_while_nats_stalls_waits_for_it_and_consumes() {
    let server = NatsServer::start();
    let mut cfg = bus_config(&server.url(), "stall");
    cfg.request_timeout = Duration::from_secs(1);
    let publisher_bus = TestBus::with_config(cfg.clone()).await;
    let recorder = Recorder::default();
    let shutdown = CancellationToken::new();
    let runtime = Runtime::start_with_shutdown(config(cfg, &[]), shutdown.clone())
        .await
        .expect("runtime starts");
    // Connected, then the server stalls for longer than a request's timeout: the consumer's
    // lookup times out (the old code exited "fatal": get consumer failed: timed out).
    server.pause();
    let metrics = runtime.metrics();
    let task = tokio::spawn(runtime.run(recorder.clone()));
    tokio::time::sleep(Duration::from_secs(4)).await;
    server.resume();
    assert!(!task.is_finished(), "the service gave up: {:?}", task.await);
    let sent = publish_n(&publisher_bus, 1).await;
    wait_until("the event handled", Duration::from_secs(60), || recorder.seen() == sent).await;
    Running { shutdown, task, metrics }.stop().await;
}

#[tokio::test]
async fn a_service_whose_consumer_was_never_provisioned_stops_at_once() {
    let server = NatsServer::start();
    let cfg = bus_config(&server.url(), "unprovisioned");
    // The stream is there, but not this service's consumer: waiting cannot help.
    let mut setup = steward_bus::Setup::steward();
    setup.consumers.retain(|c| c.name != ConsumerSpec::of(Service::Watcher, None).name);
    let _bus = TestBus::with_setup(cfg.clone(), &setup).await;
    let shutdown = CancellationToken::new();
    let runtime = Runtime::start_with_shutdown(config(cfg, &[]), shutdown.clone())
        .await
        .expect("runtime starts");
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(30), runtime.run(Recorder::default()))
        .await
        .expect("ends within 30 s");
    let e = ended.expect_err("not provisioned");
    assert!(e.to_string().contains("steward setup"), "{e:#}");
    assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
}

#[tokio::test]
async fn a_retried_failure_is_dead_lettered_after_max_deliver_and_a_reject_at_once() {
    let bus = TestBus::new("retry").await;
    let cfg = config(bus.config().clone(), &[("STEWARD_MAX_DELIVER", "2")]);
    let recorder = Recorder::with(Behaviour::Retry);
    let running = start(cfg, recorder.clone()).await;
    let ids = publish_n(&bus, 1).await;
    // Attempt 1 naks with a 2 s delay; attempt 2 is the last and dead-letters.
    wait_until("two attempts", Duration::from_secs(15), || recorder.seen().len() == 2).await;
    wait_until("a dead letter", Duration::from_secs(5), || {
        counter(&running.metrics, "events_dead_lettered") == 1
    })
    .await;

    *recorder.behaviour.lock().expect("lock") = Behaviour::Reject;
    let rejected = publish_n(&bus, 1).await;
    wait_until("second dead letter", Duration::from_secs(5), || {
        counter(&running.metrics, "events_dead_lettered") == 2
    })
    .await;
    assert_eq!(
        recorder.seen().iter().filter(|id| **id == rejected[0]).count(),
        1,
        "reject is not retried"
    );
    running.stop().await;

    let dead = dead_letter_reasons(&bus).await;
    let ids_in_order: Vec<uuid::Uuid> = dead.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids_in_order, [ids[0], rejected[0]]);
    let reasons: Vec<&String> = dead.iter().map(|(_, r)| r).collect();
    assert!(
        reasons[0].contains("failed after 2 deliveries") && reasons[0].contains("dependency down"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("rejected") && reasons[1].contains("container name is empty"),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn shutdown_finishes_the_event_in_hand_within_the_grace() {
    let bus = TestBus::new("grace").await;
    let cfg = config(bus.config().clone(), &[("STEWARD_SHUTDOWN_GRACE", "10s")]);
    let recorder = Recorder::with(Behaviour::Sleep(Duration::from_secs(1)));
    let running = start(cfg.clone(), recorder.clone()).await;
    publish_n(&bus, 1).await;
    wait_until("handler started", Duration::from_secs(5), || recorder.seen().len() == 1).await;
    let metrics = running.metrics.clone();
    running.stop().await;
    assert_eq!(counter(&metrics, "events_handled"), 1, "finished before exiting");

    // A new instance does not see it again.
    let again = Recorder::default();
    let running = start(cfg, again.clone()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(again.seen().is_empty());
    running.stop().await;
}

#[tokio::test]
async fn shutdown_returns_an_unfinished_event_for_prompt_redelivery() {
    let bus = TestBus::new("nak").await;
    // ack_wait is long: redelivery must come from the nak, not from the timeout.
    let cfg = config(
        bus.config().clone(),
        &[("STEWARD_SHUTDOWN_GRACE", "200ms"), ("STEWARD_ACK_WAIT", "60s")],
    );
    let slow = Recorder::with(Behaviour::Sleep(Duration::from_secs(30)));
    let running = start(cfg.clone(), slow.clone()).await;
    let ids = publish_n(&bus, 1).await;
    wait_until("handler started", Duration::from_secs(5), || slow.seen().len() == 1).await;
    let stopped = Instant::now();
    running.stop().await;
    assert!(stopped.elapsed() < Duration::from_secs(5), "did not wait for the slow handler");

    let next = Recorder::default();
    let running = start(cfg, next.clone()).await;
    wait_until("redelivery to the next instance", Duration::from_secs(10), || next.seen() == ids)
        .await;
    running.stop().await;
}

async fn dead_letter_reasons(bus: &Bus) -> Vec<(uuid::Uuid, String)> {
    let query = ReplayQuery { subjects: vec!["dlq.>".into()], ..Default::default() };
    let mut replay = bus.replay(query).await.expect("replay");
    let mut out = vec![];
    while let Some(item) = replay.next().await {
        let item = item.expect("item");
        let id = item.event.as_ref().map(|e| e.id).expect("original event in the dead letter");
        out.push((id, item.dead_letter_reason.expect("reason")));
    }
    out
}

#[tokio::test]
async fn a_panicking_handler_is_dead_lettered_and_the_service_goes_on() {
    let bus = TestBus::new("panic").await;
    let recorder = Recorder::with(Behaviour::Panic);
    let running = start(config(bus.config().clone(), &[]), recorder.clone()).await;
    let bad = publish_n(&bus, 1).await;
    wait_until("dead letter", Duration::from_secs(10), || {
        counter(&running.metrics, "events_dead_lettered") == 1
    })
    .await;
    *recorder.behaviour.lock().expect("lock") = Behaviour::Succeed;
    let good = publish_n(&bus, 1).await;
    wait_until("next event handled", Duration::from_secs(10), || {
        counter(&running.metrics, "events_handled") == 1
    })
    .await;
    assert_eq!(recorder.seen(), [bad[0], good[0]]);
    running.stop().await;
    let dead = dead_letter_reasons(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, bad[0]);
    assert!(dead[0].1.contains("handler panicked: boom in handler"), "{dead:?}");
}

#[tokio::test]
async fn an_event_that_kills_the_service_every_time_is_dead_lettered_not_lost() {
    let bus = TestBus::new("crash").await;
    let cfg =
        config(bus.config().clone(), &[("STEWARD_MAX_DELIVER", "1"), ("STEWARD_ACK_WAIT", "1s")]);
    // The only attempt hangs, and the process "dies": the task is dropped without a nak and
    // its connection closed, as a kill -9 would.
    let hang = Recorder::with(Behaviour::Sleep(Duration::from_secs(3600)));
    let first = start(cfg.clone(), hang.clone()).await;
    let ids = publish_n(&bus, 1).await;
    wait_until("first attempt", Duration::from_secs(10), || hang.seen() == ids).await;
    first.task.abort();
    first.shutdown.cancel();
    let _ = first.task.await;

    let next = Recorder::default();
    let second = start(cfg, next.clone()).await;
    wait_until("dead letter by the next instance", Duration::from_secs(15), || {
        counter(&second.metrics, "events_dead_lettered") == 1
    })
    .await;
    assert!(next.seen().is_empty(), "the handler is not run again on an exhausted event");
    second.stop().await;
    let dead = dead_letter_reasons(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, ids[0]);
    assert!(dead[0].1.contains("delivered 1 time(s) without being settled"), "{dead:?}");
}
