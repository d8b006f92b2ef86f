//! The deployer (`steward-deployer`, issue 21) as a real process against the test bed's Docker
//! engine and NATS and a real git server (`git daemon` on 127.0.0.1 serving a bare repository
//! the test pushes to): a signed push webhook deploys only the changed service, health-gated;
//! a broken commit is rolled back to the previous commit's definitions; bad signatures are
//! refused and counted; an older commit replayed is ignored; polling finds a new head; and a
//! deployer killed at its points (SIGABRT through failpoints) ends with one terminal event and
//! the stack on the old or the new commit.

mod deploy_common;

use deploy_common::*;
use steward_events::{Change, DeployRequested};
use steward_system_tests::{steward, steward_ok};
use steward_testkit::docker::registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_recreates_only_the_changed_service_a_broken_one_is_rolled_back_an_old_one_ignored()
{
    let bus = TestBus::new("deploy").await;
    let repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));

    // The first commit: both services are new.
    let (first, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    wait_for("web v1", Duration::from_secs(10), || serves(repo.web, "v1").then_some(()));
    let side = repo.container("side").expect("side runs");

    // Only web's image changes: only web is recreated, health-gated, succeeded.
    let (second, flow) = deploy_by_webhook(&bus, &repo, port, "v2", "web: v2").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let done = flow
        .iter()
        .find_map(|e| match &e.data {
            EventData::DeploySucceeded(d) => Some(d.clone()),
            _ => None,
        })
        .expect("succeeded");
    assert_eq!(done.services, ["web"]);
    assert_eq!(done.previous_commit.as_deref(), Some(first.as_str()));
    assert_eq!(done.change.message.as_deref(), Some("web: v2"));
    assert_eq!(done.change.author.as_deref(), Some("Ada <ada@example.com>"));
    assert!(serves(repo.web, "v2"));
    assert_eq!(repo.container("side").as_deref(), Some(side.as_str()), "side was recreated");

    // A commit whose web never gets healthy: rolled back to the previous definition.
    let (_third, flow) = deploy_by_webhook(&bus, &repo, port, "v3", "web: v3").await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    let back = flow
        .iter()
        .find_map(|e| match &e.data {
            EventData::DeployRolledBack(d) => Some(d.clone()),
            _ => None,
        })
        .expect("rolled back");
    assert_eq!(back.previous_commit.as_deref(), Some(second.as_str()));
    assert_eq!(back.services, ["web"]);
    assert_eq!(back.previous_healthy, Some(true));
    assert!(!back.log_tail.is_empty(), "no log lines of the failed web");
    assert!(serves(repo.web, "v2"), "web is not back on v2");
    assert_eq!(repo.container("side").as_deref(), Some(side.as_str()), "side was touched");

    // A replayed request of the first commit (a new event, published now): ignored.
    let before = stored_events(&bus).await.len();
    let replay = Event::new(
        "test",
        DeployRequested {
            change: Change {
                repository: repo.url.clone(),
                branch: "dev".into(),
                environment: "dev".into(),
                commit: first.clone(),
                author: None,
                message: None,
            },
            requested_by: Some("test".into()),
        },
    );
    bus.publish(&replay).await.expect("publish replay");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stored_events(&bus).await;
    assert_eq!(after.len(), before + 1, "the replay caused events: {:#?}", &after[before..]);
    assert!(serves(repo.web, "v2"));
}

