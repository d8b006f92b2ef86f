//! The leaf-node topology (docs/scaling.md) on real nats-servers: a hub and one leaf per host,
//! each with JetStream under its own domain, each leaf logged in to the hub as its host's
//! link user through a link the test cuts. Provisioned as `steward setup` does on each
//! (`STEWARD_NATS_DOMAIN`; a setup told the wrong domain is refused): a leaf's stream holds
//! its host's subjects, the hub's sources every leaf's. Real Steward bus code publishes and
//! consumes on both sides. Shown: every host's events reach the hub's stream once and in
//! order, and the notifier's consumer there; a host cut off (or the hub killed) keeps
//! publishing and consuming on its leaf and the hub gets all of it once when it is back; a
//! request for a cut-off host fails naming its subject and is never delivered later; a host's
//! leaf cannot carry another host's subjects nor reach its or the hub's JetStream; the
//! notifier's approval-link request reaches the host's updater across the link.

use std::time::{Duration, Instant};

use steward_bus::approval::{LinkKind, LinkReply};
use steward_bus::{Bus, BusConfig, BusError, ConsumerSpec, Inbox, ReplayQuery, Setup};
use steward_events::{Event, HealthRecovered, Service, UpdateApproved};
use steward_testkit::leaf::{NatsLeaves, HOST_ROOT};

const A: &str = "vps-a";
const B: &str = "vps-b";

fn hosts() -> Vec<String> {
    vec![A.to_owned(), B.to_owned()]
}

fn quick(cfg: BusConfig, host: Option<&str>) -> BusConfig {
    BusConfig {
        connect_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(1),
        publish_timeout: Duration::from_secs(2),
        host: host.map(str::to_owned),
        ..cfg
    }
}

/// The topology, each server provisioned by its own setup run. `mangle` changes the hub's
/// generated configuration (to see a test fail when the link permissions are wrong).
async fn provisioned(mangle: impl Fn(String) -> String) -> NatsLeaves {
    let net = NatsLeaves::start(&hosts(), mangle);
    // A setup told the wrong server (b's domain, run against a's leaf) provisions nothing.
    let wrong = BusConfig {
        domain: Some(B.into()),
        ..quick(net.leaf_config_as(A, steward_bus::SETUP_USER), None)
    };
    let setup = Bus::open(wrong, "steward-setup").await.expect("the leaf's setup user connects");
    let err = setup.setup(&Setup::for_hosts(&hosts())).await.expect_err("a's leaf is not b's");
    assert!(
        err.to_string()
            .contains("STEWARD_NATS_DOMAIN is vps-b, but the server's JetStream domain is vps-a"),
        "{err}"
    );
    for host in [A, B] {
        let cfg = quick(net.leaf_config_as(host, steward_bus::SETUP_USER), None);
        let setup = Bus::open(cfg, "steward-setup").await.expect("the leaf's setup user connects");
        let done = setup.setup(&Setup::for_hosts(&hosts())).await.expect("the leaf provisions");
        assert!(
            done.iter().any(|l| l.starts_with(&format!("consumer updater-{host}:"))),
            "{done:?}"
        );
        // Only its own host's agents, and no central consumer, on a leaf.
        assert!(!done.iter().any(|l| l.starts_with("consumer notifier")), "{done:?}");
        assert!(!done.iter().any(|l| l.contains("-vps-") && !l.contains(host)), "{done:?}");
    }
    let cfg = quick(net.hub_config_as(steward_bus::SETUP_USER), None);
    let setup = Bus::open(cfg, "steward-setup").await.expect("the hub's setup user connects");
    let done = setup.setup(&Setup::for_hosts(&hosts())).await.expect("the hub provisions");
    assert!(done.iter().any(|l| l.starts_with("consumer notifier:")), "{done:?}");
    assert!(!done.iter().any(|l| l.starts_with("consumer updater")), "{done:?}");
    // Run again (every upgrade does): the sources stay as they are.
    setup.setup(&Setup::for_hosts(&hosts())).await.expect("the hub provisions again");
    net
}

/// `service`'s agent of `host`, on its leaf as its per-host user.
async fn agent(net: &NatsLeaves, service: Service, host: &str) -> Bus {
    let cfg = quick(net.leaf_config_as(host, &service.identity(Some(host))), Some(host));
    Bus::connect(cfg, service.binary()).await.unwrap_or_else(|e| panic!("{service} of {host}: {e}"))
}

