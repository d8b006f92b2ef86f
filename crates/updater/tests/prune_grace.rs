//! The old-image cleanup waits until the update has stood for `STEWARD_PRUNE_GRACE`, against
//! the real Docker engine, the test bed's registry and NATS: nothing goes within the grace
//! (neither after the update nor by the daily cleanup), a restart of the container starts its
//! grace again, and the cleanup the update started removes the old image once it has passed.

mod common;

use common::*;

use std::time::{Duration, Instant};

use steward_testkit::docker::{build_and_push, docker, try_docker};
use steward_testkit::{unique_name, TestBus};

const AUTOMATIC: [&str; 3] =
    ["steward.enable=true", "steward.update.policy=automatic", "steward.update.backup=false"];

fn present(reference: &str) -> bool {
    try_docker(&["image", "inspect", reference]).is_some()
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_images_go_only_once_the_update_has_stood_for_the_grace_a_restart_counts_again() {
    let bus = TestBus::new("prunegrace").await;
    let grace = Duration::from_secs(8);
    let flow = flow_with(&bus, |cfg| {
        cfg.keep_images = 1;
        cfg.prune_grace = grace;
    })
    .await;
    let app = app(&AUTOMATIC);
    let repo = app.image.rsplit_once(':').map(|(r, _)| r.to_owned()).expect("repo:tag");
    // Labels unique to the run: a cached build would share its image with another test's.
    let run = unique_name("build");
    let old = build_and_push(
        &app.image,
        &format!("FROM steward-test/app:v2\nLABEL steward.test.build={run}-old\n"),
    );
    // The engine's build time is in seconds: the newer one must be newer.
    std::thread::sleep(Duration::from_millis(1100));
    let new = build_and_push(
        &app.image,
        &format!("FROM steward-test/app:v2\nLABEL steward.test.build={run}-new\n"),
    );
    let (old_ref, new_ref, v1_ref) =
        (format!("{repo}@{old}"), format!("{repo}@{new}"), format!("{repo}@{}", app.v1));

    let (event, u) = image_updated(&bus, &app, &new).await;
    Box::pin(flow.on_image_updated(&event, &u)).await.expect("update");
    let updated = Instant::now();
    // Within the grace: the daily cleanup leaves the repository alone.
    assert!(flow.prune(None).await.expect("prune").is_empty());
    assert!(present(&old_ref), "removed within the grace");

    // Restarted within the grace: its clock starts again.
    sleep_until(updated + Duration::from_secs(3)).await;
    docker(&["restart", "-t", "1", &app.name]);
    sleep_until(updated + grace + Duration::from_secs(1)).await;
    assert!(flow.prune(None).await.expect("prune").is_empty(), "restarted within the grace");
    assert!(present(&old_ref), "removed within the restarted container's grace");
    assert!(!types(&events(&bus).await).contains(&"image.pruned"));

    // The cleanup the update started waits for the restarted container's grace, then runs.
    let started = Instant::now();
    let pruned = loop {
        let all = events(&bus).await;
        if let Some(e) = all.iter().find(|e| e.event_type() == "image.pruned") {
            break e.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no image.pruned: {all:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let steward_events::EventData::ImagePruned(p) = &pruned.data else { unreachable!() };
    assert_eq!((p.repository.as_str(), p.container.as_deref()), (repo.as_str(), Some(&*app.name)));
    assert!(p.images.iter().any(|i| i.repo_digests.contains(&old_ref)), "{p:?}");
    assert!(!present(&old_ref), "the old image stays");
    assert!(present(&new_ref) && present(&v1_ref), "the running one or the rollback's went");
    // Once: the daily cleanup finds nothing more, and no second event comes.
    assert!(flow.prune(None).await.expect("prune again").is_empty());
    let all = events(&bus).await;
    assert_eq!(types(&all).iter().filter(|t| **t == "image.pruned").count(), 1, "{all:?}");
}
