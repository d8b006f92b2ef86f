//! What the deployer's system tests share (`deploy_flow.rs`, `deploy_crash.rs`): a real git
//! server (`git daemon` on 127.0.0.1 serving a bare repository the test pushes to), the
//! deployer as a process, the signed webhook, and reading a deployment's flow back from the
//! stream.
#![allow(dead_code)] // each test file uses its part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
pub use std::time::{Duration, Instant};

pub use steward_bus::Bus;
pub use steward_events::{Event, EventData};
pub use steward_system_tests::{service_env, Proc};
use steward_testkit::docker::{docker, try_docker};
pub use steward_testkit::{free_port, http_get, stored_events, unique_name, wait_for, TestBus};

pub const SECRET: &str = "deploy-test-secret-0123456789";
pub const TERMINAL: [&str; 3] = ["deploy.succeeded", "deploy.rolled_back", "deploy.failed"];

/// A bare repository served by `git daemon`, a clone to commit in, and the deployer's
/// directory; all removed (with the compose project's containers) on drop.
pub struct Repo {
    pub root: PathBuf,
    pub work: PathBuf,
    pub url: String,
    pub daemon: Child,
    pub project: String,
    /// The environment its `dev` branch deploys to (`dev`; another when the deployer
    /// follows several repositories): the compose project is `<project>-<environment>`.
    pub environment: String,
    /// The compose file's path in the repository.
    pub compose_path: String,
    /// Host ports of the two services.
    pub web: u16,
    pub side: u16,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Ada")
        .env("GIT_AUTHOR_EMAIL", "ada@example.com")
        .env("GIT_COMMITTER_NAME", "Ada")
        .env("GIT_COMMITTER_EMAIL", "ada@example.com")
        .output()
        .unwrap_or_else(|e| panic!("git {args:?}: {e}"));
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Repo {
    pub fn new() -> Self {
        let name = unique_name("deploy");
        let root = std::env::temp_dir().join(&name);
        let work = root.join("work");
        std::fs::create_dir_all(&work).expect("test dir");
        git(&root, &["init", "-q", "--bare", "origin.git"]);
        git(&work, &["init", "-q", "-b", "dev"]);
        let port = free_port();
        // `git-daemon` itself, not `git daemon`: git runs the daemon as a child and waits, so
        // killing it left the daemon serving (every deploy test leaked one, and a test of an
        // unreachable repository could not make it unreachable).
        let exec_path = String::from_utf8_lossy(
            &Command::new("git").arg("--exec-path").output().expect("git --exec-path").stdout,
        )
        .trim()
        .to_owned();
        let daemon = Command::new(Path::new(&exec_path).join("git-daemon"))
            // Pushes too: the deployer commits image updates back to the branch.
            .args(["--reuseaddr", "--export-all", "--enable=receive-pack", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.display()))
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon");
        steward_testkit::wait_listening(port, "git daemon");
        let url = format!("git://127.0.0.1:{port}/origin.git");
        let origin = root.join("origin.git").display().to_string();
        git(&work, &["remote", "add", "origin", &origin]);
        Self {
            root,
            work,
            url,
            daemon,
            project: name,
            environment: "dev".into(),
            compose_path: "docker-compose.yml".into(),
            web: free_port(),
            side: free_port(),
        }
    }

    /// The compose project of its environment.
    pub fn compose_project(&self) -> String {
        format!("{}-{}", self.project, self.environment)
    }

    /// Commits a compose file with `web` on `web_version` (and `side` always on v1) and
    /// pushes it to `branch`; the commit id.
    pub fn commit(&self, branch: &str, web_version: &str, message: &str) -> String {
        self.commit_noted(branch, web_version, message, "")
    }

    /// [`Repo::commit`] with `note` as a YAML comment (a new commit with the same
    /// definitions as another).
    pub fn commit_noted(
        &self,
        branch: &str,
        web_version: &str,
        message: &str,
        note: &str,
    ) -> String {
        self.commit_labelled(branch, web_version, message, note, "")
    }

    /// [`Repo::commit_noted`] with `label` (`key: value`) on web too, when not empty.
    pub fn commit_labelled(
        &self,
        branch: &str,
        web_version: &str,
        message: &str,
        note: &str,
        label: &str,
    ) -> String {
        let (web, side) = (self.web, self.side);
        let label = if label.is_empty() { String::new() } else { format!("      {label}\n") };
        let compose = format!(
            "# {note}\nversion: \"2.4\"\nservices:\n  web:\n    image: steward-test/app:{web_version}\n    ports: [\"127.0.0.1:{web}:8080\"]\n    labels:\n      steward.health.url: http://127.0.0.1:{web}/\n{label}  side:\n    image: steward-test/app:v1\n    ports: [\"127.0.0.1:{side}:8080\"]\n"
        );
        self.commit_text(branch, &compose, message)
    }

    /// Commits `compose` as the compose file and pushes it to `branch`; the commit id.
    pub fn commit_text(&self, branch: &str, compose: &str, message: &str) -> String {
        let path = self.work.join(&self.compose_path);
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("compose's directory");
        std::fs::write(path, compose).expect("write compose");
        git(&self.work, &["add", &self.compose_path]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", &format!("HEAD:{branch}")]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The ids of `service`'s containers in the project, if any.
    pub fn container(&self, service: &str) -> Option<String> {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.compose_project()),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        (!ids.trim().is_empty()).then(|| ids.trim().to_owned())
    }

    /// The deployer's settings for this repository (webhook on `http_port`), `extra` last.
    pub fn env(
        &self,
        bus: &Bus,
        http_port: u16,
        extra: &[(&'static str, String)],
    ) -> Vec<(&'static str, String)> {
        let mut env = service_env(
            bus,
            &[
                ("STEWARD_DEPLOY_REPOSITORY", self.url.clone()),
                ("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev".into()),
                ("STEWARD_DEPLOY_DIR", self.root.join("deploy").display().to_string()),
                ("STEWARD_DEPLOY_PROJECT", self.project.clone()),
                ("STEWARD_DEPLOY_POLL_INTERVAL", "0s".into()),
                ("STEWARD_DEPLOY_WEBHOOK_SECRET", SECRET.into()),
                ("STEWARD_DEPLOY_BACKUP", "false".into()),
                ("STEWARD_DEPLOY_HEALTH_TIMEOUT", "20s".into()),
                ("STEWARD_DEPLOY_HEALTH_GRACE", "2s".into()),
                ("STEWARD_ACK_WAIT", "2s".into()),
                ("HOME", std::env::var("HOME").unwrap_or_else(|_| "/root".into())),
            ],
        );
        env.retain(|(n, _)| *n != "STEWARD_HTTP_ADDR");
        env.push(("STEWARD_HTTP_ADDR", format!("127.0.0.1:{http_port}")));
        for (k, v) in extra {
            env.retain(|(n, _)| n != k);
            env.push((k, v.clone()));
        }
        env
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        for service in ["web", "side"] {
            for id in self.container(service).unwrap_or_default().lines() {
                let _ = try_docker(&["rm", "-f", id]);
            }
        }
        let _ = try_docker(&["network", "rm", &format!("{}_default", self.compose_project())]);
        let label = format!("label=com.docker.compose.project={}", self.compose_project());
        let volumes = try_docker(&["volume", "ls", "-q", "--filter", &label]).unwrap_or_default();
        for volume in volumes.lines() {
            let _ = try_docker(&["volume", "rm", "-f", volume]);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Starts the deployer and waits until it consumes (after it resumed an interrupted
/// deployment, which may run a test first: 20 s, then 60 s, were too short on a loaded
/// machine; it returns as soon as the deployer consumes).
///
/// On Podman it runs as the stack runs it, behind a socket proxy of the deployer's role (the
/// real `steward-sockproxy`, which outlives a kill of the deployer): the proxy makes its
/// one-off containers acceptable to Podman (docs/podman.md, links).
pub fn deployer(env: &[(&'static str, String)]) -> Proc {
    let mut env = env.to_vec();
    let mut companions = vec![];
    if steward_testkit::on_podman() {
        let dir = std::env::temp_dir().join(unique_name("deploy-proxy"));
        std::fs::create_dir_all(&dir).expect("proxy directory");
        // Removed however this ends (a proxy that fails to start panics below).
        let guard = steward_testkit::TempDir::at(dir.clone());
        let socket = dir.join("deployer.sock");
        let proxy = deployer_proxy(&socket);
        env.push(("DOCKER_HOST", format!("unix://{}", socket.display())));
        // The proxy ends first, then its directory goes (with the socket it leaves).
        companions.push(Box::new(guard) as Box<dyn std::any::Any + Send>);
        companions.insert(0, Box::new(proxy));
    }
    let mut p = Proc::start("steward-deployer", &env);
    p.companions = companions;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !p.logs().contains("\"consuming\"") {
        assert!(Instant::now() < deadline, "deployer not consuming: {}", p.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// The real `steward-sockproxy` with the deployer's role on `socket`, in front of the engine
/// under test (it reads its own setting, not DOCKER_HOST: on Podman, Podman's socket), once
/// it listens.
pub fn deployer_proxy(socket: &std::path::Path) -> Proc {
    let mut env = vec![("STEWARD_SOCKPROXY_SOCKETS", format!("deployer={}", socket.display()))];
    if let Some(podman) = steward_testkit::podman_under_test() {
        env.push(("STEWARD_SOCKPROXY_UPSTREAM", podman));
    }
    let proxy = Proc::start("steward-sockproxy", &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "socket proxy not listening: {}", proxy.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy
}

/// HMAC-SHA256 of `body` in hex, by openssl (an implementation independent of ours).
pub fn sign(body: &str, secret: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("openssl output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.rsplit(' ').next().expect("digest").trim().to_owned()
}

/// Gitea's push payload for `commit` on `branch`.
pub fn push_body(repo: &Repo, branch: &str, commit: &str, message: &str) -> String {
    serde_json::json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": commit,
        "repository": {"clone_url": repo.url, "full_name": "ops/site"},
        "head_commit": {
            "id": commit,
            "message": format!("{message}\n\nmore"),
            "author": {"name": "Ada", "email": "ada@example.com"}
        },
        "pusher": {"login": "ada"}
    })
    .to_string()
}

/// POSTs `body` to the webhook with `signature` (none: unsigned); the status and text.
pub async fn post(port: u16, body: &str, signature: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/deploy/webhook"))
        .header("X-Gitea-Event", "push")
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    if let Some(s) = signature {
        req = req.header("X-Gitea-Signature", s);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        // A server that refuses a body unread may close before the client finished sending.
        Err(e) => (0, e.to_string()),
    }
}

/// The events of the flow that deployed `commit`, once it has a terminal one. Callers give
/// generous bounds (180 s): it returns as soon as the outcome is there, and under CI's load an
/// apply with its health gate took over 45 s.
pub async fn outcome(bus: &Bus, commit: &str, bound: Duration) -> Vec<Event> {
    let deadline = Instant::now() + bound;
    loop {
        let all = stored_events(bus).await;
        let correlation = all.iter().find_map(|e| match &e.data {
            EventData::DeployStarted(s) if s.change.commit == commit => Some(e.correlation_id),
            EventData::DeployFailed(f) if f.change.commit == commit => Some(e.correlation_id),
            EventData::DeploySucceeded(s) if s.change.commit == commit => Some(e.correlation_id),
            _ => None,
        });
        if let Some(c) = correlation {
            let flow: Vec<Event> = all.into_iter().filter(|e| e.correlation_id == c).collect();
            if flow.iter().any(|e| TERMINAL.contains(&e.event_type())) {
                return flow;
            }
        }
        assert!(Instant::now() < deadline, "no outcome for {commit}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn terminal(flow: &[Event]) -> Vec<&'static str> {
    flow.iter().map(Event::event_type).filter(|t| TERMINAL.contains(t)).collect()
}

/// Commits `version` to `dev` and pushes it by a signed webhook, which is accepted: the commit.
pub async fn push_version(repo: &Repo, port: u16, version: &str, message: &str) -> String {
    let commit = repo.commit("dev", version, message);
    push_commit(repo, port, &commit, message).await;
    commit
}

/// Tells the deployer by a signed webhook that `commit` (already pushed to `dev`) is there;
/// the webhook accepts it.
pub async fn push_commit(repo: &Repo, port: u16, commit: &str, message: &str) {
    let body = push_body(repo, "dev", commit, message);
    let (status, text) = post(port, &body, Some(&sign(&body, SECRET))).await;
    assert_eq!(status, 202, "{text}");
}

/// The first `deploy.pending` of `commit` (its event and payload), waited for.
pub async fn pending_of(bus: &Bus, commit: &str) -> (Event, steward_events::DeployPending) {
    first_event(bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == commit => Some((e.clone(), p.clone())),
        _ => None,
    })
    .await
}

/// Flow `correlation`'s events once a redelivered request (ack wait 2 s) had time to settle.
pub async fn settled_flow(bus: &Bus, correlation: uuid::Uuid) -> Vec<Event> {
    tokio::time::sleep(Duration::from_secs(4)).await;
    stored_events(bus).await.into_iter().filter(|e| e.correlation_id == correlation).collect()
}

pub async fn deploy_by_webhook(
    bus: &Bus,
    repo: &Repo,
    port: u16,
    version: &str,
    message: &str,
) -> (String, Vec<Event>) {
    let commit = push_version(repo, port, version, message).await;
    let flow = outcome(bus, &commit, Duration::from_secs(180)).await;
    (commit, flow)
}

pub fn serves(port: u16, version: &str) -> bool {
    http_get(port).is_some_and(|b| b.contains(&format!("app {version}")))
}

/// v1 deployed by a deployer that is gone afterwards (the start of every kill run).
pub async fn deploy_v1_cleanly(bus: &Bus, repo: &Repo, port: u16) {
    let _clean = deployer(&repo.env(bus, port, &[]));
    let (_, flow) = deploy_by_webhook(bus, repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
}

/// v1 deployed cleanly; then v2 pushed to a deployer armed to abort at `point`; started
/// again: exactly one terminal event for v2, no event twice, and web on v1 after a rollback
/// or failure, v2 after a success.
pub async fn killed_at(point: &str) -> &'static str {
    let bus = TestBus::new("deploykill").await;
    let repo = Repo::new();
    let port = free_port();
    deploy_v1_cleanly(&bus, &repo, port).await;
    let mut armed = deployer(&repo.env(&bus, port, &[("STEWARD_FAILPOINTS", point.into())]));
    let commit = repo.commit("dev", "v2", "web: v2");
    let body = push_body(&repo, "dev", &commit, "web: v2");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    assert!(armed.exits_within(Duration::from_secs(120)), "{point} not reached: {}", armed.logs());
    assert!(armed.logs().contains("aborting"), "{point}: {}", armed.logs());
    drop(armed);
    let _again = deployer(&repo.env(&bus, port, &[]));
    let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
    // The redelivered request settles without a second outcome.
    let flow = settled_flow(&bus, flow[0].correlation_id).await;
    let ends = terminal(&flow);
    assert_eq!(ends.len(), 1, "{point}: {ends:?}");
    let mut ids: Vec<_> = flow.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), flow.len(), "{point}: an event twice");
    let want = if ends[0] == "deploy.succeeded" { "v2" } else { "v1" };
    wait_for(&format!("{point}: web on {want}"), Duration::from_secs(10), || {
        serves(repo.web, want).then_some(())
    });
    eprintln!("{point}: {}", ends[0]);
    ends[0]
}

/// The first stored event `pick` accepts, waited for up to `bound`.
pub async fn first_event<T>(bus: &Bus, bound: Duration, pick: impl Fn(&Event) -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = stored_events(bus).await.iter().find_map(&pick) {
            return found;
        }
        assert!(Instant::now() < deadline, "the awaited event did not come");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
