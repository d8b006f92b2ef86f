//! Registries that fail: a proxy in front of the test bed's real registry answers 500, 429
//! with `Retry-After`, or never answers, while another registry stays healthy.
//! (The proxy is the only stand-in: a real registry cannot be told to fail on demand.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use prometheus_client::metrics::family::Family;
use steward_testkit::docker::{docker, push_app, registry, Container, ImageTag};
use steward_testkit::{unique_name, TestBus};
use steward_watcher::check::{Checker, RegistryLabels};
use steward_watcher::registry::{Registries, RegistryConfig};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Pass,
    Fail500,
    /// 429 with `Retry-After: 1` for this many manifest requests, then pass.
    TooMany(u32),
    Hang,
}

#[derive(Clone)]
struct Proxy {
    mode: Arc<Mutex<Mode>>,
    /// (when, path, status) of every manifest request.
    log: Arc<Mutex<Vec<(Instant, String, u16)>>>,
    upstream: String,
    http: reqwest::Client,
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let path = req.uri().path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
    let manifest = path.contains("/manifests/");
    let status = |code: u16| {
        Response::builder()
            .status(code)
            .header("retry-after", "1")
            .body(Body::empty())
            .expect("response")
    };
    if manifest {
        let answer = {
            let mut mode = p.mode.lock().expect("lock");
            let answer = match *mode {
                Mode::Pass => None,
                Mode::Fail500 => Some(500),
                Mode::TooMany(0) => {
                    *mode = Mode::Pass;
                    None
                }
                Mode::TooMany(n) => {
                    *mode = Mode::TooMany(n - 1);
                    Some(429)
                }
                Mode::Hang => Some(0),
            };
            p.log.lock().expect("lock").push((Instant::now(), path.clone(), answer.unwrap_or(200)));
            answer
        };
        match answer {
            Some(0) => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                return status(504);
            }
            Some(code) => return status(code),
            None => {}
        }
    }
    let mut upstream = p.http.request(req.method().clone(), format!("http://{}{path}", p.upstream));
    for (k, v) in req.headers() {
        if k != "host" {
            upstream = upstream.header(k, v);
        }
    }
    let body = axum::body::to_bytes(req.into_body(), 64 << 20).await.unwrap_or_default();
    let answer = match upstream.body(body).send().await {
        Ok(a) => a,
        Err(_) => return status(502),
    };
    let mut out = Response::builder().status(answer.status().as_u16());
    for (k, v) in answer.headers() {
        out = out.header(k, v);
    }
    out.body(Body::from(answer.bytes().await.unwrap_or_default())).expect("response")
}

