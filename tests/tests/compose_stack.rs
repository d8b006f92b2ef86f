//! The shipped compose stack (`compose/`), brought up with docker-compose against local
//! stand-ins for the public images (`tests/compose/stand-ins.yml`; images from
//! `infra/testbed/stack-images.sh`), driven only through its running containers: everything
//! comes up healthy in order, each service's NATS user is refused outside its role, and a
//! backup requested with the stack's own CLI lands in the stack's S3 server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use steward_testkit::{free_port, unique_name};

/// Every long-running service of the stack.
const SERVICES: [&str; 10] = [
    "postgres", "gitea", "nginx", "certbot", "nats", "watcher", "updater", "backup", "health",
    "notifier",
];
const BUCKET: &str = "gitea-backups";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A project of its own in a copy of `compose/`, taken down with its volumes when dropped.
struct Stack {
    dir: PathBuf,
    project: String,
}

impl Stack {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("steward-stack"));
        let project = unique_name("stewarde2e").replace('-', "");
        copy_dir(&repo().join("compose"), &dir);
        std::fs::copy(repo().join("tests/compose/stand-ins.yml"), dir.join("stand-ins.yml"))
            .expect("copy the override");
        let stack = Self { dir, project };
        stack.run_checked(Command::new("bash").arg(stack.dir.join("init-secrets.sh")));
        let secrets = stack.dir.join("secrets");
        write(&secrets.join("smtp_url"), "smtp://smtp:2525\n");
        // nats-server reads a password from its environment as config text: one that starts
        // with a digit must still work (a random one does, one time in six).
        write(&secrets.join("nats_watcher_password"), "1e5true-password\n");
        write(
            &secrets.join("aws_credentials"),
            "[default]\naws_access_key_id = e2e-key\naws_secret_access_key = e2e-secret-key\n",
        );
        let s3 = stack.dir.join("s3");
        std::fs::create_dir_all(s3.join(BUCKET)).expect("bucket directory");
        std::fs::create_dir_all(stack.dir.join("maildir")).expect("maildir");
        let docker_gid = String::from_utf8_lossy(
            &Command::new("stat")
                .args(["-c", "%g", "/var/run/docker.sock"])
                .output()
                .expect("stat")
                .stdout,
        )
        .trim()
        .to_owned();
        // benches/stack.sh runs this test with the release image.
        let image = std::env::var("STEWARD_STACK_IMAGE")
            .unwrap_or_else(|_| "steward-local/steward:debug".into());
        let env = format!(
            "GITEA_DOMAIN=gitea.test\nPUBLISH_ADDR=127.0.0.1\nHTTP_PORT={}\nHTTPS_PORT={}\n\
             GITEA_SSH_PORT={}\nGITEA_IMAGE=steward-test/app:v1\nNGINX_IMAGE=steward-test/app:v1\n\
             POSTGRES_IMAGE=steward-test/postgres:15\nCERTBOT_IMAGE=steward-test/busybox:latest\n\
             NATS_IMAGE=steward-local/nats:latest\nSTEWARD_IMAGE={image}\n\
             DOCKER_GID={docker_gid}\nSTEWARD_S3_BUCKET={BUCKET}\nAWS_REGION=us-east-1\n\
             STEWARD_MAIL_FROM=Steward <steward@gitea.test>\nSTEWARD_MAIL_TO=ops@gitea.test\n\
             E2E_S3_DIR={}\nE2E_MAILDIR={}\n",
            free_port(),
            free_port(),
            free_port(),
            s3.display(),
            stack.dir.join("maildir").display(),
        );
        write(&stack.dir.join(".env"), &env);
        stack
    }

    fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.dir).args([
            "-p",
            &self.project,
            "-f",
            "docker-compose.yml",
            "-f",
            "stand-ins.yml",
        ]);
        cmd
    }

    fn run_checked(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container of a service.
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn health(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
                &self.container(service),
            ])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `steward ARGS` in the stack's CLI container (`docker-compose run --rm steward`).
    fn steward(&self, args: &[&str]) -> Output {
        self.compose()
            .args(["run", "--rm", "-T", "steward"])
            .args(args)
            .output()
            .expect("docker-compose run")
    }

    /// `steward ARGS` inside a service's container, logged in as that service's NATS user.
    fn steward_as(&self, service: &str, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["exec", &self.container(service), "steward", "--nats-user", service])
            .args(["--nats-url", "nats://nats:4222", "--timeout", "3s"])
            .args(args)
            .env_remove("STEWARD_NATS_PASSWORD")
            .output()
            .expect("docker exec")
    }

    fn logs(&self) -> String {
        let out = self.compose().args(["logs", "--no-color", "--tail", "40"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose().args(["down", "-v", "--remove-orphans", "-t", "5"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-r").arg(from).arg(to).output().expect("cp");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A developer's own secrets and settings are not the test's.
    let _ = std::fs::remove_dir_all(to.join("secrets"));
    let _ = std::fs::remove_file(to.join(".env"));
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_compose_stack_comes_up_healthy_and_keeps_each_service_to_its_role() {
    let stack = Stack::new();
    let started = Instant::now();
    let up = stack.compose().args(["up", "-d"]).output().expect("docker-compose up");
    assert!(
        up.status.success(),
        "docker-compose up failed: {}\n{}",
        String::from_utf8_lossy(&up.stderr),
        stack.logs()
    );
    let deadline = started + Duration::from_secs(180);
    loop {
        let states: Vec<(&str, String)> = SERVICES.iter().map(|s| (*s, stack.health(s))).collect();
        if states.iter().all(|(s, h)| h == if *s == "certbot" { "running" } else { "healthy" }) {
            break;
        }
        assert!(Instant::now() < deadline, "not healthy: {states:?}\n{}", stack.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("stack healthy {:.1} s after `docker-compose up`", started.elapsed().as_secs_f64());

    // Only the services that need it have the Docker socket.
    for service in ["notifier", "nats", "gitea", "nginx", "postgres"] {
        let mounts = ok(&Command::new("docker")
            .args(["inspect", "-f", "{{range .Mounts}}{{.Source}} {{end}}"])
            .arg(stack.container(service))
            .output()
            .expect("inspect"));
        assert!(!mounts.contains("docker.sock"), "{service} mounts the Docker socket");
    }

    // Each service's NATS user is refused outside its role; the CLI's user may approve.
    let data = r#"{"update_id":"0190a0a0-0000-7000-8000-000000000000","by":"e2e"}"#;
    ok(&stack.steward(&["events", "publish", "update.approved", "--data", data]));
    let refused =
        stack.steward_as("notifier", &["events", "publish", "update.approved", "--data", data]);
    assert!(!refused.status.success(), "the notifier published update.approved");
    let refused = stack.steward_as(
        "watcher",
        &["events", "publish", "backup.requested", "--data", r#"{"reason":"manual"}"#],
    );
    assert!(!refused.status.success(), "the watcher published backup.requested");

    // A backup through the stack's CLI: PostgreSQL dumped by exec, the app's files archived,
    // both in the stack's S3 server.
    let backup = ok(&stack.steward(&["backup", "now"]));
    assert!(backup.contains("done"), "{backup}");
    let listed = ok(&stack.steward(&["backup", "list"]));
    assert_eq!(listed.lines().count(), 2, "a header and one backup: {listed}");

    // The two refusals above are in the server's log, and nothing the services did on their
    // own (the backup included) was refused.
    let nats_log = Command::new("docker")
        .args(["logs", &stack.container("nats")])
        .output()
        .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
        .expect("nats logs");
    assert!(nats_log.contains("User \"notifier\", Subject \"update.approved\""), "{nats_log}");
    assert!(nats_log.contains("User \"watcher\", Subject \"backup.requested\""), "{nats_log}");
    let unexpected: Vec<&str> = nats_log
        .lines()
        .filter(|l| l.contains("Violation"))
        .filter(|l| {
            !l.contains("Subject \"update.approved\"")
                && !l.contains("Subject \"backup.requested\"")
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:#?}");

    // Idle memory of each Steward service, for the record (benches/stack.sh reports it).
    for service in ["watcher", "updater", "backup", "health", "notifier"] {
        let pid = ok(&Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", &stack.container(service)])
            .output()
            .expect("inspect"));
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: ?");
        eprintln!("idle {service}: {rss}");
    }
}
