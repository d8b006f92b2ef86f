//! A Unix-socket proxy in front of the Docker socket that a test can switch to "stall": it
//! then accepts connections and requests and never answers them, as a deadlocked dockerd
//! does. The real engine is never touched: other tests share it.
//!
//! A connection that carries a byte in either direction while stalled is frozen for good:
//! nothing more is forwarded on it, so a request the client gave up on is never executed
//! later behind its back. Connections made or used after [`StallProxy::resume`] work again.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Docker's socket, where tests find the engine when `DOCKER_HOST` does not say otherwise.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// The engine's Unix socket the tests run against: `DOCKER_HOST`'s path (the engine matrix
/// points it at Podman's service), else [`DOCKER_SOCKET`].
pub fn engine_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => PathBuf::from(path),
            None => panic!("DOCKER_HOST={host:?}: the tests need the engine on a Unix socket"),
        },
        Err(_) => PathBuf::from(DOCKER_SOCKET),
    }
}

#[derive(Default)]
struct Shared {
    stalled: AtomicBool,
    closing: AtomicBool,
    frozen: AtomicUsize,
    connections: Mutex<Vec<UnixStream>>,
}

/// The proxy; stops and removes its socket when dropped.
pub struct StallProxy {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for StallProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StallProxy").field("path", &self.path).finish_non_exhaustive()
    }
}

impl StallProxy {
    /// A proxy to the engine's socket ([`engine_socket`]) on a fresh socket path, forwarding.
    pub fn docker() -> Self {
        Self::start(&engine_socket())
    }

    /// A proxy to the Unix socket `upstream`, forwarding.
    pub fn start(upstream: &Path) -> Self {
        let path = std::env::temp_dir().join(format!("{}.sock", crate::unique_name("stall")));
        let listener = UnixListener::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind the stall proxy at {path:?}: {e}"));
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_owned();
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if shared.closing.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    handle(client, &upstream, &shared);
                }
            })
        };
        Self { path, shared, acceptor: Some(acceptor) }
    }

    /// `unix://PATH`, for an engine handle.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// From now on nothing is answered.
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
    }

    /// From now on new requests are forwarded again (frozen connections stay frozen).
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
    }

    /// Connections frozen so far: requests that reached the proxy while stalled.
    pub fn frozen(&self) -> usize {
        self.shared.frozen.load(Ordering::SeqCst)
    }
}

fn handle(client: UnixStream, upstream: &Path, shared: &Arc<Shared>) {
    // While stalled, a new connection is held without even reaching the engine.
    let server = if shared.stalled.load(Ordering::SeqCst) {
        None
    } else {
        match UnixStream::connect(upstream) {
            Ok(s) => Some(s),
            Err(_) => return,
        }
    };
    let frozen = Arc::new(AtomicBool::new(server.is_none()));
    if server.is_none() {
        shared.frozen.fetch_add(1, Ordering::SeqCst);
    }
    {
        let mut live = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        live.extend(client.try_clone().ok());
        live.extend(server.as_ref().and_then(|s| s.try_clone().ok()));
    }
    let Some(server) = server else {
        // Read and drop what the client sends until it gives up.
        std::thread::spawn(move || pump(client, None, &frozen, None));
        return;
    };
    for (from, to) in [(client.try_clone(), server.try_clone()), (Ok(server), Ok(client))] {
        let (Ok(from), Ok(to)) = (from, to) else { continue };
        let (shared, frozen) = (shared.clone(), frozen.clone());
        std::thread::spawn(move || pump(from, Some(to), &frozen, Some(&shared)));
    }
}

/// Copies `from` to `to` until either closes; once the proxy is stalled while bytes flow,
/// the connection is frozen and bytes are dropped instead.
fn pump(
    mut from: UnixStream,
    to: Option<UnixStream>,
    frozen: &AtomicBool,
    shared: Option<&Shared>,
) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(shared) = shared {
            if shared.stalled.load(Ordering::SeqCst) && !frozen.swap(true, Ordering::SeqCst) {
                shared.frozen.fetch_add(1, Ordering::SeqCst);
            }
        }
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        let Some(to) = to.as_ref() else { continue };
        if (&*to).write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    if let Some(to) = to {
        let _ = to.shutdown(Shutdown::Both);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wakes the acceptor so it sees `closing`.
        let _ = UnixStream::connect(&self.path);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for s in self.shared.connections.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
