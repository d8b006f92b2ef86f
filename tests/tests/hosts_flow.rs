//! Two hosts on one NATS under host routing (`STEWARD_HOSTS`): each host's watcher and updater
//! log in as their per-host users (two `STEWARD_HOST`s against the test bed's one engine, each
//! with a scope of its own). `steward setup` provisions both hosts' consumers, `steward check`
//! reaches both watchers, a pending update on host A is approved with the CLI and applied by
//! A's updater; B's updater, running all along, is never handed it, and nothing any of them
//! needs is refused by the server.

use std::time::Duration;

use steward_events::{EventData, Service};
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::{steward_with, Proc};
use steward_testkit::docker::push_app;
use steward_testkit::{unique_name, NatsServer};

const A: &str = "vps-a";
const B: &str = "vps-b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_on_one_host_is_approved_and_applied_on_that_host_only() {
    let hosts = vec![A.to_owned(), B.to_owned()];
    let table = hosts.join(",");
    let (server, setup, bus) = steward_system_tests::routed_bus(&hosts, &[]).await;

    let (scope_a, scope_b) = (unique_name("scope-a"), unique_name("scope-b"));
    let app = app(&scope_a, "manual", &[]);
    let mut procs = vec![];
    for (host, scope) in [(A, &scope_a), (B, &scope_b)] {
        for service in [Service::Watcher, Service::Updater] {
            let user = service.identity(Some(host));
            let mut env = vec![
                ("STEWARD_NATS_USER", user.clone()),
                ("STEWARD_NATS_PASSWORD", NatsServer::user_password(&user)),
                ("STEWARD_HOSTS", table.clone()),
                ("STEWARD_HOST", host.to_owned()),
                ("STEWARD_SCOPE", scope.clone()),
            ];
            if service == Service::Updater {
                env.push(("STEWARD_HEALTH_GRACE", "2s".into()));
            }
            procs.push((user, Proc::service(service.binary(), &bus, &env)));
        }
    }
    let cli = |args: &[&str]| {
        let env = vec![
            ("STEWARD_NATS_USER", Service::Cli.name().to_owned()),
            ("STEWARD_NATS_PASSWORD", NatsServer::password(Service::Cli)),
            ("STEWARD_HOSTS", table.clone()),
        ];
        let out = steward_with(&bus, &env, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "steward {args:?} failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    push_app("v2", &app.image);
    let checked = cli(&["check"]);
    assert!(checked.contains("on vps-a") && checked.contains("on vps-b"), "{checked}");
    wait_event(&bus, "update.pending", Duration::from_secs(60)).await;
    let pending = cli(&["updates"]);
    let row =
        pending.lines().find(|l| l.contains(&app.name)).unwrap_or_else(|| panic!("{pending}"));
    assert!(row.contains(A), "the update is host a's: {row}");
    let id = row.split_whitespace().next().expect("an id");
    cli(&["approve", id]);
    let events = wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    let approved = events
        .iter()
        .find(|e| matches!(&e.data, EventData::UpdateApproved(_)))
        .expect("the approval is stored");
    assert_eq!(approved.host.as_deref(), Some(A), "addressed to the update's host");
    for e in events.iter().filter(|e| e.event_type().starts_with("update.")) {
        assert_eq!(e.host.as_deref(), Some(A), "{} about host a", e.event_type());
    }

    // B's updater consumer was handed only B's events: the last it delivered is before the
    // approval in the stream (its watch request), and it has nothing pending.
    let js = async_nats::jetstream::new(setup.raw_client().clone());
    let stream = js.get_stream("STEWARD").await.expect("stream");
    let info = stream.consumer_info("updater-vps-b").await.expect("b's consumer");
    let a_info = stream.consumer_info("updater-vps-a").await.expect("a's consumer");
    assert!(a_info.delivered.stream_sequence > info.delivered.stream_sequence, "{info:?}");
    assert!(info.delivered.consumer_sequence <= 1, "b got more than its watch request: {info:?}");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));

    steward_system_tests::assert_nothing_refused(&server, &procs);
}
