//! Host routing (`STEWARD_HOSTS`) on a real nats-server with the users generated for two hosts:
//! an agent reads only its host's events, publishes only on its host's subjects and writes only
//! its host's keys; the central CLI reads every host and addresses either.

use std::time::Duration;

use steward_bus::{Bus, BusConfig, BusError, ConsumerSpec, Permissions, Setup, StateStore};
use steward_events::{DecodeError, Event, Service, UpdateApproved, UpdateRejected};
use steward_testkit::NatsServer;

const A: &str = "vps-a";
const B: &str = "vps-b";

fn hosts() -> Vec<String> {
    vec![A.to_owned(), B.to_owned()]
}

fn quick(cfg: BusConfig, host: Option<&str>) -> BusConfig {
    BusConfig {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(1),
        publish_timeout: Duration::from_secs(1),
        host: host.map(str::to_owned),
        hosts: hosts(),
        ..cfg
    }
}

/// `service`'s agent on `host`, logged in as its per-host user.
async fn agent(server: &NatsServer, service: Service, host: &str) -> Bus {
    let cfg = quick(server.bus_config_as_user(&service.identity(Some(host))), Some(host));
    Bus::connect(cfg, service.binary())
        .await
        .unwrap_or_else(|e| panic!("{service} of {host} cannot connect as its own user: {e}"))
}

async fn central(server: &NatsServer, service: Service) -> Bus {
    Bus::connect(quick(server.bus_config_as(service), None), service.binary())
        .await
        .unwrap_or_else(|e| panic!("{service} cannot connect: {e}"))
}

async fn provisioned() -> (NatsServer, Bus) {
    let server = NatsServer::start_with_users_for(&hosts());
    let setup = Bus::open(quick(server.bus_config_as_setup(), None), "steward-setup")
        .await
        .expect("the setup user connects");
    let done = setup.setup(&Setup::for_hosts(&hosts())).await.expect("setup provisions");
    assert!(done.iter().any(|l| l.starts_with("consumer updater-vps-b:")), "{done:?}");
    (server, setup)
}

fn approval(host: Option<&str>) -> Event {
    let data = UpdateApproved { update_id: uuid::Uuid::now_v7(), by: "op@desk".into() };
    Event::new("steward/desk", data).with_host(host.map(str::to_owned))
}

/// Every stored event of type `subject`, as (id, host), in order.
async fn stored(reader: &Bus, subject: &str) -> Vec<(uuid::Uuid, Option<String>)> {
    let mut replay = reader
        .replay(steward_bus::ReplayQuery { subjects: vec![subject.into()], ..Default::default() })
        .await
        .expect("replay");
    let mut seen = vec![];
    while let Some(r) = replay.next().await {
        if let Ok(e) = r.expect("replayed").event {
            seen.push((e.id, e.host));
        }
    }
    seen
}

/// The CLI, both hosts' updaters as their own users, and a's inbox.
async fn two_updaters(server: &NatsServer) -> (Bus, Bus, Bus, steward_bus::Inbox) {
    let cli = central(server, Service::Cli).await;
    let updater_a = agent(server, Service::Updater, A).await;
    let updater_b = agent(server, Service::Updater, B).await;
    let inbox_a =
        updater_a.inbox(ConsumerSpec::of(Service::Updater, Some(A))).await.expect("a's inbox");
    (cli, updater_a, updater_b, inbox_a)
}

async fn next(inbox: &mut steward_bus::Inbox) -> steward_bus::Delivery {
    tokio::time::timeout(Duration::from_secs(10), inbox.next()).await.expect("a delivery")
}

