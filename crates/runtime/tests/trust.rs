//! Trust boundaries of the bus, with the real consume loop on a nats-server that has Steward's
//! generated users (as the compose stack does).
//!
//! "The subject is not the type": every participant, logged in as its own user, smuggles an
//! event of every type it may not publish inside every subject it may publish. The server
//! lets each through (the subject is allowed); every consuming service's runtime must act on
//! none of them and dead-letter each in `dlq.<consumer>` with the reason. The whole cross
//! product runs against one server in one process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_bus::{Bus, BusConfig, ReplayQuery};
use steward_events::{samples, Event, EventData, Service};
use steward_runtime::{Context, Env, Handler, HandlerError, Runtime, RuntimeConfig};
use steward_testkit::{free_port, NatsServer};
use tokio_util::sync::CancellationToken;

/// Records (service, event id) of every event a handler is given.
#[derive(Clone)]
struct Recorder {
    service: Service,
    seen: Arc<Mutex<Vec<(&'static str, uuid::Uuid)>>>,
}

impl Handler for Recorder {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        self.seen.lock().expect("lock").push((self.service.name(), event.id));
        Ok(())
    }
}

fn runtime_config(service: Service, bus: BusConfig) -> RuntimeConfig {
    let mut env = Env::from_pairs(std::iter::empty::<(&str, &str)>());
    let mut cfg = RuntimeConfig::read(service, &mut env);
    env.finish().expect("test config");
    cfg.bus = bus;
    cfg.http_addr = ([127, 0, 0, 1], free_port()).into();
    cfg.uses_docker = false;
    cfg
}

fn sample(event_type: &str) -> EventData {
    samples::all("app")
        .into_iter()
        .find(|d| d.event_type() == event_type)
        .unwrap_or_else(|| panic!("no sample of {event_type}"))
}

async fn connect(server: &NatsServer, service: Service) -> Bus {
    let cfg =
        BusConfig { connect_timeout: Duration::from_secs(10), ..server.bus_config_as(service) };
    Bus::connect(cfg, service.binary()).await.unwrap_or_else(|e| panic!("{service}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_participant_gets_an_event_acted_on_under_a_subject_that_is_not_its_type() {
    let started = Instant::now();
    let server = NatsServer::start_with_steward_users();
    let setup = server.setup().await;
    let seen = Arc::new(Mutex::new(vec![]));
    let consumers: Vec<Service> =
        Service::DAEMONS.into_iter().filter(|s| !s.consumes().is_empty()).collect();

    // Every consuming service's real consume loop, logged in as its own user.
    let shutdown = CancellationToken::new();
    let mut running = vec![];
    for service in consumers.iter().copied() {
        let cfg = runtime_config(service, server.bus_config_as(service));
        let runtime = Runtime::start_with_shutdown(cfg, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("{service} starts as its own user: {e:#}"));
        running.push(tokio::spawn(runtime.run(Recorder { service, seen: seen.clone() })));
    }

    // The cross product: (participant, subject it may publish, type it may not publish).
    let mut expected_dead: BTreeSet<(String, uuid::Uuid)> = BTreeSet::new();
    let mut forged = 0usize;
    let mut publishers = vec![];
    for who in Service::ALL {
        let bus = connect(&server, who).await;
        for subject in who.publishes() {
            for smuggled in EventData::ALL_TYPES.iter().filter(|t| !who.publishes().contains(t)) {
                let event = Event::new(format!("{}/forger", who.binary()), sample(smuggled));
                let body = event.encode().expect("encode");
                // A request to a stream subject is answered with the stream's ack.
                let ack = bus
                    .raw_client()
                    .request(bus.namespace().subject(subject), body.into())
                    .await
                    .unwrap_or_else(|e| panic!("{who} may publish on {subject}: {e}"));
                let ack = String::from_utf8_lossy(&ack.payload).into_owned();
                assert!(ack.contains("\"seq\"") && !ack.contains("error"), "{ack}");
                forged += 1;
                for consumer in consumers.iter().filter(|c| c.consumes().contains(subject)) {
                    expected_dead.insert((format!("dlq.{}", consumer.name()), event.id));
                }
            }
        }
        publishers.push(bus);
    }

    // Behind them, one genuine event per consumed type, from a participant allowed to publish
    // it: handled by every consumer of the type (the loops are alive and acting).
    let mut expected_seen = BTreeSet::new();
    let consumed: BTreeSet<&str> =
        consumers.iter().flat_map(|c| c.consumes().iter().copied()).collect();
    for event_type in consumed {
        let Some(who) = Service::ALL.into_iter().find(|s| s.publishes().contains(&event_type))
        else {
            continue;
        };
        let bus = connect(&server, who).await;
        let event = Event::new(format!("{}/genuine", who.binary()), sample(event_type));
        bus.publish(&event).await.expect("genuine publish");
        for consumer in consumers.iter().filter(|c| c.consumes().contains(&event_type)) {
            expected_seen.insert((consumer.name(), event.id));
        }
        publishers.push(bus);
    }

    // Wait until every forged event is in the dead-letter subject of each of its consumers.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead = loop {
        let mut replay = setup
            .replay(ReplayQuery { subjects: vec!["dlq.>".into()], ..Default::default() })
            .await
            .expect("setup replays");
        let mut dead: BTreeMap<(String, uuid::Uuid), String> = BTreeMap::new();
        while let Some(item) = replay.next().await {
            let item = item.expect("replayed");
            let id = item.event.as_ref().map(|e| e.id).expect("a dead letter keeps its payload");
            dead.insert((item.event_type.clone(), id), item.dead_letter_reason.unwrap_or_default());
        }
        if dead.len() >= expected_dead.len() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got: BTreeSet<_> = dead.keys().cloned().collect();
    let missing: Vec<_> = expected_dead.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} not dead-lettered, e.g. {missing:?}",
        expected_dead.len() - got.intersection(&expected_dead).count(),
        expected_dead.len()
    );
    assert_eq!(got, expected_dead, "nothing else is dead-lettered");
    for ((_, id), reason) in &dead {
        assert!(
            reason.contains("refused") && reason.contains("carries an event of type"),
            "{id}: {reason}"
        );
    }

    // The genuine events were handled; no forged one ever reached a handler.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let handled: BTreeSet<_> = seen.lock().expect("lock").iter().copied().collect();
        if handled.is_superset(&expected_seen) || Instant::now() > deadline {
            assert_eq!(handled, expected_seen, "handlers saw exactly the genuine events");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    for task in running {
        task.await.expect("join").expect("clean exit");
    }
    eprintln!(
        "{forged} forged events, {} dead letters, {} genuine deliveries in {:?}",
        expected_dead.len(),
        expected_seen.len(),
        started.elapsed()
    );
    let log = server.log();
    assert!(!log.contains("Violation"), "the services needed nothing they may not do: {log}");
}
