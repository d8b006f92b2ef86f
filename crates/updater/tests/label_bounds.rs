//! An absurd `steward.update.min_age` (issue 17, item 7): it used to panic in the date
//! arithmetic, so the event was dead-lettered and the update silently never happened. Now the
//! label is refused with its bound and the updater's bad-label path handles the event.

mod common;

use common::*;

use steward_testkit::docker::push_app;
use steward_testkit::{http_get, TestBus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_minimum_age_is_a_bad_label_not_a_panic() {
    let bus = TestBus::new("updabsurdage").await;
    let app = app(&[
        "steward.update.policy=automatic",
        "steward.update.backup=false",
        "steward.update.min_age=1000000y",
    ]);
    let v2 = push_app("v2", &app.image);
    let flow = flow(&bus).await;
    let (event, u) = image_updated(&bus, &app, &v2).await;
    flow.on_image_updated(&event, &u).await.expect("handled, not a panic");

    assert!(flow.records.get(&app.name).await.expect("get").is_none(), "no update claimed");
    assert_eq!(types(&events(&bus).await), ["image.updated"]);
    assert!(http_get(app.port).is_some_and(|b| b.contains("app v1")), "nothing changed");
}
