//! The compose kit's leaf-node overlays (`compose/leaf.yml`, `compose/hub.yml`) brought up for
//! real on the centre's host, as docs/runbooks.md ("Several hosts on leaf nodes") has an
//! operator do it: the configurations printed by the stack's image (`steward nats-config` and
//! `steward nats-authorization` through `docker-compose run`), a private CA's certificate for
//! the hub's public name, the link's password in `secrets/leaves/` and
//! `secrets/nats_leaf_url`. The host's own leaf links to the hub over TLS inside the compose
//! network by that name, `setup` and `setup-hub` provision each, the watcher starts on the leaf
//! as `watcher-vps-a` and the notifier on the hub, and the CLI at the hub reaches the host's
//! leaf and sees its events come back. The hub's leaf-node port is published on 127.0.0.1 only;
//! the services act only on containers of the test's scope (`tests/compose/scope.yml`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use steward_system_tests::leafnodes::{linked_leaves, TestCa};
use steward_system_tests::stack::{copy_dir, ok, repo, steward_image, write};
use steward_testkit::{free_port, unique_name};

const HOSTS: &str = "vps-a,vps-b";
/// The hub's public name (its certificate's).
const HUB: &str = "hub.example.org";

/// A copy of `compose/` run as its own project with leaf.yml and hub.yml; down with its
/// volumes and removed when dropped.
struct Centre {
    dir: PathBuf,
    project: String,
    /// The directory holding the copy, removed after the project is down.
    _root: steward_testkit::TempDir,
}

