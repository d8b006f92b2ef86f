//! The leaf-node topology on loopback ports (docs/scaling.md): a hub nats-server and one
//! leaf nats-server per host, each with JetStream under its own domain (`hub`, the host's
//! name), the configuration `steward nats-config` prints for it ([`ServerFile`], the link in
//! the clear) and the users `steward nats-authorization` generates for that server
//! ([`Permissions::server_config_on`]). Each leaf logs in to the hub as its host's
//! [`steward_bus::LeafLink`] user through a [`Link`] the test can cut and restore, as a host's
//! uplink goes down and comes back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use steward_bus::{BusConfig, Credentials, LinkTls, Namespace, Permissions, ServerFile, Topology};

use crate::{free_port, NatsServer};

/// The hub's JetStream domain in these tests (no host is named so).
pub const HUB_DOMAIN: &str = steward_events::HUB_DOMAIN;

/// A user of every leaf allowed everything on it (not one Steward generates): a host's
/// root, who can rewrite its leaf's configuration.
pub const HOST_ROOT: &str = "host-root";

/// A hub and its leaves; every process is killed and every store removed when dropped.
pub struct NatsLeaves {
    /// The centre's server (of a clustered hub: its first node).
    pub hub: NatsServer,
    /// A clustered hub's other nodes ([`NatsLeaves::start_clustered`]); none otherwise.
    pub hub_peers: Vec<NatsServer>,
    /// One leaf per host, in the order of `hosts`.
    pub leaves: Vec<Leaf>,
    hosts: Vec<String>,
}

/// A host's leaf node and its link to the hub.
pub struct Leaf {
    /// The host (also the leaf's JetStream domain).
    pub host: String,
    /// The leaf's nats-server.
    pub server: NatsServer,
    /// Its uplink to the hub's leaf-node port.
    pub link: Link,
}

impl NatsLeaves {
    /// Starts the hub, then a leaf per host connected to it through its own [`Link`]. A
    /// leaf's link credentials are the ones the hub's generated configuration expects
    /// (`mangle` may change the hub's configuration text first, to prove a test fails when
    /// the permissions are wrong).
    pub fn start(hosts: &[String], mangle: impl Fn(String) -> String) -> Self {
        Self::start_with(hosts, 1, mangle)
    }

    /// [`start`](Self::start) with the hub as a cluster of `nodes` (three for R3), each node
    /// named `steward-nats-hub-<i>` and configured by [`ServerFile`]'s cluster block; each
    /// leaf's link lists every node (through its [`Link`]).
    pub fn start_clustered(hosts: &[String], nodes: usize) -> Self {
        Self::start_with(hosts, nodes, |c| c)
    }

    fn start_with(hosts: &[String], nodes: usize, mangle: impl Fn(String) -> String) -> Self {
        let ns = Namespace::default();
        let leaf_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let routes: Vec<String> =
            (0..nodes).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let mut hub_nodes = vec![];
        for (i, leaf_port) in leaf_ports.iter().enumerate() {
            let hub_store = NatsServer::new_store("steward-nats-hub");
            // The configuration `steward nats-config` prints, the link in the clear
            // (loopback). A leaf learns the hub's leaf-node address from it and would
            // reconnect there directly, around its cut link (`no_advertise` does not stop
            // that in nats-server 2.9): the hub advertises a closed port instead.
            let mut hub_file = for_test(ServerFile::new(Topology::Hub { hosts }, LinkTls::Off));
            hub_file.leaf_listen = format!("127.0.0.1:{leaf_port}");
            hub_file.leaf_advertise = Some("127.0.0.1:1".into());
            if nodes > 1 {
                hub_file.name = format!("steward-nats-hub-{i}");
                hub_file.cluster = Some(steward_bus::Cluster {
                    name: "steward-hub".into(),
                    listen: routes[i].clone(),
                    routes: routes.clone(),
                });
            }
            let hub_conf = hub_file.render(Some(HUB_DOMAIN)).expect("the hub's configuration");
            let auth = mangle(Permissions::server_config_on(&ns, hosts, Topology::Hub { hosts }));
            let config = write_config(&hub_store.join("conf"), &auth, &hub_conf);
            let mut env = passwords(&ns, hosts);
            // What the kit's entrypoint makes of the configuration's route addresses and the
            // route password: each route's URL with the password in it.
            let password = NatsServer::user_password(steward_bus::ROUTE_USER);
            let urls: Vec<String> = routes
                .iter()
                .map(|r| format!("\"nats-route://{}:{password}@{r}\"", steward_bus::ROUTE_USER))
                .collect();
            env.push((steward_bus::ROUTES_VARIABLE.to_owned(), format!("[{}]", urls.join(","))));
            hub_nodes.push(started(hub_store, config, env, nodes > 1));
        }
        let hub = hub_nodes.remove(0);
        let mut leaves = vec![];
        for host in hosts {
            let link = Link::start_to(&leaf_ports);
            let store = NatsServer::new_store("steward-nats-leaf");
            let user = steward_bus::leaf_user(host);
            let conf = for_test(ServerFile::new(Topology::Leaf { host }, LinkTls::Off))
                .render(Some(host))
                .expect("a leaf's configuration");
            // One URL per hub node, as a list (what compose/nats/entrypoint.sh makes of
            // several lines of `nats_leaf_url`).
            let urls: Vec<String> = link
                .ports()
                .iter()
                .map(|port| {
                    format!(
                        "\"nats-leaf://{user}:{}@127.0.0.1:{port}\"",
                        NatsServer::user_password(&user)
                    )
                })
                .collect();
            let url = match &urls[..] {
                [one] => one.clone(),
                all => format!("[{}]", all.join(",")),
            };
            let mut env = passwords(&ns, hosts);
            env.push((steward_bus::LEAF_URL_VARIABLE.to_owned(), url));
            // Whoever controls a host controls its leaf's configuration: a user allowed
            // everything there ([`HOST_ROOT`]) is what a test forges with. Only the link's
            // permissions, on the hub, stand between it and the other hosts.
            let auth = Permissions::server_config_on(&ns, hosts, Topology::Leaf { host }).replace(
                "  ]\n}\n",
                &format!(
                    "    {{ user: {HOST_ROOT}, password: {} }}\n  ]\n}}\n",
                    NatsServer::user_password(HOST_ROOT)
                ),
            );
            let config = write_config(&store.join("conf"), &auth, &conf);
            let server = started(store, config, env, false);
            leaves.push(Leaf { host: host.clone(), server, link });
        }
        Self { hub, hub_peers: hub_nodes, leaves, hosts: hosts.to_vec() }
    }

