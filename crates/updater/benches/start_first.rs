//! Failed requests through HAProxy while the stand-in web app is updated (v1 <-> v2), with a
//! prober sending `GET /` through HAProxy every 20 ms (HAProxy without retries, so every gap
//! shows; anything but a 200 counts as failed):
//!
//! - Steward start-first (`steward.update.strategy=start-first`): the updater's whole flow
//!   (`Flow::on_image_updated`: pull, new container beside the old, gate, HAProxy switch,
//!   takeover);
//! - Steward stop-first (today's default swap), the same flow with HAProxy's server left at
//!   the container's address as it is (a reload-free setup);
//! - the peer: `docker stop; docker rm; docker run` of the same change, on the same network.
//!
//! And HAProxy's added latency: the same `GET /` direct to the container's address and through
//! HAProxy, interleaved, p50/p99.
//!
//! Run: `cargo bench -p steward-updater --bench start_first` after `infra/testbed/up.sh`
//! (`STEWARD_BENCH_ROUNDS`, default 20, updates per contender).

#![allow(clippy::print_stdout, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use steward_testkit::docker::{address_of, docker, Container, Network, SwapLeftovers};
use steward_testkit::haproxy::{get_ok, Haproxy, Prober};
use steward_testkit::{http_get_at, unique_name, wait_for, TestBus};

/// `rounds` updates through the flow: failed requests, and the updates' median duration.
async fn flow_rounds(
    bus: &TestBus,
    strategy: &str,
    net: &str,
    rounds: usize,
) -> (usize, usize, Duration) {
    let (app, h, v2) = behind_haproxy(net, strategy);
    let flow = flow_with(&bus.bus, |cfg| {
        cfg.haproxy_socket = Some(h.socket());
        cfg.health_timeout = Duration::from_secs(30);
    })
    .await;
    let digests = [app.v1.clone(), v2];
    let (mut failed, mut requests, mut took) = (0, 0, vec![]);
    for round in 0..rounds {
        let (from, to) = (&digests[round % 2], &digests[1 - round % 2]);
        let prober = Prober::start(h.port);
        let started = Instant::now();
        let (event, u) = image_updated_from(&bus.bus, &app, from, to).await;
        flow.on_image_updated(&event, &u).await.expect("update");
        took.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (seen, f) = prober.finish();
        failed += f.len();
        requests += seen.len() + f.len();
        // Whatever happened, the next round starts from a served app (bounded).
        let want = if round % 2 == 0 { "app v2" } else { "app v1" };
        let served = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            get_ok(h.port).is_some_and(|b| b.contains(want))
        });
        if !served {
            println!("  {strategy} round {round}: {want} not served through HAProxy afterwards");
        }
    }
    took.sort();
    (failed, requests, took[took.len() / 2])
}

/// `rounds` of `docker stop; rm; run` on `net`, HAProxy's server at the container's address.
fn docker_rounds(net: &str, rounds: usize) -> (usize, usize) {
    let name = unique_name("sfpeer");
    let _parked = SwapLeftovers(name.clone());
    let run = |version: &str| {
        let image = format!("steward-test/app:{version}");
        docker(&["run", "-d", "--name", &name, "--network", net, &image]);
    };
    run("v1");
    let addr: SocketAddr = format!("{}:8080", address_of(&name)).parse().expect("address");
    let h = Haproxy::start(&name, addr);
    let (mut failed, mut requests) = (0, 0);
    for round in 0..rounds {
        let version = if round % 2 == 0 { "v2" } else { "v1" };
        let prober = Prober::start(h.port);
        docker(&["stop", &name]);
        docker(&["rm", &name]);
        run(version);
        let want = format!("app {version}");
        let served = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            get_ok(h.port).is_some_and(|b| b.contains(&want))
        });
        let (seen, f) = prober.finish();
        failed += f.len();
        requests += seen.len() + f.len();
        if !served {
            println!("  docker round {round}: {want} not served through HAProxy afterwards");
        }
    }
    let _ = std::process::Command::new("docker").args(["rm", "-f", &name]).output();
    (failed, requests)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `GET /` direct and through HAProxy, interleaved, `n` each: (direct, via) p50/p99.
fn latency(n: usize, net: &str) -> ((Duration, Duration), (Duration, Duration)) {
    let name = unique_name("sflat");
    let c = Container::run(&name, &["--network", net, "steward-test/app:v1"]);
    let ip = address_of(&c.name);
    let addr: SocketAddr = format!("{ip}:8080").parse().expect("address");
    let h = Haproxy::start(&name, addr);
    let direct_get = |addr| http_get_at(addr).filter(|(status, _)| *status == 200);
    wait_for("direct", Duration::from_secs(10), || direct_get(addr));
    let (mut direct, mut via) = (vec![], vec![]);
    for _ in 0..n {
        let t = Instant::now();
        direct_get(addr).expect("direct answer");
        direct.push(t.elapsed());
        let t = Instant::now();
        get_ok(h.port).expect("answer through HAProxy");
        via.push(t.elapsed());
    }
    direct.sort();
    via.sort();
    (
        (percentile(&direct, 0.5), percentile(&direct, 0.99)),
        (percentile(&via, 0.5), percentile(&via, 0.99)),
    )
}

fn main() {
    let rounds: usize =
        std::env::var("STEWARD_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let net = Network::create("sfbnet");
    runtime.block_on(async {
        let bus = TestBus::new("sfbench").await;
        let (f, n, t) = flow_rounds(&bus, "start-first", &net.0, rounds).await;
        println!("start-first (Steward): {f} failed of {n} requests in {rounds} updates; median update {t:?}");
        let (f, n, t) = flow_rounds(&bus, "stop-first", &net.0, rounds).await;
        println!("stop-first (Steward today): {f} failed of {n} requests in {rounds} updates; median update {t:?}");
    });
    let (f, n) = docker_rounds(&net.0, rounds);
    println!("docker stop; rm; run (peer): {f} failed of {n} requests in {rounds} replacements");
    let ((d50, d99), (v50, v99)) = latency(1000, &net.0);
    println!(
        "latency of GET / (1000 each, interleaved): direct p50 {d50:?} p99 {d99:?}; through HAProxy p50 {v50:?} p99 {v99:?}; added p50 {:?} p99 {:?}",
        v50.saturating_sub(d50),
        v99.saturating_sub(d99)
    );
}
