//! Checking 200 tags in the local registry: Steward's full check (list and inspect the
//! containers, read their repo digests, HEAD every manifest, read and write every watch
//! record) against the peer, a loop of `skopeo inspect` over the same 200 references.
//!
//! Run: `cargo bench -p steward-watcher --bench check` after `infra/testbed/up.sh`.
//! `STEWARD_BENCH_TAGS` changes the count (default 200); `STEWARD_BENCH_ENGINE=podman` runs
//! the containers on the test bed's Podman service (the image pulled from the test bed's
//! registry) and points the check at it.

#![allow(clippy::print_stdout, missing_docs)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use steward_testkit::docker::{push_app, registry};
use steward_testkit::{unique_name, BenchEngine, TestBus};
use steward_watcher::check::Checker;
use steward_watcher::registry::{Registries, RegistryConfig};

const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Containers removed at once in the clean-up.
const REMOVE_AT_ONCE: usize = 4;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize =
        std::env::var("STEWARD_BENCH_TAGS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let reg = registry();
    let cli = BenchEngine::from_env();
    // STEWARD_BENCH_KEEP=NAME keeps (or reuses) the set-up under that name between runs.
    let keep = std::env::var("STEWARD_BENCH_KEEP").ok();
    let repo = keep
        .as_ref()
        .map_or_else(|| unique_name("steward-bench/check"), |k| format!("steward-bench/{k}"));
    let scope = keep.clone().unwrap_or_else(|| unique_name("bench"));
    let reuse = keep.is_some()
        && cli
            .cli(&["ps", "-q", "--filter", &format!("label=steward.scope={scope}")])
            .lines()
            .count()
            == n;

    let first = format!("{reg}/{repo}:t0");
    if !reuse {
        set_up(cli, n, &reg, &repo, &scope, &first).await;
    }

    let bus = TestBus::new("benchcheck").await;
    let checker = Checker {
        bus: bus.bus.clone(),
        engine: cli.podman_host().map_or_else(steward_engine::Engine::from_env, |h| {
            steward_engine::Engine::new(h, Duration::from_secs(60))
        }),
        registries: Arc::new(
            Registries::new(RegistryConfig {
                timeout: Duration::from_secs(10),
                max_wait: Duration::from_secs(10),
                insecure: vec![],
            })
            .expect("registries"),
        ),
        records: Checker::records(&bus).await.expect("records"),
        concurrency: 8,
        outcomes: Family::default(),
        source: "bench".into(),
        scope: Some(scope.clone()),
    };
    let mut rounds = vec![];
    for round in 1..=5 {
        let started = Instant::now();
        let summary = checker.run(None, None).await.expect("check");
        let took = started.elapsed();
        assert_eq!(summary.checked, n);
        assert!(summary.failed.is_empty() && summary.skipped.is_empty(), "{summary:?}");
        println!(
            "steward full check, round {round}: {n} containers/tags in {:.3} s",
            took.as_secs_f64()
        );
        rounds.push(took);
    }
    rounds.sort();
    let median = rounds[rounds.len() / 2];

    let started = Instant::now();
    for i in 0..n {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", &format!("docker://{reg}/{repo}:t{i}")])
            .output()
            .expect("skopeo");
        assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    }
    let peer = started.elapsed();
    println!("peer: loop of skopeo inspect over {n} tags in {:.3} s", peer.as_secs_f64());
    println!(
        "result: steward median {:.3} s vs skopeo {:.3} s = {:.1}x faster",
        median.as_secs_f64(),
        peer.as_secs_f64(),
        peer.as_secs_f64() / median.as_secs_f64()
    );

    // Breakdown: the engine's side and the registry side alone.
    let engine = checker.engine.clone();
    let started = Instant::now();
    let containers = engine
        .running_containers(|l| l.get("steward.scope").map(String::as_str) == Some(scope.as_str()))
        .await
        .expect("list");
    println!(
        "  of which: list + inspect {} containers {:.3} s",
        containers.len(),
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let refs: Vec<steward_imageref::ImageRef> =
        (0..n).map(|i| format!("{reg}/{repo}:t{i}").parse().expect("reference")).collect();
    let heads =
        futures::future::join_all(refs.iter().map(|r| checker.registries.manifest_digest(r))).await;
    assert!(heads.iter().all(Result::is_ok));
    println!("  of which: {n} manifest HEADs {:.3} s", started.elapsed().as_secs_f64());

    // The floor: the registry answering the same 200 manifest HEADs alone, at the check's
    // concurrency (8), from curl: no Docker, no KV, no Steward. Five rounds, the median.
    let floor = curl_floor(n, &reg, &repo, 8);
    println!(
        "floor: curl --parallel-max 8, {n} manifest HEADs, median {:.3} s; steward / floor = {:.2} (target <= 1.3); skopeo / steward = {:.1}x (target >= 15x)",
        floor.as_secs_f64(),
        median.as_secs_f64() / floor.as_secs_f64(),
        peer.as_secs_f64() / median.as_secs_f64()
    );

    if keep.is_some() {
        return;
    }
    let ids = cli.cli(&["ps", "-aq", "--filter", &format!("label=steward.scope={scope}")]);
    let ids: Vec<&str> = ids.lines().collect();
    // At most 4 removals at once: `docker rm` runs its arguments in parallel, and 200 at once
    // deadlocked dockerd 20.10 in libnetwork.
    for batch in ids.chunks(REMOVE_AT_ONCE) {
        let mut rm = vec!["rm", "-f"];
        rm.extend(batch);
        cli.cli(&rm);
    }
    for i in 0..n {
        let image = format!("{reg}/{repo}:t{i}");
        let rmi = ["rmi", "--no-prune", &image];
        match cli {
            BenchEngine::Docker => {
                let _ = Command::new("docker").args(rmi).output();
            }
            BenchEngine::Podman => {
                let _ = steward_testkit::podman::cli(&rmi);
            }
        }
    }
    if cli == BenchEngine::Podman {
        // The name Docker pushed it under.
        let _ = Command::new("docker").args(["rmi", "--no-prune", &first]).output();
    }
}

/// The median of five rounds of `curl --parallel` sending the `n` manifest `HEAD`s.
fn curl_floor(n: usize, reg: &str, repo: &str, parallel: usize) -> Duration {
    let config = std::env::temp_dir().join(unique_name("curl-floor"));
    let mut text = format!("head\nsilent\nfail\nheader = \"Accept: {MANIFEST}\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "url = \"http://{reg}/v2/{repo}/manifests/t{i}\"\noutput = \"/dev/null\"\n"
        ));
    }
    std::fs::write(&config, text).expect("curl config");
    let mut rounds = vec![];
    for _ in 0..5 {
        let started = Instant::now();
        let out = Command::new("curl")
            .args(["--parallel", "--parallel-max", &parallel.to_string(), "--config"])
            .arg(&config)
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        rounds.push(started.elapsed());
    }
    let _ = std::fs::remove_file(&config);
    rounds.sort();
    rounds[rounds.len() / 2]
}

