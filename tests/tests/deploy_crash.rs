//! The deployer's kill matrix (`docs/reliability.md`): v1 deployed cleanly, then v2 pushed to
//! a deployer that aborts (SIGABRT through failpoints, no destructor, no flush) at one point of
//! its flow, then started again: exactly one terminal event for v2, no event twice, and web on
//! v2 after a success, on v1 after a rollback or failure ([`deploy_common::killed_at`]).
//!
//! CI runs a sample of points (about 20 s) that `deploy_flow.rs`'s named kill tests do not
//! cover; `STEWARD_CRASH_POINTS=all` first lists every point a clean deployment of v2 passes,
//! then kills at each (one run each, about 15 s a run), printing one line per run for the
//! matrix (`--nocapture`).

mod deploy_common;

use deploy_common::*;
use steward_system_tests::failpoints_passed;

/// Points `deploy_flow.rs` does not kill at, for CI.
const SAMPLE: [&str; 1] = ["saved:gating=1"];

/// Every point (`NAME=N`) a deployer passes deploying v2 over v1, as [`killed_at`] arms it.
async fn points() -> Vec<String> {
    let bus = TestBus::new("deploypts").await;
    let repo = Repo::new();
    let port = free_port();
    deploy_v1_cleanly(&bus, &repo, port).await;
    // Armed at a point that does not exist: every point passed is logged.
    let listing = deployer(&repo.env(&bus, port, &[("STEWARD_FAILPOINTS", "none".into())]));
    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v2", "web: v2").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"]);
    let points = failpoints_passed(&listing.logs());
    assert!(points.len() >= 5, "too few points logged: {points:?}");
    points
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_each_point_of_a_deployment_it_ends_once() {
    let points = if std::env::var("STEWARD_CRASH_POINTS").as_deref() == Ok("all") {
        points().await
    } else {
        SAMPLE.iter().map(|p| (*p).to_owned()).collect()
    };
    eprintln!("deployer: {} runs: {points:?}", points.len());
    for point in &points {
        let end = killed_at(point).await;
        eprintln!("crash-matrix: deployer {point} -> {end}");
    }
}
