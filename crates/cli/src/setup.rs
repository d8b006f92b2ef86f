//! `steward setup`: the provisioning identity. Creates or updates the STEWARD stream, every
//! service's durable consumer and every KV bucket, once per install and upgrade, logged in as
//! its own NATS user (`setup`); the services only look these up.

use anyhow::Context as _;
use steward_bus::{Bus, Setup};

use crate::Connection;

/// Runs the provisioning and prints what it did.
pub async fn run(conn: &Connection) -> anyhow::Result<()> {
    // The services' readers and checks, so setup provisions only what the services accept.
    let mut env = conn.env();
    let cfg = conn.read(&mut env);
    let ack_wait = env.ack_wait();
    let max_deliver = env.max_deliver();
    env.finish()?;
    let url = steward_events::redact_url(&cfg.url);
    let hosts = cfg.hosts.clone();
    let bus = Bus::open(cfg, "steward-setup")
        .await
        .with_context(|| format!("cannot reach NATS at {url}"))?;
    let setup = Setup::for_hosts(&hosts).with_delivery(ack_wait, max_deliver);
    let done = bus.setup(&setup).await.context(
        "provisioning failed (is this the `setup` NATS user? STEWARD_NATS_USER=setup and its password)",
    )?;
    for line in done {
        println!("{line}");
    }
    bus.flush().await?;
    println!("setup done: the services may start");
    Ok(())
}

/// `steward nats-authorization`: the NATS server's `authorization` block for this
/// installation's routing table (`STEWARD_HOSTS`, `STEWARD_STREAM`, `STEWARD_SUBJECT_PREFIX`),
/// passwords as the server's `$STEWARD_<USER>_PASSWORD` variables. Without hosts it is the
/// compose stack's `compose/nats/authorization.conf`. With `STEWARD_NATS_DOMAIN` (the leaf-node
/// topology) it is the block of that one server: a host's leaf, or the hub with every host's
/// leaf link user.
pub fn authorization(conn: &Connection) -> anyhow::Result<()> {
    let mut env = conn.env();
    let cfg = conn.read(&mut env);
    env.finish()?;
    // Under the leaf-node topology (`STEWARD_NATS_DOMAIN`), the users of that one server.
    print!(
        "{}",
        steward_bus::Permissions::server_config_on(&cfg.namespace, &cfg.hosts, cfg.topology())
    );
    Ok(())
}

/// `steward nats-config`'s options: where the server keeps its data and, under the leaf-node
/// topology, how the hub and its leaves find and trust each other. Paths are as the server
/// sees them (inside its container).
#[derive(Debug, clap::Args)]
pub struct NatsConfigArgs {
    /// The hub's certificate (chain), PEM, served to the leaves.
    #[arg(long, requires = "tls_key", conflicts_with_all = ["tls_ca", "no_tls"])]
    tls_cert: Option<String>,
    /// The hub's private key, PEM.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    /// On a leaf: the CA file that signed the hub's certificate (without it, and without
    /// --no-tls, the system's roots: a certificate from a public CA).
    #[arg(long, conflicts_with = "no_tls")]
    tls_ca: Option<String>,
    /// The leaf-node link in the clear: only inside a private network (WireGuard). The link
    /// carries each host's password and every event.
    #[arg(long)]
    no_tls: bool,
    /// The hub's leaf-node listener [default: 0.0.0.0:7422] (compose/hub.yml publishes
    /// 7422: change both together).
    #[arg(long)]
    leaf_listen: Option<String>,
    /// The address the hub gives its leaves to reconnect to, when the listener's is not theirs
    /// (behind NAT).
    #[arg(long)]
    leaf_advertise: Option<String>,
    /// The clients' port.
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// The monitoring port (the healthcheck's); 0 for none.
    #[arg(long, default_value_t = 8222)]
    http_port: u16,
    /// JetStream's store directory.
    #[arg(long, default_value = "/data")]
    store_dir: String,
    /// JetStream's file store limit.
    #[arg(long, default_value = "10GB")]
    max_file_store: String,
    /// The server's name (default: steward-nats for one server, steward-nats-hub,
    /// steward-nats-<host> on a leaf); each node of a cluster needs its own.
    #[arg(long)]
    name: Option<String>,
    /// This server as a node of a cluster (the hub, or one server's stack; three nodes for
    /// STEWARD_NATS_REPLICAS=3): every node's route address, host:port, this one's too, the
    /// same list on every node (repeat, or comma-separated), with a --name of this node's own
    /// (nodes of one name refuse each other). The nodes log in to each other as `route` with
    /// STEWARD_ROUTE_PASSWORD (secrets/nats_route_password).
    #[arg(long = "cluster-route", value_delimiter = ',', requires = "name")]
    cluster_routes: Vec<String>,
    /// This node's route listener (with --cluster-route) [default: 0.0.0.0:6222].
    #[arg(long, requires = "cluster_routes")]
    cluster_listen: Option<String>,
    /// The cluster's name, the same on every node (with --cluster-route) [default:
    /// steward-hub on the hub, steward otherwise].
    #[arg(long, requires = "cluster_routes")]
    cluster_name: Option<String>,
}