/// One image, n tags (pushed once, then the same manifest PUT under every tag), and n
/// containers, one per tag.
async fn set_up(cli: BenchEngine, n: usize, reg: &str, repo: &str, scope: &str, first: &str) {
    push_app("v1", first);
    if cli == BenchEngine::Podman {
        cli.cli(&["pull", "-q", first]);
    }
    let http = reqwest::Client::new();
    let manifest = http
        .get(format!("http://{reg}/v2/{repo}/manifests/t0"))
        .header("accept", MANIFEST)
        .send()
        .await
        .expect("get manifest")
        .bytes()
        .await
        .expect("manifest body");
    for i in 1..n {
        let put = http
            .put(format!("http://{reg}/v2/{repo}/manifests/t{i}"))
            .header("content-type", MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .expect("put manifest");
        assert!(put.status().is_success(), "PUT t{i}: {}", put.status());
    }
    let started = Instant::now();
    let scope_label = format!("steward.scope={scope}");
    for i in 0..n {
        let image = format!("{reg}/{repo}:t{i}");
        if i > 0 {
            cli.cli(&["tag", first, &image]);
        }
        // No healthcheck: 200 of them every second would load the engine and skew every number.
        cli.cli(&[
            "run",
            "-d",
            "--no-healthcheck",
            "--name",
            &format!("{scope}-{i}"),
            "--label",
            "steward.enable=true",
            "--label",
            &scope_label,
            &image,
            "sleep",
            "3600",
        ]);
    }
    println!(
        "set-up: {n} tags pushed, {n} containers started on {} in {:.0} s",
        cli.name(),
        started.elapsed().as_secs_f64()
    );
}
