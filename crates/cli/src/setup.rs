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
