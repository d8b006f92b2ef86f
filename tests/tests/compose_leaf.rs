//! The compose kit's leaf-node overlays (`compose/leaf.yml`, `compose/hub.yml`) brought up for
//! real on the centre's host, as docs/runbooks.md ("Several hosts on leaf nodes") has an
//! operator do it: the configurations printed by `steward nats-config` and `steward
//! nats-authorization`, a private CA's certificate for the hub, the link's password in
//! `secrets/leaves/` and `secrets/nats_leaf_url`. The host's own leaf links to the hub over
//! TLS inside the compose network, `setup` and `setup-hub` provision each, and the CLI at the
//! hub reaches the host's leaf and sees its events come back. The hub's leaf-node port is
//! published on 127.0.0.1 only.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use steward_system_tests::binary;
use steward_system_tests::stack::{copy_dir, ok, repo, steward_image, write};
use steward_testkit::{free_port, unique_name};

const HOSTS: &str = "vps-a,vps-b";

/// A copy of `compose/` run as its own project with leaf.yml and hub.yml; down with its
/// volumes and removed when dropped.
struct Centre {
    dir: PathBuf,
    project: String,
}

impl Centre {
    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.dir).args(["-p", &self.project]);
        for file in ["docker-compose.yml", "leaf.yml", "hub.yml"] {
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
        let leafz: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        leafz["leafs"].as_array().map_or(0, Vec::len)
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

/// `steward nats-config`/`nats-authorization` for `domain` with `args`, into `dir`.
fn generate(dir: &Path, domain: &str, args: &[&str]) {
    std::fs::create_dir_all(dir.join("tls")).expect("config directory");
    let run = |args: &[&str]| {
        let out = Command::new(binary("steward"))
            .env_clear()
            .env("STEWARD_HOSTS", HOSTS)
            .env("STEWARD_NATS_DOMAIN", domain)
            .args(args)
            .output()
            .expect("steward");
        ok(&out)
    };
    let mut config = vec!["nats-config"];
    config.extend_from_slice(args);
    write(&dir.join("nats.conf"), &run(&config));
    write(&dir.join("authorization.conf"), &run(&["nats-authorization"]));
}

#[test]
fn the_centres_own_leaf_links_to_its_hub_over_tls_and_the_cli_at_the_hub_reaches_it() {
    let dir = std::env::temp_dir().join(unique_name("steward-compose-leaf"));
    std::fs::create_dir_all(&dir).expect("directory");
    copy_dir(&repo().join("compose"), &dir.join("compose"));
    let centre = Centre { dir: dir.join("compose"), project: unique_name("leafstack") };
    let out = Command::new("bash").arg(centre.dir.join("init-secrets.sh")).output().expect("bash");
    ok(&out);
    let leaf_port = free_port();
    write(
        &centre.dir.join(".env"),
        &format!(
            "STEWARD_IMAGE={}\nNATS_IMAGE=steward-local/nats:latest\nSTEWARD_HOSTS={HOSTS}\n\
             STEWARD_HOST=vps-a\nSTEWARD_LEAF_PUBLISH=127.0.0.1:{leaf_port}\n\
             STEWARD_S3_BUCKET=unused\nSTEWARD_MAIL_FROM=steward@gitea.test\n\
             STEWARD_MAIL_TO=ops@gitea.test\nGITEA_DOMAIN=gitea.test\n",
            steward_image()
        ),
    );

    // The hub's certificate names nats-hub (this host's leaf reaches it by that name).
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("hub key");
    let hub = rcgen::CertificateParams::new(vec!["nats-hub".to_owned(), "hub.example.org".into()])
        .expect("hub params")
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("hub certificate");
    let hub_dir = centre.dir.join("nats-hub");
    generate(
        &hub_dir,
        "hub",
        &["--tls-cert", "/etc/nats-hub/tls/hub.pem", "--tls-key", "/etc/nats-hub/tls/hub-key.pem"],
    );
    write(&hub_dir.join("tls/hub.pem"), &hub.pem());
    write(&hub_dir.join("tls/hub-key.pem"), &key.serialize_pem());
    let site = centre.dir.join("nats-site");
    generate(&site, "vps-a", &["--tls-ca", "/etc/nats-site/tls/ca.pem"]);
    write(&site.join("tls/ca.pem"), &ca_cert.pem());
    let password = unique_name("link");
    std::fs::create_dir_all(centre.dir.join("secrets/leaves")).expect("leaves");
    write(&centre.dir.join("secrets/leaves/nats_leaf-vps-a_password"), &password);
    write(
        &centre.dir.join("secrets/nats_leaf_url"),
        &format!("nats-leaf://leaf-vps-a:{password}@nats-hub:7422\n"),
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
    let setup = ok(&centre.run(&["run", "--rm", "-T", "setup"]));
    assert!(setup.contains("setup done"), "{setup}");
    let setup = ok(&centre.run(&["run", "--rm", "-T", "setup-hub"]));
    assert!(setup.contains("setup done"), "{setup}");

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
    // No error but the leaf's attempts while the hub was down.
    let logs = centre.logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("[ERR]") && !l.contains("connect: connection refused"))
        .collect();
    assert!(errors.is_empty(), "a server logged an error: {errors:#?}");
    // Published on loopback only, as the test's .env asks (the shipped default is every
    // interface: the hosts' leaves come from outside).
    let port = ok(&centre.run(&["port", "nats-hub", "7422"]));
    assert_eq!(port.trim(), format!("127.0.0.1:{leaf_port}"));
}
