//! The runtime API client against a real `haproxy` (Debian's package), one per test on its own
//! 127.0.0.1 port with its own admin socket in a temp dir; the backends are small HTTP
//! servers on 127.0.0.1 answering their version. A prober over HAProxy every 20 ms (bounded
//! count) counts failed requests while servers are switched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steward_haproxy::{HaproxyError, Name, Runtime, SwitchBounds};
use steward_testkit::{free_port, http_get, unique_name, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A haproxy process of this test: killed and its directory removed on drop.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Haproxy {
    /// Backend `app` with one server `blue` at `first` (checked every 100 ms).
    fn start(first: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(unique_name("haproxy"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        let config = format!(
            "global\n  stats socket {sock} mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n  \
             retries 3\n  option redispatch\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend app\n\
             backend app\n  balance roundrobin\n  option httpchk GET /\n  \
             default-server inter 100ms fall 2 rise 1\n  server blue {first} check\n",
            sock = dir.join("admin.sock").display()
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy installed (infra/testbed/up.sh)");
        let me = Self { child, dir, port };
        wait_for("haproxy serving", Duration::from_secs(10), || http_get(port));
        me
    }

    fn runtime(&self) -> Runtime {
        Runtime::new(self.dir.join("admin.sock"))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP server on 127.0.0.1 answering `body` to every request, until the test ends.
async fn app(body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if got.len() > 16 * 1024 {
                        return;
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

/// Requests over HAProxy every 20 ms until stopped (at most 1500): the bodies seen, failures.
struct Prober {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(Vec<String>, usize)>,
}

impl Prober {
    fn start(port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut seen, mut failed) = (Vec::new(), 0);
            for _ in 0..1500 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                match http_get(port) {
                    Some(body) => seen.push(body),
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (seen, failed)
        });
        Self { stop, handle }
    }

    fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("prober")
    }
}

fn n(s: &str) -> Name {
    Name::new(s).expect("name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_moves_traffic_without_a_failed_request() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let h = Haproxy::start(v1);
    let rt = h.runtime();
    let prober = Prober::start(h.port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.switch(&n("app"), &n("blue"), &n("green"), v2, true, SwitchBounds::default())
        .await
        .expect("switch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (seen, failed) = prober.finish();
    assert_eq!(failed, 0, "failed requests during the switch");
    assert_eq!(seen.first().map(String::as_str), Some("v1"));
    assert_eq!(seen.last().map(String::as_str), Some("v2"));
    let servers = rt.servers(&n("app")).await.expect("servers");
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!((servers[0].name.as_str(), servers[0].port), ("green", v2.port()));
    assert!(servers[0].serving());

    // Run again (a resumed swap after it finished): nothing changes. Backwards: rollback.
    rt.switch(&n("app"), &n("blue"), &n("green"), v2, true, SwitchBounds::default())
        .await
        .expect("switch again");
    assert_eq!(rt.servers(&n("app")).await.expect("servers").len(), 1);
    rt.switch(&n("app"), &n("green"), &n("blue"), v1, true, SwitchBounds::default())
        .await
        .expect("switch back");
    assert_eq!(http_get(h.port).as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_never_up_leaves_the_old_one_serving() {
    let v1 = app("v1").await;
    // A port nothing listens on: the new server's checks never pass.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let h = Haproxy::start(v1);
    let rt = h.runtime();
    let prober = Prober::start(h.port);
    let bounds = SwitchBounds { up: Duration::from_secs(1), drain: Duration::from_secs(5) };
    let err = rt
        .switch(&n("app"), &n("blue"), &n("green"), dead, true, bounds)
        .await
        .expect_err("a dead server must not be switched to");
    assert!(matches!(err, HaproxyError::NotReached { wanted: "up", .. }), "{err}");
    // Rollback: the same switch backwards, the old server never having left.
    rt.delete_server(&n("app"), &n("green")).await.expect("delete");
    rt.switch(&n("app"), &n("green"), &n("blue"), v1, true, bounds).await.expect("back");
    let (seen, failed) = prober.finish();
    assert_eq!(failed, 0, "failed requests while the new server never came up");
    assert!(seen.iter().all(|b| b == "v1"), "{seen:?}");
    let servers = rt.servers(&n("app")).await.expect("servers");
    assert_eq!(servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["blue"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_switch_is_finished_by_running_it_again() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let h = Haproxy::start(v1);
    let rt = h.runtime();
    // Interrupted after each phase a crash could stop it at: added; ready; old draining;
    // old in maintenance. Each time the same switch finishes it.
    for cut in 0..4 {
        let (from, to, to_addr) =
            if cut % 2 == 0 { ("blue", "green", v2) } else { ("green", "blue", v1) };
        let (b, f, t) = (n("app"), n(from), n(to));
        rt.add_server(&b, &t, to_addr, true).await.expect("add");
        if cut >= 1 {
            rt.ready(&b, &t).await.expect("ready");
        }
        if cut >= 2 {
            rt.drain(&b, &f).await.expect("drain");
        }
        if cut >= 3 {
            rt.maint(&b, &f).await.expect("maint");
        }
        rt.switch(&b, &f, &t, to_addr, true, SwitchBounds::default()).await.expect("resume");
        let servers = rt.servers(&b).await.expect("servers");
        assert_eq!(servers.len(), 1, "cut {cut}: {servers:?}");
        assert!(servers[0].serving() && servers[0].name == to, "cut {cut}: {servers:?}");
        let want = if to == "green" { "v2" } else { "v1" };
        wait_for("new server answers", Duration::from_secs(5), || {
            (http_get(h.port).as_deref() == Some(want)).then_some(())
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_errors_with_haproxys_answer() {
    let v1 = app("v1").await;
    let h = Haproxy::start(v1);
    let rt = h.runtime();
    let err = rt.servers(&n("nosuch")).await.expect_err("unknown backend");
    assert!(matches!(err, HaproxyError::Refused { .. }), "{err}");
    let err = rt.ready(&n("app"), &n("nosuch")).await.expect_err("unknown server");
    assert!(matches!(err, HaproxyError::Refused { .. }), "{err}");
    // The same name at another address is not silently accepted.
    let other: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let err = rt.add_server(&n("app"), &n("blue"), other, false).await.expect_err("clash");
    assert!(matches!(err, HaproxyError::Refused { .. }), "{err}");
    // Deleting what is not there is done; no socket is a Connect error.
    rt.delete_server(&n("app"), &n("nosuch")).await.expect("idempotent delete");
    let gone = Runtime::new(h.dir.join("nosuch.sock"));
    assert!(matches!(gone.servers(&n("app")).await, Err(HaproxyError::Connect { .. })));
    assert_eq!(http_get(h.port).as_deref(), Some("v1"));
}