fn http_get_path(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_badly_signed_webhooks_are_refused_counted_and_publish_nothing() {
    let bus = TestBus::new("deployhook").await;
    let repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let commit = repo.commit("dev", "v1", "first");
    let body = push_body(&repo, "dev", &commit, "first");
    assert_eq!(post(port, &body, None).await.0, 401);
    assert_eq!(post(port, &body, Some(&sign(&body, "another-secret-0123456789"))).await.0, 401);
    assert_eq!(post(port, &body, Some("not hex")).await.0, 401);
    // Signed, but for another body.
    assert_eq!(post(port, &body, Some(&sign("{}", SECRET))).await.0, 401);
    // Too big: refused before it is read whole (413, or the connection closed early).
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, _) = post(port, &big, Some(&sign(&big, SECRET))).await;
    assert!(status == 413 || status == 0, "{status}");
    // Signed, but not JSON; a branch that deploys nowhere.
    assert_eq!(post(port, "{not json", Some(&sign("{not json", SECRET))).await.0, 400);
    let feature = push_body(&repo, "feature", &commit, "first");
    assert_eq!(post(port, &feature, Some(&sign(&feature, SECRET))).await.0, 422);
    let metrics = http_get_path(port, "/metrics");
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("steward_deploy_webhook_refused"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 4.0, "{metrics}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published: Vec<_> = stored_events(&bus).await.iter().map(Event::event_type).collect();
    assert!(published.is_empty(), "{published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_deploys_a_new_head() {
    let bus = TestBus::new("deploypoll").await;
    let repo = Repo::new();
    let commit = repo.commit("dev", "v1", "first");
    let port = free_port();
    let env = repo.env(&bus, port, &[("STEWARD_DEPLOY_POLL_INTERVAL", "1s".into())]);
    let _deployer = deployer(&env);
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let requested = flow.iter().find_map(|e| match &e.data {
        EventData::DeployRequested(r) => Some(r.requested_by.clone()),
        _ => None,
    });
    assert_eq!(requested, Some(Some("poll".into())));
    assert!(serves(repo.web, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_claim_it_prepares_again_and_ends_once() {
    killed_at("claimed:preparing=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_announcing_the_start_it_ends_once_on_the_old_commit() {
    killed_at("published:deploy.started=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_apply_and_the_verdict_it_rolls_back_once() {
    killed_at("applied=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_verdict_it_ends_once_on_the_new_commit() {
    killed_at("saved:succeeded=1").await;
}

/// Approves the pending deployment of `commit` as a human would (`deploy.approved`).
async fn approve(bus: &Bus, commit: &str) -> Event {
    let pending = pending_of(bus, commit).await;
    let approved = Event::caused_by(
        &pending.0,
        "steward/test",
        steward_events::DeployApproved { deploy_id: pending.1.deploy_id, by: "ops@test".into() },
    );
    bus.publish(&approved).await.expect("publish approval");
    pending.0
}

/// Waits for the `backup.requested` of the flow `correlation` and answers it with
/// `backup.done` as the backup service would; the request.
async fn back_up(bus: &Bus, correlation: uuid::Uuid) -> steward_events::BackupRequested {
    let request = back_up_requested(bus, correlation).await;
    back_up_done(bus, &request).await;
    request.1
}

/// The `backup.requested` of flow `correlation` (waited for).
async fn back_up_requested(
    bus: &Bus,
    correlation: uuid::Uuid,
) -> (Event, steward_events::BackupRequested) {
    first_event(bus, Duration::from_secs(30), |e| match &e.data {
        EventData::BackupRequested(r) if e.correlation_id == correlation => {
            Some((e.clone(), r.clone()))
        }
        _ => None,
    })
    .await
}

/// Answers `request` with a `backup.done`, as the backup service would.
async fn back_up_done(bus: &Bus, request: &(Event, steward_events::BackupRequested)) {
    let done = Event::caused_by(
        &request.0,
        "steward-backup/test",
        steward_events::BackupDone {
            backup_id: "20261130T000000Z".into(),
            manifest_key: "m".into(),
            size_bytes: 1,
            components: vec![],
            duration_ms: 1,
        },
    );
    bus.publish(&done).await.expect("publish backup.done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_environment_waits_for_approval_and_the_stack_is_backed_up_first() {
    let bus = TestBus::new("deployman").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [
        ("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned()),
        ("STEWARD_DEPLOY_BACKUP", "true".to_owned()),
    ];
    let _deployer = deployer(&repo.env(&bus, port, &extra));

    // Nothing runs yet: approved, then deployed without a backup (nothing to back up).
    let first = push_version(&repo, port, "v1", "first").await;
    let pending = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == first => Some(p.deploy_id),
        _ => None,
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(repo.container("web").is_none(), "deployed before approval");
    // Approved by the operator's command, by environment; the list shows what waits.
    let listed = steward_ok(&bus, &["deploy", "list"]);
    let row = listed.lines().find(|l| l.starts_with("dev ")).unwrap_or_default();
    assert!(row.contains(&pending.to_string()) && row.contains("pending"), "{listed}");
    assert!(row.contains(&first[..10]), "{listed}");
    let refused = steward(&bus, &["deploy", "approve", "staging"]);
    assert!(!refused.status.success(), "approved a deployment of no environment");
    let said = steward_ok(&bus, &["deploy", "approve", "dev"]);
    assert!(said.contains(&pending.to_string()), "{said}");
    let flow = outcome(&bus, &first, Duration::from_secs(180)).await;
    let approved = flow.iter().find_map(|e| match &e.data {
        EventData::DeployApproved(a) => Some(a.by.clone()),
        _ => None,
    });
    assert!(approved.is_some_and(|by| by.starts_with("tester@")), "{flow:#?}");
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");

    // Web changes: approved, then backed up before web is touched.
    let second = push_version(&repo, port, "v2", "web: v2").await;
    let pending = approve(&bus, &second).await;
    let requested = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::BackupRequested(r) if e.correlation_id == pending.correlation_id => {
            Some(r.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(requested.containers.len(), 1, "{:?}", requested.containers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(serves(repo.web, "v1"), "web touched before the backup was done");
    back_up(&bus, pending.correlation_id).await;
    let flow = outcome(&bus, &second, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let order: Vec<&str> = flow.iter().map(Event::event_type).collect();
    let at = |t: &str| order.iter().position(|o| *o == t).unwrap_or(usize::MAX);
    assert!(at("deploy.pending") < at("deploy.approved"), "{order:?}");
    assert!(at("deploy.approved") < at("backup.requested"), "{order:?}");
    assert!(at("backup.done") < at("deploy.succeeded"), "{order:?}");
    assert!(serves(repo.web, "v2"));
    // The audit shows both as deployments, each with its outcome (the second's backup gate
    // made it a "backup" flow, "done", before deployments were a kind of their own).
    assert_eq!(audited_deployments(&bus), ["succeeded", "succeeded"]);
}

/// The outcomes of `steward audit --kind deploy`, oldest first.
fn audited_deployments(bus: &Bus) -> Vec<String> {
    let out = steward_ok(bus, &["audit", "--kind", "deploy", "--json"]);
    out.lines()
        .map(|line| {
            let flow: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            flow["outcome"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_file_that_does_not_parse_an_image_nowhere_or_an_unreachable_repository_fail_the_deployment_and_touch_nothing(
) {
    let bus = TestBus::new("deploybad").await;
    let mut repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"]);
    let web = repo.container("web").expect("web runs");
    std::fs::write(repo.work.join("docker-compose.yml"), "services: [\n  web:\n").expect("write");
    git(&repo.work, &["commit", "-q", "-am", "broken"]);
    git(&repo.work, &["push", "-q", "origin", "HEAD:dev"]);
    let commit = git(&repo.work, &["rev-parse", "HEAD"]);
    let body = push_body(&repo, "dev", &commit, "broken");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    let failed = flow
        .iter()
        .find_map(|e| match &e.data {
            EventData::DeployFailed(f) => Some(f.clone()),
            _ => None,
        })
        .expect("deploy.failed");
    assert!(failed.reason.contains("config"), "{}", failed.reason);
    assert!(!failed.log_tail.is_empty(), "no parser output");
    assert_eq!(terminal(&flow), ["deploy.failed"]);
    assert!(!flow.iter().any(|e| e.event_type() == "deploy.started"), "{flow:#?}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");
    assert!(serves(repo.web, "v1"));

    // An image that is neither here nor in its registry (the test bed's: nothing leaves
    // the machine): refused before anything is touched, naming the service.
    let nowhere = format!("{}/{}:1", registry(), unique_name("steward-test/nowhere"));
    let definition = format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: {nowhere}\n    ports: [\"127.0.0.1:{}:8080\"]\n  side:\n    image: steward-test/app:v1\n    ports: [\"127.0.0.1:{}:8080\"]\n",
        repo.web, repo.side
    );
    let failed = failed_push(&bus, &repo, port, &definition, "an image nowhere").await;
    let reason = &failed.reason;
    assert!(reason.contains("an image of web is neither here nor in its registry"), "{reason}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");

    // The repository cannot be fetched (its server is gone): a clear failure, nothing touched.
    let _ = repo.daemon.kill();
    let _ = repo.daemon.wait();
    let failed = failed_push(&bus, &repo, port, &definition, "unreachable").await;
    assert!(failed.reason.contains(" fetch "), "{}", failed.reason);
    assert!(!failed.log_tail.is_empty(), "git's own words are kept");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");
    assert!(serves(repo.web, "v1"));
}

/// Commits `definition` as the compose file (`message` as a comment: a commit of its own),
/// pushes it and sends its webhook; the `deploy.failed` it must end with (no
/// `deploy.started` before it).
async fn failed_push(
    bus: &Bus,
    repo: &Repo,
    port: u16,
    definition: &str,
    message: &str,
) -> steward_events::DeployFailed {
    let file = format!("# {message}\n{definition}");
    std::fs::write(repo.work.join("docker-compose.yml"), file).expect("write");
    git(&repo.work, &["commit", "-q", "-am", message]);
    git(&repo.work, &["push", "-q", "origin", "HEAD:dev"]);
    let commit = git(&repo.work, &["rev-parse", "HEAD"]);
    let body = push_body(repo, "dev", &commit, message);
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    let flow = outcome(bus, &commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.failed"], "{flow:#?}");
    assert!(!flow.iter().any(|e| e.event_type() == "deploy.started"), "{flow:#?}");
    flow.iter()
        .find_map(|e| match &e.data {
            EventData::DeployFailed(f) => Some(f.clone()),
            _ => None,
        })
        .expect("deploy.failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_replaces_one_waiting_for_approval() {
    let bus = TestBus::new("deploysup").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned())];
    let _deployer = deployer(&repo.env(&bus, port, &extra));
    let first = push_version(&repo, port, "v1", "first").await;
    let waiting = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == first => Some(e.correlation_id),
        _ => None,
    })
    .await;
    let second = push_version(&repo, port, "v2", "second").await;
    let superseded = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployFailed(f) if e.correlation_id == waiting => Some(f.reason.clone()),
        _ => None,
    })
    .await;
    assert!(superseded.contains(&second), "{superseded}");
    approve(&bus, &second).await;
    let flow = outcome(&bus, &second, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v2"));
}

/// Pushes `commit` (already committed by [`Repo::commit`]) through the signed webhook; the
/// request's correlation id, read back from the stream.
async fn push(bus: &Bus, repo: &Repo, port: u16, commit: &str, message: &str) -> uuid::Uuid {
    push_commit(repo, port, commit, message).await;
    requested(bus, commit).await
}

/// The flow of the `deploy.requested` of `commit`, waited for.
async fn requested(bus: &Bus, commit: &str) -> uuid::Uuid {
    first_event(bus, Duration::from_secs(10), |e| match &e.data {
        EventData::DeployRequested(r) if r.change.commit == commit => Some(e.correlation_id),
        _ => None,
    })
    .await
}

/// The events of flow `correlation` so far.
async fn flow_of(bus: &Bus, correlation: uuid::Uuid) -> Vec<Event> {
    stored_events(bus).await.into_iter().filter(|e| e.correlation_id == correlation).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_a_deployment_wait_the_newest_wins_the_older_is_superseded_across_a_kill() {
    let bus = TestBus::new("deployq").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_BACKUP", "true".to_owned())];
    // Armed to abort when a newer request takes the slot (saved, its displaced request's end
    // not yet published).
    let mut armed = repo.env(&bus, port, &extra);
    armed.push(("STEWARD_FAILPOINTS", "saved:queued=1".into()));
    let mut first_deployer = deployer(&armed);
    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");

    // v2 starts and waits for its backup; v3 and then a newer commit are pushed meanwhile.
    let second = repo.commit("dev", "v2", "web: v2");
    let second_flow = push(&bus, &repo, port, &second, "web: v2").await;
    first_event(&bus, Duration::from_secs(30), |e| {
        (e.correlation_id == second_flow && e.event_type() == "backup.requested").then_some(())
    })
    .await;
    let third = repo.commit("dev", "v3", "web: v3");
    let third_flow = push(&bus, &repo, port, &third, "web: v3").await;
    wait_for("v3 waits", Duration::from_secs(15), || {
        first_deployer.logs().contains("the request waits").then_some(())
    });
    let fourth = repo.commit("dev", "v1", "web: back to v1");
    let fourth_flow = push(&bus, &repo, port, &fourth, "web: back to v1").await;
    assert!(first_deployer.exits_within(Duration::from_secs(120)), "{}", first_deployer.logs());
    assert!(first_deployer.logs().contains("aborting"), "{}", first_deployer.logs());
    drop(first_deployer);
    assert!(serves(repo.web, "v1"), "web touched while v2 waited for its backup");

    // Started again: v3's end is published, v2 goes on once backed up, then the newest.
    let _deployer = deployer(&repo.env(&bus, port, &extra));
    let superseded = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployFailed(f) if e.correlation_id == third_flow => Some(f.clone()),
        _ => None,
    })
    .await;
    assert!(superseded.reason.contains(&format!("superseded by {fourth}")), "{superseded:?}");
    back_up(&bus, second_flow).await;
    let flow = outcome(&bus, &second, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    back_up(&bus, fourth_flow).await;
    let flow = outcome(&bus, &fourth, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v1"));

    // Redeliveries settle without a second outcome; v3 never started; no event twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (commit, correlation, end) in [
        (&second, second_flow, "deploy.succeeded"),
        (&third, third_flow, "deploy.failed"),
        (&fourth, fourth_flow, "deploy.succeeded"),
    ] {
        let flow = flow_of(&bus, correlation).await;
        assert_eq!(terminal(&flow), [end], "{commit}: {flow:#?}");
        let mut ids: Vec<_> = flow.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), flow.len(), "{commit}: an event twice");
    }
    let third_started = flow_of(&bus, third_flow).await;
    assert!(!third_started.iter().any(|e| e.event_type() == "deploy.started"), "v3 started");
}

/// The other two points of the slot, killed in a row: `queued` (a push written to the empty
/// slot, not yet acknowledged: redelivered to the next deployer, which finds it waiting
/// already) and `dequeued` (the waiting push claimed as the environment's record and the slot
/// emptied, nothing prepared: the next deployer prepares it once). Each push ends once, with
/// no event twice, and the waiting one deploys after the one in hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_as_a_push_enters_and_as_it_leaves_the_slot_each_push_ends_once() {
    let bus = TestBus::new("deployqkill").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_BACKUP", "true".to_owned())];
    let armed = |point: &str| {
        let mut env = repo.env(&bus, port, &extra);
        env.push(("STEWARD_FAILPOINTS", point.to_owned()));
        env
    };
    {
        let _clean = deployer(&repo.env(&bus, port, &extra));
        let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
        assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    }

    // v2 waits for its backup; v3 pushed meanwhile enters the empty slot: killed there.
    let mut first = deployer(&armed("queued=1"));
    let second = repo.commit("dev", "v2", "web: v2");
    let second_flow = push(&bus, &repo, port, &second, "web: v2").await;
    let request = back_up_requested(&bus, second_flow).await;
    let third = repo.commit("dev", "v3", "web: v3 broken");
    // Its handling kills the deployer, which may happen before the webhook's answer is sent
    // (seen under load): the request is in the stream either way.
    let body = push_body(&repo, "dev", &third, "web: v3 broken");
    let (status, text) = post(port, &body, Some(&sign(&body, SECRET))).await;
    assert!(status == 202 || status == 0, "{status}: {text}");
    let third_flow = requested(&bus, &third).await;
    assert!(first.exits_within(Duration::from_secs(60)), "{}", first.logs());
    assert!(first.logs().contains("failpoint: queued: aborting"), "{}", first.logs());
    drop(first);

    // Started again, armed where the waiting push leaves the slot: v2 goes on once backed up,
    // then v3 is claimed and the slot emptied, and it is killed there.
    let mut again = deployer(&armed("dequeued=1"));
    back_up_done(&bus, &request).await;
    let flow = outcome(&bus, &second, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(again.exits_within(Duration::from_secs(60)), "{}", again.logs());
    assert!(again.logs().contains("failpoint: dequeued: aborting"), "{}", again.logs());
    drop(again);
    assert!(serves(repo.web, "v2"), "web not on v2");

    // Started clean: v3 is prepared once, backed up, rolled back (it never gets healthy).
    let _last = deployer(&repo.env(&bus, port, &extra));
    back_up(&bus, third_flow).await;
    let flow = outcome(&bus, &third, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    assert!(serves(repo.web, "v2"), "web not back on v2");
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (commit, correlation, end) in
        [(&second, second_flow, "deploy.succeeded"), (&third, third_flow, "deploy.rolled_back")]
    {
        let flow = flow_of(&bus, correlation).await;
        assert_eq!(terminal(&flow), [end], "{commit}: {flow:#?}");
        let started = flow.iter().filter(|e| e.event_type() == "deploy.started").count();
        assert_eq!(started, 1, "{commit}: {flow:#?}");
        let mut ids: Vec<_> = flow.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), flow.len(), "{commit}: an event twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_deployment_ends_failed_touches_nothing_and_a_late_approval_is_ignored() {
    let bus = TestBus::new("deployrej").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned())];
    let _deployer = deployer(&repo.env(&bus, port, &extra));
    let first = push_version(&repo, port, "v1", "first").await;
    approve(&bus, &first).await;
    assert_eq!(
        terminal(&outcome(&bus, &first, Duration::from_secs(180)).await),
        ["deploy.succeeded"]
    );
    let web = repo.container("web").expect("web runs");

    let second = push_version(&repo, port, "v2", "web: v2").await;
    let pending = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == second => Some(p.deploy_id),
        _ => None,
    })
    .await;
    let said = steward_ok(&bus, &["deploy", "reject", "dev", "--reason", "release freeze"]);
    assert!(said.contains(&pending.to_string()), "{said}");
    let flow = outcome(&bus, &second, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.failed"], "{flow:#?}");
    let reason = flow.iter().find_map(|e| match &e.data {
        EventData::DeployFailed(f) => Some(f.reason.clone()),
        _ => None,
    });
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("rejected by tester@") && reason.contains("release freeze"),
        "{reason}"
    );
    assert!(!flow.iter().any(|e| e.event_type() == "deploy.started"), "{flow:#?}");
    // Nothing waits any more: a second rejection is refused by the CLI.
    assert!(!steward(&bus, &["deploy", "reject", "dev"]).status.success());
    assert_eq!(audited_deployments(&bus), ["succeeded", "rejected"]);

    // An approval that comes late (replayed, or sent before the rejection was seen) is ignored.
    let late = Event::new(
        "steward/test",
        steward_events::DeployApproved { deploy_id: pending, by: "ops@test".into() },
    );
    bus.publish(&late).await.expect("publish approval");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = outcome(&bus, &second, Duration::from_secs(5)).await;
    assert!(!again.iter().any(|e| e.event_type() == "deploy.started"), "{again:#?}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");
    assert!(serves(repo.web, "v1"));
}
