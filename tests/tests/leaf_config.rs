//! The leaf-node topology as an operator sets it up from the compose kit: each server's
//! `nats.conf` printed by the real `steward nats-config`, its users by `steward
//! nats-authorization`, its passwords and the leaf's link URL in secret files, the server
//! started through `compose/nats/entrypoint.sh`, the link protected by TLS with a private CA,
//! all on loopback. The flows across the topology are `leaf_flow`'s; here: what the kit
//! generates links and carries a host's events both ways, a leaf that cannot verify the hub or
//! log in gets no link, and hostile or missing settings are refused before any server starts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use steward_bus::{Namespace, Permissions};
use steward_system_tests::binary;
use steward_system_tests::leafnodes::{linked_leaves, TestCa};
use steward_testkit::{free_port, NatsServer, TempDir};

const HOSTS: &str = "vps-a,vps-b";

fn hosts() -> Vec<String> {
    HOSTS.split(',').map(str::to_owned).collect()
}

/// A directory of the test's own (removed when dropped) with a `secrets/` directory.
struct Dir(TempDir);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.0.join("secrets")).expect("test directory");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0 .0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        path
    }
}

/// A private CA and the hub's certificate for 127.0.0.1, as PEM files in `dir`:
/// (`ca.pem`, `hub.pem`, `hub-key.pem`).
fn certificates(dir: &Dir) -> (PathBuf, PathBuf, PathBuf) {
    let ca = TestCa::new();
    let (cert, key) = ca.server(&["127.0.0.1"]);
    (dir.write("ca.pem", &ca.pem()), dir.write("hub.pem", &cert), dir.write("hub-key.pem", &key))
}

/// `steward ARGS` with `env` only (and PATH).
fn steward(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(binary("steward"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("steward {args:?}: {e}"))
}

fn stdout_ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn entrypoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../compose/nats/entrypoint.sh")
}

/// A server's directory as the compose kit has it: `nats.conf` from `steward nats-config
/// ARGS` and `authorization.conf` from `steward nats-authorization` for `domain`, and a
/// password file for every user either may name (`secrets/nats_<user>_password`).
fn kit(tag: &str, domain: &str, args: &[&str]) -> Dir {
    let dir = Dir::new(tag);
    let env = [("STEWARD_HOSTS", HOSTS), ("STEWARD_NATS_DOMAIN", domain)];
    let store = dir.path().join("jetstream").display().to_string();
    let mut config = vec!["nats-config", "--store-dir", &store];
    config.extend_from_slice(args);
    dir.write("nats.conf", &stdout_ok(steward(&env, &config), "steward nats-config"));
    let users = stdout_ok(steward(&env, &["nats-authorization"]), "steward nats-authorization");
    dir.write("authorization.conf", &users);
    let ns = Namespace::default();
    let mut names: Vec<String> =
        Permissions::users(&ns, &hosts()).into_iter().map(|p| p.user).collect();
    names.extend(hosts().iter().map(|h| steward_bus::leaf_user(h)));
    names.push(steward_bus::SETUP_USER.into());
    for user in names {
        let password = if user == steward_bus::SETUP_USER {
            NatsServer::setup_password()
        } else {
            NatsServer::user_password(&user)
        };
        dir.write(&format!("secrets/nats_{user}_password"), &format!("{password}\n"));
    }
    dir
}

/// The hub's kit: TLS with `cert`/`key` on the leaf-node port `leaf_port`, monitoring on
/// `http_port`, `extra` arguments.
fn hub_kit(cert: &Path, key: &Path, leaf_port: u16, http_port: u16, extra: &[&str]) -> Dir {
    let listen = format!("127.0.0.1:{leaf_port}");
    let http = http_port.to_string();
    let mut args = vec![
        "--tls-cert",
        path(cert),
        "--tls-key",
        path(key),
        "--leaf-listen",
        &listen,
        "--http-port",
        &http,
    ];
    args.extend_from_slice(extra);
    kit("steward-leafconf-hub", "hub", &args)
}

/// `host`'s leaf kit with `args` for `steward nats-config` and the link URL `url`.
fn leaf_kit(host: &str, args: &[&str], url: &str) -> Dir {
    let mut all = vec!["--http-port", "0"];
    all.extend_from_slice(args);
    let dir = kit("steward-leafconf-leaf", host, &all);
    dir.write("secrets/nats_leaf_url", &format!("{url}\n"));
    dir
}

