//! A real `haproxy` (Debian's package) per test: its own 127.0.0.1 port and admin socket in a
//! temp dir, killed and cleaned up when dropped; and a prober counting failed requests
//! through it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{free_port, http_get, unique_name, wait_for};

/// A haproxy process of this test, with backend `app` and its frontend on `port`.
pub struct Haproxy {
    child: Child,
    /// Its directory (config, admin socket).
    pub dir: PathBuf,
    /// Its frontend on 127.0.0.1.
    pub port: u16,
}

impl Haproxy {
    /// Backend `app` (HTTP checks of `/` every 100 ms) with one server `server` at `first`;
    /// returns once a request through it is answered. No retries: a request HAProxy sends to
    /// a server that does not answer fails, so a prober sees every gap a swap leaves
    /// (with `retries 3` a stop-first swap of the stand-in app also showed no failure).
    pub fn start(server: &str, first: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(unique_name("haproxy"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("temp dir: {e}"));
        let port = free_port();
        let config = format!(
            "global\n  stats socket {sock} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  \
             timeout server 5s\n  retries 0\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend app\n\
             backend app\n  balance roundrobin\n  option httpchk GET /\n  \
             default-server inter 100ms fall 2 rise 1\n  server {server} {first} check\n",
            sock = dir.join("admin.sock").display()
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap_or_else(|e| panic!("haproxy config: {e}"));
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("haproxy not installed (infra/testbed/up.sh): {e}"));
        let me = Self { child, dir, port };
        wait_for("haproxy serving", Duration::from_secs(15), || http_get(port));
        me
    }

    /// Its admin socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET /` on 127.0.0.1:`port`: the body of a `200` answer; `None` for anything else (no
/// connection, HAProxy's own 502/503 when no server answers).
pub fn get_ok(port: u16) -> Option<String> {
    match crate::http_get_at(SocketAddr::from(([127, 0, 0, 1], port))) {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// `GET /` through a port every 20 ms until finished (at most `MAX` requests): the bodies
/// seen and the requests that failed (anything but a `200`, see [`get_ok`]).
pub struct Prober {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl Prober {
    /// The most requests one prober sends (30 s at 20 ms).
    pub const MAX: usize = 1500;

    /// Starts probing 127.0.0.1:`port`.
    pub fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut seen, mut failed) = (Vec::new(), 0);
            for _ in 0..Self::MAX {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                match get_ok(port) {
                    Some(body) => seen.push(body),
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (seen, failed)
        });
        Self { stop, handle }
    }

    /// Stops it: the bodies seen, in order, and the number of failed requests.
    pub fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| panic!("prober panicked"))
    }
}
