//! Start-first deployments behind a real HAProxy (issue 21): the repository's `web` is
//! labelled `steward.update.strategy=start-first` and served by a `haproxy` of the test's own
//! (Debian's package) that reaches it on a Docker network of the test's own; `side` is a plain
//! service with a host port. A prober sends a request through HAProxy every 20 ms during every
//! deployment and counts the ones that failed: the target is none, also through a broken
//! release, and also when the deployer is killed twice in the middle of a swap.

mod deploy_common;

use std::cell::Cell;

use deploy_common::*;
use steward_haproxy::{Name, Runtime};
use steward_testkit::docker::{docker, Network};
use steward_testkit::haproxy::{get_ok, Haproxy, Prober};

/// The repository with v1 deployed, HAProxy serving it, and the deployer's settings. Fields
/// drop in order: the project's containers before the network they are on.
struct Stage {
    repo: Repo,
    net: Network,
    haproxy: Haproxy,
    bus: TestBus,
    /// The webhook's port.
    port: u16,
    /// Bumped per commit: a label on both services, so each commit changes both.
    rev: Cell<u32>,
    /// The `rev` of the commit deployed last (side's label).
    deployed: Cell<u32>,
}

/// The compose file: `web` on `version`, start-first on the test's network; `side` plain.
fn compose(net: &str, side_port: u16, version: &str, rev: u32, web_extra: &str) -> String {
    format!(
        "version: \"2.4\"\nservices:\n  web:\n    image: steward-test/app:{version}\n    networks: [front]\n{web_extra}    labels:\n      steward.update.strategy: start-first\n      steward.haproxy.backend: app\n      steward.haproxy.server: web\n      steward.haproxy.port: \"8080\"\n      steward.test.rev: \"{rev}\"\n  side:\n    image: steward-test/app:v1\n    ports: [\"127.0.0.1:{side_port}:8080\"]\n    labels:\n      steward.test.rev: \"{rev}\"\nnetworks:\n  front:\n    external: true\n    name: {net}\n"
    )
}

impl Stage {
    /// v1 deployed by a deployer without HAProxy (web is new: it is simply made), then
    /// HAProxy started with server `web` at its address.
    async fn new(prefix: &str) -> Self {
        let bus = TestBus::new(prefix).await;
        let net = Network::create(prefix);
        let repo = Repo::new();
        let port = free_port();
        let stage_haproxy = {
            let _first = deployer(&repo.env(&bus, port, &[]));
            let text = compose(&net.0, repo.side, "v1", 1, "");
            let commit = repo.commit_text("dev", &text, "v1");
            push_commit(&repo, port, &commit, "v1").await;
            let flow = outcome(&bus, &commit, Duration::from_secs(180)).await;
            assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
            let web = repo.container("web").expect("web made");
            let addr = address_on(&web, &net.0);
            net.assert_bridge_keeps_its_address();
            Haproxy::start("web", format!("{addr}:8080").parse().expect("address"))
        };
        Self {
            repo,
            net,
            haproxy: stage_haproxy,
            bus,
            port,
            rev: Cell::new(1),
            deployed: Cell::new(1),
        }
    }

    /// The deployer's settings with HAProxy's socket, `extra` last.
    fn env(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut all = vec![
            ("STEWARD_HAPROXY_SOCKET", self.haproxy.socket().display().to_string()),
            ("STEWARD_HAPROXY_SWITCH_TIMEOUT", "10s".to_owned()),
        ];
        all.extend_from_slice(extra);
        self.repo.env(&self.bus, self.port, &all)
    }

    /// Commits web on `version` (both services changed), `web_extra` added to web's keys.
    fn commit(&self, version: &str, web_extra: &str) -> String {
        self.rev.set(self.rev.get() + 1);
        let text = compose(&self.net.0, self.repo.side, version, self.rev.get(), web_extra);
        self.repo.commit_text("dev", &text, &format!("web: {version}"))
    }

    /// Commits and pushes `version`; its flow once concluded.
    async fn deploy(&self, version: &str) -> Vec<Event> {
        let commit = self.commit(version, "");
        push_commit(&self.repo, self.port, &commit, "web").await;
        outcome(&self.bus, &commit, Duration::from_secs(180)).await
    }

