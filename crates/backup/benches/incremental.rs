//! Incremental path backups (issue 20) against today's full archives and the peer `restic
//! backup`, in one run, on one S3 server (the test bed's s3s-fs, whose directory gives the
//! bytes each run stored):
//!   data:  DATA_MIB in an app container's volume: half one random file, half distinct text
//!          files of 256 KiB; then 1 % of the files rewritten.
//!   full:  `Backups::take` with `STEWARD_BACKUP_INCREMENTAL=false` (one tar.zst.age per path)
//!   incremental: the same with `true` (chunks), a first and a second backup
//!   restic: `restic backup` of the volume's directory on the host, first and second
//!   restore: `Backups::restore` (paths) of each kind's second backup.
//! Peak RSS of this process per phase (VmRSS sampled every 10 ms): the backup service runs
//! the same code in its own process; restic's, of its process, from GNU time (`time`). Beside
//! it, the peak heap in use (Rust's allocations, counted by the allocator, sampled alike):
//! what the service's structures and buffers hold, without the allocator's and the kernel's
//! share (nor zstd's contexts, which the C library allocates itself).
//!
//! Run: `MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=262144 cargo bench -p steward-backup
//! --bench incremental` (glibc's settings as the image runs the service) after
//! `infra/testbed/up.sh` (`DATA_MIB=4096` for the larger set; restic from Debian: `apt-get install restic`;
//! `RUST_LOG=info` prints the service's log lines, timed, on stderr).

#![allow(clippy::print_stdout, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use steward_backup::config::BackupConfig;
use steward_backup::encryption::Keys;
use steward_backup::Backups;
use steward_engine::Engine;
use steward_events::{BackupReason, RestoreScope};
use steward_store::store::Store;
use steward_testkit::cpu::{cpu_now, cpu_since};
use steward_testkit::docker::docker;
use steward_testkit::{testbed, unique_name};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Bytes under `dir` on disk.
fn disk_bytes(dir: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(dir).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// This process's resident set now, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Every allocation of Rust code in this process counted: the heap in use is what the
/// service's own structures and buffers hold, without what the allocator keeps back or RSS
/// adds beside. C libraries' own allocations (zstd's contexts) are not counted.
#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

fn heap_mib() -> f64 {
    mib(HEAP.allocated() as u64)
}

/// A phase's highest resident set and heap in use, and both when it began, MiB.
#[derive(Default, Clone, Copy)]
struct Peaks {
    rss: f64,
    rss_before: f64,
    heap: f64,
    heap_before: f64,
}

/// The highest resident set and heap in use, sampled every 10 ms while `work` runs (VmHWM
/// cannot be reset everywhere, and a phase's peak is what is compared).
async fn peak_of<T>(work: impl std::future::Future<Output = T>) -> (T, Peaks) {
    let (rss_before, heap_before) = (rss_mib(), heap_mib());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut rss, mut heap) = (rss_mib(), heap_mib());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                (rss, heap) = (rss.max(rss_mib()), heap.max(heap_mib()));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (rss, heap)
        })
    };
    let out = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rss, heap) = sampler.join().unwrap_or_default();
    (out, Peaks { rss, rss_before, heap, heap_before })
}

struct Phase {
    name: String,
    seconds: f64,
    bytes: u64,
    /// This process's peaks (the RSS before: what earlier phases left, as a heap does not
    /// shrink back); restic's phases: its process's peak RSS only, nothing before.
    peaks: Peaks,
    /// CPU seconds of this process and of the engine during the phase.
    cpu: (f64, f64),
}

/// The service's settings as it reads them, for `bucket`.
fn config(bucket: &str, scope: &str, keys: Keys, incremental: bool) -> BackupConfig {
    let signing = steward_store::signing::SigningKey::generate().to_pem();
    let endpoint = testbed::require("STEWARD_TEST_S3_ENDPOINT");
    let incremental = incremental.to_string();
    let mut env = steward_runtime::Env::from_pairs([
        (steward_store::config::ENV_BUCKET, bucket),
        (steward_store::config::ENV_PREFIX, "bench"),
        (steward_store::config::ENV_ENDPOINT, endpoint.as_str()),
        (steward_store::signing::ENV_SIGNING_KEY, signing.as_str()),
        ("STEWARD_SCOPE", scope),
        (steward_backup::config::ENV_INCREMENTAL, incremental.as_str()),
    ]);
    let cfg = BackupConfig::read(&mut env);
    if let Err(e) = env.finish() {
        panic!("settings: {e}");
    }
    BackupConfig { keys, ..cfg }
}

