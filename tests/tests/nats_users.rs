//! Every participant logged in as its own NATS user with the generated permissions (as in the
//! compose stack), doing its real work: `steward setup` provisions the stream, consumers and
//! buckets as the `setup` user, then a manual update approved with the CLI, a backup with
//! progress, mail, the CLI's reads of others' state. Nothing any of them needs is refused:
//! the server logs no violation.

use std::time::Duration;

use steward_bus::Bus;
use steward_events::Service;
use steward_system_tests::apps::{app, wait_event};
use steward_system_tests::mail::{testbed_maildir, testbed_notifier_env, unique_address};
use steward_system_tests::{steward_with, Proc, TestBucket};
use steward_testkit::docker::push_app;
use steward_testkit::{unique_name, NatsServer, TempDir};

fn login(service: Service) -> Vec<(&'static str, String)> {
    vec![
        ("STEWARD_NATS_USER", service.name().to_owned()),
        ("STEWARD_NATS_PASSWORD", NatsServer::password(service)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_and_the_cli_work_as_their_own_nats_users() {
    let server = NatsServer::start_with_steward_users();
    // Before setup there is nothing to use: the CLI (and every service) says what to run.
    let unprovisioned = Bus::open(server.bus_config_as(Service::Cli), "test").await.expect("open");
    let early = steward_with(&unprovisioned, &login(Service::Cli), &["--timeout", "1s", "status"]);
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(!early.status.success() && stderr.contains("steward setup"), "{stderr}");
    // The stack's one-shot provisioning, as its own user; run twice (an upgrade re-runs it).
    for _ in 0..2 {
        let setup_env = vec![
            ("STEWARD_NATS_USER", steward_bus::SETUP_USER.to_owned()),
            ("STEWARD_NATS_PASSWORD", NatsServer::setup_password()),
        ];
        let out = steward_with(&unprovisioned, &setup_env, &["setup"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "steward setup: {}", String::from_utf8_lossy(&out.stderr));
        assert!(
            stdout.contains("consumer updater") && stdout.contains("STEWARD_UPDATES"),
            "{stdout}"
        );
    }
    let bus = Bus::connect(server.bus_config_as(Service::Cli), Service::Cli.binary())
        .await
        .expect("the CLI's user connects");
    let scope = unique_name("scope");
    let bucket = TestBucket::new("natsusers").await;
    let to = unique_address("natsusers");
    let app = app(&scope, "manual", &[]);

    let mut procs = vec![];
    let deploy_dir = TempDir::new("natsusers-deploy");
    for service in Service::DAEMONS {
        let mut env = login(service);
        env.push(("STEWARD_SCOPE", scope.clone()));
        match service {
            Service::Backup => env.extend(bucket.env()),
            Service::Notifier => env.extend(testbed_notifier_env(&to)),
            Service::Updater => env.push(("STEWARD_HEALTH_GRACE", "2s".into())),
            Service::Deployer => {
                // A repository that does not exist: polling fails (logged), the service runs.
                let dir = deploy_dir.0.display().to_string();
                env.push(("STEWARD_DEPLOY_REPOSITORY", format!("file://{dir}/none.git")));
                env.push(("STEWARD_DEPLOY_DIR", dir));
            }
            _ => {}
        }
        procs.push((service, Proc::service(service.binary(), &bus, &env)));
    }
    let cli = |args: &[&str]| {
        let mut env = login(Service::Cli);
        env.extend(bucket.env());
        let out = steward_with(&bus, &env, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "steward {args:?} as the cli user failed: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // watcher → updater → notifier (the pending mail) → the CLI's approval → updater.
    push_app("v2", &app.image);
    cli(&["check"]);
    wait_event(&bus, "update.pending", Duration::from_secs(60)).await;
    let pending = cli(&["updates"]);
    let row =
        pending.lines().find(|l| l.contains(&app.name)).unwrap_or_else(|| panic!("{pending}"));
    let id = row.split_whitespace().next().expect("an id");
    cli(&["approve", id]);
    wait_event(&bus, "update.succeeded", Duration::from_secs(60)).await;
    // backup, with the CLI following its progress; then the CLI's reads of others' state.
    let backup = cli(&["backup", "now"]);
    assert!(backup.contains("backup"), "{backup}");
    assert!(cli(&["status"]).contains(&app.name));
    assert!(cli(&["updates", "--all"]).contains(&app.name));
    assert!(cli(&["audit"]).contains(&app.name));
    wait_event(&bus, "notify.sent", Duration::from_secs(30)).await;
    let mails = steward_system_tests::mail::mails_to(&testbed_maildir(), &to);
    assert!(mails.iter().any(|m| m.text.contains(&app.name)), "{:?}", mails.len());

    steward_system_tests::assert_nothing_refused(&server, &procs);
    bucket.destroy().await;
}
