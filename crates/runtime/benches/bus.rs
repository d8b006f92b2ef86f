//! Bus benchmarks on loopback JetStream (the test bed's nats-server):
//!
//! - `latency`: publish (with stream ack) -> handler invoked by the service consume loop
//!   (decode, idempotency check, handler, marker, confirmed ack), one event at a time,
//!   p50/p99 over `STEWARD_BENCH_EVENTS` (default 10,000);
//! - `replay`: stored events read back and decoded by `Bus::replay`, events/s over
//!   `STEWARD_BENCH_REPLAY_EVENTS` (default 100,000).
//!
//! Run: `cargo bench -p steward-runtime --bench bus` (after `infra/testbed/up.sh`), or
//! `benches/foundation.sh`, which also measures idle RSS and the peer.

#![allow(clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use steward_bus::ReplayQuery;
use steward_events::{samples, Event, Service, WatchRequested};
use steward_runtime::{Context, Env, Handler, HandlerError, Runtime, RuntimeConfig};
use steward_testkit::{free_port, TestBus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Timestamp(mpsc::UnboundedSender<(uuid::Uuid, Instant)>);

impl Handler for Timestamp {
    async fn handle(&self, _ctx: &Context, event: Event) -> Result<(), HandlerError> {
        let _ = self.0.send((event.id, Instant::now()));
        Ok(())
    }
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn latency(n: usize) {
    let bus = TestBus::new("benchlat").await;
    let mut env = Env::from_pairs(Vec::<(String, String)>::new());
    let mut cfg = RuntimeConfig::read(Service::Watcher, &mut env);
    cfg.bus = bus.config().clone();
    cfg.http_addr = ([127, 0, 0, 1], free_port()).into();
    cfg.uses_docker = false;
    let shutdown = CancellationToken::new();
    let runtime = Runtime::start_with_shutdown(cfg, shutdown.clone()).await.expect("runtime");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(runtime.run(Timestamp(tx)));

    let warmup = 200;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + warmup {
        let event = Event::new("bench", WatchRequested::default());
        let sent = Instant::now();
        bus.publish(&event).await.expect("publish");
        let (id, handled) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("handled within 10 s")
            .expect("channel open");
        assert_eq!(id, event.id);
        if i >= warmup {
            samples.push(handled - sent);
        }
        // Let the loop settle this event (marker + confirmed ack) before the next publish, as
        // the peer does; this pause is outside the timed window.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "latency publish->handled over {n} events: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms",
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
    );
    shutdown.cancel();
    let _ = task.await;
}

/// The bare bus: publish -> `Inbox::next` -> confirmed ack, no runtime loop around it.
async fn inbox(n: usize) {
    let bus = TestBus::new("benchinbox").await;
    // A connection of its own, as a service has.
    let other =
        steward_bus::Bus::connect(bus.config().clone(), "bench-inbox").await.expect("connect");
    let spec = steward_bus::ConsumerSpec::new("bench", &["watch.requested"]);
    bus.ensure_consumer(&spec).await.expect("provision the consumer, as setup does");
    let mut inbox = other.inbox(spec).await.expect("inbox");
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let event = Event::new("bench", WatchRequested::default());
        let sent = Instant::now();
        bus.publish(&event).await.expect("publish");
        let published = sent.elapsed();
        let d = inbox.next().await;
        samples.push((published, sent.elapsed()));
        d.ack().await.expect("ack");
    }
    let mut publish: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    let mut total: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    publish.sort();
    total.sort();
    println!(
        "bare inbox over {n} events: publish+ack p50 {:.3} ms; publish->delivered p50 {:.3} ms, p99 {:.3} ms",
        percentile(&publish, 0.5).as_secs_f64() * 1e3,
        percentile(&total, 0.5).as_secs_f64() * 1e3,
        percentile(&total, 0.99).as_secs_f64() * 1e3,
    );
}

async fn replay(n: usize) {
    let bus = TestBus::new("benchreplay").await;
    let kinds = samples::all("gitea");
    let started = Instant::now();
    // Publish concurrently (bounded in flight) to fill the stream quickly.
    let mut i = 0;
    while i < n {
        let batch: Vec<Event> = (i..(i + 500).min(n))
            .map(|k| Event::new("bench", kinds[k % kinds.len()].clone()))
            .collect();
        let sends = batch.iter().map(|e| bus.publish(e));
        for r in futures::future::join_all(sends).await {
            r.expect("publish");
        }
        i += batch.len();
    }
    println!("filled the stream with {n} events in {:.1} s", started.elapsed().as_secs_f64());

    for round in 1..=3 {
        let started = Instant::now();
        let mut replay = bus.replay(ReplayQuery::default()).await.expect("replay");
        let mut read = 0usize;
        while let Some(item) = replay.next().await {
            let item = item.expect("item");
            assert!(item.event.is_ok());
            read += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(read, n);
        println!(
            "replay round {round}: {read} events decoded in {:.3} s = {:.0} events/s",
            secs,
            read as f64 / secs
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if which.as_deref().is_none_or(|w| w == "latency") {
        latency(count("STEWARD_BENCH_EVENTS", 10_000)).await;
    }
    if which.as_deref().is_none_or(|w| w == "inbox") {
        inbox(count("STEWARD_BENCH_EVENTS", 10_000)).await;
    }
    if which.as_deref().is_none_or(|w| w == "replay") {
        replay(count("STEWARD_BENCH_REPLAY_EVENTS", 100_000)).await;
    }
}
