//! The notifier and the approval page as real processes, with a real SMTP server (aiosmtpd):
//! one mail per pending update with a working single-use link that survives a notifier killed
//! before sending; mail held back while SMTP is down and sent once when it is back; bursts
//! grouped; undeliverable mail given up after its bound; a delivery under way at SIGTERM
//! finished before the notifier exits.

use std::process::Command;
use std::time::Duration;

use steward_approval::links::ApprovalLinks;
use steward_bus::{Bus, StateStore};
use steward_events::records::{UpdateRecord, UpdateStep, UPDATE_BUCKET};
use steward_events::{Event, EventData};
use steward_system_tests::apps::{app, pending_in, wait_event};
use steward_system_tests::mail::{
    health_failed, mails_to, notifier_env, testbed_maildir, testbed_notifier_env, unique_address,
    wait_mails, webhook_sink, SmtpServer,
};
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::docker::push_app;
use steward_testkit::{free_port, http_get, stored_events, unique_name, wait_for, TestBus};

const SECRET: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";

fn with(
    base: Vec<(&'static str, String)>,
    more: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = base;
    env.extend(more.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

fn kill9(p: &mut Proc) {
    let pid = p.child.id().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().expect("kill").success());
    let _ = p.child.wait();
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn get(url: &str) -> (u16, String) {
    let r = http().get(url).send().await.expect("GET");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn post(url: &str, decision: &str) -> (u16, String) {
    let r = http().post(url).form(&[("decision", decision)]).send().await.expect("POST");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

async fn step(bus: &Bus, container: &str) -> Option<UpdateStep> {
    let records: StateStore<UpdateRecord> =
        StateStore::open(bus, UPDATE_BUCKET).await.expect("records");
    records.get(container).await.expect("get").map(|v| v.value.step)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_update_is_mailed_once_with_a_link_that_approves_only_by_post_and_only_once() {
    let bus = TestBus::new("approvelink").await;
    let scope = unique_name("scope");
    let to = unique_address("approve");
    let maildir = testbed_maildir();
    let app = app(&scope, "manual", &[]);
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let scoped = [("STEWARD_SCOPE", scope.as_str())];
    let _watcher = Proc::service("steward-watcher", &bus, &with(vec![], &scoped));
    let _updater = Proc::service(
        "steward-updater",
        &bus,
        &with(
            vec![],
            &[
                ("STEWARD_SCOPE", scope.as_str()),
                ("STEWARD_HTTP_ADDR", format!("127.0.0.1:{port}").as_str()),
                ("STEWARD_PUBLIC_URL", public.as_str()),
                ("STEWARD_APPROVAL_SECRET", SECRET),
                ("STEWARD_HEALTH_GRACE", "3s"),
            ],
        ),
    );
    // A window long enough to kill the notifier between queueing and sending.
    let notifier_settings =
        with(testbed_notifier_env(&to), &[("STEWARD_NOTIFY_GROUP_WINDOW", "4s")]);
    let mut notifier = Proc::service("steward-notifier", &bus, &notifier_settings);

    push_app("v2", &app.image);
    steward(&bus, &["check"]);
    let events = wait_event(&bus, "update.pending", Duration::from_secs(30)).await;
    let pending = pending_in(&events).expect("pending");
    // The live token is not in the stream (every service reads it, for a year): the event
    // says only that a link exists, until when.
    assert_eq!(pending.1.approval_url, None);
    assert!(pending.1.expires_at.is_some());
    for e in stored_events(&bus).await {
        let stored = String::from_utf8(e.encode().expect("encode")).expect("utf-8");
        assert!(!stored.contains("/approve/"), "a link in the stream: {stored}");
    }

    // Killed before the window closed: the queued notification survives in the outbox.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill9(&mut notifier);
    assert!(mails_to(&maildir, &to).is_empty(), "nothing sent before the window closed");
    let mut notifier = Proc::service("steward-notifier", &bus, &notifier_settings);
    let mails = wait_mails(&maildir, &to, 1, Duration::from_secs(30));
    let mail = &mails[0];
    assert!(mail.subject.contains(&format!("Approve update of {}", app.name)), "{}", mail.subject);
    // The mail carries the link, asked from the updater when it was rendered.
    let link = steward_system_tests::mail::approval_link(mail, &public, "");
    assert!(mail.html.contains("Review and approve or reject"), "{}", mail.html);

    // GET shows the page and decides nothing (mail scanners fetch links).
    let (status, page) = get(&link).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&app.name) && page.contains("value=\"approve\""), "{page}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(step(&bus, &app.name).await, Some(UpdateStep::Pending));

    // Forged and expired links are refused and change nothing.
    let mut forged = link.clone();
    let last = forged.pop().expect("char");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(get(&forged).await.0, 403);
    assert_eq!(post(&forged, "approve").await.0, 403);
    let old = time::OffsetDateTime::now_utc() - Duration::from_secs(7200);
    let (expired, _) = ApprovalLinks::new(
        steward_approval::LinkKind::Update,
        &public,
        SECRET.as_bytes(),
        Duration::from_secs(3600),
    )
    .mint(pending.1.update_id, old);
    let (status, body) = post(&expired, "approve").await;
    assert_eq!(status, 410, "{body}");
    assert!(body.contains("expired"), "{body}");
    assert_eq!(step(&bus, &app.name).await, Some(UpdateStep::Pending));

    // POST approves, once.
    let (status, body) = post(&link, "approve").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Approved"), "{body}");
    let all = wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v2")));
    let approved: Vec<&Event> =
        all.iter().filter(|e| e.event_type() == "update.approved").collect();
    assert_eq!(approved.len(), 1);
    assert!(matches!(&approved[0].data, EventData::UpdateApproved(a) if a.by == "approval-page"));
    assert_eq!(approved[0].correlation_id, pending.0.correlation_id);
    let (status, body) = post(&link, "reject").await;
    assert_eq!(status, 410, "reused: {body}");
    assert!(body.contains("already used"), "{body}");
    assert_eq!(get(&link).await.0, 410);

    // The manual update's success is mailed too; the approval request never again, even
    // after another restart.
    let mails = wait_mails(&maildir, &to, 2, Duration::from_secs(30));
    assert!(mails[1].subject.contains(&format!("{} updated to", app.name)), "{mails:#?}");
    assert!(mails[1].text.contains("approval-page"), "{}", mails[1].text);
    assert_eq!(notifier.terminate(Duration::from_secs(10)), Some(0));
    let _notifier = Proc::service("steward-notifier", &bus, &notifier_settings);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mails = mails_to(&maildir, &to);
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let sent = stored_events(&bus).await;
    let sent: Vec<&Event> = sent.iter().filter(|e| e.event_type() == "notify.sent").collect();
    assert_eq!(sent.len(), 2);

    // The audit shows the whole update as one timeline, in order, mails included; the live
    // token never appears in the audit output or the replay.
    let token = link.rsplit('/').next().expect("token");
    let replay = steward(&bus, &["events", "replay", "--json"]);
    assert!(replay.contains("update.pending") && !replay.contains(token), "{replay}");
    let audit = steward(&bus, &["audit", "--container", &app.name]);
    assert!(!audit.contains(token), "{audit}");
    let header = audit.lines().next().expect("a flow");
    assert!(header.contains("update") && header.contains("succeeded"), "{audit}");
    let steps: Vec<&str> = audit
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let expected = [
        "watch.requested",
        "image.updated",
        "update.pending",
        "notify.sent",
        "update.approved",
        "update.started",
        "update.succeeded",
        "notify.sent",
    ];
    assert_eq!(steps, expected, "{audit}");
    let json = steward(&bus, &["audit", "--container", &app.name, "--json", "--kind", "update"]);
    let flows: Vec<serde_json::Value> =
        json.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(flows.len(), 1, "{json}");
    assert_eq!(flows[0]["outcome"], "succeeded");
    assert_eq!(flows[0]["events"].as_array().map(Vec::len), Some(expected.len()));
    assert!(!json.contains(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_while_smtp_is_down_and_arrives_once_when_it_is_back() {
    let bus = TestBus::new("smtpdown").await;
    let to = unique_address("down");
    let mut smtp = SmtpServer::stopped();
    let _notifier = Proc::service("steward-notifier", &bus, &notifier_env(&smtp.addr(), &to));
    bus.publish(&health_failed("db")).await.expect("publish");

    let all = wait_event(&bus, "notify.failed", Duration::from_secs(20)).await;
    let failed = all
        .iter()
        .find_map(|e| match &e.data {
            EventData::NotifyFailed(f) => Some(f.clone()),
            _ => None,
        })
        .expect("failed");
    assert!(!failed.gave_up && failed.attempts == 1, "{failed:?}");
    assert!(failed.reason.contains(&smtp.addr()) || failed.reason.contains("SMTP"), "{failed:?}");

    smtp.start();
    let mails = wait_mails(&smtp.maildir, &to, 1, Duration::from_secs(30));
    assert!(mails[0].subject.contains("db is unhealthy (http)"), "{}", mails[0].subject);
    wait_event(&bus, "notify.sent", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(mails_to(&smtp.maildir, &to).len(), 1, "exactly once");
    let all = stored_events(&bus).await;
    let failed = all.iter().filter(|e| e.event_type() == "notify.failed").count();
    assert_eq!(failed, 1, "one notify.failed for the outage, not one per attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_failures_is_one_mail() {
    let bus = TestBus::new("burst").await;
    let to = unique_address("burst");
    let maildir = testbed_maildir();
    let _notifier = Proc::service(
        "steward-notifier",
        &bus,
        &with(testbed_notifier_env(&to), &[("STEWARD_NOTIFY_GROUP_WINDOW", "3s")]),
    );
    for i in 0..10 {
        bus.publish(&health_failed(&format!("app{i}"))).await.expect("publish");
    }
    let mails = wait_mails(&maildir, &to, 1, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mails_now = mails_to(&maildir, &to);
    assert_eq!(mails_now.len(), 1, "{mails_now:#?}");
    assert!(
        mails[0].subject.contains("10 unhealthy: app0, app1, app2 and 7 more"),
        "{}",
        mails[0].subject
    );
    for i in 0..10 {
        assert!(mails[0].text.contains(&format!("app{i} is unhealthy")), "{}", mails[0].text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_mail_is_given_up_after_its_retry_bound() {
    let bus = TestBus::new("giveup").await;
    let to = unique_address("giveup");
    let nothing_listens = format!("127.0.0.1:{}", free_port());
    let _notifier = Proc::service(
        "steward-notifier",
        &bus,
        &with(notifier_env(&nothing_listens, &to), &[("STEWARD_NOTIFY_RETRY_FOR", "3s")]),
    );
    let cause = health_failed("web");
    bus.publish(&cause).await.expect("publish");
    let failures = wait_for("gave up", Duration::from_secs(30), || {
        let all = futures_lite_block(stored_events(&bus));
        let failures: Vec<_> = all
            .into_iter()
            .filter_map(|e| match e.data {
                EventData::NotifyFailed(f) => Some(f),
                _ => None,
            })
            .collect();
        failures.iter().any(|f| f.gave_up).then_some(failures)
    });
    assert_eq!(failures.len(), 2, "first failure and giving up: {failures:?}");
    assert!(failures[1].attempts >= 2 && failures[1].about == vec![cause.id], "{failures:?}");
}

/// Runs a future to completion from a sync closure inside the multi-thread runtime.
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_the_same_notification_as_json() {
    let bus = TestBus::new("webhook").await;
    let to = unique_address("webhook");
    let (hook, received) = webhook_sink().await;
    let settings = with(testbed_notifier_env(&to), &[("STEWARD_WEBHOOK_URL", hook.as_str())]);
    let _notifier = Proc::service("steward-notifier", &bus, &settings);
    let cause = Event::new(
        "steward-backup/test",
        steward_events::RestoreFailed {
            backup_id: "20261123T020000Z-abcdef".into(),
            reason: "pg_restore exited with 1".into(),
            log_tail: vec!["pg_restore: error: could not execute query".into()],
            safety_backup_id: None,
            from: None,
        },
    );
    bus.publish(&cause).await.expect("publish");
    let body = wait_for("webhook call", Duration::from_secs(20), || {
        received.lock().expect("lock").first().cloned()
    });
    assert!(
        body["title"]
            .as_str()
            .is_some_and(|t| t.contains("Restore of backup 20261123T020000Z-abcdef failed")),
        "{body}"
    );
    assert_eq!(body["items"][0]["kind"], "restore.failed");
    assert_eq!(body["items"][0]["log_tail"][0], "pg_restore: error: could not execute query");
    assert!(body["text"].as_str().is_some_and(|t| t.contains("What to do")), "{body}");
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(20));
    assert_eq!(mails[0].subject, body["title"].as_str().unwrap_or_default());
    wait_for("two notify.sent", Duration::from_secs(10), || {
        let n = futures_lite_block(stored_events(&bus))
            .iter()
            .filter(|e| e.event_type() == "notify.sent")
            .count();
        (n == 2).then_some(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received.lock().expect("lock").len(), 1, "once");

    // An approval request goes to the webhook without a link (a chat channel is read by more
    // people than the operator's inbox), even an old event that still carries one.
    let old_pending = Event::new(
        "steward-updater/test",
        steward_events::UpdatePending {
            update_id: uuid::Uuid::now_v7(),
            container: "gitea".into(),
            image: "gitea/gitea:1.22".into(),
            current_digest: steward_events::Digest::parse(&format!("sha256:{}", "a".repeat(64)))
                .expect("digest"),
            new_digest: steward_events::Digest::parse(&format!("sha256:{}", "b".repeat(64)))
                .expect("digest"),
            new_tag: None,
            approval_url: Some("https://steward.test/approve/live-token".into()),
            expires_at: Some(time::OffsetDateTime::now_utc() + Duration::from_secs(3600)),
            runs: None,
            versions: Default::default(),
            reminder: false,
        },
    );
    bus.publish(&old_pending).await.expect("publish");
    let hooked = wait_for("the approval request's webhook call", Duration::from_secs(20), || {
        received.lock().expect("lock").get(1).cloned()
    });
    assert_eq!(hooked["items"][0]["kind"], "update.pending", "{hooked}");
    assert!(hooked["items"][0]["approval_url"].is_null(), "{hooked}");
    assert!(!hooked.to_string().contains("live-token"), "a link in the webhook: {hooked}");
    assert!(hooked["text"].as_str().is_some_and(|t| t.contains("steward approve")), "{hooked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_delivery_lets_it_finish_before_the_notifier_exits() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let bus = TestBus::new("sigterm").await;
    // The webhook takes two seconds to answer: SIGTERM arrives while the delivery is under way.
    let arrived = Arc::new(AtomicBool::new(false));
    let seen = arrived.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let settings = vec![
        ("STEWARD_WEBHOOK_URL", format!("http://127.0.0.1:{port}/hook")),
        ("STEWARD_NOTIFY_GROUP_WINDOW", "0s".to_owned()),
        ("STEWARD_SHUTDOWN_GRACE", "10s".to_owned()),
    ];
    let mut notifier = Proc::service("steward-notifier", &bus, &settings);
    let cause = health_failed("web");
    bus.publish(&cause).await.expect("publish");
    wait_for("webhook call", Duration::from_secs(20), || {
        arrived.load(Ordering::SeqCst).then_some(())
    });

    let code = tokio::task::block_in_place(|| notifier.terminate(Duration::from_secs(15)));
    assert_eq!(code, Some(0), "{}", notifier.logs());
    let sent = stored_events(&bus).await.into_iter().any(|e| match e.data {
        EventData::NotifySent(s) => s.about == vec![cause.id],
        _ => false,
    });
    assert!(sent, "the delivery in progress finished and was recorded: {}", notifier.logs());
}

/// Issue 26: `steward notify test` sends a test through every configured channel at once (no
/// group window) and prints what each answered; a channel that cannot deliver makes it fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steward_notify_test_goes_through_every_channel_and_says_which_failed() {
    let bus = TestBus::new("notifytest").await;
    let to = unique_address("notifytest");
    let (hook, received) = webhook_sink().await;
    // A long group window: the test must not wait for it.
    let settings = with(
        testbed_notifier_env(&to),
        &[("STEWARD_WEBHOOK_URL", hook.as_str()), ("STEWARD_NOTIFY_GROUP_WINDOW", "10m")],
    );
    let notifier = Proc::service("steward-notifier", &bus, &settings);
    let started = std::time::Instant::now();
    let out = steward_system_tests::steward(&bus, &["notify", "test", "--wait", "30s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("email: sent to {to}")), "{text}");
    assert!(text.contains("webhook: sent to http://127.0.0.1"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(25), "it waited for the group window");
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(10));
    assert!(mails[0].subject.contains("Test notification"), "{}", mails[0].subject);
    assert!(mails[0].text.contains("steward notify test"), "{}", mails[0].text);
    let hooked = received.lock().expect("lock").first().cloned().expect("webhook called");
    assert_eq!(hooked["items"][0]["kind"], "notify.test_requested", "{hooked}");
    drop(notifier);

    // SMTP down: the mail channel says so, the command fails; the webhook still works.
    let bus = TestBus::new("notifytestdown").await;
    let smtp = SmtpServer::stopped();
    let settings = with(notifier_env(&smtp.addr(), &to), &[("STEWARD_WEBHOOK_URL", hook.as_str())]);
    let _notifier = Proc::service("steward-notifier", &bus, &settings);
    let out = steward_system_tests::steward(&bus, &["notify", "test", "--wait", "30s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("email: FAILED"), "{text}");
    assert!(text.contains("webhook: sent to"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not deliver"), "{out:?}");
}

/// `date` with a GNU offset, as `HH:MM` (the host's time, like the notifier's).
fn local_time(offset: &str) -> String {
    let out = Command::new("date").args(["-d", offset, "+%H:%M"]).output().expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Issue 19: during quiet hours only critical notifications go out (and a test someone asked
/// for); the others stay queued for the digest when the quiet hours end. Critical mail says
/// so in its subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_all_but_critical_notifications() {
    let bus = TestBus::new("quiet").await;
    let to = unique_address("quiet");
    // Quiet from an hour ago to an hour from now: now.
    let quiet = format!("{}-{}", local_time("-1 hour"), local_time("+1 hour"));
    let settings = with(
        testbed_notifier_env(&to),
        &[("STEWARD_NOTIFY_QUIET", quiet.as_str()), ("STEWARD_NOTIFY_GROUP_WINDOW", "1s")],
    );
    let _notifier = Proc::service("steward-notifier", &bus, &settings);
    let recovered = Event::new(
        "steward-health/test",
        steward_events::HealthRecovered { container: "web".into(), down_for_ms: 60_000 },
    );
    bus.publish(&recovered).await.expect("publish");
    bus.publish(&health_failed("db")).await.expect("publish");

    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(20));
    assert!(mails[0].subject.contains("CRITICAL") && mails[0].subject.contains("db"), "{mails:#?}");
    // The info one waits for the end of the quiet hours; a test goes through.
    let out = steward_system_tests::steward(&bus, &["notify", "test", "--wait", "30s"]);
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = mails_to(&testbed_maildir(), &to);
    let subjects: Vec<&str> = mails.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(mails.len(), 2, "{subjects:?}");
    assert!(!subjects.iter().any(|s| s.contains("web recovered")), "{subjects:?}");
    let sent = stored_events(&bus).await;
    let sent = sent.iter().filter(|e| e.event_type() == "notify.sent").count();
    assert_eq!(sent, 2);
}

/// NATS itself down longer than `STEWARD_NOTIFY_BUS_DOWN_AFTER`: the notifier mails directly
/// (its outbox lives in NATS), once, and once more when NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_past_the_bound_is_mailed_directly_once_and_its_return_once() {
    let mut nats = steward_testkit::NatsServer::start();
    let bus = TestBus::with_config(steward_testkit::bus_config(&nats.url(), "busdown")).await;
    let to = unique_address("busdown");
    let maildir = testbed_maildir();
    let _notifier = Proc::service(
        "steward-notifier",
        &bus,
        &with(testbed_notifier_env(&to), &[("STEWARD_NOTIFY_BUS_DOWN_AFTER", "2s")]),
    );
    nats.kill();
    let mails = wait_mails(&maildir, &to, 1, Duration::from_secs(30));
    assert!(mails[0].subject.contains("CRITICAL"), "{}", mails[0].subject);
    assert!(mails[0].subject.contains("cannot reach NATS"), "{}", mails[0].subject);
    assert!(mails[0].text.contains(&nats.url()), "names the server: {}", mails[0].text);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(mails_to(&maildir, &to).len(), 1, "told once per outage");

    nats.start_again();
    let mails = wait_mails(&maildir, &to, 2, Duration::from_secs(30));
    assert!(mails[1].subject.contains("reaches NATS again"), "{}", mails[1].subject);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mails_to(&maildir, &to).len(), 2, "and its return once");
}

/// Issue 19: a `steward rollback`'s outcome (`update.succeeded` with `kind: rollback`) is
/// mailed as a rollback, naming who asked for it and what happens next, not as "update done".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_mailed_as_a_rollback_naming_who_asked() {
    let bus = TestBus::new("rbmail").await;
    let to = unique_address("rbmail");
    let _notifier = Proc::service("steward-notifier", &bus, &testbed_notifier_env(&to));
    let container = unique_name("rbapp");
    let digest = |c: char| {
        steward_events::Digest::parse(&format!("sha256:{}", c.to_string().repeat(64)))
            .expect("digest")
    };
    let done = Event::new(
        "steward-updater/test",
        steward_events::UpdateSucceeded {
            update_id: uuid::Uuid::now_v7(),
            container: container.clone(),
            image: "127.0.0.1:5000/steward-test/app:v1".into(),
            from_digest: digest('b'),
            to_digest: digest('a'),
            duration_ms: 4200,
            approved_by: None,
            kind: steward_events::UpdateKind::Rollback,
            requested_by: Some("alice@host".into()),
        },
    );
    bus.publish(&done).await.expect("publish");
    let mails = wait_mails(&testbed_maildir(), &to, 1, Duration::from_secs(20));
    let m = &mails[0];
    assert!(
        m.subject.contains(&format!("Rolled back {container} to "))
            && m.subject.ends_with(", requested by alice@host"),
        "{}",
        m.subject
    );
    assert!(!m.subject.contains("updated"), "{}", m.subject);
    assert!(m.text.contains("Requested by: alice@host"), "{}", m.text);
    assert!(m.text.contains("The rolled-back digest is not offered again"), "{}", m.text);
}
