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
    provision_leaves(&net).await;
    provision_hub(&net).await;
    net
}

/// Each host's leaf provisioned by its own setup run (after a setup told the wrong domain is
/// refused); the hub left as it is.
async fn provision_leaves(net: &NatsLeaves) {
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
}

/// The hub provisioned by its setup run (twice, as every upgrade runs it again).
async fn provision_hub(net: &NatsLeaves) {
    let cfg = quick(net.hub_config_as(steward_bus::SETUP_USER), None);
    let setup = Bus::open(cfg, "steward-setup").await.expect("the hub's setup user connects");
    let done = setup.setup(&Setup::for_hosts(&hosts())).await.expect("the hub provisions");
    assert!(done.iter().any(|l| l.starts_with("consumer notifier:")), "{done:?}");
    assert!(!done.iter().any(|l| l.starts_with("consumer updater")), "{done:?}");
    // Run again (every upgrade does): the sources stay as they are.
    setup.setup(&Setup::for_hosts(&hosts())).await.expect("the hub provisions again");
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

/// Host b's root on b's leaf (a user allowed everything there).
async fn root_of(net: &NatsLeaves, host: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(
        HOST_ROOT.into(),
        steward_testkit::NatsServer::user_password(HOST_ROOT),
    )
    .connect(net.leaf(host).server.url())
    .await
    .expect("the host's root connects to its leaf")
}

fn alert(host: &str, reason: &str) -> Event {
    let data = steward_events::HealthFailed {
        container: "gitea".into(),
        check: "http".into(),
        reason: reason.into(),
        consecutive_failures: 3,
    };
    Event::new("steward/test", data).with_host(Some(host.to_owned()))
}

/// What b's root forges on b's leaf: its stream widened to hold a's subjects and a central
/// one, then an alert "from a", an alert on the central subject, and a record under a's key
/// in b's `UPDATES`. Returns the forged events' ids, the stream sequence of the first, and the
/// record's sequence in b's bucket stream.
async fn forge_on_b(root_b: &async_nats::Client) -> (Vec<uuid::Uuid>, u64, u64) {
    let js_b = async_nats::jetstream::new(root_b.clone());
    let stream = js_b.get_stream("STEWARD").await.expect("b's stream");
    let mut config = stream.cached_info().config.clone();
    for wider in ["host.vps-a.>", "health.>"] {
        if !config.subjects.iter().any(|s| s == wider) {
            config.subjects.push(wider.to_owned());
        }
    }
    js_b.update_stream(config).await.expect("b's root widens b's stream");
    let mut forged = vec![];
    let mut first = None;
    for (subject, event) in [
        ("host.vps-a.health.failed", alert(A, "forged by b: a is down")),
        ("health.failed", alert(A, "forged by b on a central subject").with_host(None)),
    ] {
        let body = bytes::Bytes::from(event.encode().expect("encode"));
        let ack = js_b.publish(subject, body).await.expect("publish").await.expect("b stores it");
        first.get_or_insert(ack.sequence);
        forged.push(event.id);
    }
    let record = serde_json::json!({ "forged": true });
    let kv = js_b
        .publish("$KV.STEWARD_UPDATES.vps-a.gitea", record.to_string().into())
        .await
        .expect("publish")
        .await
        .expect("b's bucket takes a's key");
    (forged, first.unwrap_or_default(), kv.sequence)
}

/// Everything the notifier's consumer at the hub hands out within `quiet` of the last:
/// (host, reason) of each alert, acknowledged.
async fn notifier_gets(inbox: &mut Inbox, quiet: Duration) -> Vec<(Option<String>, String)> {
    let mut got = vec![];
    while let Ok(delivery) = tokio::time::timeout(quiet, inbox.next()).await {
        if let Ok(event) = &delivery.event {
            if let steward_events::EventData::HealthFailed(f) = &event.data {
                got.push((event.host.clone(), f.reason.clone()));
            }
        }
        delivery.ack().await.expect("ack");
    }
    got
}

/// Every event id the CLI's replay at the hub shows.
/// The centre hands the notifier b's genuine alert only, and its replay shows it and none of
/// the `forged` events.
async fn centre_shows_only_bs_alert(
    inbox: &mut Inbox,
    cli: &Bus,
    genuine: uuid::Uuid,
    forged: &[uuid::Uuid],
) {
    let got = notifier_gets(inbox, Duration::from_secs(3)).await;
    assert_eq!(got, [(Some(B.to_owned()), "b is down".to_owned())], "the notifier's deliveries");
    let shown = replayed(cli).await;
    assert!(shown.contains(&genuine), "b's own alert is not in the replay: {shown:?}");
    assert!(!forged.iter().any(|id| shown.contains(id)), "a forged event in the replay");
}

async fn replayed(cli: &Bus) -> Vec<uuid::Uuid> {
    stored(cli).await.expect("the hub's stream answers").into_iter().map(|(id, _)| id).collect()
}

/// What the hostile-leaf cases start from: the hub and its leaves, the CLI and the notifier
/// (with its consumer) at the hub, and a's genuine record of `gitea` written on a's leaf.
async fn with_a_genuine_record() -> (NatsLeaves, Bus, Bus, Inbox) {
    use steward_bus::StateStore;
    use steward_events::records::UPDATE_BUCKET;
    let net = provisioned(|c| c).await;
    let cli = central(&net, Service::Cli).await;
    let notifier = central(&net, Service::Notifier).await;
    let inbox = notifier.inbox(ConsumerSpec::of(Service::Notifier, None)).await.expect("inbox");
    let updater_a = agent(&net, Service::Updater, A).await;
    let record_a =
        StateStore::<serde_json::Value>::open(&updater_a, UPDATE_BUCKET).await.expect("a's");
    record_a.put("gitea", &serde_json::json!({ "host": A, "genuine": true })).await.expect("put");
    (net, cli, notifier, inbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_leaf_cannot_pass_its_events_or_records_off_as_another_hosts() {
    use steward_bus::StateStore;
    use steward_events::records::UPDATE_BUCKET;
    let (net, cli, _notifier, mut inbox) = with_a_genuine_record().await;
    let root_b = root_of(&net, B).await;
    let (forged, _, _) = forge_on_b(&root_b).await;
    // The hub stream's anchor of b (`host.vps-b._sourced`, the one host subject it holds
    // itself): published by b's root with a's stamp, it would be stored at the hub as it is
    // and read as a's. The link may not publish it; only the copy b's source brings, stamped
    // b's, reaches the hub.
    let mut stamp_a = async_nats::HeaderMap::new();
    stamp_a.insert(steward_bus::STREAM_SOURCE, "STEWARD:VTo6fgI0 1");
    let anchor = alert(B, "forged on the anchor").encode().expect("encode");
    root_b
        .publish_with_headers("host.vps-b._sourced", stamp_a, anchor.into())
        .await
        .expect("b's root publishes on its leaf");
    root_b.flush().await.expect("flush");
    // b's own alert, after the forgeries: it still arrives.
    let health_b = agent(&net, Service::Health, B).await;
    let genuine = alert(B, "b is down");
    health_b.publish(&genuine).await.expect("b's health publishes");
    hub_has(&cli, B, 1, Duration::from_secs(15)).await;
    centre_shows_only_bs_alert(&mut inbox, &cli, genuine.id, &forged).await;
    // The hub's copy of UPDATES holds a's own record under a's key, not b's.
    let at_hub = StateStore::<serde_json::Value>::open(&cli, UPDATE_BUCKET).await.expect("hub's");
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = at_hub.get("vps-a.gitea").await.expect("the hub's copy answers");
        if seen.is_some() || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = at_hub.get("vps-a.gitea").await.expect("get").or(seen);
    assert_eq!(seen.map(|v| v.value), Some(serde_json::json!({ "host": A, "genuine": true })));
    // The filters kept it all on b: nothing of it is even stored at the hub.
    let at_hub = hub_stored(&net, "STEWARD").await;
    assert!(
        !at_hub.iter().any(|(s, _)| s == "health.failed" || s.starts_with("host.vps-a.")),
        "{at_hub:?}"
    );
    let on_anchor: Vec<_> = at_hub.iter().filter(|(s, _)| s == "host.vps-b._sourced").collect();
    assert!(
        on_anchor
            .iter()
            .all(|(_, stamp)| stamp.as_deref().is_some_and(|s| s.starts_with("STEWARD:J7OS1RmN "))),
        "stored at the hub unsourced, with a's stamp: {on_anchor:?}"
    );
    let kv = hub_stored(&net, "KV_STEWARD_UPDATES").await;
    assert!(
        kv.iter().all(|(_, stamp)| stamp
            .as_deref()
            .is_some_and(|s| s.starts_with("KV_STEWARD_UPDATES:VTo6fgI0 "))),
        "{kv:?}"
    );
}

/// (subject, `Nats-Stream-Source`) of every message the hub's stream `stream` holds, read raw
/// by the hub's provisioning user.
async fn hub_stored(net: &NatsLeaves, stream: &str) -> Vec<(String, Option<String>)> {
    let js = net.hub_jetstream().await;
    let mut stream = js.get_stream(stream).await.expect("the hub's stream");
    let state = stream.info().await.expect("info").state.clone();
    let mut out = vec![];
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            let stamp = m.headers.get(steward_bus::STREAM_SOURCE).map(|v| v.as_str().to_owned());
            out.push((m.subject.to_string(), stamp));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_leaf_that_ignores_its_filter_gets_nothing_past_the_centre() {
    use steward_bus::StateStore;
    use steward_events::records::UPDATE_BUCKET;
    let (net, cli, _notifier, mut inbox) = with_a_genuine_record().await;
    // A leaf that does not apply its filter hands the hub whatever its stream holds, stamped
    // as its own. A stock nats-server on b applies the filter even against b's root (two
    // attempts did not get past it: docs/security.md); a patched one, which b's root may run,
    // need not. Its effect is the hub's source of b without the filter, which is what this
    // test gives the hub (the hub's setup user removes the filter of b's sources).
    net.unfilter_at_hub("STEWARD", B).await;
    net.unfilter_at_hub("KV_STEWARD_UPDATES", B).await;
    let root_b = root_of(&net, B).await;
    let (forged, _, _) = forge_on_b(&root_b).await;
    let health_b = agent(&net, Service::Health, B).await;
    let genuine = alert(B, "b is down");
    health_b.publish(&genuine).await.expect("b's health publishes");
    hub_has(&cli, B, 1, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What the server enforced: nothing. The hub took b's forgeries, stamped as b's.
    let at_hub = hub_stored(&net, "STEWARD").await;
    let kv = hub_stored(&net, "KV_STEWARD_UPDATES").await;
    eprintln!("MEASURED the hub's stream holds {at_hub:?}; its UPDATES {kv:?}");
    let b_stamp = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains(":J7OS1RmN "));
    assert!(
        at_hub.iter().any(|(s, st)| s == "host.vps-a.health.failed" && b_stamp(st)),
        "{at_hub:?}"
    );
    assert!(at_hub.iter().any(|(s, st)| s == "health.failed" && b_stamp(st)), "{at_hub:?}");
    assert!(kv.iter().any(|(s, st)| s.ends_with(".vps-a.gitea") && b_stamp(st)), "{kv:?}");
    // What the centre enforces: none of it is handed out, replayed or read.
    let refused_before = steward_bus::refused_origins();
    centre_shows_only_bs_alert(&mut inbox, &cli, genuine.id, &forged).await;
    let at_hub = StateStore::<serde_json::Value>::open(&cli, UPDATE_BUCKET).await.expect("hub's");
    // a's own revision, kept under the forged one, is what the centre reads.
    let seen = at_hub.get("vps-a.gitea").await.expect("the hub's copy answers");
    assert_eq!(seen.map(|v| v.value), Some(serde_json::json!({ "host": A, "genuine": true })));
    // What remains: b can push a's revisions out of the hub's copy (5 kept per key), and the
    // record then reads as absent, never as b's.
    let js_b = async_nats::jetstream::new(root_b.clone());
    let mut last = 0;
    for n in 0..5 {
        let body = serde_json::json!({ "forged": n }).to_string();
        let ack = js_b.publish("$KV.STEWARD_UPDATES.vps-a.gitea", body.into()).await.expect("pub");
        last = ack.await.expect("b's bucket takes it").sequence;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !hub_stored(&net, "KV_STEWARD_UPDATES")
        .await
        .iter()
        // nats-server 2.10 adds the source's filter and transform after the sequence.
        .any(|(_, stamp)| {
            stamp.as_deref().is_some_and(|s| {
                s == format!("KV_STEWARD_UPDATES:J7OS1RmN {last}")
                    || s.starts_with(&format!("KV_STEWARD_UPDATES:J7OS1RmN {last} "))
            })
        })
    {
        assert!(Instant::now() < deadline, "b's revisions did not reach the hub");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = at_hub.get("vps-a.gitea").await.expect("the hub's copy answers");
    assert_eq!(seen, None, "a's record once b pushed it out of the hub's copy");
    assert!(steward_bus::refused_origins() > refused_before, "nothing was refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_provisioned_before_the_filters_gets_them_from_setup() {
    let net = provisioned(|c| c).await;
    // The hub's stream as an older setup left it: every leaf sourced unfiltered, no anchors.
    let js = net.hub_jetstream().await;
    let mut config = js.get_stream("STEWARD").await.expect("hub").cached_info().config.clone();
    config.subjects.retain(|s| !s.ends_with("._sourced"));
    for source in config.sources.iter_mut().flatten() {
        source.filter_subject = None;
    }
    js.update_stream(config).await.expect("the older shape");
    // Setup of this release: refused by nats-server 2.9 if it set the filters at once.
    let cfg = quick(net.hub_config_as(steward_bus::SETUP_USER), None);
    let setup = Bus::open(cfg, "steward-setup").await.expect("the hub's setup user connects");
    setup.setup(&Setup::for_hosts(&hosts())).await.expect("the hub provisions again");
    let info = js.get_stream("STEWARD").await.expect("hub").cached_info().config.clone();
    let filters: Vec<_> = info.sources.iter().flatten().map(|s| s.filter_subject.clone()).collect();
    assert_eq!(
        filters,
        [Some("host.vps-a.>".to_owned()), Some("host.vps-b.>".to_owned())],
        "{info:?}"
    );
    // Events still flow.
    let health_b = agent(&net, Service::Health, B).await;
    let event = alert(B, "after the upgrade");
    health_b.publish(&event).await.expect("b publishes");
    let cli = central(&net, Service::Cli).await;
    let (ids, _) = hub_has(&cli, B, 1, Duration::from_secs(15)).await;
    assert_eq!(ids, [event.id]);
}

/// The old hub's export as a rebuilt centre's operator has it: a central event (`notify.sent`,
/// with a stamp forged on it), an old approval for a, the same stamped as the old hub held
/// a's events (`Nats-Stream-Source` of a's source), an alert of a host that does not exist,
/// a dead letter of a's updater, a record of a's in the hub's copy of `UPDATES` and one of the centre's own. Returns the
/// records, the central event's id and the host events' ids.
fn old_hub_export() -> (Vec<steward_bus::ExportRecord>, uuid::Uuid, Vec<uuid::Uuid>) {
    use steward_bus::{ExportRecord, ExportedMessage, ExportedValue};
    use steward_events::records::{ANNOUNCED_BUCKET, UPDATE_BUCKET};
    let at = time::OffsetDateTime::now_utc();
    let message = |sequence: u64, event: &Event, stamp: Option<&str>| {
        let mut m = ExportedMessage::of_event(sequence, at, event).expect("encode");
        m.subject = steward_events::address(event.host.as_deref(), event.event_type());
        if let Some(stamp) = stamp {
            m.headers.push((steward_bus::STREAM_SOURCE.into(), stamp.into()));
        }
        ExportRecord::Message(m)
    };
    let sent = Event::new(
        "steward/test",
        steward_events::NotifySent {
            channel: "email".into(),
            recipients: vec!["op@desk".into()],
            title: "an old mail".into(),
            about: vec![],
        },
    );
    let (old, stamped, ghost) = (approval(A), approval(A), alert("vps-z", "no such host"));
    let value = |bucket: &str, key: &str| {
        ExportRecord::Value(ExportedValue {
            bucket: bucket.into(),
            key: key.into(),
            revision: 1,
            value: serde_json::json!({ "old": true }).to_string(),
        })
    };
    let records = vec![
        ExportRecord::Header {
            format: steward_bus::EXPORT_FORMAT,
            stream: "STEWARD".into(),
            exported_at: at,
        },
        message(1, &sent, Some("STEWARD:VTo6fgI0 9")),
        message(2, &old, None),
        message(3, &stamped, Some("STEWARD:VTo6fgI0 3")),
        message(4, &ghost, None),
        // A dead letter of a's updater: a's leaf keeps those, not the hub.
        {
            let mut m = ExportedMessage::of_event(5, at, &approval(A)).expect("encode");
            m.subject = format!("dlq.updater-{A}");
            ExportRecord::Message(m)
        },
        value(UPDATE_BUCKET, "vps-a.gitea"),
        value(ANNOUNCED_BUCKET, "email.gitea"),
    ];
    (records, sent.id, vec![old.id, stamped.id, ghost.id])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_at_a_rebuilt_hub_gives_no_host_an_old_event() {
    use steward_bus::StateStore;
    use steward_events::records::UPDATE_BUCKET;
    // A rebuilt centre: the hosts' leaves run on, a's updater waiting on its consumer; the hub
    // is new and empty (not yet set up), and the operator imports the old hub's export.
    let net = NatsLeaves::start(&hosts(), |c| c);
    provision_leaves(&net).await;
    let updater_a = agent(&net, Service::Updater, A).await;
    let mut inbox_a =
        updater_a.inbox(ConsumerSpec::of(Service::Updater, Some(A))).await.expect("a's inbox");
    // a's history on its leaf, which the old hub had sourced: the new one must get it back.
    let kept = alert(A, "on a's leaf, made before the centre was lost");
    agent(&net, Service::Health, A).await.publish(&kept).await.expect("a's health publishes");
    let genuine = serde_json::json!({ "host": A, "genuine": true });
    StateStore::<serde_json::Value>::open(&updater_a, UPDATE_BUCKET)
        .await
        .expect("a's UPDATES")
        .put("gitea", &genuine)
        .await
        .expect("a's updater writes its record");
    let (records, sent, host_events) = old_hub_export();
    // Not told the hub's domain, the import would make the hub a single server's stream.
    let undomained =
        BusConfig { domain: None, ..quick(net.hub_config_as(steward_bus::SETUP_USER), None) };
    let bus = Bus::open(undomained, "steward").await.expect("the hub's setup user connects");
    let err = bus.import(&records).await.expect_err("refused without STEWARD_NATS_DOMAIN");
    assert!(err.to_string().contains("the server's JetStream domain is hub"), "{err}");
    let importer = Bus::open(quick(net.hub_config_as(steward_bus::SETUP_USER), None), "steward")
        .await
        .expect("the hub's setup user connects");
    let first = importer.import(&records).await;
    // a's updater is handed no old approval (it would act on it as a new decision).
    assert_eq!(
        take(&mut inbox_a, Duration::from_secs(2)).await,
        None,
        "a's updater got an old event"
    );
    let first = first.expect("the import at the hub");
    assert_eq!((first.messages, first.duplicates, first.values), (1, 0, 1), "{first:?}");
    assert_eq!((first.left_to_leaves, first.values_left_to_leaves), (4, 1), "{first:?}");
    let named: Vec<&str> = first.hosts_left.iter().map(String::as_str).collect();
    assert_eq!(named, [A, "vps-z"]);
    let again = importer.import(&records).await.expect("the import again");
    assert_eq!(
        (again.messages, again.duplicates, again.values, again.values_kept),
        (0, 1, 0, 1),
        "{again:?}"
    );
    assert_eq!(
        take(&mut inbox_a, Duration::from_secs(1)).await,
        None,
        "a's updater got an old event"
    );
    // Nothing of it on a's leaf; at the hub the central event, and a's history from a's leaf
    // (the sources the import's setup gave the new hub start at the leaf's first event).
    let on_leaf = of_host(&leaf_reader(&net, A).await, A).await;
    assert_eq!(on_leaf, vec![kept.id], "a's leaf");
    let cli = central(&net, Service::Cli).await;
    let (at_hub, _) = hub_has(&cli, A, 1, Duration::from_secs(15)).await;
    assert_eq!(at_hub, vec![kept.id]);
    let replay = replayed(&cli).await;
    assert!(replay.contains(&sent), "the central event is not at the hub: {replay:?}");
    assert!(!host_events.iter().any(|id| replay.contains(id)), "{replay:?}");
    // a's record at the hub is a's, from a's leaf; the export's old one was not written.
    let records = StateStore::<serde_json::Value>::open(&cli, UPDATE_BUCKET).await.expect("hub's");
    let started = Instant::now();
    while records.get("vps-a.gitea").await.expect("read").is_none() {
        assert!(started.elapsed() < Duration::from_secs(15), "a's record is not at the hub");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let at_hub = records.get("vps-a.gitea").await.expect("read").map(|v| v.value);
    assert_eq!(at_hub.as_ref(), Some(&genuine));
    let kv = hub_stored(&net, "KV_STEWARD_UPDATES").await;
    assert_eq!(kv.len(), 1, "{kv:?}");
    // Read whole at the hub (judged key by key) it is the same.
    let all = records.all(Duration::from_secs(5)).await.expect("the hub's UPDATES");
    let all: Vec<_> = all.into_iter().map(|(k, v)| (k, v.value)).collect();
    assert_eq!(all, [("vps-a.gitea".to_owned(), genuine)]);
    // The path to a was open all along: the set-up hub's real approval arrives.
    provision_hub(&net).await;
    let real = approval(A);
    cli.publish(&real).await.expect("the centre reaches a");
    assert_eq!(take(&mut inbox_a, Duration::from_secs(5)).await, Some(real.id));
}

/// A host's job progress (`steward backup now`'s progress bar) reaches the centre's CLI across
/// the link; another host cannot pass reports off as that job's: b's backup agent may not
/// publish on a's subjects, and b's root gets nothing on them across b's link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_job_progress_reaches_the_centre_and_no_other_host_can_forge_it() {
    use futures::StreamExt;
    use steward_bus::Progress;
    let net = provisioned(|c| c).await;
    let backup_a = agent(&net, Service::Backup, A).await;
    let backup_b = agent(&net, Service::Backup, B).await;
    let root_b = root_of(&net, B).await;
    let cli = central(&net, Service::Cli).await;
    let job = uuid::Uuid::now_v7();
    let mut watched = cli.watch_progress(Some(A), job).await.expect("the centre follows a's job");
    let report = |phase: &str| Progress {
        phase: phase.into(),
        item: "postgres".into(),
        done: 42,
        total: Some(100),
    };
    let forged = serde_json::to_vec(&report("forged by b's root")).expect("encode");
    let subject = format!("progress.{A}.{}", job.simple());
    // The CLI's interest reaches the leaves asynchronously: report until one arrives.
    let mut seen = vec![];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(&report("backing up")) {
        assert!(Instant::now() < deadline, "a's progress never reached the centre: {seen:?}");
        root_b.publish(subject.clone(), forged.clone().into()).await.expect("b's root publishes");
        backup_b.raw_client().publish(subject.clone(), forged.clone().into()).await.expect("b");
        backup_a.publish_progress(job, &report("backing up")).await.expect("a reports");
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), watched.next()).await
        {
            seen.push(p);
        }
    }
    // A while more of b's reports, now that every interest is in place.
    for _ in 0..10 {
        root_b.publish(subject.clone(), forged.clone().into()).await.expect("b's root publishes");
        backup_b.raw_client().publish(subject.clone(), forged.clone().into()).await.expect("b");
    }
    root_b.flush().await.expect("flush");
    let _ = backup_b.raw_client().flush().await;
    while let Ok(Some(p)) = tokio::time::timeout(Duration::from_secs(1), watched.next()).await {
        seen.push(p);
    }
    assert!(seen.iter().all(|p| p.phase == "backing up"), "the centre followed b's: {seen:?}");
    let log = net.leaf(B).server.wait_log("Publish Violation");
    assert!(log.contains("User \"backup-vps-b\", Subject \"progress.vps-a."), "{log}");
}

/// A rebuilt host (its leaf's volume lost, the server started empty and set up again): what it
/// makes from then on reaches the hub, events and records, though the hub's sources of its
/// stream and buckets had copied up to sequences the new ones start far below (nats-server then
/// resumes a source past the new stream's end: what the host made before the hub's source came
/// back was never copied). As the runbook has it, the host's backup is imported on the new leaf
/// first: its records and dead letters come back, its events (the hub holds them) are left out,
/// so the hub holds each once. Two setups are killed before the import, once a new stream was
/// created and once one was moved to its first sequence: the import's setup finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_hosts_new_events_reach_the_hub() {
    use steward_bus::StateStore;
    use steward_events::records::UPDATE_BUCKET;
    let mut net = provisioned(|c| c).await;
    let mut sent = vec![];
    {
        let updater_a = agent(&net, Service::Updater, A).await;
        for _ in 0..30 {
            let event = approval(A);
            updater_a.publish(&event).await.expect("publish");
            sent.push(event.id);
        }
        let records = StateStore::<serde_json::Value>::open(&updater_a, UPDATE_BUCKET)
            .await
            .expect("a's UPDATES");
        for n in 0..5 {
            records.put("gitea", &serde_json::json!({ "old": n })).await.expect("a's record");
        }
    }
    // a's backup (its leaf's stream and buckets), as the backup service exports them.
    let mut export = leaf_reader(&net, A).await.export().await.expect("a's export");
    let mut backup = vec![];
    while let Some(record) = export.next().await {
        backup.push(record.expect("a's export record"));
    }
    let cli = central(&net, Service::Cli).await;
    hub_has(&cli, A, sent.len(), Duration::from_secs(15)).await;
    let hub_records =
        StateStore::<serde_json::Value>::open(&cli, UPDATE_BUCKET).await.expect("the hub's");
    let record_at_hub =
        || async { hub_records.get("vps-a.gitea").await.expect("read").map(|v| v.value) };
    let started = Instant::now();
    while record_at_hub().await != Some(serde_json::json!({ "old": 4 })) {
        assert!(started.elapsed() < Duration::from_secs(15), "a's record is not at the hub");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // a rebuilt: its leaf's store lost, the server started empty; setups killed, the backup
    // imported.
    let leaf = net.leaves.iter_mut().find(|l| l.host == A).expect("a's leaf");
    leaf.server.lose_store();
    leaf.server.start_again();
    let cfg = quick(net.leaf_config_as(A, steward_bus::SETUP_USER), None);
    let setup = Bus::open(cfg, "steward-setup").await.expect("a's new leaf's setup user connects");
    let raw = async_nats::ConnectOptions::with_user_and_password(
        steward_bus::SETUP_USER.into(),
        steward_testkit::NatsServer::setup_password(),
    )
    .custom_inbox_prefix(steward_bus::inbox_prefix(steward_bus::SETUP_USER))
    .connect(net.leaf(A).server.url())
    .await
    .expect("a's leaf's setup user connects raw");
    let js = async_nats::jetstream::new(raw);
    let placed = |js: async_nats::jetstream::Context, stream: String| async move {
        let mut found = js.get_stream(&stream).await.expect("a's new stream");
        let info = found.info().await.expect("its info").clone();
        (info.config.subjects == [steward_bus::starting_subject(&stream)], info.state)
    };
    // The import (the runbook's step 2) killed twice in a row in its provisioning: the first
    // time once it had created the stream (left on its starting subject, empty, never moved);
    // the second, which moved and finished the stream, once it had moved its second new one
    // (a bucket's) before giving it its subjects.
    let leaf_setup = quick(net.leaf_config_as(A, steward_bus::SETUP_USER), None);
    let saved = steward_testkit::TempDir::new("a-backup");
    let saved = saved.0.join("events.ndjson");
    let lines: Vec<String> =
        backup.iter().map(|r| serde_json::to_string(r).expect("a record")).collect();
    std::fs::write(&saved, lines.join("\n")).expect("a's backup saved");
    let import = Some(saved.as_path());
    setup_killed_at(&leaf_setup, import, "setup:stream-created").await;
    let (starting, state) = placed(js.clone(), "STEWARD".into()).await;
    assert!(starting && state.messages == 0 && state.first_sequence <= 1, "{state:?}");
    setup_killed_at(&leaf_setup, import, "setup:stream-moved=2").await;
    let (starting, state) = placed(js.clone(), "STEWARD".into()).await;
    assert!(!starting && state.first_sequence > 1_000_000_000_000_000, "{state:?}");
    use futures::StreamExt as _;
    let mut names = js.stream_names();
    let mut halfway = vec![];
    while let Some(name) = names.next().await {
        let name = name.expect("a stream's name");
        if let (true, state) = placed(js.clone(), name.clone()).await {
            halfway.push((name, state.first_sequence));
        }
    }
    assert!(
        halfway.len() == 1 && halfway[0].1 > 1_000_000_000_000_000,
        "one stream moved and left on its starting subject: {halfway:?}"
    );
    let imported = setup.import(&backup).await.expect("a's backup imported on its new leaf");
    assert_eq!((imported.left_to_hub, imported.messages), (30, 0), "{imported:?}");
    assert_eq!(imported.values, 1, "a's record: {imported:?}");
    setup.setup(&Setup::for_hosts(&hosts())).await.expect("a's new leaf provisions");
    let updater_a = agent(&net, Service::Updater, A).await;
    let mut after = vec![];
    for _ in 0..3 {
        let event = approval(A);
        updater_a.publish(&event).await.expect("the rebuilt host publishes");
        after.push(event.id);
    }
    let fresh = serde_json::json!({ "rebuilt": true });
    StateStore::<serde_json::Value>::open(&updater_a, UPDATE_BUCKET)
        .await
        .expect("a's new UPDATES")
        .put("gitea", &fresh)
        .await
        .expect("the rebuilt host's record");
    assert_eq!(of_host(&leaf_reader(&net, A).await, A).await, after, "a's new leaf");
    let (at_hub, took) = hub_has(&cli, A, sent.len() + after.len(), Duration::from_secs(60)).await;
    eprintln!("MEASURED a rebuilt host's first events at the hub {took:?} after they were made");
    let want: Vec<_> = sent.iter().chain(&after).copied().collect();
    assert_eq!(at_hub, want, "a's events at the hub: the old ones, then the new ones, once each");
    let started = Instant::now();
    while record_at_hub().await.as_ref() != Some(&fresh) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rebuilt host's record is not at the hub: {:?}",
            record_at_hub().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both began past where the old ones ended (the stream through the resumed setup).
    for stream in ["STEWARD", "KV_STEWARD_UPDATES"] {
        let mut found = js.get_stream(stream).await.expect("a's new stream");
        let info = found.info().await.expect("its info");
        assert!(info.state.first_sequence > 1_000_000_000_000_000, "{stream}: {:?}", info.state);
        assert_ne!(info.config.subjects, [steward_bus::starting_subject(stream)], "{stream}");
    }
}

/// A host's record written by revision (as the updater saves an update record) reaches the
/// hub's copy, with another host writing the same bucket in between (so the hub's sequences are
/// not the host's). A hub older than nats-server 2.10.14 checks the write's expected revision
/// against its own copy, refuses it, and retries it for ever: fails there (`steward setup` at
/// such a hub warns).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_record_written_by_revision_reaches_the_hubs_copy() {
    use steward_bus::StateStore;
    use steward_events::records::UPDATE_BUCKET;
    let net = provisioned(|c| c).await;
    let open = |bus: Bus| async move {
        StateStore::<serde_json::Value>::open(&bus, UPDATE_BUCKET).await.expect("UPDATES")
    };
    let a = open(agent(&net, Service::Updater, A).await).await;
    let b = open(agent(&net, Service::Updater, B).await).await;
    let first = a.create("gitea", &serde_json::json!({ "step": 1 })).await.expect("a creates");
    b.create("gitea", &serde_json::json!({ "b": true })).await.expect("b creates");
    let second = a.update("gitea", &serde_json::json!({ "step": 2 }), first).await.expect("a");
    a.update("gitea", &serde_json::json!({ "step": 3 }), second).await.expect("a updates again");
    let hub = open(central(&net, Service::Cli).await).await;
    let started = Instant::now();
    loop {
        let seen = hub.get("vps-a.gitea").await.expect("the hub's copy answers").map(|v| v.value);
        if seen == Some(serde_json::json!({ "step": 3 })) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a's record at the hub after 15 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A rebuilt hub (its volume lost, `steward setup` run again) copies each host's history from
/// its leaf anew, every copy stored now. Its setup creates the central consumers once the
/// sources have caught up, starting after what they copied: the notifier is handed none of a
/// host's recent history as new (before, it mailed the last seven days again), and what a
/// host makes afterwards reaches it, also after setups killed twice during the wait. A host
/// whose leaf is unreachable is not waited for, and setup names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_hubs_notifier_is_handed_no_hosts_history() {
    let net = NatsLeaves::start(&hosts(), |c| c);
    provision_leaves(&net).await;
    // a's recent history on its leaf (days old, within the markers' seven: the horizon would
    // not refuse it).
    let health_a = agent(&net, Service::Health, A).await;
    let mut history = vec![];
    for i in 0..300 {
        let mut event = alert(A, &format!("history {i}"));
        event.time -= Duration::from_secs(2 * 24 * 3600);
        health_a.publish(&event).await.expect("a's history");
        history.push(event.id);
    }
    // b's link is down while the centre is rebuilt. Its setup is killed twice in a row first,
    // while it waits for the sources.
    net.leaf(B).link.cut();
    let cfg = quick(net.hub_config_as(steward_bus::SETUP_USER), None);
    setup_killed_at(&cfg, None, "setup:sources-looked=2").await;
    setup_killed_at(&cfg, None, "setup:sources-looked=3").await;
    let setup = Bus::open(cfg, "steward-setup").await.expect("the hub's setup user connects");
    let started = Instant::now();
    let done = setup.setup(&Setup::for_hosts(&hosts())).await.expect("the rebuilt hub provisions");
    let line = done
        .iter()
        .find(|l| l.starts_with("central consumers start"))
        .unwrap_or_else(|| panic!("no word of the sources: {done:?}"));
    eprintln!("MEASURED the rebuilt hub's setup took {:?}: {line}", started.elapsed());
    assert!(line.contains("the sources of vps-b had not caught up"), "{line}");
    assert!(!line.contains("vps-a"), "{line}");
    let cli = central(&net, Service::Cli).await;
    let (at_hub, _) = hub_has(&cli, A, history.len(), Duration::from_secs(5)).await;
    assert_eq!(at_hub, history, "a's history at the hub before its consumers were made");
    let notifier = central(&net, Service::Notifier).await;
    let mut inbox =
        notifier.inbox(ConsumerSpec::of(Service::Notifier, None)).await.expect("notifier's");
    assert_eq!(
        take(&mut inbox, Duration::from_secs(2)).await,
        None,
        "the notifier was handed a's history"
    );
    let new = alert(A, "new");
    health_a.publish(&new).await.expect("a's new alert");
    assert_eq!(take(&mut inbox, Duration::from_secs(10)).await, Some(new.id));
    // Run again (every upgrade does): the consumers exist, nothing is waited for.
    let again = setup.setup(&Setup::for_hosts(&hosts())).await.expect("again");
    assert!(!again.iter().any(|l| l.starts_with("central consumers start")), "{again:?}");
    net.leaf(B).link.restore();
}

/// What [`setup_killed_at`] gives [`setup_in_a_process_of_its_own`]: the server's URL and
/// domain, and the export to import.
const CHILD_URL: &str = "STEWARD_TEST_SETUP_CHILD_URL";
const CHILD_DOMAIN: &str = "STEWARD_TEST_SETUP_CHILD_DOMAIN";
const CHILD_IMPORT: &str = "STEWARD_TEST_SETUP_CHILD_IMPORT";

/// Runs `steward setup` (or, given an export's file, `steward events import`) as the
/// provisioning user of `cfg`'s server in a process of its own, this test binary again, with
/// the failpoint `point` armed: the process aborts there (SIGABRT: nothing flushed or cleaned
/// up, as a SIGKILL). What it printed.
async fn setup_killed_at(cfg: &BusConfig, import: Option<&std::path::Path>, point: &str) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    let exe = std::env::current_exe().expect("this test binary");
    let child = tokio::process::Command::new(exe)
        .args(["setup_in_a_process_of_its_own", "--exact", "--ignored", "--nocapture"])
        .env(CHILD_URL, &cfg.url)
        .env(CHILD_DOMAIN, cfg.domain.as_deref().unwrap_or_default())
        .env(CHILD_IMPORT, import.map(|p| p.as_os_str()).unwrap_or_default())
        .env(steward_failpoints::ENV, point)
        .env_remove(steward_failpoints::ENV_DIR)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the setup's process");
    let out = tokio::time::timeout(Duration::from_secs(150), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the setup killed at {point} still ran after 150 s"))
        .expect("the setup's process ended");
    let printed =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.signal(), Some(6), "not killed at {point}: {printed}");
    let name = point.split('=').next().unwrap_or(point);
    assert!(printed.contains(&format!("failpoint: {name}\n")), "{printed}");
    printed
}

/// Not a test of its own: the body of [`setup_killed_at`]'s process, which names the server
/// in its environment (run alone, without it, it does nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by setup_killed_at in a process of its own"]
async fn setup_in_a_process_of_its_own() {
    let (Ok(url), Ok(domain)) = (std::env::var(CHILD_URL), std::env::var(CHILD_DOMAIN)) else {
        return;
    };
    let credentials = steward_bus::Credentials {
        user: steward_bus::SETUP_USER.into(),
        password: steward_testkit::NatsServer::setup_password(),
    };
    let cfg = BusConfig {
        url,
        credentials: Some(credentials),
        hosts: hosts(),
        domain: Some(domain),
        ..BusConfig::default()
    };
    let setup =
        Bus::open(quick(cfg, None), "steward-setup").await.expect("the setup user connects");
    match std::env::var(CHILD_IMPORT).ok().filter(|p| !p.is_empty()) {
        None => drop(setup.setup(&Setup::for_hosts(&hosts())).await.expect("the setup")),
        Some(path) => {
            let saved = std::fs::read_to_string(path).expect("the export");
            let records: Vec<steward_bus::ExportRecord> =
                saved.lines().map(|l| serde_json::from_str(l).expect("a record")).collect();
            setup.import(&records).await.expect("the import");
        }
    }
}
