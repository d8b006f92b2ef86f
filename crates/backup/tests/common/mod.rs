//! A throw-away stack for backup tests: a PostgreSQL container and an app container with a
//! data volume, both in a scope of their own, and a bucket of their own on the test bed's S3.

#![allow(dead_code, missing_docs)]

pub mod cdc;
pub mod service;

use std::time::Duration;

use steward_backup::config::BackupConfig;
use steward_backup::encryption::Keys;
use steward_backup::retention::Retention;
use steward_backup::Backups;
use steward_engine::Engine;
use steward_store::config::S3Config;
use steward_store::store::Store;
use steward_testkit::docker::{docker, postgres, Container};
use steward_testkit::{testbed, unique_name};

pub const DB_USER: &str = "gitea";
pub const DB_NAME: &str = "gitea";

pub struct Stack {
    pub scope: String,
    pub db: Container,
    pub app: Container,
    pub backups: Backups,
    pub store: Store,
}

/// A bucket name S3 accepts, unique per test.
pub fn bucket_name(tag: &str) -> String {
    unique_name(&format!("steward-{tag}")).to_lowercase().replace('_', "-")
}

pub fn s3_config(bucket: &str, endpoint: Option<String>) -> S3Config {
    S3Config {
        bucket: bucket.into(),
        prefix: "backups/".into(),
        endpoint: Some(endpoint.unwrap_or_else(|| testbed::require("STEWARD_TEST_S3_ENDPOINT"))),
    }
}

pub async fn store_for(s3: &S3Config) -> Store {
    let store = Store::connect_static(
        s3,
        &testbed::require("STEWARD_TEST_S3_ACCESS_KEY"),
        &testbed::require("STEWARD_TEST_S3_SECRET_KEY"),
    )
    .await;
    store.create_bucket().await.unwrap_or_else(|e| panic!("create bucket: {e}"));
    store
}

/// The key these tests' backups are signed with: one per test process, so every `Backups` of a
/// test (like every service of one installation) trusts the others' backups.
pub fn signing_key() -> steward_store::signing::SigningKey {
    static KEY: std::sync::OnceLock<steward_store::signing::SigningKey> =
        std::sync::OnceLock::new();
    KEY.get_or_init(steward_store::signing::SigningKey::generate).clone()
}

pub fn config(s3: S3Config, scope: &str) -> BackupConfig {
    let signing = signing_key();
    let trust = steward_store::signing::Trust::new(vec![signing.public()]);
    BackupConfig {
        schedule: steward_backup::config::DEFAULT_SCHEDULE
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        verify_schedule: steward_backup::config::DEFAULT_VERIFY_SCHEDULE
            .parse()
            .unwrap_or_else(|_| unreachable!()),
        heartbeat: None,
        max_age: Duration::from_secs(26 * 3600),
        s3,
        copy: None,
        retention: Retention::default(),
        stop_timeout: Duration::from_secs(5),
        helper_image: None,
        restore_health_timeout: Duration::from_secs(60),
        probe: Default::default(),
        zstd_level: 3,
        scope: Some(scope.into()),
        keys: Keys::default(),
        signing,
        trust,
        restore_pending: None,
        pitr: Default::default(),
        incremental: false,
    }
}

impl Stack {
    /// `app_labels`: extra `--label` values for the app (its backup paths by default).
    pub async fn start(tag: &str, app_labels: &[&str]) -> Self {
        Self::start_with_keys(tag, app_labels, Keys::default()).await
    }

    /// Like [`Stack::start`], backing up with client-side encryption `keys`.
    pub async fn start_with_keys(tag: &str, app_labels: &[&str], keys: Keys) -> Self {
        Self::start_full(tag, &[], app_labels, keys).await
    }

    /// Like [`Stack::start_with_keys`], the database taking base backups for point-in-time
    /// recovery too (`steward.backup.pitr=true`).
    pub async fn start_pitr(tag: &str, keys: Keys) -> Self {
        Self::start_full(tag, &["steward.backup.pitr=true"], &[], keys).await
    }