#[tokio::test]
async fn an_approval_for_one_host_reaches_only_its_updater_and_no_other_host_can_forge_one() {
    let (server, _setup) = provisioned().await;
    let (cli, _updater_a, updater_b, mut inbox_a) = two_updaters(&server).await;
    let mut inbox_b =
        updater_b.inbox(ConsumerSpec::of(Service::Updater, Some(B))).await.expect("b's inbox");

    // A request for the agents names its host, one the table knows: else nothing would read it.
    for (event, why) in [(approval(None), "names no host"), (approval(Some("vps-c")), "vps-c")] {
        match cli.publish(&event).await {
            Err(BusError::PublishRefused { reason, .. }) => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("{why}: {other:?}"),
        }
    }

    let for_a = approval(Some(A));
    cli.publish(&for_a).await.expect("the CLI addresses host a");
    // Host b's updater, as its own user, forges an approval for a: through the bus (which
    // puts it on a's subjects) and as a raw publish. The server refuses both.
    let forged = approval(Some(A));
    assert!(updater_b.publish(&forged).await.is_err(), "b published on a's subjects");
    let body = forged.encode().expect("encode");
    updater_b
        .raw_client()
        .publish("host.vps-a.update.approved", body.into())
        .await
        .expect("core publish does not fail on the client side");
    updater_b.flush().await.expect("flush");
    server.wait_log(
        "Publish Violation - User \"updater-vps-b\", Subject \"host.vps-a.update.approved\"",
    );
    // Nor can b's own subject carry an event about a: stored, but refused before any handler.
    let smuggled = approval(Some(A)).encode().expect("encode");
    let js = async_nats::jetstream::new(updater_b.raw_client().clone());
    js.publish("host.vps-b.update.approved", smuggled.into())
        .await
        .expect("b publishes on its own subject")
        .await
        .expect("stored");
    let for_b = approval(Some(B));
    cli.publish(&for_b).await.expect("the CLI addresses host b");
    let second_for_a = approval(Some(A));
    cli.publish(&second_for_a).await.expect("again for a");

    // a gets its two approvals and nothing else (the forged one, stored, would come between).
    for want in [&for_a, &second_for_a] {
        let d = next(&mut inbox_a).await;
        let got = d.event.as_ref().expect("a's approval decodes");
        assert_eq!((got.id, got.host.as_deref()), (want.id, Some(A)));
        d.ack().await.expect("ack");
    }
    // b first sees the smuggled event, refused for its host, then its own approval: never a's
    // (stored before both, it would be delivered first).
    let d = next(&mut inbox_b).await;
    match &d.event {
        Err(DecodeError::WrongHost { subject, declared }) => {
            assert_eq!((subject.as_str(), declared.as_deref()), (B, Some(A)))
        }
        other => panic!("the smuggled approval was handed out: {other:?}"),
    }
    d.ack().await.expect("ack");
    let d = next(&mut inbox_b).await;
    assert_eq!(d.event.as_ref().map(|e| e.id).ok(), Some(for_b.id));
    d.ack().await.expect("ack");
    // The central reader sees both hosts' events, each with its host.
    let seen = stored(&cli, "update.approved").await;
    let want = vec![
        (for_a.id, Some(A.to_owned())),
        (for_b.id, Some(B.to_owned())),
        (second_for_a.id, Some(A.to_owned())),
    ];
    assert_eq!(seen, want);
}

/// The stream's duplicate window is stream-wide and staged event ids are readable in every
/// record's outbox: b's user publishes, on its own subject, a message under the id of an
/// event a has staged. a's publish is then acked as a duplicate; it must not be lost.
#[tokio::test]
async fn an_event_id_taken_first_by_another_host_does_not_swallow_the_event() {
    let (server, _setup) = provisioned().await;
    let updater_a = agent(&server, Service::Updater, A).await;
    let updater_b = agent(&server, Service::Updater, B).await;
    let staged = Event::new(
        "steward-updater/a",
        UpdateRejected { update_id: uuid::Uuid::now_v7(), by: "op@desk".into(), reason: None },
    );
    let squatter = staged.clone().with_host(Some(B.to_owned())).encode().expect("encode");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", staged.id.to_string().as_str());
    let js = async_nats::jetstream::new(updater_b.raw_client().clone());
    js.publish_with_headers("host.vps-b.update.rejected", headers, squatter.into())
        .await
        .expect("b publishes on its own subject")
        .await
        .expect("stored under a's event id");

    let published = updater_a.publish(&staged).await.expect("a publishes its event");
    assert!(!published.duplicate, "a's event was taken for b's message: {published:?}");
    // A genuine retry, as a's own user, is still recognised (the stored copy is read back).
    let other = approval(Some(A));
    let first = updater_a.publish(&other).await.expect("publish");
    let again = updater_a.publish(&other).await.expect("publish again");
    assert_eq!((again.duplicate, again.sequence), (true, first.sequence));
    let cli = central(&server, Service::Cli).await;
    let seen = stored(&cli, "update.rejected").await;
    assert_eq!(seen, vec![(staged.id, Some(B.to_owned())), (staged.id, Some(A.to_owned()))]);
    // a's updater consumer gets its own copy (b's never reaches it).
    let mut inbox_a =
        updater_a.inbox(ConsumerSpec::of(Service::Updater, Some(A))).await.expect("a's inbox");
    let d = next(&mut inbox_a).await;
    let got = d.event.as_ref().expect("a's event decodes");
    assert_eq!((got.id, got.host.as_deref()), (staged.id, Some(A)));
}

