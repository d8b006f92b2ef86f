//! Two hosts on one NATS under host routing (`STEWARD_HOSTS`): each host's watcher and updater
//! log in as their per-host users (two `STEWARD_HOST`s against the test bed's one engine, each
//! with a scope of its own). `steward setup` provisions both hosts' consumers, `steward check`
//! reaches both watchers, a pending update on host A is approved with the CLI and applied by
//! A's updater; B's updater, running all along, is never handed it, and nothing any of them
//! needs is refused by the server.

use std::time::Duration;

use steward_bus::{Bus, BusConfig};
use steward_events::records::{UpdateRecord, UPDATE_BUCKET};
use steward_events::{BackupReason, BackupRequested, Event, EventData, Service};
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::{steward_with, wait_outcome, Proc, TestBucket};
use steward_testkit::docker::push_app;
use steward_testkit::{unique_name, NatsServer};

const A: &str = "vps-a";
const B: &str = "vps-b";

/// A NATS server with both hosts' users, provisioned by `steward setup` under the routing
/// table; the setup user's and the CLI's connections.
async fn routed() -> (NatsServer, Bus, Bus, String) {
    let hosts = vec![A.to_owned(), B.to_owned()];
    let table = hosts.join(",");
    let (server, setup, bus) = steward_system_tests::routed_bus(&hosts, &[]).await;
    (server, setup, bus, table)
}