/// `steward nats-config`: the server's `nats.conf` for this installation's place in the
/// topology (`STEWARD_HOSTS`, `STEWARD_NATS_DOMAIN`). A hub refuses to be written without the
/// link's TLS unless `--no-tls` says the link is private.
pub fn nats_config(conn: &Connection, args: NatsConfigArgs) -> anyhow::Result<()> {
    use steward_bus::{LinkTls, ServerFile, Topology};
    let mut env = conn.env();
    let cfg = conn.read(&mut env);
    env.finish()?;
    let topology = cfg.topology();
    if !matches!(topology, Topology::Hub { .. })
        && (args.leaf_listen.is_some() || args.leaf_advertise.is_some())
    {
        anyhow::bail!(
            "--leaf-listen and --leaf-advertise are the hub's (STEWARD_NATS_DOMAIN not one of \
             STEWARD_HOSTS): a leaf connects out, one server has no leaf nodes"
        );
    }
    let link_options = args.no_tls || args.tls_cert.is_some() || args.tls_ca.is_some();
    if matches!(topology, Topology::Single) && link_options {
        anyhow::bail!(
            "one NATS server has no leaf-node link (STEWARD_NATS_DOMAIN is unset): the TLS \
             options are for the hub and the leaves"
        );
    }
    // The kind of TLS from the options given; whether it fits where the server sits is the
    // renderer's to say.
    let tls = match (args.no_tls, args.tls_cert, args.tls_key) {
        (true, ..) => LinkTls::Off,
        (_, Some(cert), key) => LinkTls::Hub { cert, key: key.unwrap_or_default() },
        _ => match (topology, args.tls_ca) {
            (Topology::Single, _) => LinkTls::Off,
            (Topology::Hub { .. }, None) => anyhow::bail!(
                "the hub's leaf-node link needs TLS: --tls-cert and --tls-key (the certificate \
                 the leaves verify), or --no-tls if every leaf reaches it through a private \
                 network"
            ),
            (_, ca) => LinkTls::Leaf { ca },
        },
    };
    let mut file = ServerFile::new(topology, tls);
    if let Some(name) = args.name {
        file.name = name;
    }
    file.port = args.port;
    file.http_port = (args.http_port != 0).then_some(args.http_port);
    file.store_dir = Some(args.store_dir);
    file.max_file_store = args.max_file_store;
    if let Some(listen) = args.leaf_listen {
        file.leaf_listen = listen;
    }
    file.leaf_advertise = args.leaf_advertise;
    if !args.cluster_routes.is_empty() {
        let name = match topology {
            Topology::Hub { .. } => "steward-hub",
            _ => "steward",
        };
        file.cluster = Some(steward_bus::Cluster {
            name: args.cluster_name.unwrap_or_else(|| name.to_owned()),
            listen: args
                .cluster_listen
                .unwrap_or_else(|| format!("0.0.0.0:{}", steward_bus::ROUTE_PORT)),
            routes: args.cluster_routes,
        });
    }
    print!("{}", file.render(cfg.domain.as_deref())?);
    Ok(())
}
