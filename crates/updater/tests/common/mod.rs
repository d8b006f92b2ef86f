//! What the updater's tests share: a stand-in app on a fresh tag, a flow, its events.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use steward_bus::Bus;
use steward_events::{Digest, Event, ImageUpdated};
use steward_testkit::docker::{
    address_of, docker, push_app, registry, Container, ImageTag, SwapLeftovers,
};
use steward_testkit::haproxy::Haproxy;
use steward_testkit::{free_port, http_get, unique_name, wait_for};
use steward_updater::config::UpdaterConfig;
use steward_updater::flow::Flow;

pub struct App {
    pub name: String,
    pub image: String,
    pub port: u16,
    pub v1: String,
    pub _c: Container,
    pub _tag: ImageTag,
    pub _parked: SwapLeftovers,
}

/// v1 pushed under a fresh tag and running with `labels`, serving on a published port.
pub fn app(labels: &[&str]) -> App {
    app_with_args(labels, &[])
}

/// [`app`] with extra `docker run` arguments.
pub fn app_with_args(labels: &[&str], extra: &[&str]) -> App {
    app_on_port(free_port(), labels, extra)
}

/// [`app_with_args`] published on `port` (for a label that names it).
pub fn app_on_port(port: u16, labels: &[&str], extra: &[&str]) -> App {
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/upd"));
    let tag = ImageTag(image.clone());
    let v1 = push_app("v1", &image);
    let name = unique_name("upd");
    let publish = format!("127.0.0.1:{port}:8080");
    let mut args = vec!["-p", publish.as_str(), "--restart", "unless-stopped"];
    for l in labels {
        args.extend_from_slice(&["--label", l]);
    }
    args.extend_from_slice(extra);
    args.push(&image);
    let c = Container::run(&name, &args);
    wait_for("v1 served", Duration::from_secs(15), || {
        http_get(port).filter(|b| b.contains("app v1"))
    });
    App { _parked: SwapLeftovers(name.clone()), name, image, port, v1, _c: c, _tag: tag }
}

/// The stand-in app v1 on Docker network `net`, labelled automatic, no backup, with
/// `steward.update.strategy=STRATEGY` and HAProxy backend `app`, port 8080, behind a haproxy of
/// its own (its server at the container's address); v2 pushed under the same tag. Returns
/// once v1 is served through HAProxy: the app, the haproxy, v2's digest.
pub fn behind_haproxy(net: &str, strategy: &str) -> (App, Haproxy, String) {
    let image = format!("{}/{}:1.0", registry(), unique_name("steward-test/sf"));
    let tag = ImageTag(image.clone());
    let v1 = push_app("v1", &image);
    let name = unique_name("sf");
    let strategy = format!("steward.update.strategy={strategy}");
    let mut args = vec!["--network", net];
    for label in [
        "steward.update.policy=automatic",
        "steward.update.backup=false",
        &strategy,
        "steward.haproxy.backend=app",
        "steward.haproxy.port=8080",
    ] {
        args.extend_from_slice(&["--label", label]);
    }
    args.push(&image);
    let c = Container::run(&name, &args);
    let addr: SocketAddr = format!("{}:8080", address_of(&name)).parse().expect("address");
    let haproxy = Haproxy::start(&name, addr);
    wait_for("v1 served through HAProxy", Duration::from_secs(15), || {
        http_get(haproxy.port).filter(|b| b.contains("app v1"))
    });
    // v2 under the same tag (the registry keeps v1's manifest by digest).
    let v2 = push_app("v2", &image);
    let port = haproxy.port;
    let app = App { _parked: SwapLeftovers(name.clone()), name, image, port, v1, _c: c, _tag: tag };
    (app, haproxy, v2)
}

pub async fn flow(bus: &Bus) -> Flow {
    flow_with_links(bus, None).await
}

/// A flow that mints approval links with `links`.
pub async fn flow_with_links(
    bus: &Bus,
    links: Option<steward_approval::links::ApprovalLinks>,
) -> Flow {
    flow_with(bus, |cfg| cfg.links = links).await
}

/// A flow with the tests' settings, changed by `change`.
pub async fn flow_with(bus: &Bus, change: impl FnOnce(&mut UpdaterConfig)) -> Flow {
    let mut cfg = UpdaterConfig {
        backup_timeout: Duration::from_secs(60),
        health_timeout: Duration::from_secs(30),
        health_grace: Duration::from_secs(3),
        hook_timeout: Duration::from_secs(10),
        links: None,
        renewal: Default::default(),
        keep_images: 2,
        // The tests of the cleanup itself set one; the others see it at once, as before.
        prune_grace: Duration::ZERO,
        write_back: true,
        haproxy_socket: None,
        haproxy_switch_timeout: Duration::from_secs(10),
        probe: Default::default(),
    };
    change(&mut cfg);
    Flow::open(bus.clone(), steward_engine::Engine::from_env(), cfg, "steward-updater/test".into())
        .await
        .expect("flow")
}

/// Publishes `image.updated` for `app` to `new_digest` and returns it.
pub async fn image_updated(bus: &Bus, app: &App, new_digest: &str) -> (Event, ImageUpdated) {
    image_updated_from(bus, app, &app.v1, new_digest).await
}

/// The terminal events (`update.succeeded|rolled_back|failed`) of flow `correlation`.
pub fn terminal(events: &[Event], correlation: uuid::Uuid) -> Vec<&'static str> {
    events
        .iter()
        .filter(|e| e.correlation_id == correlation)
        .map(Event::event_type)
        .filter(|t| ["update.succeeded", "update.rolled_back", "update.failed"].contains(t))
        .collect()
}

/// [`image_updated`] from `current_digest` (a container updated before runs another).
pub async fn image_updated_from(
    bus: &Bus,
    app: &App,
    current_digest: &str,
    new_digest: &str,
) -> (Event, ImageUpdated) {
    let u = ImageUpdated {
        container: app.name.clone(),
        image: app.image.clone(),
        current_digest: Digest::parse(current_digest).expect("digest"),
        new_digest: Digest::parse(new_digest).expect("digest"),
        new_tag: None,
        policy: None,
        versions: Default::default(),
    };
    let event = Event::new("steward-watcher/test", u.clone());
    bus.publish(&event).await.expect("publish");
    (event, u)
}

pub async fn events(bus: &Bus) -> Vec<Event> {
    steward_testkit::stored_events(bus).await
}

pub fn types(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(Event::event_type).collect()
}

pub fn no_strays(name: &str) {
    let all = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    let strays: Vec<&str> = all.lines().filter(|n| n.starts_with(name) && *n != name).collect();
    assert!(strays.is_empty(), "stray containers: {strays:?}");
}

/// Runs a future to completion from a synchronous polling closure.
pub fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The `update.pending` the flow published (the test fails naming what it found instead).
pub async fn pending(bus: &Bus) -> steward_events::UpdatePending {
    let all = events(bus).await;
    let pending = all.iter().find_map(|e| match &e.data {
        steward_events::EventData::UpdatePending(p) => Some(p.clone()),
        _ => None,
    });
    pending.unwrap_or_else(|| panic!("no update.pending: {:?}", types(&all)))
}