    async fn start_full(tag: &str, db_labels: &[&str], app_labels: &[&str], keys: Keys) -> Self {
        let scope = unique_name(tag);
        let scope_label = format!("steward.scope={scope}");
        let mut labels = vec![scope_label.as_str(), "steward.backup.postgres=true"];
        labels.extend(db_labels);
        let db = postgres(&format!("{scope}-db"), &labels, DB_USER);
        let mut args = vec!["--label", &scope_label, "-v", "/data"];
        let paths_default = ["--label", "steward.backup.paths=/data"];
        if app_labels.is_empty() {
            args.extend(paths_default);
        }
        for l in app_labels {
            args.extend(["--label", l]);
        }
        let image = format!("{}:v1", testbed::require("STEWARD_TEST_APP_IMAGE"));
        args.push(&image);
        let app = Container::run(&format!("{scope}-app"), &args);
        let s3 = s3_config(&bucket_name(tag), None);
        let store = store_for(&s3).await;
        let backups = Backups::new(
            Engine::from_env(),
            store.clone(),
            BackupConfig { keys, ..config(s3, &scope) },
        );
        Self { scope, db, app, backups, store }
    }

    /// A manual backup of the stack under a fresh id, which must succeed: id and manifest.
    pub async fn back_up(&self) -> (String, steward_store::manifest::Manifest) {
        let id = steward_store::manifest::new_backup_id(time::OffsetDateTime::now_utc());
        let manifest = self
            .backups
            .take(&id, steward_events::BackupReason::Manual, &[])
            .await
            .unwrap_or_else(|e| panic!("backup failed: {e} {:?}", e.stderr_tail));
        (id, manifest)
    }

    pub fn psql(&self, sql: &str) -> String {
        docker(&["exec", &self.db.name, "psql", "-U", DB_USER, "-d", DB_NAME, "-tAc", sql])
    }

    /// `sql`'s statements one after another in one psql session, each committed on its own
    /// (`psql -c` would run them as one transaction; `-X`: no psqlrc may turn autocommit
    /// off); what they print, tuples only.
    pub fn psql_script(&self, sql: &str) -> String {
        let script = format!(
            "psql -X -U {DB_USER} -d {DB_NAME} -tAq -v ON_ERROR_STOP=1 <<'STEWARD_SQL'\n{sql}\nSTEWARD_SQL\n"
        );
        docker(&["exec", &self.db.name, "sh", "-c", &script])
    }

    pub fn app_sh(&self, script: &str) -> String {
        docker(&["exec", &self.app.name, "sh", "-c", script])
    }

    /// `rows` rows in table `items`.
    pub fn fill_db(&self, rows: u32) {
        self.psql("CREATE TABLE items (id int PRIMARY KEY, payload text NOT NULL)");
        self.psql(&format!(
            "INSERT INTO items SELECT g, md5(g::text) || repeat('x', g % 200) FROM generate_series(1, {rows}) g"
        ));
    }

    /// A fingerprint of every row.
    pub fn db_fingerprint(&self) -> String {
        self.psql("SELECT count(*) || ':' || md5(string_agg(id || '=' || payload, ',' ORDER BY id)) FROM items")
    }

    /// The user tables of the database, with their row counts: what any restore would change.
    pub fn db_fingerprint_tables(&self) -> String {
        self.psql("SELECT coalesce(string_agg(relname || '=' || n_live_tup, ',' ORDER BY relname), '') FROM pg_stat_user_tables")
    }

