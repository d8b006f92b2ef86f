//! The NATS authorization derived from the routing table, against a real nats-server started
//! with it: each participant publishes only its own event types and changes only its own
//! state; the committed compose configuration is exactly what the code generates.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use steward_bus::{Bus, BusConfig, Namespace, Permissions};
use steward_bus::{ReplayQuery, StateStore};
use steward_events::{samples, Event, EventData, Service};
use steward_testkit::NatsServer;

fn committed_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compose/nats/authorization.conf")
}

#[test]
fn the_compose_stacks_authorization_is_generated_from_the_routing_table() {
    let generated = Permissions::server_config(&Namespace::default());
    let path = committed_config();
    if std::env::var_os("STEWARD_REGENERATE").is_some() {
        std::fs::write(&path, &generated).expect("write authorization.conf");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{path:?} is out of date with the routing table: \
         STEWARD_REGENERATE=1 cargo test -p steward-bus --test permissions"
    );
}

async fn connect(server: &NatsServer, service: Service) -> Bus {
    let cfg = BusConfig {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(1),
        publish_timeout: Duration::from_secs(1),
        ..server.bus_config_as(service)
    };
    Bus::connect(cfg, service.binary())
        .await
        .unwrap_or_else(|e| panic!("{service} cannot connect as its own user: {e}"))
}

#[tokio::test]
async fn each_participant_publishes_only_its_own_event_types() {
    let server = NatsServer::start_with_steward_users();
    let mut expected = BTreeSet::new();
    let mut open = vec![];
    for service in Service::ALL {
        let bus = connect(&server, service).await;
        for data in samples::all("app") {
            let event = Event::new(service.name(), data);
            let subject = bus.namespace().subject(event.event_type());
            let body = event.encode().expect("encode");
            // Core publishes: the stream stores what the server lets through.
            bus.raw_client().publish(subject, body.into()).await.expect("publish");
            if service.publishes().contains(&event.event_type()) {
                expected.insert((service.name().to_owned(), event.event_type().to_owned()));
            }
        }
        bus.flush().await.expect("flush");
        // Kept open: a client closed right after its flush can lose its last publishes
        // (reset with bytes still unread by the server).
        open.push(bus);
    }
    let cli = connect(&server, Service::Cli).await;
    // A flush means the server has the core publishes, not that JetStream has stored them:
    // wait for the count, or the replay may end before the last ones.
    let js = async_nats::jetstream::new(cli.raw_client().clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = js.get_stream(&cli.namespace().stream).await.expect("stream");
        let stored = stream.info().await.expect("stream info").state.messages;
        if stored >= expected.len() as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stored} of {} stored", expected.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut replay = cli.replay(ReplayQuery::default()).await.expect("the CLI replays");
    let mut stored = BTreeSet::new();
    while let Some(item) = replay.next().await {
        let event = item.expect("replayed").event.expect("decodes");
        stored.insert((event.source.clone(), event.event_type().to_owned()));
    }
    assert_eq!(stored, expected);
    assert!(expected.contains(&("cli".to_owned(), "update.approved".to_owned())));
    assert!(!expected.iter().any(|(who, t)| who == "notifier" && t == "update.approved"));
    assert!(!expected.iter().any(|(who, t)| who == "watcher" && t.starts_with("backup.")));
    let log = wait_log(&server, "Publish Violation").await;
    assert!(log.contains("User \"notifier\", Subject \"update.approved\""), "{log}");
}

#[tokio::test]
async fn nobody_changes_what_is_not_theirs() {
    let server = NatsServer::start_with_steward_users();
    let updater = connect(&server, Service::Updater).await;
    let updates: StateStore<serde_json::Value> =
        StateStore::open(&updater, "UPDATES").await.expect("the updater owns its bucket");
    updates.put("app", &serde_json::json!({"step": "gating"})).await.expect("updater writes");

    // The backup service reads the updater's records but cannot change them.
    let backup = connect(&server, Service::Backup).await;
    let seen = StateStore::<serde_json::Value>::open_existing(&backup, "UPDATES")
        .await
        .expect("backup reads")
        .expect("the bucket exists");
    assert!(seen.get("app").await.expect("get").is_some());
    assert!(seen.put("app", &serde_json::json!({"step": "done"})).await.is_err());
    assert!(StateStore::<serde_json::Value>::open(&backup, "UPDATES").await.is_err());
    assert_eq!(
        updates.get("app").await.expect("get").map(|v| v.value["step"].clone()),
        Some(serde_json::json!("gating"))
    );

    // The watcher cannot read the updater's state, delete the stream or another's consumer,
    // mark another service's events handled, or listen on event subjects.
    let watcher = connect(&server, Service::Watcher).await;
    assert!(StateStore::<serde_json::Value>::open_existing(&watcher, "UPDATES").await.is_err());
    let client = watcher.raw_client();
    let delete = client.request("$JS.API.STREAM.DELETE.STEWARD", "".into());
    let deleted = tokio::time::timeout(Duration::from_secs(2), delete).await;
    assert!(!matches!(deleted, Ok(Ok(_))), "the watcher deleted the stream: {deleted:?}");
    let marker = client.publish("$KV.STEWARD_HANDLED.updater.x", "1".into()).await;
    assert!(marker.is_ok(), "core publish does not fail on the client side");
    let _sub = client.subscribe("update.>").await.expect("subscribe request");
    watcher.flush().await.expect("flush");
    let log = wait_log(&server, "Subscription Violation").await;
    assert!(log.contains("User \"watcher\", Subject \"update.>\""), "{log}");
    assert!(log.contains("Subject \"$JS.API.STREAM.DELETE.STEWARD\""), "{log}");
    assert!(log.contains("Subject \"$KV.STEWARD_HANDLED.updater.x\""), "{log}");
    let cli = connect(&server, Service::Cli).await;
    assert!(cli.replay(ReplayQuery::default()).await.is_ok(), "the stream is still there");
}

/// The server log once it mentions `needle` (violations are logged asynchronously).
async fn wait_log(server: &NatsServer, needle: &str) -> String {
    for _ in 0..50 {
        let log = server.log();
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never logged {needle:?}: {}", server.log())
}

#[test]
fn the_data_of_every_sample_is_covered() {
    // The publish test above iterates over the samples; a type without one would go untested.
    let sampled: BTreeSet<&str> = samples::all("app").iter().map(EventData::event_type).collect();
    let all: BTreeSet<&str> = EventData::ALL_TYPES.iter().copied().collect();
    assert_eq!(sampled, all);
}