/// `service`'s agent on `host`, as its per-host user, with `extra` settings.
fn agent(
    bus: &Bus,
    table: &str,
    service: Service,
    host: &str,
    extra: &[(&'static str, String)],
) -> (String, Proc) {
    let user = service.identity(Some(host));
    let mut env = vec![
        ("STEWARD_NATS_USER", user.clone()),
        ("STEWARD_NATS_PASSWORD", NatsServer::user_password(&user)),
        ("STEWARD_HOSTS", table.to_owned()),
        ("STEWARD_HOST", host.to_owned()),
    ];
    env.extend(extra.iter().cloned());
    (user, Proc::service(service.binary(), bus, &env))
}

/// `steward ARGS` as the CLI's user under the routing table, with `extra` settings; stdout.
fn cli(bus: &Bus, table: &str, extra: &[(&'static str, String)], args: &[&str]) -> String {
    let mut env = vec![
        ("STEWARD_NATS_USER", Service::Cli.name().to_owned()),
        ("STEWARD_NATS_PASSWORD", NatsServer::password(Service::Cli)),
        ("STEWARD_HOSTS", table.to_owned()),
    ];
    env.extend(extra.iter().cloned());
    let out = steward_with(bus, &env, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "steward {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_on_one_host_is_approved_and_applied_on_that_host_only() {
    let (server, setup, bus, table) = routed().await;

    let (scope_a, scope_b) = (unique_name("scope-a"), unique_name("scope-b"));
    let app = app(&scope_a, "manual", &[]);
    let mut procs = vec![];
    for (host, scope) in [(A, &scope_a), (B, &scope_b)] {
        for service in [Service::Watcher, Service::Updater] {
            let mut extra = vec![("STEWARD_SCOPE", scope.clone())];
            if service == Service::Updater {
                extra.push(("STEWARD_HEALTH_GRACE", "2s".into()));
            }
            procs.push(agent(&bus, &table, service, host, &extra));
        }
    }
    let cli = |args: &[&str]| cli(&bus, &table, &[], args);

    push_app("v2", &app.image);
    let checked = cli(&["check"]);
    assert!(checked.contains("on vps-a") && checked.contains("on vps-b"), "{checked}");
    wait_event(&bus, "update.pending", Duration::from_secs(60)).await;
    let pending = cli(&["updates"]);
    let row =
        pending.lines().find(|l| l.contains(&app.name)).unwrap_or_else(|| panic!("{pending}"));
    assert!(row.contains(A), "the update is host a's: {row}");
    let id = row.split_whitespace().next().expect("an id");
    // A record under b's keys that claims to be a's is b's: the CLI takes a record's host from
    // its key (the server lets only b's updater write `vps-b.*`), never from what it says.
    let b_updater = Bus::connect(
        BusConfig {
            hosts: vec![A.to_owned(), B.to_owned()],
            host: Some(B.to_owned()),
            ..server.bus_config_as_user(&Service::Updater.identity(Some(B)))
        },
        Service::Updater.binary(),
    )
    .await
    .expect("b's updater user connects");
    let records = steward_bus::StateStore::<UpdateRecord>::open(&b_updater, UPDATE_BUCKET)
        .await
        .expect("b's records");
    let a_key = format!("{A}.{}", app.name);
    let real = steward_bus::StateStore::<UpdateRecord>::open_existing(&bus, UPDATE_BUCKET)
        .await
        .expect("open")
        .expect("the bucket")
        .get(&a_key)
        .await
        .expect("get")
        .expect("a's record of the pending update")
        .value;
    let forged_name = format!("{}-forged", app.name);
    let forged = UpdateRecord {
        update_id: uuid::Uuid::now_v7(),
        container: forged_name.clone(),
        host: Some(A.to_owned()),
        ..real
    };
    records.put(&forged_name, &forged).await.expect("b writes its own key");
    let listed = cli(&["updates"]);
    let forged_row =
        listed.lines().find(|l| l.contains(&forged_name)).unwrap_or_else(|| panic!("{listed}"));
    assert!(
        forged_row.contains(B) && !forged_row.contains(A),
        "the record's claim was believed: {forged_row}"
    );
    records.delete(&forged_name).await.expect("b deletes its record");
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

    // B's updater consumer was handed only B's events: one at most (its watch request), where
    // a's was handed its own and the approval, and it has nothing pending. (Not compared by
    // stream sequence: a filtered consumer's `delivered.stream_sequence` is how far the server
    // scanned for it, past events of other hosts, not the last it handed out.)
    let js = async_nats::jetstream::new(setup.raw_client().clone());
    let stream = js.get_stream("STEWARD").await.expect("stream");
    let info = stream.consumer_info("updater-vps-b").await.expect("b's consumer");
    let a_info = stream.consumer_info("updater-vps-a").await.expect("a's consumer");
    assert!(a_info.delivered.consumer_sequence > 1, "a was not handed its approval: {a_info:?}");
    assert!(info.delivered.consumer_sequence <= 1, "b got more than its watch request: {info:?}");
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));

    steward_system_tests::assert_nothing_refused(&server, &procs);
}

/// Two hosts' backup services share one bucket and prefix (the plain setting for one
/// installation): each keeps its backups under its own prefix, so one host's retention never
/// counts or prunes the other's (before, host a's `daily=1` deleted host b's only backup),
/// and `steward backup list` shows both hosts, or one with `--host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_sharing_a_bucket_keep_their_own_backups() {
    let (server, _setup, bus, table) = routed().await;
    let bucket = TestBucket::new("hosts");
    let bucket = bucket.await;
    let mut procs = vec![];
    let mut apps = vec![];
    for host in [A, B] {
        let scope = unique_name(&format!("bk-{host}"));
        apps.push(steward_system_tests::apps::backed_up_app(&scope));
        let mut extra = bucket.env();
        extra
            .extend([("STEWARD_SCOPE", scope), ("STEWARD_BACKUP_RETENTION", "daily=1".to_owned())]);
        procs.push(agent(&bus, &table, Service::Backup, host, &extra));
    }
    let back_up = |host: &'static str| {
        let bus = bus.clone();
        async move {
            let request = Event::new(
                "steward-cli/test",
                BackupRequested {
                    reason: BackupReason::Manual,
                    containers: vec![],
                    requested_by: None,
                },
            )
            .with_host(Some(host.to_owned()));
            bus.publish(&request).await.expect("publish");
            let outcome = wait_outcome(
                &bus,
                &request,
                &["backup.done", "backup.failed"],
                Duration::from_secs(90),
            )
            .await;
            match outcome.data {
                EventData::BackupDone(d) => (d.backup_id, outcome.host),
                other => panic!("{host}'s backup failed: {other:?}"),
            }
        }
    };
    let (b1, on) = back_up(B).await;
    assert_eq!(on.as_deref(), Some(B));
    // Three on a: retention keeps the newest and the newest verified (each backup is
    // verified after the prune that follows it), so the first is a's to prune.
    let (a1, _) = back_up(A).await;
    let (a2, _) = back_up(A).await;
    let (a3, _) = back_up(A).await;

    let list = |args: &[&str]| cli(&bus, &table, &bucket.env(), args);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = list(&["backup", "list"]);
        if !all.contains(&a1) || std::time::Instant::now() > deadline {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        !all.contains(&a1),
        "host a's retention (daily=1) kept its oldest backup {a1} (newer {a2}, {a3}): {all}\n{}",
        procs[0].1.logs()
    );
    let row = |id: &str| all.lines().find(|l| l.starts_with(id)).map(str::to_owned);
    let b_row =
        row(&b1).unwrap_or_else(|| panic!("host a's retention pruned host b's backup {b1}: {all}"));
    assert!(b_row.contains(B), "{b_row}");
    for a in [&a2, &a3] {
        assert!(row(a).is_some_and(|r| r.contains(A)), "{all}");
    }
    let only_b = list(&["backup", "list", "--host", B]);
    assert!(only_b.contains(&b1) && !only_b.contains(&a3), "{only_b}");
    // Each host's objects are under its own prefix.
    let store_of = |host: &str| {
        let config = steward_store::config::S3Config {
            bucket: bucket.name.clone(),
            prefix: steward_store::config::host_prefix("steward/", host),
            endpoint: Some(steward_testkit::testbed::require("STEWARD_TEST_S3_ENDPOINT")),
        };
        async move {
            steward_store::store::Store::connect_static(
                &config,
                &steward_testkit::testbed::require("STEWARD_TEST_S3_ACCESS_KEY"),
                &steward_testkit::testbed::require("STEWARD_TEST_S3_SECRET_KEY"),
            )
            .await
        }
    };
    let under = |host: &'static str| {
        let store = store_of(host);
        async move {
            let dirs = store.await.list_dirs().await.expect("list");
            dirs.into_iter()
                .filter(|d| steward_store::manifest::time_of_id(d).is_some())
                .collect::<std::collections::BTreeSet<_>>()
        }
    };
    assert_eq!(under(B).await, [b1.clone()].into());
    assert_eq!(under(A).await, [a2.clone(), a3.clone()].into());

    // b's signed backup copied into a's prefix (anyone who may write the bucket can) is not
    // a's: its manifest names host b. a's service refuses to verify (or restore) it.
    let (store_a, store_b) = (store_of(A).await, store_of(B).await);
    for name in store_b.list_objects(&b1).await.expect("b's objects") {
        let body = store_b.get_small(&name, 64 << 20).await.expect("get").expect("there");
        store_a.put(&name, body.into()).await.expect("copy into a's prefix");
    }
    let verify = Event::new(
        "steward-cli/test",
        steward_events::VerifyRequested { backup_id: b1.clone(), requested_by: None, from: None },
    )
    .with_host(Some(A.to_owned()));
    bus.publish(&verify).await.expect("publish");
    let outcome =
        wait_outcome(&bus, &verify, &["backup.verified", "verify.failed"], Duration::from_secs(60))
            .await;
    match outcome.data {
        EventData::VerifyFailed(f) => {
            assert!(f.reason.contains("taken on host vps-b"), "{}", f.reason)
        }
        other => panic!("host a verified host b's backup from its own prefix: {other:?}"),
    }
    drop(apps);
    steward_system_tests::assert_nothing_refused(&server, &procs);
}