    /// Every server: the hub's nodes, then the leaves.
    pub fn servers(&self) -> impl Iterator<Item = &NatsServer> {
        self.hub_nodes().chain(self.leaves.iter().map(|l| &l.server))
    }

    /// The hub's nodes (one unless clustered).
    pub fn hub_nodes(&self) -> impl Iterator<Item = &NatsServer> {
        std::iter::once(&self.hub).chain(&self.hub_peers)
    }

    /// The hub's node `steward-nats-hub-<i>` (of a clustered hub).
    pub fn hub_node_mut(&mut self, i: usize) -> &mut NatsServer {
        match i {
            0 => &mut self.hub,
            i => &mut self.hub_peers[i - 1],
        }
    }

    /// The leaf of `host`.
    pub fn leaf(&self, host: &str) -> &Leaf {
        self.leaves
            .iter()
            .find(|l| l.host == host)
            .unwrap_or_else(|| panic!("{host} has no leaf here"))
    }

    /// Settings of the NATS user `user` on the hub (every node of it): the centre's view
    /// (domain `hub`).
    pub fn hub_config_as(&self, user: &str) -> BusConfig {
        let url = self.hub_nodes().map(NatsServer::url).collect::<Vec<_>>().join(",");
        BusConfig { url, ..self.config(&self.hub, user, HUB_DOMAIN) }
    }

    /// Settings of the NATS user `user` on `host`'s leaf (domain `host`).
    pub fn leaf_config_as(&self, host: &str, user: &str) -> BusConfig {
        self.config(&self.leaf(host).server, user, host)
    }

    /// JetStream at the hub as its provisioning user (`setup`), for reading and changing the
    /// hub's streams raw.
    pub async fn hub_jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::with_user_and_password(
            steward_bus::SETUP_USER.into(),
            NatsServer::setup_password(),
        )
        .custom_inbox_prefix(steward_bus::inbox_prefix(steward_bus::SETUP_USER))
        .connect(
            self.hub_nodes()
                .map(|n| n.url().parse().expect("a server URL"))
                .collect::<Vec<async_nats::ServerAddr>>(),
        )
        .await
        .expect("the hub's setup user connects");
        async_nats::jetstream::new(client)
    }

    /// The hub's `stream` with `host`'s source unfiltered: what a leaf server that ignores the
    /// hub's filter would hand it (a stock one applies it).
    pub async fn unfilter_at_hub(&self, stream: &str, host: &str) {
        let js = self.hub_jetstream().await;
        let found = js.get_stream(stream).await.expect("the hub's stream");
        let mut config = found.cached_info().config.clone();
        let prefix = format!("$JS.{host}.API");
        for source in config.sources.iter_mut().flatten() {
            if source.external.as_ref().is_some_and(|e| e.api_prefix == prefix) {
                source.filter_subject = None;
            }
        }
        js.update_stream(config).await.expect("the hub's sources without the host's filter");
    }

    fn config(&self, server: &NatsServer, user: &str, domain: &str) -> BusConfig {
        let password = if user == steward_bus::SETUP_USER {
            NatsServer::setup_password()
        } else {
            NatsServer::user_password(user)
        };
        BusConfig {
            url: server.url(),
            credentials: Some(Credentials { user: user.into(), password }),
            hosts: self.hosts.clone(),
            domain: Some(domain.into()),
            ..BusConfig::default()
        }
    }
}

