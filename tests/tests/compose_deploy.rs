//! The deployer as the shipped compose stack runs it (profile `deploy`, issue 21): its own
//! image (the test bed's `steward-local/deployer`), its socket proxy of the `deployer` role
//! (`deploy-sockproxy`), its NATS user and secrets, its checkouts at the host's path owned by
//! its user, and a git server on the stack's network (`git daemon` in a container of the
//! test's override, serving a bare repository the test pushes to on the host). A commit is
//! found by polling and deployed, the next one replaces it after the stack's backup service
//! answered its backup gate, a broken one is rolled back; the
//! proxy refuses nothing it asked, and `steward audit` in the stack tells each deployment.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use steward_system_tests::stack::*;
use steward_testkit::docker::{docker, try_docker};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=Ada", "-c", "user.email=ada@example.com"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The deployed project's containers and network removed, whatever the test's end.
struct Deployed(String);

impl Drop for Deployed {
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.0);
        let ids = try_docker(&["ps", "-aq", "--filter", &label]).unwrap_or_default();
        for id in ids.lines() {
            let _ = try_docker(&["rm", "-f", "-v", id]);
        }
        let _ = try_docker(&["network", "rm", &format!("{}_default", self.0)]);
    }
}

#[test]
fn the_deploy_profile_deploys_pushed_commits_through_its_own_socket_proxy() {
    let stack = Stack::with_bucket(AgeKey::OffHost, false, None, &["deploy.yml"]);
    let git_dir = stack.dir.join("git");
    let work = stack.dir.join("site-work");
    std::fs::create_dir_all(&work).expect("work tree");
    git(&stack.dir, &["init", "-q", "--bare", "git/site.git"]);
    git(&work, &["init", "-q", "-b", "dev"]);
    // The checkouts: the same path on the host and inside, its user's (docs/runbooks.md).
    let checkouts = stack.dir.join("deploy");
    std::fs::create_dir_all(&checkouts).expect("checkouts");
    stack.run_checked(Command::new("chown").arg("10001:10001").arg(&checkouts));
    let name = format!("{}site", stack.project);
    let project = format!("{name}-dev");
    let _deployed = Deployed(project.clone());
    let image = std::env::var("STEWARD_TEST_DEPLOYER_IMAGE")
        .unwrap_or_else(|_| "steward-local/deployer:debug".into());
    let mut env = std::fs::read_to_string(stack.dir.join(".env")).expect(".env");
    env.push_str(&format!(
        "COMPOSE_PROFILES=deploy\nSTEWARD_DEPLOYER_IMAGE={image}\n\
         STEWARD_DEPLOY_REPOSITORY=git://git/site.git\nSTEWARD_DEPLOY_ENVIRONMENTS=dev=dev\n\
         STEWARD_DEPLOY_PROJECT={name}\nSTEWARD_DEPLOY_POLL_INTERVAL=2s\n\
         STEWARD_DEPLOY_DIR={}\nE2E_GIT_DIR={}\n",
        checkouts.display(),
        git_dir.display()
    ));
    write(&stack.dir.join(".env"), &env);
    if let Some(socket) = podman_socket() {
        // What the stack's own set-up does not copy into Podman's store.
        let tools = "steward-local/deployer-tools:latest";
        let images = [&image, tools, "steward-test/app:v2", "steward-test/app:v3"];
        steward_system_tests::podman::copy_images_from_docker(&socket, &images);
    }
    // Only what the deployer needs (NATS, setup, its proxy), the backup service for its
    // backup gate (from the second deployment on, web runs), and the git server.
    stack.run_checked(stack.compose().args(["up", "-d", "deployer", "backup", "git"]));
    stack.wait("the deployer healthy", Duration::from_secs(180), || {
        (stack.health("deployer") == "healthy").then_some(())
    });

    // In the installation's scope (the test's stacks have one, STEWARD_SCOPE): else the
    // backup gate's backup refuses the container, as it would any other out of its scope.
    let scope = &stack.project;
    let web = |version: &str| {
        format!("version: \"2.4\"\nservices:\n  web:\n    image: steward-test/app:{version}\n    labels:\n      steward.scope: \"{scope}\"\n")
    };
    let push = |version: &str, message: &str| {
        write(&work.join("docker-compose.yml"), &web(version));
        git(&work, &["add", "docker-compose.yml"]);
        git(&work, &["commit", "-q", "-m", message]);
        let bare = git_dir.join("site.git").display().to_string();
        git(&work, &["push", "-q", &bare, "HEAD:dev"]);
        git(&work, &["rev-parse", "HEAD"])
    };
    let container = format!("{project}_web_1");
    let deployed = |outcome: &str, n: usize| {
        stack.wait(&format!("{n} deployments {outcome}"), Duration::from_secs(240), || {
            let audit = stack.audit();
            (flows(&audit, "deploy", outcome).len() >= n).then_some(audit)
        })
    };

    push("v1", "web: v1");
    deployed("succeeded", 1);
    // Podman names a local image `localhost/...` in the container's configuration.
    let on = |what: &str| docker(&["inspect", "-f", what, &container]).replace("localhost/", "");
    assert_eq!(on("{{.Config.Image}} {{.State.Running}}"), "steward-test/app:v1 true");
    // Made by compose from the checkout at the host's path (what the engine resolves).
    let dir = on("{{index .Config.Labels \"com.docker.compose.project.working_dir\"}}");
    assert_eq!(dir, checkouts.join("dev").display().to_string());

    push("v2", "web: v2");
    let audit = deployed("succeeded", 2);
    assert_eq!(on("{{.Config.Image}}"), "steward-test/app:v2");
    // The second one changed a running service: the stack's backup service backed it up first.
    let gated = flows(&audit, "deploy", "succeeded")
        .into_iter()
        .filter(|f| event_types(f).iter().any(|t| t == "backup.done"))
        .count();
    assert_eq!(gated, 1, "{audit:#?}");

    // v3 never passes its HEALTHCHECK: rolled back to v2's definition.
    push("v3", "web: v3");
    let audit = deployed("rolled back", 1);
    let back = flows(&audit, "deploy", "rolled back");
    assert!(event_types(back[0]).iter().any(|t| t == "deploy.rolled_back"), "{back:#?}");
    assert_eq!(on("{{.Config.Image}} {{.State.Running}}"), "steward-test/app:v2 true");

    // Everything went through the deployer's proxy, which refused none of it.
    let logs = stack.run_checked(stack.compose().args(["logs", "--no-color", "deploy-sockproxy"]));
    assert!(!logs.contains("\"message\":\"refused\""), "{logs}");
    assert!(stack.nats_violations().is_empty(), "{:?}", stack.nats_violations());
}
