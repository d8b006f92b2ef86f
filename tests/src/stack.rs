//! The shipped compose stack (`compose/`) in a project of its own, brought up with
//! docker-compose against local stand-ins for the public images (`tests/compose/`), driven
//! only through its containers and what an operator has: shared by the stack test
//! (`compose_stack.rs`) and the disaster-recovery rehearsal (`dr_rehearsal.rs`).

// Test helpers, named for what they do; a failure panics with what it saw.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use steward_testkit::docker::{docker, try_docker, ImageTag};
use steward_testkit::{free_port, testbed, unique_name, wait_for};

use crate::podman::{copy_images_from_docker, HealthTimers};

/// Every long-running service of the stack.
pub const SERVICES: [&str; 11] = [
    "postgres",
    "gitea",
    "nginx",
    "certbot",
    "nats",
    "sockproxy",
    "watcher",
    "updater",
    "backup",
    "health",
    "notifier",
];
pub const BUCKET: &str = "gitea-backups";
/// The second copy's bucket, in the same S3 server.
pub const COPY_BUCKET: &str = "gitea-backups-copy";
/// The private registry's user (its password is the test's own, random).
pub const REGISTRY_USER: &str = "e2e";
/// The test's own age key pair (made for this test only, never used elsewhere).
pub const AGE_IDENTITY: &str =
    "AGE-SECRET-KEY-1TQ0UG4Y3YZAUMMR7LJCUP96AD9H89VMU2TN6HM6Q5DQ8F4N3TA4QJ89FME";
pub const AGE_RECIPIENT: &str = "age1n0q6qa4nn35xq034he2a5rrcj7g9fl58w7d25wnnvzd2a3lhcdks2vcp8m";
pub const MAIL_TO: &str = "ops@gitea.test";
/// Where the approval links in the mail point (nginx proxies it to the updater).
pub const PUBLIC_APPROVE: &str = "https://gitea.test/steward/approve/";

/// The Steward image the stack runs (benches/stack.sh runs the stack tests with the release
/// image).
pub fn steward_image() -> String {
    std::env::var("STEWARD_STACK_IMAGE").unwrap_or_else(|_| "steward-local/steward:debug".into())
}

/// The stack's engine when the test runs in the engine matrix's Podman leg (`DOCKER_HOST` is
/// the test bed's Podman service): its socket. The stack then runs as docs/deploy.md's
/// Podman host runs it: docker-compose against Podman's socket with `compose/podman.yml`.
pub fn podman_socket() -> Option<String> {
    steward_testkit::podman_under_test()
}

/// The images of the stack that are not in a registry (every service's but Gitea's).
fn local_images() -> Vec<String> {
    let mut images: Vec<String> = [
        "steward-local/nats:latest",
        "steward-local/registry:latest",
        "steward-local/s3:latest",
        "steward-local/smtp:latest",
        "steward-local/prometheus:latest",
        "steward-test/app:v1",
        "steward-test/postgres:15",
        "steward-test/busybox:latest",
    ]
    .map(str::to_owned)
    .to_vec();
    images.push(steward_image());
    images
}

