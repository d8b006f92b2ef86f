//! The stack's HAProxy front (`compose/haproxy/haproxy.cfg`, started by `front.sh` as the
//! container does) run by a real `haproxy` (Debian's package): the same file the stack ships,
//! given only 127.0.0.1 ports, a test certificate and test backends through the environment
//! variables it reads. One HAProxy per test, killed (with its workers) when the test ends.
//!
//! The backends are small HTTP servers on 127.0.0.1: "gitea" (answers its health check, holds
//! `/slow` for a while, echoes after a WebSocket upgrade), the updater's and the deployer's
//! approval pages, and certbot's standalone server during a renewal. The last test runs the test bed's image of the
//! front in Docker, as `compose/haproxy.yml` does.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use steward_haproxy::{Name, Runtime};
use steward_testkit::{free_port, unique_name, wait_for};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The name the test certificate is for, and the Host of the requests.
const DOMAIN: &str = "git.example.test";

/// The request heads one backend received, in order.
type Seen = Arc<Mutex<Vec<String>>>;

/// A backend on 127.0.0.1 answering `name` (and the request path) to every request;
/// `GET /slow` after 2 s; an `Upgrade: websocket` request with a 101, then it echoes what
/// it reads.
async fn backend(name: &'static str) -> (u16, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                // One request per connection (`Connection: close` on every answer).
                let Some(head) = read_head(&mut s).await else { return };
                log.lock().unwrap_or_else(|p| p.into_inner()).push(head.clone());
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                if head.to_ascii_lowercase().contains("\r\nupgrade: websocket") {
                    let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                                  Connection: Upgrade\r\nSec-WebSocket-Accept: \
                                  s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = s.read(&mut buf).await {
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                if path == "/slow" {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                let body = format!("{name} {path}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

/// Reads up to the end of an HTTP head (at most 16 KiB): the head, without the blank line.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => got.push(byte[0]),
            _ => return None,
        }
        if got.len() > 16 * 1024 {
            return None;
        }
    }
    got.truncate(got.len() - 4);
    String::from_utf8(got).ok()
}

/// A parsed answer: status, headers (lowercase names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// `GET path` with `Host: DOMAIN` and `Connection: close` on `s`; the whole answer (5 s bound).
async fn get<S: AsyncRead + AsyncWrite + Unpin>(s: S, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n");
    send(s, &request).await
}

/// `request` (a whole head) on `s`; the whole answer (5 s bound).
async fn send<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> Answer {
    s.write_all(request.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("answer within 5 s")
        .expect("read answer");
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> Answer {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {raw:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer { status, headers, body: body.to_owned() }
}

/// A self-signed certificate for [`DOMAIN`]: (PEM chain, PEM key, DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let params = rcgen::CertificateParams::new(vec![DOMAIN.to_owned()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("cert");
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// The stack's HAProxy, started by `front.sh start` from certbot-like live files.
struct Front {
    child: Child,
    dir: PathBuf,
    env: Vec<(String, String)>,
    http: u16,
    https: u16,
    stats: u16,
    /// The certificates a client trusts (every one the test installed).
    trusted: Vec<CertificateDer<'static>>,
    gitea: Seen,
    updater: Seen,
    deployer: Seen,
}

/// `compose/haproxy/` of this checkout.
fn front_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compose/haproxy")
}

impl Front {
    /// With the stack's settings except `extra` (`HAPROXY_RATE_LIMIT`, ...).
    async fn start(extra: &[(&str, &str)]) -> Self {
        let (gitea_port, gitea) = backend("gitea").await;
        let (updater_port, updater) = backend("updater").await;
        let (deployer_port, deployer) = backend("deployer").await;
        let (acme_port, _) = backend("certbot").await;
        let dir = std::env::temp_dir().join(unique_name("haproxy-front"));
        std::fs::create_dir_all(dir.join("live")).expect("temp dir");
        let (chain, key, der) = certificate();
        std::fs::write(dir.join("live/fullchain.pem"), chain).expect("chain");
        std::fs::write(dir.join("live/privkey.pem"), key).expect("key");
        let (http, https, stats) = (free_port(), free_port(), free_port());
        // The socket's group: the test's own (the stack's is the updater's, 10001).
        let gid = std::fs::metadata(&dir).expect("dir").gid().to_string();
        let mut env: Vec<(String, String)> = [
            ("HAPROXY_CFG", front_dir().join("haproxy.cfg").display().to_string()),
            ("CERTS_LIVE", dir.join("live").display().to_string()),
            ("HAPROXY_CERT", dir.join("tls/front.pem").display().to_string()),
            ("HAPROXY_SOCKET", dir.join("admin.sock").display().to_string()),
            ("HAPROXY_SOCKET_GID", gid),
            ("HAPROXY_HTTP_BIND", format!("127.0.0.1:{http}")),
            ("HAPROXY_HTTPS_BIND", format!("127.0.0.1:{https}")),
            ("HAPROXY_STATS_BIND", format!("127.0.0.1:{stats}")),
            ("HAPROXY_GITEA", format!("127.0.0.1:{gitea_port}")),
            ("HAPROXY_UPDATER", format!("127.0.0.1:{updater_port}")),
            ("HAPROXY_DEPLOYER", format!("127.0.0.1:{deployer_port}")),
            ("HAPROXY_ACME", format!("127.0.0.1:{acme_port}")),
            ("GITEA_DOMAIN", DOMAIN.to_owned()),
            // High enough for every test but the rate limit's own.
            ("HAPROXY_RATE_LIMIT", "1000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("log file");
        let child = Command::new("sh")
            .arg(front_dir().join("front.sh"))
            .arg("start")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("sh front.sh start: {e}"));
        env.push(("HAPROXY_MASTER_PID".into(), child.id().to_string()));
        let trusted = vec![der];
        let me = Self { child, dir, env, http, https, stats, trusted, gitea, updater, deployer };
        // Readiness on the internal port: requests there are not counted by the rate limit.
        let stats = me.stats;
        let ready = tokio::task::spawn_blocking(move || {
            wait_for("haproxy serving", Duration::from_secs(15), || {
                plain_status(stats, "/healthz").filter(|s| *s == 200)
            })
        });
        if ready.await.is_err() {
            panic!("haproxy did not start: {}", me.log());
        }
        me
    }

    /// HAProxy's output (its log lines included).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    async fn plain(&self, port: u16) -> TcpStream {
        TcpStream::connect(("127.0.0.1", port)).await.expect("connect")
    }

    /// A TLS connection to the HTTPS port for [`DOMAIN`], trusting only the test's
    /// certificates; and the leaf it was served.
    async fn tls(&self) -> (tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>) {
        let mut roots = rustls::RootCertStore::empty();
        for der in &self.trusted {
            roots.add(der.clone()).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(DOMAIN).expect("name");
        let tcp = self.plain(self.https).await;
        let tls =
            connector.connect(name, tcp).await.expect("TLS handshake with a trusted certificate");
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        (tls, leaf.expect("a served certificate"))
    }

    async fn https_get(&self, path: &str) -> Answer {
        get(self.tls().await.0, path).await
    }

    /// `front.sh reload` as the updater runs it after a renewal: its exit and output.
    fn reload(&self) -> (bool, String) {
        let out = Command::new("sh")
            .arg(front_dir().join("front.sh"))
            .arg("reload")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("sh front.sh reload");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (old ones of a reload included) and exits;
        // SIGKILL if it has not after 5 s.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on 127.0.0.1:`port` without TLS (blocking, 2 s bounds): the status.
fn plain_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.strip_prefix("HTTP/1.")?.split_whitespace().nth(1)?.parse().ok()
}

fn env_of<'a>(front: &'a Front, key: &str) -> &'a str {
    front.env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_configuration_passes_haproxy_check_without_a_warning() {
    let front = Front::start(&[]).await;
    let out = Command::new("haproxy")
        .args(["-c", "-f", env_of(&front, "HAPROXY_CFG")])
        .envs(front.env.iter().map(|(k, v)| (k, v)))
        .env("HAPROXY_CERT", front.dir.join("tls/front.pem"))
        .output()
        .expect("haproxy -c");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "haproxy -c: {text}");
    assert!(!text.contains("[WARNING]") && !text.contains("[ALERT]"), "haproxy -c: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_except_the_acme_challenges() {
    let front = Front::start(&[]).await;
    let answer = get(front.plain(front.http).await, "/user/login?redirect_to=%2F").await;
    assert_eq!(answer.status, 301, "{answer:?}");
    assert_eq!(
        answer.header("location"),
        Some(format!("https://{DOMAIN}/user/login?redirect_to=%2F").as_str()),
        "{answer:?}"
    );
    // A client's Host is not echoed into the redirect: the configured domain is.
    let hostile = send(
        front.plain(front.http).await,
        "GET /x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(hostile.status, 301, "{hostile:?}");
    assert_eq!(
        hostile.header("location"),
        Some(format!("https://{DOMAIN}/x").as_str()),
        "{hostile:?}"
    );
    // certbot's http-01 challenge reaches certbot, in clear text.
    let acme = get(front.plain(front.http).await, "/.well-known/acme-challenge/tok3n").await;
    assert_eq!(
        (acme.status, acme.body.as_str()),
        (200, "certbot /.well-known/acme-challenge/tok3n")
    );
    // Nothing of Gitea or the approval page is served in clear text.
    let approve = get(front.plain(front.http).await, "/steward/approve/x").await;
    assert_eq!(approve.status, 301, "{approve:?}");
    assert!(front.gitea.lock().expect("seen").iter().all(|h| !h.starts_with("GET /user")));
    assert!(front.updater.lock().expect("seen").is_empty());
    let deploy = get(front.plain(front.http).await, "/steward/deploy/approve/x").await;
    assert_eq!(deploy.status, 301, "{deploy:?}");
    assert!(front.deployer.lock().expect("seen").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_gitea_with_every_security_header() {
    let front = Front::start(&[]).await;
    let answer = front.https_get("/explore/repos").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "gitea /explore/repos"), "{answer:?}");
    for (name, value) in [
        ("strict-transport-security", "max-age=31536000"),
        ("x-frame-options", "SAMEORIGIN"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
    ] {
        assert_eq!(answer.header(name), Some(value), "{name}: {answer:?}");
    }
    let head = front.gitea.lock().expect("seen").last().cloned().unwrap_or_default().to_lowercase();
    assert!(head.contains("\r\nx-forwarded-proto: https"), "{head}");
    assert!(head.contains("\r\nx-forwarded-for: 127.0.0.1"), "{head}");
    // What a client claims about the forwarding is dropped: the backend sees HAProxy's only.
    let (tls, _) = front.tls().await;
    let forged = send(
        tls,
        &format!(
            "GET /forged HTTP/1.1\r\nHost: {DOMAIN}\r\nX-Forwarded-For: 6.6.6.6\r\n\
             Forwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil.example\r\n\
             X-Forwarded-Proto: http\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(forged.status, 200, "{forged:?}");
    let head = front.gitea.lock().expect("seen").last().cloned().unwrap_or_default().to_lowercase();
    assert!(head.starts_with("get /forged "), "{head}");
    let xff: Vec<&str> =
        head.lines().filter_map(|l| l.strip_prefix("x-forwarded-for:")).map(str::trim).collect();
    assert_eq!(xff, ["127.0.0.1"], "{head}");
    assert!(!head.contains("6.6.6.6") && !head.contains("evil.example"), "{head}");
    assert!(!head.contains("\r\nforwarded:"), "{head}");
    assert!(
        !head.contains("x-forwarded-proto: http\r") && !head.ends_with("x-forwarded-proto: http")
    );
    // HAProxy's metrics are not on the public port: /metrics there is Gitea's.
    let metrics = front.https_get("/metrics").await;
    assert_eq!(metrics.body, "gitea /metrics", "{metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_approval_page_gets_no_referrer_no_cache_and_no_log_line() {
    // Two requests per 10 s: the third is refused, an approval URL's included.
    let front = Front::start(&[("HAPROXY_RATE_LIMIT", "2"), ("HAPROXY_RATE_PERIOD", "10")]).await;
    let answer = front.https_get("/steward/approve/s3cr3t-token").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "updater /approve/s3cr3t-token"));
    assert_eq!(answer.header("referrer-policy"), Some("no-referrer"), "{answer:?}");
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{answer:?}");
    assert_eq!(answer.header("strict-transport-security"), Some("max-age=31536000"));
    // Port 80 redirects an approval URL (the token in it) without a log line either.
    let plain = get(front.plain(front.http).await, "/steward/approve/pl41n-token").await;
    assert_eq!(plain.status, 301, "{plain:?}");
    // Past the limit: the 429 of an approval URL is not logged and not cached or referred.
    let refused = front.https_get("/steward/approve/l1m1t-token").await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("referrer-policy"), Some("no-referrer"), "{refused:?}");
    assert_eq!(refused.header("cache-control"), Some("no-store"), "{refused:?}");
    // A request after them is logged (so the log is written: a 429 too), the tokens never.
    front.https_get("/after").await;
    let log = wait_for("the next request's log line", Duration::from_secs(5), || {
        let log = front.log();
        log.contains("GET /after").then_some(log)
    });
    for token in ["s3cr3t-token", "pl41n-token", "l1m1t-token"] {
        assert!(!log.contains(token), "{token} logged: {log}");
    }
}

/// The deployer's page (issue 21) as the updater's: over HTTPS only, to the deployer under
/// `/deploy/approve/`, with no referrer, no cache and no log line; nothing else of the deployer
/// (its webhook is for Gitea on the stack's network, not the internet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_approval_page_goes_to_the_deployer_unlogged_and_nothing_else_of_it() {
    let front = Front::start(&[]).await;
    let answer = front.https_get("/steward/deploy/approve/d3pl0y-token").await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "deployer /deploy/approve/d3pl0y-token"),
        "{answer:?}"
    );
    assert_eq!(answer.header("referrer-policy"), Some("no-referrer"), "{answer:?}");
    assert_eq!(answer.header("cache-control"), Some("no-store"), "{answer:?}");
    assert_eq!(answer.header("strict-transport-security"), Some("max-age=31536000"));
    let plain = get(front.plain(front.http).await, "/steward/deploy/approve/pl41n-d3pl0y").await;
    assert_eq!(plain.status, 301, "{plain:?}");
    for other in ["/steward/deploy/webhook", "/deploy/webhook", "/deploy/approve/r00t-d3pl0y"] {
        let answer = front.https_get(other).await;
        assert_eq!(answer.body, format!("gitea {other}"), "{other}: {answer:?}");
    }
    let seen = front.deployer.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("GET /deploy/approve/d3pl0y-token "), "{seen:?}");
    assert!(front.updater.lock().expect("seen").is_empty());
    front.https_get("/after").await;
    let log = wait_for("the next request's log line", Duration::from_secs(5), || {
        let log = front.log();
        log.contains("GET /after").then_some(log)
    });
    for token in ["d3pl0y-token", "pl41n-d3pl0y"] {
        assert!(!log.contains(token), "{token} logged: {log}");
    }
    // A path on the root is Gitea's and logged as any: the front is not the deployer's.
    assert!(log.contains("r00t-d3pl0y"), "{log}");
}

/// The deployer is optional in the stack: a front whose deployer is not there starts, serves
/// Gitea, and answers the deployment page 503. Not there is a loopback port nobody listens on:
/// a name that does not resolve would send DNS queries off the machine (the shipped file
/// resolves through the host's resolv.conf), which the tests must not; the stack's own case,
/// the name `deployer` unknown to the engine's DNS, rests on `init-addr ...,none`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_deployer_the_front_starts_and_its_page_is_503() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let front = Front::start(&[("HAPROXY_DEPLOYER", nobody.as_str())]).await;
    let gitea = front.https_get("/explore/repos").await;
    assert_eq!((gitea.status, gitea.body.as_str()), (200, "gitea /explore/repos"));
    let page = front.https_get("/steward/deploy/approve/n0-d3pl0yer").await;
    assert_eq!(page.status, 503, "{page:?}");
    assert_eq!(page.header("cache-control"), Some("no-store"), "{page:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_per_ip_limit_get_429_until_the_window_passed() {
    let front = Front::start(&[("HAPROXY_RATE_LIMIT", "20"), ("HAPROXY_RATE_PERIOD", "2")]).await;
    // Bounded: at most 40 requests, as fast as they go.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let answer = front.https_get("/").await;
        statuses.push(answer.status);
        if answer.status == 429 {
            assert_eq!(answer.header("strict-transport-security"), Some("max-age=31536000"));
            // When to come back: one period (git-lfs, among others, waits that long).
            assert_eq!(answer.header("retry-after"), Some("2"), "{answer:?}");
            break;
        }
    }
    assert_eq!(statuses.len(), 21, "the 21st request is the first refused: {statuses:?}");
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    // Still refused at once, on plain HTTP too (one table for both ports).
    assert_eq!(plain_status(front.http, "/"), Some(429));
    // After the window (two periods without a request: the rate is over a sliding period),
    // normal service.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let answer = front.https_get("/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_is_counted_by_its_64_and_an_ipv4_one_by_its_address() {
    let port = free_port();
    let bind = format!("127.0.0.1:{port},::1:{port}");
    let front = Front::start(&[("HAPROXY_HTTP_BIND", &bind)]).await;
    let v6 = TcpStream::connect(("::1", port)).await.expect("connect to [::1]");
    assert_eq!(get(v6, "/").await.status, 301);
    let v4 = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    assert_eq!(get(v4, "/").await.status, 301);
    // The counters' keys, from the admin socket: ::1's /64 is "::".
    let mut sock =
        tokio::net::UnixStream::connect(front.dir.join("admin.sock")).await.expect("socket");
    sock.write_all(b"show table per_ip\n").await.expect("write");
    let mut table = String::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_string(&mut table))
        .await
        .expect("answer within 5 s")
        .expect("read");
    let keys: Vec<&str> = table.split_whitespace().filter_map(|w| w.strip_prefix("key=")).collect();
    assert_eq!(keys.len(), 2, "{table}");
    assert!(keys.contains(&"::") && keys.contains(&"::ffff:127.0.0.1"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_and_the_tunnel_carries_data() {
    let front = Front::start(&[]).await;
    let (mut tls, _) = front.tls().await;
    let request = format!(
        "GET /user/events HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut tls))
        .await
        .expect("answer within 5 s")
        .expect("a head");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_lowercase().contains("\r\nupgrade: websocket"), "{head}");
    // The tunnel: bytes go to the backend and back.
    tls.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echo))
        .await
        .expect("echo within 5 s")
        .expect("echo");
    assert_eq!(&echo, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_and_the_admin_socket_answer_on_internal_addresses() {
    let front = Front::start(&[]).await;
    let metrics = get(front.plain(front.stats).await, "/metrics").await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    // Gitea's server is checked and up.
    let mut seen = String::new();
    for _ in 0..50 {
        seen = get(front.plain(front.stats).await, "/metrics").await.body;
        if seen.contains(r#"haproxy_server_status{proxy="gitea",server="gitea",state="UP"} 1"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        seen.contains(r#"haproxy_server_status{proxy="gitea",server="gitea",state="UP"} 1"#),
        "{seen}"
    );
    assert!(seen.contains(r#"haproxy_server_check_status{proxy="gitea",server="gitea""#));
    // Scrapes are not logged; a request after them is (so the log is written).
    front.https_get("/after").await;
    let log = wait_for("the next request's log line", Duration::from_secs(5), || {
        let log = front.log();
        log.contains("GET /after").then_some(log)
    });
    assert!(!log.contains("/metrics"), "{log}");
    // The updater's client on the shipped admin socket: the backend and its server.
    let runtime = Runtime::new(front.dir.join("admin.sock"));
    let servers = runtime.servers(&Name::new("gitea").expect("name")).await.expect("servers");
    assert_eq!(servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["gitea"]);
    assert!(servers[0].serving(), "{servers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_the_hook_without_cutting_a_request() {
    let mut front = Front::start(&[]).await;
    let (_, old_leaf) = front.tls().await;
    // A request in flight across the reload: /slow answers after 2 s.
    let (slow, _) = front.tls().await;
    let in_flight = tokio::spawn(get(slow, "/slow"));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // certbot renewed: new live files, then the hook.
    let (chain, key, new_der) = certificate();
    std::fs::write(front.dir.join("live/fullchain.pem"), chain).expect("chain");
    std::fs::write(front.dir.join("live/privkey.pem"), key).expect("key");
    front.trusted.push(new_der.clone());
    let (ok, out) = front.reload();
    assert!(ok, "front.sh reload: {out}");

    let answer = in_flight.await.expect("join");
    assert_eq!((answer.status, answer.body.as_str()), (200, "gitea /slow"), "{answer:?}");
    let mut served = old_leaf.clone();
    for _ in 0..50 {
        served = front.tls().await.1;
        if served == new_der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served == new_der, "the renewed certificate is not served: {}", front.log());
    let mode = std::fs::metadata(front.dir.join("tls/front.pem")).expect("pem").mode();
    assert_eq!(mode & 0o077, 0, "the key's file is readable by others: {mode:o}");

    // A renewal HAProxy refuses (a key that is not the certificate's): the hook fails, the
    // served certificate stays.
    let (chain, _, _) = certificate();
    std::fs::write(front.dir.join("live/fullchain.pem"), chain).expect("chain");
    let (ok, out) = front.reload();
    assert!(!ok, "a bad certificate must fail the hook: {out}");
    assert!(out.contains("still serving the old one"), "{out}");
    // Why, in HAProxy's words.
    assert!(out.contains("configuration or certificate refused"), "{out}");
    assert!(out.contains("inconsistencies between private key and certificate"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(front.tls().await.1 == new_der);
    assert_eq!(front.https_get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reloads_at_once_both_finish_and_leave_no_temporary_file() {
    let mut front = Front::start(&[]).await;
    let (chain, key, new_der) = certificate();
    std::fs::write(front.dir.join("live/fullchain.pem"), chain).expect("chain");
    std::fs::write(front.dir.join("live/privkey.pem"), key).expect("key");
    front.trusted.push(new_der.clone());
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| front.reload());
        let b = s.spawn(|| front.reload());
        (a.join().expect("join"), b.join().expect("join"))
    });
    assert!(a.0 && b.0, "both reloads: {a:?} {b:?}");
    let left: Vec<_> = std::fs::read_dir(front.dir.join("tls"))
        .expect("tls dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("front.pem"))
        .collect();
    assert_eq!(left, ["front.pem"], "temporary files left beside the PEM");
    let mut served = front.tls().await.1;
    for _ in 0..50 {
        if served == new_der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        served = front.tls().await.1;
    }
    assert!(served == new_der, "the renewed certificate is not served: {}", front.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_no_new_worker_answers_is_reported_as_failed() {
    let front = Front::start(&[]).await;
    // A "master" that ignores SIGUSR2: no worker ever appears.
    let mut deaf = Command::new("sh").args(["-c", "trap '' USR2; sleep 30"]).spawn().expect("sh");
    let out = Command::new("sh")
        .arg(front_dir().join("front.sh"))
        .arg("reload")
        .envs(front.env.iter().map(|(k, v)| (k, v)))
        .env("HAPROXY_MASTER_PID", deaf.id().to_string())
        .env("HAPROXY_RELOAD_WAIT", "2")
        .output()
        .expect("sh front.sh reload");
    let _ = deaf.kill();
    let _ = deaf.wait();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("reloaded"), "{text}");
    assert!(text.contains("no new worker"), "{text}");
}

/// `front.sh health` (the compose healthcheck) with the front's environment and `extra`.
fn health(front: &Front, extra: &[(&str, &str)]) -> std::process::Output {
    Command::new("sh")
        .arg(front_dir().join("front.sh"))
        .arg("health")
        .envs(front.env.iter().map(|(k, v)| (k, v)))
        .envs(extra.iter().copied())
        .output()
        .expect("sh front.sh health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_asks_the_running_process() {
    assert!(
        Command::new("sh")
            .args(["-c", "command -v bash"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "bash missing: the official image's branch of `front.sh health` needs it"
    );
    let front = Front::start(&[]).await;
    let out = health(&front, &[]);
    assert!(out.status.success(), "{out:?}");
    // Nothing listening, or no HTTP answer (the TLS port): unhealthy.
    let closed = free_port().to_string();
    let https = front.https.to_string();
    for port in [closed.as_str(), https.as_str()] {
        let bind = format!("127.0.0.1:{port}");
        let out = health(&front, &[("HAPROXY_STATS_BIND", &bind)]);
        assert!(!out.status.success(), "healthy on {bind}: {out:?}");
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_first_switch_works_on_the_documented_backend_through_the_shipped_socket() {
    // The shipped file with its commented `backend app` example taken in, as an operator
    // would, its server at a test backend.
    let (app_port, _) = backend("app").await;
    let shipped = std::fs::read_to_string(front_dir().join("haproxy.cfg")).expect("haproxy.cfg");
    let example: Vec<&str> = shipped
        .lines()
        .skip_while(|l| *l != "#backend app")
        .take_while(|l| l.starts_with('#'))
        .map(|l| &l[1..])
        .collect();
    assert!(example.len() >= 2, "no `#backend app` example in haproxy.cfg");
    let example = example.join("\n").replace("app:8080", &format!("127.0.0.1:{app_port}"));
    let cfg = TempFile(std::env::temp_dir().join(unique_name("haproxy-front-app.cfg")));
    std::fs::write(&cfg.0, format!("{shipped}\n{example}\n")).expect("config");
    let path = cfg.0.display().to_string();
    let front = Front::start(&[("HAPROXY_CFG", &path)]).await;

    // The new container of a start-first update: another server answering its checks.
    let (next_port, next) = backend("next").await;
    let runtime = Runtime::new(front.dir.join("admin.sock"));
    let (b, old, new) = (
        Name::new("app").expect("name"),
        Name::new("app").expect("name"),
        Name::new("app-next").expect("name"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], next_port));
    runtime
        .switch(&b, &old, &new, addr, true, steward_haproxy::SwitchBounds::default())
        .await
        .unwrap_or_else(|e| panic!("switch: {e}\n{}", front.log()));
    // Checked as the backend says before it took traffic.
    assert!(
        next.lock().expect("seen").iter().any(|h| h.starts_with("GET / ")),
        "the new server was never checked"
    );
    let servers = runtime.servers(&b).await.expect("servers");
    assert_eq!(servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["app-next"]);
    assert!(servers[0].serving(), "{servers:?}");
}

/// Docker volumes removed when dropped (declared before the containers that mount them).
struct Volumes(Vec<String>);

impl Drop for Volumes {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = Command::new("docker").args(["volume", "rm", "-f", v]).output();
        }
    }
}

/// The test bed's image of the front (`infra/testbed/stack-images.sh stand-ins`: Debian's
/// haproxy in the official image's layout) run as `compose/haproxy.yml` runs it: as root with
/// front.sh as its entrypoint, certbot's files in a volume, the PEM on a tmpfs, the admin
/// socket in a volume of its own. What the host tests cannot show: the workers drop to the
/// image's user, the socket is the updater's group's, the compose healthcheck passes.
#[test]
fn the_image_runs_the_front_as_the_compose_layer_does() {
    use steward_testkit::docker::{docker, Container, Network};
    let image = "steward-local/haproxy:latest";
    assert!(
        Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|o| o.status.success()),
        "{image} missing: infra/testbed/stack-images.sh stand-ins"
    );
    let (chain, key, _) = certificate();
    let src = std::env::temp_dir().join(unique_name("haproxy-front-certs"));
    std::fs::create_dir_all(&src).expect("dir");
    let _src = steward_testkit::TempDir::at(src.clone());
    std::fs::write(src.join("fullchain.pem"), chain).expect("chain");
    std::fs::write(src.join("privkey.pem"), key).expect("key");

    let (certs, admin) = (unique_name("front-certs"), unique_name("front-admin"));
    let _volumes = Volumes(vec![certs.clone(), admin.clone()]);
    let network = Network::create("front");
    // certbot's layout and modes: live/ 0700, the key 0600, root's.
    let fill = format!("{certs}:/etc/letsencrypt");
    let from = format!("{}:/src:ro", src.display());
    docker(&[
        "run", "--rm", "-v", &fill, "-v", &from, "steward-test/busybox", "sh", "-c",
        &format!(
            "mkdir -p /etc/letsencrypt/live/{DOMAIN} && cp /src/*.pem /etc/letsencrypt/live/{DOMAIN}/ \
             && chmod 700 /etc/letsencrypt/live && chmod 600 /etc/letsencrypt/live/{DOMAIN}/privkey.pem"
        ),
    ]);
    let _gitea = Container::run(
        &unique_name("front-gitea"),
        &["--network", &network.0, "--network-alias", "gitea", "steward-test/app:v1"],
    );
    let config = format!("{}:/usr/local/etc/haproxy:ro", front_dir().display());
    let certs_ro = format!("{certs}:/etc/letsencrypt:ro");
    let admin_rw = format!("{admin}:/run/haproxy");
    let domain = format!("GITEA_DOMAIN={DOMAIN}");
    let front = Container::run(
        &unique_name("front-haproxy"),
        &[
            "--network",
            &network.0,
            "--user",
            "root",
            "-e",
            &domain,
            "-e",
            "HAPROXY_GITEA=gitea:8080",
            "-v",
            &config,
            "-v",
            &certs_ro,
            "-v",
            &admin_rw,
            "--tmpfs",
            "/run/haproxy-tls:mode=0700",
            "--entrypoint",
            "/bin/sh",
            image,
            "/usr/local/etc/haproxy/front.sh",
            "start",
        ],
    );
    let exec = |args: &[&str]| {
        let mut all = vec!["exec", front.name.as_str()];
        all.extend_from_slice(args);
        docker(&all)
    };
    wait_for("the front's internal port", Duration::from_secs(15), || {
        steward_testkit::docker::try_docker(&[
            "exec",
            &front.name,
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:8405/healthz",
        ])
    });
    let workers = |ps: &str| -> Vec<String> {
        ps.lines()
            .filter(|l| l.contains("haproxy") && !l.trim_start().starts_with("1 "))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let ps = exec(&["ps", "-o", "pid,user,args"]);
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["1", "root", "haproxy"]),
        "{ps}"
    );
    let before = workers(&ps);
    assert!(before.len() == 1 && before[0].ends_with(" haproxy"), "one worker, as haproxy: {ps}");
    assert_eq!(exec(&["stat", "-c", "%a %g", "/run/haproxy/admin.sock"]), "660 10001");
    assert_eq!(exec(&["stat", "-c", "%a %u", "/run/haproxy-tls/front.pem"]), "600 0");
    let metrics = exec(&["wget", "-q", "-O", "-", "http://127.0.0.1:8405/metrics"]);
    assert!(metrics.contains(r#"haproxy_server_status{proxy="gitea",server="gitea""#));
    // The compose healthcheck (busybox: its wget branch), then the renewal hook as the
    // updater runs it.
    exec(&["sh", "/usr/local/etc/haproxy/front.sh", "health"]);
    let elsewhere = steward_testkit::docker::try_docker(&[
        "exec",
        "-e",
        "HAPROXY_STATS_BIND=:1",
        &front.name,
        "sh",
        "/usr/local/etc/haproxy/front.sh",
        "health",
    ]);
    assert_eq!(elsewhere, None, "healthy where nothing listens");
    assert_eq!(exec(&["sh", "-c", "sh /usr/local/etc/haproxy/front.sh reload"]), "reloaded");
    let after = wait_for("a new worker", Duration::from_secs(10), || {
        let now = workers(&exec(&["ps", "-o", "pid,user,args"]));
        (now.len() == 1 && now != before).then_some(now)
    });
    assert!(after[0].ends_with(" haproxy"), "{after:?}");
    // Again: the first left its lock (busybox has no flock: a directory) and no file behind.
    assert_eq!(exec(&["sh", "-c", "sh /usr/local/etc/haproxy/front.sh reload"]), "reloaded");
    assert_eq!(exec(&["ls", "-A", "/run/haproxy-tls"]), "front.pem");
}