/// A reader of `host`'s leaf stream: its backup agent (whose user may replay the stream, to
/// export it).
async fn leaf_reader(net: &NatsLeaves, host: &str) -> Bus {
    agent(net, Service::Backup, host).await
}

/// A central participant on the hub.
async fn central(net: &NatsLeaves, service: Service) -> Bus {
    let cfg = quick(net.hub_config_as(service.name()), None);
    Bus::connect(cfg, service.binary()).await.unwrap_or_else(|e| panic!("{service}: {e}"))
}

fn approval(host: &str) -> Event {
    let data = UpdateApproved { update_id: uuid::Uuid::now_v7(), by: "op@desk".into() };
    Event::new("steward/test", data).with_host(Some(host.to_owned()))
}

/// Every event a stream holds, as (id, host), in stream order; `None` while it cannot be
/// read.
async fn stored(reader: &Bus) -> Option<Vec<(uuid::Uuid, Option<String>)>> {
    let read = async {
        let mut replay = reader.replay(ReplayQuery::default()).await.ok()?;
        let mut seen = vec![];
        while let Some(r) = replay.next().await {
            if let Ok(e) = r.ok()?.event {
                seen.push((e.id, e.host));
            }
        }
        Some(seen)
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
}

/// The ids of `host`'s events in the stream `reader` reads, in order.
async fn of_host(reader: &Bus, host: &str) -> Vec<uuid::Uuid> {
    let all = stored(reader).await.expect("the stream answers");
    all.into_iter().filter(|(_, h)| h.as_deref() == Some(host)).map(|(id, _)| id).collect()
}

/// Waits (bounded) until `host`'s events in the hub's stream are at least `count`; returns
/// them and how long it took.
async fn hub_has(
    hub: &Bus,
    host: &str,
    count: usize,
    bound: Duration,
) -> (Vec<uuid::Uuid>, Duration) {
    let started = Instant::now();
    loop {
        let ids = of_host(hub, host).await;
        if ids.len() >= count {
            return (ids, started.elapsed());
        }
        assert!(
            started.elapsed() < bound,
            "the hub holds {} of {host}'s events after {bound:?}, not {count}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next delivery within `bound`, acknowledged; its event id.
async fn take(inbox: &mut Inbox, bound: Duration) -> Option<uuid::Uuid> {
    let delivery = tokio::time::timeout(bound, inbox.next()).await.ok()?;
    let id = delivery.event.as_ref().map(|e| e.id).ok();
    delivery.ack().await.expect("ack");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_hosts_events_reach_the_hubs_stream_once_and_in_order() {
    let net = provisioned(|c| c).await;
    let (updater_a, updater_b) =
        (agent(&net, Service::Updater, A).await, agent(&net, Service::Updater, B).await);
    let cli = central(&net, Service::Cli).await;
    let (mut sent_a, mut sent_b) = (vec![], vec![]);
    for _ in 0..10 {
        for (bus, host, sent) in [(&updater_a, A, &mut sent_a), (&updater_b, B, &mut sent_b)] {
            let event = approval(host);
            let published = bus.publish(&event).await.expect("the agent publishes on its leaf");
            assert!(!published.duplicate);
            sent.push(event.id);
        }
    }
    // Each leaf holds its own host's events, and only those.
    let reader_a = leaf_reader(&net, A).await;
    assert_eq!(of_host(&reader_a, A).await, sent_a);
    assert!(of_host(&reader_a, B).await.is_empty(), "b's events on a's leaf");
    let (at_hub_a, took) = hub_has(&cli, A, 10, Duration::from_secs(15)).await;
    let (at_hub_b, _) = hub_has(&cli, B, 10, Duration::from_secs(15)).await;
    eprintln!("MEASURED 10 events per host at the hub {took:?} after the last publish");
    // Give a repeat the time to show up, then judge: each once, in each host's order.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(of_host(&cli, A).await, sent_a, "host a's events at the hub (once, in order)");
    assert_eq!(of_host(&cli, B).await, sent_b, "host b's events at the hub (once, in order)");
    assert_eq!((at_hub_a.len(), at_hub_b.len()), (10, 10));
    // The centre publishes one request twice (a retry whose ack was lost): the second ack is
    // a duplicate from a's leaf, whose sequence means something else in the hub's stream. It
    // is stored once on the leaf, not again under a fresh id.
    let request = approval(A);
    let once = cli.publish(&request).await.expect("the centre reaches a");
    let again = cli.publish(&request).await.expect("the retry");
    assert!(!once.duplicate && again.duplicate && again.elsewhere, "{once:?} {again:?}");
    let on_leaf = of_host(&reader_a, A).await;
    assert_eq!(
        on_leaf.iter().filter(|id| **id == request.id).count(),
        1,
        "stored twice on a's leaf"
    );
    // The centre's notifier is handed what it handles of every host's (a recovery, not an
    // approval) by its consumer on the hub, each once.
    let mut recovered = vec![];
    for host in [A, B] {
        let health = agent(&net, Service::Health, host).await;
        for _ in 0..3 {
            let data = HealthRecovered { container: "gitea".into(), down_for_ms: 1000 };
            let event = Event::new("steward/test", data);
            health.publish(&event).await.expect("health publishes on its leaf");
            recovered.push(event.id);
        }
    }
    let notifier = central(&net, Service::Notifier).await;
    let mut inbox = notifier.inbox(ConsumerSpec::of(Service::Notifier, None)).await.expect("inbox");
    let mut handed = vec![];
    while let Some(id) = take(&mut inbox, Duration::from_secs(3)).await {
        handed.push(id);
    }
    recovered.sort();
    handed.sort();
    assert_eq!(handed, recovered, "the notifier's deliveries on the hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_host_keeps_working_and_the_hub_gets_its_events_once_when_the_link_returns() {
    let net = provisioned(|c| c).await;
    let updater_a = agent(&net, Service::Updater, A).await;
    let updater_b = agent(&net, Service::Updater, B).await;
    let mut inbox_a =
        updater_a.inbox(ConsumerSpec::of(Service::Updater, Some(A))).await.expect("a's inbox");
    let cli = central(&net, Service::Cli).await;
    let first = approval(A);
    updater_a.publish(&first).await.expect("publish");
    hub_has(&cli, A, 1, Duration::from_secs(15)).await;
    assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(first.id));

    net.leaf(A).link.cut();
    let mut sent = vec![first.id];
    let cut_at = Instant::now();
    for _ in 0..20 {
        let event = approval(A);
        // Stored on the host's own leaf: no wait for the centre.
        let started = Instant::now();
        updater_a.publish(&event).await.expect("the cut-off agent publishes locally");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a local publish took {:?}",
            started.elapsed()
        );
        sent.push(event.id);
    }
    // ... and consumes locally: its consumer is on its leaf.
    for want in &sent[1..] {
        assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(*want));
    }
    // The other host is unaffected.
    let from_b = approval(B);
    updater_b.publish(&from_b).await.expect("b publishes");
    hub_has(&cli, B, 1, Duration::from_secs(15)).await;
    // Nothing of a's crossed while cut (held to at least 3 s of cut).
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(cut_at.elapsed())).await;
    assert_eq!(of_host(&cli, A).await, vec![first.id], "a's events crossed a cut link");

    net.leaf(A).link.restore();
    let (_, took) = hub_has(&cli, A, sent.len(), Duration::from_secs(45)).await;
    eprintln!(
        "MEASURED {} events of a host cut for {:?} at the hub {took:?} after the link returned",
        sent.len() - 1,
        cut_at.elapsed() - took
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(of_host(&cli, A).await, sent, "a's events at the hub: each once, in order");
    // Nothing was handled twice on the host.
    assert_eq!(take(&mut inbox_a, Duration::from_secs(1)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_cut_off_host_fails_naming_its_subject_and_is_never_acted_on() {
    let net = provisioned(|c| c).await;
    let updater_a = agent(&net, Service::Updater, A).await;
    let mut inbox_a =
        updater_a.inbox(ConsumerSpec::of(Service::Updater, Some(A))).await.expect("a's inbox");
    let cli = central(&net, Service::Cli).await;
    // The path works: the CLI's approval for a is stored on a's leaf and handed to a.
    let before = approval(A);
    cli.publish(&before).await.expect("the centre reaches a");
    assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(before.id));

    net.leaf(A).link.cut();
    let late = approval(A);
    let started = Instant::now();
    let err = cli.publish(&late).await.expect_err("a request for a cut-off host must fail");
    let waited = started.elapsed();
    let message = err.to_string();
    assert!(matches!(err, BusError::PublishTimeout { .. }), "{err:?}");
    assert!(
        message.contains("host.vps-a.update.approved"),
        "the error names the subject: {message}"
    );
    // The publish timeout is 2 s: the retries stop when the next would end past it.
    assert!(
        waited >= Duration::from_secs(1),
        "failed after {waited:?}, before the publish timeout"
    );
    eprintln!("MEASURED a request for a cut-off host failed after {waited:?}: {message}");
    // Another host is still reachable.
    cli.publish(&approval(B)).await.expect("b is reachable");

    net.leaf(A).link.restore();
    // Once the link is back a new request gets through; the failed one never does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = approval(A);
    while cli.publish(&after).await.is_err() {
        assert!(Instant::now() < deadline, "the link did not come back");
    }
    assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(after.id));
    assert_eq!(take(&mut inbox_a, Duration::from_secs(3)).await, None, "something else came");
    let on_leaf = of_host(&leaf_reader(&net, A).await, A).await;
    assert!(!on_leaf.contains(&late.id), "the failed request was stored on the host");
    let (at_hub, _) = hub_has(&cli, A, 2, Duration::from_secs(30)).await;
    assert!(!at_hub.contains(&late.id), "the failed request reached the hub's stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_leaf_cannot_carry_another_hosts_subjects_or_reach_its_jetstream() {
    let net = provisioned(|c| c).await;
    let updater_a = agent(&net, Service::Updater, A).await;
    let mut inbox_a =
        updater_a.inbox(ConsumerSpec::of(Service::Updater, Some(A))).await.expect("a's inbox");
    let cli = central(&net, Service::Cli).await;
    // Whoever controls host b controls its leaf: a user allowed everything on it, who knows
    // Steward's subjects, forges an approval for a.
    let root_b = async_nats::ConnectOptions::with_user_and_password(
        HOST_ROOT.into(),
        steward_testkit::NatsServer::user_password(HOST_ROOT),
    )
    .connect(net.leaf(B).server.url())
    .await
    .expect("b's root connects to b's leaf");
    let js_b = async_nats::jetstream::new(root_b.clone());
    let forged = approval(A);
    let body = bytes::Bytes::from(forged.encode().expect("encode"));
    let subject = "host.vps-a.update.approved";
    let acked = tokio::time::timeout(Duration::from_secs(3), async {
        js_b.publish(subject, body.clone()).await?.await
    })
    .await;
    assert!(!matches!(acked, Ok(Ok(_))), "a stream took b's forged approval for a: {acked:?}");
    root_b.publish(subject, body).await.expect("a core publish is not refused client-side");
    root_b.flush().await.expect("flush");
    // Nor can it reach a's JetStream through the hub (to delete a's stream, say).
    let info = tokio::time::timeout(
        Duration::from_secs(3),
        root_b.request("$JS.vps-a.API.STREAM.INFO.STEWARD", bytes::Bytes::new()),
    )
    .await;
    assert!(!matches!(info, Ok(Ok(_))), "b reached a's JetStream: {info:?}");
    // Nor the hub's.
    let info = tokio::time::timeout(
        Duration::from_secs(3),
        root_b.request("$JS.hub.API.STREAM.INFO.STEWARD", bytes::Bytes::new()),
    )
    .await;
    assert!(!matches!(info, Ok(Ok(_))), "b reached the hub's JetStream: {info:?}");

    // a's updater never sees it; neither a's leaf nor the hub stores it. A real approval
    // afterwards shows the path was open all along.
    let real = approval(A);
    cli.publish(&real).await.expect("the centre reaches a");
    assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(real.id));
    assert_eq!(take(&mut inbox_a, Duration::from_secs(2)).await, None, "the forged one came");
    let on_leaf = of_host(&leaf_reader(&net, A).await, A).await;
    assert!(!on_leaf.contains(&forged.id), "stored on a's leaf");
    let (at_hub, _) = hub_has(&cli, A, 1, Duration::from_secs(15)).await;
    assert!(!at_hub.contains(&forged.id), "stored at the hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_killed_and_restarted_gets_every_event_its_hosts_made_meanwhile_once() {
    let mut net = provisioned(|c| c).await;
    let updater_a = agent(&net, Service::Updater, A).await;
    let mut inbox_a =
        updater_a.inbox(ConsumerSpec::of(Service::Updater, Some(A))).await.expect("a's inbox");
    let first = approval(A);
    updater_a.publish(&first).await.expect("publish");
    {
        let cli = central(&net, Service::Cli).await;
        hub_has(&cli, A, 1, Duration::from_secs(15)).await;
    }
    assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(first.id));

    net.hub.kill();
    let mut sent = vec![first.id];
    for _ in 0..20 {
        let event = approval(A);
        updater_a.publish(&event).await.expect("the host publishes while the hub is down");
        sent.push(event.id);
    }
    for want in &sent[1..] {
        assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(*want));
    }
    net.hub.start_again();
    let restarted = Instant::now();
    let cli = central(&net, Service::Cli).await;
    let (_, _) = hub_has(&cli, A, sent.len(), Duration::from_secs(45)).await;
    eprintln!(
        "MEASURED 20 events made while the hub was down at the hub {:?} after its restart",
        restarted.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(of_host(&cli, A).await, sent, "a's events at the hub: each once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_gets_an_approval_link_from_the_hosts_updater_across_the_link_only() {
    // Both kinds: an update's link from a's updater, a deployment's from a's deployer.
    for kind in LinkKind::ALL {
        let net = provisioned(|c| c).await;
        let server_a = agent(&net, kind.server(), A).await;
        let mut asks = server_a.approval_link_requests(kind).await.expect("a's server listens");
        let served = tokio::spawn(async move {
            use futures::StreamExt as _;
            while let Some(ask) = asks.next().await {
                let id = ask.request.as_ref().map(|r| r.id).unwrap_or_default();
                let url = format!("https://vps-a.example/approve/{id}");
                let reply = LinkReply::Link { url, expires_at: time::OffsetDateTime::now_utc() };
                ask.answer(&reply).await.expect("answer");
            }
        });
        let notifier = central(&net, Service::Notifier).await;
        let id = uuid::Uuid::now_v7();
        let answer =
            notifier.request_approval_link(kind, id, Some(A), Duration::from_secs(5)).await;
        match answer {
            Ok(LinkReply::Link { url, .. }) => assert!(url.ends_with(&id.to_string()), "{url}"),
            other => panic!("{kind:?}: no link from a across the link: {other:?}"),
        }
        // b's server is not listening: nobody answers for b (a's never sees b's requests).
        let for_b = notifier.request_approval_link(kind, id, Some(B), Duration::from_secs(2)).await;
        assert!(for_b.is_err(), "{kind:?}: someone answered for b: {for_b:?}");
        // Cut off, a cannot be asked: an error at once or at the timeout, never a late answer.
        net.leaf(A).link.cut();
        let cut = notifier.request_approval_link(kind, id, Some(A), Duration::from_secs(2)).await;
        assert!(cut.is_err(), "{kind:?}: a cut-off host answered: {cut:?}");
        served.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_centre_reads_every_hosts_records_from_the_hubs_copy_of_their_buckets() {
    use steward_bus::StateStore;
    use steward_events::records::UPDATE_BUCKET;
    let net = provisioned(|c| c).await;
    let cli = central(&net, Service::Cli).await;
    let at_hub = StateStore::<serde_json::Value>::open(&cli, UPDATE_BUCKET).await.expect("hub's");
    let mut stores = vec![];
    for host in [A, B] {
        let updater = agent(&net, Service::Updater, host).await;
        let store =
            StateStore::<serde_json::Value>::open(&updater, UPDATE_BUCKET).await.expect("leaf's");
        // Written on the host's leaf, under the host's keys (`<host>.gitea`).
        store.put("gitea", &serde_json::json!({ "host": host, "step": 1 })).await.expect("put");
        stores.push((host, store, updater));
    }
    let wait_for = |key: &'static str, step: i64| {
        let at_hub = at_hub.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let got = at_hub.get(key).await.expect("the hub's copy answers");
                if got.as_ref().is_some_and(|v| v.value["step"] == step) {
                    return;
                }
                assert!(Instant::now() < deadline, "{key} at step {step} not at the hub: {got:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for("vps-a.gitea", 1).await;
    wait_for("vps-b.gitea", 1).await;
    let mut keys = at_hub.keys().await.expect("keys");
    keys.sort();
    assert_eq!(keys, ["vps-a.gitea", "vps-b.gitea"]);
    // Cut off, the host goes on writing its records; the hub's copy follows when it is back.
    net.leaf(A).link.cut();
    let (_, store_a, _) = &stores[0];
    store_a.put("gitea", &serde_json::json!({ "host": A, "step": 2 })).await.expect("local put");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stale = at_hub.get("vps-a.gitea").await.expect("get").expect("the last copy");
    assert_eq!(stale.value["step"], 1, "a write crossed a cut link");
    net.leaf(A).link.restore();
    let restored = Instant::now();
    wait_for("vps-a.gitea", 2).await;
    eprintln!(
        "MEASURED a record written while cut at the hub {:?} after the link returned",
        restored.elapsed()
    );
}