async fn backups(bucket: &str, scope: &str, keys: &Keys, incremental: bool) -> Backups {
    let cfg = config(bucket, scope, keys.clone(), incremental);
    let store = Store::connect_static(
        &cfg.s3,
        &testbed::require("STEWARD_TEST_S3_ACCESS_KEY"),
        &testbed::require("STEWARD_TEST_S3_SECRET_KEY"),
    )
    .await;
    store.create_bucket().await.unwrap_or_else(|e| panic!("bucket {bucket}: {e}"));
    Backups::new(Engine::from_env(), store, cfg)
}

async fn take(name: &str, b: &Backups, dir: &Path) -> (String, Phase) {
    let before = disk_bytes(dir);
    let id = steward_store::manifest::new_backup_id(time::OffsetDateTime::now_utc());
    let (t, c) = (Instant::now(), cpu_now());
    let (taken, peaks) = peak_of(b.take(&id, BackupReason::Manual, &[])).await;
    taken.unwrap_or_else(|e| panic!("{name}: {e}"));
    let seconds = t.elapsed().as_secs_f64();
    let cpu = cpu_since(c);
    let bytes = disk_bytes(dir).saturating_sub(before);
    let phase = Phase { name: name.into(), seconds, bytes, peaks, cpu };
    (id, phase)
}

async fn restore(name: &str, b: &Backups, id: &str) -> Phase {
    let (t, c) = (Instant::now(), cpu_now());
    let (restored, peaks) = peak_of(b.restore(id, RestoreScope::Paths)).await;
    restored.unwrap_or_else(|e| panic!("{name}: {e}"));
    let (seconds, cpu) = (t.elapsed().as_secs_f64(), cpu_since(c));
    Phase { name: name.into(), seconds, bytes: 0, peaks, cpu }
}