    /// A large random file and many small ones under /data.
    pub fn fill_data(&self, big_mib: u32, small: u32) {
        self.app_sh(&format!(
            "dd if=/dev/urandom of=/data/big.bin bs=1M count={big_mib} 2>/dev/null && \
             mkdir -p /data/repos/a/b && i=0; while [ $i -lt {small} ]; do \
             echo \"file $i $(date +%N)\" > /data/repos/a/b/f$i.txt; i=$((i+1)); done; \
             echo hidden > /data/.dotfile"
        ));
    }

    /// Every file under /data with its checksum, sorted.
    pub fn data_fingerprint(&self) -> String {
        self.app_sh("cd /data && find . -type f | sort | xargs md5sum")
    }

    pub fn app_running(&self) -> bool {
        docker(&["inspect", "-f", "{{.State.Running}}", &self.app.name]) == "true"
    }

    /// The stored bytes of `object`, whole.
    pub async fn stored_bytes(&self, object: &str) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut body = self
            .store
            .get(object)
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{object} missing"));
        let mut bytes = vec![];
        body.read_to_end(&mut bytes).await.unwrap_or_else(|e| panic!("read {object}: {e}"));
        bytes
    }

    pub async fn destroy_bucket(&self) {
        destroy_bucket(self.store.bucket()).await;
    }
}

/// Deletes a test bucket and everything in it.
pub async fn destroy_bucket(bucket: &str) {
    let whole = S3Config { prefix: String::new(), ..s3_config(bucket, None) };
    let store = store_for(&whole).await;
    if let Err(e) = store.destroy().await {
        eprintln!("could not remove test bucket {bucket}: {e}");
    }
}

/// Plants a signed backup with no components, taken at `at`, in `store`: its id (retention
/// tests need many backups of given ages without taking them).
pub async fn plant_signed(
    store: &Store,
    signing: &steward_store::signing::SigningKey,
    at: time::OffsetDateTime,
) -> String {
    use steward_store::manifest::{self, Manifest, FORMAT, MANIFEST};
    use steward_store::signing::{Purpose, SIGNATURE};
    let id = manifest::new_backup_id(at);
    let m = Manifest {
        format: FORMAT,
        backup_id: id.clone(),
        taken_at: at,
        reason: steward_events::BackupReason::Schedule,
        docker_host: "test".into(),
        host: None,
        components: vec![],
    };
    let body = serde_json::to_vec(&m).unwrap_or_default();
    let signature = signing.sign(Purpose::Manifest, &body);
    for (name, bytes) in [(SIGNATURE, signature), (MANIFEST, body)] {
        store
            .put(&format!("{id}/{name}"), bytes.into())
            .await
            .unwrap_or_else(|e| panic!("plant {id}/{name}: {e}"));
    }
    id
}

// Point-in-time recovery: shipping rounds and what a restore to a time must bring back.

/// The WAL files (`pg_wal` names) of `container` with a record in the bucket, sorted.
pub async fn shipped_files(stack: &Stack) -> Vec<String> {
    let dir = steward_backup::wal::wal_dir(&stack.db.name);
    let mut files: Vec<String> = stack
        .store
        .list_objects(&dir)
        .await
        .unwrap_or_else(|e| panic!("list {dir}: {e}"))
        .iter()
        .filter_map(|o| o.strip_prefix(&format!("{dir}/"))?.strip_suffix(".json").map(String::from))
        .collect();
    files.sort();
    files
}

/// Segment numbers (log and segment parts) of timeline-1 segment names, to check they follow
/// each other.
pub fn segment_number(file: &str) -> Option<u64> {
    let log = u64::from_str_radix(file.get(8..16)?, 16).ok()?;
    let seg = u64::from_str_radix(file.get(16..24)?, 16).ok()?;
    // 16 MiB segments: 256 a log file.
    Some(log * 256 + seg)
}

/// One shipping round, which must succeed for every container.
pub async fn ship_round(
    backups: &steward_backup::Backups,
    state: &mut steward_backup::wal::ShipState,
) -> Vec<(String, Result<steward_backup::wal::Shipped, steward_backup::Failure>)> {
    let rounds = backups.ship_all(state).await.unwrap_or_else(|e| panic!("{e}"));
    for (container, round) in &rounds {
        if let Err(e) = round {
            panic!("shipping {container} failed: {e} {:?}", e.stderr_tail);
        }
    }
    rounds
}

