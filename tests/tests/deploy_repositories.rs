//! One deployer following two git repositories (issue 21, "one or more repositories"): each
//! served by its own `git daemon` on 127.0.0.1, each with a `dev` branch, the second with its
//! compose file in a directory and deployed to an environment of its own. A push to one
//! deploys only that repository's project; polling finds each repository's heads, and one
//! repository that cannot be reached delays only its own environment; a deployer killed twice
//! during the second repository's deployment rolls back that project from that repository's
//! files, the first one untouched.

mod deploy_common;

use deploy_common::*;

/// The second repository: environment `two` from its `dev` branch, compose file in `deploy/`.
fn second() -> Repo {
    let mut repo = Repo::new();
    repo.environment = "two".into();
    repo.compose_path = "deploy/compose.yml".into();
    repo
}

/// The deployer's settings for both: `a` is `STEWARD_DEPLOY_REPOSITORY`, `b` in the list.
fn env_of(
    bus: &Bus,
    a: &Repo,
    b: &Repo,
    port: u16,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut all = vec![
        ("STEWARD_DEPLOY_REPOSITORIES", format!("{}={}#{}", b.project, b.url, b.compose_path)),
        ("STEWARD_DEPLOY_ENVIRONMENTS", format!("dev=dev,two=dev@{}", b.project)),
    ];
    all.extend(extra.iter().cloned());
    a.env(bus, port, &all)
}

/// Pushes `commit` of `repo`'s `dev` branch by a signed webhook; the answer.
async fn hook(repo: &Repo, port: u16, commit: &str) -> (u16, String) {
    let body = push_body(repo, "dev", commit, "a push");
    post(port, &body, Some(&sign(&body, SECRET))).await
}

fn environment_of(flow: &[Event]) -> String {
    flow.iter()
        .find_map(|e| match &e.data {
            EventData::DeploySucceeded(d) => Some(d.change.environment.clone()),
            EventData::DeployRolledBack(d) => Some(d.change.environment.clone()),
            EventData::DeployFailed(d) => Some(d.change.environment.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_either_repository_deploys_only_its_project_and_polling_follows_both() {
    let bus = TestBus::new("deployrepos").await;
    let (mut a, b) = (Repo::new(), second());
    let port = free_port();
    let deployer1 = deployer(&env_of(&bus, &a, &b, port, &[]));

    // Each repository's first commit, each by its own webhook.
    let a1 = a.commit("dev", "v1", "a: first");
    assert_eq!(hook(&a, port, &a1).await.0, 202);
    let flow = outcome(&bus, &a1, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert_eq!(environment_of(&flow), "dev");
    let b1 = b.commit("dev", "v1", "b: first");
    let (status, text) = hook(&b, port, &b1).await;
    assert_eq!(status, 202, "{text}");
    let flow = outcome(&bus, &b1, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert_eq!(environment_of(&flow), "two");
    wait_for("both serve v1", Duration::from_secs(10), || {
        (serves(a.web, "v1") && serves(b.web, "v1")).then_some(())
    });
    // The second project was made from its own file, in its own directory of the checkout.
    let dir = steward_testkit::docker::docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"com.docker.compose.project.working_dir\"}}",
        &b.container("web").expect("b's web"),
    ]);
    assert!(dir.trim().ends_with("/two/deploy"), "{dir}");
    let a_web = a.container("web").expect("a's web");

    // A push naming a repository the deployer does not follow: refused, nothing published.
    let stranger = Repo::new();
    let (status, _) = hook(&stranger, port, &a1).await;
    assert_eq!(status, 422);
    drop(stranger);

    // Polling (every 2 s) finds b's new head; a is not touched.
    drop(deployer1);
    let poll = [("STEWARD_DEPLOY_POLL_INTERVAL", "2s".to_owned())];
    let deployer2 = deployer(&env_of(&bus, &a, &b, port, &poll));
    let b2 = b.commit("dev", "v2", "b: v2");
    let flow = outcome(&bus, &b2, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert_eq!(environment_of(&flow), "two");
    assert!(serves(b.web, "v2") && serves(a.web, "v1"));
    assert_eq!(a.container("web").as_deref(), Some(a_web.as_str()), "a's web was recreated");

    // a's server gone (a is asked first): b's new head is still found and deployed.
    let _ = a.daemon.kill();
    let _ = a.daemon.wait();
    let b3 = b.commit_noted("dev", "v2", "b: a note", "only a comment");
    let flow = outcome(&bus, &b3, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(a.web, "v1") && serves(b.web, "v2"));
    // The round that found b's head may have asked a before its server went (CI, 2026-12-05):
    // a's failure is told by the next round at the latest.
    wait_for("a's failure told", Duration::from_secs(20), || {
        deployer2.logs().contains("polling the repository failed").then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_in_the_second_repositorys_deployment_it_rolls_back_that_project_only() {
    let bus = TestBus::new("deployreposkill").await;
    let (a, b) = (Repo::new(), second());
    let port = free_port();
    {
        let _clean = deployer(&env_of(&bus, &a, &b, port, &[]));
        for repo in [&a, &b] {
            let commit = repo.commit("dev", "v1", "first");
            assert_eq!(hook(repo, port, &commit).await.0, 202);
            let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
            assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
        }
    }
    let a_web = a.container("web").expect("a's web");

    // b's v3 never gets healthy (the test app's v3); the deployer dies after its `up`, then
    // again as it starts the rollback; the third one concludes.
    let first_kill = env_of(&bus, &a, &b, port, &[("STEWARD_FAILPOINTS", "applied".into())]);
    let mut armed = deployer(&first_kill);
    let b3 = b.commit("dev", "v3", "b: v3");
    assert_eq!(hook(&b, port, &b3).await.0, 202);
    assert!(armed.exits_within(Duration::from_secs(120)), "applied: {}", armed.logs());
    assert!(armed.logs().contains("aborting"), "{}", armed.logs());
    drop(armed);
    // It drives the rollback on as it starts, before it consumes: not waited for.
    let second_kill = env_of(&bus, &a, &b, port, &[("STEWARD_FAILPOINTS", "rollback".into())]);
    let mut armed = Proc::start("steward-deployer", &second_kill);
    assert!(armed.exits_within(Duration::from_secs(120)), "rollback: {}", armed.logs());
    drop(armed);
    let _again = deployer(&env_of(&bus, &a, &b, port, &[]));
    let flow = outcome(&bus, &b3, Duration::from_secs(180)).await;
    let flow = settled_flow(&bus, flow[0].correlation_id).await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    assert_eq!(environment_of(&flow), "two");
    wait_for("b back on v1", Duration::from_secs(20), || serves(b.web, "v1").then_some(()));
    assert!(serves(a.web, "v1"));
    assert_eq!(a.container("web").as_deref(), Some(a_web.as_str()), "a's web was touched");
}
