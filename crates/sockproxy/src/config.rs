//! Configuration from the environment.

use std::path::PathBuf;

use crate::rules::Role;

/// Where the engine is, and where each role's socket goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The engine's socket (`STEWARD_SOCKPROXY_UPSTREAM`, default `/var/run/docker.sock`).
    pub upstream: PathBuf,
    /// One socket per role (`STEWARD_SOCKPROXY_SOCKETS=watcher=/path,health=/path,...`).
    pub sockets: Vec<(Role, PathBuf)>,
}

/// The variable naming each role's socket.
pub const SOCKETS_VAR: &str = "STEWARD_SOCKPROXY_SOCKETS";
/// The variable naming the engine's socket.
pub const UPSTREAM_VAR: &str = "STEWARD_SOCKPROXY_UPSTREAM";

impl Config {
    /// Reads both variables through `get`; the error names the variable and what is expected.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let upstream = get(UPSTREAM_VAR)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "/var/run/docker.sock".into());
        let upstream = PathBuf::from(upstream.strip_prefix("unix://").unwrap_or(&upstream));
        let raw = get(SOCKETS_VAR).unwrap_or_default();
        let mut sockets: Vec<(Role, PathBuf)> = vec![];
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (role, path) = entry
                .split_once('=')
                .ok_or_else(|| format!("{SOCKETS_VAR}: {entry:?} is not ROLE=PATH"))?;
            let role: Role = role.trim().parse().map_err(|e| format!("{SOCKETS_VAR}: {e}"))?;
            let path = PathBuf::from(path.trim());
            if !path.is_absolute() {
                return Err(format!("{SOCKETS_VAR}: {role}'s socket {path:?} is not absolute"));
            }
            if sockets.iter().any(|(r, p)| *r == role || *p == path) {
                return Err(format!("{SOCKETS_VAR}: {role} or {path:?} is named twice"));
            }
            sockets.push((role, path));
        }
        if sockets.is_empty() {
            return Err(format!(
                "{SOCKETS_VAR} is not set: expected ROLE=PATH,... (roles watcher, health, updater, backup)"
            ));
        }
        Ok(Self { upstream, sockets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sockets: &str) -> Result<Config, String> {
        Config::from_lookup(|k| (k == SOCKETS_VAR).then(|| sockets.to_owned()))
    }

    #[test]
    fn each_role_gets_one_socket() {
        let c = parse("watcher=/run/w/docker.sock, backup=/run/b/docker.sock").expect("valid");
        assert_eq!(c.upstream, PathBuf::from("/var/run/docker.sock"));
        assert_eq!(c.sockets.len(), 2);
        assert_eq!(c.sockets[1], (Role::Backup, PathBuf::from("/run/b/docker.sock")));
        for bad in [
            "",
            "watcher",
            "notifier=/x",
            "watcher=rel",
            "watcher=/a,watcher=/b",
            "watcher=/a,health=/a",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(SOCKETS_VAR), "{e}");
        }
    }
}