impl Centre {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.dir).args(["-p", &self.project]);
        for file in ["docker-compose.yml", "leaf.yml", "hub.yml", "scope.yml", "hub-scope.yml"] {
            cmd.args(["-f", file]);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.compose().args(args).output().unwrap_or_else(|e| panic!("docker-compose: {e}"))
    }

    fn container(&self, service: &str) -> String {
        ok(&self.run(&["ps", "-q", service])).trim().to_owned()
    }

    /// The hub's `/leafz`: how many leaves are linked to it.
    fn linked(&self) -> usize {
        let out = Command::new("docker")
            .args(["exec", &self.container("nats-hub"), "wget", "-q", "-O", "-"])
            .arg("http://127.0.0.1:8222/leafz")
            .output()
            .expect("docker exec");
        linked_leaves(&out.stdout)
    }

    fn logs(&self) -> String {
        let out = self.run(&["logs", "--no-color", "nats", "nats-hub"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Centre {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "5"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Centre {
    /// `steward nats-config ARGS` and `nats-authorization` for `domain`, as the runbook has
    /// them printed (the stack's image, through the `setup` service), into `dir`.
    fn generate(&self, dir: &Path, domain: &str, args: &[&str]) {
        std::fs::create_dir_all(dir.join("tls")).expect("config directory");
        // The hub's domain is given; a leaf's is leaf.yml's own (STEWARD_HOST).
        let domain = format!("STEWARD_NATS_DOMAIN={domain}");
        let run = |args: &[&str]| {
            let mut all = vec!["run", "--rm", "--no-deps", "-T"];
            if domain.ends_with("=hub") {
                all.extend(["-e", &domain]);
            }
            all.push("setup");
            all.extend_from_slice(args);
            ok(&self.run(&all))
        };
        let mut config = vec!["nats-config"];
        config.extend_from_slice(args);
        write(&dir.join("nats.conf"), &run(&config));
        write(&dir.join("authorization.conf"), &run(&["nats-authorization"]));
    }

    /// Waits until `service`'s container is healthy.
    fn wait_healthy(&self, service: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = Command::new("docker")
                .args(["inspect", "-f", "{{.State.Health.Status}}", &self.container(service)])
                .output()
                .expect("docker inspect");
            if String::from_utf8_lossy(&out.stdout).trim() == "healthy" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service} never healthy: {}",
                self.service_logs(service)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn service_logs(&self, service: &str) -> String {
        let out = self.run(&["logs", "--no-color", service]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[test]
fn the_centres_own_leaf_links_to_its_hub_over_tls_and_the_cli_at_the_hub_reaches_it() {
    let root = steward_testkit::TempDir::new("steward-compose-leaf");
    copy_dir(&repo().join("compose"), &root.0.join("compose"));
    let centre =
        Centre { dir: root.0.join("compose"), project: unique_name("leafstack"), _root: root };
    let out = Command::new("bash").arg(centre.dir.join("init-secrets.sh")).output().expect("bash");
    ok(&out);
    std::fs::copy(repo().join("tests/compose/scope.yml"), centre.dir.join("scope.yml"))
        .expect("copy the scope overlay");
    // The hub in the test's scope too: its leaf-node certificate is watched.
    write(
        &centre.dir.join("hub-scope.yml"),
        "version: \"3.8\"\nservices:\n  nats-hub:\n    labels: {steward.scope: \"${E2E_SCOPE}\"}\n",
    );
    // Nothing listens there: the notifier never mails out of this machine.
    write(&centre.dir.join("secrets/smtp_url"), "smtp://127.0.0.1:1\n");
    let leaf_port = free_port();
    let docker_gid = Command::new("stat")
        .args(["-c", "%g", "/var/run/docker.sock"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("the engine's socket group");
    write(
        &centre.dir.join(".env"),
        &format!(
            "STEWARD_IMAGE={}\nNATS_IMAGE=steward-local/nats:latest\nSTEWARD_HOSTS={HOSTS}\n\
             STEWARD_HOST=vps-a\nSTEWARD_HUB_NAME={HUB}\nCOMPOSE_PROFILES=centre\n\
             STEWARD_LEAF_PUBLISH=127.0.0.1:{leaf_port}\nDOCKER_GID={docker_gid}\n\
             STEWARD_S3_BUCKET=unused\nSTEWARD_MAIL_FROM=steward@gitea.test\n\
             STEWARD_MAIL_TO=ops@gitea.test\nGITEA_DOMAIN=gitea.test\nE2E_SCOPE={}\n",
            steward_image(),
            unique_name("scope"),
        ),
    );

    // The hub's certificate names its public name only, as a public CA's would: this host's
    // leaf reaches it by that name, the hub's alias in the compose network. It expires in 2
    // days: the health service tells it (critical within STEWARD_HEALTH_CERT_CRITICAL's 3).
    let ca = TestCa::new();
    let (hub_cert, hub_key) = ca.server_until(&[HUB], Some(2));
    let hub_dir = centre.dir.join("nats-hub");
    centre.generate(
        &hub_dir,
        "hub",
        &["--tls-cert", "/etc/nats-hub/tls/hub.pem", "--tls-key", "/etc/nats-hub/tls/hub-key.pem"],
    );
    write(&hub_dir.join("tls/hub.pem"), &hub_cert);
    write(&hub_dir.join("tls/hub-key.pem"), &hub_key);
    let site = centre.dir.join("nats-site");
    centre.generate(&site, "vps-a", &["--tls-ca", "/etc/nats-site/tls/ca.pem"]);
    write(&site.join("tls/ca.pem"), &ca.pem());
    let password = unique_name("link");
    std::fs::create_dir_all(centre.dir.join("secrets/leaves")).expect("leaves");
    write(&centre.dir.join("secrets/leaves/nats_leaf-vps-a_password"), &password);
    write(
        &centre.dir.join("secrets/nats_leaf_url"),
        &format!("nats-leaf://leaf-vps-a:{password}@{HUB}:7422\n"),
    );

    // Host b's link password forgotten: the hub does not start, and says what is missing;
    // once it is there, the hub's next restart takes it.
    ok(&centre.run(&["up", "-d", "nats", "nats-hub"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !centre.logs().contains("no secret file for STEWARD_LEAF_VPS_B_PASSWORD (") {
        assert!(Instant::now() < deadline, "the hub did not say: {}", centre.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(centre.linked(), 0);
    write(&centre.dir.join("secrets/leaves/nats_leaf-vps-b_password"), &unique_name("link"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while centre.linked() != 1 {
        assert!(Instant::now() < deadline, "the leaf never linked: {}", centre.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    // The agents and the centre as the overlays run them: `setup` and `setup-hub` first.
    ok(&centre.run(&["up", "-d", "watcher", "notifier", "health"]));
    centre.wait_healthy("watcher");
    centre.wait_healthy("notifier");
    for setup in ["setup", "setup-hub"] {
        let logs = centre.service_logs(setup);
        assert!(logs.contains("setup done"), "{setup}: {logs}");
    }

    // The CLI at the hub asks host a's watcher to check: stored by a's leaf across the link,
    // and back at the hub through its source.
    let sent =
        ok(&centre.run(&["run", "--rm", "-T", "-e", "STEWARD_HOST=vps-a", "steward", "check"]));
    let id = sent
        .trim()
        .strip_prefix("watch requested on vps-a (")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{sent}"))
        .to_owned();
    let on_leaf = ok(&centre.run(&["run", "--rm", "-T", "setup", "events", "replay", "--json"]));
    assert!(on_leaf.contains(&id), "a's leaf does not hold the request: {on_leaf}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at_hub =
            ok(&centre.run(&["run", "--rm", "-T", "steward", "events", "replay", "--json"]));
        if at_hub.contains(&id) {
            break;
        }
        assert!(Instant::now() < deadline, "the hub never got it back: {at_hub}");
        std::thread::sleep(Duration::from_secs(1));
    }
    // The hub's leaf-node certificate, read by this host's health service through the hub's
    // INFO line, is critical: told at the centre, named as labelled.
    let certificate = format!("nats://{HUB}@nats-hub:7422");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at_hub = ok(&centre.run(&[
            "run",
            "--rm",
            "-T",
            "steward",
            "events",
            "replay",
            "--json",
            "--subject",
            "health.cert_expiring",
        ]));
        if let Some(told) = at_hub.lines().find(|l| l.contains(&certificate)) {
            assert!(told.contains("\"critical\"") && told.contains("\"host\":\"vps-a\""), "{told}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub's certificate was never told: {at_hub}\n{}",
            centre.service_logs("health")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    // No error but the leaf's attempts while the hub was down (refused, or its name not yet
    // known: a TLS or login failure says otherwise).
    let logs = centre.logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("[ERR]") && !l.contains("Error trying to connect as leafnode to remote")
        })
        .collect();
    assert!(errors.is_empty(), "a server logged an error: {errors:#?}");
    // Published on loopback only, as the test's .env asks (the shipped default is every
    // interface: the hosts' leaves come from outside).
    let port = ok(&centre.run(&["port", "nats-hub", "7422"]));
    assert_eq!(port.trim(), format!("127.0.0.1:{leaf_port}"));
}