fn link_url(host: &str, password: &str, leaf_port: u16) -> String {
    format!("nats-leaf://{}:{password}@127.0.0.1:{leaf_port}", steward_bus::leaf_user(host))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The kit's entrypoint run for `dir`'s files, `bin` (a stand-in `nats-server`) first in PATH.
fn entrypoint_with(dir: &Dir, bin: &Path) -> Output {
    Command::new("sh")
        .arg(entrypoint())
        .env("STEWARD_NATS_CONFIG", dir.path().join("nats.conf"))
        .env("STEWARD_NATS_SECRETS", dir.path().join("secrets"))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .expect("run the entrypoint")
}

/// Starts the server of `dir` through the kit's entrypoint.
fn start(dir: &Dir) -> NatsServer {
    start_with(dir, vec![])
}

/// [`start`] with `env` besides.
fn start_with(dir: &Dir, mut env: Vec<(String, String)>) -> NatsServer {
    env.extend([
        ("STEWARD_NATS_CONFIG".to_owned(), dir.path().join("nats.conf").display().to_string()),
        ("STEWARD_NATS_SECRETS".to_owned(), dir.path().join("secrets").display().to_string()),
    ]);
    NatsServer::start_through(&entrypoint(), env)
}

/// How many leaf servers are linked to the hub, as its monitoring port's `/leafz` says.
fn linked(http_port: u16) -> usize {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    match steward_testkit::http_get_path_at(addr, "/leafz") {
        Some((200, body)) => linked_leaves(body.as_bytes()),
        _ => 0,
    }
}

/// Waits until `expected` leaves are linked to the hub; fails with `servers`' logs.
fn wait_linked(http_port: u16, expected: usize, servers: &[&NatsServer]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = linked(http_port);
        if now == expected {
            return;
        }
        let logs: Vec<String> = servers.iter().map(|s| s.log()).collect();
        assert!(
            Instant::now() < deadline,
            "{now} leaves linked to the hub, expected {expected}; logs:\n{}",
            logs.join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `steward ARGS` against `server` as `user` (its test password) under `domain`.
fn steward_on(server: &NatsServer, user: &str, domain: &str, args: &[&str]) -> String {
    let out = steward_at(&server.url(), user, domain, &[], args);
    stdout_ok(out, &format!("steward {args:?} as {user} on {domain}"))
}

/// `steward ARGS` against the servers of `url` (comma-separated) as `user` (its test
/// password) under `domain`, with `extra` settings.
fn steward_at(
    url: &str,
    user: &str,
    domain: &str,
    extra: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let password = if user == steward_bus::SETUP_USER {
        NatsServer::setup_password()
    } else {
        NatsServer::user_password(user)
    };
    let mut env = vec![
        ("STEWARD_NATS_URL", url),
        ("STEWARD_NATS_USER", user),
        ("STEWARD_NATS_PASSWORD", password.as_str()),
        ("STEWARD_HOSTS", HOSTS),
        ("STEWARD_NATS_DOMAIN", domain),
        ("USER", "tester"),
    ];
    env.extend_from_slice(extra);
    steward(&env, args)
}

#[test]
fn the_kits_hub_and_leaves_link_over_tls_and_carry_a_hosts_events_both_ways() {
    let certs = Dir::new("steward-leafconf-certs");
    let (ca, cert, key) = certificates(&certs);
    let (leaf_port, http_port) = (free_port(), free_port());
    let hub_dir = hub_kit(&cert, &key, leaf_port, http_port, &[]);
    let conf = std::fs::read_to_string(hub_dir.path().join("nats.conf")).expect("hub's nats.conf");
    assert!(conf.contains("cert_file") && conf.contains("domain: \"hub\""), "{conf}");
    let hub = start(&hub_dir);
    let mut leaves = vec![];
    for host in hosts() {
        let url =
            link_url(&host, &NatsServer::user_password(&steward_bus::leaf_user(&host)), leaf_port);
        let dir = leaf_kit(&host, &["--tls-ca", path(&ca)], &url);
        leaves.push((host.clone(), start(&dir), dir));
    }
    let servers: Vec<&NatsServer> =
        std::iter::once(&hub).chain(leaves.iter().map(|(_, s, _)| s)).collect();
    wait_linked(http_port, 2, &servers);

    for (host, server, _) in &leaves {
        let done = steward_on(server, steward_bus::SETUP_USER, host, &["setup"]);
        assert!(done.contains("setup done"), "{done}");
    }
    let done = steward_on(&hub, steward_bus::SETUP_USER, "hub", &["setup"]);
    assert!(done.contains("setup done"), "{done}");

    // A request from the centre to host a: published at the hub, stored by a's leaf across
    // the link, and sourced back to the hub's stream across it the other way.
    let sent = steward_on(&hub, "cli", "hub", &["check"]);
    let id_for = |host: &str| {
        sent.lines()
            .find(|l| l.starts_with(&format!("watch requested on {host} (")))
            .and_then(|l| l.rsplit_once('(').map(|(_, id)| id.trim_end_matches(')').to_owned()))
            .unwrap_or_else(|| panic!("no request for {host}: {sent}"))
    };
    let (a, b) = (id_for("vps-a"), id_for("vps-b"));
    let on_a =
        steward_on(&leaves[0].1, steward_bus::SETUP_USER, "vps-a", &["events", "replay", "--json"]);
    assert!(on_a.contains(&a) && !on_a.contains(&b), "a's leaf holds a's request only: {on_a}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let at_hub = steward_on(&hub, "cli", "hub", &["events", "replay", "--json"]);
        if at_hub.contains(&a) && at_hub.contains(&b) {
            break;
        }
        assert!(Instant::now() < deadline, "the hub never got its hosts' events back: {at_hub}");
        std::thread::sleep(Duration::from_millis(300));
    }
    for (_, server, _) in &leaves {
        assert!(!server.log().contains("[ERR]"), "a leaf logged an error: {}", server.log());
    }
}

#[test]
fn a_leaf_that_cannot_verify_the_hub_or_log_in_gets_no_link() {
    let certs = Dir::new("steward-leafconf-certs");
    let (ca, cert, key) = certificates(&certs);
    let (leaf_port, http_port) = (free_port(), free_port());
    // The hub advertises a closed port: a leaf refused by name would otherwise retry at the
    // address the hub gives it, 127.0.0.1, which the certificate names.
    let _hub_dir = hub_kit(&cert, &key, leaf_port, http_port, &["--leaf-advertise", "127.0.0.1:1"]);
    let hub = start(&_hub_dir);
    let good = link_url("vps-a", &NatsServer::user_password("leaf-vps-a"), leaf_port);
    // Without the private CA (the system's roots), in the clear, and with a wrong password.
    let cases = [
        ("untrusting", vec![], good.clone(), "certificate signed by unknown authority"),
        ("in the clear", vec!["--no-tls"], good.clone(), "certificate signed by unknown authority"),
        (
            "wrong password",
            vec!["--tls-ca", path(&ca)],
            link_url("vps-a", "not-the-password", leaf_port),
            "Authorization Violation",
        ),
        // The hub's port is public: a central user's password opens no link there.
        (
            "a central user",
            vec!["--tls-ca", path(&ca)],
            format!("nats-leaf://cli:{}@127.0.0.1:{leaf_port}", NatsServer::user_password("cli")),
            "Authorization Violation",
        ),
        // The hub's certificate names 127.0.0.1, not localhost.
        (
            "another name",
            vec!["--tls-ca", path(&ca)],
            good.replace("@127.0.0.1:", "@localhost:"),
            "certificate is not valid for any names, but wanted to match localhost",
        ),
    ];
    let mut bad = vec![];
    for (what, args, url, _) in &cases {
        let dir = leaf_kit("vps-a", args, url);
        bad.push((*what, start(&dir), dir));
    }
    // Several of each leaf's attempts (one a second).
    std::thread::sleep(Duration::from_secs(5));
    let logs: Vec<String> =
        bad.iter().map(|(what, server, _)| format!("{what}: {}", server.log())).collect();
    assert_eq!(
        linked(http_port),
        0,
        "a leaf linked that should not have: {}",
        logs.join("\n---\n")
    );
    for ((what, server, _), (_, _, _, why)) in bad.iter().zip(&cases) {
        let log = server.log();
        assert!(log.contains(why), "{what}: the leaf's log does not say {why:?}: {log}");
    }
    // The hub itself is fine: the right leaf links.
    let dir = leaf_kit(
        "vps-b",
        &["--tls-ca", path(&ca)],
        &link_url("vps-b", &NatsServer::user_password("leaf-vps-b"), leaf_port),
    );
    let b = start(&dir);
    wait_linked(http_port, 1, &[&hub, &b]);
}

/// The node of the hub's cluster that leads its `STEWARD` stream, as every one of `nodes`
/// (name, monitoring port) says; `None` while one cannot answer or they disagree (an
/// election, a node just restarted and catching up: one node's view alone can be stale).
fn stream_leader(nodes: &[(String, u16)]) -> Option<String> {
    let mut seen = vec![];
    for (_, port) in nodes {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
        let (200, body) =
            steward_testkit::http_get_path_at(addr, "/jsz?accounts=true&streams=true")?
        else {
            return None;
        };
        let jsz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let accounts = jsz["account_details"].as_array().cloned().unwrap_or_default();
        let leader = accounts
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned())
            .flatten()
            .find(|stream| stream["name"] == "STEWARD")
            .and_then(|stream| stream["cluster"]["leader"].as_str().map(str::to_owned))?;
        seen.push(leader);
    }
    seen.dedup();
    match &seen[..] {
        [leader] => Some(leader.clone()),
        _ => None,
    }
}

/// A centre that must survive a node: the hub as three nodes from the kit (`steward
/// nats-config --cluster-route`, the nodes logging in to each other as `route`), R3 by
/// `steward setup` with `STEWARD_NATS_REPLICAS=3`, each host's leaf given every node's URL
/// (one per line of its `nats_leaf_url`). The node leading the hub's stream is SIGKILLed while
/// the centre sends its hosts requests, restarted, and the next leader killed too: each leaf
/// links to a node still up, every request the CLI saw acknowledged reaches the hub's stream,
/// and no event is there twice.
#[test]
fn a_clustered_hub_from_the_kit_keeps_every_hosts_events_while_its_leaders_are_killed() {
    let Some(server_2_10) = steward_testkit::testbed::nats_server_at_least_2_10() else {
        panic!("STEWARD_TEST_NATS_SERVER_2_10 is unset (infra/testbed/up.sh installs it)");
    };
    // The kit's entrypoint runs `nats-server` from PATH: the release the image ships.
    let bin = Dir::new("steward-leafconf-bin");
    std::os::unix::fs::symlink(&server_2_10, bin.path().join("nats-server")).expect("symlink");
    let search_path =
        format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
    let certs = Dir::new("steward-leafconf-certs");
    let (ca, cert, key) = certificates(&certs);
    let ports = |n| (0..n).map(|_| free_port()).collect::<Vec<u16>>();
    let (leaf_ports, http_ports, route_ports) = (ports(3), ports(3), ports(3));
    let routes: Vec<String> = route_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let routes = routes.join(",");
    let mut hub = vec![];
    for i in 0..3 {
        let name = format!("steward-nats-hub-{i}");
        let listen = format!("127.0.0.1:{}", route_ports[i]);
        let extra = ["--name", &name, "--cluster-route", &routes, "--cluster-listen", &listen];
        let dir = hub_kit(&cert, &key, leaf_ports[i], http_ports[i], &extra);
        dir.write("secrets/nats_route_password", "route-password\n");
        let conf = std::fs::read_to_string(dir.path().join("nats.conf")).expect("nats.conf");
        assert!(conf.contains("cluster {") && conf.contains("password: $STEWARD_ROUTE_PASSWORD"));
        let server = start_with(&dir, vec![("PATH".into(), search_path.clone())]);
        hub.push((name, server, dir));
    }
    // A machine on the route network without the route password: refused by every node it
    // tries, it joins nothing (a route would hand it every event).
    {
        let (leaf_port, http_port, route_port) = (free_port(), free_port(), free_port());
        let listen = format!("127.0.0.1:{route_port}");
        let extra = ["--name", "intruder", "--cluster-route", &routes, "--cluster-listen", &listen];
        let dir = hub_kit(&cert, &key, leaf_port, http_port, &extra);
        dir.write("secrets/nats_route_password", "not-the-route-password\n");
        let intruder = start_with(&dir, vec![("PATH".into(), search_path.clone())]);
        // Refused by each of the three nodes: each logs the failed login of a route (only
        // the intruder's can fail: the nodes share the password).
        let failed = |log: &str| log.contains("authentication error - User \"route\"");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !hub.iter().all(|(_, s, _)| failed(&s.log())) {
            let logs: Vec<String> =
                hub.iter().map(|(n, s, _)| format!("{n}: {}", s.log())).collect();
            assert!(
                Instant::now() < deadline,
                "a node never refused the intruder: {}\n---\nintruder: {}",
                logs.join("\n---\n"),
                intruder.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let routes_of = |port: u16| {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let routez = steward_testkit::http_get_path_at(addr, "/routez").map(|(_, b)| b);
            serde_json::from_str::<serde_json::Value>(&routez.unwrap_or_default())
                .unwrap_or_default()
        };
        let routez = routes_of(http_port);
        assert_eq!(routez["num_routes"], 0, "the intruder has routes: {routez}");
        for port in &http_ports {
            let routez = routes_of(*port);
            assert!(
                routez["num_routes"].as_u64().unwrap_or(0) > 0,
                "a node without routes: {routez}"
            );
            assert!(
                !routez.to_string().contains("intruder"),
                "a node routes to the intruder: {routez}"
            );
        }
    }
    let mut leaves = vec![];
    for host in hosts() {
        let password = NatsServer::user_password(&steward_bus::leaf_user(&host));
        let urls: Vec<String> = leaf_ports.iter().map(|p| link_url(&host, &password, *p)).collect();
        let dir = leaf_kit(&host, &["--tls-ca", path(&ca)], &urls.join("\n"));
        let server = start_with(&dir, vec![("PATH".into(), search_path.clone())]);
        leaves.push((host, server, dir));
    }
    let hub_url = |hub: &[(String, NatsServer, Dir)]| {
        hub.iter().map(|(_, s, _)| s.url()).collect::<Vec<_>>().join(",")
    };
    let up: Vec<usize> = (0..3).collect();
    let linked_to = |up: &[usize]| up.iter().map(|&i| linked(http_ports[i])).sum::<usize>();
    let wait_links = |up: &[usize], hub: &[(String, NatsServer, Dir)]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while linked_to(up) != 2 {
            let logs: Vec<String> =
                hub.iter().map(|(n, s, _)| format!("{n}: {}", s.log())).collect();
            assert!(
                Instant::now() < deadline,
                "leaves not linked to the live nodes {up:?}: {}",
                logs.join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_links(&up, &hub);
    for (host, server, _) in &leaves {
        let done = steward_on(server, steward_bus::SETUP_USER, host, &["setup"]);
        assert!(done.contains("setup done"), "{done}");
    }
    let r3 = [("STEWARD_NATS_REPLICAS", "3")];
    let out = steward_at(&hub_url(&hub), steward_bus::SETUP_USER, "hub", &r3, &["setup"]);
    let logs = || hub.iter().map(|(n, s, _)| format!("{n}: {}", s.log())).collect::<Vec<_>>();
    assert!(
        out.status.success(),
        "steward setup at the clustered hub failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs().join("\n---\n")
    );
    let done = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(done.contains("setup done"), "{done}");

    // `steward check` at the hub: a request per host, stored on its leaf and sourced back.
    // Acknowledged ones must reach the hub; one that failed (its host's leaf was relinking)
    // may be stored or not, but never twice.
    let mut acknowledged: Vec<String> = vec![];
    let mut check = |url: &str| {
        // A short bound: a check that meets a leaf still relinking fails fast and is retried.
        let out = steward_at(url, "cli", "hub", &[], &["--timeout", "3s", "check"]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in said.lines().filter(|l| l.starts_with("watch requested on ")) {
            if let Some((_, id)) = line.rsplit_once('(') {
                acknowledged.push(id.trim_end_matches(')').to_owned());
            }
        }
        out.status.success()
    };
    let started = Instant::now();
    assert!(check(&hub_url(&hub)), "a check with every node up");
    let mut killed_leaders = vec![];
    for round in 0..2 {
        let nodes: Vec<(String, u16)> =
            hub.iter().zip(&http_ports).map(|((n, _, _), p)| (n.clone(), *p)).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            match stream_leader(&nodes) {
                Some(l) => break l,
                None => assert!(
                    Instant::now() < deadline,
                    "round {round}: no leader of the hub's stream"
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let i = hub.iter().position(|(n, _, _)| *n == leader).expect("the leader is a node");
        hub[i].1.kill();
        let killed = Instant::now();
        killed_leaders.push(leader.clone());
        let up: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        let live_url: Vec<String> = up.iter().map(|&j| hub[j].1.url()).collect();
        // Requests while the node is down, until two were acknowledged (each leaf links to a
        // live node meanwhile).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ok = 0;
        while ok < 2 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no check acknowledged without {leader}"
            );
            if check(&live_url.join(",")) {
                ok += 1;
                if ok == 1 {
                    eprintln!(
                        "MEASURED round {round}: the first check acknowledged {:?} after the kill",
                        killed.elapsed()
                    );
                }
            } else {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        wait_links(&up, &hub);
        hub[i].1.start_again();
    }
    assert_ne!(killed_leaders[0], killed_leaders[1], "two nodes lost in turn");
    eprintln!("MEASURED both rounds: {:?}", started.elapsed());
    wait_links(&(0..3).collect::<Vec<_>>(), &hub);

    // Every acknowledged request at the hub, none twice.
    // Two hosts, each asked by the first check and the two acknowledged in each round.
    assert!(acknowledged.len() >= 2 * 5, "{acknowledged:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = steward_at(&hub_url(&hub), "cli", "hub", &[], &["events", "replay", "--json"]);
        let replay = String::from_utf8_lossy(&out.stdout).into_owned();
        let ids: Vec<String> = replay
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "an event stored twice at the hub: {replay}");
        let missing: Vec<&String> = acknowledged.iter().filter(|a| !ids.contains(a)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged requests missing at the hub: {missing:?}\n{replay}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn settings_that_would_weaken_or_break_the_link_are_refused_before_a_server_starts() {
    let refused = |env: &[(&str, &str)], args: &[&str], says: &str| {
        let mut all = vec!["nats-config"];
        all.extend_from_slice(args);
        let out = steward(env, &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    let hub = [("STEWARD_HOSTS", HOSTS), ("STEWARD_NATS_DOMAIN", "hub")];
    let leaf = [("STEWARD_HOSTS", HOSTS), ("STEWARD_NATS_DOMAIN", "vps-a")];
    refused(&hub, &[], "the hub's leaf-node link needs TLS");
    refused(&hub, &["--tls-ca", "/ca.pem"], "the hub serves a certificate and key");
    refused(
        &leaf,
        &["--tls-cert", "/c.pem", "--tls-key", "/k.pem"],
        "a leaf verifies the hub with a CA",
    );
    refused(&[], &["--no-tls"], "one NATS server has no leaf-node link");
    refused(
        &hub,
        &["--tls-cert", "/x\"\ninclude /etc/shadow", "--tls-key", "/k"],
        "certificate file",
    );
    refused(&hub, &["--no-tls", "--max-file-store", "lots"], "file store limit");
    refused(&[("STEWARD_NATS_DOMAIN", "hub")], &["--no-tls"], "needs STEWARD_HOSTS");
    refused(&leaf, &["--leaf-listen", "0.0.0.0:7422"], "are the hub's");
    // A cluster: three nodes or more, each a host:port, each node named, never a leaf.
    let node = |routes: &'static str| ["--no-tls", "--name", "hub-1", "--cluster-route", routes];
    refused(&hub, &node("a:6222,b:6222,a:06222"), "three or more nodes' route addresses");
    refused(&hub, &node("a:6222,b:6222,c"), "host:port");
    refused(&hub, &node("a:6222,b:6222,[::ffff:10.0.0.1]:6222"), "host:port");
    refused(&leaf, &node("a:1,b:1,c:1"), "only the hub or one");
    refused(&hub, &["--no-tls", "--cluster-route", "a:1,b:1,c:1"], "--name");
    refused(&hub, &["--no-tls", "--cluster-listen", "0.0.0.0:6222"], "--cluster-route");
    // In the clear only when asked.
    let out = stdout_ok(steward(&hub, &["nats-config", "--no-tls"]), "a hub in the clear");
    assert!(out.contains("leafnodes {") && !out.contains("tls"), "{out}");

    // The entrypoint: a leaf without its link URL, or with one that would break the
    // configuration or is not a leaf link, does not start, and never prints the password.
    let dir = leaf_kit("vps-a", &["--tls-ca", "/ca.pem"], "unused");
    let stand_in = dir.path().join("bin");
    std::fs::create_dir_all(&stand_in).expect("bin");
    let server = dir.write("bin/nats-server", "#!/bin/sh\nexit 99\n");
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let run = |url: Option<&str>| {
        let file = dir.path().join("secrets/nats_leaf_url");
        match url {
            Some(url) => std::fs::write(&file, url).expect("write the URL"),
            None => std::fs::remove_file(&file).expect("remove the URL"),
        }
        // No server may start: a stand-in exits 99 if the script got that far.
        let out = entrypoint_with(&dir, &stand_in);
        assert_eq!(out.status.code(), Some(1), "{url:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (url, says) in [
        (Some("nats-leaf://leaf-vps-a:pw\"x@hub:7422"), "may not contain"),
        (Some("https://leaf-vps-a:secret-pw@hub:7422"), "not nats-leaf://"),
        (Some("nats-leaf://hub:7422"), "not nats-leaf://"),
        // nats-server would print a URL it cannot parse, password included.
        (Some("nats-leaf://leaf-vps-a:secret-pw/x@hub:7422"), "not nats-leaf://"),
        // One URL per line (a clustered hub's nodes): a second line is a URL too.
        (Some("nats-leaf://leaf-vps-a:secret-pw@hub:7422\ninclude x"), "URL 2: not nats-leaf://"),
        (Some("nats-leaf://leaf-vps-a:secret-pw@hub:7422\rinclude x"), "control characters"),
        (Some("nats-leaf://leaf-vps-a:secret-pw@hub:7422\tx"), "control characters"),
        (Some("\n\n"), "is empty"),
        (Some(""), "is empty"),
        (None, "nats_leaf_url is missing"),
    ] {
        let stderr = run(url);
        assert!(stderr.contains(says), "{url:?}: {stderr}");
        assert!(!stderr.contains("secret-pw"), "{url:?}: the password printed: {stderr}");
    }
    // A password file the configuration cannot carry.
    let updater = dir.path().join("secrets/nats_updater-vps-a_password");
    std::fs::write(&updater, "a\"b").expect("write");
    let stderr = run(Some("nats-leaf://leaf-vps-a:pw@hub:7422"));
    assert!(stderr.contains("nats_updater-vps-a_password: may not contain"), "{stderr}");
    // Passwords the configuration names that no file gives: each named.
    std::fs::remove_file(&updater).expect("remove");
    std::fs::remove_file(dir.path().join("secrets/nats_setup_password")).expect("remove");
    let stderr = run(Some("nats-leaf://leaf-vps-a:pw@hub:7422"));
    assert!(
        stderr
            .contains("no secret file for STEWARD_SETUP_PASSWORD STEWARD_UPDATER_VPS_A_PASSWORD ("),
        "{stderr}"
    );

    // A clustered hub's node: its route password goes into URLs, and its routes come from the
    // generated line; without either it does not start (and never prints the password).
    let routes =
        ["--cluster-route", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--name", "n1", "--no-tls"];
    let node = kit("steward-leafconf-node", "hub", &routes);
    let node_run = || {
        let out = entrypoint_with(&node, &stand_in);
        assert_eq!(out.status.code(), Some(1), "the node's entrypoint went on");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = node_run();
    assert!(stderr.contains("no secret file for STEWARD_ROUTE_PASSWORD"), "{stderr}");
    for bad in ["hush-pw@x", "hush-pw/x", "hush pw"] {
        node.write("secrets/nats_route_password", bad);
        let stderr = node_run();
        assert!(stderr.contains("the route password goes into URLs"), "{bad:?}: {stderr}");
        assert!(!stderr.contains("hush"), "{bad:?}: the password printed: {stderr}");
    }
    node.write("secrets/nats_route_password", "route-pw");
    let conf = std::fs::read_to_string(node.path().join("nats.conf")).expect("nats.conf");
    let without: String = conf
        .lines()
        .filter(|l| !l.starts_with("# steward-routes:"))
        .map(|l| format!("{l}\n"))
        .collect();
    node.write("nats.conf", &without);
    let stderr = node_run();
    assert!(stderr.contains("has no '# steward-routes:' line"), "{stderr}");
    // Given both, it runs nats-server (here the stand-in, exit 99).
    node.write("nats.conf", &conf);
    let out = entrypoint_with(&node, &stand_in);
    assert_eq!(out.status.code(), Some(99), "{}", String::from_utf8_lossy(&out.stderr));
}
