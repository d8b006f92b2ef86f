//! Downtime of replacing the stand-in web app (v1 <-> v2), measured by a prober that sends
//! `GET /` to its published port every 20 ms: Steward's `Engine::replace` (what the updater
//! runs; the pull before and the health gate after add nothing to the outage) against the
//! peer, a plain `docker stop; docker rm; docker run` of the same change (what Watchtower does).
//!
//! Run: `cargo bench -p steward-engine --bench downtime` after `infra/testbed/up.sh`.

#![allow(clippy::print_stdout, missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_engine::Engine;
use steward_testkit::docker::docker;
use steward_testkit::{free_port, http_get, unique_name, wait_for};

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

/// `docker run` of the stand-in app `version` as `name`, published on `port`.
fn run(name: &str, port: u16, version: &str) {
    let publish = format!("127.0.0.1:{port}:8080");
    let image = format!("steward-test/app:{version}");
    docker(&[
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
        &image,
    ]);
}

/// An app serving on `port` with the prober watching it.
struct Probed {
    port: u16,
    stop: Arc<AtomicBool>,
    probe: std::thread::JoinHandle<Duration>,
}

impl Probed {
    /// Runs `version` as `name`, waits until it serves, starts probing.
    fn start(name: &str, port: u16, version: &str) -> Self {
        run(name, port, version);
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
    let engine = Engine::from_env();
    let (mut steward, mut peer) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let (from, to) = if round % 2 == 0 { ("v1", "v2") } else { ("v2", "v1") };
        let port = free_port();

        // Steward: the swap the updater performs.
        let name = unique_name("downtime-steward");
        let probed = Probed::start(&name, port, from);
        let r = engine.replace(&name, &format!("steward-test/app:{to}")).await.expect("replace");
        steward.push(probed.until(to));
        engine.finish(&r).await.expect("finish");
        docker(&["rm", "-f", &name]);

        // Peer: stop, rm, run.
        let name = unique_name("downtime-peer");
        let probed = Probed::start(&name, port, from);
        docker(&["stop", &name]);
        docker(&["rm", &name]);
        run(&name, port, to);
        peer.push(probed.until(to));
        docker(&["rm", "-f", &name]);

        println!(
            "round {}: {from} -> {to}: steward {:.0} ms, docker stop/rm/run {:.0} ms",
            round + 1,
            ms(steward[round]),
            ms(peer[round])
        );
    }
    let (s, p) = (median(steward), median(peer));
    println!("median downtime over {ROUNDS} rounds: steward {:.0} ms, peer {:.0} ms, ratio {:.2} (target <= 1.2)", ms(s), ms(p), s.as_secs_f64() / p.as_secs_f64());
}