/// Under host routing the central notifier asks the pending update's own host for its
/// approval link (`approval.link.<host>`): the mail names the host and carries host a's link,
/// and a POST to it has host a's updater apply the update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailed_link_approves_on_the_updates_host() {
    use steward_system_tests::mail::{
        approval_link, approve_by_link, testbed_maildir, testbed_notifier_env, unique_address,
        wait_mails,
    };
    let (server, _setup, bus, table) = routed().await;
    let scope = unique_name("scope-link");
    let app = app(&scope, "manual", &[]);
    let port = steward_testkit::free_port();
    let public = format!("http://127.0.0.1:{port}");
    let mut procs = vec![];
    procs.push(agent(&bus, &table, Service::Watcher, A, &[("STEWARD_SCOPE", scope.clone())]));
    procs.push(agent(
        &bus,
        &table,
        Service::Updater,
        A,
        &[
            ("STEWARD_SCOPE", scope.clone()),
            ("STEWARD_HEALTH_GRACE", "2s".into()),
            ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("STEWARD_PUBLIC_URL", public.clone()),
            (
                "STEWARD_APPROVAL_SECRET",
                "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
            ),
        ],
    ));
    let to = unique_address("routed-link");
    let mut notifier_env = testbed_notifier_env(&to);
    notifier_env.extend([
        ("STEWARD_NATS_USER", Service::Notifier.name().to_owned()),
        ("STEWARD_NATS_PASSWORD", NatsServer::password(Service::Notifier)),
        ("STEWARD_HOSTS", table.clone()),
    ]);
    procs.push((
        "notifier".to_owned(),
        Proc::service(Service::Notifier.binary(), &bus, &notifier_env),
    ));

    push_app("v2", &app.image);
    cli(&bus, &table, &[], &["check"]);
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(60));
    let mail = &mails[0];
    assert!(mail.subject.contains(&app.name), "{}", mail.subject);
    assert!(mail.text.contains(A), "the mail does not name the host: {}", mail.text);
    let link = approval_link(mail, &public, "asked on the wrong host?");
    approve_by_link(&link).await;
    let events = wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    for e in events.iter().filter(|e| e.event_type().starts_with("update.")) {
        assert_eq!(e.host.as_deref(), Some(A), "{} about host a", e.event_type());
    }
    steward_system_tests::assert_nothing_refused(&server, &procs);
}
