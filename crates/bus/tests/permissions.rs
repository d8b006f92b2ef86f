//! The NATS authorization derived from the routing table, against a real nats-server started
//! with it: each participant publishes only its own event types and changes only its own
//! state; the committed compose configuration (users and server) is exactly what the code
//! generates.

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

#[test]
fn the_compose_stacks_server_configuration_is_generated() {
    let generated =
        steward_bus::ServerFile::new(steward_bus::Topology::Single, steward_bus::LinkTls::Off)
            .render(None)
            .expect("one server's configuration");
    let path = committed_config().with_file_name("nats.conf");
    if std::env::var_os("STEWARD_REGENERATE").is_some() {
        std::fs::write(&path, &generated).expect("write nats.conf");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{path:?} is out of date with `steward nats-config`: \
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
    let _setup = server.setup().await;
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
    let log = server.wait_log("Publish Violation");
    assert!(log.contains("User \"notifier\", Subject \"update.approved\""), "{log}");
}

#[tokio::test]
async fn nobody_changes_what_is_not_theirs() {
    let server = NatsServer::start_with_steward_users();
    let _setup = server.setup().await;
    let updater = connect(&server, Service::Updater).await;
    let updates: StateStore<serde_json::Value> =
        StateStore::open(&updater, "UPDATES").await.expect("the updater writes its bucket");
    updates.put("app", &serde_json::json!({"step": "gating"})).await.expect("updater writes");

    // The backup service reads the updater's records but cannot change them.
    let backup = connect(&server, Service::Backup).await;
    let seen = StateStore::<serde_json::Value>::open_existing(&backup, "UPDATES")
        .await
        .expect("backup reads")
        .expect("the bucket exists");
    assert!(seen.get("app").await.expect("get").is_some());
    assert!(seen.put("app", &serde_json::json!({"step": "done"})).await.is_err());
    assert!(backup.ensure_state_bucket("UPDATES").await.is_err(), "nor reconfigure it");
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
    let log = server.wait_log("Subscription Violation");
    assert!(log.contains("User \"watcher\", Subject \"update.>\""), "{log}");
    assert!(log.contains("Subject \"$JS.API.STREAM.DELETE.STEWARD\""), "{log}");
    assert!(log.contains("Subject \"$KV.STEWARD_HANDLED.updater.x\""), "{log}");
    let cli = connect(&server, Service::Cli).await;
    assert!(cli.replay(ReplayQuery::default()).await.is_ok(), "the stream is still there");
}

/// A JetStream API request (or a KV write) as `client`: the server's answer, or `None` when
/// none came (a subject the user may not publish to is dropped by the server).
async fn answer(client: &async_nats::Client, subject: String, body: Vec<u8>) -> Option<String> {
    let request = client.request(subject, body.into());
    match tokio::time::timeout(Duration::from_secs(2), request).await {
        Ok(Ok(reply)) => Some(String::from_utf8_lossy(&reply.payload).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn only_the_setup_user_administers_the_stream_the_consumers_and_the_buckets() {
    use async_nats::jetstream;
    let server = NatsServer::start_with_steward_users();
    let setup = server.setup().await;
    let admin = jetstream::new(setup.raw_client().clone());
    let plan = steward_bus::Setup::steward();
    let ns = Namespace::default();
    // Some history to lose, and a value in every bucket to overwrite.
    let cli = connect(&server, Service::Cli).await;
    for _ in 0..3 {
        cli.publish(&Event::new("cli", steward_events::WatchRequested::default()))
            .await
            .expect("the CLI publishes");
    }
    let mut stream_config =
        admin.get_stream("STEWARD").await.expect("stream").cached_info().config.clone();
    stream_config.max_messages = 1;
    let shrink = serde_json::to_vec(&stream_config).expect("json");
    let consumer_body = |name: &str| {
        serde_json::to_vec(&serde_json::json!({
            "stream_name": "STEWARD",
            "config": {"durable_name": name, "deliver_policy": "all", "ack_policy": "explicit",
                       "filter_subject": "nothing.here", "ack_wait": 1_000_000_000u64},
        }))
        .expect("json")
    };

    let mut attempts = vec![];
    for service in Service::ALL {
        let bus = connect(&server, service).await;
        let client = bus.raw_client().clone();
        let mut tries: Vec<(String, Vec<u8>)> = vec![
            ("$JS.API.STREAM.UPDATE.STEWARD".into(), shrink.clone()),
            ("$JS.API.STREAM.PURGE.STEWARD".into(), b"{}".to_vec()),
            ("$JS.API.STREAM.DELETE.STEWARD".into(), vec![]),
            (
                "$JS.API.STREAM.CREATE.KV_STEWARD_NEW".into(),
                b"{\"name\":\"KV_STEWARD_NEW\",\"subjects\":[\"$KV.STEWARD_NEW.>\"]}".to_vec(),
            ),
            // An "ephemeral" create that names a durable: must not reach the services' consumers.
            ("$JS.API.CONSUMER.CREATE.STEWARD".into(), consumer_body("updater")),
        ];
        for consumer in &plan.consumers {
            // Every durable consumer, its own included: deleting or reconfiguring it is setup's.
            tries.push((format!("$JS.API.CONSUMER.DELETE.STEWARD.{}", consumer.name), vec![]));
            tries.push((
                format!("$JS.API.CONSUMER.CREATE.STEWARD.{}", consumer.name),
                consumer_body(&consumer.name),
            ));
            tries.push((
                format!("$JS.API.CONSUMER.DURABLE.CREATE.STEWARD.{}", consumer.name),
                consumer_body(&consumer.name),
            ));
        }
        for bucket in
            plan.state_buckets.iter().filter(|b| !service.writes_buckets().contains(&b.as_str()))
        {
            let kv = ns.bucket(bucket);
            tries.push((format!("$KV.{kv}.forged"), b"{}".to_vec()));
            tries.push((format!("$JS.API.STREAM.UPDATE.KV_{kv}"), b"{}".to_vec()));
            tries.push((format!("$JS.API.STREAM.PURGE.KV_{kv}"), b"{}".to_vec()));
            tries.push((format!("$JS.API.STREAM.DELETE.KV_{kv}"), vec![]));
        }
        for other in Service::ALL.into_iter().filter(|o| *o != service) {
            tries.push((format!("$KV.STEWARD_HANDLED.{}.forged", other.name()), b"1".to_vec()));
        }
        for (subject, body) in tries {
            let client = client.clone();
            attempts.push(async move {
                let reply = answer(&client, subject.clone(), body).await;
                (service, subject, reply)
            });
        }
        open_later(bus);
    }
    let refused: Vec<_> = futures::future::join_all(attempts).await;
    // Refused: no answer (the server dropped it: no permission), or JetStream's error (the
    // CLI's ephemeral create naming a durable consumer is refused by the server itself).
    let answered: Vec<_> = refused
        .iter()
        .filter(|(_, _, reply)| reply.as_ref().is_some_and(|r| !r.contains("\"error\"")))
        .collect();
    assert!(
        answered.is_empty(),
        "the server acted on these (service, subject, reply): {answered:#?}"
    );

    // Nothing changed: the stream, its history, every consumer's configuration, every bucket.
    let mut stream = admin.get_stream("STEWARD").await.expect("the stream is still there");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.max_messages, -1, "nobody shrank the stream");
    assert_eq!(info.state.messages, 3, "the history is intact");
    for consumer in &plan.consumers {
        let found =
            stream.consumer_info(&consumer.name).await.expect("the consumer is still there");
        assert_eq!(found.config.ack_wait, consumer.ack_wait, "{}", consumer.name);
        assert_ne!(found.config.filter_subject, "nothing.here", "{}", consumer.name);
    }
    for bucket in &plan.state_buckets {
        let kv = admin.get_key_value(ns.bucket(bucket)).await.expect("bucket");
        assert!(kv.get("forged").await.expect("get").is_none(), "{bucket} was written");
    }
    assert!(admin.get_stream("KV_STEWARD_NEW").await.is_err(), "a service created a bucket");
    let log = server.wait_log("Publish Violation");
    assert!(log.contains("User \"watcher\", Subject \"$JS.API.STREAM.UPDATE.STEWARD\""), "{log}");

    // The provisioning user can do all of it.
    let ok = |reply: Option<String>, what: &str| {
        let reply = reply.unwrap_or_else(|| panic!("setup got no answer to {what}"));
        assert!(!reply.contains("\"error\""), "setup could not {what}: {reply}");
    };
    let client = setup.raw_client();
    ok(
        answer(client, "$JS.API.CONSUMER.DELETE.STEWARD.watcher".into(), vec![]).await,
        "delete a consumer",
    );
    ok(answer(client, "$JS.API.STREAM.UPDATE.STEWARD".into(), shrink).await, "update the stream");
    ok(
        answer(client, "$JS.API.STREAM.PURGE.STEWARD".into(), b"{}".to_vec()).await,
        "purge the stream",
    );
    ok(
        answer(client, "$JS.API.STREAM.DELETE.KV_STEWARD_WATCHER".into(), vec![]).await,
        "delete a bucket",
    );
    ok(answer(client, "$JS.API.STREAM.DELETE.STEWARD".into(), vec![]).await, "delete the stream");
}

/// Keeps a connection open until the process ends (its requests are still in flight).
fn open_later(bus: Bus) {
    std::mem::forget(bus);
}

/// The server log once it mentions `needle` (violations are logged asynchronously).

#[test]
fn the_data_of_every_sample_is_covered() {
    // The publish test above iterates over the samples; a type without one would go untested.
    let sampled: BTreeSet<&str> = samples::all("app").iter().map(EventData::event_type).collect();
    let all: BTreeSet<&str> = EventData::ALL_TYPES.iter().copied().collect();
    assert_eq!(sampled, all);
}

/// Approval links (live tokens) travel by request and reply: only the notifier may ask, only
/// the updater may listen, and the updater may answer only what it was asked.
#[tokio::test]
async fn only_the_notifier_asks_for_approval_links_and_only_the_updater_answers() {
    use futures::StreamExt as _;
    use steward_bus::approval::LinkReply;

    let server = NatsServer::start_with_steward_users();
    let _setup = server.setup().await;
    let updater = connect(&server, Service::Updater).await;
    let mut asks = updater
        .approval_link_requests(steward_bus::approval::LinkKind::Update)
        .await
        .expect("the updater listens");
    let served = tokio::spawn(async move {
        let mut answered = 0;
        while let Some(ask) = asks.next().await {
            let reply = match &ask.request {
                Ok(r) => LinkReply::Link {
                    url: format!("https://steward.test/approve/{}", r.id.simple()),
                    expires_at: time::OffsetDateTime::now_utc(),
                },
                Err(why) => LinkReply::Unavailable { reason: why.clone() },
            };
            ask.answer(&reply).await.expect("answer");
            answered += 1;
        }
        answered
    });
    updater.flush().await.expect("flush");

    let id = uuid::Uuid::now_v7();
    let notifier = connect(&server, Service::Notifier).await;
    let reply = notifier
        .request_approval_link(
            steward_bus::approval::LinkKind::Update,
            id,
            None,
            Duration::from_secs(5),
        )
        .await
        .expect("the notifier is answered");
    let LinkReply::Link { url, .. } = reply else { panic!("{reply:?}") };
    assert!(url.ends_with(&id.simple().to_string()), "{url}");

    // Nobody else may ask: the server refuses the publish, so no answer comes.
    for service in Service::ALL.into_iter().filter(|s| *s != Service::Notifier) {
        let bus = connect(&server, service).await;
        let asked = bus
            .request_approval_link(
                steward_bus::approval::LinkKind::Update,
                id,
                None,
                Duration::from_millis(500),
            )
            .await;
        assert!(asked.is_err(), "{service} was answered: {asked:?}");
    }
    let log = server.wait_log("Publish Violation");
    assert!(log.contains("approval.link"), "{log}");

    // Nobody else may listen: a watcher's subscription receives nothing of the notifier's asks.
    let watcher = connect(&server, Service::Watcher).await;
    let mut overheard = watcher
        .raw_client()
        .subscribe(watcher.namespace().subject(steward_bus::approval::APPROVAL_LINK_SUBJECT))
        .await
        .expect("subscribe call");
    notifier
        .request_approval_link(
            steward_bus::approval::LinkKind::Update,
            id,
            None,
            Duration::from_secs(5),
        )
        .await
        .expect("asked again");
    let heard = tokio::time::timeout(Duration::from_millis(500), overheard.next()).await;
    assert!(!matches!(heard, Ok(Some(_))), "the watcher overheard a link request");

    // The updater answers only requests: a "reply" it makes up for the notifier's inbox is
    // refused by the server.
    let inbox = format!("{}.forged", steward_bus::inbox_prefix(Service::Notifier.name()));
    let mut listening = notifier.raw_client().subscribe(inbox.clone()).await.expect("subscribe");
    notifier.flush().await.expect("flush");
    updater.raw_client().publish(inbox, "https://evil.test/approve/x".into()).await.expect("pub");
    updater.flush().await.expect("flush");
    let got = tokio::time::timeout(Duration::from_millis(500), listening.next()).await;
    assert!(!matches!(got, Ok(Some(_))), "an unrequested reply reached the notifier");

    drop(updater);
    served.abort();
}

/// Deployment links have their own subject: only the notifier asks, only the deployer listens
/// (the updater, which answers update links, overhears none of them, and the deployer none of
/// the updater's).
#[tokio::test]
async fn only_the_deployer_answers_deployment_approval_links() {
    use futures::StreamExt as _;
    use steward_bus::approval::{LinkKind, LinkReply};

    let server = NatsServer::start_with_steward_users();
    let _setup = server.setup().await;
    let deployer = connect(&server, Service::Deployer).await;
    let mut asks = deployer.approval_link_requests(LinkKind::Deploy).await.expect("listens");
    let served = tokio::spawn(async move {
        while let Some(ask) = asks.next().await {
            let reply = LinkReply::Unavailable { reason: "deployer".into() };
            ask.answer(&reply).await.expect("answer");
        }
    });
    deployer.flush().await.expect("flush");
    let notifier = connect(&server, Service::Notifier).await;
    let id = uuid::Uuid::now_v7();
    let reply = notifier
        .request_approval_link(LinkKind::Deploy, id, None, Duration::from_secs(5))
        .await
        .expect("the notifier is answered");
    assert_eq!(reply, LinkReply::Unavailable { reason: "deployer".into() });

    // The updater may not listen to deployment links, nor the deployer to update links.
    for (service, kind) in
        [(Service::Updater, LinkKind::Deploy), (Service::Deployer, LinkKind::Update)]
    {
        let bus = connect(&server, service).await;
        let mut overheard = bus
            .raw_client()
            .subscribe(bus.namespace().subject(kind.subject()))
            .await
            .expect("subscribe call");
        bus.flush().await.expect("flush");
        let _ = notifier.request_approval_link(kind, id, None, Duration::from_millis(300)).await;
        let heard = tokio::time::timeout(Duration::from_millis(300), overheard.next()).await;
        assert!(!matches!(heard, Ok(Some(_))), "{service} overheard a {kind:?} link request");
    }
    // Nobody but the notifier asks.
    let updater = connect(&server, Service::Updater).await;
    let asked =
        updater.request_approval_link(LinkKind::Deploy, id, None, Duration::from_millis(500)).await;
    assert!(asked.is_err(), "the updater was answered: {asked:?}");
    served.abort();
}

/// A service reads all of its bucket in one pass as its own user, however large: the ordered
/// consumer's flow-control replies are allowed (without them the read stalls past the
/// server's flow-control window and the server logs violations).
#[tokio::test]
async fn a_service_reads_a_large_bucket_in_one_pass_as_its_own_user() {
    let server = NatsServer::start_with_steward_users();
    let _setup = server.setup().await;
    let watcher = connect(&server, Service::Watcher).await;
    let store: StateStore<serde_json::Value> =
        StateStore::open(&watcher, steward_events::records::WATCH_BUCKET).await.expect("open");
    let filler = "x".repeat(4096);
    let n = 1500;
    let writes = (0..n).map(|i| {
        let (store, filler) = (&store, &filler);
        async move { store.put(&format!("c{i}"), &serde_json::json!({ "f": filler })).await }
    });
    for r in futures::future::join_all(writes).await {
        r.expect("put");
    }
    let all = store.all(Duration::from_secs(20)).await.expect("all, as the watcher");
    assert_eq!(all.len(), n);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.log();
    assert!(!log.contains("Violation"), "{log}");
}
