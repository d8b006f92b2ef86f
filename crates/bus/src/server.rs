//! A nats-server's own configuration file (`nats.conf`) for each place it can sit
//! ([`Topology`]): the compose stack's one server, the hub of the leaf-node topology, a host's
//! leaf. What `steward nats-config` prints; the users come from
//! [`Permissions::server_config_on`](crate::Permissions::server_config_on), included as
//! `authorization.conf`. No secret is in this text: a leaf's link to the hub takes its URL,
//! password included, from the server's environment ([`LEAF_URL_VARIABLE`]), as every user's
//! password is.

use crate::Topology;

/// The server variable holding a leaf's link URL to the hub,
/// `nats-leaf://leaf-<host>:<password>@<hub>:<port>` (nats-server takes a remote's password only
/// inside its URL, and resolves a variable only as a whole value).
pub const LEAF_URL_VARIABLE: &str = "STEWARD_LEAF_URL";

/// The leaf-node port nats-server uses by default, the hub's listener unless told otherwise.
pub const LEAF_PORT: u16 = 7422;

/// The route port nats-server uses by default: where a clustered server's peers reach it.
pub const ROUTE_PORT: u16 = 6222;

/// The user the nodes of a cluster log in to each other as (on the route port only: it is no
/// client of the server); its password is the server variable `STEWARD_ROUTE_PASSWORD`
/// ([`user_password_variable`](crate::user_password_variable)), the same on every node.
pub const ROUTE_USER: &str = "route";

/// The server variable holding a cluster node's routes, a list of
/// `nats-route://route:<password>@<address>` (a route logs in with its URL's password only).
pub const ROUTES_VARIABLE: &str = "STEWARD_ROUTES";

/// The comment line of a clustered node's `nats.conf` that names its route addresses,
/// space-separated, for the entrypoint to make [`ROUTES_VARIABLE`] of.
pub const ROUTES_MARKER: &str = "# steward-routes:";

/// The nodes of a clustered server (three for JetStream's R3, `STEWARD_NATS_REPLICAS=3`): the
/// hub of the leaf-node topology when the centre must survive a node, or one server's stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's name, the same on every node.
    pub name: String,
    /// This node's route listener, `host:port`.
    pub listen: String,
    /// Every node's route address, `host:port` (this node's own may be among them).
    pub routes: Vec<String>,
}

/// How the leaf-node link is protected. It carries each host's `leaf-<host>` password and
/// every event between the host and the centre, over networks Steward does not control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkTls {
    /// In the clear: only for a link inside a private network (WireGuard, loopback), chosen
    /// explicitly.
    Off,
    /// The hub serves this certificate chain and key to its leaves.
    Hub {
        /// PEM file of the certificate (chain) leaves verify, as the server sees its path.
        cert: String,
        /// PEM file of its private key.
        key: String,
    },
    /// The leaf verifies the hub's certificate against this CA file (`None`: the system's
    /// roots, for a certificate from a public CA), and the hub's name in its URL.
    Leaf {
        /// PEM file of the CA that signed the hub's certificate.
        ca: Option<String>,
    },
}

/// One nats-server's configuration ([`render`](Self::render)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFile<'a> {
    /// Where the server sits.
    pub topology: Topology<'a>,
    /// `server_name`; servers joined by leaf nodes need distinct ones.
    pub name: String,
    /// The clients' port.
    pub port: u16,
    /// The monitoring port (`/healthz`, `/leafz`), if any.
    pub http_port: Option<u16>,
    /// JetStream's store directory (`None`: the server's command line gives it, `-sd`;
    /// nats-server refuses both).
    pub store_dir: Option<String>,
    /// JetStream's file store limit, in nats-server's notation (`10GB`).
    pub max_file_store: String,
    /// The hub's leaf-node listener, `host:port`.
    pub leaf_listen: String,
    /// The address the hub tells its leaves to reconnect to, when its listener is not
    /// reachable as such (behind NAT).
    pub leaf_advertise: Option<String>,
    /// The link's protection; must match the topology (the hub's certificate, the leaf's CA).
    pub tls: LinkTls,
    /// This server as a node of a cluster, if it is one (not a leaf: a host's leaf is its one
    /// server, and the host works on without the centre).
    pub cluster: Option<Cluster>,
}