/// The stack's registry port: any free one on Docker (which takes 127.0.0.0/8 as plain
/// http); on Podman the first free one of those the test bed lists as plain http.
fn registry_port() -> u16 {
    match podman_socket() {
        None => free_port(),
        Some(_) => testbed::podman_plain_http_port(),
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the age identity of an encrypted stack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeKey {
    /// Off the host: `secrets/age_identity` as init-secrets.sh makes it (only comments).
    OffHost,
    /// In `secrets/age_identity`: the backup service verifies and restores.
    OnHost,
}

/// A project of its own in a copy of `compose/`, taken down with its volumes when dropped.
pub struct Stack {
    pub dir: PathBuf,
    pub project: String,
    /// Gitea's image, in the stack's own (private) registry.
    pub app_image: String,
    /// The registry's `host:port`, as the engine and the watcher reach it.
    pub registry: String,
    /// The private registry's password.
    pub registry_password: String,
    /// The operator's Docker client config (`docker --config`), logged in by [`Stack::up`].
    pub docker_config: PathBuf,
    /// The approval page's port on 127.0.0.1.
    pub updater_port: u16,
    /// Prometheus' (profile `monitoring`) port on 127.0.0.1.
    pub prometheus_port: u16,
    _app_tags: ImageTag,
    /// Compose files layered over the stand-ins (`tests/compose/`).
    pub overrides: Vec<&'static str>,
    /// On Podman, systemd's healthcheck timers for the project's containers.
    _timers: Option<HealthTimers>,
}

impl Stack {
    /// A stack whose backups are age-encrypted, the identity where `age` says; with `copy`,
    /// a second copy of each backup in [`COPY_BUCKET`] with keys of its own.
    pub fn new(age: AgeKey, copy: bool) -> Self {
        Self::with_bucket(age, copy, None, &[])
    }

    /// [`Stack::new`] with the S3 server's data in `bucket_dir` (default: in the project's
    /// directory) and `overrides` (files of `tests/compose/`) layered over the stand-ins.
    pub fn with_bucket(
        age: AgeKey,
        copy: bool,
        bucket_dir: Option<PathBuf>,
        overrides: &[&'static str],
    ) -> Self {
        let dir = std::env::temp_dir().join(unique_name("steward-stack"));
        let project = unique_name("stewarde2e").replace('-', "");
        copy_dir(&repo().join("compose"), &dir);
        for file in
            ["stand-ins.yml", "registry.yml", "registry-auth.yml", "scope.yml", "fake-certbot.sh"]
        {
            std::fs::copy(repo().join("tests/compose").join(file), dir.join(file))
                .expect("copy the override");
        }
        let registry_port = registry_port();
        let registry = format!("127.0.0.1:{registry_port}");
        let app_image = format!("{registry}/e2e/app:stable");
        let registry_password = unique_name("pw");
        let mut stack = Self {
            docker_config: dir.join("operator-docker"),
            dir,
            project,
            app_image: app_image.clone(),
            registry,
            registry_password,
            updater_port: free_port(),
            prometheus_port: free_port(),
            _app_tags: ImageTag(app_image),
            overrides: overrides.to_vec(),
            _timers: None,
        };
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
        if age == AgeKey::OnHost {
            write(&secrets.join("age_identity"), &format!("{AGE_IDENTITY}\n"));
        }
        // The registry's users, as its operator makes them.
        let htpasswd = stack.run_checked(Command::new("htpasswd").args([
            "-Bbn",
            REGISTRY_USER,
            &stack.registry_password,
        ]));
        write(&stack.dir.join("registry.htpasswd"), &htpasswd);
        for file in overrides {
            std::fs::copy(repo().join("tests/compose").join(file), stack.dir.join(file))
                .expect("copy the override");
        }
        let s3 = bucket_dir.unwrap_or_else(|| stack.dir.join("s3"));
        std::fs::create_dir_all(s3.join(BUCKET)).expect("bucket directory");
        let mut copy_env = String::new();
        if copy {
            std::fs::create_dir_all(s3.join(COPY_BUCKET)).expect("copy bucket directory");
            // The copy's own keys (s3s-fs knows one pair: the same values, other files).
            write(&secrets.join("backup_copy_access_key_id"), "e2e-key\n");
            write(&secrets.join("backup_copy_secret_access_key"), "e2e-secret-key\n");
            copy_env = format!(
                "STEWARD_BACKUP_COPY_BUCKET={COPY_BUCKET}\nSTEWARD_BACKUP_COPY_ENDPOINT=http://s3:9000\n"
            );
        }
        // aiosmtpd's Mailbox makes a maildir's subdirectories only along with the maildir.
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(stack.maildir().join(sub)).expect("maildir");
        }
        // The group of the engine's socket, which the socket proxy's user joins; on Podman
        // the proxy gets the socket's directory (compose/podman.yml).
        let engine_socket = podman_socket().unwrap_or_else(|| "/var/run/docker.sock".into());
        let mut engine_env = String::new();
        if let Some(socket) = podman_socket() {
            let socket = Path::new(&socket);
            let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
                panic!("odd Podman socket {socket:?}");
            };
            engine_env = format!(
                "ENGINE_SOCKET_DIR={}\nENGINE_SOCKET_NAME={}\n",
                dir.display(),
                name.to_string_lossy()
            );
        }
        let docker_gid = String::from_utf8_lossy(
            &Command::new("stat").args(["-c", "%g", &engine_socket]).output().expect("stat").stdout,
        )
        .trim()
        .to_owned();
        // benches/stack.sh runs this test with the release image.
        let image = steward_image();
        let env = format!(
            "GITEA_DOMAIN=gitea.test\nPUBLISH_ADDR=127.0.0.1\nHTTP_PORT={}\nHTTPS_PORT={}\n\
             GITEA_SSH_PORT={}\nGITEA_IMAGE={}\nNGINX_IMAGE=steward-test/app:v1\nNGINX_CONFIG_CHECK=false\n\
             POSTGRES_IMAGE=steward-test/postgres:15\nCERTBOT_IMAGE=steward-test/busybox:latest\n\
             NATS_IMAGE=steward-local/nats:latest\nSTEWARD_IMAGE={image}\n\
             DOCKER_GID={docker_gid}\nSTEWARD_S3_BUCKET={BUCKET}\nAWS_REGION=us-east-1\n\
             STEWARD_MAIL_FROM=Steward <steward@gitea.test>\nSTEWARD_MAIL_TO={MAIL_TO}\n\
             E2E_S3_DIR={}\nE2E_MAILDIR={}\nE2E_REGISTRY_PORT={registry_port}\n\
             E2E_UPDATER_PORT={}\nGITEA_UPDATE_WINDOW=00:00-23:59\nE2E_PROMETHEUS_PORT={}\n\
             STEWARD_BACKUP_AGE_RECIPIENTS={AGE_RECIPIENT}\nE2E_SCOPE={}\n{copy_env}{engine_env}",
            free_port(),
            free_port(),
            free_port(),
            stack.app_image,
            s3.display(),
            stack.maildir().display(),
            stack.updater_port,
            stack.prometheus_port,
            stack.project,
        );
        write(&stack.dir.join(".env"), &env);
        if let Some(socket) = podman_socket() {
            let images = local_images();
            copy_images_from_docker(
                &socket,
                &images.iter().map(String::as_str).collect::<Vec<_>>(),
            );
            stack._timers = Some(HealthTimers::start(
                &socket,
                &format!("com.docker.compose.project={}", stack.project),
            ));
        }
        stack
    }

    /// `docker-compose down -v --remove-orphans`: containers, volumes and networks gone;
    /// whether it succeeded. Podman refuses to remove a container another one shares the
    /// network namespace of (the test's watcher, the registry's) while that one is still
    /// there, and docker-compose removes them at once: there a second `down` removes what
    /// the first left, and then the network and the volumes.
    pub fn down(&self) -> bool {
        let down = || {
            self.compose()
                .args(["down", "-v", "--remove-orphans", "-t", "5"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        down() || (podman_socket().is_some() && down())
    }

    /// The compose files, in order: the shipped file, the test's stand-ins, on Podman the
    /// shipped `podman.yml` (as docs/deploy.md's Podman host layers it), the overrides.
    pub fn compose_files(&self) -> Vec<&str> {
        let mut files =
            vec!["docker-compose.yml", "stand-ins.yml", "registry-auth.yml", "scope.yml"];
        if podman_socket().is_some() {
            files.push("podman.yml");
        }
        files.extend(self.overrides.iter().copied());
        files
    }

    pub fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.dir).args(["-p", &self.project]);
        for file in self.compose_files() {
            cmd.args(["-f", file]);
        }
        cmd
    }

    /// The compose command of [`Stack::compose`] as one line (for `COMPOSE=`).
    pub fn compose_line(&self) -> String {
        let cmd = self.compose();
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        format!("docker-compose {}", args.join(" "))
    }

    /// `docker ARGS` with the operator's client config (logged in to the private registry).
    pub fn operator_docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("--config")
            .arg(&self.docker_config)
            .args(args)
            .output()
            .expect("docker")
    }

    /// Tags the stand-in app `version` (v1, v2, v3) as Gitea's image and pushes it to the
    /// private registry with the operator's login; the pushed manifest digest.
    ///
    /// On Podman the pushed digest is then pulled: Podman does not record a pushed digest
    /// (Docker does), and a host that runs a release pulled it from the registry.
    pub fn push_app(&self, version: &str) -> String {
        docker(&["tag", &format!("steward-test/app:{version}"), &self.app_image]);
        let out = ok(&self.operator_docker(&["push", &self.app_image]));
        let digest = out
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("no digest in push output: {out}"))
            .to_owned();
        if podman_socket().is_some() {
            let repository = self.app_image.rsplit_once(':').map_or("", |(r, _)| r);
            ok(&self.operator_docker(&["pull", "-q", &format!("{repository}@{digest}")]));
        }
        digest
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.join("maildir")
    }

    /// `docker-compose up -d` once Gitea's first version is in the stack's registry (pushed
    /// as soon as the registry answers, with the operator's `docker login`, which the
    /// runbook's step then copies to `secrets/docker_config.json`); returns when every
    /// service is healthy.
    pub fn up(&self) -> Instant {
        self.registry_up();
        let started = Instant::now();
        let up = self.compose().args(["up", "-d"]).output().expect("docker-compose up");
        assert!(
            up.status.success(),
            "docker-compose up failed: {}\n{}",
            String::from_utf8_lossy(&up.stderr),
            self.logs()
        );
        self.healthy_since(started)
    }

    /// The stack's registry up, the operator logged in to it (the login in
    /// `secrets/docker_config.json`), Gitea's first version pushed.
    pub fn registry_up(&self) {
        let registry = self.compose().args(["up", "-d", "registry"]).output().expect("up");
        assert!(registry.status.success(), "{}", String::from_utf8_lossy(&registry.stderr));
        wait_for("a login at the stack's registry", Duration::from_secs(30), || {
            let login = if podman_socket().is_some() {
                // Podman's compatible `/auth` (what `docker login` calls) tries https on a
                // plain-http registry: the operator logs in with podman, into the same file
                // (docs/podman.md, "Credentials on Podman").
                let authfile = self.docker_config.join("config.json");
                std::fs::create_dir_all(&self.docker_config).ok()?;
                steward_testkit::podman::cli(&[
                    "login",
                    "--tls-verify=false",
                    "--authfile",
                    &authfile.to_string_lossy(),
                    "-u",
                    REGISTRY_USER,
                    "-p",
                    &self.registry_password,
                    &self.registry,
                ])
            } else {
                self.operator_docker(&[
                    "login",
                    &self.registry,
                    "-u",
                    REGISTRY_USER,
                    "-p",
                    &self.registry_password,
                ])
            };
            login.status.success().then_some(())
        });
        // `cp` over the file init-secrets.sh made keeps its mode (0444): the services, which
        // do not run as root, can read it (`docker login` writes its own file 0600).
        self.run_checked(
            Command::new("cp")
                .arg(self.docker_config.join("config.json"))
                .arg(self.dir.join("secrets/docker_config.json")),
        );
        self.push_app("v1");
    }

    /// Migration (docs/migration.md, "Cutover"): `scripts/adopt.sh` moves the running `old`
    /// stack into this one, started by the script; its output, once every service is healthy.
    pub fn adopt(&self, old: &OldStack) -> String {
        let started = Instant::now();
        let mut adopt = Command::new("bash");
        adopt
            .arg(repo().join("scripts/adopt.sh"))
            .arg(&old.project)
            .arg(&self.dir)
            .env("COMPOSE_PROJECT_NAME", &self.project)
            .env("COMPOSE_FILE", self.compose_files().join(":"))
            .env("LETSENCRYPT", old.dir.join("letsencrypt"));
        let stdout = self.script_ok("adopt.sh", &mut adopt);
        self.healthy_since(started);
        stdout
    }

    /// Runs `cmd` (a script of `scripts/` acting on the stack): its stdout; a failure fails
    /// the test with its output and the stack's logs.
    pub fn script_ok(&self, what: &str, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{what} failed: {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        stdout
    }

    /// Waits until every service is healthy (certbot: running); returns `started`.
    pub fn healthy_since(&self, started: Instant) -> Instant {
        let deadline = started + Duration::from_secs(180);
        loop {
            let states: Vec<(&str, String)> =
                SERVICES.iter().map(|s| (*s, self.health(s))).collect();
            if states.iter().all(|(s, h)| h == if *s == "certbot" { "running" } else { "healthy" })
            {
                return started;
            }
            assert!(Instant::now() < deadline, "not healthy: {states:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// [`wait_for`], with the stack's logs when it times out.
    pub fn wait<T>(&self, what: &str, bound: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(Instant::now() < deadline, "no {what} within {bound:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `docker exec` in a service's container; its stdout.
    pub fn exec(&self, service: &str, args: &[&str]) -> String {
        let container = self.container(service);
        let mut all = vec!["exec", container.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    }

    pub fn image_of(&self, service: &str) -> String {
        docker(&["inspect", "-f", "{{.Image}}", &self.container(service)])
    }

    /// [`Self::image_of`] for a wait: `None` while no container has the service's name (an
    /// update swaps containers, so the name is briefly free).
    pub fn image_now(&self, service: &str) -> Option<String> {
        try_docker(&["inspect", "-f", "{{.Image}}", &self.container(service)])
    }

    /// The lines of a service's container log that contain `needle`.
    fn log_lines(&self, service: &str, needle: &str) -> Vec<String> {
        let out = Command::new("docker").args(["logs", &self.container(service)]).output();
        let log = out
            .map(|o| String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).into_owned())
            .unwrap_or_else(|e| panic!("{service} logs: {e}"));
        log.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }

    /// The permission violations in the NATS server's log.
    pub fn nats_violations(&self) -> Vec<String> {
        self.log_lines("nats", "Violation")
    }

    /// The calls the socket proxy refused (its log lines).
    pub fn docker_refusals(&self) -> Vec<String> {
        self.log_lines("sockproxy", "\"message\":\"refused\"")
    }

    /// Every flow `steward audit --json` shows.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        ok(&self.steward(&["audit", "--json"]))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn run_checked(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The container of a service.
    pub fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    /// The health status of a service's container, or its state when it has no healthcheck
    /// (Podman reports an empty health status then, Docker none).
    pub fn health(&self, service: &str) -> String {
        let out = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{if .State.Health}}{{.State.Health.Status}}{{end}} {{.State.Status}}",
                &self.container(service),
            ])
            .output()
            .expect("docker inspect");
        let out = String::from_utf8_lossy(&out.stdout);
        let mut words = out.split_whitespace();
        match (words.next(), words.next()) {
            (Some(state), None) => state.to_owned(),
            (Some(health), Some(_)) => health.to_owned(),
            _ => String::new(),
        }
    }

    /// `steward ARGS` in the stack's CLI container (`docker-compose run --rm steward`).
    pub fn steward(&self, args: &[&str]) -> Output {
        self.compose()
            .args(["run", "--rm", "-T", "steward"])
            .args(args)
            .output()
            .expect("docker-compose run")
    }

    /// `steward ARGS` inside a service's container, logged in as that service's NATS user.
    pub fn steward_as(&self, service: &str, args: &[&str]) -> Output {
        Command::new("docker")
            .args(["exec", &self.container(service), "steward", "--nats-user", service])
            .args(["--nats-url", "nats://nats:4222", "--timeout", "3s"])
            .args(args)
            .env_remove("STEWARD_NATS_PASSWORD")
            .output()
            .expect("docker exec")
    }

    /// What a failure shows: first the state and the last healthcheck runs (exit code and
    /// output) of every service that is not healthy, then the tail of each service's log. A CI
    /// failure once said only "gitea is unhealthy", its probe's own output cut away with the
    /// logs.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for service in SERVICES {
            let state = self.health(service);
            if state == "healthy" || (service == "certbot" && state == "running") {
                continue;
            }
            let probes = Command::new("docker")
                .args([
                    "inspect",
                    "-f",
                    "{{.State.Status}} since {{.State.StartedAt}}, exit {{.State.ExitCode}}\
                     {{if .State.Health}}{{range .State.Health.Log}}\n  probe {{.Start}}: \
                     exit {{.ExitCode}}: {{.Output}}{{end}}{{end}}",
                    &self.container(service),
                ])
                .output();
            let probes = probes
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            out.push_str(&format!("{service}: {state}: {probes}\n"));
        }
        let logs = self.compose().args(["logs", "--no-color", "--tail", "40"]).output();
        out.push_str(
            &logs.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default(),
        );
        out
    }
}

/// Of the flows in an audit, those of `kind` that ended with `outcome`.
pub fn flows<'a>(
    audit: &'a [serde_json::Value],
    kind: &str,
    outcome: &str,
) -> Vec<&'a serde_json::Value> {
    audit.iter().filter(|f| f["kind"] == kind && f["outcome"] == outcome).collect()
}