    /// The version HAProxy serves now.
    fn served(&self) -> String {
        let body = get_ok(self.haproxy.port).expect("HAProxy serves");
        body.trim().trim_start_matches("app ").to_owned()
    }

    /// Exactly one web container, running; HAProxy's backend has exactly one server, serving,
    /// at that container's address; what HAProxy serves is `version`; side is labelled with
    /// `side_rev`.
    async fn consistent(&self, version: &str, side_rev: u32, what: &str) {
        let web = self.repo.container("web").unwrap_or_default();
        assert_eq!(web.lines().count(), 1, "{what}: web containers: {web:?}");
        assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &web]), "true", "{what}");
        let ip = address_on(&web, &self.net.0);
        let servers = Runtime::new(self.haproxy.socket())
            .servers(&Name::new("app").expect("name"))
            .await
            .expect("servers");
        assert_eq!(servers.len(), 1, "{what}: {servers:?}");
        assert!(servers[0].serving(), "{what}: {servers:?}");
        assert_eq!((servers[0].addr.as_str(), servers[0].port), (ip.as_str(), 8080), "{what}");
        wait_for(&format!("{what}: {version} served"), Duration::from_secs(10), || {
            (self.served() == version).then_some(())
        });
        let side = self.repo.container("side").expect("side");
        let rev =
            docker(&["inspect", "-f", "{{index .Config.Labels \"steward.test.rev\"}}", &side]);
        assert_eq!(rev, side_rev.to_string(), "{what}: side's definition");
    }
}

/// Container `id`'s address on network `net`.
fn address_on(id: &str, net: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        id,
    ])
}