/// A pitr stack shipping its WAL (the slot made first), and its first backup with the base.
pub async fn shipping_stack(
    tag: &str,
) -> (Stack, steward_backup::Backups, (String, steward_store::manifest::Manifest)) {
    let stack = Stack::start_pitr(tag, Keys::default()).await;
    let backups = pitr_stack_config(&stack);
    ship_round(&backups, &mut Default::default()).await;
    let backup = stack.back_up().await;
    (stack, backups, backup)
}

pub fn pitr_stack_config(stack: &Stack) -> steward_backup::Backups {
    let mut config = stack.backups.config().clone();
    config.pitr.max_lag = std::time::Duration::from_secs(4);
    steward_backup::Backups::new(steward_engine::Engine::from_env(), stack.store.clone(), config)
}

/// `n` tables `t<i>` created, each in a segment then closed and shipped.
pub async fn ship_segments(stack: &Stack, backups: &steward_backup::Backups, n: u32) {
    for i in 0..n {
        stack.psql(&format!("CREATE TABLE t{i} AS SELECT generate_series(1, 1000) AS id"));
        stack.psql("SELECT pg_switch_wal()");
        ship_until_current(stack, backups).await;
    }
}

/// Where the base backup of `manifest` starts and ends in the WAL (LSNs).
pub fn base_range(manifest: &steward_store::manifest::Manifest) -> (u64, u64) {
    manifest
        .components
        .iter()
        .find_map(|c| match &c.kind {
            steward_store::manifest::Kind::PostgresBase { start_lsn, stop_lsn, .. } => Some((
                steward_backup::wal::parse_lsn(start_lsn)?,
                steward_backup::wal::parse_lsn(stop_lsn)?,
            )),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no base in {}", manifest.backup_id))
}

/// Ships rounds with `state` until `db`'s segment `file` is in the bucket; no round may fail or
/// say a gap (`when` says what came before, for the message).
pub async fn ship_gapless_until(
    backups: &steward_backup::Backups,
    state: &mut steward_backup::wal::ShipState,
    db: &str,
    file: &str,
    when: &str,
) {
    for _ in 0..60 {
        for (_, round) in ship_round(backups, state).await {
            let round = round.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(round.gap, None, "a gap said {when}");
        }
        if backups.wal_record(db, file).await.ok().flatten().is_some() {
            return;
        }
        tokio::time::sleep(backups.config().pitr.tick()).await;
    }
    panic!("{file} not shipped {when} after 60 rounds");
}

/// Ships rounds until the segment holding everything committed so far is in the bucket.
pub async fn ship_until_current(stack: &Stack, backups: &steward_backup::Backups) {
    ship_until_current_of(&stack.db.name, backups).await;
}

/// [`ship_until_current`] of database container `db` (user and database [`DB_USER`]).
pub async fn ship_until_current_of(db: &str, backups: &steward_backup::Backups) {
    let mut state = steward_backup::wal::ShipState::default();
    let file = current_segment(db);
    for _ in 0..120 {
        ship_round(backups, &mut state).await;
        if backups.wal_record(db, &file).await.ok().flatten().is_some() {
            return;
        }
        tokio::time::sleep(backups.config().pitr.tick()).await;
    }
    panic!("{file} not shipped after 120 rounds");
}

/// The name of the segment of container `db` that everything committed so far reaches: the
/// one to wait for in the bucket.
pub fn current_segment(db: &str) -> String {
    let psql = |sql: &str| docker(&["exec", db, "psql", "-U", DB_USER, "-d", DB_NAME, "-tAc", sql]);
    // Right after `pg_switch_wal()` the position is a segment's start (after its 40-byte
    // header), a segment holding nothing yet, which the shipper does not switch (nothing waits
    // in it) until PostgreSQL writes WAL on its own, up to about 15 s later. Everything
    // committed is in the segments before it; a transaction id taken puts WAL into it now.
    let at_start = "SELECT mod(pg_current_wal_insert_lsn() - '0/0', setting::numeric) <= 40 \
        FROM pg_settings WHERE name = 'wal_segment_size'";
    if psql(at_start) == "t" {
        psql("SELECT txid_current()");
    }
    psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
}

/// SQL timestamp `expr`, as PostgreSQL reads it, in UTC.
pub fn utc(stack: &Stack, expr: &str) -> time::OffsetDateTime {
    let shown = stack.psql(&format!(
        "SELECT to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    ));
    time::OffsetDateTime::parse(&shown, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{shown}: {e}"))
}

/// Table `rows` (id, at: each row's commit time) as written one by one, and a drop committed
/// at `dropped_at` (`clock_timestamp()` text read just before it): the restore target a
/// second before the drop, moved to the middle between the two commits around it so "before"
/// is exact, and the ids committed up to it.
pub fn rows_before(stack: &Stack, dropped_at: &str) -> (time::OffsetDateTime, Vec<i32>) {
    let all: Vec<(i32, String)> = stack
        .psql("SELECT id || '|' || to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM rows ORDER BY id")
        .lines()
        .filter_map(|l| {
            let (id, at) = l.split_once('|')?;
            Some((id.parse().ok()?, at.to_owned()))
        })
        .collect();
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    let dropped = utc(stack, &format!("timestamptz '{dropped_at}'"));
    let wanted = dropped - time::Duration::seconds(1);
    let before: Vec<i32> = all.iter().filter(|(_, at)| parse(at) <= wanted).map(|r| r.0).collect();
    let last_before = all.iter().rfind(|(_, at)| parse(at) <= wanted).map(|r| parse(&r.1));
    let first_after = all.iter().find(|(_, at)| parse(at) > wanted).map(|r| parse(&r.1));
    let (Some(a), Some(b)) = (last_before, first_after) else {
        panic!("no commits around {wanted}: {all:?}")
    };
    let target = a + (b - a) / 2;
    (target, before)
}

/// The ids in table `rows`, in order.
pub fn row_ids(stack: &Stack) -> Vec<i32> {
    stack
        .psql("SELECT id FROM rows ORDER BY id")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// What a `steward-backup` process needs to use `stack`'s bucket, signing as these tests'
/// backups are signed.
pub fn bucket_env(stack: &Stack) -> Vec<(&'static str, String)> {
    vec![
        ("STEWARD_S3_BUCKET", stack.store.bucket().to_owned()),
        ("STEWARD_S3_PREFIX", "backups".into()),
        ("STEWARD_S3_ENDPOINT", testbed::require("STEWARD_TEST_S3_ENDPOINT")),
        ("AWS_ACCESS_KEY_ID", testbed::require("STEWARD_TEST_S3_ACCESS_KEY")),
        ("AWS_SECRET_ACCESS_KEY", testbed::require("STEWARD_TEST_S3_SECRET_KEY")),
        ("AWS_REGION", "us-east-1".into()),
        (steward_store::signing::ENV_SIGNING_KEY, signing_key().to_pem()),
    ]
}

/// Every log line of this test binary (all tests: select by backup id), captured from the
/// first call on.
#[allow(dead_code)]
pub fn logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Capture {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let capture = Capture(buffer.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("steward_backup=info"))
            .with_ansi(false)
            .with_writer(move || capture.clone())
            .try_init();
        buffer
    })
    .clone()
}

/// The captured log lines that mention `needle`.
#[allow(dead_code)]
pub fn log_lines(needle: &str) -> Vec<String> {
    let logs = logs();
    let text =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}
