//! The deployer (`steward-deployer`, issue 21) as a real process against the test bed's Docker
//! engine and NATS and a real git server (`git daemon` on 127.0.0.1 serving a bare repository
//! the test pushes to): a signed push webhook deploys only the changed service, health-gated;
//! a broken commit is rolled back to the previous commit's definitions; bad signatures are
//! refused and counted; an older commit replayed is ignored; polling finds a new head; and a
//! deployer killed at its points (SIGABRT through failpoints) ends with one terminal event and
//! the stack on the old or the new commit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steward_bus::Bus;
use steward_events::{Change, DeployRequested, Event, EventData};
use steward_system_tests::{service_env, steward, steward_ok, Proc};
use steward_testkit::docker::{docker, try_docker};
use steward_testkit::{free_port, http_get, stored_events, unique_name, wait_for, TestBus};

const SECRET: &str = "deploy-test-secret-0123456789";
const TERMINAL: [&str; 3] = ["deploy.succeeded", "deploy.rolled_back", "deploy.failed"];

/// A bare repository served by `git daemon`, a clone to commit in, and the deployer's
/// directory; all removed (with the compose project's containers) on drop.
struct Repo {
    root: PathBuf,
    work: PathBuf,
    url: String,
    daemon: Child,
    project: String,
    /// Host ports of the two services.
    web: u16,
    side: u16,
}