async fn start_proxy() -> (Proxy, u16) {
    let proxy = Proxy {
        mode: Arc::new(Mutex::new(Mode::Pass)),
        log: Arc::default(),
        upstream: registry(),
        http: reqwest::Client::new(),
    };
    // Podman pulls over plain http only from the ports its registries.conf lists.
    let port = match steward_testkit::on_podman() {
        false => 0,
        true => steward_testkit::testbed::podman_plain_http_port(),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().fallback(forward).with_state(proxy.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (proxy, port)
}

struct Fixture {
    _bus: TestBus,
    checker: Checker,
    proxy: Proxy,
    proxied: String,
    direct: String,
    _keep: (Vec<Container>, Vec<ImageTag>),
}

/// One container whose image comes through the proxy, one straight from the registry; both
/// have a newer v2 waiting. Registry requests time out after `timeout`: the direct registry
/// once took over 2 s to answer under CI's load and was counted failed beside the proxy.
async fn fixture(tag: &str, timeout: Duration) -> Fixture {
    let bus = TestBus::new(tag).await;
    let scope = unique_name("scope");
    let (proxy, port) = start_proxy().await;
    let repo = unique_name("steward-test/faults");
    let direct_image = format!("{}/{repo}:1.0", registry());
    let proxied_image = format!("127.0.0.1:{port}/{repo}:1.0");
    let tags = vec![ImageTag(direct_image.clone()), ImageTag(proxied_image.clone())];
    push_app("v1", &direct_image);
    docker(&["pull", "-q", &proxied_image]);
    let scope_label = format!("steward.scope={scope}");
    let (proxied, direct) = (unique_name("proxied"), unique_name("direct"));
    let containers = vec![
        Container::run(
            &proxied,
            &["--label", "steward.enable=true", "--label", &scope_label, &proxied_image],
        ),
        Container::run(
            &direct,
            &["--label", "steward.enable=true", "--label", &scope_label, &direct_image],
        ),
    ];
    push_app("v2", &direct_image);
    let checker = Checker {
        bus: bus.bus.clone(),
        engine: steward_engine::Engine::from_env(),
        registries: Arc::new(
            Registries::new(RegistryConfig {
                timeout,
                max_wait: Duration::from_secs(5),
                insecure: vec![],
            })
            .expect("registries"),
        ),
        records: Checker::records(&bus).await.expect("records"),
        concurrency: 8,
        outcomes: Family::default(),
        source: "steward-watcher/test".into(),
        scope: Some(scope),
    };
    Fixture { _bus: bus, checker, proxy, proxied, direct, _keep: (containers, tags) }
}

fn count(f: &Fixture, registry: &str, outcome: &str) -> u64 {
    f.checker
        .outcomes
        .get_or_create(&RegistryLabels { registry: registry.into(), outcome: outcome.into() })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_answering_500_is_an_error_counted_and_the_other_is_still_checked() {
    let f = fixture("f500", Duration::from_secs(30)).await;
    *f.proxy.mode.lock().expect("lock") = Mode::Fail500;
    let summary = f.checker.run(None, None).await.expect("the check itself succeeds");
    assert_eq!(summary.updated, std::slice::from_ref(&f.direct));
    assert_eq!(summary.failed.len(), 1);
    assert_eq!(summary.failed[0].0, f.proxied);
    assert!(summary.failed[0].1.contains("HTTP 500"), "{summary:?}");
    let proxy_host = f.proxied_registry();
    assert_eq!(count(&f, &proxy_host, "status"), 1);
    let record = f.checker.records.get(&f.proxied).await.expect("get").expect("record").value;
    assert!(record.last_error.is_some_and(|e| e.contains("HTTP 500")));

    // The registry recovers: the next check sees the proxied image as current.
    *f.proxy.mode.lock().expect("lock") = Mode::Pass;
    let summary = f.checker.run(None, None).await.expect("check");
    assert!(summary.failed.is_empty(), "{summary:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_per_registry() {
    let f = fixture("f429", Duration::from_secs(30)).await;
    *f.proxy.mode.lock().expect("lock") = Mode::TooMany(1);
    let summary = f.checker.run(None, None).await.expect("check");
    assert!(summary.failed.is_empty(), "waited and succeeded: {summary:?}");
    let log = f.proxy.log.lock().expect("lock").clone();
    let limited = log.iter().position(|(_, _, s)| *s == 429).expect("a 429 was served");
    let next = log.get(limited + 1).expect("a request after the 429");
    let gap = next.0 - log[limited].0;
    assert!(gap >= Duration::from_millis(950), "next request {gap:?} after a Retry-After of 1 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_registry_times_out_without_holding_the_other_back() {
    let f = fixture("fhang", Duration::from_secs(5)).await;
    *f.proxy.mode.lock().expect("lock") = Mode::Hang;
    let started = Instant::now();
    let summary = f.checker.run(None, None).await.expect("check");
    assert_eq!(summary.updated, std::slice::from_ref(&f.direct));
    assert_eq!(summary.failed.len(), 1);
    assert!(summary.failed[0].1.contains("unreachable"), "{summary:?}");
    assert!(started.elapsed() < Duration::from_secs(40), "bounded by the 5 s request timeout");
    assert_eq!(count(&f, &f.proxied_registry(), "unreachable"), 1);
}

impl Fixture {
    /// `127.0.0.1:PORT`: the registry of the proxied container's image.
    fn proxied_registry(&self) -> String {
        let image = docker(&["inspect", "-f", "{{.Config.Image}}", &self.proxied]);
        let image = steward_imageref::ImageRef::parse(image.trim()).expect("image reference");
        image.registry().to_owned()
    }
}

/// `watch.registry_failed` / `watch.registry_recovered` of the namespace: (type, registry).
async fn registry_events(bus: &TestBus) -> Vec<(String, String)> {
    steward_testkit::stored_events(bus)
        .await
        .into_iter()
        .filter_map(|e| match &e.data {
            steward_events::EventData::RegistryFailed(r) => {
                Some(("failed".to_owned(), r.registry.clone()))
            }
            steward_events::EventData::RegistryRecovered(r) => {
                Some(("recovered".to_owned(), r.registry.clone()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_failing_every_full_check_is_told_once_per_episode_across_restarts() {
    use steward_watcher::episodes::Episodes;
    let f = fixture("fepisode", Duration::from_secs(30)).await;
    let bus = &f._bus;
    let source = "steward-watcher/test".to_owned();
    let proxied = f.proxied_registry();
    *f.proxy.mode.lock().expect("lock") = Mode::Fail500;
    let episodes = Episodes::open(bus, 2, source.clone()).await.expect("episodes");
    let full_check = |episodes: Episodes| {
        let checker = f.checker.clone();
        async move {
            let summary = checker.run(None, None).await.expect("check");
            episodes.after_check(&summary.registries).await.expect("count");
        }
    };
    full_check(episodes.clone()).await;
    assert_eq!(registry_events(bus).await, [], "one failed check is not an alarm yet");
    full_check(episodes).await;
    let told = vec![("failed".to_owned(), proxied.clone())];
    assert_eq!(registry_events(bus).await, told, "told at the second, only the failing one");
    let failed = steward_testkit::stored_events(bus)
        .await
        .into_iter()
        .find_map(|e| match e.data {
            steward_events::EventData::RegistryFailed(r) => Some(r),
            _ => None,
        })
        .expect("registry_failed");
    assert_eq!(failed.failed_checks, 2);
    assert_eq!(failed.containers, std::slice::from_ref(&f.proxied));
    assert!(failed.reason.contains("HTTP 500"), "{failed:?}");

    // A restarted watcher (a fresh instance on the same bucket) does not tell it again.
    let restarted = Episodes::open(bus, 2, source.clone()).await.expect("episodes");
    full_check(restarted.clone()).await;
    assert_eq!(registry_events(bus).await, told, "told once per episode");

    *f.proxy.mode.lock().expect("lock") = Mode::Pass;
    full_check(restarted.clone()).await;
    let mut both = told.clone();
    both.push(("recovered".to_owned(), proxied.clone()));
    assert_eq!(registry_events(bus).await, both, "the recovery, once");
    full_check(restarted).await;
    assert_eq!(registry_events(bus).await, both, "and nothing more");
}
