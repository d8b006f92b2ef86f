//! Downtime of replacing the stand-in web app (v1 <-> v2), measured by a prober that sends
//! `GET /` to its published port every 20 ms: Steward's `Engine::replace` (what the updater
//! runs; the pull before and the health gate after add nothing to the outage) against the
//! peer, a plain `docker stop; docker rm; docker run` of the same change (what Watchtower does).
//!
//! Run: `cargo bench -p steward-engine --bench downtime` after `infra/testbed/up.sh`;
//! `STEWARD_BENCH_ENGINE=podman` measures the same on the test bed's Podman service (the peer
//! then `podman stop; podman rm; podman run`, the images pulled from the test bed's registry).

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_engine::Engine;
use steward_testkit::{free_port, http_get, unique_name, wait_for, BenchEngine};

const ROUNDS: usize = 6;

/// Probes every 20 ms until stopped (at most 2 minutes); returns the longest run of failed
/// probes, from the first failure to the first success after it.
fn prober(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let (mut worst, mut down_since) = (Duration::ZERO, None::<Instant>);
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
            let t = Instant::now();
            let up = http_get(port).is_some_and(|b| b.starts_with("app v"));
            match (up, down_since) {
                (false, None) => down_since = Some(t),
                (true, Some(since)) => {
                    worst = worst.max(t - since);
                    down_since = None;
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(20).saturating_sub(t.elapsed()));
        }
        worst
    })
}

/// `docker run` (or `podman run`) of `image` as `name`, published on `port`.
fn run(cli: BenchEngine, name: &str, port: u16, image: &str) {
    let publish = format!("127.0.0.1:{port}:8080");
    cli.cli(&[
        "run",
        "-d",
        "--name",
        name,
        "-p",
        &publish,
        "--restart",
        "unless-stopped",
        "--label",
        "steward.enable=true",
        image,
    ]);
}

/// An app serving on `port` with the prober watching it.
struct Probed {
    port: u16,
    stop: Arc<AtomicBool>,
    probe: std::thread::JoinHandle<Duration>,
}

impl Probed {
    /// Runs `image` as `name`, waits until it serves, starts probing.
    fn start(cli: BenchEngine, name: &str, port: u16, image: &str) -> Self {
        run(cli, name, port, image);
        wait_for("app up", Duration::from_secs(10), || http_get(port));
        let stop = Arc::new(AtomicBool::new(false));
        let probe = prober(port, stop.clone());
        std::thread::sleep(Duration::from_millis(200));
        Self { port, stop, probe }
    }

    /// Waits until `version` serves, stops probing; the longest outage seen.
    fn until(self, version: &str) -> Duration {
        let port = self.port;
        wait_for("new version", Duration::from_secs(10), || {
            http_get(port).filter(|b| b.contains(version))
        });
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.probe.join().expect("prober")
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cli = BenchEngine::from_env();
    let engine = cli
        .podman_host()
        .map_or_else(Engine::from_env, |h| Engine::new(h, Duration::from_secs(60)));
    let images = [("v1", cli.app_image("v1")), ("v2", cli.app_image("v2"))];
    let (mut steward, mut peer) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let ((from, from_image), (to, to_image)) =
            if round % 2 == 0 { (&images[0], &images[1]) } else { (&images[1], &images[0]) };
        let port = free_port();

        // Steward: the swap the updater performs.
        let name = unique_name("downtime-steward");
        let probed = Probed::start(cli, &name, port, from_image);
        let r = engine.replace(&name, to_image).await.expect("replace");
        steward.push(probed.until(to));
        engine.finish(&r).await.expect("finish");
        cli.cli(&["rm", "-f", &name]);

        // Peer: stop, rm, run.
        let name = unique_name("downtime-peer");
        let probed = Probed::start(cli, &name, port, from_image);
        cli.cli(&["stop", &name]);
        cli.cli(&["rm", &name]);
        run(cli, &name, port, to_image);
        peer.push(probed.until(to));
        cli.cli(&["rm", "-f", &name]);

        println!(
            "round {}: {from} -> {to}: steward {:.0} ms, {engine} stop/rm/run {:.0} ms",
            round + 1,
            ms(steward[round]),
            ms(peer[round]),
            engine = cli.name(),
        );
    }
    if cli == BenchEngine::Podman {
        for (_, image) in &images {
            let _ = steward_testkit::podman::cli(&["rmi", image]);
        }
    }
    let (s, p) = (median(steward), median(peer));
    println!("engine {}: median downtime over {ROUNDS} rounds: steward {:.0} ms, peer {:.0} ms, ratio {:.2} (target <= 1.2)", cli.name(), ms(s), ms(p), s.as_secs_f64() / p.as_secs_f64());
}