/// A configuration that cannot be written as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServerFileError {
    /// A value nats-server's configuration syntax cannot carry as one quoted string.
    #[error("{what} {value:?}: {reason}")]
    Value {
        /// Which value.
        what: &'static str,
        /// The value as given.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Link settings that do not fit where the server sits.
    #[error("{0}")]
    Link(&'static str),
}

impl<'a> ServerFile<'a> {
    /// The defaults for a server at `topology`: the compose stack's ports and store, the name
    /// `steward-nats` (one server) or `steward-nats-<domain>`, the hub's leaf listener on every
    /// interface at [`LEAF_PORT`], and `tls` as given.
    pub fn new(topology: Topology<'a>, tls: LinkTls) -> Self {
        let name = match topology {
            Topology::Single => "steward-nats".to_owned(),
            Topology::Hub { .. } => "steward-nats-hub".to_owned(),
            Topology::Leaf { host } => format!("steward-nats-{host}"),
        };
        Self {
            topology,
            name,
            port: 4222,
            http_port: Some(8222),
            store_dir: Some("/data".into()),
            max_file_store: "10GB".into(),
            leaf_listen: format!("0.0.0.0:{LEAF_PORT}"),
            leaf_advertise: None,
            tls,
            cluster: None,
        }
    }

    /// The `nats.conf` text; `domain` is the server's JetStream domain (`STEWARD_NATS_DOMAIN`:
    /// the host's name on its leaf, the hub's own otherwise; unused for one server).
    pub fn render(&self, domain: Option<&str>) -> Result<String, ServerFileError> {
        let q = |what, value: &str| quoted(what, value);
        // A host's name also goes into comments: only what a host may be called.
        let names = match self.topology {
            Topology::Leaf { host } => vec![Some(host), domain],
            _ => vec![domain],
        };
        for name in names.into_iter().flatten() {
            if steward_events::check_host(name).is_err() {
                return Err(ServerFileError::Value {
                    what: "host or domain",
                    value: name.to_owned(),
                    reason: steward_events::HOST_RULE,
                });
            }
        }
        let mut out = String::from(
            "# Generated by `steward nats-config` (steward_bus::ServerFile); do not edit.\n",
        );
        match self.topology {
            Topology::Single => out.push_str(
                "# NATS for Steward: JetStream on the `nats` volume, clients on 4222 inside the\n\
                 # compose network only (not published), monitoring on 8222 for the healthcheck.\n\
                 # Regenerate: STEWARD_REGENERATE=1 cargo test -p steward-bus --test permissions\n",
            ),
            Topology::Hub { .. } => out.push_str(
                "# The hub of the leaf-node topology (docs/scaling.md): the notifier and the CLI\n\
                 # connect here; each host's leaf logs in to its leaf-node port as leaf-<host>.\n",
            ),
            Topology::Leaf { host } => out.push_str(&format!(
                "# Host {host}'s leaf node (docs/scaling.md): its agents connect here, and it\n\
                 # links to the hub as leaf-{host}.\n"
            )),
        }
        out.push_str(&format!("server_name: {}\n", q("server name", &self.name)?));
        out.push_str(&format!("port: {}\n", self.port));
        if let Some(port) = self.http_port {
            out.push_str(&format!("http_port: {port}\n"));
        }
        out.push_str("max_payload: 1MB\n\njetstream {\n");
        if let Some(dir) = &self.store_dir {
            out.push_str(&format!("  store_dir: {}\n", q("store directory", dir)?));
        }
        // nats-server's sizes: digits, then K, M, G or T, then B (either case), both optional.
        let limit = &self.max_file_store;
        let unit = limit.trim_start_matches(|c: char| c.is_ascii_digit());
        let digits = limit.len() - unit.len();
        let size_ok = digits > 0
            && ["", "b", "k", "kb", "m", "mb", "g", "gb", "t", "tb"]
                .contains(&unit.to_ascii_lowercase().as_str());
        if !size_ok {
            return Err(ServerFileError::Value {
                what: "file store limit",
                value: limit.clone(),
                reason: "a size such as 10GB or 500MB",
            });
        }
        out.push_str(&format!("  max_file_store: {limit}\n"));
        match (self.topology, domain) {
            (Topology::Single, _) => {}
            (_, Some(domain)) => out.push_str(&format!("  domain: {}\n", q("domain", domain)?)),
            (_, None) => return Err(ServerFileError::Link("a hub or a leaf needs its domain")),
        }
        out.push_str("}\n");
        if let Some(cluster) = &self.cluster {
            out.push_str(&self.cluster_block(cluster)?);
        }
        match (self.topology, &self.tls) {
            (Topology::Single, LinkTls::Off) => {}
            (Topology::Single, _) => {
                return Err(ServerFileError::Link(
                    "one server has no leaf-node link to protect (STEWARD_NATS_DOMAIN is unset)",
                ))
            }
            (Topology::Hub { .. }, LinkTls::Leaf { .. }) => {
                return Err(ServerFileError::Link(
                    "the hub serves a certificate and key; a CA is the leaves' (the hub does not \
                     ask leaves for certificates: they log in with their password)",
                ))
            }
            (Topology::Leaf { .. }, LinkTls::Hub { .. }) => {
                return Err(ServerFileError::Link(
                    "a leaf verifies the hub with a CA; a certificate and key are the hub's",
                ))
            }
            (Topology::Hub { .. }, tls) => {
                out.push_str(
                    "\n# Each host's leaf logs in here as leaf-<host> (authorization.conf).\n",
                );
                out.push_str("leafnodes {\n");
                out.push_str(&format!("  listen: {}\n", q("leaf listener", &self.leaf_listen)?));
                if let Some(advertise) = &self.leaf_advertise {
                    out.push_str(&format!(
                        "  advertise: {}\n",
                        q("advertised address", advertise)?
                    ));
                }
                if let LinkTls::Hub { cert, key } = tls {
                    out.push_str("  tls {\n");
                    out.push_str(&format!("    cert_file: {}\n", q("certificate file", cert)?));
                    out.push_str(&format!("    key_file: {}\n", q("key file", key)?));
                    // A link across the internet: the handshake gets more than the default.
                    out.push_str("    timeout: 5\n  }\n");
                }
                out.push_str("}\n");
            }
            (Topology::Leaf { host }, tls) => {
                out.push_str(&format!(
                    "\n# The link to the hub: nats-leaf://leaf-{host}:<its password>@<hub>:<port>, from\n\
                     # the server's environment (compose/nats/entrypoint.sh: secrets/nats_leaf_url).\n"
                ));
                out.push_str("leafnodes {\n  remotes = [\n    {\n");
                out.push_str(&format!("      url: ${LEAF_URL_VARIABLE}\n"));
                if let LinkTls::Leaf { ca } = tls {
                    match ca {
                        Some(ca) => out.push_str(&format!(
                            "      tls {{\n        ca_file: {}\n        timeout: 5\n      }}\n",
                            q("CA file", ca)?
                        )),
                        None => out.push_str("      tls {\n        timeout: 5\n      }\n"),
                    }
                }
                out.push_str("    }\n  ]\n}\n");
            }
        }
        out.push_str(
            "\n# One user per Steward participant, each allowed only its own subjects (generated from\n\
             # the code's routing table by `steward nats-authorization`; passwords come from the\n\
             # environment, see entrypoint.sh).\ninclude authorization.conf\n",
        );
        Ok(out)
    }
}

impl ServerFile<'_> {
    /// The `cluster` block of a node: its routes to the others, each logging in as
    /// [`ROUTE_USER`], so that nothing else on the route port can join the cluster.
    fn cluster_block(&self, cluster: &Cluster) -> Result<String, ServerFileError> {
        if let Topology::Leaf { .. } = self.topology {
            return Err(ServerFileError::Link(
                "a host's leaf is one server (its agents work on without the centre); only the \
                 hub or one server's stack is clustered",
            ));
        }
        // Fewer than three nodes cannot keep a majority when one is lost: JetStream's R3
        // needs three. Counted once each, as nats-server would route to them.
        let mut nodes = vec![];
        for route in &cluster.routes {
            nodes.push(host_port("route", route)?);
        }
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.len() < 3 {
            return Err(ServerFileError::Value {
                what: "cluster routes",
                value: cluster.routes.join(","),
                reason: "three or more nodes' route addresses (host:port), this node's among them",
            });
        }
        // A route logs in with the user and password in its URL only (nats-server sends
        // nothing else), and a variable is only ever a whole value: the URLs, password
        // included, come from the server's environment, made from the addresses on the marker
        // line below and the route password (compose/nats/entrypoint.sh).
        let mut out = String::from(
            "\n# A node of a cluster: its peers log in on the route port as route (password:\n\
             # STEWARD_ROUTE_PASSWORD, the same on every node); the route port belongs on a\n\
             # private network only. $STEWARD_ROUTES is nats-route://route:<password>@<address>\n\
             # for each address of the next line (the entrypoint makes it).\n",
        );
        out.push_str(&format!("{ROUTES_MARKER} {}\ncluster {{\n", nodes.join(" ")));
        out.push_str(&format!("  name: {}\n", quoted("cluster name", &cluster.name)?));
        let listen = host_port("route listener", &cluster.listen)?;
        out.push_str(&format!("  listen: {}\n", quoted("route listener", &listen)?));
        out.push_str(&format!(
            "  authorization {{\n    user: {ROUTE_USER}\n    password: ${}\n  }}\n",
            crate::user_password_variable(ROUTE_USER)
        ));
        out.push_str(&format!("  routes: ${ROUTES_VARIABLE}\n}}\n"));
        Ok(out)
    }
}

