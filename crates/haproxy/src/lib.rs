//! HAProxy's runtime API, spoken over its admin socket (`stats socket ... level admin`).
//!
//! The start-first swap moves traffic between two servers of one backend without a reload:
//! [`Runtime::switch`] adds the new server, waits until it is up, drains the old one until it
//! holds no session, then puts it in maintenance and deletes it. Every step is idempotent (a
//! server already added with the same address, one already deleted), so a swap interrupted at
//! any point is finished by running the same switch again, and undone by the switch backwards.
//!
//! No well-kept Rust client of the runtime API exists; the protocol is one text command per
//! connection (non-interactive mode), so this is a small hand-written client. Names are
//! checked before they reach a command line: the CLI separates commands with `;` and lines
//! with newlines, so a label value with either would run commands of its author's choice.
//!
//! Invariants: only this crate talks to HAProxy; every call is bounded in time and in the
//! size of the answer it reads; an answer HAProxy gives to a refused command is an error
//! carrying that answer, never ignored.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The most of an answer read (a `show stat` of a large configuration is far smaller).
const MAX_ANSWER: u64 = 1 << 20;

/// What the runtime API could not do.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// The admin socket could not be reached.
    #[error("HAProxy admin socket {}: {source}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("HAProxy admin socket {}: {command}: {source}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// HAProxy did not answer within the bound.
    #[error("HAProxy admin socket {}: no answer to {command} within {}ms", socket.display(), after.as_millis())]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// The bound.
        after: Duration,
    },
    /// HAProxy answered with an error (its answer, trimmed).
    #[error("HAProxy refused {command}: {answer}")]
    Refused {
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
    /// An answer this client does not understand (a version with another format?).
    #[error("HAProxy answered {command} with something unexpected: {detail}")]
    Malformed {
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// A backend or server name HAProxy would not take, or one that could inject commands.
    #[error("{0}")]
    Name(#[from] NameError),
    /// A start-first swap cannot tell which server serves: both or neither of the two names
    /// a backend alternates between do.
    #[error("HAProxy backend {backend}: {found} of {server} and {alternate} {verb}; see docs/runbooks.md (HAProxy switched wrong)", verb = if *found == "both" { "serve" } else { "serves" })]
    Ambiguous {
        /// The backend.
        backend: String,
        /// `both` or `neither`.
        found: &'static str,
        /// The configured server name.
        server: String,
        /// Its alternate (`<server>-b`).
        alternate: String,
    },
    /// A server did not reach the wanted state within the bound.
    #[error("HAProxy server {backend}/{server}: not {wanted} within {}s", after.as_secs())]
    NotReached {
        /// The backend.
        backend: String,
        /// The server.
        server: String,
        /// What was waited for ("up", "drained").
        wanted: &'static str,
        /// The bound.
        after: Duration,
    },
}

impl HaproxyError {
    /// HAProxy could not be asked at all (its socket absent or silent): worth trying again
    /// later, unlike an answer that refused or a server that did not come up.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Io { .. } | Self::Timeout { .. })
    }
}

/// A name refused by [`Name::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HAProxy name {value:?}: {reason}")]
pub struct NameError {
    /// The value.
    pub value: String,
    /// Why.
    pub reason: &'static str,
}

/// A backend or server name: 1 to 64 of `A-Z a-z 0-9 - _ . :` (HAProxy's identifier
/// characters), so it can never end a command or start another one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// The name, checked.
    pub fn new(value: &str) -> Result<Self, NameError> {
        let bad = |reason| NameError { value: value.to_owned(), reason };
        if value.is_empty() || value.len() > 64 {
            return Err(bad("must be 1 to 64 characters"));
        }
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
            return Err(bad("only letters, digits, '-', '_', '.' and ':' are allowed"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server as `show servers state` and `show stat` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Its name.
    pub name: String,
    /// Its address, as HAProxy holds it (an IP, or `-` when unresolved).
    pub addr: String,
    /// Its port.
    pub port: u16,
    /// Operationally up (`srv_op_state` 2: running; a server without checks counts as up
    /// unless it is in maintenance).
    pub up: bool,
    /// In maintenance (any source: forced, inherited, configuration, resolution).
    pub maint: bool,
    /// Draining (takes no new sessions, keeps the current ones).
    pub drain: bool,
    /// Its last health check passed (`srv_check_result` passed or conditionally passed);
    /// false for a server without checks or not checked yet.
    pub check_passed: bool,
    /// Current sessions (`scur` of `show stat`).
    pub sessions: u64,
}

impl Server {
    /// Takes new requests: up, not in maintenance, not draining.
    pub fn serving(&self) -> bool {
        self.up && !self.maint && !self.drain
    }
}

/// How long the switch waits for each of its phases.
#[derive(Debug, Clone, Copy)]
pub struct SwitchBounds {
    /// For the new server to be up (its health checks to pass).
    pub up: Duration,
    /// For the old server's sessions to end (then those left are shut down).
    pub drain: Duration,
}

impl Default for SwitchBounds {
    fn default() -> Self {
        Self { up: Duration::from_secs(30), drain: Duration::from_secs(30) }
    }
}

/// A swap planned from what HAProxy serves now: `old` serves, the new container will be
/// `new`, the other of `<server>` and `<server>-b` (so a backend never holds two servers of one
/// name, and the next swap goes back the other way).
#[derive(Debug, Clone)]
pub struct Slots {
    /// The server serving now.
    pub old: Server,
    /// The name the new container's server gets.
    pub new: Name,
}

/// The runtime API behind one admin socket.
#[derive(Debug, Clone)]
pub struct Runtime {
    socket: PathBuf,
    timeout: Duration,
}

impl Runtime {
    /// The API at `socket`, each command bounded by 5 s.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into(), timeout: Duration::from_secs(5) }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One command, its answer (bounded in time and size). Commands are built only from
    /// checked [`Name`]s and typed values in this crate.
    async fn command(&self, command: &str) -> Result<String, HaproxyError> {
        let io = |source| HaproxyError::Io {
            socket: self.socket.clone(),
            command: command.to_owned(),
            source,
        };
        let run = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|source| HaproxyError::Connect { socket: self.socket.clone(), source })?;
            stream.write_all(format!("{command}\n").as_bytes()).await.map_err(io)?;
            stream.shutdown().await.map_err(io)?;
            let mut answer = Vec::new();
            (&mut stream).take(MAX_ANSWER).read_to_end(&mut answer).await.map_err(io)?;
            Ok(String::from_utf8_lossy(&answer).into_owned())
        };
        tokio::time::timeout(self.timeout, run).await.map_err(|_| HaproxyError::Timeout {
            socket: self.socket.clone(),
            command: command.to_owned(),
            after: self.timeout,
        })?
    }

    /// A command whose success is an empty answer (or one of `ok`, when HAProxy says so).
    async fn expect(&self, command: &str, ok: &[&str]) -> Result<(), HaproxyError> {
        let answer = self.command(command).await?;
        let trimmed = answer.trim();
        if trimmed.is_empty() || ok.iter().any(|o| trimmed.starts_with(o)) {
            Ok(())
        } else {
            Err(HaproxyError::Refused { command: command.to_owned(), answer: trimmed.to_owned() })
        }
    }

    /// The servers of `backend`, in configuration order.
    pub async fn servers(&self, backend: &Name) -> Result<Vec<Server>, HaproxyError> {
        let command = format!("show servers state {backend}");
        let state = self.command(&command).await?;
        let malformed =
            |detail: String| HaproxyError::Malformed { command: command.clone(), detail };
        let mut lines = state.lines();
        match lines.next().map(str::trim) {
            Some("1") => {}
            _ => {
                return Err(HaproxyError::Refused {
                    command: command.clone(),
                    answer: state.trim().to_owned(),
                })
            }
        }
        let mut servers = Vec::new();
        for line in lines.filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
            // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state ... srv_port
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 19 {
                return Err(malformed(format!("a server line of {} fields: {line:?}", f.len())));
            }
            let num = |i: usize| -> Result<u64, HaproxyError> {
                f[i].parse().map_err(|_| malformed(format!("field {i} of {line:?}")))
            };
            let op = num(5)?;
            let admin = num(6)?;
            let check_result = num(11)?;
            let port =
                u16::try_from(num(18)?).map_err(|_| malformed(format!("port in {line:?}")))?;
            servers.push(Server {
                name: f[3].to_owned(),
                addr: f[4].to_owned(),
                port,
                up: op == 2,
                // FMAINT, IMAINT, CMAINT, RMAINT, HMAINT (src/server.h SRV_ADMF_*).
                maint: admin & (0x01 | 0x02 | 0x04 | 0x20 | 0x40) != 0,
                // FDRAIN, IDRAIN.
                drain: admin & (0x08 | 0x10) != 0,
                // CHK_RES_PASSED, CHK_RES_CONDPASS (src/check.h).
                check_passed: matches!(check_result, 3 | 4),
                sessions: 0,
            });
        }
        let stat = self.command(&format!("show stat {backend} 4 -1")).await?;
        let mut header = None;
        for line in stat.lines() {
            if let Some(h) = line.strip_prefix("# ") {
                header = h.split(',').position(|c| c == "scur");
                continue;
            }
            let cols: Vec<&str> = line.split(',').collect();
            let (Some(scur), Some(name)) = (header, cols.get(1)) else { continue };
            if let Some(server) = servers.iter_mut().find(|s| s.name == *name) {
                server.sessions = cols.get(scur).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        Ok(servers)
    }

    /// One server of `backend`, `None` if it has none of that name.
    pub async fn server(
        &self,
        backend: &Name,
        server: &Name,
    ) -> Result<Option<Server>, HaproxyError> {
        Ok(self.servers(backend).await?.into_iter().find(|s| s.name == server.as_str()))
    }

    /// Adds `server` at `addr` to `backend` (in maintenance, as HAProxy adds them), with
    /// health checks when `check`. Already there with the same address: done (a resumed
    /// swap); with another: refused.
    pub async fn add_server(
        &self,
        backend: &Name,
        server: &Name,
        addr: SocketAddr,
        check: bool,
    ) -> Result<(), HaproxyError> {
        let exists = match self.server(backend, server).await? {
            Some(s) if s.addr == addr.ip().to_string() && s.port == addr.port() => true,
            Some(s) => {
                return Err(HaproxyError::Refused {
                    command: format!("add server {backend}/{server} {addr}"),
                    answer: format!("{backend}/{server} exists at {}:{}", s.addr, s.port),
                })
            }
            None => false,
        };
        if !exists {
            let with_check = if check { " check" } else { "" };
            self.expect(
                &format!("add server {backend}/{server} {addr}{with_check}"),
                &["New server registered"],
            )
            .await?;
        }
        if check {
            // Dynamic servers start with their checks disabled. Also when the server was
            // there already: a swap cut between its add and this line resumes here, and a
            // server whose checks never run never passes one.
            self.expect(&format!("enable health {backend}/{server}"), &[]).await?;
        }
        Ok(())
    }

    /// Moves server `server` of `backend` from address `from` to `to` (its container came
    /// back with another address). Nothing to do when it is at `to` already, or absent (a
    /// switch adds it at `to`); refused when it is at neither: then it is not the server
    /// the caller recorded, and is left alone.
    pub async fn move_server(
        &self,
        backend: &Name,
        server: &Name,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Result<(), HaproxyError> {
        let at = |s: &Server, a: SocketAddr| s.addr == a.ip().to_string() && s.port == a.port();
        match self.server(backend, server).await? {
            None => Ok(()),
            Some(s) if at(&s, to) => Ok(()),
            Some(s) if at(&s, from) => {
                let command =
                    format!("set server {backend}/{server} addr {} port {}", to.ip(), to.port());
                self.expect(&command, &["IP changed from", "no need to change the addr"]).await
            }
            Some(s) => Err(HaproxyError::Refused {
                command: format!("move server {backend}/{server} from {from} to {to}"),
                answer: format!("{backend}/{server} is at {}:{}", s.addr, s.port),
            }),
        }
    }

    /// Takes new sessions (out of maintenance and drain).
    pub async fn ready(&self, backend: &Name, server: &Name) -> Result<(), HaproxyError> {
        self.expect(&format!("set server {backend}/{server} state ready"), &[]).await
    }

    /// Takes no new sessions, keeps the current ones.
    pub async fn drain(&self, backend: &Name, server: &Name) -> Result<(), HaproxyError> {
        self.expect(&format!("set server {backend}/{server} state drain"), &[]).await
    }

    /// Takes no traffic at all.
    pub async fn maint(&self, backend: &Name, server: &Name) -> Result<(), HaproxyError> {
        self.expect(&format!("set server {backend}/{server} state maint"), &[]).await
    }

    /// Deletes `server` (put in maintenance first; HAProxy deletes only an idle server in
    /// maintenance). Already gone: done.
    pub async fn delete_server(&self, backend: &Name, server: &Name) -> Result<(), HaproxyError> {
        if self.server(backend, server).await?.is_none() {
            return Ok(());
        }
        self.maint(backend, server).await?;
        self.expect(&format!("del server {backend}/{server}"), &["Server deleted"]).await
    }

    /// Which of `server` and `<server>-b` in `backend` serves now, and so which name a new
    /// server takes: exactly one must serve ([`HaproxyError::Ambiguous`] otherwise, and a swap
    /// must not begin: HAProxy was switched by hand, or a swap was cut in a way its record
    /// does not know).
    pub async fn plan_swap(&self, backend: &Name, server: &Name) -> Result<Slots, HaproxyError> {
        let alternate = Name::new(&format!("{server}-b"))?;
        let servers = self.servers(backend).await?;
        let serving = |n: &Name| servers.iter().find(|s| s.name == n.as_str() && s.serving());
        match (serving(server), serving(&alternate)) {
            (Some(old), None) => Ok(Slots { old: old.clone(), new: alternate }),
            (None, Some(old)) => Ok(Slots { old: old.clone(), new: server.clone() }),
            (a, _) => Err(HaproxyError::Ambiguous {
                backend: backend.to_string(),
                found: if a.is_some() { "both" } else { "neither" },
                server: server.to_string(),
                alternate: alternate.to_string(),
            }),
        }
    }

    /// A swap undone: traffic back from `from` to `to`, the old server, which now listens at
    /// `now` (a container started again may have another address than the `recorded` one:
    /// Podman gives it a new one). The old server is moved there first, since HAProxy refuses
    /// a server of that name at another address; then [`Runtime::switch`]. Idempotent.
    #[allow(clippy::too_many_arguments)] // each is one of the swap's recorded facts
    pub async fn switch_back(
        &self,
        backend: &Name,
        from: &Name,
        to: &Name,
        recorded: SocketAddr,
        now: SocketAddr,
        check: bool,
        bounds: SwitchBounds,
    ) -> Result<(), HaproxyError> {
        if now != recorded {
            self.move_server(backend, to, recorded, now).await?;
        }
        self.switch(backend, from, to, now, check, bounds).await
    }

    /// [`Runtime::switch`] (with health checks) from names and an address as a swap's record
    /// keeps them (`from` and `to` the old and the new server): the names are checked here,
    /// the address parsed.
    pub async fn switch_recorded(
        &self,
        backend: &str,
        (from, to): (&str, &str),
        addr: &str,
        bounds: SwitchBounds,
    ) -> Result<(), HaproxyError> {
        let (backend, from, to) = (Name::new(backend)?, Name::new(from)?, Name::new(to)?);
        self.switch(&backend, &from, &to, parse_addr(addr)?, true, bounds).await
    }

    /// [`Runtime::switch_back`] (with health checks) from a swap's record: its backend, the
    /// new server `from`, the old server `to` with its `recorded` address, and where its
    /// container is `now`.
    pub async fn switch_back_recorded(
        &self,
        backend: &str,
        (from, to): (&str, &str),
        recorded: &str,
        now: &str,
        bounds: SwitchBounds,
    ) -> Result<(), HaproxyError> {
        let (backend, from, to) = (Name::new(backend)?, Name::new(from)?, Name::new(to)?);
        let (recorded, now) = (parse_addr(recorded)?, parse_addr(now)?);
        self.switch_back(&backend, &from, &to, recorded, now, true, bounds).await
    }

    /// Polls `server` every 50 ms until `wanted` holds of it, at most `bound`.
    async fn wait(
        &self,
        backend: &Name,
        server: &Name,
        wanted: &'static str,
        bound: Duration,
        holds: impl Fn(&Server) -> bool,
    ) -> Result<(), HaproxyError> {
        let deadline = Instant::now() + bound;
        loop {
            if self.server(backend, server).await?.as_ref().is_some_and(&holds) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HaproxyError::NotReached {
                    backend: backend.to_string(),
                    server: server.to_string(),
                    wanted,
                    after: bound,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Moves `backend`'s traffic from `from` to `to` at `addr`: `to` added; when `check`, put
    /// in drain (checked, given no traffic: HAProxy marks a server leaving maintenance up
    /// before any check ran) until a health check passed; then made ready; `from` drained
    /// until it holds no session (those left after `bounds.drain` are shut down), then
    /// deleted. Idempotent; run again after a crash at any point it finishes
    /// the same switch. `from` missing (already deleted) is fine; `to` not coming up leaves
    /// `from` serving and returns [`HaproxyError::NotReached`].
    pub async fn switch(
        &self,
        backend: &Name,
        from: &Name,
        to: &Name,
        addr: SocketAddr,
        check: bool,
        bounds: SwitchBounds,
    ) -> Result<(), HaproxyError> {
        self.add_server(backend, to, addr, check).await?;
        if check {
            if !self.server(backend, to).await?.is_some_and(|s| s.serving()) {
                self.drain(backend, to).await?;
            }
            self.wait(backend, to, "up", bounds.up, |s| s.up && s.check_passed).await?;
        }
        self.ready(backend, to).await?;
        self.wait(backend, to, "up", bounds.up, Server::serving).await?;
        if self.server(backend, from).await?.is_some() {
            self.drain(backend, from).await?;
            // Sessions still open after the bound (a WebSocket, an event stream: Gitea keeps
            // one per open page) are closed, as stopping the old container would close them;
            // rolling back a healthy release because of them would be worse.
            let drained = self.wait(backend, from, "drained", bounds.drain, |s| s.sessions == 0);
            if let Err(e) = drained.await {
                tracing::warn!(%backend, server = %from, error = %e, "closing the sessions left on the old server");
                self.expect(&format!("shutdown sessions server {backend}/{from}"), &[]).await?;
                self.wait(backend, from, "drained", bounds.drain, |s| s.sessions == 0).await?;
            }
            self.delete_server(backend, from).await?;
        }
        tracing::info!(%backend, %from, %to, %addr, "HAProxy switched");
        Ok(())
    }
}

/// An `IP:PORT` as a record keeps it.
fn parse_addr(addr: &str) -> Result<SocketAddr, HaproxyError> {
    addr.parse().map_err(|e| HaproxyError::Malformed {
        command: "an address".into(),
        detail: format!("{addr:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_inject_commands_are_refused() {
        for bad in
            ["", "a b", "a;shutdown sessions", "a\nshow info", "web/app", &"x".repeat(65), "é"]
        {
            assert!(Name::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["web", "app-2", "be_app.v2", "a:b"] {
            assert_eq!(Name::new(good).map(|n| n.to_string()).ok().as_deref(), Some(good));
        }
    }
}
