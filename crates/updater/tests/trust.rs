//! The updater's side of its trust boundaries (issue 17), against the real engine, registry
//! and NATS: an approval goes through the same gate as an automatic update.

mod common;

use std::time::Duration;

use common::*;
use steward_events::records::UpdateStep;
use steward_events::UpdateApproved;
use steward_testkit::docker::push_app;
use steward_testkit::{http_get, TestBus};

/// A one-hour window starting `hours` from now (host time zone), as the label wants it.
fn window_in(hours: i64) -> String {
    let from = chrono::Local::now().naive_local() + chrono::Duration::hours(hours);
    let to = from + chrono::Duration::hours(1);
    format!("steward.update.window={}-{}", from.format("%H:%M"), to.format("%H:%M"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_waits_for_the_maintenance_window_like_an_automatic_update() {
    let bus = TestBus::new("trustwindow").await;
    let closed = window_in(6);
    let app = app(&["steward.update.policy=manual", "steward.update.backup=false", &closed]);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("pending");
    // The mail says when an approval would run.
    let pending = pending(&bus).await;
    assert!(
        pending.runs.as_deref().is_some_and(|r| r.contains("maintenance window opens")),
        "{:?}",
        pending.runs
    );

    let update_id =
        flow.records.get(&app.name).await.expect("get").expect("record").value.update_id;
    flow.on_approved(&UpdateApproved { update_id, by: "ops@host".into() }).await.expect("approve");
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(record.step, UpdateStep::Deferred, "approved, not started");
    assert_eq!(record.approved_by.as_deref(), Some("ops@host"));
    assert!(record.reason.as_deref().is_some_and(|r| r.contains("maintenance window")));
    flow.sweep().await.expect("sweep");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "nothing before the window");
    assert!(!types(&events(&bus).await).contains(&"update.started"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_naming_another_repository_than_the_containers_is_ignored() {
    let bus = TestBus::new("trustrepo").await;
    let app = app(&["steward.update.policy=automatic", "steward.update.backup=false"]);
    let flow = flow(&bus).await;
    // Another repository in the same registry, with a digest that exists there.
    let other = format!(
        "{}/{}:1.0",
        steward_testkit::docker::registry(),
        steward_testkit::unique_name("steward-test/evil")
    );
    let _other_tag = steward_testkit::docker::ImageTag(other.clone());
    let evil = push_app("v2", &other);
    let (event, mut u) = image_updated(&bus, &app, &evil).await;
    u.image = other.clone();
    flow.on_image_updated(&event, &u).await.expect("ignored");
    assert!(flow.records.get(&app.name).await.expect("get").is_none(), "not even claimed");
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")));
    assert_eq!(
        steward_testkit::docker::docker(&["inspect", "-f", "{{.Config.Image}}", &app.name]),
        app.image
    );
}

/// Issue 17, finding 4: the live approval link is not in the stream; the updater gives it,
/// on request, only for an update that still waits for a decision, before its expiry, and
/// never for a used link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_link_is_given_only_while_its_update_waits_for_a_decision() {
    use steward_approval::links::ApprovalLinks;
    use steward_approval::UsedLinks;
    use steward_bus::approval::LinkReply;
    use steward_events::UpdateRejected;
    use steward_updater::link_server::answer;
    use time::OffsetDateTime;

    let bus = TestBus::new("trustlink").await;
    let app = app(&["steward.update.policy=manual", "steward.update.backup=false"]);
    let v2 = push_app("v2", &app.image);
    let links = ApprovalLinks::new(
        steward_approval::LinkKind::Update,
        "https://steward.test",
        &[9u8; 32],
        Duration::from_secs(3600),
    );
    let flow = flow_with_links(&bus, Some(links.clone())).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("pending");

    let pending = pending(&bus).await;
    assert_eq!(pending.approval_url, None, "a live token in the stream");
    let record = flow.records.get(&app.name).await.expect("get").expect("record").value;
    let expires = record.approval_expires.expect("the record keeps the expiry");
    assert_eq!(pending.expires_at, Some(expires));
    assert!(!serde_json::to_string(&record).expect("json").contains("/approve/"));

    let used = UsedLinks::open(&bus, steward_approval::LinkKind::Update).await.expect("bucket");
    let now = OffsetDateTime::now_utc();
    let id = pending.update_id;
    let LinkReply::Link { url, expires_at } = answer(&flow, &links, &used, id, now).await else {
        panic!("no link for a pending update")
    };
    assert_eq!(expires_at, expires);
    let token = steward_approval::links::token_of(&url).expect("token");
    assert_eq!(links.verify(token, now), Ok(id), "the link approves this update");
    // The same link each time: nothing to store.
    assert_eq!(answer(&flow, &links, &used, id, now).await, LinkReply::Link { url, expires_at });

    let refused = |r: LinkReply, why: &str| match r {
        LinkReply::Unavailable { reason } => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected no link ({why}), got {other:?}"),
    };
    refused(answer(&flow, &links, &used, uuid::Uuid::now_v7(), now).await, "not known");
    let later = expires + Duration::from_secs(1);
    refused(answer(&flow, &links, &used, id, later).await, "expired");
    assert!(used.claim(id, "approve", now).await.expect("use"), "claimed");
    refused(answer(&flow, &links, &used, id, now).await, "already used");
    used.release(id).await.expect("release");
    flow.on_rejected(&UpdateRejected { update_id: id, by: "ops@host".into(), reason: None })
        .await
        .expect("reject");
    refused(answer(&flow, &links, &used, id, now).await, "no longer waits");
}

/// Issue 26 (silence is an alarm): an update still pending when its approval link nears its
/// expiry is mailed again, once (however often the sweep, or a restarted updater, finds it),
/// and its link still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_update_near_its_links_expiry_is_reminded_once() {
    use steward_approval::links::ApprovalLinks;
    use time::OffsetDateTime;

    let bus = TestBus::new("trustremind").await;
    let app = app(&["steward.update.policy=manual", "steward.update.backup=false"]);
    let v2 = push_app("v2", &app.image);
    let links = ApprovalLinks::new(
        steward_approval::LinkKind::Update,
        "https://steward.test",
        &[7u8; 32],
        Duration::from_secs(3600),
    );
    let flow = flow_with_links(&bus, Some(links.clone())).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("pending");
    let reminders = |all: &[steward_events::Event]| {
        all.iter()
            .filter(
                |e| matches!(&e.data, steward_events::EventData::UpdatePending(p) if p.reminder),
            )
            .count()
    };
    flow.sweep().await.expect("sweep");
    assert_eq!(reminders(&events(&bus).await), 0, "a fresh link is not reminded");

    // Two hours pending, its link expiring within the hour (within a day, past halfway).
    let v = flow.records.get(&app.name).await.expect("get").expect("record");
    let mut record = v.value;
    record.started_at = OffsetDateTime::now_utc() - Duration::from_secs(2 * 3600);
    flow.records.update(&app.name, &record, v.revision).await.expect("age the record");
    flow.sweep().await.expect("sweep");
    flow.sweep().await.expect("sweep again");
    let restarted = flow_with_links(&bus, Some(links)).await;
    restarted.sweep().await.expect("a restarted updater's sweep");
    let all = events(&bus).await;
    assert_eq!(reminders(&all), 1, "reminded once: {:?}", types(&all));
    let reminder = all
        .iter()
        .find_map(|e| match &e.data {
            steward_events::EventData::UpdatePending(p) if p.reminder => Some((e, p.clone())),
            _ => None,
        })
        .expect("reminder");
    assert_eq!(reminder.1.update_id, record.update_id);
    assert_eq!(reminder.1.expires_at, record.approval_expires);
    assert_eq!(reminder.0.correlation_id, event.correlation_id, "in the update's flow");
    let now = flow.records.get(&app.name).await.expect("get").expect("record").value;
    assert_eq!(now.step, UpdateStep::Pending, "still waiting for a decision");
    assert!(now.approval_reminded && now.outbox.is_empty());
}