#[tokio::test]
async fn same_named_containers_on_two_hosts_keep_their_own_records() {
    let (server, _setup) = provisioned().await;
    let updater_a = agent(&server, Service::Updater, A).await;
    let updater_b = agent(&server, Service::Updater, B).await;
    let open = |bus: &Bus, bucket: &'static str| {
        let bus = bus.clone();
        async move {
            StateStore::<serde_json::Value>::open(&bus, bucket).await.expect("open the bucket")
        }
    };
    let (records_a, records_b) =
        (open(&updater_a, "UPDATES").await, open(&updater_b, "UPDATES").await);
    records_a.put("gitea", &serde_json::json!({"on": A})).await.expect("a writes");
    records_b.put("gitea", &serde_json::json!({"on": B})).await.expect("b writes");
    for (store, host) in [(&records_a, A), (&records_b, B)] {
        let value = store.get("gitea").await.expect("get").map(|v| v.value["on"].clone());
        assert_eq!(value, Some(serde_json::json!(host)));
        assert_eq!(store.keys().await.expect("keys"), vec!["gitea".to_owned()]);
        let all = store.all(Duration::from_secs(5)).await.expect("all");
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["gitea"]);
    }
    // The central CLI reads both, under the hosts' keys.
    let cli = central(&server, Service::Cli).await;
    let seen = StateStore::<serde_json::Value>::open_existing(&cli, "UPDATES")
        .await
        .expect("open")
        .expect("the bucket exists");
    let mut keys = seen.keys().await.expect("keys");
    keys.sort();
    assert_eq!(keys, vec!["vps-a.gitea", "vps-b.gitea"]);
    // A host's part of a bucket with no key reads as empty (not as a timeout), beside another
    // host's keys.
    let queue_b = open(&updater_b, "UPDATE_QUEUE").await;
    queue_b.put("gitea", &serde_json::json!(1)).await.expect("b queues");
    let queue_a = open(&updater_a, "UPDATE_QUEUE").await;
    assert!(queue_a.all(Duration::from_secs(5)).await.expect("a's part").is_empty());
    // b may not write a's keys.
    let put = updater_b
        .raw_client()
        .request("$KV.STEWARD_UPDATES.vps-a.gitea", "{\"on\":\"vps-b\"}".into());
    assert!(tokio::time::timeout(Duration::from_secs(2), put).await.map_or(true, |r| r.is_err()));
    server.wait_log("User \"updater-vps-b\", Subject \"$KV.STEWARD_UPDATES.vps-a.gitea\"");
    let value = records_a.get("gitea").await.expect("get").map(|v| v.value["on"].clone());
    assert_eq!(value, Some(serde_json::json!(A)));
}

