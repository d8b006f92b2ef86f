//! The leaf-node topology with the real binaries: a hub and a leaf nats-server per host
//! (`steward_testkit::leaf`), each provisioned by the real `steward setup` given its
//! `STEWARD_NATS_DOMAIN`; each host's real watcher and updater on its own leaf (two
//! `STEWARD_HOST`s against the test bed's one engine, each with a scope of its own); the CLI
//! at the hub. `steward check` from the centre reaches both hosts' watchers across their
//! links, the pending update on host a is listed at the centre (the hub's copy of the hosts'
//! `UPDATES`), approved with `steward approve` and applied by a's updater; the hub's stream
//! holds the flow once, and no server refused anything a participant needed. And the same
//! through the mail: the notifier at the hub asks a's updater on its leaf for the approval
//! link, and a POST to it has a's updater apply the update.

use std::time::Duration;

use steward_bus::{Bus, BusConfig};
use steward_events::{EventData, Service};
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::{steward_with, Proc};
use steward_testkit::docker::push_app;
use steward_testkit::leaf::{NatsLeaves, HUB_DOMAIN};
use steward_testkit::{unique_name, NatsServer};

const A: &str = "vps-a";
const B: &str = "vps-b";

/// A connection as `user` to `host`'s leaf (`None`: the hub): what the processes' settings
/// are taken from.
async fn open(net: &NatsLeaves, host: Option<&str>, user: &str) -> Bus {
    let cfg = match host {
        Some(h) => net.leaf_config_as(h, user),
        None => net.hub_config_as(user),
    };
    let cfg = BusConfig { connect_timeout: Duration::from_secs(10), ..cfg };
    Bus::open(cfg, "steward-test").await.unwrap_or_else(|e| panic!("{user} connects: {e}"))
}

/// The settings every process of `domain`'s server gets, as `user`.
fn env(table: &str, domain: &str, user: &str) -> Vec<(&'static str, String)> {
    let password = if user == steward_bus::SETUP_USER {
        NatsServer::setup_password()
    } else {
        NatsServer::user_password(user)
    };
    vec![
        ("STEWARD_NATS_USER", user.to_owned()),
        ("STEWARD_NATS_PASSWORD", password),
        ("STEWARD_HOSTS", table.to_owned()),
        ("STEWARD_NATS_DOMAIN", domain.to_owned()),
    ]
}