fn git(dir: &Path, args: &[&str]) -> String {
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
    fn new() -> Self {
        let name = unique_name("deploy");
        let root = std::env::temp_dir().join(&name);
        let work = root.join("work");
        std::fs::create_dir_all(&work).expect("test dir");
        git(&root, &["init", "-q", "--bare", "origin.git"]);
        git(&work, &["init", "-q", "-b", "dev"]);
        let port = free_port();
        let daemon = Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"])
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
        Self { root, work, url, daemon, project: name, web: free_port(), side: free_port() }
    }

    /// Commits a compose file with `web` on `web_version` (and `side` always on v1) and
    /// pushes it to `branch`; the commit id.
    fn commit(&self, branch: &str, web_version: &str, message: &str) -> String {
        let (web, side) = (self.web, self.side);
        let compose = format!(
            "version: \"2.4\"\nservices:\n  web:\n    image: steward-test/app:{web_version}\n    ports: [\"127.0.0.1:{web}:8080\"]\n    labels:\n      steward.health.url: http://127.0.0.1:{web}/\n  side:\n    image: steward-test/app:v1\n    ports: [\"127.0.0.1:{side}:8080\"]\n"
        );
        std::fs::write(self.work.join("docker-compose.yml"), compose).expect("write compose");
        git(&self.work, &["add", "docker-compose.yml"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", &format!("HEAD:{branch}")]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The ids of `service`'s containers in the project, if any.
    fn container(&self, service: &str) -> Option<String> {
        let ids = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}-dev", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        (!ids.trim().is_empty()).then(|| ids.trim().to_owned())
    }

    /// The deployer's settings for this repository (webhook on `http_port`), `extra` last.
    fn env(
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
        let _ = try_docker(&["network", "rm", &format!("{}-dev_default", self.project)]);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Starts the deployer and waits until it consumes.
fn deployer(env: &[(&'static str, String)]) -> Proc {
    let p = Proc::start("steward-deployer", env);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.logs().contains("\"consuming\"") {
        assert!(Instant::now() < deadline, "deployer not consuming: {}", p.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// HMAC-SHA256 of `body` in hex, by openssl (an implementation independent of ours).
fn sign(body: &str, secret: &str) -> String {
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
fn push_body(repo: &Repo, branch: &str, commit: &str, message: &str) -> String {
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
async fn post(port: u16, body: &str, signature: Option<&str>) -> (u16, String) {
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

/// The events of the flow that deployed `commit`, once it has a terminal one.
async fn outcome(bus: &Bus, commit: &str, bound: Duration) -> Vec<Event> {
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

fn terminal(flow: &[Event]) -> Vec<&'static str> {
    flow.iter().map(Event::event_type).filter(|t| TERMINAL.contains(t)).collect()
}

async fn deploy_by_webhook(
    bus: &Bus,
    repo: &Repo,
    port: u16,
    version: &str,
    message: &str,
) -> (String, Vec<Event>) {
    let commit = repo.commit("dev", version, message);
    let body = push_body(repo, "dev", &commit, message);
    let (status, text) = post(port, &body, Some(&sign(&body, SECRET))).await;
    assert_eq!(status, 202, "{text}");
    let flow = outcome(bus, &commit, Duration::from_secs(45)).await;
    (commit, flow)
}

fn serves(port: u16, version: &str) -> bool {
    http_get(port).is_some_and(|b| b.contains(&format!("app {version}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_recreates_only_the_changed_service_a_broken_one_is_rolled_back_an_old_one_ignored()
{
    let bus = TestBus::new("deploy").await;
    let repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));

    // The first commit: both services are new.
    let (first, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    wait_for("web v1", Duration::from_secs(10), || serves(repo.web, "v1").then_some(()));
    let side = repo.container("side").expect("side runs");

    // Only web's image changes: only web is recreated, health-gated, succeeded.
    let (second, flow) = deploy_by_webhook(&bus, &repo, port, "v2", "web: v2").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let done = flow
        .iter()
        .find_map(|e| match &e.data {
            EventData::DeploySucceeded(d) => Some(d.clone()),
            _ => None,
        })
        .expect("succeeded");
    assert_eq!(done.services, ["web"]);
    assert_eq!(done.previous_commit.as_deref(), Some(first.as_str()));
    assert_eq!(done.change.message.as_deref(), Some("web: v2"));
    assert_eq!(done.change.author.as_deref(), Some("Ada <ada@example.com>"));
    assert!(serves(repo.web, "v2"));
    assert_eq!(repo.container("side").as_deref(), Some(side.as_str()), "side was recreated");

    // A commit whose web never gets healthy: rolled back to the previous definition.
    let (_third, flow) = deploy_by_webhook(&bus, &repo, port, "v3", "web: v3").await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    let back = flow
        .iter()
        .find_map(|e| match &e.data {
            EventData::DeployRolledBack(d) => Some(d.clone()),
            _ => None,
        })
        .expect("rolled back");
    assert_eq!(back.previous_commit.as_deref(), Some(second.as_str()));
    assert_eq!(back.services, ["web"]);
    assert_eq!(back.previous_healthy, Some(true));
    assert!(!back.log_tail.is_empty(), "no log lines of the failed web");
    assert!(serves(repo.web, "v2"), "web is not back on v2");
    assert_eq!(repo.container("side").as_deref(), Some(side.as_str()), "side was touched");

    // A replayed request of the first commit (a new event, published now): ignored.
    let before = stored_events(&bus).await.len();
    let replay = Event::new(
        "test",
        DeployRequested {
            change: Change {
                repository: repo.url.clone(),
                branch: "dev".into(),
                environment: "dev".into(),
                commit: first.clone(),
                author: None,
                message: None,
            },
            requested_by: Some("test".into()),
        },
    );
    bus.publish(&replay).await.expect("publish replay");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = stored_events(&bus).await;
    assert_eq!(after.len(), before + 1, "the replay caused events: {:#?}", &after[before..]);
    assert!(serves(repo.web, "v2"));
}

fn http_get_path(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_badly_signed_webhooks_are_refused_counted_and_publish_nothing() {
    let bus = TestBus::new("deployhook").await;
    let repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let commit = repo.commit("dev", "v1", "first");
    let body = push_body(&repo, "dev", &commit, "first");
    assert_eq!(post(port, &body, None).await.0, 401);
    assert_eq!(post(port, &body, Some(&sign(&body, "another-secret-0123456789"))).await.0, 401);
    assert_eq!(post(port, &body, Some("not hex")).await.0, 401);
    // Signed, but for another body.
    assert_eq!(post(port, &body, Some(&sign("{}", SECRET))).await.0, 401);
    // Too big: refused before it is read whole (413, or the connection closed early).
    let big = "x".repeat(2 * 1024 * 1024);
    let (status, _) = post(port, &big, Some(&sign(&big, SECRET))).await;
    assert!(status == 413 || status == 0, "{status}");
    // Signed, but not JSON; a branch that deploys nowhere.
    assert_eq!(post(port, "{not json", Some(&sign("{not json", SECRET))).await.0, 400);
    let feature = push_body(&repo, "feature", &commit, "first");
    assert_eq!(post(port, &feature, Some(&sign(&feature, SECRET))).await.0, 422);
    let metrics = http_get_path(port, "/metrics");
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("steward_deploy_webhook_refused"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 4.0, "{metrics}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published: Vec<_> = stored_events(&bus).await.iter().map(Event::event_type).collect();
    assert!(published.is_empty(), "{published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_deploys_a_new_head() {
    let bus = TestBus::new("deploypoll").await;
    let repo = Repo::new();
    let commit = repo.commit("dev", "v1", "first");
    let port = free_port();
    let env = repo.env(&bus, port, &[("STEWARD_DEPLOY_POLL_INTERVAL", "1s".into())]);
    let _deployer = deployer(&env);
    let flow = outcome(&bus, &commit, Duration::from_secs(45)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let requested = flow.iter().find_map(|e| match &e.data {
        EventData::DeployRequested(r) => Some(r.requested_by.clone()),
        _ => None,
    });
    assert_eq!(requested, Some(Some("poll".into())));
    assert!(serves(repo.web, "v1"));
}

/// v1 deployed cleanly; then v2 pushed to a deployer armed to abort at `point`; started
/// again: exactly one terminal event for v2, no event twice, and web on v1 after a rollback
/// or failure, v2 after a success.
async fn killed_at(point: &str) {
    let bus = TestBus::new("deploykill").await;
    let repo = Repo::new();
    let port = free_port();
    {
        let _clean = deployer(&repo.env(&bus, port, &[]));
        let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
        assert_eq!(terminal(&flow), ["deploy.succeeded"]);
    }
    let mut armed = deployer(&repo.env(&bus, port, &[("STEWARD_FAILPOINTS", point.into())]));
    let commit = repo.commit("dev", "v2", "web: v2");
    let body = push_body(&repo, "dev", &commit, "web: v2");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    assert!(armed.exits_within(Duration::from_secs(30)), "{point} not reached: {}", armed.logs());
    assert!(armed.logs().contains("aborting"), "{point}: {}", armed.logs());
    drop(armed);
    let _again = deployer(&repo.env(&bus, port, &[]));
    let flow = outcome(&bus, &commit, Duration::from_secs(45)).await;
    // The redelivered request (ack wait 2 s) settles without a second outcome.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let correlation = flow[0].correlation_id;
    let flow: Vec<Event> =
        stored_events(&bus).await.into_iter().filter(|e| e.correlation_id == correlation).collect();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_claim_it_prepares_again_and_ends_once() {
    killed_at("claimed:preparing=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_announcing_the_start_it_ends_once_on_the_old_commit() {
    killed_at("published:deploy.started=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_the_apply_and_the_verdict_it_rolls_back_once() {
    killed_at("applied=1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_verdict_it_ends_once_on_the_new_commit() {
    killed_at("saved:succeeded=1").await;
}

/// The first stored event `pick` accepts, waited for up to `bound`.
async fn first_event<T>(bus: &Bus, bound: Duration, pick: impl Fn(&Event) -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(found) = stored_events(bus).await.iter().find_map(&pick) {
            return found;
        }
        assert!(Instant::now() < deadline, "the awaited event did not come");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Approves the pending deployment of `commit` as a human would (`deploy.approved`).
async fn approve(bus: &Bus, commit: &str) -> Event {
    let pending = first_event(bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == commit => Some((e.clone(), p.clone())),
        _ => None,
    })
    .await;
    let approved = Event::caused_by(
        &pending.0,
        "steward/test",
        steward_events::DeployApproved { deploy_id: pending.1.deploy_id, by: "ops@test".into() },
    );
    bus.publish(&approved).await.expect("publish approval");
    pending.0
}

/// Waits for the `backup.requested` of the flow `correlation` and answers it with
/// `backup.done` as the backup service would; the request.
async fn back_up(bus: &Bus, correlation: uuid::Uuid) -> steward_events::BackupRequested {
    let request = first_event(bus, Duration::from_secs(30), |e| match &e.data {
        EventData::BackupRequested(r) if e.correlation_id == correlation => {
            Some((e.clone(), r.clone()))
        }
        _ => None,
    })
    .await;
    let done = Event::caused_by(
        &request.0,
        "steward-backup/test",
        steward_events::BackupDone {
            backup_id: "20261130T000000Z".into(),
            manifest_key: "m".into(),
            size_bytes: 1,
            components: vec![],
            duration_ms: 1,
        },
    );
    bus.publish(&done).await.expect("publish backup.done");
    request.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_environment_waits_for_approval_and_the_stack_is_backed_up_first() {
    let bus = TestBus::new("deployman").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [
        ("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned()),
        ("STEWARD_DEPLOY_BACKUP", "true".to_owned()),
    ];
    let _deployer = deployer(&repo.env(&bus, port, &extra));

    // Nothing runs yet: approved, then deployed without a backup (nothing to back up).
    let first = repo.commit("dev", "v1", "first");
    let body = push_body(&repo, "dev", &first, "first");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    let pending = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == first => Some(p.deploy_id),
        _ => None,
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(repo.container("web").is_none(), "deployed before approval");
    // Approved by the operator's command, by environment; the list shows what waits.
    let listed = steward_ok(&bus, &["deploy", "list"]);
    let row = listed.lines().find(|l| l.starts_with("dev ")).unwrap_or_default();
    assert!(row.contains(&pending.to_string()) && row.contains("pending"), "{listed}");
    assert!(row.contains(&first[..10]), "{listed}");
    let refused = steward(&bus, &["deploy", "approve", "staging"]);
    assert!(!refused.status.success(), "approved a deployment of no environment");
    let said = steward_ok(&bus, &["deploy", "approve", "dev"]);
    assert!(said.contains(&pending.to_string()), "{said}");
    let flow = outcome(&bus, &first, Duration::from_secs(45)).await;
    let approved = flow.iter().find_map(|e| match &e.data {
        EventData::DeployApproved(a) => Some(a.by.clone()),
        _ => None,
    });
    assert!(approved.is_some_and(|by| by.starts_with("tester@")), "{flow:#?}");
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");

    // Web changes: approved, then backed up before web is touched.
    let second = repo.commit("dev", "v2", "web: v2");
    let body = push_body(&repo, "dev", &second, "web: v2");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    let pending = approve(&bus, &second).await;
    let requested = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::BackupRequested(r) if e.correlation_id == pending.correlation_id => {
            Some(r.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(requested.containers.len(), 1, "{:?}", requested.containers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(serves(repo.web, "v1"), "web touched before the backup was done");
    back_up(&bus, pending.correlation_id).await;
    let flow = outcome(&bus, &second, Duration::from_secs(45)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    let order: Vec<&str> = flow.iter().map(Event::event_type).collect();
    let at = |t: &str| order.iter().position(|o| *o == t).unwrap_or(usize::MAX);
    assert!(at("deploy.pending") < at("deploy.approved"), "{order:?}");
    assert!(at("deploy.approved") < at("backup.requested"), "{order:?}");
    assert!(at("backup.done") < at("deploy.succeeded"), "{order:?}");
    assert!(serves(repo.web, "v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_file_that_does_not_parse_fails_the_deployment_and_touches_nothing() {
    let bus = TestBus::new("deploybad").await;
    let repo = Repo::new();
    let port = free_port();
    let _deployer = deployer(&repo.env(&bus, port, &[]));
    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"]);
    let web = repo.container("web").expect("web runs");
    std::fs::write(repo.work.join("docker-compose.yml"), "services: [\n  web:\n").expect("write");
    git(&repo.work, &["commit", "-q", "-am", "broken"]);
    git(&repo.work, &["push", "-q", "origin", "HEAD:dev"]);
    let commit = git(&repo.work, &["rev-parse", "HEAD"]);
    let body = push_body(&repo, "dev", &commit, "broken");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    let flow = outcome(&bus, &commit, Duration::from_secs(30)).await;
    let failed = flow
        .iter()
        .find_map(|e| match &e.data {
            EventData::DeployFailed(f) => Some(f.clone()),
            _ => None,
        })
        .expect("deploy.failed");
    assert!(failed.reason.contains("config"), "{}", failed.reason);
    assert!(!failed.log_tail.is_empty(), "no parser output");
    assert_eq!(terminal(&flow), ["deploy.failed"]);
    assert!(!flow.iter().any(|e| e.event_type() == "deploy.started"), "{flow:#?}");
    assert_eq!(repo.container("web").as_deref(), Some(web.as_str()), "web was touched");
    assert!(serves(repo.web, "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_push_replaces_one_waiting_for_approval() {
    let bus = TestBus::new("deploysup").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_ENVIRONMENTS", "dev=dev:manual".to_owned())];
    let _deployer = deployer(&repo.env(&bus, port, &extra));
    let first = repo.commit("dev", "v1", "first");
    let body = push_body(&repo, "dev", &first, "first");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    let waiting = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployPending(p) if p.change.commit == first => Some(e.correlation_id),
        _ => None,
    })
    .await;
    let second = repo.commit("dev", "v2", "second");
    let body = push_body(&repo, "dev", &second, "second");
    assert_eq!(post(port, &body, Some(&sign(&body, SECRET))).await.0, 202);
    let superseded = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployFailed(f) if e.correlation_id == waiting => Some(f.reason.clone()),
        _ => None,
    })
    .await;
    assert!(superseded.contains(&second), "{superseded}");
    approve(&bus, &second).await;
    let flow = outcome(&bus, &second, Duration::from_secs(45)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v2"));
}

/// Pushes `commit` (already committed by [`Repo::commit`]) through the signed webhook; the
/// request's correlation id, read back from the stream.
async fn push(bus: &Bus, repo: &Repo, port: u16, commit: &str, message: &str) -> uuid::Uuid {
    let body = push_body(repo, "dev", commit, message);
    let (status, text) = post(port, &body, Some(&sign(&body, SECRET))).await;
    assert_eq!(status, 202, "{text}");
    first_event(bus, Duration::from_secs(10), |e| match &e.data {
        EventData::DeployRequested(r) if r.change.commit == commit => Some(e.correlation_id),
        _ => None,
    })
    .await
}

/// The events of flow `correlation` so far.
async fn flow_of(bus: &Bus, correlation: uuid::Uuid) -> Vec<Event> {
    stored_events(bus).await.into_iter().filter(|e| e.correlation_id == correlation).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_a_deployment_wait_the_newest_wins_the_older_is_superseded_across_a_kill() {
    let bus = TestBus::new("deployq").await;
    let repo = Repo::new();
    let port = free_port();
    let extra = [("STEWARD_DEPLOY_BACKUP", "true".to_owned())];
    // Armed to abort when a newer request takes the slot (saved, its displaced request's end
    // not yet published).
    let mut armed = repo.env(&bus, port, &extra);
    armed.push(("STEWARD_FAILPOINTS", "saved:queued=1".into()));
    let mut first_deployer = deployer(&armed);
    let (_, flow) = deploy_by_webhook(&bus, &repo, port, "v1", "first").await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");

    // v2 starts and waits for its backup; v3 and then a newer commit are pushed meanwhile.
    let second = repo.commit("dev", "v2", "web: v2");
    let second_flow = push(&bus, &repo, port, &second, "web: v2").await;
    first_event(&bus, Duration::from_secs(30), |e| {
        (e.correlation_id == second_flow && e.event_type() == "backup.requested").then_some(())
    })
    .await;
    let third = repo.commit("dev", "v3", "web: v3");
    let third_flow = push(&bus, &repo, port, &third, "web: v3").await;
    wait_for("v3 waits", Duration::from_secs(15), || {
        first_deployer.logs().contains("the request waits").then_some(())
    });
    let fourth = repo.commit("dev", "v1", "web: back to v1");
    let fourth_flow = push(&bus, &repo, port, &fourth, "web: back to v1").await;
    assert!(first_deployer.exits_within(Duration::from_secs(20)), "{}", first_deployer.logs());
    assert!(first_deployer.logs().contains("aborting"), "{}", first_deployer.logs());
    drop(first_deployer);
    assert!(serves(repo.web, "v1"), "web touched while v2 waited for its backup");

    // Started again: v3's end is published, v2 goes on once backed up, then the newest.
    let _deployer = deployer(&repo.env(&bus, port, &extra));
    let superseded = first_event(&bus, Duration::from_secs(30), |e| match &e.data {
        EventData::DeployFailed(f) if e.correlation_id == third_flow => Some(f.clone()),
        _ => None,
    })
    .await;
    assert!(superseded.reason.contains(&format!("superseded by {fourth}")), "{superseded:?}");
    back_up(&bus, second_flow).await;
    let flow = outcome(&bus, &second, Duration::from_secs(45)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    back_up(&bus, fourth_flow).await;
    let flow = outcome(&bus, &fourth, Duration::from_secs(45)).await;
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(serves(repo.web, "v1"));

    // Redeliveries settle without a second outcome; v3 never started; no event twice.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (commit, correlation, end) in [
        (&second, second_flow, "deploy.succeeded"),
        (&third, third_flow, "deploy.failed"),
        (&fourth, fourth_flow, "deploy.succeeded"),
    ] {
        let flow = flow_of(&bus, correlation).await;
        assert_eq!(terminal(&flow), [end], "{commit}: {flow:#?}");
        let mut ids: Vec<_> = flow.iter().map(|e| e.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), flow.len(), "{commit}: an event twice");
    }
    let third_started = flow_of(&bus, third_flow).await;
    assert!(!third_started.iter().any(|e| e.event_type() == "deploy.started"), "v3 started");
}