/// The event types of a flow, in order.
pub fn event_types(flow: &serde_json::Value) -> Vec<String> {
    flow["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["type"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
}

pub fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-r").arg(from).arg(to).output().expect("cp");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A developer's own secrets and settings are not the test's.
    let _ = std::fs::remove_dir_all(to.join("secrets"));
    let _ = std::fs::remove_file(to.join(".env"));
}

pub fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stack before Steward (`tests/compose/old-stack.yml`), in a project of its own, in the
/// stack's directory (`old/`): bind-mounted data, certificates in `old/letsencrypt`.
pub struct OldStack {
    pub dir: PathBuf,
    pub project: String,
}

impl OldStack {
    /// Starts it with the stack's Gitea image, once PostgreSQL answers.
    pub fn start(stack: &Stack) -> Self {
        let dir = stack.dir.join("old");
        std::fs::create_dir_all(&dir).expect("old stack directory");
        std::fs::copy(repo().join("tests/compose/old-stack.yml"), dir.join("docker-compose.yml"))
            .expect("old-stack.yml");
        let old = Self { project: format!("{}old", stack.project), dir };
        write(
            &old.dir.join(".env"),
            &format!(
                "OLD_APP_IMAGE={}\nOLD_POSTGRES_IMAGE=steward-test/postgres:15\n\
                 OLD_DB_PASSWORD=old-db-password\nOLD_LETSENCRYPT={}\nOLD_SCOPE={}\n",
                stack.app_image,
                old.dir.join("letsencrypt").display(),
                stack.project
            ),
        );
        // A certificate as certbot leaves it: live/ links into archive/, all four files
        // (self-signed: the chain is the certificate).
        let archive = old.dir.join("letsencrypt/archive/gitea.test");
        let live = old.dir.join("letsencrypt/live/gitea.test");
        std::fs::create_dir_all(&archive).expect("archive");
        std::fs::create_dir_all(&live).expect("live");
        stack.run_checked(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                .args(["-nodes", "-days", "90", "-subj", "/CN=gitea.test"])
                .arg("-keyout")
                .arg(archive.join("privkey1.pem"))
                .arg("-out")
                .arg(archive.join("cert1.pem")),
        );
        for copy in ["chain1.pem", "fullchain1.pem"] {
            std::fs::copy(archive.join("cert1.pem"), archive.join(copy)).expect("chain");
        }
        for name in ["cert", "chain", "fullchain", "privkey"] {
            std::os::unix::fs::symlink(
                format!("../../archive/gitea.test/{name}1.pem"),
                live.join(format!("{name}.pem")),
            )
            .expect("symlink");
        }
        let up = old.compose().args(["up", "-d"]).output().expect("docker-compose up");
        assert!(up.status.success(), "old stack: {}", String::from_utf8_lossy(&up.stderr));
        stack.wait("the old PostgreSQL", Duration::from_secs(60), || {
            let ready = Command::new("docker")
                .args([
                    "exec",
                    &old.container("db"),
                    "pg_isready",
                    "-U",
                    "gitea",
                    "-h",
                    "127.0.0.1",
                ])
                .output()
                .ok()?;
            ready.status.success().then_some(())
        });
        old
    }

    pub fn compose(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(&self.dir).args(["-p", &self.project]);
        cmd
    }

    pub fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }
}

impl Drop for OldStack {
    fn drop(&mut self) {
        let _ = self.compose().args(["down", "-v", "-t", "5"]).output();
    }
}