/// The real notifier at the hub, mailing `to` through the test bed's SMTP server, with
/// `extra` settings.
async fn notifier_at_hub(
    net: &NatsLeaves,
    table: &str,
    to: &str,
    extra: &[(&'static str, String)],
) -> (String, Proc) {
    let hub = open(net, None, Service::Notifier.name()).await;
    let mut settings = steward_system_tests::mail::testbed_notifier_env(to);
    settings.extend(env(table, HUB_DOMAIN, Service::Notifier.name()));
    settings.extend(extra.iter().cloned());
    ("notifier".to_owned(), Proc::service(Service::Notifier.binary(), &hub, &settings))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_on_a_leaf_host_is_approved_from_the_centre_and_applied_there() {
    let hosts = vec![A.to_owned(), B.to_owned()];
    let table = hosts.join(",");
    let net = NatsLeaves::start(&hosts, |c| c);
    for (host, domain) in [(Some(A), A), (Some(B), B), (None, HUB_DOMAIN)] {
        let setup = open(&net, host, steward_bus::SETUP_USER).await;
        if host.is_none() {
            // A rebuilt centre's operator imports an old export at the hub before its setup:
            // the central event goes in; a's old approval is left out (published at the hub
            // it would be stored on a's leaf, whose updater has its consumer already).
            let out = import_at_hub(&setup, &table);
            assert!(out.contains("imported 1 events (0 already"), "{out}");
            assert!(
                out.contains("left out at the hub: 1 events and 0 values of hosts (vps-a)"),
                "{out}"
            );
        }
        let out = steward_with(&setup, &env(&table, domain, steward_bus::SETUP_USER), &["setup"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "setup {domain}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(&format!("JetStream domain {domain}")), "{stdout}");
    }

    let (scope_a, scope_b) = (unique_name("scope-a"), unique_name("scope-b"));
    let app = app(&scope_a, "manual", &[]);
    let mut procs = vec![];
    for (host, scope) in [(A, &scope_a), (B, &scope_b)] {
        for service in [Service::Watcher, Service::Updater] {
            let user = service.identity(Some(host));
            let leaf = open(&net, Some(host), &user).await;
            let mut extra = env(&table, host, &user);
            extra.push(("STEWARD_HOST", host.to_owned()));
            extra.push(("STEWARD_SCOPE", scope.clone()));
            if service == Service::Updater {
                extra.push(("STEWARD_HEALTH_GRACE", "2s".into()));
            }
            procs.push((user, Proc::service(service.binary(), &leaf, &extra)));
        }
    }
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");
    let cli = |args: &[&str]| {
        let out = steward_with(&hub, &env(&table, HUB_DOMAIN, Service::Cli.name()), args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "steward {args:?} failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();

    push_app("v2", &app.image);
    let checked = cli(&["check"]);
    assert!(checked.contains("on vps-a") && checked.contains("on vps-b"), "{checked}");
    wait_event(&hub, "update.pending", Duration::from_secs(60)).await;
    // The record is on a's leaf; the centre lists it from the hub's copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let row = loop {
        let pending = cli(&["updates"]);
        if let Some(row) = pending.lines().find(|l| l.contains(&app.name)) {
            break row.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "not listed: {pending}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(row.contains(A), "the update is host a's: {row}");
    let id = row.split_whitespace().next().expect("an id").to_owned();
    cli(&["approve", &id]);
    let events = wait_event(&hub, "update.succeeded", Duration::from_secs(60)).await;
    let approved = events
        .iter()
        .find(|e| matches!(&e.data, EventData::UpdateApproved(_)))
        .expect("the approval is in the hub's stream");
    assert_eq!(approved.host.as_deref(), Some(A), "addressed to the update's host");
    for e in events.iter().filter(|e| e.event_type().starts_with("update.")) {
        assert_eq!(e.host.as_deref(), Some(A), "{} about host a", e.event_type());
    }
    let of = |t: &str| events.iter().filter(|e| e.event_type() == t).count();
    for step in ["update.pending", "update.approved", "update.started", "update.succeeded"] {
        assert_eq!(of(step), 1, "{step} at the hub {} times\n{}", of(step), logs());
    }
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    let stored = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), stored, "an event stored twice at the hub");

    for server in net.servers() {
        steward_system_tests::assert_nothing_refused(server, &procs);
    }
}

/// `steward events import` at the hub, as its setup user, of an old export holding a central
/// `notify.sent` and an approval for host a; its stdout.
fn import_at_hub(setup: &Bus, table: &str) -> String {
    use steward_bus::{ExportRecord, ExportedMessage};
    let at = time::OffsetDateTime::now_utc();
    let sent = steward_events::Event::new(
        "steward/test",
        steward_events::NotifySent {
            channel: "email".into(),
            recipients: vec!["op@desk".into()],
            title: "an old mail".into(),
            about: vec![],
        },
    );
    let approved = steward_events::Event::new(
        "steward/test",
        steward_events::UpdateApproved { update_id: uuid::Uuid::now_v7(), by: "op@desk".into() },
    )
    .with_host(Some(A.to_owned()));
    let mut lines = vec![ExportRecord::Header {
        format: steward_bus::EXPORT_FORMAT,
        stream: "STEWARD".into(),
        exported_at: at,
    }];
    for (sequence, event) in [(1, &sent), (2, &approved)] {
        let mut m = ExportedMessage::of_event(sequence, at, event).expect("encode");
        m.subject = steward_events::address(event.host.as_deref(), event.event_type());
        lines.push(ExportRecord::Message(m));
    }
    let text: String =
        lines.iter().map(|r| serde_json::to_string(r).expect("a record") + "\n").collect();
    let file = std::env::temp_dir().join(unique_name("steward-hub-import"));
    std::fs::write(&file, text).expect("the export file");
    let path = file.to_string_lossy().into_owned();
    let out = steward_with(
        setup,
        &env(table, HUB_DOMAIN, steward_bus::SETUP_USER),
        &["events", "import", &path],
    );
    let _ = std::fs::remove_file(&file);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the import at the hub: {stdout}{stderr}");
    stdout.into_owned()
}

/// The hub and a leaf per host, each provisioned by `steward setup` as its own server's
/// (the hosts' domains, the hub's); with the routing table the participants are given.
async fn set_up() -> (NatsLeaves, String) {
    set_up_hub_of(1).await
}

/// [`set_up`] with the hub as a cluster of `nodes` (three: R3, `STEWARD_NATS_REPLICAS=3` for
/// its setup).
async fn set_up_hub_of(nodes: usize) -> (NatsLeaves, String) {
    let hosts = vec![A.to_owned(), B.to_owned()];
    let table = hosts.join(",");
    let net = match nodes {
        1 => NatsLeaves::start(&hosts, |c| c),
        n => NatsLeaves::start_clustered(&hosts, n),
    };
    for (host, domain) in [(Some(A), A), (Some(B), B), (None, HUB_DOMAIN)] {
        let setup = open(&net, host, steward_bus::SETUP_USER).await;
        let mut settings = env(&table, domain, steward_bus::SETUP_USER);
        if host.is_none() {
            settings.push(("STEWARD_NATS_REPLICAS", nodes.min(3).to_string()));
        }
        let out = steward_with(&setup, &settings, &["setup"]);
        assert!(out.status.success(), "setup {domain}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (net, table)
}

/// SIGKILLs the node leading a clustered hub's stream, waits until another node leads it (an
/// election takes seconds: nats-server's election timeout is several), starts the killed one
/// again and waits until it is a current replica of the stream once more, then does the same
/// to that new leader. Killing the next leader before the restarted node has caught up would
/// leave one current node of three: no majority, no leader (CI saw it: no election in 30 s).
async fn kill_hub_leaders(net: &mut NatsLeaves) {
    let mut leader = hub_stream_leader(net, None).await;
    for _ in 0..2 {
        net.hub_node_mut(leader).kill();
        let killed = std::time::Instant::now();
        let next = hub_stream_leader(net, Some(leader)).await;
        eprintln!(
            "MEASURED a new leader of the hub's stream {:?} after the kill",
            killed.elapsed()
        );
        net.hub_node_mut(leader).start_again();
        hub_replica_current(net, leader).await;
        leader = next;
    }
}

/// Waits (bounded) until hub node `i` is a current, online replica of the hub's stream, as its
/// leader reports.
async fn hub_replica_current(net: &NatsLeaves, i: usize) {
    let js = net.hub_jetstream().await;
    let name = format!("steward-nats-hub-{i}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let info = async {
            let mut stream = js.get_stream("STEWARD").await.ok()?;
            stream.info().await.ok().and_then(|i| i.cluster.clone())
        };
        let cluster = tokio::time::timeout(Duration::from_secs(5), info).await.ok().flatten();
        let current = cluster
            .as_ref()
            .is_some_and(|c| c.replicas.iter().any(|r| r.name == name && r.current && !r.offline));
        if current {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} did not become a current replica of the hub's stream again: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node of a clustered hub that leads its `STEWARD` stream now, other than `not` (waits
/// out an election, bounded).
async fn hub_stream_leader(net: &NatsLeaves, not: Option<usize>) -> usize {
    let js = net.hub_jetstream().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = async {
            let mut stream = js.get_stream("STEWARD").await.ok()?;
            stream.info().await.ok().and_then(|i| i.cluster.clone())
        };
        let leader = tokio::time::timeout(Duration::from_secs(5), info)
            .await
            .ok()
            .flatten()
            .and_then(|c| c.leader)
            .and_then(|l| l.strip_prefix("steward-nats-hub-").and_then(|i| i.parse().ok()));
        if let Some(i) = leader.filter(|i| Some(*i) != not) {
            return i;
        }
        assert!(std::time::Instant::now() < deadline, "no new leader of the hub's stream");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Host a's watcher and updater on a's leaf, in `scope`, the updater with `updater_extra`
/// settings too.
async fn agents_of_a(
    net: &NatsLeaves,
    table: &str,
    scope: &str,
    updater_extra: &[(&'static str, String)],
) -> Vec<(String, Proc)> {
    agents_of(net, A, table, scope, updater_extra).await
}

/// `host`'s watcher and updater on its leaf, in `scope`, the updater with `updater_extra`.
async fn agents_of(
    net: &NatsLeaves,
    host: &str,
    table: &str,
    scope: &str,
    updater_extra: &[(&'static str, String)],
) -> Vec<(String, Proc)> {
    agents_on(net, host, table, scope, &[], updater_extra).await
}

/// [`agents_of`], both agents with `both` settings too (another engine's `DOCKER_HOST`).
async fn agents_on(
    net: &NatsLeaves,
    host: &str,
    table: &str,
    scope: &str,
    both: &[(&'static str, String)],
    updater_extra: &[(&'static str, String)],
) -> Vec<(String, Proc)> {
    let mut procs = vec![];
    // The watcher last: its pull is the newest when the set is stopped right after
    // (`a_hosts_agents_away_...`).
    for service in [Service::Updater, Service::Watcher] {
        let user = service.identity(Some(host));
        let leaf = open(net, Some(host), &user).await;
        let mut extra = env(table, host, &user);
        extra.push(("STEWARD_HOST", host.to_owned()));
        extra.push(("STEWARD_SCOPE", scope.to_owned()));
        extra.extend(both.iter().cloned());
        if service == Service::Updater {
            extra.extend(updater_extra.iter().cloned());
        }
        procs.push((user, Proc::service(service.binary(), &leaf, &extra)));
    }
    procs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailed_link_from_the_centre_approves_on_the_leaf_host() {
    use steward_system_tests::mail::{
        approval_link, approve_by_link, testbed_maildir, unique_address, wait_mails,
    };
    let (net, table) = set_up().await;
    let scope = unique_name("scope-leaf-link");
    let app = app(&scope, "manual", &[]);
    let port = steward_testkit::free_port();
    let public = format!("http://127.0.0.1:{port}");
    let updater_extra = [
        ("STEWARD_HEALTH_GRACE", "2s".to_owned()),
        ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("STEWARD_PUBLIC_URL", public.clone()),
        (
            "STEWARD_APPROVAL_SECRET",
            "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        ),
    ];
    let mut procs = agents_of_a(&net, &table, &scope, &updater_extra).await;
    let to = unique_address("leaf-link");
    procs.push(notifier_at_hub(&net, &table, &to, &[]).await);
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");

    push_app("v2", &app.image);
    let out = steward_with(&hub, &env(&table, HUB_DOMAIN, Service::Cli.name()), &["check"]);
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(60));
    let mail = &mails[0];
    assert!(mail.text.contains(A), "the mail does not name the host: {}", mail.text);
    approve_by_link(&approval_link(mail, &public, &logs())).await;
    let events = wait_event(&hub, "update.succeeded", Duration::from_secs(60)).await;
    for e in events.iter().filter(|e| e.event_type().starts_with("update.")) {
        assert_eq!(e.host.as_deref(), Some(A), "{} about host a", e.event_type());
    }
    for server in net.servers() {
        steward_system_tests::assert_nothing_refused(server, &procs);
    }
}

/// The hub SIGKILLed during an automatic update on host a: the update goes on and ends on a's
/// leaf, which never needed the hub; restarted, the hub gets the whole flow, each step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_on_a_leaf_host_ends_while_the_hub_is_down_and_the_hub_gets_it_once() {
    let (mut net, table) = set_up().await;
    let scope = unique_name("scope-leaf-kill");
    let app = app(&scope, "automatic", &[]);
    // A health gate long enough for the hub to be down inside the flow.
    let procs = agents_of_a(&net, &table, &scope, &[("STEWARD_HEALTH_GRACE", "5s".into())]).await;
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    // The host's own view, for while the hub is down.
    let leaf_a = open(&net, Some(A), steward_bus::SETUP_USER).await;
    let leaf_a = Bus::connect(leaf_a.config().clone(), "steward-test").await.expect("a's stream");
    {
        let hub = open(&net, None, Service::Cli.name()).await;
        push_app("v2", &app.image);
        let out = steward_with(&hub, &env(&table, HUB_DOMAIN, Service::Cli.name()), &["check"]);
        assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
        let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("hub stream");
        wait_event(&hub, "update.started", Duration::from_secs(60)).await;
    }
    net.hub.kill();
    let killed = std::time::Instant::now();
    let on_leaf = wait_event(&leaf_a, "update.succeeded", Duration::from_secs(60)).await;
    assert!(
        !on_leaf.iter().any(|e| e.event_type() == "update.failed"),
        "the update failed with the hub down\n{}",
        logs()
    );
    eprintln!(
        "MEASURED the update ended on the host {:?} after the hub was killed",
        killed.elapsed()
    );
    net.hub.start_again();
    let restarted = std::time::Instant::now();
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");
    let events = wait_event(&hub, "update.succeeded", Duration::from_secs(60)).await;
    eprintln!("MEASURED the flow at the hub {:?} after its restart", restarted.elapsed());
    let of = |t: &str| events.iter().filter(|e| e.event_type() == t).count();
    for step in ["image.updated", "update.started", "update.succeeded"] {
        assert_eq!(of(step), 1, "{step} at the hub {} times\n{}", of(step), logs());
    }
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    let stored = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), stored, "an event stored twice at the hub");
    // Every event of a's leaf is at the hub, in a's order.
    let at_hub: Vec<_> =
        events.iter().filter(|e| e.host.as_deref() == Some(A)).map(|e| e.id).collect();
    let on_leaf = wait_event(&leaf_a, "update.succeeded", Duration::from_secs(5)).await;
    let on_leaf: Vec<_> = on_leaf.iter().map(|e| e.id).collect();
    assert_eq!(at_hub, on_leaf, "the hub's copy of a's events");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !steward_testkit::http_get(app.port).is_some_and(|b| b.contains("app v2")) {
        assert!(std::time::Instant::now() < deadline, "v2 is not served\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Host b's root, on b's leaf, unfiltered at the hub, passes off alerts and a record as host
/// a's (and an alert on a central subject): the real notifier at the hub mails none of it,
/// `steward status` and `steward events replay` at the hub show none of it; b's own alert
/// and record come through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_leaf_gets_nothing_into_the_centres_mail_or_output() {
    use steward_system_tests::mail::{mails_to, testbed_maildir, unique_address, wait_mails};
    let (net, table) = set_up().await;
    net.unfilter_at_hub("STEWARD", B).await;
    net.unfilter_at_hub("KV_STEWARD_WATCHER", B).await;
    let to = unique_address("leaf-hostile");
    let metrics_port = steward_testkit::free_port();
    let metrics = [("STEWARD_HTTP_ADDR", format!("127.0.0.1:{metrics_port}"))];
    let procs = [notifier_at_hub(&net, &table, &to, &metrics).await];
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();

    let (forged, genuine) = (unique_name("forged"), unique_name("genuine"));
    let root_b = async_nats::ConnectOptions::with_user_and_password(
        steward_testkit::leaf::HOST_ROOT.into(),
        NatsServer::user_password(steward_testkit::leaf::HOST_ROOT),
    )
    .connect(net.leaf(B).server.url())
    .await
    .expect("b's root connects to b's leaf");
    let js_b = async_nats::jetstream::new(root_b);
    let stream = js_b.get_stream("STEWARD").await.expect("b's stream");
    let mut config = stream.cached_info().config.clone();
    config.subjects.extend(["host.vps-a.>".to_owned(), "health.>".to_owned()]);
    js_b.update_stream(config).await.expect("b's root widens b's stream");
    let alert = |host: Option<&str>, container: &str| {
        let data = steward_events::HealthFailed {
            container: container.to_owned(),
            check: "http".into(),
            reason: format!("{container} does not answer"),
            consecutive_failures: 3,
        };
        steward_events::Event::new("steward/test", data).with_host(host.map(str::to_owned))
    };
    let record = |host: &str, container: &str| steward_events::records::WatchRecord {
        container: container.to_owned(),
        image: "registry.test/app:1".into(),
        policy: "notify".into(),
        running_digest: None,
        newest_digest: None,
        newest_tag: None,
        newest_seen_at: None,
        reported_digest: None,
        checked_at: time::OffsetDateTime::now_utc(),
        last_error: None,
        host: Some(host.to_owned()),
    };
    let store = |subject: String, body: Vec<u8>| {
        let js_b = js_b.clone();
        async move {
            js_b.publish(subject, body.into()).await.expect("publish").await.expect("b stores it");
        }
    };
    let forged_a = alert(Some(A), &forged);
    let forged_central = alert(None, &format!("{forged}-central"));
    store("host.vps-a.health.failed".into(), forged_a.encode().expect("encode")).await;
    store("health.failed".into(), forged_central.encode().expect("encode")).await;
    let json = |r: &steward_events::records::WatchRecord| serde_json::to_vec(r).expect("json");
    store(format!("$KV.STEWARD_WATCHER.vps-a.{forged}"), json(&record(A, &forged))).await;
    // A dead letter of b's updater: it stays on b's leaf (the filter is b's subjects).
    let dead = alert(Some(B), &format!("{genuine}-dead"));
    store("dlq.updater-vps-b".into(), dead.encode().expect("encode")).await;
    // b's own, on b's subjects and keys.
    let genuine_b = alert(Some(B), &genuine);
    store("host.vps-b.health.failed".into(), genuine_b.encode().expect("encode")).await;
    store(format!("$KV.STEWARD_WATCHER.vps-b.{genuine}"), json(&record(B, &genuine))).await;

    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(60));
    assert!(mails.iter().any(|m| m.text.contains(&genuine)), "b's alert not mailed\n{}", logs());
    // The notifier handles in stream order: the forgeries came before b's alert. A moment
    // for a late mail, then every mail is judged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for mail in mails_to(&testbed_maildir(), &to) {
        assert!(!mail.text.contains(&forged), "a forgery was mailed: {}\n{}", mail.text, logs());
    }
    let cli = open(&net, None, Service::Cli.name()).await;
    let run = |args: &[&str]| {
        let out = steward_with(&cli, &env(&table, HUB_DOMAIN, Service::Cli.name()), args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The hub's copy of b's bucket may lag b's leaf by a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = run(&["status"]);
        if status.contains(&genuine) || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.contains(&genuine), "b's record not in `steward status`: {status}");
    assert!(!status.contains(&forged), "a forged record in `steward status`: {status}");
    // Dead letters of a host's agents are read on its leaf (its setup user), not at the hub.
    let dead_at_hub = run(&["events", "replay", "--subject", "dlq.>", "--json"]);
    assert!(!dead_at_hub.contains(&dead.id.to_string()), "b's dead letter at the hub");
    let setup_b = open(&net, Some(B), steward_bus::SETUP_USER).await;
    let out = steward_with(
        &setup_b,
        &env(&table, B, steward_bus::SETUP_USER),
        &["events", "replay", "--subject", "dlq.>", "--json"],
    );
    let on_b = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "on b: {}", String::from_utf8_lossy(&out.stderr));
    assert!(on_b.contains(&dead.id.to_string()), "b's dead letter not read on b: {on_b}");
    let replay = run(&["events", "replay", "--json"]);
    assert!(replay.contains(&genuine_b.id.to_string()), "b's alert not replayed: {replay}");
    for id in [forged_a.id, forged_central.id] {
        assert!(!replay.contains(&id.to_string()), "a forgery replayed: {replay}");
    }
    assert!(
        logs().contains("refused a message whose origin is not the host it names"),
        "the notifier did not say it refused anything\n{}",
        logs()
    );
    // ... and counts them: the forged alert about a, the one on the central subject, and b's
    // dead letter (which only an unfiltered source brings to the hub).
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .expect("the notifier's /metrics")
        .text()
        .await
        .expect("body");
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("steward_leaf_origin_refused_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(refused, Some(3), "{metrics}");
}

/// Host a's uplink cut while its update waits for approval: `steward approve` at the centre
/// cannot reach a's leaf and says so (exit non-zero, naming the host): never an approval the
/// centre reports as given that the host never gets. The host's updater goes on (nothing applied, nothing
/// failed); once the link is back, the same command approves, and the update is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_while_the_hosts_link_is_cut_is_refused_and_applies_once_it_is_back() {
    let (net, table) = set_up().await;
    let scope = unique_name("scope-leaf-cut");
    let app = app(&scope, "manual", &[]);
    let procs = agents_of_a(&net, &table, &scope, &[("STEWARD_HEALTH_GRACE", "2s".into())]).await;
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");
    let cli =
        |args: &[&str]| steward_with(&hub, &env(&table, HUB_DOMAIN, Service::Cli.name()), args);

    push_app("v2", &app.image);
    let out = cli(&["check"]);
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    wait_event(&hub, "update.pending", Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let id = loop {
        let listed = String::from_utf8_lossy(&cli(&["updates"]).stdout).into_owned();
        if let Some(row) = listed.lines().find(|l| l.contains(&app.name)) {
            break row.split_whitespace().next().expect("an id").to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "not listed: {listed}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    net.leaf(A).link.cut();
    let cut = std::time::Instant::now();
    let refused = cli(&["approve", &id]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    eprintln!("MEASURED approve with the link cut: {:?}: {said}", cut.elapsed());
    assert!(!refused.status.success(), "approved with the link cut: {said}");
    assert!(!said.contains("approved update"), "{said}");
    assert!(said.contains("host vps-a did not confirm the decision"), "{said}");
    // Nothing happens on the host meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        steward_testkit::http_get(app.port).is_some_and(|b| b.contains("app v1")),
        "{}",
        logs()
    );

    net.leaf(A).link.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(&["approve", &id]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no approval after the link came back: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            logs()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let events = wait_event(&hub, "update.succeeded", Duration::from_secs(60)).await;
    let of = |t: &str| events.iter().filter(|e| e.event_type() == t).count();
    // An approval retried while the link came back can be stored twice (its first
    // acknowledgement lost); the updater acts on one.
    assert!(of("update.approved") >= 1, "{}", logs());
    for step in ["update.pending", "update.started", "update.succeeded"] {
        assert_eq!(of(step), 1, "{step} at the hub {} times\n{}", of(step), logs());
    }
    assert_eq!(of("update.failed"), 0, "{}", logs());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !steward_testkit::http_get(app.port).is_some_and(|b| b.contains("app v2")) {
        assert!(std::time::Instant::now() < deadline, "v2 is not served\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Host a's uplink cut while its automatic update is being applied (the updater held after
/// its pull, so the swap, the health gate and the outcome all happen during the cut): the
/// update ends on a's leaf, which never needs the hub; the centre has nothing of its end
/// until the link is back, then the whole flow once, in a's order, and the centre's
/// notifier mails its outcome once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_applied_while_the_hosts_link_is_cut_ends_there_and_reaches_the_centre_once() {
    update_across(Outage::LinkCut).await;
}

/// The same with host a's own leaf SIGKILLed twice while the update is applied, during the
/// held step and again during the swap and the health gate (the updater's server gone: its
/// record and its events cannot be written), restarted each time: the update ends once, v2
/// serving, and the centre has it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_applied_while_the_hosts_leaf_is_down_ends_once_it_is_back() {
    update_across(Outage::LeafKilled).await;
}

/// The same with the centre a three-node R3 hub: the node leading the hub's stream is
/// SIGKILLed while a's update is held at a step and restarted once another node leads, then
/// that leader too (the update goes on on a's leaf meanwhile, and may end during the second
/// election: it needs no hub). The hub's copy of a's flow is whole and once, in a's order, and
/// the centre's notifier (its consumer on the hub, in three copies) mails the outcome once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_applied_while_the_hubs_leaders_are_killed_reaches_the_centre_once() {
    update_across(Outage::HubLeadersKilled).await;
}

async fn update_across(outage: Outage) {
    use steward_system_tests::mail::{mails_to, testbed_maildir, unique_address, wait_mails};
    let nodes = if let Outage::HubLeadersKilled = outage { 3 } else { 1 };
    let (mut net, table) = set_up_hub_of(nodes).await;
    let scope = unique_name("scope-leaf-cut-apply");
    let app = app(&scope, "automatic", &[]);
    let held = [
        ("STEWARD_HEALTH_GRACE", "2s".to_owned()),
        ("STEWARD_FAILPOINTS", "pulled=sleep:5000".to_owned()),
    ];
    let mut procs = agents_of_a(&net, &table, &scope, &held).await;
    let to = unique_address("leaf-cut-apply");
    procs.push(notifier_at_hub(&net, &table, &to, &[]).await);
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    let leaf_a = open(&net, Some(A), steward_bus::SETUP_USER).await;
    let leaf_a = Bus::connect(leaf_a.config().clone(), "steward-test").await.expect("a's stream");
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");

    push_app("v2", &app.image);
    let out = steward_with(&hub, &env(&table, HUB_DOMAIN, Service::Cli.name()), &["check"]);
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    wait_event(&hub, "update.started", Duration::from_secs(60)).await;
    wait_logged(&procs, "updater", "failpoint: pulled: sleeping").await;
    let cut = std::time::Instant::now();
    match outage {
        Outage::LinkCut => net.leaf(A).link.cut(),
        Outage::LeafKilled => {
            // Twice: during the held step (5 s), then during the swap and the gate (2 s).
            for down in [4, 4] {
                leaf_mut(&mut net, A).server.kill();
                tokio::time::sleep(Duration::from_secs(down)).await;
                leaf_mut(&mut net, A).server.start_again();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        Outage::HubLeadersKilled => kill_hub_leaders(&mut net).await,
        Outage::HubKilled => unreachable!("the hub's kill is leaf_flow's first kill test"),
    }
    let on_leaf = wait_event(&leaf_a, "update.succeeded", Duration::from_secs(60)).await;
    eprintln!("MEASURED {outage:?}: the update ended on the host {:?} after it", cut.elapsed());
    assert!(
        on_leaf.iter().all(|e| e.event_type() != "update.failed"),
        "the update failed during {outage:?}\n{}",
        logs()
    );
    assert!(steward_testkit::http_get(app.port).is_some_and(|b| b.contains("app v2")));
    if let Outage::LinkCut = outage {
        // The swap happened during the cut: the app serves v2 while the centre still has only
        // the flow's start.
        let at_hub = steward_testkit::stored_events(&hub).await;
        assert!(
            at_hub.iter().all(|e| e.event_type() != "update.succeeded"),
            "the centre had the outcome across a cut link"
        );
        net.leaf(A).link.restore();
    }
    let restored = std::time::Instant::now();
    let events = wait_event(&hub, "update.succeeded", Duration::from_secs(60)).await;
    eprintln!("MEASURED {outage:?}: the flow at the hub {:?} after its end", restored.elapsed());
    let of = |t: &str| events.iter().filter(|e| e.event_type() == t).count();
    for step in ["image.updated", "update.started", "update.succeeded"] {
        assert_eq!(of(step), 1, "{step} at the hub {} times\n{}", of(step), logs());
    }
    assert_eq!(of("update.failed"), 0, "{}", logs());
    let at_hub: Vec<_> =
        events.iter().filter(|e| e.host.as_deref() == Some(A)).map(|e| e.id).collect();
    let on_leaf: Vec<_> = on_leaf.iter().map(|e| e.id).collect();
    assert_eq!(at_hub, on_leaf, "the hub's copy of a's events, in a's order");

    let headline = format!("{} updated automatically", app.name);
    let deadline = Duration::from_secs(60);
    let mails = wait_mails(&testbed_maildir(), &to, 1, deadline);
    assert!(mails.iter().any(|m| m.text.contains(&headline)), "{:?}\n{}", mails, logs());
    // A moment for a second mail of the same outcome, then they are counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let outcomes = mails_to(&testbed_maildir(), &to)
        .into_iter()
        .filter(|m| m.text.contains(&headline))
        .count();
    assert_eq!(outcomes, 1, "the outcome mailed {outcomes} times\n{}", logs());
    for server in net.servers() {
        steward_system_tests::assert_nothing_refused(server, &procs);
    }
}

/// What goes away while a host's update or backup runs.
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// The host's uplink is cut.
    LinkCut,
    /// The hub is SIGKILLed (its clients, the waiting command among them, lose their server).
    HubKilled,
    /// The leader of a three-node hub's stream is SIGKILLed, then the next one.
    HubLeadersKilled,
    /// The host's own leaf is SIGKILLed: the backup service loses its server mid-backup and
    /// has to deliver its outcome when the leaf is back.
    LeafKilled,
}

/// `steward backup now` at the centre for host a, whose uplink is cut while the backup runs
/// (the backup service held before its manifest): the backup ends on a's leaf, into a's
/// bucket; the command, waiting at the centre all along, reports it once the link is back;
/// the centre has each of its steps once, and lists the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_while_the_hosts_link_is_cut_ends_there_and_the_centres_command_reports_it() {
    backup_across(Outage::LinkCut).await;
}

/// The same with the hub SIGKILLed during the backup and restarted after it ended on the
/// host: the command at the centre rides out its server's restart and reports the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_while_the_hub_is_down_ends_on_the_host_and_the_centres_command_reports_it() {
    backup_across(Outage::HubKilled).await;
}

/// The same with host a's own leaf SIGKILLed during the backup and restarted after the backup
/// would have ended: the outcome is not lost with the server it could not reach; it is
/// stored once, and the command at the centre reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_whose_own_leaf_is_killed_reports_once_it_is_back() {
    backup_across(Outage::LeafKilled).await;
}

fn leaf_mut<'a>(net: &'a mut NatsLeaves, host: &str) -> &'a mut steward_testkit::leaf::Leaf {
    net.leaves.iter_mut().find(|l| l.host == host).expect("the host's leaf")
}

/// Waits until the process named `name` among `procs` has logged `text` (a failpoint's hold,
/// so that an outage falls inside it).
async fn wait_logged(procs: &[(String, Proc)], name: &str, text: &str) {
    let (_, p) = procs.iter().find(|(n, _)| n.starts_with(name)).expect("the process");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !p.logs().contains(text) {
        assert!(std::time::Instant::now() < deadline, "{name} never logged {text:?}\n{}", p.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The same with the centre a three-node R3 hub whose stream's leader is SIGKILLed while the
/// backup is held at a step, restarted once another node leads, then that leader too: the
/// command at the centre, waiting through both elections, reports the backup; the hub has
/// each step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_while_the_hubs_leaders_are_killed_is_reported_at_the_centre_once() {
    backup_across(Outage::HubLeadersKilled).await;
}

async fn backup_across(outage: Outage) {
    use steward_system_tests::TestBucket;
    let nodes = if let Outage::HubLeadersKilled = outage { 3 } else { 1 };
    let (mut net, table) = set_up_hub_of(nodes).await;
    let scope = unique_name("scope-leaf-cut-backup");
    let bucket = TestBucket::new("leaf-cut").await;
    let _data = steward_system_tests::apps::backed_up_app(&scope);
    let user = Service::Backup.identity(Some(A));
    let leaf = open(&net, Some(A), &user).await;
    let mut extra = env(&table, A, &user);
    extra.extend(bucket.env());
    extra.extend([
        ("STEWARD_HOST", A.to_owned()),
        ("STEWARD_SCOPE", scope.clone()),
        ("STEWARD_FAILPOINTS", "backup:manifest:before=sleep:6000".to_owned()),
    ]);
    let procs = [(user, Proc::service(Service::Backup.binary(), &leaf, &extra))];
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    let leaf_a = open(&net, Some(A), steward_bus::SETUP_USER).await;
    let leaf_a = Bus::connect(leaf_a.config().clone(), "steward-test").await.expect("a's stream");
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");

    let mut cli_env = env(&table, HUB_DOMAIN, Service::Cli.name());
    cli_env.push(("STEWARD_HOST", A.to_owned()));
    let asked = {
        let (hub, cli_env) = (hub.clone(), cli_env.clone());
        tokio::task::spawn_blocking(move || {
            steward_with(&hub, &cli_env, &["backup", "now", "--wait", "150s"])
        })
    };
    wait_event(&hub, "backup.started", Duration::from_secs(60)).await;
    // Inside the hold, after the backup's own reads of the leaf (its export of the stream).
    wait_logged(&procs, "backup", "failpoint: backup:manifest:before: sleeping").await;
    match outage {
        Outage::LinkCut => net.leaf(A).link.cut(),
        Outage::HubKilled => net.hub.kill(),
        Outage::LeafKilled => leaf_mut(&mut net, A).server.kill(),
        Outage::HubLeadersKilled => kill_hub_leaders(&mut net).await,
    }
    let cut = std::time::Instant::now();
    if let Outage::LeafKilled = outage {
        // Past the held step (6 s): the backup's end meets no server.
        tokio::time::sleep(Duration::from_secs(10)).await;
        leaf_mut(&mut net, A).server.start_again();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let on_leaf = loop {
        let events = steward_testkit::stored_events(&leaf_a).await;
        let failed = events.iter().find(|e| e.event_type() == "backup.failed");
        assert!(failed.is_none(), "{failed:?}\n{}", logs());
        if events.iter().any(|e| e.event_type() == "backup.done") {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "no backup.done\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("MEASURED {outage:?}: the backup ended on the host {:?} after it", cut.elapsed());
    let done = on_leaf
        .iter()
        .find_map(|e| match &e.data {
            EventData::BackupDone(d) => Some(d.backup_id.clone()),
            _ => None,
        })
        .expect("backup.done");
    // (A killed leaf, or a hub's killed leaders, are back by now: the outcome may have
    // reached the command already.)
    if !matches!(outage, Outage::LeafKilled | Outage::HubLeadersKilled) {
        assert!(!asked.is_finished(), "the command ended during {outage:?}\n{}", logs());
    }

    match outage {
        Outage::LinkCut => net.leaf(A).link.restore(),
        Outage::HubKilled => net.hub.start_again(),
        Outage::LeafKilled | Outage::HubLeadersKilled => {}
    }
    let restored = std::time::Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), asked)
        .await
        .expect("the command waits no longer than its own bound")
        .expect("the command's thread");
    eprintln!("MEASURED {outage:?}: the command's answer {:?} after the end", restored.elapsed());
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "backup now: {stdout}{stderr}\n{}", logs());
    assert!(stdout.contains(&done) || stderr.contains(&done), "{stdout}{stderr}");

    let events = wait_event(&hub, "backup.done", Duration::from_secs(10)).await;
    let of = |t: &str| events.iter().filter(|e| e.event_type() == t).count();
    for step in ["backup.requested", "backup.started", "backup.done"] {
        assert_eq!(of(step), 1, "{step} at the hub {} times\n{}", of(step), logs());
    }
    assert_eq!(of("backup.failed"), 0, "{}", logs());
    let mut ids: Vec<_> = events.iter().map(|e| e.id).collect();
    ids.sort();
    let stored = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), stored, "an event stored twice at the hub");

    let mut list_env = env(&table, HUB_DOMAIN, Service::Cli.name());
    list_env.extend(bucket.env());
    let out = steward_with(&hub, &list_env, &["backup", "list", "--host", A]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "list: {}", String::from_utf8_lossy(&out.stderr));
    assert!(listed.lines().any(|l| l.starts_with(&done) && l.contains(A)), "{listed}");
    for server in net.servers() {
        steward_system_tests::assert_nothing_refused(server, &procs);
    }
}

/// Host a's agents SIGKILLed and kept away while both hosts have an update: host b's update
/// is checked and applied as if nothing had happened, nothing of a's moves; when a's agents
/// start again, the check that waited for them in a's stream is taken up and a's update is
/// applied, once. (Before `Inbox::open` pulled one message at a time, a's leaf spent every
/// delivery of that check on the killed watcher's last pull request: a's update never came.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_agents_away_leave_the_other_host_alone_and_its_update_resumes_on_their_return() {
    let (net, table) = set_up().await;
    let (scope_a, scope_b) = (unique_name("scope-away-a"), unique_name("scope-away-b"));
    let (app_a, app_b) = (app(&scope_a, "automatic", &[]), app(&scope_b, "automatic", &[]));
    let gate = [("STEWARD_HEALTH_GRACE", "2s".to_owned())];
    push_app("v2", &app_a.image);
    push_app("v2", &app_b.image);
    let procs = agents_of(&net, B, &table, &scope_b, &gate).await;
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");
    // The update events about one app (its container name), as the centre has them.
    let about = |events: &[steward_events::Event], name: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.event_type().starts_with("update.") || e.event_type() == "image.updated")
            .filter(|e| e.container() == Some(name))
            .map(|e| e.event_type().to_owned())
            .collect()
    };

    // a's agents come up and are SIGKILLed at once; the check follows within a second or
    // two: the watcher's last pull request is then still new to its leaf (what lost the
    // request before: `Inbox::open`).
    let agents_a = agents_of(&net, A, &table, &scope_a, &gate).await;
    // The watcher's first pull goes out on its first poll after it says it is consuming.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(agents_a);
    let killed = std::time::Instant::now();
    let out = steward_with(&hub, &env(&table, HUB_DOMAIN, Service::Cli.name()), &["check"]);
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("MEASURED the check {:?} after a's agents were killed", killed.elapsed());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let events = steward_testkit::stored_events(&hub).await;
        if about(&events, &app_b.name).iter().any(|t| t == "update.succeeded") {
            assert_eq!(about(&events, &app_a.name), Vec::<String>::new(), "a moved while away");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b's update did not end\n{}", logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(steward_testkit::http_get(app_b.port).is_some_and(|b| b.contains("app v2")));
    assert!(steward_testkit::http_get(app_a.port).is_some_and(|b| b.contains("app v1")));
    // A while longer away: still nothing of a's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = steward_testkit::stored_events(&hub).await;
    assert_eq!(about(&events, &app_a.name), Vec::<String>::new(), "a moved while away");

    let back = agents_of(&net, A, &table, &scope_a, &gate).await;
    let logs = || {
        procs.iter().chain(&back).map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = steward_testkit::stored_events(&hub).await;
        if about(&events, &app_a.name).iter().any(|t| t == "update.succeeded") {
            break events;
        }
        assert!(std::time::Instant::now() < deadline, "a's update did not resume\n{}", logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for app in [&app_a, &app_b] {
        let steps = about(&events, &app.name);
        for step in ["image.updated", "update.started", "update.succeeded"] {
            let n = steps.iter().filter(|t| *t == step).count();
            assert_eq!(n, 1, "{step} of {} {n} times: {steps:?}\n{}", app.name, logs());
        }
        assert!(!steps.iter().any(|t| t == "update.failed"), "{steps:?}\n{}", logs());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !steward_testkit::http_get(app_a.port).is_some_and(|b| b.contains("app v2")) {
        assert!(std::time::Instant::now() < deadline, "a's v2 is not served\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all: Vec<_> = procs.into_iter().chain(back).collect();
    for server in net.servers() {
        steward_system_tests::assert_nothing_refused(server, &all);
    }
}

/// Two engines as two hosts: a's agents on the test bed's dockerd, b's on Podman's service
/// (`DOCKER_HOST`), each on its own leaf; an update on each, both announced by the centre's
/// notifier in mails naming their host, each approved through its mail's link (served by that
/// host's updater across its link) and applied on its own engine only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_as_two_hosts_each_update_approved_through_the_mail() {
    use steward_system_tests::apps::podman_app;
    use steward_system_tests::mail::{
        approval_link, approve_by_link, testbed_maildir, unique_address, wait_mails,
    };
    let Some(socket) = steward_testkit::podman::socket() else { return };
    let (net, table) = set_up().await;
    let (scope_a, scope_b) = (unique_name("scope-docker-a"), unique_name("scope-podman-b"));
    let app_a = app(&scope_a, "manual", &[]);
    let mut app_b = podman_app(&scope_b, "manual");
    let mut procs = vec![];
    let mut links = vec![];
    for (host, scope, engine) in
        [(A, &scope_a, vec![]), (B, &scope_b, vec![("DOCKER_HOST", format!("unix://{socket}"))])]
    {
        let port = steward_testkit::free_port();
        let public = format!("http://127.0.0.1:{port}");
        let updater_extra = [
            ("STEWARD_HEALTH_GRACE", "2s".to_owned()),
            ("STEWARD_HEALTH_TIMEOUT", "40s".to_owned()),
            ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("STEWARD_PUBLIC_URL", public.clone()),
            // A secret of each host's own (64 hex digits).
            ("STEWARD_APPROVAL_SECRET", format!("{:0>64}", format!("5eed{port:x}"))),
        ];
        procs.extend(agents_on(&net, host, &table, scope, &engine, &updater_extra).await);
        links.push((host, public));
    }
    let to = unique_address("two-engines");
    procs.push(notifier_at_hub(&net, &table, &to, &[]).await);
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    let hub = open(&net, None, Service::Cli.name()).await;
    let hub = Bus::connect(hub.config().clone(), "steward-test").await.expect("the hub's stream");

    push_app("v2", &app_a.image);
    let v2_b = app_b.push("v2");
    let out = steward_with(&hub, &env(&table, HUB_DOMAIN, Service::Cli.name()), &["check"]);
    assert!(out.status.success(), "check: {}", String::from_utf8_lossy(&out.stderr));
    let mails = wait_mails(&testbed_maildir(), &to, 2, Duration::from_secs(90));
    for ((host, public), container) in links.iter().zip([&app_a.name, &app_b.name]) {
        let mail = mails
            .iter()
            .find(|m| m.text.contains(container.as_str()))
            .unwrap_or_else(|| panic!("no mail about {container}: {mails:?}\n{}", logs()));
        assert!(mail.text.contains(host), "the mail does not name {host}: {}", mail.text);
        approve_by_link(&approval_link(mail, public, &logs())).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events = steward_testkit::stored_events(&hub).await;
        let done = |name: &str| {
            events
                .iter()
                .any(|e| e.event_type() == "update.succeeded" && e.container() == Some(name))
        };
        if done(&app_a.name) && done(&app_b.name) {
            break events;
        }
        let failed = events
            .iter()
            .find(|e| ["update.failed", "update.rolled_back"].contains(&e.event_type()));
        assert!(failed.is_none(), "{failed:?}\n{}", logs());
        assert!(std::time::Instant::now() < deadline, "not both updated\n{}", logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (host, name) in [(A, &app_a.name), (B, &app_b.name)] {
        let steps: Vec<_> =
            events.iter().filter(|e| e.container() == Some(name.as_str())).collect();
        for e in &steps {
            assert_eq!(e.host.as_deref(), Some(host), "{} of {name} about {host}", e.event_type());
        }
        for step in ["update.pending", "update.started", "update.succeeded"] {
            let n = steps.iter().filter(|e| e.event_type() == step).count();
            assert_eq!(n, 1, "{step} of {name} {n} times\n{}", logs());
        }
        // An approval names its update, not the container: one per host.
        let approvals = events
            .iter()
            .filter(|e| e.event_type() == "update.approved" && e.host.as_deref() == Some(host))
            .count();
        assert_eq!(approvals, 1, "{host}'s approvals\n{}", logs());
    }
    for port in [app_a.port, app_b.port] {
        assert!(steward_testkit::http_get(port).is_some_and(|b| b.contains("app v2")));
    }
    // b's update ran on Podman: the container there that holds the name runs v2's image.
    let podman = |args: &[&str]| {
        String::from_utf8_lossy(&steward_testkit::podman::cli(args).stdout).trim().to_owned()
    };
    let repository = app_b.image.trim_end_matches(":1.0");
    let v2 = podman(&["image", "inspect", "-f", "{{.Id}}", &format!("{repository}@{v2_b}")]);
    assert_eq!(podman(&["inspect", "-f", "{{.Image}}", &app_b.name]), v2, "b's container");
    for server in net.servers() {
        steward_system_tests::assert_nothing_refused(server, &procs);
    }
}