fn reason_of(flow: &[Event]) -> String {
    flow.iter()
        .find_map(|e| match &e.data {
            EventData::DeployRolledBack(r) => Some(r.reason.clone()),
            EventData::DeployFailed(f) => Some(f.reason.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_first_deployment_serves_every_request_and_a_broken_one_is_rolled_back_behind_it() {
    let s = Stage::new("deploysf").await;
    let _deployer = deployer(&s.env(&[]));

    let prober = Prober::start(s.haproxy.port);
    let flow = s.deploy("v2").await;
    let (seen, failed) = prober.finish();
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(
        failed.is_empty(),
        "failed requests through HAProxy during a start-first deployment:\n{failed:?}\n{}",
        s.haproxy.notable_log()
    );
    assert!(seen.first().is_some_and(|b| b.contains("app v1")), "{:?}", seen.first());
    assert!(seen.last().is_some_and(|b| b.contains("app v2")), "{:?}", seen.last());
    s.consistent("v2", 2, "v2 deployed").await;
    let servers = Runtime::new(s.haproxy.socket()).servers(&Name::new("app").expect("name")).await;
    assert_eq!(servers.expect("servers")[0].name, "web-b", "the server names alternate");

    // v3 never gets healthy: rolled back while v2 serves every request; side (changed with
    // it, recreated in place) is back on v2's definition.
    let prober = Prober::start(s.haproxy.port);
    let flow = s.deploy("v3").await;
    let (seen, failed) = prober.finish();
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    assert!(
        failed.is_empty(),
        "failed requests while a broken release was tried and rolled back:\n{failed:?}\n{}",
        s.haproxy.notable_log()
    );
    assert!(seen.iter().all(|b| b.contains("app v2")), "{seen:?}");
    let reason = reason_of(&flow);
    assert!(reason.contains("the new web"), "{reason}");
    s.consistent("v2", 2, "v3 rolled back").await;

    // And back to v1: the server takes its first name again.
    let prober = Prober::start(s.haproxy.port);
    let flow = s.deploy("v1").await;
    let (_, failed) = prober.finish();
    assert_eq!(terminal(&flow), ["deploy.succeeded"], "{flow:#?}");
    assert!(failed.is_empty(), "v1 again:\n{failed:?}\n{}", s.haproxy.notable_log());
    s.consistent("v1", 4, "v1 deployed again").await;
    let servers = Runtime::new(s.haproxy.socket()).servers(&Name::new("app").expect("name")).await;
    assert_eq!(servers.expect("servers")[0].name, "web");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_first_service_that_cannot_be_swapped_is_refused_untouched() {
    let s = Stage::new("deploysfno").await;
    let web = s.repo.container("web").expect("web");
    let untouched = |what: &str, flow: &[Event], end: &str, words: &str| {
        assert_eq!(terminal(flow), [end], "{what}: {flow:#?}");
        let reason = reason_of(flow);
        assert!(reason.contains(words), "{what}: {reason}");
        assert!(reason.contains("nothing was changed"), "{what}: {reason}");
        assert_eq!(s.repo.container("web").as_deref(), Some(web.as_str()), "{what}: web touched");
    };

    // Without HAProxy's socket: refused as it is prepared.
    {
        let _d = deployer(&s.repo.env(&s.bus, s.port, &[]));
        let flow = s.deploy("v2").await;
        untouched("no socket", &flow, "deploy.failed", "STEWARD_HAPROXY_SOCKET");
    }
    let _d = deployer(&s.env(&[]));
    // A host port, a fixed container name: two containers cannot share them.
    for (extra, words) in [
        ("    ports: [\"127.0.0.1:1:8080\"]\n", "publishes ports"),
        ("    container_name: fixed-web\n", "container_name"),
    ] {
        let commit = s.commit("v2", extra);
        push_commit(&s.repo, s.port, &commit, "web").await;
        let flow = outcome(&s.bus, &commit, Duration::from_secs(180)).await;
        untouched(words, &flow, "deploy.failed", words);
    }
    // HAProxy's server moved by hand to another address that answers (side's host port):
    // refused at the apply, before the pre-deployment commands and any container is made.
    let runtime = Runtime::new(s.haproxy.socket());
    let (app, server) = (Name::new("app").expect("name"), Name::new("web").expect("name"));
    let ip = address_on(&web, &s.net.0);
    let here: std::net::SocketAddr = format!("{ip}:8080").parse().expect("address");
    let elsewhere: std::net::SocketAddr =
        format!("127.0.0.1:{}", s.repo.side).parse().expect("address");
    runtime.move_server(&app, &server, here, elsewhere).await.expect("moved");
    wait_for("the moved server up", Duration::from_secs(10), || get_ok(s.haproxy.port));
    let flow = s.deploy("v2").await;
    untouched("drift", &flow, "deploy.rolled_back", &format!("app/web is at {elsewhere}"));
    runtime.move_server(&app, &server, elsewhere, here).await.expect("moved back");
    // Neither of its two servers serves (put in maintenance by hand): refused the same way.
    runtime.maint(&app, &server).await.expect("maint");
    let flow = s.deploy("v2").await;
    untouched("neither serves", &flow, "deploy.rolled_back", "neither of web and web-b serves");
    runtime.ready(&app, &server).await.expect("ready");
    // A stopped leftover of the service beside the running one: compose's `--scale` would
    // count it (start it instead of making the new container); refused.
    let project = s.repo.compose_project();
    let leftover = steward_testkit::unique_name("deploysf-left");
    docker(&[
        "create",
        "--name",
        &leftover,
        "--label",
        &format!("com.docker.compose.project={project}"),
        "--label",
        "com.docker.compose.service=web",
        "steward-test/app:v1",
    ]);
    let flow = s.deploy("v2").await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "leftover: {flow:#?}");
    let reason = reason_of(&flow);
    assert!(reason.contains("exactly one container"), "leftover: {reason}");
    docker(&["rm", "-f", &leftover]);
    assert_eq!(s.repo.container("web").as_deref(), Some(web.as_str()), "leftover: web touched");
    s.consistent("v1", 1, "after the refusals").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_container_that_stops_after_the_switch_is_rolled_back_to_the_old_one() {
    let s = Stage::new("deploysfstop").await;
    // The deployer pauses as the other services' gate begins (HAProxy serves the new web by
    // then); the new web is killed meanwhile.
    let _d = deployer(&s.env(&[("STEWARD_FAILPOINTS", "gate=sleep:4000".into())]));
    let old = s.repo.container("web").expect("web");
    let commit = s.commit("v2", "");
    push_commit(&s.repo, s.port, &commit, "web").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let new = loop {
        let ids = s.repo.container("web").unwrap_or_default();
        let switched = Runtime::new(s.haproxy.socket())
            .servers(&Name::new("app").expect("name"))
            .await
            .is_ok_and(|servers| servers.len() == 1 && servers[0].name == "web-b");
        if let Some(new) = ids.lines().find(|id| *id != old).filter(|_| switched) {
            break new.to_owned();
        }
        assert!(Instant::now() < deadline, "HAProxy never switched to a new web");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    docker(&["kill", &new]);
    let flow = outcome(&s.bus, &commit, Duration::from_secs(180)).await;
    assert_eq!(terminal(&flow), ["deploy.rolled_back"], "{flow:#?}");
    let reason = reason_of(&flow);
    assert!(reason.contains("the new web stopped serving"), "{reason}");
    // The old one was never removed: it serves again, alone.
    assert_eq!(s.repo.container("web").as_deref(), Some(old.as_str()));
    s.consistent("v1", 1, "the new web killed after the switch").await;
}

/// v(other) pushed to a deployer armed at `first`; a second one armed at `then` (empty:
/// none) while it recovers; a third one concludes. The prober runs throughout: not one
/// request fails. Exactly one terminal event, no event twice, the stage consistent.
async fn killed_twice(s: &Stage, first: &str, then: &str) -> &'static str {
    let served = s.served();
    let version = if served == "v1" { "v2" } else { "v1" };
    let commit = s.commit(version, "");
    let prober = Prober::start(s.haproxy.port);
    let mut armed = deployer(&s.env(&[("STEWARD_FAILPOINTS", first.into())]));
    push_commit(&s.repo, s.port, &commit, "web").await;
    assert!(armed.exits_within(Duration::from_secs(120)), "{first} not reached: {}", armed.logs());
    assert!(armed.logs().contains("aborting"), "{first}: {}", armed.logs());
    drop(armed);
    if !then.is_empty() {
        // It drives the deployment on as it starts, before it consumes: not waited for.
        let mut again =
            Proc::start("steward-deployer", &s.env(&[("STEWARD_FAILPOINTS", then.into())]));
        assert!(
            again.exits_within(Duration::from_secs(120)),
            "{then} not reached: {}",
            again.logs()
        );
        assert!(again.logs().contains("aborting"), "{then}: {}", again.logs());
    }
    let _clean = deployer(&s.env(&[]));
    let flow = outcome(&s.bus, &commit, Duration::from_secs(180)).await;
    let flow = settled_flow(&s.bus, flow[0].correlation_id).await;
    let ends = terminal(&flow);
    assert_eq!(ends.len(), 1, "{first}, {then}: {ends:?}");
    let mut ids: Vec<_> = flow.iter().map(|e| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), flow.len(), "{first}, {then}: an event twice");
    let what = format!("killed at {first}, then {then}");
    if ends[0] == "deploy.succeeded" {
        s.deployed.set(s.rev.get());
        s.consistent(version, s.rev.get(), &what).await;
    } else {
        s.consistent(&served, s.deployed.get(), &what).await;
    }
    let (_, failed) = prober.finish();
    assert!(
        failed.is_empty(),
        "{what}: failed requests through HAProxy:\n{failed:?}\n{}",
        s.haproxy.notable_log()
    );
    eprintln!("crash-matrix: deployer start-first {first} then {then} -> {}", ends[0]);
    ends[0]
}

/// Each kill of a swap and, in its recovery, a second one: `(first, then, outcome)`.
const KILLS: [(&str, &str, &str); 7] = [
    ("swap:planned", "rollback", "deploy.rolled_back"),
    ("swap:up", "swap:back", "deploy.rolled_back"),
    ("swap:created", "swap:back", "deploy.rolled_back"),
    ("swap:switch", "swap:back", "deploy.rolled_back"),
    ("swap:switched", "rolled_back", "deploy.rolled_back"),
    ("gate", "swap:back", "deploy.rolled_back"),
    ("retire", "retire", "deploy.succeeded"),
];

/// The pairs CI runs (`STEWARD_CRASH_POINTS=all`: every one).
const SAMPLE: [usize; 4] = [2, 3, 4, 6];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_first_deployment_killed_twice_at_each_step_ends_consistent_serving_throughout() {
    let s = Stage::new("deploysfkill").await;
    let all = std::env::var("STEWARD_CRASH_POINTS").as_deref() == Ok("all");
    for (i, (first, then, want)) in KILLS.iter().enumerate() {
        if !all && !SAMPLE.contains(&i) {
            continue;
        }
        assert_eq!(killed_twice(&s, first, then).await, *want, "{first}, {then}");
    }
}
