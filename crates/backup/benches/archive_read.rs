//! Where an unchanged incremental backup's time goes (issue 20): reading a path's archive
//! from the engine, the incremental bench's data set (benches/common: DATA_MIB, default
//! 1024), four ways in one run, three rounds:
//!   cli:     `docker cp CONTAINER:/data -` into /dev/null (the engine and its own client)
//!   drain:   Steward's reader, `Engine::download_path`, every piece dropped
//!   sha:     the same, every piece hashed with SHA-256 on the reading task (the raw checksum)
//!   sha+cdc: the same, then cut by the backup's cutter (`chunks::cutter`, fastcdc's
//!            `AsyncStreamCDC`) and each chunk hashed again (its id): an unchanged second
//!            backup without S3.
//! Each way prints its wall time and the CPU seconds of this process and of the engine.
//!
//! Run: `cargo bench -p steward-backup --bench archive_read` after `infra/testbed/up.sh`.

#![allow(clippy::print_stdout, missing_docs)]

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use futures::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use steward_backup::chunks::cutter;
use steward_engine::Engine;
use steward_testkit::cpu::{cpu_now, cpu_since};
use steward_testkit::docker::docker;
use steward_testkit::{testbed, unique_name};

const ROUNDS: usize = 3;

/// Times `work`: wall seconds, CPU seconds of this process and of the engine.
async fn timed<T>(work: impl std::future::Future<Output = T>) -> (T, f64, (f64, f64)) {
    let (t, c) = (Instant::now(), cpu_now());
    let out = work.await;
    (out, t.elapsed().as_secs_f64(), cpu_since(c))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let data_mib = common::data_mib();
    let name = unique_name("bench-archive");
    let image = format!("{}:v1", testbed::require("STEWARD_TEST_APP_IMAGE"));
    docker(&["run", "-d", "--name", &name, "--no-healthcheck", "-v", "/data", &image]);
    let (half, files) = common::shape(data_mib);
    common::fill(&name, data_mib);
    println!("== {data_mib} MiB: {half} MiB random + {files} text files of 256 KiB");
    let engine = Engine::from_env();
    println!("| round | way | seconds | bytes | pieces | CPU s: this process / engine |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=ROUNDS {
        let (bytes, seconds, cpu) = timed(async {
            let source = format!("{name}:/data");
            let out = Command::new("docker")
                .args(["cp", &source, "-"])
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    let mut stdout = child.stdout.take().expect("piped");
                    let n = std::io::copy(&mut stdout, &mut std::io::sink())?;
                    child.wait().map(|status| (n, status))
                });
            match out {
                Ok((n, status)) if status.success() => n,
                other => panic!("docker cp: {other:?}"),
            }
        })
        .await;
        println!("| {round} | cli | {seconds:.2} | {bytes} | - | {:.2} / {:.2} |", cpu.0, cpu.1);

        let ((bytes, pieces), seconds, cpu) = timed(async {
            let mut tar = engine.download_path(&name, "/data");
            let (mut bytes, mut pieces) = (0u64, 0u64);
            while let Some(piece) = tar.try_next().await.expect("archive") {
                bytes += piece.len() as u64;
                pieces += 1;
            }
            (bytes, pieces)
        })
        .await;
        println!(
            "| {round} | drain | {seconds:.2} | {bytes} | {pieces} | {:.2} / {:.2} |",
            cpu.0, cpu.1
        );

        let ((bytes, _), seconds, cpu) = timed(async {
            let mut tar = engine.download_path(&name, "/data");
            let (mut bytes, mut hash) = (0u64, Sha256::new());
            while let Some(piece) = tar.try_next().await.expect("archive") {
                bytes += piece.len() as u64;
                hash.update(&piece);
            }
            (bytes, hash.finalize())
        })
        .await;
        println!("| {round} | sha | {seconds:.2} | {bytes} | - | {:.2} / {:.2} |", cpu.0, cpu.1);

        let ((bytes, chunks), seconds, cpu) = timed(async {
            let hash = std::sync::Arc::new(std::sync::Mutex::new((0u64, Sha256::new())));
            let hashing = hash.clone();
            let tar = engine.download_path(&name, "/data").inspect_ok(move |piece| {
                let mut h = hashing.lock().expect("not poisoned");
                h.0 += piece.len() as u64;
                h.1.update(piece);
            });
            let reader = tokio_util::io::StreamReader::new(tar);
            let mut cdc = cutter(reader, 0x5eed);
            let chunks = cdc
                .as_stream()
                .map_ok(|chunk| Sha256::digest(&chunk.data))
                .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                .await
                .expect("chunks");
            let bytes = hash.lock().expect("not poisoned").0;
            (bytes, chunks)
        })
        .await;
        println!(
            "| {round} | sha+cdc | {seconds:.2} | {bytes} | {chunks} chunks | {:.2} / {:.2} |",
            cpu.0, cpu.1
        );
    }
    docker(&["rm", "-f", "-v", &name]);
}
