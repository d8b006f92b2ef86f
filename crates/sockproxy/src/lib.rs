//! steward-sockproxy: the only holder of the Docker socket in the compose stack. It listens on
//! one Unix socket per role (watcher, health, updater, backup, deployer), each in a volume mounted into
//! that role's container only, and forwards to the engine only the calls that role's
//! allow-list ([`rules::RULES`]) names; anything else is answered 403 with a Docker-style
//! `{"message": ...}` and logged.

pub mod config;
pub mod proxy;
pub mod rules;

pub use rules::Role;
