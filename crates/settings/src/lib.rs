//! steward-settings: Steward's settings as every participant reads them.
//!
//! [`Env`] reads the environment (with `NAME_FILE` secrets) and collects every bad variable
//! into one error line; [`names`] are the shared variables' names; the readers of settings more
//! than one participant reads ([`Env::cron`], [`Env::scope`], [`Env::ack_wait`],
//! [`Env::max_deliver`]) live here, so each such setting has one reader, one validation and one
//! default. Settings owned by a lower crate are read there with this `Env`
//! (`steward_bus::BusConfig::read`, `steward_store::config::S3Config::read`).
//!
//! Invariant: no engine, NATS or server dependency: the CLI uses this crate directly, and
//! must not get Docker or the services' HTTP server through it.

pub mod env;
pub mod names;

pub use env::{is_loopback_host, ConfigError, Env};
pub use names::*;

use steward_events::Service;

/// `binary/hostname`: the CloudEvents `source` of what `service` publishes.
pub fn event_source(service: Service) -> String {
    format!("{}/{}", service.binary(), hostname())
}

/// This machine's (or container's) name from `/etc/hostname`, `localhost` without one.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Default HTTP address of each participant, so all of them can run on one host side by side.
pub fn default_http_addr(service: Service) -> std::net::SocketAddr {
    let port = match service {
        Service::Watcher => 9101,
        Service::Updater => 9102,
        Service::Backup => 9103,
        Service::Health => 9104,
        Service::Notifier => 9105,
        Service::Deployer => 9106,
        Service::Cli => 9100,
    };
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

impl Env {
    /// `STEWARD_HTTP_ADDR`, default [`default_http_addr`] of `service`.
    pub fn http_addr(&mut self, service: Service) -> std::net::SocketAddr {
        self.parse(ENV_HTTP_ADDR, default_http_addr(service))
    }
}