/// `value` as `host:port` (a name or an address, IPv6 in brackets), the port in its plain
/// form: refused when it is none, rather than handing nats-server (or the entrypoint,
/// which checks the same shape) a route it would read another way.
fn host_port(what: &'static str, value: &str) -> Result<String, ServerFileError> {
    let refuse = || {
        Err(ServerFileError::Value {
            what,
            value: value.to_owned(),
            reason: "host:port (a name, an address, or [an IPv6 address])",
        })
    };
    let Some((host, port)) = value.rsplit_once(':') else { return refuse() };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // Hex digits and colons only (no IPv4 tail): what the entrypoint's check takes.
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
                && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
        }
        None => {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
    };
    let port = match port.chars().all(|c| c.is_ascii_digit()) {
        true => port.parse::<u16>().ok().filter(|p| *p != 0),
        false => None,
    };
    match (host_ok, port) {
        (true, Some(port)) => Ok(format!("{host}:{port}")),
        _ => refuse(),
    }
}

/// `value` as one quoted string of nats-server's configuration: refused when it could end
/// the string or the line, or is empty.
fn quoted(what: &'static str, value: &str) -> Result<String, ServerFileError> {
    let refuse = |reason| Err(ServerFileError::Value { what, value: value.to_owned(), reason });
    if value.is_empty() {
        return refuse("empty");
    }
    if value.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return refuse("may not contain '\"', '\\' or control characters");
    }
    Ok(format!("\"{value}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["vps-a".into(), "vps-b".into()]
    }

    #[test]
    fn the_hub_serves_its_certificate_on_its_leaf_port_under_its_domain() {
        let hosts = hosts();
        let tls = LinkTls::Hub { cert: "/tls/hub.pem".into(), key: "/tls/hub.key".into() };
        let conf = ServerFile::new(Topology::Hub { hosts: &hosts }, tls).render(Some("hub"));
        let conf = conf.expect("a hub's configuration");
        assert!(conf.contains("server_name: \"steward-nats-hub\""), "{conf}");
        assert!(conf.contains("  domain: \"hub\"\n"), "{conf}");
        assert!(conf.contains("  listen: \"0.0.0.0:7422\"\n"), "{conf}");
        assert!(conf.contains("    cert_file: \"/tls/hub.pem\"\n"), "{conf}");
        assert!(conf.contains("    key_file: \"/tls/hub.key\"\n"), "{conf}");
        assert!(!conf.contains("remotes"), "{conf}");
        assert!(conf.ends_with("include authorization.conf\n"), "{conf}");
    }

    #[test]
    fn a_leaf_links_to_the_hub_by_its_environments_url_and_verifies_it() {
        let hosts = hosts();
        let tls = LinkTls::Leaf { ca: Some("/tls/ca.pem".into()) };
        let conf = ServerFile::new(Topology::Leaf { host: &hosts[0] }, tls).render(Some("vps-a"));
        let conf = conf.expect("a leaf's configuration");
        assert!(conf.contains("server_name: \"steward-nats-vps-a\""), "{conf}");
        assert!(conf.contains("  domain: \"vps-a\"\n"), "{conf}");
        assert!(conf.contains("      url: $STEWARD_LEAF_URL\n"), "{conf}");
        assert!(conf.contains("        ca_file: \"/tls/ca.pem\"\n"), "{conf}");
        assert!(!conf.contains("listen"), "a leaf accepts no leaf: {conf}");
        // The system's roots: a tls block without a CA.
        let conf = ServerFile::new(Topology::Leaf { host: &hosts[0] }, LinkTls::Leaf { ca: None })
            .render(Some("vps-a"))
            .expect("a leaf's configuration");
        assert!(conf.contains("      tls {\n        timeout: 5\n      }\n"), "{conf}");
        assert!(!conf.contains("ca_file"), "{conf}");
    }

    #[test]
    fn a_link_in_the_clear_has_no_tls_block_and_one_server_no_link() {
        let hosts = hosts();
        for topology in [Topology::Hub { hosts: &hosts }, Topology::Leaf { host: "vps-b" }] {
            let conf = ServerFile::new(topology, LinkTls::Off).render(Some("vps-b")).expect("conf");
            assert!(conf.contains("leafnodes {"), "{conf}");
            assert!(!conf.contains("tls"), "{conf}");
        }
        let conf = ServerFile::new(Topology::Single, LinkTls::Off).render(None).expect("conf");
        assert!(!conf.contains("leafnodes") && !conf.contains("domain"), "{conf}");
    }

    #[test]
    fn link_settings_that_do_not_fit_the_server_are_refused() {
        let hosts = hosts();
        let hub = Topology::Hub { hosts: &hosts };
        let leaf = Topology::Leaf { host: "vps-a" };
        let cert = LinkTls::Hub { cert: "c".into(), key: "k".into() };
        let ca = LinkTls::Leaf { ca: Some("ca".into()) };
        for (topology, tls) in [(hub, ca.clone()), (leaf, cert.clone()), (Topology::Single, ca)] {
            let refused = ServerFile::new(topology, tls).render(Some("x"));
            assert!(matches!(refused, Err(ServerFileError::Link(_))), "{refused:?}");
        }
        let refused = ServerFile::new(hub, cert).render(None);
        assert!(matches!(refused, Err(ServerFileError::Link(_))), "{refused:?}");
    }

    #[test]
    fn a_host_name_that_could_break_out_of_a_comment_is_refused() {
        let refused = ServerFile::new(Topology::Leaf { host: "a\nleafnodes {}" }, LinkTls::Off)
            .render(Some("a"));
        assert!(matches!(refused, Err(ServerFileError::Value { .. })), "{refused:?}");
        let hosts = hosts();
        let refused =
            ServerFile::new(Topology::Hub { hosts: &hosts }, LinkTls::Off).render(Some("h\"x"));
        assert!(matches!(refused, Err(ServerFileError::Value { .. })), "{refused:?}");
    }

    fn three_nodes() -> Cluster {
        Cluster {
            name: "steward-hub".into(),
            listen: "0.0.0.0:6222".into(),
            routes: vec!["hub-1:6222".into(), "hub-2:6222".into(), "10.0.0.3:6222".into()],
        }
    }

    #[test]
    fn a_clustered_hub_routes_to_every_node_as_the_route_user() {
        let hosts = hosts();
        let mut file = ServerFile::new(Topology::Hub { hosts: &hosts }, LinkTls::Off);
        file.name = "steward-nats-hub-1".into();
        file.cluster = Some(three_nodes());
        let conf = file.render(Some("hub")).expect("a clustered hub's configuration");
        assert!(
            conf.contains("cluster {\n  name: \"steward-hub\"\n  listen: \"0.0.0.0:6222\"\n"),
            "{conf}"
        );
        assert!(
            conf.contains(
                "  authorization {\n    user: route\n    password: $STEWARD_ROUTE_PASSWORD\n  }\n"
            ),
            "{conf}"
        );
        // Sorted, once each; the URLs from the environment (the password is in them).
        let marker = "\n# steward-routes: 10.0.0.3:6222 hub-1:6222 hub-2:6222\ncluster {";
        assert!(conf.contains(marker), "{conf}");
        assert!(conf.contains("  routes: $STEWARD_ROUTES\n}\n"), "{conf}");
        // Still the hub: its leaf listener and its users.
        assert!(conf.contains("leafnodes {") && conf.ends_with("include authorization.conf\n"));
        // One server's stack may be clustered too (no domain, no link).
        let mut file = ServerFile::new(Topology::Single, LinkTls::Off);
        file.cluster = Some(three_nodes());
        let conf = file.render(None).expect("a clustered single system");
        assert!(conf.contains("cluster {") && !conf.contains("leafnodes"), "{conf}");
    }

    #[test]
    fn a_cluster_of_fewer_than_three_nodes_a_bad_route_or_a_clustered_leaf_is_refused() {
        let hosts = hosts();
        let hub = |cluster: Cluster| {
            let mut file = ServerFile::new(Topology::Hub { hosts: &hosts }, LinkTls::Off);
            file.cluster = Some(cluster);
            file.render(Some("hub"))
        };
        let two = Cluster {
            routes: vec!["a:6222".into(), "b:6222".into(), "a:06222".into()],
            ..three_nodes()
        };
        assert!(matches!(hub(two), Err(ServerFileError::Value { what: "cluster routes", .. })));
        for bad in [
            "hub-1",
            "hub-1:0",
            "hub-1:port",
            ":6222",
            "hub 1:6222",
            "h\"x:6222",
            "[zz]:6222",
            "hub-1:+6222",
            "[::ffff:10.0.0.1]:6222",
            "a/b:6222",
        ] {
            let mut cluster = three_nodes();
            cluster.routes[0] = bad.into();
            let refused = hub(cluster);
            assert!(
                matches!(refused, Err(ServerFileError::Value { what: "route", .. })),
                "{bad:?}: {refused:?}"
            );
        }
        let mut cluster = three_nodes();
        cluster.routes[2] = "[::1]:6222".into();
        assert!(hub(cluster).is_ok(), "an IPv6 route");
        let refused = hub(Cluster { listen: "0.0.0.0".into(), ..three_nodes() });
        assert!(
            matches!(refused, Err(ServerFileError::Value { what: "route listener", .. })),
            "{refused:?}"
        );
        let mut leaf = ServerFile::new(Topology::Leaf { host: "vps-a" }, LinkTls::Off);
        leaf.cluster = Some(three_nodes());
        assert!(matches!(leaf.render(Some("vps-a")), Err(ServerFileError::Link(_))));
    }

    #[test]
    fn a_value_that_could_break_out_of_its_string_is_refused() {
        let hosts = hosts();
        for path in ["/tls/\"x", "/tls/x\ninclude /etc/shadow", "", "a\\b"] {
            let tls = LinkTls::Hub { cert: path.into(), key: "k".into() };
            let refused = ServerFile::new(Topology::Hub { hosts: &hosts }, tls).render(Some("hub"));
            assert!(
                matches!(refused, Err(ServerFileError::Value { what: "certificate file", .. })),
                "{path:?}: {refused:?}"
            );
        }
        let mut file = ServerFile::new(Topology::Single, LinkTls::Off);
        for limit in ["GB", "ten GB", "10XB", "-1GB", "+10GB", "10KMGB", "10 GB"] {
            file.max_file_store = limit.into();
            assert!(file.render(None).is_err(), "{limit:?} taken");
        }
        for limit in ["10GB", "500MB", "1TB", "10G", "10gb", "1024"] {
            file.max_file_store = limit.into();
            assert!(file.render(None).is_ok(), "{limit:?} refused");
        }
    }
}
