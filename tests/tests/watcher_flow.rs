//! The real `steward-watcher` binary: `steward check` makes it compare a running container
//! with the registry; the resulting `image.updated` belongs to the request's flow, and
//! `steward status` shows what the watcher knows.

use std::time::{Duration, Instant};

use steward_bus::ReplayQuery;
use steward_events::EventData;
use steward_system_tests::{steward_ok as steward, Proc};
use steward_testkit::docker::{push_app, registry, Container, ImageTag};
use steward_testkit::{unique_name, TestBus};

#[tokio::test]
async fn steward_check_finds_the_newer_image_and_status_shows_it() {
    let bus = TestBus::new("watchflow").await;
    let scope = unique_name("scope");
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/flow"));
    let _tag = ImageTag(image.clone());
    push_app("v1", &image);
    let name = unique_name("flow");
    let scope_label = format!("steward.scope={scope}");
    let _c = Container::run(
        &name,
        &[
            "--label",
            "steward.enable=true",
            "--label",
            "steward.update.policy=manual",
            "--label",
            &scope_label,
            &image,
        ],
    );
    let v2 = push_app("v2", &image);

    let mut watcher = Proc::service("steward-watcher", &bus, &[("STEWARD_SCOPE", scope.clone())]);

    let out = steward(&bus, &["check"]);
    let request: uuid::Uuid = out
        .trim()
        .trim_end_matches(')')
        .rsplit('(')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id in {out:?}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let update = loop {
        let query = ReplayQuery { subjects: vec!["image.updated".into()], ..Default::default() };
        let mut replay = bus.replay(query).await.expect("replay");
        if let Some(item) = replay.next().await {
            break item.expect("item").event.expect("event");
        }
        assert!(Instant::now() < deadline, "no image.updated: {}", watcher.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(update.causation_id, Some(request));
    assert_eq!(update.correlation_id, request, "the check's flow");
    let EventData::ImageUpdated(u) = update.data else { panic!("not image.updated") };
    assert_eq!((u.container.as_str(), u.new_digest.as_str()), (name.as_str(), v2.as_str()));

    let table = steward(&bus, &["status"]);
    let row = table.lines().find(|l| l.starts_with(&name)).unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("manual") && row.contains("update available") && row.contains(&v2[7..19]),
        "{row}"
    );
    let json = steward(&bus, &["status", "--json"]);
    let record: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a line")).expect("json");
    assert_eq!(record["reported_digest"].as_str(), Some(v2.as_str()));

    assert_eq!(watcher.terminate(Duration::from_secs(10)), Some(0));
}
