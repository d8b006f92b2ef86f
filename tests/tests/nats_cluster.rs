//! The centre made highly available: three nats-servers clustered on loopback ports, the
//! stream and the KV buckets kept in three copies (`STEWARD_NATS_REPLICAS=3`, provisioned by
//! the real `steward setup`), every participant given every node's URL. An automatic update
//! runs through the real watcher and updater while the stream's leader node is SIGKILLed,
//! restarted, and the next leader killed too: the flow ends once, with one event of each
//! step, none stored twice and no dead letter, the container serves the new version, and
//! what the failover left unacknowledged is delivered again and skipped, not handled twice.

use std::time::{Duration, Instant};

use steward_bus::{Bus, ReplayQuery};
use steward_events::{Event, Service};
use steward_system_tests::apps::app;
use steward_system_tests::{steward_with, Proc};
use steward_testkit::docker::push_app;
use steward_testkit::{http_get, unique_name, NatsCluster, NatsServer};

/// Every event stored, or `None` while the cluster cannot answer (a leader is being elected).
async fn events(bus: &Bus) -> Option<Vec<Event>> {
    let read = async {
        let mut replay = bus.replay(ReplayQuery::default()).await.ok()?;
        let mut out = vec![];
        while let Some(item) = replay.next().await {
            if let Ok(e) = item.ok()?.event {
                out.push(e);
            }
        }
        Some(out)
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.ok().flatten()
}

/// Waits (bounded) until an event of type `what` is stored; every event then.
async fn wait_for_event(
    bus: &Bus,
    what: &str,
    bound: Duration,
    context: &dyn Fn() -> String,
) -> Vec<Event> {
    let deadline = Instant::now() + bound;
    let mut seen = None;
    loop {
        if let Some(all) = events(bus).await {
            if all.iter().any(|e| e.event_type() == what) {
                return all;
            }
            seen = Some(all.iter().map(|e| e.event_type().to_owned()).collect::<Vec<_>>());
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {bound:?}; saw {seen:?}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node leading the stream (`n0`, ...), waited for (bounded) while one is elected.
async fn stream_leader(setup: &Bus) -> String {
    let js = async_nats::jetstream::new(setup.raw_client().clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = async {
            let mut stream = js.get_stream("STEWARD").await.ok()?;
            let info = stream.info().await.ok()?;
            info.cluster.as_ref()?.leader.clone().filter(|l| !l.is_empty())
        };
        if let Ok(Some(leader)) = tokio::time::timeout(Duration::from_secs(3), leader).await {
            return leader;
        }
        assert!(Instant::now() < deadline, "the stream has no leader after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_survives_its_stream_leader_killed_twice() {
    let mut cluster = NatsCluster::start_with_steward_users(3);
    let setup = Bus::open(cluster.bus_config_as_setup(3), "steward-setup")
        .await
        .expect("the setup user connects");
    // The real `steward setup`, given every node and three copies.
    let setup_env = vec![
        ("STEWARD_NATS_USER", steward_bus::SETUP_USER.to_owned()),
        ("STEWARD_NATS_PASSWORD", NatsServer::setup_password()),
        ("STEWARD_NATS_REPLICAS", "3".to_owned()),
    ];
    let out = steward_with(&setup, &setup_env, &["setup"]);
    assert!(out.status.success(), "steward setup: {}", String::from_utf8_lossy(&out.stderr));
    let js = async_nats::jetstream::new(setup.raw_client().clone());
    let mut stream = js.get_stream("STEWARD").await.expect("the stream");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.config.num_replicas, 3, "the stream is not replicated");
    let mut markers = js.get_stream("KV_STEWARD_HANDLED").await.expect("the markers bucket");
    assert_eq!(markers.info().await.expect("info").config.num_replicas, 3);

    let bus = Bus::connect(cluster.bus_config_as(Service::Cli, 3), Service::Cli.binary())
        .await
        .expect("the CLI's user connects");
    let scope = unique_name("scope-cluster");
    let app = app(&scope, "automatic", &[]);
    let mut procs = vec![];
    for service in [Service::Watcher, Service::Updater] {
        let mut env = vec![
            ("STEWARD_NATS_USER", service.name().to_owned()),
            ("STEWARD_NATS_PASSWORD", NatsServer::password(service)),
            ("STEWARD_SCOPE", scope.clone()),
        ];
        if service == Service::Updater {
            // A health gate long enough for two leader elections to happen inside the flow.
            env.push(("STEWARD_HEALTH_GRACE", "8s".into()));
        }
        procs.push((service.name(), Proc::service(service.binary(), &bus, &env)));
    }

    push_app("v2", &app.image);
    let cli_env = vec![
        ("STEWARD_NATS_USER", Service::Cli.name().to_owned()),
        ("STEWARD_NATS_PASSWORD", NatsServer::password(Service::Cli)),
    ];
    let out = steward_with(&bus, &cli_env, &["check"]);
    assert!(out.status.success(), "steward check: {}", String::from_utf8_lossy(&out.stderr));
    let logs = || procs.iter().map(|(n, p)| format!("{n}: {}\n", p.logs())).collect::<String>();
    wait_for_event(&bus, "update.started", Duration::from_secs(60), &logs).await;
    let mut killed = vec![];
    for _ in 0..2 {
        let leader = stream_leader(&setup).await;
        cluster.node(&leader).kill();
        killed.push(leader.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.node(&leader).start_again();
    }

    wait_for_event(&bus, "update.succeeded", Duration::from_secs(120), &logs).await;
    // Acks sent while a leader was being elected may be lost: those deliveries come again
    // after the ack wait (30 s) and must be skipped, not handled again. Wait (bounded) until
    // the updater's consumer has nothing pending or unacknowledged, then count.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stream = js.get_stream("STEWARD").await.expect("the stream");
        let c = stream.consumer_info("updater").await.expect("the updater's consumer");
        if (c.num_pending, c.num_ack_pending) == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "still pending or unacknowledged: {c:?}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all = events(&bus).await.expect("the stream answers");
    let of = |t: &str| all.iter().filter(|e| e.event_type() == t).count();
    for step in ["update.started", "update.succeeded"] {
        assert_eq!(of(step), 1, "{step} stored {} times (killed {killed:?})\n{}", of(step), logs());
    }
    for step in ["update.failed", "update.rolled_back"] {
        assert_eq!(of(step), 0, "{step} after killing {killed:?}\n{}", logs());
    }
    let mut ids: Vec<_> = all.iter().map(|e| e.id).collect();
    ids.sort();
    let stored = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), stored, "an event stored twice");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !http_get(app.port).is_some_and(|b| b.contains("app v2")) {
        assert!(Instant::now() < deadline, "v2 is not served\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stream = js.get_stream("STEWARD").await.expect("the stream");
    let dead = stream.info_with_subjects("dlq.>").await.expect("dead letters");
    let dead: Vec<_> = futures::TryStreamExt::try_collect(dead).await.expect("dead letters");
    assert!(dead.is_empty(), "dead letters: {dead:?}");
}
