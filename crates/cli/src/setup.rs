//! `steward setup`: the provisioning identity. Creates or updates the STEWARD stream, every
//! service's durable consumer and every KV bucket, once per install and upgrade, logged in as
//! its own NATS user (`setup`); the services only look these up.

use std::time::Duration;

use anyhow::Context as _;
use steward_bus::{Bus, BusConfig, Namespace, Setup};
use steward_runtime::{
    Env, ENV_ACK_WAIT, ENV_DUPLICATE_WINDOW, ENV_EVENT_RETENTION, ENV_MAX_DELIVER,
};

use crate::Connection;

/// Runs the provisioning and prints what it did.
pub async fn run(conn: &Connection) -> anyhow::Result<()> {
    let defaults = BusConfig::default();
    let mut env = Env::from_process();
    let retention = env.duration(ENV_EVENT_RETENTION, defaults.retention);
    let duplicate_window = env.duration(ENV_DUPLICATE_WINDOW, defaults.duplicate_window);
    let ack_wait = env.duration(ENV_ACK_WAIT, Duration::from_secs(30));
    let max_deliver = env.parse_with(ENV_MAX_DELIVER, 5, |s| match s.parse::<i64>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err("a whole number from 1 to 1000".into()),
    });
    env.finish()?;
    let cfg = BusConfig {
        credentials: conn.credentials()?,
        url: conn.nats_url.clone(),
        namespace: Namespace { stream: conn.stream.clone(), prefix: conn.subject_prefix.clone() },
        connect_timeout: conn.timeout,
        publish_timeout: conn.timeout,
        retention,
        duplicate_window,
        ..defaults
    };
    let bus = Bus::open(cfg, "steward-setup")
        .await
        .with_context(|| format!("cannot reach NATS at {}", conn.nats_url))?;
    let setup = Setup::steward().with_delivery(ack_wait, max_deliver);
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
