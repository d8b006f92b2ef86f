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

/// Starts the server of `dir` through the kit's entrypoint.
fn start(dir: &Dir) -> NatsServer {
    let env = vec![
        ("STEWARD_NATS_CONFIG".to_owned(), dir.path().join("nats.conf").display().to_string()),
        ("STEWARD_NATS_SECRETS".to_owned(), dir.path().join("secrets").display().to_string()),
    ];
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
    let password = if user == steward_bus::SETUP_USER {
        NatsServer::setup_password()
    } else {
        NatsServer::user_password(user)
    };
    let url = server.url();
    let env = [
        ("STEWARD_NATS_URL", url.as_str()),
        ("STEWARD_NATS_USER", user),
        ("STEWARD_NATS_PASSWORD", password.as_str()),
        ("STEWARD_HOSTS", HOSTS),
        ("STEWARD_NATS_DOMAIN", domain),
        ("USER", "tester"),
    ];
    stdout_ok(steward(&env, args), &format!("steward {args:?} as {user} on {domain}"))
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
        let out = Command::new("sh")
            .arg(entrypoint())
            .env("STEWARD_NATS_CONFIG", dir.path().join("nats.conf"))
            .env("STEWARD_NATS_SECRETS", dir.path().join("secrets"))
            // No server may start: a stand-in exits 99 if the script got that far.
            .env("PATH", format!("{}:/usr/bin:/bin", stand_in.display()))
            .output()
            .expect("run the entrypoint");
        assert_eq!(out.status.code(), Some(1), "{url:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (url, says) in [
        (Some("nats-leaf://leaf-vps-a:pw\"x@hub:7422"), "may not contain"),
        (Some("https://leaf-vps-a:secret-pw@hub:7422"), "not nats-leaf://"),
        (Some("nats-leaf://hub:7422"), "not nats-leaf://"),
        // nats-server would print a URL it cannot parse, password included.
        (Some("nats-leaf://leaf-vps-a:secret-pw/x@hub:7422"), "not nats-leaf://"),
        (Some("nats-leaf://leaf-vps-a:secret-pw@hub:7422\ninclude x"), "control characters"),
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
}
