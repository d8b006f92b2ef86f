//! Point-in-time recovery against a real PostgreSQL container and the test bed's S3 server:
//! base backups (`steward.backup.pitr=true`) and restoring a whole cluster from one.

mod common;

use common::{
    base_range, pitr_stack_config, row_ids, segment_number, ship_gapless_until, ship_round,
    ship_segments, ship_until_current, shipped_files, shipping_stack, utc, Stack, DB_USER,
};
use steward_backup::encryption::Keys;
use steward_backup::journal::RestoreJournal;
use steward_backup::restore::{Busy, RestoreOptions};
use steward_events::RestoreScope;
use steward_store::manifest::Kind;
use steward_testkit::docker::docker;

/// A database restore of backup `id` by the library, as the service runs it.
async fn restore_db(
    stack: &Stack,
    id: &str,
    options: RestoreOptions,
) -> Result<steward_backup::restore::Restored, steward_backup::Failure> {
    let busy = Busy::new();
    let mut journal = RestoreJournal::none();
    stack.backups.restore_journaled(id, RestoreScope::Db, options, &busy, &mut journal).await
}

/// A restore of `id` that must be refused (`case` says what it was given): its reason, which
/// says nothing was changed, and the database's tables are still `fingerprint`.
async fn refused_unchanged(
    stack: &Stack,
    id: &str,
    options: RestoreOptions,
    fingerprint: &str,
    case: &str,
) -> String {
    let e = restore_db(stack, id, options)
        .await
        .err()
        .unwrap_or_else(|| panic!("restored over {case}"));
    assert!(e.reason.contains("nothing was changed"), "{}", e.reason);
    assert_eq!(stack.db_fingerprint_tables(), fingerprint);
    e.reason
}

/// What a refused restore must leave as it was: the backups (no safety backup taken) and the
/// containers (none stopped or restarted).
struct Untouched {
    backups: usize,
    started: String,
}

impl Untouched {
    async fn now(stack: &Stack) -> Self {
        let backups = stack.backups.list().await.unwrap_or_else(|e| panic!("{e}")).len();
        let started =
            docker(&["inspect", "-f", "{{.State.StartedAt}}", &stack.db.name, &stack.app.name]);
        Self { backups, started }
    }

    async fn still(&self, stack: &Stack) {
        let now = Self::now(stack).await;
        assert_eq!(now.backups, self.backups, "a refused restore took a safety backup");
        assert_eq!(now.started, self.started, "a refused restore stopped a container");
    }
}

fn physical() -> RestoreOptions {
    RestoreOptions { safety_backup: true, physical: true, ..Default::default() }
}

/// Every database of the cluster but the templates, sorted.
fn databases(stack: &Stack) -> String {
    stack.psql(
        "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database WHERE NOT datistemplate",
    )
}