#[test]
fn each_hosts_agents_are_confined_to_their_host_and_one_host_is_as_before() {
    let ns = steward_bus::Namespace::default();
    let users = Permissions::users(&ns, &hosts());
    let names: Vec<&str> = users.iter().map(|p| p.user.as_str()).collect();
    for want in
        ["updater-vps-a", "updater-vps-b", "watcher-vps-a", "backup-vps-b", "notifier", "cli"]
    {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(!names.contains(&"updater"), "no host-less agent under routing: {names:?}");
    for p in users.iter().filter(|p| p.service.is_agent()) {
        let host = p.user.split_once('-').map(|(_, h)| h).expect("an agent's user names its host");
        let other = if host == A { B } else { A };
        let all: Vec<&String> = p.publish.iter().chain(&p.subscribe).collect();
        assert!(all.iter().all(|s| !s.contains(other)), "{} reaches {other}: {all:#?}", p.user);
        // Its events, its consumer, its dead letters, its keys: all its host's.
        for own in [format!("host.{host}.>"), format!("dlq.{}", p.user)] {
            let covered = p.publish.iter().any(|s| s.starts_with(own.trim_end_matches('>')));
            assert!(covered || p.service.consumes().is_empty(), "{}: no {own}", p.user);
        }
        for t in p.service.publishes() {
            assert!(!p.publish.contains(&(*t).to_owned()), "{}: {t} not addressed", p.user);
        }
        // Its jobs' progress on its host's subjects only: another host's job is not its to
        // report on.
        if p.service.publishes_progress() {
            assert!(p.publish.contains(&format!("progress.{host}.>")), "{}", p.user);
            assert!(!p.publish.iter().any(|s| s == "progress.>"), "{}: every host's", p.user);
        }
    }
    // Without hosts the users are the compose stack's, one per participant.
    let single: Vec<String> = Permissions::users(&ns, &[]).into_iter().map(|p| p.user).collect();
    let services: Vec<String> = Service::ALL.iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(single, services);
    assert_eq!(Permissions::server_config_for(&ns, &[]), Permissions::server_config(&ns));
}

/// A participant whose routing table is not the one `steward setup` provisioned would publish
/// and ask where nobody reads (a notifier without the table asks for approval links no routed
/// updater answers): it is refused when it connects, naming both tables.
#[tokio::test]
async fn a_participant_with_another_routing_table_is_refused_at_start() {
    let (server, _setup) = provisioned().await;
    let no_table =
        BusConfig { hosts: vec![], ..quick(server.bus_config_as(Service::Notifier), None) };
    match Bus::connect(no_table, Service::Notifier.binary()).await {
        Err(e @ BusError::Misrouted { .. }) => {
            let said = e.to_string();
            assert!(said.contains("unset") && said.contains("vps-a,vps-b"), "{said}");
        }
        other => panic!("a notifier without STEWARD_HOSTS connected: {other:?}"),
    }
    let other_table = BusConfig {
        hosts: vec![A.to_owned()],
        ..quick(server.bus_config_as_user(&Service::Updater.identity(Some(A))), Some(A))
    };
    assert!(matches!(
        Bus::connect(other_table, Service::Updater.binary()).await,
        Err(BusError::Misrouted { .. })
    ));
    // The same table, in another order, is the same table.
    let reordered = BusConfig {
        hosts: vec![B.to_owned(), A.to_owned()],
        ..quick(server.bus_config_as_user(&Service::Updater.identity(Some(A))), Some(A))
    };
    Bus::connect(reordered, Service::Updater.binary()).await.expect("same table");
    // A setup run without the table (compose's setup lacking STEWARD_HOSTS, an events
    // import) is refused instead of unrouting the installation.
    let bare = BusConfig { hosts: vec![], ..quick(server.bus_config_as_setup(), None) };
    let bare = Bus::open(bare, "steward-setup").await.expect("the setup user connects");
    match bare.setup(&Setup::steward()).await {
        Err(BusError::Misrouted { provisioned, .. }) => assert_eq!(provisioned, "vps-a,vps-b"),
        other => panic!("a setup without STEWARD_HOSTS ran: {other:?}"),
    }
    let routed = quick(server.bus_config_as_user(&Service::Updater.identity(Some(A))), Some(A));
    Bus::connect(routed, Service::Updater.binary()).await.expect("still routed");
}

/// A dead letter's message id is predictable (`dlq-<stream>-<consumer>-<sequence>`): host b
/// stores a message under the id of a's next dead letter first, on b's own dead-letter
/// subject. a's dead letter is still stored, on a's.
#[tokio::test]
async fn a_dead_letter_whose_id_was_taken_first_is_still_stored() {
    let (server, _setup) = provisioned().await;
    let (cli, _updater_a, updater_b, mut inbox_a) = two_updaters(&server).await;
    let poison = approval(Some(A));
    cli.publish(&poison).await.expect("publish");
    let d = next(&mut inbox_a).await;
    let mut headers = async_nats::HeaderMap::new();
    let id = format!("dlq-STEWARD-updater-vps-a-{}", d.stream_sequence);
    headers.insert("Nats-Msg-Id", id.as_str());
    let js = async_nats::jetstream::new(updater_b.raw_client().clone());
    js.publish_with_headers("dlq.updater-vps-b", headers, "squatted".into())
        .await
        .expect("b publishes on its own dead-letter subject")
        .await
        .expect("stored under a's dead-letter id");
    d.dead_letter("poison for the test").await.expect("dead-lettered");
    let stream = js.get_stream("STEWARD").await.expect("stream");
    let a_dead = stream.info_with_subjects("dlq.updater-vps-a").await.expect("subjects");
    let a_dead: Vec<_> = futures::TryStreamExt::try_collect(a_dead).await.expect("subjects");
    assert_eq!(a_dead.len(), 1, "a's dead letter was swallowed: {a_dead:?}");
}
