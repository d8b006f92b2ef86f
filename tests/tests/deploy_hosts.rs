//! Deployments under host routing (`STEWARD_HOSTS`, issue 23): the deployer of host B (its
//! per-host NATS user, a NATS server with the generated users) keeps its environment's record
//! under `vps-b.<env>`, and `steward deploy approve ENV` and `steward deploy ENV COMMIT` go to
//! that host, not to the host `STEWARD_HOST` names (which has no deployer: an approval sent
//! there would never be acted on).

mod deploy_common;

use deploy_common::*;
use steward_events::Service;
use steward_system_tests::steward_with;
use steward_testkit::NatsServer;

const A: &str = "vps-a";
const B: &str = "vps-b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_commands_go_to_the_host_of_the_environments_record() {
    let hosts = vec![A.to_owned(), B.to_owned()];
    let table = hosts.join(",");
    // The deployer's own ack wait (deploy_common): its consumer made as it runs.
    let ack_wait = [("STEWARD_ACK_WAIT", "2s".to_owned())];
    let (server, _setup, bus) = steward_system_tests::routed_bus(&hosts, &ack_wait).await;

    let repo = Repo::new();
    let port = free_port();
    let user = Service::Deployer.identity(Some(B));
    let extra = [
        ("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned()),
        ("STEWARD_NATS_USER", user.clone()),
        ("STEWARD_NATS_PASSWORD", NatsServer::user_password(&user)),
        ("STEWARD_HOSTS", table.clone()),
        ("STEWARD_HOST", B.to_owned()),
    ];
    let procs = vec![(user, deployer(&repo.env(&bus, port, &extra)))];
    // The operator's shell names host A: the record's host must win.
    let cli = |args: &[&str]| {
        let env = vec![
            ("STEWARD_NATS_USER", Service::Cli.name().to_owned()),
            ("STEWARD_NATS_PASSWORD", NatsServer::password(Service::Cli)),
            ("STEWARD_HOSTS", table.clone()),
            ("STEWARD_HOST", A.to_owned()),
        ];
        let out = steward_with(&bus, &env, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "steward {args:?} failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let c1 = push_version(&repo, port, "v1", "first").await;
    let (pending, _) = pending_of(&bus, &c1).await;
    assert_eq!(pending.host.as_deref(), Some(B), "{pending:?}");
    cli(&["deploy", "approve", "dev"]);
    let flow = outcome(&bus, &c1, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let approved = flow
        .iter()
        .find(|e| e.event_type() == "deploy.approved")
        .expect("the approval is in the flow");
    assert_eq!(approved.host.as_deref(), Some(B), "addressed to the record's host");

    // A pin goes there too (and waits for approval, addressed there as well).
    let c2 = push_version(&repo, port, "v2", "second").await;
    pending_of(&bus, &c2).await;
    cli(&["deploy", "approve", "dev"]);
    let flow = outcome(&bus, &c2, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let said = cli(&["deploy", "dev", &c1, "--wait", "60s"]);
    assert!(said.contains("waits for approval"), "{said}");
    cli(&["deploy", "approve", "dev"]);
    wait_for("web back on v1", Duration::from_secs(45), || serves(repo.web, "v1").then_some(()));
    steward_system_tests::assert_nothing_refused(&server, &procs);
}
