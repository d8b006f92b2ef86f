//! The runtime API client against a real `haproxy` (Debian's package), one per test on its own
//! 127.0.0.1 port with its own admin socket in a temp dir; the backends are small HTTP
//! servers on 127.0.0.1 answering their version. A prober over HAProxy every 20 ms (bounded
//! count) counts failed requests while servers are switched.

use std::net::SocketAddr;
use std::time::Duration;

use steward_haproxy::{HaproxyError, Name, Runtime, SwitchBounds};
use steward_testkit::haproxy::{Haproxy, Prober};
use steward_testkit::{free_port, http_get, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on 127.0.0.1 answering `body` to every request, until the test ends; a
/// request for `/hold` is answered only after 30 s (a long-lived session).
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
                if got.starts_with(b"GET /hold") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
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

fn n(s: &str) -> Name {
    Name::new(s).expect("name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_moves_traffic_without_a_failed_request() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let h = Haproxy::start("blue", v1);
    let rt = Runtime::new(h.socket());
    let prober = Prober::start(h.port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rt.switch(&n("app"), &n("blue"), &n("green"), v2, true, SwitchBounds::default())
        .await
        .expect("switch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (seen, failed) = prober.finish();
    assert!(
        failed.is_empty(),
        "failed requests during the switch:\n{failed:?}\n{}",
        h.notable_log()
    );
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
    let h = Haproxy::start("blue", v1);
    let rt = Runtime::new(h.socket());
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
    assert!(
        failed.is_empty(),
        "failed requests while the new server never came up:\n{failed:?}\n{}",
        h.notable_log()
    );
    assert!(seen.iter().all(|b| b == "v1"), "{seen:?}");
    let servers = rt.servers(&n("app")).await.expect("servers");
    assert_eq!(servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["blue"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_switch_is_finished_by_running_it_again() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let h = Haproxy::start("blue", v1);
    let rt = Runtime::new(h.socket());
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

/// One raw command on the admin socket, its answer (a cut the adapter's own calls cannot
/// leave: a server added with `check` whose checks were never enabled).
async fn raw(socket: std::path::PathBuf, command: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::UnixStream::connect(socket).await.expect("admin socket");
    s.write_all(format!("{command}\n").as_bytes()).await.expect("write");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("read");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_cut_between_add_and_enabling_health_is_finished() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let h = Haproxy::start("blue", v1);
    let rt = Runtime::new(h.socket());
    let answer = raw(h.socket(), &format!("add server app/green {v2} check")).await;
    assert!(answer.contains("New server registered"), "{answer}");
    let bounds = SwitchBounds { up: Duration::from_secs(10), ..SwitchBounds::default() };
    rt.switch(&n("app"), &n("blue"), &n("green"), v2, true, bounds)
        .await
        .expect("the switch resumes and its check passes");
    let servers = rt.servers(&n("app")).await.expect("servers");
    assert!(
        servers.len() == 1 && servers[0].name == "green" && servers[0].serving(),
        "{servers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_errors_with_haproxys_answer() {
    let v1 = app("v1").await;
    let h = Haproxy::start("blue", v1);
    let rt = Runtime::new(h.socket());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_after_the_drain_bound_are_closed_not_a_failed_switch() {
    use std::io::{Read, Write};
    let (v1, v2) = (app("v1").await, app("v2").await);
    let h = Haproxy::start("blue", v1);
    let rt = Runtime::new(h.socket());
    // A session held open on the old server (HAProxy's `timeout server` is 5 s).
    let mut held = std::net::TcpStream::connect(("127.0.0.1", h.port)).expect("connect");
    held.write_all(b"GET /hold HTTP/1.0\r\nHost: x\r\n\r\n").expect("request");
    wait_for("the held session counted", Duration::from_secs(5), || {
        let rt = rt.clone();
        let servers = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move { rt.servers(&n("app")).await })
        });
        servers.ok().filter(|s| s.first().is_some_and(|s| s.sessions == 1))
    });
    let started = std::time::Instant::now();
    let bounds = SwitchBounds { up: Duration::from_secs(5), drain: Duration::from_millis(500) };
    rt.switch(&n("app"), &n("blue"), &n("green"), v2, true, bounds).await.expect("switch");
    assert!(started.elapsed() < Duration::from_secs(4), "waited for the held session");
    let servers = rt.servers(&n("app")).await.expect("servers");
    assert_eq!(servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["green"]);
    // The held session was closed by HAProxy.
    held.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("v1"), "the held request was answered");
    assert_eq!(http_get(h.port).as_deref(), Some("v2"));
}

/// A server whose container came back at another address is moved there only from the
/// address the caller recorded: moved twice is done once, and a server found at a third
/// address is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_moved_only_from_the_address_recorded() {
    let (v1, moved) = (app("v1").await, app("v1 moved").await);
    let h = Haproxy::start("blue", v1);
    let rt = Runtime::new(h.socket());
    let third: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let err = rt.move_server(&n("app"), &n("blue"), third, moved).await.expect_err("not at from");
    assert!(matches!(err, HaproxyError::Refused { .. }), "{err}");
    assert_eq!(http_get(h.port).as_deref(), Some("v1"), "left alone");
    rt.move_server(&n("app"), &n("blue"), v1, moved).await.expect("move");
    rt.move_server(&n("app"), &n("blue"), v1, moved).await.expect("moved already");
    let servers = rt.servers(&n("app")).await.expect("servers");
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0].port, moved.port(), "{servers:?}");
    wait_for("served from the new address", Duration::from_secs(10), || {
        http_get(h.port).filter(|b| b == "v1 moved")
    });
    rt.move_server(&n("app"), &n("nosuch"), v1, moved).await.expect("absent: nothing to move");
}
