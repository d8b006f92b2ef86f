//! The RPO of WAL shipping (issue 20): from a commit to the signed record of the segment that
//! holds it in the bucket, with the real `steward-backup` process of this build (release, as
//! `cargo bench` builds it) at its default `STEWARD_PITR_MAX_LAG` (60 s: the shipper looks
//! every 6 s and asks `pg_switch_wal()` once WAL has waited 30 s), against a PostgreSQL
//! container of the test bed's image and the test bed's S3 (s3s-fs on 127.0.0.1). One commit
//! at a time on an otherwise quiet server, the worst case for the lag (a busy server fills
//! its segments sooner); the commits are spread over the shipper's tick.
//!
//! Run: `cargo bench -p steward-backup --bench pitr_rpo` after `infra/testbed/up.sh`
//! (`COMMITS=N`, default 6; `STEWARD_PITR_MAX_LAG=…` to measure another bound).

#![allow(clippy::print_stdout, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::service::{receiving, Service};
use common::Stack;
use steward_backup::encryption::Keys;
use steward_testkit::TestBus;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let commits: u32 = std::env::var("COMMITS").ok().and_then(|n| n.parse().ok()).unwrap_or(6);
    let lag = std::env::var("STEWARD_PITR_MAX_LAG").unwrap_or_else(|_| "60s".into());
    let stack = Stack::start_pitr("pitr-rpo", Keys::default()).await;
    let bus = TestBus::new("pitrrpo").await;
    let service = Service::start_with(&stack, &bus, "", &[("STEWARD_PITR_MAX_LAG", lag.as_str())]);
    receiving(&stack, &service).await;
    stack.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");
    let mut lags = vec![];
    for i in 1..=commits {
        // Spread over a 6 s tick: 0, 1.3, 2.6, … s after the previous commit was shipped.
        tokio::time::sleep(Duration::from_millis(u64::from(i - 1) * 1300 % 6000)).await;
        let file = stack.psql(&format!(
            "INSERT INTO ticks VALUES ({i}, clock_timestamp()) RETURNING pg_walfile_name(pg_current_wal_insert_lsn())"
        ));
        let file = file.lines().next().unwrap_or_default().to_owned();
        let committed = Instant::now();
        loop {
            if stack.backups.wal_record(&stack.db.name, &file).await.ok().flatten().is_some() {
                break;
            }
            assert!(
                committed.elapsed() < Duration::from_secs(600),
                "{file} not shipped in 10 minutes:\n{}",
                service.tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = committed.elapsed();
        println!("commit {i}: {file} in the bucket after {:.1} s", took.as_secs_f64());
        lags.push(took);
    }
    let worst = lags.iter().max().copied().unwrap_or_default();
    let mean = lags.iter().sum::<Duration>() / commits.max(1);
    println!(
        "RPO at STEWARD_PITR_MAX_LAG={lag}: worst {:.1} s, mean {:.1} s over {commits} commits",
        worst.as_secs_f64(),
        mean.as_secs_f64()
    );
    drop(service);
    stack.destroy_bucket().await;
}
