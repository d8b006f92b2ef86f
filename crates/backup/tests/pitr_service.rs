//! Point-in-time recovery through the real `steward-backup` process: WAL shipping that goes on
//! across kills of the service (SIGKILL mid-shipping, then aborted twice in a row at the
//! shipping's kill points), restarts and kills of PostgreSQL and a restart of NATS, while rows
//! are written; a restore to a time requested on the bus as `steward restore --to-time` does;
//! and a gap made behind the service's back, reported critical and followed by a new base
//! backup, a restore into it refused with nothing changed. Real PostgreSQL, Docker, S3 (the
//! test bed's), and a NATS server of the test's own where it is restarted.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::service::{caught_up, receiving, try_psql, until, Service};
use common::{row_ids, rows_before, segment_number, shipped_files, Stack, DB_USER};
use steward_backup::encryption::Keys;
use steward_events::{Event, EventData, RestoreRequested, RestoreScope};
use steward_testkit::docker::docker;
use steward_testkit::{stored_events, NatsServer, TestBus};

async fn database_back(stack: &Stack) {
    until("PostgreSQL back", Duration::from_secs(60), &String::new, || async move {
        try_psql(stack, "SELECT 1").as_deref() == Some("1")
    })
    .await;
}

/// Rows committed one at a time into `rows` (each with its commit's time) until stopped, through
/// whatever happens to the server (a failed insert is tried again later); how many failed.
struct Writer {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(stack: &Stack) -> Self {
        stack.psql("CREATE TABLE rows (id serial PRIMARY KEY, at timestamptz NOT NULL)");
        let (stop, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        let db = stack.db.name.clone();
        let (stop_, failed_) = (stop.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: 20 minutes of rows at most.
            for _ in 0..12_000 {
                if stop_.load(Ordering::SeqCst) {
                    return;
                }
                let sql = "INSERT INTO rows (at) VALUES (clock_timestamp())";
                let ok = Command::new("docker")
                    .args(["exec", &db, "psql", "-U", DB_USER, "-d", DB_USER, "-tAc", sql])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !ok {
                    failed_.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, failed, thread: Some(thread) }
    }

    fn stop(&mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.failed.load(Ordering::SeqCst)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first stored event `pick` takes, waited for up to `bound`.
async fn first_event<T>(
    bus: &steward_bus::Bus,
    bound: Duration,
    context: &dyn Fn() -> String,
    pick: impl Fn(&Event) -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = stored_events(bus).await.iter().find_map(&pick) {
            return found;
        }
        assert!(started.elapsed() < bound, "no such event within {bound:?}:\n{}", context());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A restore of backup `id`'s database to `to_time` requested as `steward restore ID
/// --to-time T` does; its outcome.
async fn restore_to(bus: &steward_bus::Bus, id: &str, to_time: &str) -> Event {
    let request = Event::new(
        "steward-cli/test",
        RestoreRequested {
            backup_id: id.to_owned(),
            scope: RestoreScope::Db,
            requested_by: Some("tester".into()),
            allow_unsigned: false,
            no_safety_backup: false,
            from: None,
            to_time: Some(to_time.to_owned()),
        },
    );
    bus.publish(&request).await.unwrap_or_else(|e| panic!("publish: {e}"));
    let terminal = ["restore.done", "restore.failed"];
    first_event(bus, Duration::from_secs(300), &String::new, |e| {
        (e.correlation_id == request.correlation_id && terminal.contains(&e.event_type()))
            .then(|| e.clone())
    })
    .await
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|e| panic!("{e}"))
}

/// Every segment from the first shipped to the last, once each.
async fn no_gap(stack: &Stack) -> Vec<String> {
    let files = shipped_files(stack).await;
    let numbers: Vec<u64> = files.iter().filter_map(|f| segment_number(f)).collect();
    assert!(numbers.len() >= 5, "{files:?}");
    for pair in numbers.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap in {files:?}");
    }
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_shipping_survives_kills_and_restarts_and_a_restore_to_time_brings_back_exactly_the_rows_before_a_drop(
) {
    let stack = Stack::start_pitr("pitr-kill", Keys::default()).await;
    let mut nats = NatsServer::start();
    let bus = TestBus::with_config(steward_testkit::bus_config(&nats.url(), "pitrkill")).await;
    stack.fill_db(2_000);
    let items_before = stack.db_fingerprint();

    // The first service makes the slot; the base is taken after it, so its WAL is kept.
    let mut service = Service::start(&stack, &bus, "");
    receiving(&stack, &service).await;
    let (id, _) = stack.back_up().await;
    let mut writer = Writer::start(&stack);

    // SIGKILL mid-shipping: right after a segment's record is signed.
    {
        let first = &service;
        until("a segment signed", Duration::from_secs(60), &|| first.tail(), || async move {
            first.logs().contains("failpoint: wal:signed")
        })
        .await;
    }
    service.kill();
    // Killed twice in a row at the shipping's own points: after the signature, before the
    // record; then after the record, before the file leaves the spool.
    for point in ["wal:signed", "wal:stored"] {
        let mut killed = Service::start(&stack, &bus, point);
        assert!(killed.exits_within(Duration::from_secs(60)).await, "{point}: {}", killed.tail());
        assert!(
            killed.logs().contains(&format!("failpoint: {point}: aborting")),
            "{}",
            killed.tail()
        );
    }
    service = Service::start(&stack, &bus, "");
    caught_up(&stack, &service, "after three kills of the service").await;

    // PostgreSQL restarted, then killed, mid-stream: its receiver goes with it.
    docker(&["restart", &stack.db.name]);
    database_back(&stack).await;
    caught_up(&stack, &service, "after a restart of PostgreSQL").await;
    docker(&["kill", &stack.db.name]);
    docker(&["start", &stack.db.name]);
    database_back(&stack).await;
    caught_up(&stack, &service, "after a kill of PostgreSQL").await;

    // NATS gone: shipping needs none of it, and goes on; then back.
    nats.kill();
    caught_up(&stack, &service, "while NATS is down").await;
    nats.start_again();
    caught_up(&stack, &service, "after NATS came back").await;
    assert!(service.running(), "the service died with NATS: {}", service.tail());

    // At T the table is dropped; rows go on being written after it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dropped_at = stack.psql("SELECT clock_timestamp()");
    stack.psql("DROP TABLE items");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed = writer.stop();
    caught_up(&stack, &service, "at the end").await;
    let files = no_gap(&stack).await;
    let (target, before) = rows_before(&stack, &dropped_at);
    let written: usize = stack.psql("SELECT count(*) FROM rows").parse().unwrap_or_default();
    eprintln!(
        "{written} rows written ({failed} inserts failed while PostgreSQL was down), {} before {target}; {} segments shipped",
        before.len(),
        files.len()
    );
    assert!(before.len() > 50 && before.len() < written, "{} of {written}", before.len());

    // The restore, requested on the bus as the CLI does (after NATS's restart).
    let done = restore_to(&bus, &id, &rfc3339(target)).await;
    let EventData::RestoreDone(done) = done.data else {
        panic!("restore failed: {:?}\n{}", done.data, service.tail())
    };
    assert_eq!(done.restored, vec![format!("postgres-base/{}", stack.db.name)]);
    assert!(done.safety_backup_id.is_some());
    assert_eq!(row_ids(&stack), before, "exactly the rows committed before {target}");
    assert_eq!(stack.db_fingerprint(), items_before, "the dropped table is back");
    // No gap was ever reported.
    let failures: Vec<Event> = stored_events(&bus)
        .await
        .into_iter()
        .filter(|e| e.event_type() == "backup.failed")
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    drop(service);
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_behind_the_services_back_is_reported_critical_a_new_base_follows_and_a_restore_into_it_is_refused(
) {
    let stack = Stack::start_pitr("pitr-hole", Keys::default()).await;
    let bus = TestBus::new("pitrhole").await;
    // The least WAL a lost receiver may make the server keep, so the second gap is quick.
    let service = Service::start_with(&stack, &bus, "", &[("STEWARD_PITR_SLOT_KEEP_MB", "64")]);
    receiving(&stack, &service).await;
    let (id, _) = stack.back_up().await;
    stack.psql("CREATE TABLE a AS SELECT generate_series(1, 1000) AS id");
    stack.psql("SELECT pg_switch_wal()");
    caught_up(&stack, &service, "before the gap").await;
    // Fully verified (base and WAL replayed), so retention keeps it beside the base taken the
    // same day after the gap (the newest proven backup is always kept).
    let verified = stack.backups.verify(&id).await.unwrap_or_else(|e| panic!("verify: {e}"));
    assert!(verified.database_restored);

    // Behind the service's back (stopped meanwhile, so it cannot make a slot in between): the
    // slot dropped, WAL written and recycled that nobody receives.
    service.signal("-STOP");
    let slot = steward_backup::wal::slot_name(&stack.db.name);
    let mut dropped = false;
    for _ in 0..20 {
        let _ = try_psql(&stack, &format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"));
        if try_psql(&stack, &format!("SELECT pg_drop_replication_slot('{slot}')")).is_some() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dropped, "could not drop the slot");
    let mut in_gap = String::new();
    for i in 0..3 {
        stack.psql(&format!("CREATE TABLE lost{i} AS SELECT generate_series(1, 1000) AS id"));
        if i == 0 {
            in_gap = stack.psql(
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            );
        }
        stack.psql("SELECT pg_switch_wal()");
    }
    stack.psql("CHECKPOINT");
    let gap_made = time::OffsetDateTime::now_utc();
    // A file the server cannot read in its data directory: the first base backup after the
    // gap fails (and is said); it is tried again later.
    let blocker = "\"$PGDATA\"/steward-test-unreadable";
    docker(&[
        "exec",
        "-u",
        "root",
        &stack.db.name,
        "sh",
        "-c",
        &format!(": > {blocker} && chmod 000 {blocker}"),
    ]);
    service.signal("-CONT");

    // A critical failure naming the gap, in a flow of its own; then a new base backup.
    let context = || service.tail();
    let (failed_id, failed) =
        first_event(&bus, Duration::from_secs(60), &context, |e| match &e.data {
            EventData::BackupFailed(f) => Some((e.id, f.clone())),
            _ => None,
        })
        .await;
    let prefix = format!("WAL of {}:", stack.db.name);
    assert!(failed.reason.starts_with(&prefix), "{}", failed.reason);
    assert!(failed.reason.contains("was never shipped"), "{}", failed.reason);
    assert!(failed.reason.contains("a new base backup is being taken"), "{}", failed.reason);
    assert_eq!(failed.backup_id, None);
    let base_failed = first_event(&bus, Duration::from_secs(240), &context, |e| match &e.data {
        EventData::BackupFailed(f) if f.backup_id.is_some() => Some(f.clone()),
        _ => None,
    })
    .await;
    let tail = base_failed.stderr_tail.join("\n");
    assert!(base_failed.reason.contains("pg_basebackup"), "{}", base_failed.reason);
    assert!(tail.contains("steward-test-unreadable"), "{tail}");
    docker(&["exec", "-u", "root", &stack.db.name, "sh", "-c", &format!("rm -f {blocker}")]);
    let done = first_event(&bus, Duration::from_secs(240), &context, |e| match &e.data {
        EventData::BackupDone(d) if e.id != failed_id => Some(d.clone()),
        _ => None,
    })
    .await;
    assert_ne!(done.backup_id, id);
    let base = format!("postgres-base/{}", stack.db.name);
    assert!(done.components.iter().any(|c| c.name == base), "{:?}", done.components);
    let manifest = stack
        .backups
        .resolve(&done.backup_id)
        .await
        .unwrap_or_else(|e| panic!("{e}: \n{}", service.tail()));
    assert!(manifest.taken_at > gap_made, "the new base predates the gap");

    // A restore of the old base to a time inside the gap: refused, saying so, nothing changed.
    let fingerprint = stack.db_fingerprint_tables();
    let refused = restore_to(&bus, &id, &in_gap).await;
    let EventData::RestoreFailed(refused) = refused.data else {
        panic!("restored into a gap: {:?}", refused.data)
    };
    eprintln!("refused: {}", refused.reason);
    assert!(
        refused.reason.contains("has a gap") && refused.reason.contains("nothing was changed"),
        "{}",
        refused.reason
    );
    assert_eq!(stack.db_fingerprint_tables(), fingerprint);
    for table in ["a", "lost0", "lost2"] {
        assert_eq!(stack.psql(&format!("SELECT count(*) FROM {table}")), "1000");
    }
    let scratch =
        docker(&["ps", "-aq", "--filter", &format!("name=steward-pitr-{}", stack.db.name)]);
    assert_eq!(scratch, "", "the scratch server was left behind");

    // The slot lost instead: its receiver gone with the service away, more WAL written than
    // the slot may keep (64 MiB). One alarm and one base backup for it, not two.
    caught_up(&stack, &service, "after the first gap").await;
    service.signal("-STOP");
    let active =
        format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active");
    for _ in 0..50 {
        let _ = try_psql(&stack, &format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"));
        if try_psql(&stack, &active).as_deref() == Some("0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1500000) g",
    );
    let status = format!("SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let mut lost = false;
    for _ in 0..10 {
        stack.psql("SELECT pg_switch_wal()");
        stack.psql("CHECKPOINT");
        if stack.psql(&status) == "lost" {
            lost = true;
            break;
        }
    }
    assert!(lost, "the slot is {}", stack.psql(&status));
    // The table only made WAL: gone, the dump and the base backup that follow stay small (a
    // loaded machine took over two minutes over them with it).
    stack.psql("DROP TABLE big");
    stack.psql("CHECKPOINT");
    service.signal("-CONT");
    let lost_failure = |e: &Event| match &e.data {
        EventData::BackupFailed(f) if f.reason.contains("lost WAL") => Some((e.id, f.clone())),
        _ => None,
    };
    let (second_id, second) =
        first_event(&bus, Duration::from_secs(60), &context, lost_failure).await;
    assert!(second.reason.starts_with(&prefix), "{}", second.reason);
    first_event(&bus, Duration::from_secs(300), &context, |e| match &e.data {
        EventData::BackupDone(d)
            if e.id != failed_id && e.id != second_id && d.backup_id != done.backup_id =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    // The new receiver's first segment follows the hole: the same gap, not said again.
    stack.psql("CREATE TABLE after_lost (id int)");
    caught_up(&stack, &service, "after the slot was lost").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures: Vec<String> = stored_events(&bus)
        .await
        .into_iter()
        .filter_map(|e| match e.data {
            EventData::BackupFailed(f) => Some(f.reason),
            _ => None,
        })
        .collect();
    // The two gaps, and the first base backup after the first (tried again, which worked).
    assert_eq!(failures.len(), 3, "{failures:#?}");
    drop(service);
    stack.destroy_bucket().await;
}