/// The restore's entries in the data directory (none once a restore is done).
fn steward_entries(stack: &Stack) -> String {
    docker(&["exec", &stack.db.name, "sh", "-c", "ls -A \"$PGDATA\" | grep '^\\.steward-' || true"])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_base_backup_brings_back_the_whole_cluster_encrypted() {
    let identity = age::x25519::Identity::generate();
    let keys = Keys::new(vec![identity.to_public()], vec![identity.clone()]);
    let stack = Stack::start_pitr("pitr-base", keys).await;
    stack.fill_db(20_000);
    // What a dump of one database cannot bring back: another database and a role.
    stack.psql("CREATE ROLE reader LOGIN");
    stack.psql("CREATE DATABASE other OWNER reader");
    docker(&[
        "exec",
        &stack.db.name,
        "psql",
        "-U",
        DB_USER,
        "-d",
        "other",
        "-c",
        "CREATE TABLE notes AS SELECT g AS id FROM generate_series(1, 77) g",
    ]);
    let before = stack.db_fingerprint();
    let dbs_before = databases(&stack);
    assert!(dbs_before.contains("other"), "{dbs_before}");

    let (id, manifest) = stack.back_up().await;
    let kinds: Vec<&Kind> = manifest.components.iter().map(|c| &c.kind).collect();
    assert!(
        matches!(
            kinds[..],
            [Kind::Postgres { .. }, Kind::PostgresBase { .. }, Kind::Path { .. }, Kind::Containers]
        ),
        "{kinds:?}"
    );
    let base = manifest
        .components
        .iter()
        .find(|c| matches!(c.kind, Kind::PostgresBase { .. }))
        .unwrap_or_else(|| unreachable!());
    let Kind::PostgresBase { data_dir, timeline, start_lsn, stop_lsn, user, .. } = &base.kind
    else {
        unreachable!()
    };
    assert_eq!(data_dir, "/var/lib/postgresql/data");
    assert_eq!(*timeline, 1);
    assert_eq!(user, DB_USER);
    assert!(start_lsn.contains('/') && stop_lsn.contains('/'), "{start_lsn} {stop_lsn}");
    assert!(base.object.ends_with(".tar.zst.age"), "{}", base.object);
    assert_eq!(base.encoding, "zstd+age");
    let stored = stack.stored_bytes(&base.object).await;
    assert!(stored.starts_with(b"age-encryption.org/v1\n"), "the base backup is not encrypted");
    // A cluster's data files: far more than the dump.
    assert!(base.raw_size > 16 << 20, "{} bytes", base.raw_size);

    // No WAL shipped at all: `--to-time latest` would replay the base alone and call that the
    // newest state. Refused before it costs or touches anything: no safety backup, nothing
    // stopped.
    let untouched = Untouched::now(&stack).await;
    let latest =
        RestoreOptions { to_time: Some(steward_backup::pitr::PointInTime::Latest), ..physical() };
    let tables = stack.db_fingerprint_tables();
    let reason = refused_unchanged(&stack, &id, latest, &tables, "no shipped WAL").await;
    assert!(reason.contains("holding the base backup's end"), "{reason}");
    untouched.still(&stack).await;

    // Disaster: the table, the other database and the role gone, something new instead.
    stack.psql("DROP TABLE items");
    stack.psql("CREATE TABLE stray (id int)");
    stack.psql("DROP DATABASE other");
    stack.psql("DROP ROLE reader");
    assert_ne!(databases(&stack), dbs_before);

    let restored = restore_db(&stack, &id, physical())
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(restored.restored, vec![format!("postgres-base/{}", stack.db.name)]);
    assert_eq!(stack.db_fingerprint(), before);
    assert_eq!(databases(&stack), dbs_before);
    assert_eq!(stack.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'reader'"), "1");
    let notes = docker(&[
        "exec",
        &stack.db.name,
        "psql",
        "-U",
        DB_USER,
        "-d",
        "other",
        "-tAc",
        "SELECT count(*) FROM notes",
    ]);
    assert_eq!(notes, "77");
    assert_eq!(stack.psql("SELECT to_regclass('stray') IS NULL"), "t", "the stray table is back");
    // The replaced cluster is removed once the restored one is healthy; nothing is left.
    assert_eq!(steward_entries(&stack), "");
    assert!(stack.app_running(), "the app was not started again");

    // The safety backup holds the replaced cluster: restoring it undoes the restore.
    let safety = restored.safety_backup_id.unwrap_or_else(|| panic!("no safety backup"));
    let undo = restore_db(&stack, &safety, RestoreOptions { physical: true, ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("undo failed: {e} {:?}", e.stderr_tail));
    assert_eq!(undo.manifest.backup_id, safety);
    assert_eq!(stack.psql("SELECT to_regclass('stray') IS NOT NULL"), "t");
    assert_eq!(stack.psql("SELECT to_regclass('items') IS NULL"), "t");
    assert!(!databases(&stack).contains("other"));
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_restore_uses_the_dump_and_leaves_the_cluster_alone() {
    let stack = Stack::start_pitr("pitr-plain", Keys::default()).await;
    stack.fill_db(1_000);
    let before = stack.db_fingerprint();
    let (id, _) = stack.back_up().await;
    stack.psql("DROP TABLE items");
    stack.psql("CREATE DATABASE kept");
    let restored = stack
        .backups
        .restore(&id, RestoreScope::Db)
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(restored.restored, vec![format!("postgres/{}", stack.db.name)]);
    assert_eq!(stack.db_fingerprint(), before);
    // A dump restore replaces one database, not the cluster.
    assert!(databases(&stack).contains("kept"));
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wal_is_shipped_signed_within_the_lag_across_a_database_restart() {
    use std::time::{Duration, Instant};
    use steward_backup::wal::ShipState;
    let stack = Stack::start_pitr("pitr-ship", Keys::default()).await;
    let backups = pitr_stack_config(&stack);
    let tick = backups.config().pitr.tick();
    let mut state = ShipState::default();
    let rounds = ship_round(&backups, &mut state).await;
    assert_eq!(rounds.len(), 1, "{rounds:?}");
    assert!(rounds[0].1.as_ref().is_ok_and(|r| r.receiver_started), "{rounds:?}");
    stack.psql("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz NOT NULL)");

    // Each commit's segment must reach the bucket; the time it took is the RPO of that commit.
    let mut lags = vec![];
    let mut restarted = false;
    for i in 1..=6 {
        if i == 4 {
            // PostgreSQL goes away mid-stream: its receiver with it.
            docker(&["restart", &stack.db.name]);
            restarted = true;
            steward_testkit::wait_for("PostgreSQL back", Duration::from_secs(60), || {
                let out = std::process::Command::new("docker")
                    .args(["exec", &stack.db.name, "pg_isready", "-U", DB_USER])
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            });
        }
        let file = stack.psql(&format!(
            "INSERT INTO ticks VALUES ({i}, clock_timestamp()) RETURNING pg_walfile_name(pg_current_wal_insert_lsn())"
        ));
        let file = file.lines().next().unwrap_or_default().to_owned();
        let committed = Instant::now();
        let mut rounds_left = 120u32;
        loop {
            if backups.wal_record(&stack.db.name, &file).await.ok().flatten().is_some() {
                lags.push(committed.elapsed());
                break;
            }
            rounds_left = rounds_left
                .checked_sub(1)
                .unwrap_or_else(|| panic!("{file} (commit {i}) not shipped after 120 rounds"));
            tokio::time::sleep(tick).await;
            ship_round(&backups, &mut state).await;
        }
    }
    assert!(restarted);
    let worst = lags.iter().max().copied().unwrap_or_default();
    eprintln!(
        "RPO: commit to its WAL in the bucket, max lag 4s, tick {tick:?}: {:?} (worst {worst:?})",
        lags
    );

    // No gap: every segment from the first shipped to the last, once each.
    let files = shipped_files(&stack).await;
    let numbers: Vec<u64> = files.iter().filter_map(|f| segment_number(f)).collect();
    assert!(numbers.len() >= 6, "{files:?}");
    for pair in numbers.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap in {files:?}");
    }
    // Each is signed, and its object matches its record.
    for f in &files {
        let record = backups
            .wal_record(&stack.db.name, f)
            .await
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .unwrap_or_else(|| panic!("{f}: no record"));
        steward_backup::pipeline::check_component(
            steward_backup::pipeline::Io {
                store: &stack.store,
                keys: &backups.config().keys,
                meter: &Default::default(),
            },
            &record,
        )
        .await
        .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    // The spool holds at most the segment being received.
    let spool =
        docker(&["exec", &stack.db.name, "sh", "-c", "ls \"$PGDATA/pgsql_tmp_steward_wal\""]);
    assert!(spool.lines().all(|l| l.ends_with(".partial")), "{spool}");

    // A hostile bucket: an edited record and an unsigned one are refused, not used.
    let dir = steward_backup::wal::wal_dir(&stack.db.name);
    let first = &files[0];
    let body = stack.stored_bytes(&format!("{dir}/{first}.json")).await;
    let edited =
        String::from_utf8_lossy(&body).replacen("\"raw_sha256\": \"", "\"raw_sha256\": \"0", 1);
    stack
        .store
        .put(&format!("{dir}/{first}.json"), bytes::Bytes::from(edited.into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let e = backups.wal_record(&stack.db.name, first).await.err().map(|e| e.reason);
    assert!(
        e.as_deref().is_some_and(|e| e.contains("refused") && e.contains("does not match")),
        "{e:?}"
    );
    let second = &files[1];
    stack.store.delete(&format!("{dir}/{second}.sig")).await.unwrap_or_else(|e| panic!("{e}"));
    let e = backups.wal_record(&stack.db.name, second).await.err().map(|e| e.reason);
    assert!(e.as_deref().is_some_and(|e| e.contains("not signed")), "{e:?}");
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_to_a_time_brings_back_exactly_what_was_committed_before_it() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use steward_backup::pitr::PointInTime;
    let stack = Stack::start_pitr("pitr-time", Keys::default()).await;
    let backups = pitr_stack_config(&stack);
    stack.fill_db(5_000);
    let items_before = stack.db_fingerprint();
    // The slot first, then the base: the WAL from the base's end on is kept for the shipper.
    ship_round(&backups, &mut Default::default()).await;
    let (id, _) = stack.back_up().await;
    stack.psql("CREATE TABLE rows (id int PRIMARY KEY, at timestamptz NOT NULL)");

    // The shipper runs beside the writer, as in the service.
    let stop = Arc::new(AtomicBool::new(false));
    let shipper = {
        let (backups, stop) = (backups.clone(), stop.clone());
        tokio::spawn(async move {
            let mut state = steward_backup::wal::ShipState::default();
            for _ in 0..600 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                ship_round(&backups, &mut state).await;
                tokio::time::sleep(backups.config().pitr.tick()).await;
            }
        })
    };
    // Rows committed one by one, 150 ms apart, each with its time; before row 40 the table
    // `items` is dropped. One psql session (one `docker exec` per row took 0.3 to over 1 s
    // under CI load, and the rows' spacing with it).
    let mut script = String::new();
    for i in 1..=60 {
        if i == 40 {
            script.push_str("SELECT 'dropped at ' || clock_timestamp();\nDROP TABLE items;\n");
        }
        script.push_str(&format!(
            "INSERT INTO rows VALUES ({i}, clock_timestamp());\nSELECT pg_sleep(0.15);\n"
        ));
    }
    let said = tokio::task::block_in_place(|| stack.psql_script(&script));
    let dropped_at = said
        .lines()
        .find_map(|l| l.strip_prefix("dropped at "))
        .unwrap_or_else(|| panic!("no drop time in {said:?}"))
        .to_owned();
    stop.store(true, Ordering::SeqCst);
    shipper.await.unwrap_or_else(|e| panic!("shipper: {e}"));
    ship_until_current(&stack, &backups).await;

    let at = |id: i32| utc(&stack, &format!("SELECT at FROM rows WHERE id = {id}"));
    // The target: between rows 30 and 31, nine commits before the drop, 75 ms before row 31's
    // time. Row 30 committed before the 150 ms pause that precedes row 31, and row 31 commits
    // after its time, so the target has at least 75 ms on either side whatever the load (a
    // midpoint's margin shrank by the time from a row's timestamp to its commit).
    let target = at(31) - time::Duration::milliseconds(75);
    let before: Vec<i32> = (1..=30).collect();
    let dropped = utc(&stack, &format!("timestamptz '{dropped_at}'"));
    assert!(at(31) < dropped && at(30) < target, "the rows straddle the target, before the drop");
    // A time on the stretch of timeline 1 the restore below abandons: between rows 50 and 51.
    let on_abandoned = at(50) + (at(51) - at(50)) / 2;
    // More of timeline 1 after the target: abandoned by the restore below, with a base
    // backup taken on it, and a table after that base.
    for i in 0..2 {
        stack.psql(&format!("CREATE TABLE future{i} AS SELECT 1 AS id"));
        stack.psql("SELECT pg_switch_wal()");
    }
    let (abandoned_base, _) = stack.back_up().await;
    stack.psql("CREATE TABLE after_abandoned_base AS SELECT 1 AS id");
    ship_until_current(&stack, &backups).await;

    let restored = restore_db(
        &stack,
        &id,
        RestoreOptions {
            safety_backup: true,
            physical: true,
            to_time: Some(PointInTime::At(target)),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("restore failed: {e} {:?}", e.stderr_tail));
    assert_eq!(restored.restored, vec![format!("postgres-base/{}", stack.db.name)]);
    assert_eq!(row_ids(&stack), before, "exactly the rows committed before {target}");
    assert_eq!(stack.db_fingerprint(), items_before, "the dropped table is back");
    // A new timeline: the restored server is on its own history from now on.
    let timeline = stack.psql("SELECT timeline_id FROM pg_control_checkpoint()");
    assert_ne!(timeline, "1");
    assert_eq!(steward_entries(&stack), "");
    assert!(stack.app_running());

    // A time the shipped WAL does not reach is refused, nothing changed.
    let fingerprint = stack.db_fingerprint();
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let refused = restore_db(
        &stack,
        &id,
        RestoreOptions {
            physical: true,
            to_time: Some(PointInTime::At(later)),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap_or_else(|| panic!("a restore beyond the shipped WAL succeeded"));
    assert!(refused.reason.contains("nothing was changed"), "{}", refused.reason);
    assert_eq!(stack.db_fingerprint(), fingerprint);
    assert_eq!(steward_entries(&stack), "");
    let scratch =
        docker(&["ps", "-aq", "--filter", &format!("name=steward-pitr-{}", stack.db.name)]);
    assert_eq!(scratch, "", "the scratch server was left behind");

    // The restored server ships on timeline 2; a replay from the old base follows the history
    // there, and only there.
    for i in 1000..1003 {
        stack.psql(&format!("INSERT INTO rows VALUES ({i}, clock_timestamp())"));
        stack.psql("SELECT pg_switch_wal()");
    }
    ship_until_current(&stack, &backups).await;
    let files = shipped_files(&stack).await;
    let on = |t: &str| -> Vec<&String> {
        files.iter().filter(|f| f.starts_with(t) && f.len() == 24).collect()
    };
    let (tl1, tl2) = (on("00000001"), on("00000002"));
    assert!(files.iter().any(|f| f == "00000002.history"), "{files:?}");
    assert!(tl2.len() >= 3, "{files:?}");
    let dir = steward_backup::wal::wal_dir(&stack.db.name);
    let latest = || RestoreOptions {
        physical: true,
        to_time: Some(PointInTime::Latest),
        ..Default::default()
    };
    // A hole in timeline 2: `latest` from the old base is refused, naming it.
    let hole = format!("{dir}/{}.json", tl2[1]);
    let body = stack.stored_bytes(&hole).await;
    stack.store.delete(&hole).await.unwrap_or_else(|e| panic!("{e}"));
    let fingerprint = stack.db_fingerprint_tables();
    let reason =
        refused_unchanged(&stack, &id, latest(), &fingerprint, "a hole on timeline 2").await;
    assert!(reason.contains(&format!("WAL is missing from segment {}", tl2[1])), "{reason}");
    stack.store.put(&hole, bytes::Bytes::from(body)).await.unwrap_or_else(|e| panic!("{e}"));
    // A hole in timeline 1's abandoned rest (after the branch point): not on the path, no gap;
    // the replay of the old base reaches timeline 2's newest WAL.
    let index = |f: &str| segment_number(f).unwrap_or_default();
    let abandoned: Vec<&&String> = tl1.iter().filter(|f| index(f) > index(tl2[0])).collect();
    assert!(abandoned.len() >= 2, "{files:?}");
    let hole = format!("{dir}/{}.json", abandoned[0]);
    let body = stack.stored_bytes(&hole).await;
    stack.store.delete(&hole).await.unwrap_or_else(|e| panic!("{e}"));
    let verified = stack
        .backups
        .verify(&id)
        .await
        .unwrap_or_else(|e| panic!("verify across timelines: {e} {:?}", e.stderr_tail));
    assert!(verified.database_restored);
    stack.store.put(&hole, bytes::Bytes::from(body)).await.unwrap_or_else(|e| panic!("{e}"));
    stack.psql("SELECT pg_switch_wal()");
    ship_until_current(&stack, &backups).await;

    // A time on timeline 1's abandoned stretch (after the branch point, before timeline 2
    // began) follows timeline 1, not timeline 2 (which would stop at the branch point and
    // call that success). Without timeline 1's WAL past the branch point it cannot be
    // reached: refused before anything is touched.
    let at_fork: Vec<String> = tl1
        .iter()
        .filter(|f| index(f) >= index(tl2[0]))
        .map(|f| format!("{dir}/{f}.json"))
        .collect();
    let mut kept = vec![];
    for hole in &at_fork {
        kept.push((hole.clone(), stack.stored_bytes(hole).await));
        stack.store.delete(hole).await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(!kept.is_empty(), "{files:?}");
    let to_abandoned = || RestoreOptions {
        safety_backup: true,
        physical: true,
        to_time: Some(PointInTime::At(on_abandoned)),
        ..Default::default()
    };
    let untouched = Untouched::now(&stack).await;
    let fingerprint = stack.db_fingerprint_tables();
    let reason =
        refused_unchanged(&stack, &id, to_abandoned(), &fingerprint, "an unreachable stretch")
            .await;
    assert!(reason.contains("that timeline 2 (begun"), "{reason}");
    untouched.still(&stack).await;
    for (hole, body) in kept {
        stack.store.put(&hole, bytes::Bytes::from(body)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    restore_db(&stack, &id, to_abandoned())
        .await
        .unwrap_or_else(|e| panic!("restore to the abandoned stretch: {e} {:?}", e.stderr_tail));
    assert_eq!(row_ids(&stack), (1..=50).collect::<Vec<i32>>(), "timeline 1 as it was then");
    let dropped = stack.psql("SELECT to_regclass('items') IS NULL");
    assert_eq!(dropped, "t", "the table dropped at row 40 stays dropped");
    // Every history above timeline 1 was in the replay: the new timeline is 3, not a second
    // timeline 2 whose files would collide with the bucket's (shipping would then fail).
    assert_eq!(stack.psql("SELECT timeline_id FROM pg_control_checkpoint()"), "3");
    stack.psql("INSERT INTO rows VALUES (2000, clock_timestamp())");
    stack.psql("SELECT pg_switch_wal()");
    ship_until_current(&stack, &backups).await;

    // `latest` from the base taken on the abandoned stretch: its own branch to its end (the
    // table after it is there), the newer timelines named in the restore's outcome.
    let restored =
        restore_db(&stack, &abandoned_base, RestoreOptions { safety_backup: true, ..latest() })
            .await
            .unwrap_or_else(|e| panic!("latest from the abandoned base: {e} {:?}", e.stderr_tail));
    assert_eq!(stack.psql("SELECT count(*) FROM after_abandoned_base"), "1");
    assert_eq!(row_ids(&stack), (1..=60).collect::<Vec<i32>>());
    let [note] = &restored.notes[..] else { panic!("{:?}", restored.notes) };
    assert!(note.contains("timeline 3") && note.contains("timeline 1"), "{note}");
    assert_eq!(stack.psql("SELECT timeline_id FROM pg_control_checkpoint()"), "4");
    stack.psql("INSERT INTO rows VALUES (3000, clock_timestamp())");
    stack.psql("SELECT pg_switch_wal()");
    ship_until_current(&stack, &backups).await;
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_exactly_the_wal_the_retained_bases_need() {
    let (stack, backups, (_, first)) = shipping_stack("pitr-prune").await;
    stack.fill_db(2_000);
    stack.psql("SELECT pg_switch_wal()");
    ship_until_current(&stack, &backups).await;
    let (_, second) = stack.back_up().await;
    stack.psql("CREATE TABLE after (id int)");
    ship_until_current(&stack, &backups).await;
    let start_of = |m: &steward_store::manifest::Manifest| base_range(m).0;
    let size = 16u64 << 20;
    let index = |f: &str| steward_backup::wal::segment_index(f, size).unwrap_or(u64::MAX);
    let before = shipped_files(&stack).await;
    let first_start = start_of(&first) / size;
    let second_start = start_of(&second) / size;
    assert!(second_start > first_start, "{first_start} {second_start}");
    assert!(before.iter().any(|f| index(f) < second_start), "{before:?}");

    // Both bases retained: only what precedes the first (shipped since the slot was made).
    let deleted =
        backups.prune_wal(&[&first, &second], Some(&[])).await.unwrap_or_else(|e| panic!("{e}"));
    let dir = steward_backup::wal::wal_dir(&stack.db.name);
    let expected: Vec<String> =
        before.iter().filter(|f| index(f) < first_start).map(|f| format!("{dir}/{f}")).collect();
    assert_eq!(deleted, expected);
    let deleted =
        backups.prune_wal(&[&first, &second], Some(&[])).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deleted, Vec::<String>::new(), "a second run deletes nothing more");
    // Only the second: exactly the segments before its start go.
    let deleted = backups.prune_wal(&[&second], Some(&[])).await.unwrap_or_else(|e| panic!("{e}"));
    let after = shipped_files(&stack).await;
    assert!(!deleted.is_empty());
    assert!(after.iter().all(|f| index(f) >= second_start), "{after:?}");
    let expected: Vec<&String> = before.iter().filter(|f| index(f) >= second_start).collect();
    assert_eq!(after.iter().collect::<Vec<_>>(), expected);
    // No object or signature is left without its record.
    let objects = stack.store.list_objects(&dir).await.unwrap_or_default();
    for o in &objects {
        let file = o.trim_start_matches(&format!("{dir}/")).split('.').next().unwrap_or_default();
        assert!(after.iter().any(|f| f == file), "{o} left behind");
    }

    // WAL stored under the name of a database container renamed since: no retained base
    // needs it, whatever the name, so it goes; unless a manifest could not be read, or one
    // read but not usable has a base of that name.
    let old_name = format!("{}-renamed-away", stack.db.name);
    let old_dir = steward_backup::wal::wal_dir(&old_name);
    let copied: Vec<String> = objects.iter().take(6).cloned().collect();
    for o in &copied {
        let body = stack.stored_bytes(o).await;
        let to = o.replacen(&dir, &old_dir, 1);
        stack.store.put(&to, bytes::Bytes::from(body)).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let old_listed =
        || async { stack.store.list_objects(&old_dir).await.unwrap_or_else(|e| panic!("{e}")) };
    let planted = old_listed().await;
    assert_eq!(planted.len(), copied.len());
    let mut unusable = first.clone();
    for c in &mut unusable.components {
        if let Kind::PostgresBase { container, .. } = &mut c.kind {
            container.clone_from(&old_name);
        }
    }
    for judged in [None, Some(&[&unusable][..])] {
        let deleted = backups.prune_wal(&[&second], judged).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(deleted, Vec::<String>::new());
        assert_eq!(old_listed().await, planted);
    }
    let deleted =
        backups.prune_wal(&[&second], Some(&[&first])).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(!deleted.is_empty() && deleted.iter().all(|d| d.starts_with(&old_dir)), "{deleted:?}");
    let segment_left = old_listed().await.into_iter().any(|o| !o.contains(".history"));
    assert!(!segment_left, "{:?}", old_listed().await);
    assert_eq!(shipped_files(&stack).await, after, "the live name's WAL is as it was");
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_or_a_forged_wal_record_fails_the_restore_and_changes_nothing() {
    use steward_backup::pitr::PointInTime;
    let (stack, backups, (id, manifest)) = shipping_stack("pitr-gap").await;
    ship_segments(&stack, &backups, 3).await;
    let files = shipped_files(&stack).await;
    assert!(files.len() >= 4, "{files:?}");
    let dir = steward_backup::wal::wal_dir(&stack.db.name);
    let latest = || RestoreOptions {
        physical: true,
        safety_backup: true,
        to_time: Some(PointInTime::Latest),
        ..Default::default()
    };
    let fingerprint = stack.db_fingerprint_tables();
    // Verification replays the base and every shipped segment in a scratch server.
    let verified = stack
        .backups
        .verify(&id)
        .await
        .unwrap_or_else(|e| panic!("verify: {e} {:?}", e.stderr_tail));
    assert!(verified.database_restored);

    // A forged record (its checksum changed, the signature kept): refused before any replay.
    let victim = &files[files.len() - 2];
    let record = format!("{dir}/{victim}.json");
    let body = stack.stored_bytes(&record).await;
    let forged = String::from_utf8_lossy(&body).replacen("\"raw_size\": ", "\"raw_size\": 1", 1);
    stack
        .store
        .put(&record, bytes::Bytes::from(forged.into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let reason = refused_unchanged(&stack, &id, latest(), &fingerprint, "a forged record").await;
    assert!(reason.contains("refused"), "{reason}");

    // The same segment gone from the bucket: `latest` cannot be reached, and says so before
    // a safety backup is taken or anything stopped.
    stack.store.delete(&record).await.unwrap_or_else(|e| panic!("{e}"));
    let untouched = Untouched::now(&stack).await;
    let reason = refused_unchanged(&stack, &id, latest(), &fingerprint, "a gap").await;
    assert!(reason.contains("WAL is missing"), "{reason}");
    untouched.still(&stack).await;
    assert_eq!(steward_entries(&stack), "");
    assert!(stack.app_running());
    // ... and verification fails on it.
    let e = stack.backups.verify(&id).await.err().unwrap_or_else(|| panic!("a gap verified"));
    assert!(e.reason.contains("WAL is missing"), "{}", e.reason);

    // That segment back, and the one holding the base's end gone instead: the base's own copy
    // of it ends there, so `latest` would have stopped at the base's end without a word.
    stack.store.put(&record, bytes::Bytes::from(body)).await.unwrap_or_else(|e| panic!("{e}"));
    let size = 16u64 << 20;
    let stop = base_range(&manifest).1;
    let first = steward_backup::wal::segment_name(1, stop / size, size).unwrap_or_default();
    assert!(files.contains(&first) && &first != victim, "{first} {victim} {files:?}");
    stack.store.delete(&format!("{dir}/{first}.json")).await.unwrap_or_else(|e| panic!("{e}"));
    let reason =
        refused_unchanged(&stack, &id, latest(), &fingerprint, "WAL missing after the base").await;
    assert!(reason.contains(&format!("holding the base backup's end ({first}")), "{reason}");
    // ... whatever the target: no replay can leave the base without it.
    let at = RestoreOptions {
        to_time: Some(PointInTime::At(time::OffsetDateTime::now_utc())),
        ..latest()
    };
    let reason = refused_unchanged(&stack, &id, at, &fingerprint, "no end segment").await;
    assert!(reason.contains(&format!("holding the base backup's end ({first}")), "{reason}");
    untouched.still(&stack).await;
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_slot_is_a_gap_the_shipper_reports() {
    let stack = Stack::start_pitr("pitr-slot", Keys::default()).await;
    let backups = pitr_stack_config(&stack);
    let mut state = steward_backup::wal::ShipState::default();
    ship_round(&backups, &mut state).await;
    stack.back_up().await;
    stack.psql("CREATE TABLE a AS SELECT generate_series(1, 1000) AS id");
    ship_until_current(&stack, &backups).await;
    // Every round so far: no gap.
    let rounds = ship_round(&backups, &mut state).await;
    assert!(rounds.iter().all(|(_, r)| r.as_ref().is_ok_and(|r| r.gap.is_none())), "{rounds:?}");
    // `du` measuring the spool while the receiver renames a file in it: the total, and exit 1
    // (as a `du` that found a file gone). The round goes on (`ship_round` fails on an error).
    let fake_du = "printf '#!/bin/sh\\n/usr/bin/du \"$@\"\\necho \"du: cannot access x: No such file or directory\" >&2\\nexit 1\\n' > /usr/local/bin/du && chmod 755 /usr/local/bin/du";
    docker(&["exec", "-u", "root", &stack.db.name, "sh", "-c", fake_du]);
    let du = docker(&["exec", &stack.db.name, "sh", "-c", "du -sk / >/dev/null 2>&1; echo $?"]);
    assert_eq!(du, "1", "the fake du is not the one found");
    ship_round(&backups, &mut state).await;
    docker(&["exec", "-u", "root", &stack.db.name, "rm", "/usr/local/bin/du"]);

    // The slot goes (an operator, a failover script) while WAL is written and not received.
    let slot = steward_backup::wal::slot_name(&stack.db.name);
    let mut dropped = false;
    for _ in 0..20 {
        stack.psql(&format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"));
        let out = std::process::Command::new("docker")
            .args(["exec", &stack.db.name, "psql", "-U", DB_USER, "-d", "postgres", "-tAc"])
            .arg(format!("SELECT pg_drop_replication_slot('{slot}')"))
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        if out.status.success() {
            dropped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(dropped, "could not drop the slot");
    for i in 0..3 {
        stack.psql(&format!("CREATE TABLE lost{i} AS SELECT generate_series(1, 1000) AS id"));
        stack.psql("SELECT pg_switch_wal()");
    }
    stack.psql("CHECKPOINT");

    // The shipper makes a new slot and goes on; the first segment it ships says the gap.
    let mut gap = None;
    for _ in 0..60 {
        for (_, round) in ship_round(&backups, &mut state).await {
            if let Ok(shipped) = round {
                gap = gap.or(shipped.gap);
            }
        }
        if gap.is_some() {
            break;
        }
        tokio::time::sleep(backups.config().pitr.tick()).await;
    }
    let gap = gap.unwrap_or_else(|| panic!("no gap reported"));
    assert!(gap.contains("was never shipped"), "{gap}");
    // Shipping goes on past it.
    stack.psql("CREATE TABLE later AS SELECT 1 AS id");
    ship_until_current(&stack, &backups).await;
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_stops_the_receiver_until_uploads_work_again_without_a_gap() {
    use std::time::Duration;
    use steward_backup::wal::{slot_name, ShipState};
    let stack = Stack::start_pitr("pitr-spool", Keys::default()).await;
    let mut config = pitr_stack_config(&stack).config().clone();
    // The receiver's partial segment and two complete ones.
    config.pitr.spool_max_mb = 48;
    let engine = steward_engine::Engine::from_env;
    let backups = steward_backup::Backups::new(engine(), stack.store.clone(), config.clone());
    // A bucket that does not exist: every upload fails.
    let gone = common::s3_config(&common::bucket_name("pitr-nobucket"), None);
    let require = steward_testkit::testbed::require;
    let store = steward_store::store::Store::connect_static(
        &gone,
        &require("STEWARD_TEST_S3_ACCESS_KEY"),
        &require("STEWARD_TEST_S3_SECRET_KEY"),
    )
    .await;
    let failing = steward_backup::Backups::new(
        engine(),
        store,
        steward_backup::config::BackupConfig { s3: gone, ..config },
    );
    let mut state = ShipState::default();
    ship_round(&backups, &mut state).await;
    let slot = slot_name(&stack.db.name);
    let active = || {
        stack.psql(&format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"))
    };
    let spool =
        || docker(&["exec", &stack.db.name, "sh", "-c", "ls \"$PGDATA/pgsql_tmp_steward_wal\""]);

    // WAL written while uploads fail: the spool grows to its cap, then the receiver stops.
    let mut full = None;
    for i in 0..12 {
        stack.psql(&format!("CREATE TABLE s{i} AS SELECT generate_series(1, 1000) AS id"));
        stack.psql("SELECT pg_switch_wal()");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rounds = failing.ship_all(&mut state).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rounds.len(), 1, "{rounds:?}");
        full = state.spool_full().map(|(c, mib)| (c.to_owned(), mib)).next();
        if full.is_some() {
            break;
        }
    }
    let (container, mib) = full.unwrap_or_else(|| panic!("the spool never filled: {}", spool()));
    assert_eq!(container, stack.db.name);
    assert!(mib >= 48, "{mib}");
    for _ in 0..40 {
        if active() == "f" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(active(), "f", "the receiver still runs");
    // More WAL while it is full: the slot keeps it, the spool does not grow. More than the
    // cap's worth, so the receiver's catch-up below overfills the spool.
    let held = spool();
    for i in 0..4 {
        stack.psql(&format!("CREATE TABLE p{i} AS SELECT generate_series(1, 1000) AS id"));
        stack.psql("SELECT pg_switch_wal()");
        let rounds = failing.ship_all(&mut state).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(rounds.iter().all(|(_, r)| r.is_err()), "{rounds:?}");
    }
    assert_eq!(active(), "f", "the receiver was started on a full spool");
    assert_eq!(spool(), held);

    // Uploads work again: the first round drains the spool and starts the receiver, which
    // catches up on the slot's backlog (more than the cap) without being stopped again
    // (it was, each time the backlog overfilled the spool between two rounds: under load in
    // CI, and here with a backlog of four segments); every segment is shipped.
    let db = &stack.db.name;
    // (not the empty segment the last switch began: nothing would ship it for a while)
    let current = common::current_segment(db);
    let mut shipped = false;
    for round in 0..60 {
        for (_, r) in common::ship_round(&backups, &mut state).await {
            let r = r.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(r.gap, None, "a gap said after the spool drained");
        }
        let paused: Vec<_> = state.spool_full().collect();
        assert!(paused.is_empty(), "round {round}: the receiver is stopped: {paused:?}");
        if backups.wal_record(db, &current).await.ok().flatten().is_some() {
            shipped = true;
            break;
        }
        tokio::time::sleep(backups.config().pitr.tick()).await;
    }
    assert!(shipped, "{current} not shipped after the spool drained");
    let files = shipped_files(&stack).await;
    let numbers: Vec<u64> = files.iter().filter_map(|f| segment_number(f)).collect();
    for pair in numbers.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap in {files:?}");
    }
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_slot_is_one_alarm_even_across_a_restart_of_the_shipper() {
    use steward_backup::wal::{slot_name, ShipState};
    let stack = Stack::start_pitr("pitr-lost", Keys::default()).await;
    let mut config = pitr_stack_config(&stack).config().clone();
    config.pitr.slot_keep_mb = 64;
    let engine = steward_engine::Engine::from_env();
    let backups = steward_backup::Backups::new(engine, stack.store.clone(), config);
    let mut state = ShipState::default();
    ship_round(&backups, &mut state).await;
    // A reported-gap marker that is not a segment name (corrupt, foreign, a later format) is
    // ignored while segments are shipped (it is read when one is): shipping goes on
    // (`ship_round` fails on any error).
    let marker = format!("{}/gap-reported", steward_backup::wal::wal_dir(&stack.db.name));
    let garbage = bytes::Bytes::from(vec![b'x'; 200]);
    stack.store.put(&marker, garbage).await.unwrap_or_else(|e| panic!("{e}"));
    stack.psql("CREATE TABLE a AS SELECT generate_series(1, 1000) AS id");
    ship_until_current(&stack, &backups).await;
    stack.store.delete(&marker).await.unwrap_or_else(|e| panic!("{e}"));

    // The receiver gone and no round while more than 64 MiB of WAL is written: the slot is lost.
    let slot = slot_name(&stack.db.name);
    let mut lost = false;
    for i in 0..12 {
        stack.psql(&format!("SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active_pid IS NOT NULL"));
        stack.psql(&format!("CREATE TABLE l{i} AS SELECT generate_series(1, 1000) AS id"));
        stack.psql("SELECT pg_switch_wal()");
        stack.psql("CHECKPOINT");
        let status = stack.psql(&format!(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ));
        if status == "lost" {
            lost = true;
            break;
        }
    }
    assert!(lost, "the slot was not lost");
    let rounds = ship_round(&backups, &mut state).await;
    let gap = rounds.iter().find_map(|(_, r)| r.as_ref().ok()?.gap.clone());
    assert!(gap.as_deref().is_some_and(|g| g.contains("lost WAL")), "{rounds:?}");
    // Not kept in the bucket before it is said (a kill in between must let the next process
    // find and say the hole); kept once the service said it.
    let upto = rounds.iter().find_map(|(_, r)| r.as_ref().ok()?.gap_upto.clone());
    let upto = upto.unwrap_or_else(|| panic!("the lost slot's hole has no end: {rounds:?}"));
    assert!(stack.store.get_small(&marker, 64).await.expect("read").is_none(), "kept before said");
    backups.gap_said(&stack.db.name, &upto).await;

    // The shipper restarts (its memory gone) before the new receiver's first segment: that
    // segment's hole is the one said already, not a second alarm (and a second base backup).
    let mut restarted = ShipState::default();
    stack.psql("CREATE TABLE later AS SELECT 1 AS id");
    let current = stack.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    // (a gap said here is the lost slot's hole said a second time)
    let db = &stack.db.name;
    ship_gapless_until(&backups, &mut restarted, db, &current, "after the lost slot").await;
    stack.destroy_bucket().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_a_base_that_alone_reaches_the_times_before_a_hole() {
    let (stack, backups, (first, first_manifest)) = shipping_stack("pitr-keep").await;
    ship_segments(&stack, &backups, 3).await;
    let (second, _) = stack.back_up().await;
    // Everything up to the second base shipped, so that whether it reaches the first base's
    // times depends only on the hole made below (an unshipped segment after the third one,
    // e.g. written by PostgreSQL itself on a loaded machine, kept the first base too).
    ship_until_current(&stack, &backups).await;
    let mut config = stack.backups.config().clone();
    // One backup a day: the day's newest base replaces the morning's.
    config.retention = steward_backup::retention::Retention { daily: 1, weekly: 0, monthly: 0 };
    let pruning = steward_backup::Backups::new(
        steward_engine::Engine::from_env(),
        stack.store.clone(),
        config,
    );
    let size = 16u64 << 20;
    let stop = base_range(&first_manifest).1;
    // A hole after the first base's end, before the second's start.
    let hole = steward_backup::wal::segment_name(1, stop / size + 1, size).unwrap_or_default();
    let files = shipped_files(&stack).await;
    assert!(files.contains(&hole), "{hole} {files:?}");
    let dir = steward_backup::wal::wal_dir(&stack.db.name);
    let record = format!("{dir}/{hole}.json");
    let body = stack.stored_bytes(&record).await;
    stack.store.delete(&record).await.unwrap_or_else(|e| panic!("{e}"));
    let now = time::OffsetDateTime::now_utc();
    let (pruned, kept) = pruning.prune(now).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pruned, Vec::<String>::new(), "the only base before the hole was pruned");
    assert_eq!(kept, 2);

    // Without the hole the second base reaches every time the first does: it replaces it.
    stack.store.put(&record, bytes::Bytes::from(body)).await.unwrap_or_else(|e| panic!("{e}"));
    let (pruned, _) = pruning.prune(now).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pruned, vec![first]);
    let listed = pruning.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(listed.iter().any(|l| l.backup_id == second));
    stack.destroy_bucket().await;
}
