//! `steward deploy ENV COMMIT` (issue 21): pinning an environment to an earlier commit of its
//! branch, through the real CLI, deployer, NATS, Docker engine and a `git daemon` on
//! 127.0.0.1. A pin goes back; pushes while it holds are refused with `deploy.failed` saying
//! so; pinning the branch's head follows the branch again; an unknown commit, a commit a
//! force-push removed from the branch, a short id or an unknown environment touch nothing; an
//! old pin replayed does nothing; a manual environment's pin waits for approval; a deployer
//! killed in a pin ends it once. Deployment windows (`STEWARD_DEPLOY_WINDOWS`): a push
//! outside its window waits, through kills, and starts once when it opens; a newer push or a
//! rejection ends it; a pin (also of the branch's head) does not wait.

mod deploy_common;

use deploy_common::*;
use steward_events::DeployPinRequested;
use steward_system_tests::{steward, steward_ok};

/// The `deploy.failed` answering a push of `commit` (none claimed: no `deploy_id`).
async fn refusal_of(bus: &Bus, commit: &str) -> steward_events::DeployFailed {
    first_event(bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployFailed(f) if f.change.commit == commit => Some(f.clone()),
        _ => None,
    })
    .await
}

/// Runs `steward deploy dev COMMIT`; (exit success, stdout + stderr).
fn pin(bus: &Bus, commit: &str) -> (bool, String) {
    let out = steward(bus, &["deploy", "dev", commit, "--wait", "60s"]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn dev_row(bus: &Bus) -> String {
    let listed = steward_ok(bus, &["deploy", "list"]);
    listed.lines().find(|l| l.starts_with("dev ")).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_goes_back_holds_against_pushes_saying_so_and_the_head_follows_the_branch_again() {
    let bus = TestBus::new("deploypin").await;
    let repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let (c1, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let (c2, flow) = deploy_by_webhook(&bus, &repo, port, "v2", "second").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v2"));

    // Back to the first commit: web recreated from its definition, the pin shown.
    let (ok, said) = pin(&bus, &c1);
    assert!(ok, "{said}");
    assert!(said.contains("dev runs") && said.contains(&c1[..10]), "{said}");
    assert!(serves(repo.web, "v1"), "web not back on v1");
    let row = dev_row(&bus);
    assert!(row.contains("pinned by tester@"), "{row}");

    // A push while the pin holds: refused, saying so, nothing touched.
    let web = repo.container("web").expect("web runs");
    let c3 = repo.commit_noted("dev", "v2", "third", "again");
    push_commit(&repo, port, &c3, "third").await;
    let refused = refusal_of(&bus, &c3).await;
    assert!(refused.deploy_id.is_none(), "{refused:?}");
    assert!(
        refused.reason.contains("pinned to") && refused.reason.contains(&c1[..10]),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web touched while pinned");
    assert!(serves(repo.web, "v1"));

    // An old pin (published before the one in hand) replayed: no event, nothing touched.
    let before = stored_events(&bus).await.len();
    let mut old = Event::new(
        "steward/test",
        DeployPinRequested { environment: "dev".into(), commit: c2.clone(), by: "old@test".into() },
    );
    old.time -= time::Duration::hours(1);
    bus.publish(&old).await.expect("publish old pin");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = stored_events(&bus).await;
    assert_eq!(after.len(), before + 1, "the old pin caused events: {:#?}", &after[before..]);
    assert!(serves(repo.web, "v1"));

    // Hostile pins: none touches anything.
    let short = steward(&bus, &["deploy", "dev", &c2[..10]]);
    assert!(!short.status.success(), "a short id was accepted");
    assert_eq!(stored_events(&bus).await.len(), before + 1, "a short id was published");
    let (ok, said) = pin(&bus, &"ab".repeat(20));
    assert!(!ok && said.contains("found no commit"), "{said}");
    let out = steward(&bus, &["deploy", "nowhere", &c2, "--wait", "30s"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("no environment"), "{said}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web touched");

    // The branch's head: deployed, and the environment follows its branch again.
    let (ok, said) = pin(&bus, &c3);
    assert!(ok, "{said}");
    assert!(serves(repo.web, "v2"), "web not on the head's v2");
    assert!(!dev_row(&bus).contains("pinned"), "{}", dev_row(&bus));
    let (c4, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "fourth").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v1"));

    // A commit a force-push took off the branch (the checkout still has it): refused.
    let (c5, flow) = deploy_by_webhook(&bus, &repo, port, "v2", "fifth").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    git(&repo.work, &["push", "-q", "-f", "origin", &format!("{c4}:refs/heads/dev")]);
    let web = repo.container("web").expect("web runs");
    let (ok, said) = pin(&bus, &c5);
    assert!(!ok && said.contains("not on the history of branch dev"), "{said}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web touched");
    assert!(serves(repo.web, "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_of_a_manual_environment_waits_for_approval_and_a_killed_pin_ends_once() {
    let bus = TestBus::new("deploypinman").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned())];
    let deployer_a = deployer(&repo.env(&bus, port, &extra));
    let c1 = push_version(&repo, port, "v1", "first").await;
    pending_of(&bus, &c1).await;
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    assert_eq!(terminal(&outcome(&bus, &c1, Duration::from_secs(180)).await), ["deploy.succeeded"]);
    let c2 = push_version(&repo, port, "v2", "second").await;
    pending_of(&bus, &c2).await;
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    assert_eq!(terminal(&outcome(&bus, &c2, Duration::from_secs(180)).await), ["deploy.succeeded"]);

    // The pin waits for approval like a push, and says it is a pin.
    let (ok, said) = pin(&bus, &c1);
    assert!(ok && said.contains("waits for approval"), "{said}");
    // The newest deploy.pending of c1 (the first was its push's).
    let (correlation, pending) = stored_events(&bus)
        .await
        .into_iter()
        .rev()
        .find_map(|e| match e.data {
            EventData::DeployPending(p) if p.change.commit == c1 => Some((e.correlation_id, p)),
            _ => None,
        })
        .expect("the pin's deploy.pending");
    assert!(pending.pinned_by.as_deref().is_some_and(|b| b.starts_with("tester@")), "{pending:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(serves(repo.web, "v2"), "deployed before approval");

    // Approved; the deployer is killed once the pin is applied and before its verdict: the
    // one started again rolls it back, and the flow ends once.
    drop(deployer_a);
    let mut armed = deployer(&repo.env(
        &bus,
        port,
        &[extra[0].clone(), ("STEWARD_FAILPOINTS", "applied=1".into())],
    ));
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    assert!(armed.exits_within(Duration::from_secs(120)), "not killed: {}", armed.logs());
    drop(armed);
    let _again = deployer(&repo.env(&bus, port, &extra));
    first_event(&bus, Duration::from_secs(45), |e| {
        (e.correlation_id == correlation && TERMINAL.contains(&e.event_type())).then_some(())
    })
    .await;
    let flow = settled_flow(&bus, correlation).await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    wait_for("web back on v2", Duration::from_secs(10), || serves(repo.web, "v2").then_some(()));
    // A pin that did not end running its commit holds nothing: a push deploys again.
    assert!(!dev_row(&bus).contains("pinned"), "{}", dev_row(&bus));
}

/// A pin from a machine whose clock is behind the environment's last request: the deployer
/// would take it for an old request replayed and drop it, and the pin would wait out `--wait`
/// unanswered. The CLI refuses it at once, naming the clock, and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_from_a_clock_behind_the_last_request_is_refused_at_once_saying_so() {
    use steward_bus::StateStore;
    use steward_events::records::{DeployRecord, DEPLOY_BUCKET};
    let bus = TestBus::new("deploypinclock").await;
    // The last request as a deployer on a machine an hour ahead recorded it.
    let ahead = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let ahead = ahead.format(&time::format_description::well_known::Rfc3339).expect("formats");
    let id = uuid::Uuid::new_v4();
    let record: DeployRecord = serde_json::from_value(serde_json::json!({
        "deploy_id": id, "repository": "git://127.0.0.1/app", "branch": "dev",
        "environment": "dev", "commit": "b".repeat(40), "deployed_commit": "b".repeat(40),
        "correlation_id": id, "last_event_id": id, "step": "succeeded",
        "requested_at": ahead, "request_id": id, "started_at": ahead,
    }))
    .expect("a deploy record");
    let records = StateStore::<DeployRecord>::open(&bus, DEPLOY_BUCKET).await.expect("bucket");
    records.create("dev", &record).await.expect("record planted");

    let (ok, said) = pin(&bus, &"a".repeat(40));
    assert!(!ok, "{said}");
    assert!(said.contains("clock") && said.contains("behind the last request for dev"), "{said}");
    let published = stored_events(&bus).await;
    assert!(
        !published.iter().any(|e| matches!(e.data, EventData::DeployPinRequested(_))),
        "a pin was published: {published:#?}"
    );
}

/// `STEWARD_DEPLOY_WINDOWS` for dev: an hour starting `minutes` from now (host time, as the
/// deployer reads it).
fn dev_window(minutes: i64) -> (&'static str, String) {
    let from = chrono::Local::now().naive_local() + chrono::Duration::minutes(minutes);
    let to = from + chrono::Duration::hours(1);
    ("STEWARD_DEPLOY_WINDOWS", format!("dev={}-{}", from.format("%H:%M"), to.format("%H:%M")))
}

/// The events about `commit` so far, by type.
async fn types_of(bus: &Bus, commit: &str) -> Vec<&'static str> {
    let about = |e: &Event| match &e.data {
        EventData::DeployPending(p) => p.change.commit == commit,
        EventData::DeployDeferred(d) => d.change.commit == commit,
        EventData::DeployStarted(s) => s.change.commit == commit,
        EventData::DeploySucceeded(s) => s.change.commit == commit,
        EventData::DeployRolledBack(r) => r.change.commit == commit,
        EventData::DeployFailed(f) => f.change.commit == commit,
        _ => false,
    };
    stored_events(bus).await.iter().filter(|e| about(e)).map(Event::event_type).collect()
}

/// Waits until `steward deploy list`'s dev row says `step` for `commit`; the row.
async fn dev_row_until(bus: &Bus, step: &str, commit: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = dev_row(bus);
        let cols: Vec<&str> = row.split_whitespace().collect();
        if cols.get(2) == Some(&step) && cols.get(3) == commit.get(..10).as_ref() {
            return row;
        }
        assert!(Instant::now() < deadline, "dev never {step} on {commit}: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_outside_its_window_waits_through_kills_starts_once_when_it_opens_and_a_pin_does_not_wait(
) {
    let bus = TestBus::new("deploywindow").await;
    let repo = Repo::new();
    let port = free_port();
    let closed = dev_window(6 * 60);

    // Killed right after it saved the wait, then (SIGKILL) twice more once a restart found it:
    // the push waits, nothing touched, no deploy.started.
    let mut armed = deployer(&repo.env(
        &bus,
        port,
        &[closed.clone(), ("STEWARD_FAILPOINTS", "saved:deferred=1".into())],
    ));
    let c1 = push_version(&repo, port, "v1", "first").await;
    assert!(armed.exits_within(Duration::from_secs(120)), "not killed: {}", armed.logs());
    assert!(armed.logs().contains("aborting"), "{}", armed.logs());
    drop(armed);
    for _ in 0..2 {
        let again = deployer(&repo.env(&bus, port, std::slice::from_ref(&closed)));
        let row = dev_row_until(&bus, "deferred", &c1).await;
        assert!(row.contains("waiting: the deployment window of dev opens"), "{row}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(again);
    }
    assert!(repo.container("web").is_none(), "web created outside the window");
    // Said once (published from the record's outbox by the first restart), nothing started.
    assert_eq!(types_of(&bus, &c1).await, ["deploy.deferred"]);

    // The window open (the same deployer with its setting changed): it starts, once.
    let open = deployer(&repo.env(&bus, port, &[dev_window(-5)]));
    let flow = outcome(&bus, &c1, Duration::from_secs(180)).await;
    let flow = settled_flow(&bus, flow[0].correlation_id).await;
    let types: Vec<&str> = flow.iter().map(Event::event_type).collect();
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "deploy.started").count(), 1, "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "deploy.deferred").count(), 1, "{types:?}");
    assert!(serves(repo.web, "v1"));
    drop(open);

    // Manual and closed: an approval says yes, not now; a newer push replaces the approved
    // one before its window opened; a pin, approved, does not wait.
    let manual = ("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned());
    let _closed = deployer(&repo.env(&bus, port, &[closed.clone(), manual]));
    let c2 = push_version(&repo, port, "v2", "second").await;
    pending_of(&bus, &c2).await;
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    dev_row_until(&bus, "deferred", &c2).await;
    // Approving again says what it waits for and how to cancel or deploy now.
    let again = steward(&bus, &["deploy", "approve", "dev"]);
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && said.contains("waits for its deployment window"), "{said}");
    let c3 = push_version(&repo, port, "v3", "third").await;
    pending_of(&bus, &c3).await;
    let superseded = refusal_of(&bus, &c2).await;
    assert!(superseded.reason.contains("before its window opened"), "{superseded:?}");
    assert_eq!(types_of(&bus, &c2).await, ["deploy.pending", "deploy.deferred", "deploy.failed"]);
    assert!(serves(repo.web, "v1"), "deployed outside the window");

    let (ok, said) = pin(&bus, &c2);
    assert!(ok && said.contains("waits for approval"), "{said}");
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    wait_for("the pin on v2 despite the window", Duration::from_secs(120), || {
        serves(repo.web, "v2").then_some(())
    });
    dev_row_until(&bus, "succeeded", &c2).await;
    let ends = types_of(&bus, &c3).await;
    assert_eq!(ends, ["deploy.pending", "deploy.failed"], "c3 replaced by the pin");

    // Pinning the branch's head (which follows the branch again) does not wait either.
    let c4 = repo.commit("dev", "v1", "fourth");
    let (ok, said) = pin(&bus, &c4);
    assert!(ok && said.contains("waits for approval"), "{said}");
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    wait_for("the head's pin on v1 despite the window", Duration::from_secs(120), || {
        serves(repo.web, "v1").then_some(())
    });
    let row = dev_row_until(&bus, "succeeded", &c4).await;
    assert!(!row.contains("pinned"), "{row}");

    // An approved push waiting for its window can still be rejected: nothing touched.
    let c5 = push_version(&repo, port, "v2", "fifth").await;
    pending_of(&bus, &c5).await;
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    dev_row_until(&bus, "deferred", &c5).await;
    steward_ok(&bus, &["deploy", "reject", "dev", "--reason", "not this week"]);
    let rejected = refusal_of(&bus, &c5).await;
    assert!(rejected.reason.contains("not this week"), "{rejected:?}");
    assert_eq!(types_of(&bus, &c5).await, ["deploy.pending", "deploy.deferred", "deploy.failed"]);
    assert!(serves(repo.web, "v1"), "deployed after its rejection");
}
