//! A real `haproxy` (Debian's package) per test: its own 127.0.0.1 port and admin socket in a
//! temp dir, killed and cleaned up when dropped; and a prober keeping the requests through it
//! that failed, with when. HAProxy logs every request and every server's change of state to
//! a file in its directory, so a failed request can be set beside what HAProxy did then.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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
            "global\n  stats socket {sock} mode 600 level admin\n  \
             log stdout format iso local0\n\
             defaults\n  mode http\n  log global\n  option httplog\n  \
             timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n  retries 0\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend app\n\
             backend app\n  balance roundrobin\n  option httpchk GET /\n  \
             default-server inter 100ms fall 2 rise 1\n  server {server} {first} check\n",
            sock = dir.join("admin.sock").display()
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap_or_else(|e| panic!("haproxy config: {e}"));
        let log = std::fs::File::create(dir.join("haproxy.log"))
            .unwrap_or_else(|e| panic!("haproxy log: {e}"));
        let child = Command::new("haproxy")
            // Its log's times in UTC, as a prober's failures are told.
            .env("TZ", "UTC")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(log)
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

    /// Its log without the requests answered `200` within a second: the failed and slow
    /// requests (with HAProxy's timers and termination state: who closed, at which step),
    /// servers going up, down, into drain or maintenance. For a failed assertion's message:
    /// it first waits out `timeout connect` and `timeout server`, since HAProxy logs a
    /// request when it ends, and the one a prober gave up on may not have ended yet.
    pub fn notable_log(&self) -> String {
        std::thread::sleep(Duration::from_secs(7));
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        log.lines().filter(|l| !answered_at_once(l)).collect::<Vec<_>>().join("\n")
    }
}

/// An HTTP log line of a request answered `200` within a second (its timers `TR/Tw/Tc/Tr/Ta`
/// end with the total, `Ta`, in ms).
fn answered_at_once(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let timers = words.find(|w| w.matches('/').count() == 4 && !w.contains(':'));
    let total = timers.and_then(|t| t.rsplit('/').next()).and_then(|t| t.parse::<u64>().ok());
    total.is_some_and(|ms| ms < 1000) && words.next() == Some("200")
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
    handle: std::thread::JoinHandle<(Vec<String>, Failures)>,
}

impl Prober {
    /// The most requests one prober sends (30 s at 20 ms).
    pub const MAX: usize = 1500;

    /// Starts probing 127.0.0.1:`port`.
    pub fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut seen, mut failed) = (Vec::new(), Failures::default());
            let started = Instant::now();
            for _ in 0..Self::MAX {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let (sent, at) = (started.elapsed(), SystemTime::now());
                match crate::http_get_why(SocketAddr::from(([127, 0, 0, 1], port)), "/") {
                    Ok((200, body)) => seen.push(body),
                    answer => failed.0.push(Failure {
                        at,
                        after: sent,
                        took: started.elapsed().saturating_sub(sent),
                        answer: answer.map(|(status, _)| status),
                    }),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (seen, failed)
        });
        Self { stop, handle }
    }

    /// Stops it: the bodies seen, in order, and the requests that failed.
    pub fn finish(self) -> (Vec<String>, Failures) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| panic!("prober panicked"))
    }
}

/// The requests of a [`Prober`] that failed, in order.
#[derive(Default)]
pub struct Failures(pub Vec<Failure>);

impl Failures {
    /// How many failed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// None failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for failure in &self.0 {
            writeln!(f, "{failure:?}")?;
        }
        Ok(())
    }
}

/// One failed request: when it was sent (UTC, as HAProxy's log shows it, and after the
/// prober's start), how long it took, and the status of the answer, or why there was none
/// (no connection, a reset, a timeout, not HTTP).
pub struct Failure {
    /// Sent then (wall clock).
    pub at: SystemTime,
    /// Sent this long after the prober started.
    pub after: Duration,
    /// Failed this long after it was sent.
    pub took: Duration,
    /// The answer's status, or why there was none.
    pub answer: Result<u16, String>,
}

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self.at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let (s, ms) = (since.as_secs() % 86_400, since.subsec_millis());
        let answer = match &self.answer {
            Ok(status) => format!("status {status}"),
            Err(why) => why.clone(),
        };
        write!(
            f,
            "{:02}:{:02}:{:02}.{ms:03} UTC ({:?} into probing): {answer}, after {:?}",
            s / 3600,
            s / 60 % 60,
            s % 60,
            self.after,
            self.took
        )
    }
}