/// `restic backup` of `data` into `repo`: the phase, or why it could not run.
fn restic(name: &str, repo: &str, data: &str, dir: &Path, init: bool) -> Result<Phase, String> {
    // Its peak resident set, from GNU time when installed (Debian's `time`).
    let timed = Path::new("/usr/bin/time").exists();
    let run = |args: &[&str]| {
        let mut cmd = match timed {
            true => {
                let mut c = Command::new("/usr/bin/time");
                c.args(["-f", "steward-maxrss-kib=%M", "restic"]);
                c
            }
            false => Command::new("restic"),
        };
        cmd.args(["-r", repo, "--no-cache", "-q"])
            .args(args)
            .env("RESTIC_PASSWORD", "bench")
            .env("AWS_ACCESS_KEY_ID", testbed::require("STEWARD_TEST_S3_ACCESS_KEY"))
            .env("AWS_SECRET_ACCESS_KEY", testbed::require("STEWARD_TEST_S3_SECRET_KEY"))
            .output()
            .map_err(|e| format!("restic: {e} (apt-get install restic)"))
            .and_then(|o| {
                let err = String::from_utf8_lossy(&o.stderr).into_owned();
                match o.status.success() {
                    true => Ok(err
                        .lines()
                        .find_map(|l| l.strip_prefix("steward-maxrss-kib="))
                        .and_then(|k| k.trim().parse::<f64>().ok())
                        .map_or(0.0, |kib| kib / 1024.0)),
                    // GNU time's own code when it could not run restic.
                    false if o.status.code() == Some(127) => {
                        Err(format!("{err} (apt-get install restic)"))
                    }
                    false => Err(err),
                }
            })
    };
    if init {
        run(&["init"])?;
    }
    let before = disk_bytes(dir);
    let t = Instant::now();
    let peak = run(&["backup", data])?;
    Ok(Phase {
        name: name.into(),
        seconds: t.elapsed().as_secs_f64(),
        bytes: disk_bytes(dir).saturating_sub(before),
        peaks: Peaks { rss: peak, ..Peaks::default() },
        cpu: (0.0, 0.0),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // RUST_LOG=info: the service's own log lines, timed, say where a phase's time goes.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let data_mib = common::data_mib();
    let scope = unique_name("bench-cdc");
    let app = format!("{scope}-app");
    let image = format!("{}:v1", testbed::require("STEWARD_TEST_APP_IMAGE"));
    docker(&[
        "run",
        "-d",
        "--name",
        &app,
        "--label",
        &format!("steward.scope={scope}"),
        "--label",
        "steward.backup.paths=/data",
        "-v",
        "/data",
        &image,
    ]);
    let (half, files) = common::shape(data_mib);
    // The image runs the service with these (Dockerfile); without them glibc keeps freed
    // chunk buffers in its heap and the peaks are not the service's.
    let malloc = ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"]
        .map(|v| format!("{v}={}", std::env::var(v).unwrap_or_else(|_| "(unset)".into())));
    println!(
        "== {} cores; {data_mib} MiB: {half} MiB random + {files} text files of 256 KiB; {}",
        num_cpus(),
        malloc.join(" ")
    );
    common::fill(&app, data_mib);
    let source = docker(&["inspect", "-f", "{{range .Mounts}}{{.Source}}{{end}}", &app]);
    let identity = age::x25519::Identity::generate();
    let keys = Keys::new(vec![identity.to_public()], vec![identity]);
    let s3 = testbed::s3_dir();
    let (full_bucket, cdc_bucket, restic_bucket) = (
        format!("{}-full", scope.to_lowercase().replace('_', "-")),
        format!("{}-cdc", scope.to_lowercase().replace('_', "-")),
        format!("{}-restic", scope.to_lowercase().replace('_', "-")),
    );
    let full = backups(&full_bucket, &scope, &keys, false).await;
    let cdc = backups(&cdc_bucket, &scope, &keys, true).await;
    // restic makes its bucket itself; the directory makes it countable at once.
    let _ = std::fs::create_dir_all(s3.join(&restic_bucket));
    let repo =
        format!("s3:{}/{restic_bucket}/restic", testbed::require("STEWARD_TEST_S3_ENDPOINT"));

    let mut phases = vec![];
    let (_, p) = take("full, first", &full, &s3.join(&full_bucket)).await;
    phases.push(p);
    let (_, p) = take("incremental, first", &cdc, &s3.join(&cdc_bucket)).await;
    phases.push(p);
    let restic_first = restic("restic, first", &repo, &source, &s3.join(&restic_bucket), true);

    // 1 % of the files rewritten.
    let changed = (files + 1) / 100;
    common::rewrite(&app, data_mib, changed);
    println!("   changed {changed} of {} files", files + 1);
    let (full_id, p) = take("full, second (1 % changed)", &full, &s3.join(&full_bucket)).await;
    phases.push(p);
    let (cdc_id, p) = take("incremental, second (1 % changed)", &cdc, &s3.join(&cdc_bucket)).await;
    phases.push(p);
    let restic_second = restic_first.and_then(|first| {
        let second = restic(
            "restic, second (1 % changed)",
            &repo,
            &source,
            &s3.join(&restic_bucket),
            false,
        )?;
        Ok((first, second))
    });
    match restic_second {
        Ok((a, b)) => phases.extend([a, b]),
        Err(e) => println!("   restic not measured: {}", e.trim()),
    }
    phases.push(restore("restore full", &full, &full_id).await);
    phases.push(restore("restore incremental", &cdc, &cdc_id).await);

    println!(
        "| phase | time | uploaded | peak RSS (RSS before) | peak heap (heap before) | CPU s: this process / engine |\n|---|---|---|---|---|---|"
    );
    for p in &phases {
        let Peaks { rss, rss_before, heap, heap_before } = p.peaks;
        let (rss, heap, cpu) = match (rss > 0.0, rss_before > 0.0) {
            // restic's own process, whole (GNU time).
            (true, false) => (format!("{rss:.1} MiB (its process)"), "-".into(), "-".into()),
            (true, true) => (
                format!("{rss:.1} MiB ({rss_before:.1})"),
                format!("{heap:.1} MiB ({heap_before:.1})"),
                format!("{:.1} / {:.1}", p.cpu.0, p.cpu.1),
            ),
            (false, _) => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "| {} | {:.1} s | {:.1} MiB | {rss} | {heap} | {cpu} |",
            p.name,
            p.seconds,
            mib(p.bytes)
        );
    }
    let get = |n: &str| phases.iter().find(|p| p.name.starts_with(n));
    if let (Some(f), Some(c)) = (get("full, second"), get("incremental, second")) {
        println!(
            "second backup, incremental vs full: {:.1}x fewer bytes (target >= 20x), {:.1}x less time (target >= 5x)",
            f.bytes as f64 / c.bytes.max(1) as f64,
            f.seconds / c.seconds.max(0.001)
        );
    }
    if let (Some(f), Some(c)) = (get("restore full"), get("restore incremental")) {
        println!(
            "restore, incremental vs full: {:.2}x the time (target <= 1.2x)",
            c.seconds / f.seconds
        );
    }
    docker(&["rm", "-f", "-v", &app]);
    for b in [&full_bucket, &cdc_bucket, &restic_bucket] {
        let _ = std::fs::remove_dir_all(s3.join(b));
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
