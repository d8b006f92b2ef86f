//! The repository's own commands, run by the real deployer in throw-away containers of their
//! service (real Docker, NATS, `git daemon`; issue 21).
//!
//! The test (`steward.deploy.test`) runs before anything is touched. A failing test fails the
//! deployment with its output; one over `STEWARD_DEPLOY_TEST_TIMEOUT` is stopped and its
//! container removed; shell syntax in the label is refused; a passing one lets the
//! deployment go on.
//!
//! The pre-deployment commands (`steward.deploy.pre`, e.g. migrations) run with the new
//! definition before it starts, only for the services that change; a failing one rolls the
//! deployment back with the old version never stopped; a kill during one (and another as the
//! deployer starts again) rolls it back once, the command left running stopped first.

mod deploy_common;

use deploy_common::*;
use steward_system_tests::steward_ok;
use steward_testkit::docker::{docker, try_docker};

/// The `deploy.failed` of the flow that tried `commit`.
fn failed(flow: &[Event]) -> steward_events::DeployFailed {
    flow.iter()
        .find_map(|e| match &e.data {
            EventData::DeployFailed(f) => Some(f.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no deploy.failed: {flow:#?}"))
}

/// Commits v2 with `label` on web, pushes it, and waits for the deployment's outcome.
async fn try_label(bus: &Bus, repo: &Repo, port: u16, message: &str, label: &str) -> Vec<Event> {
    let commit = repo.commit_labelled("dev", "v2", message, "", label);
    push_commit(repo, port, &commit, message).await;
    outcome(bus, &commit, Duration::from_secs(180)).await
}

/// The containers left of the deployer's test runs in `repo`'s project.
fn test_containers(repo: &Repo) -> String {
    docker(&["ps", "-aq", "--filter", &format!("name={}-dev-steward-test", repo.project)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_fails_the_deployment_with_its_output_and_touches_nothing() {
    let bus = TestBus::new("deploytest").await;
    let repo = Repo::new();
    let port = free_port();
    // Room for a container's start on a loaded machine (4 s was not, in CI): the hanging
    // test below still runs past it.
    let extra = [("STEWARD_DEPLOY_TEST_TIMEOUT", "15s".to_owned())];
    let _deployer = deployer(&repo.env(&bus, port, &extra));
    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let web = repo.container("web").expect("web runs");
    let untouched = |what: &str| {
        assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "{what}: web touched");
        assert!(serves(repo.web, "v1"), "{what}: web not on v1");
        assert!(test_containers(&repo).trim().is_empty(), "{what}: a test container is left");
    };

    // A test that fails: deploy.failed with its command, exit code and output.
    let bad = "steward.deploy.test: ls /no-such-steward-test-file";
    let flow = try_label(&bus, &repo, port, "failing test", bad).await;
    assert_eq!(terminal(&flow), ["deploy.failed"], "{flow:#?}");
    let f = failed(&flow);
    assert!(
        f.reason.contains("ls /no-such-steward-test-file") && f.reason.contains("exited with"),
        "{f:?}"
    );
    assert!(f.log_tail.iter().any(|l| l.contains("no-such-steward-test-file")), "{f:?}");
    assert!(!flow.iter().any(|e| e.event_type() == "deploy.started"), "{flow:#?}");
    untouched("failing test");

    // A test that hangs: stopped at the bound, its container removed.
    let slow = "steward.deploy.test: sleep 60";
    let flow = try_label(&bus, &repo, port, "slow test", slow).await;
    let f = failed(&flow);
    assert!(f.reason.contains("did not finish within"), "{f:?}");
    untouched("slow test");

    // Shell syntax is refused, not run.
    let shell = "steward.deploy.test: touch /tmp/x; rm -rf /";
    let flow = try_label(&bus, &repo, port, "shell test", shell).await;
    let f = failed(&flow);
    assert!(f.reason.contains("steward.deploy.test") && f.reason.contains("no shell"), "{f:?}");
    untouched("shell test");

    // A test that passes: deployed.
    let good = "steward.deploy.test: cat /VERSION";
    let flow = try_label(&bus, &repo, port, "passing test", good).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v2"));
    assert!(test_containers(&repo).trim().is_empty(), "a test container is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_killed_during_the_test_removes_its_container_and_ends_the_deployment_once() {
    let bus = TestBus::new("deploytestkill").await;
    let repo = Repo::new();
    let port = free_port();
    deploy_v1_cleanly(&bus, &repo, port).await;
    let web = repo.container("web").expect("web runs");

    // Killed (SIGKILL) while the test runs: its container outlives the deployer.
    let killed = deployer(&repo.env(&bus, port, &[]));
    let commit =
        repo.commit_labelled("dev", "v2", "slow test", "", "steward.deploy.test: sleep 120");
    push_commit(&repo, port, &commit, "slow test").await;
    wait_for("the test container", Duration::from_secs(90), || {
        (!test_containers(&repo).trim().is_empty()).then_some(())
    });
    drop(killed);
    assert!(!test_containers(&repo).trim().is_empty(), "the kill took the test container");

    // Started again (a shorter bound): the left container is removed, the test runs again
    // once, times out, and the deployment ends once with nothing touched.
    let _again = deployer(&repo.env(&bus, port, &[("STEWARD_DEPLOY_TEST_TIMEOUT", "3s".into())]));
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    let flow = settled_flow(&bus, flow[0].correlation_id).await;
    assert_eq!(terminal(&flow), ["deploy.failed"], "{flow:#?}");
    assert!(failed(&flow).reason.contains("did not finish within"), "{flow:#?}");
    assert!(test_containers(&repo).trim().is_empty(), "a test container is left");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web touched");
    assert!(serves(repo.web, "v1"));
}

/// In an environment that needs an approval the test runs the commit's compose file only
/// once a human approved: a push alone (whose compose file could mount the host or run
/// privileged) starts no test container. Approved, the failing test fails the deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_environments_test_waits_for_the_approval() {
    let bus = TestBus::new("deploytestmanual").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned())];
    let _deployer = deployer(&repo.env(&bus, port, &extra));
    let c1 = push_version(&repo, port, "v1", "first").await;
    pending_of(&bus, &c1).await;
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    assert_eq!(terminal(&outcome(&bus, &c1, Duration::from_secs(180)).await), ["deploy.succeeded"]);

    let label = "steward.deploy.test: ls /no-such-steward-test-file";
    let commit = repo.commit_labelled("dev", "v2", "failing test", "", label);
    push_commit(&repo, port, &commit, "failing test").await;
    pending_of(&bus, &commit).await;
    assert!(
        !stored_events(&bus).await.iter().any(|e| matches!(&e.data,
            EventData::DeployFailed(f) if f.change.commit == commit)),
        "the test ran before the approval"
    );
    steward_ok(&bus, &["deploy", "approve", "dev"]);
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.failed"], "{flow:#?}");
    assert!(failed(&flow).reason.contains("ls /no-such-steward-test-file"), "{flow:#?}");
    assert!(!flow.iter().any(|e| e.event_type() == "deploy.started"), "{flow:#?}");
    assert!(test_containers(&repo).trim().is_empty(), "a test container is left");
    assert!(serves(repo.web, "v1"));
}

/// The pre-deployment tests' compose file: web on `version` and side on v1, both with the
/// project's volume `state` at /state (where the commands leave their marks), each with its
/// `steward.deploy.pre` when not empty.
fn with_state(repo: &Repo, version: &str, web_pre: &str, side_pre: &str) -> String {
    let pre = |p: &str| {
        if p.is_empty() {
            String::new()
        } else {
            format!("      steward.deploy.pre: {p}\n")
        }
    };
    format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: steward-test/app:{version}\n    ports: [\"127.0.0.1:{}:8080\"]\n    volumes: [\"state:/state\"]\n    labels:\n      steward.health.url: http://127.0.0.1:{}/\n{}  side:\n    image: steward-test/app:v1\n    ports: [\"127.0.0.1:{}:8080\"]\n    volumes: [\"state:/state\"]\n    labels:\n      steward.health.url: http://127.0.0.1:{}/\n{}volumes:\n  state: {{}}\n",
        repo.web,
        repo.web,
        pre(web_pre),
        repo.side,
        repo.side,
        pre(side_pre)
    )
}

/// A command in a throw-away container on `repo`'s volume `state`; its output.
fn in_state(repo: &Repo, args: &[&str]) -> String {
    let volume = format!("{}-dev_state:/state", repo.project);
    let mut all = vec!["run", "--rm", "-v", volume.as_str(), "steward-test/busybox:latest"];
    all.extend_from_slice(args);
    docker(&all)
}

/// The containers left of the deployer's pre-deployment commands in `repo`'s project.
fn pre_containers(repo: &Repo) -> String {
    docker(&["ps", "-aq", "--filter", &format!("name={}-dev-steward-pre", repo.project)])
}

/// The `deploy.rolled_back` of a flow.
fn rolled_back(flow: &[Event]) -> steward_events::DeployRolledBack {
    flow.iter()
        .find_map(|e| match &e.data {
            EventData::DeployRolledBack(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no deploy.rolled_back: {flow:#?}"))
}

/// Whether container `id` runs (one gone since it was listed does not: the previous step's
/// one-off, removed by `run --rm` meanwhile, failed a CI run here).
fn is_running(id: &str) -> bool {
    try_docker(&["inspect", "-f", "{{.State.Running}}", id]).is_some_and(|s| s.trim() == "true")
}

/// The container of `repo`'s pre-deployment command once it runs (not only created:
/// `docker-compose run` creates the container, then starts it).
fn pre_running(repo: &Repo) -> String {
    wait_for("the pre-deployment command running", Duration::from_secs(120), || {
        Some(pre_containers(repo).trim().to_owned()).filter(|id| !id.is_empty() && is_running(id))
    })
}

/// The `deploy.rolled_back` of `commit`'s deployment, once it settled with that one outcome
/// and one `deploy.started`.
async fn rolled_back_once(bus: &Bus, commit: &str) -> steward_events::DeployRolledBack {
    let flow = outcome(bus, commit, Duration::from_secs(180)).await;
    let flow = settled_flow(bus, flow[0].correlation_id).await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    let started = flow.iter().filter(|e| e.event_type() == "deploy.started").count();
    assert_eq!(started, 1, "{flow:#?}");
    rolled_back(&flow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_deployment_command_runs_with_the_new_definition_before_it_starts_only_for_changed_services(
) {
    let bus = TestBus::new("deploypre").await;
    let repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let deploy = |text: String, message: &'static str| {
        let commit = repo.commit_text("dev", &text, message);
        let (bus, repo) = (&bus, &repo);
        async move {
            push_commit(repo, port, &commit, message).await;
            outcome(bus, &commit, Duration::from_secs(180)).await
        }
    };
    let side_pre = "touch /state/side-migrated";

    // The first deployment: both services are new, both commands run, each with its own
    // service's definition (web's copies its image's version).
    let flow =
        deploy(with_state(&repo, "v1", "cp /VERSION /state/web-migrated", side_pre), "v1").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert_eq!(in_state(&repo, &["cat", "/state/web-migrated"]).trim(), "v1");
    assert!(in_state(&repo, &["ls", "/state"]).contains("side-migrated"));
    in_state(&repo, &["rm", "/state/side-migrated", "/state/web-migrated"]);
    let web = repo.container("web").expect("web runs");
    let side = repo.container("side").expect("side runs");

    // A failing command: rolled back, and the old web was never stopped (the new one never
    // started); side does not change, so its command does not run.
    let failing = with_state(&repo, "v2", "ls /no-such-migration", side_pre);
    let flow = deploy(failing, "failing migration").await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    let r = rolled_back(&flow);
    assert!(
        r.reason.contains("pre-deployment command `ls /no-such-migration` of service web")
            && r.reason.contains("exited with")
            && r.reason.contains("was not started"),
        "{r:?}"
    );
    assert!(r.log_tail.iter().any(|l| l.contains("no-such-migration")), "{r:?}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");
    assert!(serves(repo.web, "v1"), "web not on v1");
    assert_eq!(in_state(&repo, &["ls", "/state"]).trim(), "", "a command ran that should not");
    assert!(pre_containers(&repo).trim().is_empty(), "a pre-deployment container is left");

    // Shell syntax: refused before anything starts (no deploy.started, no backup).
    let shell = with_state(&repo, "v2", "migrate && rm -rf /", side_pre);
    let flow = deploy(shell, "shell migration").await;
    assert_eq!(terminal(&flow), ["deploy.failed"], "{flow:#?}");
    assert!(!flow.iter().any(|e| e.event_type() == "deploy.started"), "{flow:#?}");
    let f = failed(&flow);
    assert!(f.reason.contains("steward.deploy.pre") && f.reason.contains("no shell"), "{f:?}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");

    // A passing command, then v2 started; side untouched. The command asked the service
    // `web` on the project's network what it serves: v1, so it ran before v2 started.
    let seen = "wget -q -O /state/seen http://web:8080/";
    let flow = deploy(with_state(&repo, "v2", seen, side_pre), "migration").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert_eq!(in_state(&repo, &["cat", "/state/seen"]).trim(), "app v1", "ran after v2 started");
    assert!(serves(repo.web, "v2"), "web not on v2");
    assert!(!in_state(&repo, &["ls", "/state"]).contains("side-migrated"), "side's command ran");
    assert_eq!(repo.container("side").as_deref(), Some(side.as_str()), "side was touched");
    assert!(pre_containers(&repo).trim().is_empty(), "a pre-deployment container is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployer_killed_during_a_pre_deployment_command_stops_it_and_rolls_back_once() {
    let bus = TestBus::new("deployprekill").await;
    let repo = Repo::new();
    let port = free_port();
    {
        let _clean = deployer(&repo.env(&bus, port, &[]));
        let c1 = repo.commit_text("dev", &with_state(&repo, "v1", "", ""), "v1");
        push_commit(&repo, port, &c1, "v1").await;
        let flow = outcome(&bus, &c1, Duration::from_secs(180)).await;
        assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    }
    let web = repo.container("web").expect("web runs");

    // SIGKILLed while the command runs: its container outlives the deployer, still running.
    let killed = deployer(&repo.env(&bus, port, &[]));
    let slow = with_state(&repo, "v2", "sleep 600", "");
    let commit = repo.commit_text("dev", &slow, "slow migration");
    push_commit(&repo, port, &commit, "slow migration").await;
    let left = pre_running(&repo);
    drop(killed);
    assert!(is_running(&left), "the kill stopped the command");

    // Killed again once it began the rollback (its reason saved or not yet, the command's
    // container removed or not yet): nothing is lost, the deployment still ends once.
    let again = Proc::start("steward-deployer", &repo.env(&bus, port, &[]));
    wait_for("the second deployer rolling back", Duration::from_secs(120), || {
        again.logs().contains("rolling back").then_some(())
    });
    drop(again);

    // Started again: the interrupted deployment rolls back (the rule for a stop during the
    // apply), and the command still running against the old version is stopped first.
    let _last = deployer(&repo.env(&bus, port, &[]));
    let r = rolled_back_once(&bus, &commit).await;
    assert!(
        r.reason.contains("stopped during the deployment")
            && r.reason.contains("pre-deployment command of web was stopped"),
        "{r:?}"
    );
    assert!(pre_containers(&repo).trim().is_empty(), "the command still runs");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");
    assert!(serves(repo.web, "v1"), "web not on v1");
}

/// A stack started by hand in the environment's compose project and never deployed by
/// Steward (no deployed commit: a rollback has no previous commit to put back). Deployed for
/// the first time, a failing pre-deployment command, and a deployer killed during one, roll
/// back without touching those containers: the new version's `up` never began (before the
/// deployment saved that mark, both rollbacks removed web: the app down). A deployment that
/// did start its new version and fails its gate makes web again from the compose file it was
/// started with, and removes side, whose file was edited since (before: both removed); one
/// aborted between saving that its `up` begins and the `up` leaves both as they were, the
/// edited file notwithstanding.
/// `docker-compose ARGS` on the environment's project with `file`, as an operator would.
fn compose_by_hand(repo: &Repo, file: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("docker-compose")
        .arg("-p")
        .arg(repo.compose_project())
        .arg("-f")
        .arg(file)
        .args(args)
        .output()
        .expect("docker-compose");
    assert!(out.status.success(), "{args:?} by hand: {}", String::from_utf8_lossy(&out.stderr));
}

/// Starts `compose` by hand as the environment's project, from a directory of its own; the
/// compose file.
fn start_by_hand(repo: &Repo, compose: &str) -> std::path::PathBuf {
    let by_hand = repo.root.join("by-hand");
    std::fs::create_dir_all(&by_hand).expect("the hand-started project's directory");
    let file = by_hand.join("docker-compose.yml");
    std::fs::write(&file, compose).expect("its compose file");
    compose_by_hand(repo, &file, &["up", "-d"]);
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_deployments_rollback_puts_a_service_stopped_by_hand_back_stopped() {
    let bus = TestBus::new("deployprestopped").await;
    let repo = Repo::new();
    let port = free_port();
    let file = start_by_hand(&repo, &with_state(&repo, "v1", "", ""));
    compose_by_hand(&repo, &file, &["stop", "side"]);
    wait_for("web on v1", Duration::from_secs(60), || serves(repo.web, "v1").then_some(()));
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    // Both replaced (side's replacement started), web never healthy: rolled back.
    let (side_v1, side_v2) =
        ("  side:\n    image: steward-test/app:v1\n", "  side:\n    image: steward-test/app:v2\n");
    let broken = with_state(&repo, "v3", "", "").replace(side_v1, side_v2);
    let commit = repo.commit_text("dev", &broken, "web v3, side v2");
    push_commit(&repo, port, &commit, "web v3, side v2").await;
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    let r = rolled_back(&flow);
    assert!(r.reason.contains("put back from the compose files they were started with"), "{r:?}");
    assert!(r.reason.contains("(side stopped again, as it was)"), "{r:?}");
    assert_eq!(r.previous_healthy, Some(true), "web alone is checked: {r:?}");
    assert!(serves(repo.web, "v1"), "web not put back on v1");
    let side = repo.container("side").expect("side put back");
    let state = docker(&["inspect", "-f", "{{.State.Running}} {{.Config.Image}}", &side]);
    let (running, image) = state.trim().split_once(' ').unwrap_or_default();
    // Podman reports the short name as `localhost/steward-test/app:v1`.
    let as_left =
        running == "false" && steward_testkit::is_image_name(image, "steward-test/app:v1");
    assert!(as_left, "side is not as the operator left it: {state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_deployments_rollback_leaves_or_puts_back_a_stack_started_by_hand() {
    let bus = TestBus::new("deployprefirst").await;
    let repo = Repo::new();
    let port = free_port();
    let file = start_by_hand(&repo, &with_state(&repo, "v1", "", ""));
    let by_hand = file.parent().expect("its directory").to_owned();
    let web = repo.container("web").expect("web started by hand");
    let side = repo.container("side").expect("side started by hand");
    wait_for("web on v1", Duration::from_secs(60), || serves(repo.web, "v1").then_some(()));
    let untouched = |what: &str| {
        assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "{what}: web touched");
        assert_eq!(repo.container("side").as_deref(), Some(side.as_str()), "{what}: side touched");
        assert!(serves(repo.web, "v1"), "{what}: web not on v1");
        assert!(pre_containers(&repo).trim().is_empty(), "{what}: a command's container is left");
    };
    let push = |compose: String, message: &'static str| {
        let commit = repo.commit_text("dev", &compose, message);
        let repo = &repo;
        async move {
            push_commit(repo, port, &commit, message).await;
            commit
        }
    };

    // A failing command: rolled back at once, the containers started by hand left running.
    {
        let _deployer = deployer(&repo.env(&bus, port, &[]));
        let failing = with_state(&repo, "v2", "ls /no-such-migration", "");
        let commit = push(failing, "failing migration").await;
        let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
        assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
        let r = rolled_back(&flow);
        assert!(r.reason.contains("was not started") && !r.reason.contains("had run"), "{r:?}");
        assert_eq!(r.previous_commit, None, "{r:?}");
        untouched("a failing command");
    }

    // SIGKILLed while a command runs, then started again: one rollback, nothing removed.
    let killed = deployer(&repo.env(&bus, port, &[]));
    let commit = push(with_state(&repo, "v2", "sleep 600", ""), "slow migration").await;
    pre_running(&repo);
    drop(killed);
    {
        let _again = deployer(&repo.env(&bus, port, &[]));
        let r = rolled_back_once(&bus, &commit).await;
        assert!(r.reason.contains("pre-deployment command of web was stopped"), "{r:?}");
        untouched("a kill during the command");
    }

    // Side's hand-started definition is edited meanwhile (its file no longer gives the
    // configuration it runs with). A deployment changing both is aborted after it saved that
    // its `up` begins, before the `up`: started again, it rolls back with both containers the
    // ones started by hand, still running (the file's change does not matter: never replaced).
    let side_v1 = "  side:\n    image: steward-test/app:v1\n";
    let side_v2 = "  side:\n    image: steward-test/app:v2\n";
    let edited = with_state(&repo, "v1", "", "")
        .replace(side_v1, &format!("{side_v1}    environment: [EDITED=1]\n"));
    std::fs::write(&file, edited).expect("side edited by hand");
    let mut armed = repo.env(&bus, port, &[]);
    armed.push(("STEWARD_FAILPOINTS", "up=1".into()));
    let mut aborted = deployer(&armed);
    let both = with_state(&repo, "v2", "", "").replace(side_v1, side_v2);
    let commit = push(both, "web and side: v2").await;
    assert!(aborted.exits_within(Duration::from_secs(120)), "{}", aborted.logs());
    assert!(aborted.logs().contains("failpoint: up: aborting"), "{}", aborted.logs());
    drop(aborted);
    {
        let _again = deployer(&repo.env(&bus, port, &[]));
        let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
        assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
        let r = rolled_back(&flow);
        assert!(r.reason.contains("side, web never replaced: left as started"), "{r:?}");
        untouched("a kill before the up");
    }

    // A command that passes, then web on a version that never gets healthy and side on v2:
    // web is made again from the file it was started with; side, which its edited file no
    // longer describes as it ran, is removed; the reason says both, and that the command had
    // run and its changes stay. The deployer is aborted right after web was put back, and the
    // next one as its rollback ends (before the outcome is saved): the third ends it once.
    let mut armed = repo.env(&bus, port, &[]);
    armed.push(("STEWARD_FAILPOINTS", "put_back=1".into()));
    let mut aborted = deployer(&armed);
    let broken = with_state(&repo, "v3", "touch /state/migrated", "").replace(side_v1, side_v2);
    let commit = push(broken, "migration, broken app").await;
    for (point, next) in [("put_back", Some("rolled_back=1")), ("rolled_back", None)] {
        assert!(aborted.exits_within(Duration::from_secs(180)), "{point}: {}", aborted.logs());
        let said = format!("failpoint: {point}: aborting");
        assert!(aborted.logs().contains(&said), "{point}: {}", aborted.logs());
        if let Some(next) = next {
            let mut armed = repo.env(&bus, port, &[]);
            armed.push(("STEWARD_FAILPOINTS", next.into()));
            // It drives the rollback on as it starts, before it consumes: not waited for.
            aborted = Proc::start("steward-deployer", &armed);
        }
    }
    drop(aborted);
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let r = rolled_back_once(&bus, &commit).await;
    assert!(
        r.reason.contains("the pre-deployment command of web had run")
            && r.reason.contains("no backup was taken before it")
            && r.reason.contains("web put back from the compose files they were started with")
            && r.reason.contains("removed, not put back: side (")
            && r.reason.contains("no longer gives the configuration it ran with"),
        "{r:?}"
    );
    assert_eq!(r.previous_healthy, Some(true), "{r:?}");
    assert!(serves(repo.web, "v1"), "web not put back on v1");
    let web_now = repo.container("web").expect("web put back");
    let dir = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"com.docker.compose.project.working_dir\"}}",
        &web_now,
    ]);
    assert_eq!(dir.trim(), by_hand.display().to_string(), "web not made from its own file");
    assert_eq!(repo.container("side"), None, "side left running a definition nobody has");
    assert!(in_state(&repo, &["ls", "/state"]).contains("migrated"), "the command did not run");
}