/// A nats-server of this topology (2.10 or later) on a free port, running.
fn started(
    store: std::path::PathBuf,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
    clustered: bool,
) -> NatsServer {
    let bin = crate::testbed::nats_server_at_least_2_10();
    let mut server = NatsServer::stopped(free_port(), store, Some(config), env, vec![], None, bin);
    server.process = clustered;
    server.start_again();
    server
}

/// What every server here differs in from an installation's: the test gives the store on the
/// command line (its own per server) and no monitoring port (they would collide).
fn for_test(mut file: ServerFile<'_>) -> ServerFile<'_> {
    file.store_dir = None;
    file.http_port = None;
    file
}

/// Every password a server of this topology may name (extra ones are not read).
fn passwords(ns: &Namespace, hosts: &[String]) -> Vec<(String, String)> {
    let mut users: Vec<String> =
        Permissions::users(ns, hosts).into_iter().map(|p| p.user).collect();
    users.extend(hosts.iter().map(|h| steward_bus::leaf_user(h)));
    // A clustered hub's nodes log in to each other as this one.
    users.push(steward_bus::ROUTE_USER.to_owned());
    let mut env: Vec<(String, String)> = users
        .iter()
        .map(|u| (steward_bus::user_password_variable(u), NatsServer::user_password(u)))
        .collect();
    env.push((steward_bus::setup_password_variable(), NatsServer::setup_password()));
    env
}

/// Writes `authorization.conf` and `nats.conf` (which includes it) into `dir`, in the
/// server's store so a restart reads them again; returns the path of `nats.conf`.
fn write_config(dir: &Path, authorization: &str, main: &str) -> std::path::PathBuf {
    let write = |name: &str, text: &str| {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join(name), text))
            .unwrap_or_else(|e| panic!("cannot write {name} in {dir:?}: {e}"));
    };
    write("authorization.conf", authorization);
    write("nats.conf", main);
    dir.join("nats.conf")
}

#[derive(Default)]
struct Shared {
    down: AtomicBool,
    closing: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
}

/// TCP forwarders on loopback ports of their own, one to each upstream (a clustered hub's
/// nodes): a host's uplink. Cut, it closes every connection and refuses (accepts and closes)
/// new ones until restored. Stops when dropped.
pub struct Link {
    ports: Vec<u16>,
    shared: Arc<Shared>,
    acceptors: Vec<std::thread::JoinHandle<()>>,
}

impl Link {
    /// Forwards a fresh loopback port to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Self {
        Self::start_to(&[upstream])
    }

    /// Forwards a fresh loopback port to each of `upstreams` (on 127.0.0.1).
    pub fn start_to(upstreams: &[u16]) -> Self {
        let shared = Arc::new(Shared::default());
        let (mut ports, mut acceptors) = (vec![], vec![]);
        for &upstream in upstreams {
            let (port, acceptor) = forward(upstream, shared.clone());
            ports.push(port);
            acceptors.push(acceptor);
        }
        Self { ports, shared, acceptors }
    }

    /// The port the leaf connects to (the first, of several).
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Every port, one per upstream.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Cuts the link: every connection through it is closed, new ones are refused.
    pub fn cut(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        let mut open = self.shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        for stream in open.drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Restores the link: the leaf's next reconnect attempt gets through.
    pub fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }
}

/// A forwarder from a fresh loopback port to `127.0.0.1:upstream`, obeying `s` (cut,
/// closing); its port and its accepting thread.
fn forward(upstream: u16, s: Arc<Shared>) -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
    let acceptor = std::thread::spawn(move || {
        for client in listener.incoming() {
            if s.closing.load(Ordering::SeqCst) {
                break;
            }
            let Ok(client) = client else { continue };
            if s.down.load(Ordering::SeqCst) {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            };
            let mut open = s.connections.lock().unwrap_or_else(|p| p.into_inner());
            for stream in [&client, &server] {
                if let Ok(clone) = stream.try_clone() {
                    open.push(clone);
                }
            }
            drop(open);
            pipe(&client, &server);
            pipe(&server, &client);
        }
    });
    (port, acceptor)
}

/// Copies `from` to `to` on a thread of its own until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes each acceptor so it sees `closing`.
        for port in &self.ports {
            let _ = TcpStream::connect(("127.0.0.1", *port));
        }
        for handle in self.acceptors.drain(..) {
            let _ = handle.join();
        }
    }
}
